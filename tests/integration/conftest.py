"""The real parts: a PostgreSQL database of this run's own, queues of this run's own on the local
Redis, two Celery worker processes and a uvicorn API server, all started here and stopped by pid."""

from __future__ import annotations

import mailbox
import os
import smtplib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
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
from tests.support.processes import api_server, celery_workers, free_port, wait_for
from workers.app import app as celery_app
from workers.celeryconfig import QUEUES, celery_config

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


@dataclass(frozen=True)
class SmtpSink:
    """A real SMTP server of this run: its URL, and the mail it has received (kept in a Maildir)."""

    url: str
    maildir: Path

    def messages(self) -> list[Message]:
        return [message for _, message in mailbox.Maildir(self.maildir, create=False).items()]


@pytest.fixture(scope="session")
def smtp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    """aiosmtpd in its own process on a free port, keeping every mail in a Maildir; the workers send to it."""
    folder = tmp_path_factory.mktemp("smtp")
    port = free_port()
    with (folder / "smtpd.log").open("wb") as out:
        server = ["-n", "-l", f"127.0.0.1:{port}", "-c", "aiosmtpd.handlers.Mailbox", str(folder / "maildir")]
        proc = subprocess.Popen(
            [sys.executable, "-m", "aiosmtpd", *server],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:

            def answers() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"aiosmtpd exited: {(folder / 'smtpd.log').read_text()[-2000:]}")
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=1) as client:
                        return client.noop()[0] == 250
                except OSError:
                    return False

            wait_for(answers, timeout=30, what="the SMTP server")
            yield SmtpSink(f"smtp://127.0.0.1:{port}", folder / "maildir")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture(scope="session")
def pipeline_env(
    pg_database: str, smtp_server: SmtpSink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """The settings every process of this run shares; the test process reads them too."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    env = {
        "LEADRELAY_ENV": "test",
        "LEADRELAY_DATABASE_URL": pg_database,
        "LEADRELAY_BROKER_URL": REDIS_URL,
        "LEADRELAY_QUEUE_PREFIX": prefix,
        "LEADRELAY_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "LEADRELAY_LOG_FORMAT": "json",
        # Twilio auth tokens the SMS tests' org files name (sms.auth_tokens_env): two, for rotation.
        "LEADRELAY_TEST_TWILIO_TOKEN": "twilio-test-token-current",
        "LEADRELAY_TEST_TWILIO_TOKEN_NEXT": "twilio-test-token-next",
        "LEADRELAY_SMTP_URL": smtp_server.url,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    dispose_engine()
    # The Celery app read its configuration from the defaults when a test module imported a task at
    # collection: point it at this run's broker and queues, so a task published here reaches the workers.
    celery_app.conf.update(celery_config(get_settings()))
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
    queued = sum(int(client.llen(f"{prefix}{prefix}{q}")) for q in QUEUES)
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
