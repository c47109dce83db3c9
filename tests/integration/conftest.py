"""The real parts: a PostgreSQL database of this run's own, queues of this run's own on the local
Redis, two Celery worker processes and a uvicorn API server, all started here and stopped by pid."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from intake.orgfile import parse_org
from leadrelay.settings import get_settings
from models.db import dispose_engine
from models.migrate import upgrade
from models.org import apply_org
from models.uow import UnitOfWork
from tests.support.client import Brokerage
from tests.support.orgs import brokerage
from tests.support.processes import api_server, celery_workers

PG_ADMIN = os.environ.get("LEADRELAY_TEST_PG_ADMIN", "postgresql://root@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LEADRELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database created for this run, migrated with Alembic, dropped at the end (its own connections only)."""
    name = f"leadrelay_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    upgrade(url)
    yield url
    dispose_engine()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture(scope="session")
def pipeline_env(pg_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The settings every process of this run shares; the test process reads them too."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    env = {
        "LEADRELAY_ENV": "test",
        "LEADRELAY_DATABASE_URL": pg_database,
        "LEADRELAY_BROKER_URL": REDIS_URL,
        "LEADRELAY_QUEUE_PREFIX": prefix,
        "LEADRELAY_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "LEADRELAY_LOG_FORMAT": "json",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    dispose_engine()
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    get_settings.cache_clear()
    # Leave no queues of this run behind on the shared Redis.
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


@pytest.fixture(scope="session")
def workers(pipeline_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Two Celery worker processes, one pool child each: two consumers racing for every task."""
    logdir = tmp_path_factory.mktemp("workers")
    with celery_workers(pipeline_env, logdir, count=2, concurrency=1):
        yield logdir


@pytest.fixture(scope="session")
def api(pipeline_env: dict[str, str], workers: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with api_server(pipeline_env, tmp_path_factory.mktemp("api") / "api.log") as base:
        yield base


def broker_idle() -> bool:
    """No message of this run waits in a queue or is held unacknowledged by a worker."""
    prefix = os.environ["LEADRELAY_QUEUE_PREFIX"]
    client = redis.Redis.from_url(REDIS_URL)
    queued = sum(
        int(client.llen(f"{prefix}{prefix}{q}")) for q in ("registrations", "texts", "imports", "notifications")
    )
    return queued == 0 and int(client.hlen(f"{prefix}unacked")) == 0


def apply(org: dict[str, Any]) -> dict[str, Any]:
    with UnitOfWork() as uow:
        apply_org(uow.session, parse_org(org))
        uow.commit()
    return org


@pytest.fixture
def brokerage_factory(api: str) -> Iterator[Any]:
    made: list[Brokerage] = []

    def make(**kwargs: Any) -> Brokerage:
        org = kwargs.pop("org", None) or brokerage(**kwargs)
        b = Brokerage(api, apply(org))
        made.append(b)
        return b

    yield make
    for b in made:
        b.site.close()


@pytest.fixture
def acme(brokerage_factory: Any) -> Brokerage:
    return brokerage_factory()  # type: ignore[no-any-return]
