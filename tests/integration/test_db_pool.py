"""The process's connection pool and a server that leaves: a pooled connection whose backend was
terminated (an operator, a restart, an idle timeout) is replaced when it is checked out, before any
statement of the caller's fails on it, and without a round trip to ask at every checkout."""

from __future__ import annotations

import time

import psycopg
import pytest
from sqlalchemy import text

from models.db import make_engine
from tests.integration.conftest import PG_ADMIN

pytestmark = pytest.mark.integration


def test_a_pooled_connection_whose_backend_was_terminated_is_replaced_at_checkout(pg_database: str) -> None:
    engine = make_engine(pg_database, pool_size=1)
    try:
        with engine.connect() as conn:
            first = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (first,)).fetchone() == (True,)
            deadline = time.monotonic() + 10
            while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (first,)).fetchone():
                assert time.monotonic() < deadline, "the terminated backend did not go"
                time.sleep(0.05)
        with engine.connect() as conn:  # the pool's one connection, which the server has left
            again = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        assert again != first
        with engine.connect() as conn:  # a live connection is kept
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == again
    finally:
        engine.dispose()
