"""The real parts: a PostgreSQL database of this run's own, queues of this run's own on the local
broker (Redis, or RabbitMQ with ``LEADRELAY_TEST_BROKER_URL=amqp://...``), two Celery worker processes
and a uvicorn API server, all started here and stopped by pid."""

from __future__ import annotations

import mailbox
import os
import shlex
import smtplib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from kombu.connection import Connection

from leadrelay.settings import get_settings
from models.db import dispose_engine
from models.migrate import upgrade
from models.org import apply_org
from models.orgspec import parse_org
from models.secrets import keyring
from models.uow import UnitOfWork
from tests.support.client import Brokerage
from tests.support.orgs import brokerage
from tests.support.processes import ROOT, api_server, celery_workers, free_port, wait_for
from tests.support.smtp_sink import CONNECTION_HEADER, REFUSED_FILE
from workers.app import app as celery_app
from workers.celeryconfig import QUEUES, celery_config

PG_ADMIN = os.environ.get("LEADRELAY_TEST_PG_ADMIN", "postgresql://root@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LEADRELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# The broker the workers and the API of this run use: Redis unless told otherwise, e.g.
# LEADRELAY_TEST_BROKER_URL=amqp://guest:guest@127.0.0.1:5672// for RabbitMQ.
BROKER_URL = os.environ.get("LEADRELAY_TEST_BROKER_URL", REDIS_URL)
BROKER_IS_AMQP = BROKER_URL.split("://", 1)[0] in ("amqp", "amqps", "pyamqp")
# How to reach rabbitmqctl (on RabbitMQ, the only way here to count unacknowledged messages: the
# management plugin is not enabled), e.g. "docker exec rabbitmq rabbitmqctl".
RABBITMQCTL = shlex.split(os.environ.get("LEADRELAY_TEST_RABBITMQCTL", "rabbitmqctl"))


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
    """A real SMTP server of this run: its URL, and the mail it has received (kept in a Maildir), each
    with the number of the connection that brought it (``connection_of``)."""

    url: str
    maildir: Path

    def messages(self) -> list[Message]:
        return [message for _, message in mailbox.Maildir(self.maildir, create=False).items()]

    @staticmethod
    def connection_of(message: Message) -> str:
        return str(message[CONNECTION_HEADER])

    @contextmanager
    def refusing(self, address: str) -> Iterator[None]:
        """The server answers 451 (try again later) to mail for ``address`` until the block ends."""
        refused = self.maildir.parent / REFUSED_FILE
        refused.write_text(address)
        try:
            yield
        finally:
            refused.unlink()


@pytest.fixture(scope="session")
def smtp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    """aiosmtpd in its own process on a free port, keeping every mail in a Maildir; the workers send to it."""
    folder = tmp_path_factory.mktemp("smtp")
    port = free_port()
    with (folder / "smtpd.log").open("wb") as out:
        server = [
            "-n",
            "-l",
            f"127.0.0.1:{port}",
            "-c",
            "tests.support.smtp_sink.CountingMailbox",
            str(folder / "maildir"),
        ]
        proc = subprocess.Popen(
            [sys.executable, "-m", "aiosmtpd", *server],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,  # where the handler's module (tests.support.smtp_sink) is imported from
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
        # The session's API (the ``api`` fixture) listens on this port, so its status URLs lead back to it.
        # Spelled otherwise than the URL the tests reach it at (127.0.0.1), as a public URL in front of a
        # proxy is: a check over the URL a request reached, not the public one, cannot pass by chance.
        "LEADRELAY_PUBLIC_BASE_URL": f"http://localhost:{free_port()}",
        "LEADRELAY_DATABASE_URL": pg_database,
        "LEADRELAY_BROKER_URL": BROKER_URL,
        "LEADRELAY_QUEUE_PREFIX": prefix,
        "LEADRELAY_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "LEADRELAY_LOG_FORMAT": "json",
        # Twilio auth tokens the SMS tests' org files name (sms.auth_tokens_env): two, for rotation.
        "LEADRELAY_TEST_TWILIO_TOKEN": "twilio-test-token-current",
        "LEADRELAY_TEST_TWILIO_TOKEN_NEXT": "twilio-test-token-next",
        "LEADRELAY_SMTP_URL": smtp_server.url,
        # Outbound webhooks reach the tests' receivers on 127.0.0.1 over http, and retry within seconds.
        "LEADRELAY_WEBHOOKS_ALLOW_PRIVATE": "true",
        "LEADRELAY_WEBHOOKS_RETRY_SECONDS": "0.5,1,1.5,2,3",
        # The tests run the relay's passes themselves (relay.sweep) over the rows they stored "long ago": a
        # worker's own pass would take those rows first. tests/chaos/test_worker_relay tests the workers'.
        "LEADRELAY_WORKER_RELAY": "false",
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
    # Leave no queues of this run behind on the shared broker.
    delete_broker_queues(prefix)


@pytest.fixture(scope="session")
def workers(pipeline_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Two Celery worker processes, one pool child each: two consumers racing for every task."""
    logdir = tmp_path_factory.mktemp("workers")
    with celery_workers(pipeline_env, logdir, count=2, concurrency=1):
        yield logdir


@pytest.fixture(scope="session")
def api(pipeline_env: dict[str, str], workers: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = int(pipeline_env["LEADRELAY_PUBLIC_BASE_URL"].rsplit(":", 1)[1])
    with api_server(pipeline_env, tmp_path_factory.mktemp("api") / "api.log", port=port) as base:
        yield base


def broker_idle(prefix: str | None = None) -> bool:
    """No message of this run (or of the queues under ``prefix``) waits in a queue or is held
    unacknowledged by a worker (a task running, or waiting for its countdown or retry delay)."""
    prefix = prefix if prefix is not None else os.environ["LEADRELAY_QUEUE_PREFIX"]
    if BROKER_IS_AMQP:
        return _amqp_ready(prefix) == 0 and _rabbitmq_counts(prefix) == (0, 0)
    client = redis.Redis.from_url(BROKER_URL)
    # kombu's global_keyprefix prefixes the (already prefixed) queue names once more.
    queued = sum(int(client.llen(f"{prefix}{prefix}{q}")) for q in QUEUES)
    return queued == 0 and int(client.hlen(f"{prefix}unacked")) == 0


def _amqp_ready(prefix: str) -> int:
    """Messages ready in the run's queues, from passive declares (cheap; a queue not declared yet holds none).
    AMQP tells a client nothing of the messages other consumers hold unacknowledged: see _rabbitmq_counts."""
    ready = 0
    with Connection(BROKER_URL, connect_timeout=5) as conn:  # type: ignore[no-untyped-call]
        channel = conn.channel()
        for q in QUEUES:
            try:
                ready += int(channel.queue_declare(queue=f"{prefix}{q}", passive=True).message_count)
            except conn.channel_errors:
                channel = conn.channel()  # the broker closed the channel with the 404
    return ready


def _rabbitmq_counts(prefix: str) -> tuple[int, int]:
    """(ready, unacknowledged) over the queues named ``prefix...``, as the broker itself counts them.
    rabbitmqctl (about a second: it boots an Erlang VM) is the one source of the unacknowledged count
    without the management plugin."""
    vhost = Connection(BROKER_URL).virtual_host or "/"  # type: ignore[no-untyped-call]
    listing = subprocess.run(
        [*RABBITMQCTL, "-q", "list_queues", "-p", vhost, "name", "messages_ready", "messages_unacknowledged"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if listing.returncode != 0:
        raise RuntimeError(f"rabbitmqctl list_queues failed (LEADRELAY_TEST_RABBITMQCTL?): {listing.stderr[-2000:]}")
    ready = unacked = 0
    for line in listing.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) == 3 and fields[0].startswith(prefix) and fields[1].isdigit() and fields[2].isdigit():
            ready += int(fields[1])
            unacked += int(fields[2])
    return ready, unacked


def delete_broker_queues(prefix: str) -> None:
    """Remove what a run with queue prefix ``prefix`` left on the broker: on Redis every key under the
    prefix; on RabbitMQ its queues, the direct exchange Celery binds them to (named after the default
    queue) and Celery's control and event exchanges once they carry the prefix (``control_exchange``,
    ``event_exchange``). Unprefixed, those (``celery.pidbox``, ``reply.celery.pidbox``, ``celeryev``) are
    shared by every Celery app on the vhost and may serve another run at this moment: they stay. The
    workers' pidbox and gossip queues are auto-delete and went with the workers."""
    if not BROKER_IS_AMQP:
        client = redis.Redis.from_url(BROKER_URL)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
        return
    with Connection(BROKER_URL, connect_timeout=5) as conn:  # type: ignore[no-untyped-call]
        channel = conn.channel()
        for q in QUEUES:
            channel.queue_delete(queue=f"{prefix}{q}")
        # Deleting an exchange that does not exist is no error on RabbitMQ.
        for exchange in ("registrations", "celeryev", "celery.pidbox"):
            channel.exchange_delete(exchange=f"{prefix}{exchange}")
        channel.exchange_delete(exchange=f"reply.{prefix}celery.pidbox")


def apply(org: dict[str, Any]) -> dict[str, Any]:
    with UnitOfWork() as uow:
        # The run's processes share its data dir, so the key generated there encrypts for all of them.
        apply_org(uow.session, parse_org(org), keyring())
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
