"""Engines and sessions, built on first use per process (never at import time)."""

from __future__ import annotations

import select
import threading
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from leadrelay.settings import get_settings

CONNECT_TIMEOUT_SECONDS = 5
_lock = threading.Lock()
_engine: Engine | None = None
_session_factory: sessionmaker[Session] | None = None


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """An engine for ``url``. SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE`` so that
    concurrent writers (the API and the worker processes) queue instead of failing mid-transaction."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let SQLAlchemy's begin event emit BEGIN
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # A server that does not answer fails a connect in CONNECT_TIMEOUT_SECONDS, so a request gets its 503
    # quickly instead of hanging; a full pool is waited on no longer than that either.
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=CONNECT_TIMEOUT_SECONDS,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
    )
    event.listen(engine, "checkout", _refuse_gone)
    return engine


def _refuse_gone(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """A pooled connection the server has left is replaced before use, at no round trip. An idle
    connection has nothing to read: a server that terminates its backend (``pg_terminate_backend``, a
    restart, an idle timeout) says so and closes the socket, which then reads. ``pool_pre_ping`` would ask
    with a ``SELECT 1`` at every checkout instead, a round trip to the server each time. Raising
    ``DisconnectionError`` here makes the pool connect again (SQLAlchemy's documented custom ping)."""
    if dbapi_conn.closed or dbapi_conn.broken:
        raise DisconnectionError("the connection is closed")
    readable, _, _ = select.select([dbapi_conn.fileno()], [], [], 0)
    if readable:
        raise DisconnectionError("the server has left the connection")


def get_engine() -> Engine:
    global _engine, _session_factory
    with _lock:
        if _engine is None:
            settings = get_settings()
            _engine = make_engine(settings.effective_database_url, pool_size=settings.db_pool_size)
            _session_factory = sessionmaker(_engine, expire_on_commit=False)
        return _engine


def session_factory() -> sessionmaker[Session]:
    get_engine()
    assert _session_factory is not None
    return _session_factory


def dispose_engine(*, close: bool = True) -> None:
    """Forget this process's engine. A forked child passes ``close=False``: it must neither use nor
    close the parent's sockets, only drop its references to them."""
    global _engine, _session_factory
    with _lock:
        if _engine is not None:
            _engine.dispose(close=close)
        _engine = None
        _session_factory = None
