"""The process's connection pool and a server that leaves: a pooled connection whose backend was
terminated (an operator, a restart, an idle timeout) is replaced when it is checked out, before any
statement of the caller's fails on it, and without a round trip to ask at every checkout."""

from __future__ import annotations

import time

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

from models.db import make_engine
from models.uow import UnitOfWork
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


def test_work_of_one_statement_commits_by_that_statement_and_the_pool_gets_its_connection_back_as_it_was(
    pg_database: str,
) -> None:
    """``UnitOfWork.each_statement_commits``: no BEGIN or COMMIT round trips for an intake's one INSERT.
    Another connection sees the row before the unit of work commits; the next unit of work on the same
    pooled connection is a transaction again."""
    engine = make_engine(pg_database, pool_size=1)
    factory = sessionmaker(engine, expire_on_commit=False)
    with psycopg.connect(pg_database.replace("+psycopg", ""), autocommit=True) as other:
        other.execute("CREATE TABLE uow_probe (id int PRIMARY KEY)")

        def seen() -> tuple[int, ...] | None:
            return other.execute("SELECT count(*) FROM uow_probe").fetchone()

        try:
            with UnitOfWork(factory) as uow:
                uow.each_statement_commits()
                uow.session.execute(text("INSERT INTO uow_probe VALUES (1)"))
                assert seen() == (1,)  # committed by the statement itself
                uow.commit()
            with UnitOfWork(factory) as uow:
                uow.session.execute(text("INSERT INTO uow_probe VALUES (2)"))
                assert seen() == (1,)  # a transaction: not visible until committed
                uow.commit()
            assert seen() == (2,)
        finally:
            other.execute("DROP TABLE uow_probe")
            engine.dispose()
