"""The Celery application. Configuration is read from the settings when first needed, not at import."""

from __future__ import annotations

import contextlib
import uuid
from functools import lru_cache
from typing import Any

import redis
import structlog
from celery import Celery
from celery.signals import before_task_publish, setup_logging, task_postrun, task_prerun, worker_process_init

from leadrelay.logging import configure_logging
from leadrelay.settings import get_settings
from models.db import dispose_engine
from workers.celeryconfig import celery_config

app = Celery("leadrelay", set_as_current=True)
# A callable is a promise: Celery reads it when the configuration is first needed.
app.add_defaults(lambda: celery_config(get_settings()))
log = structlog.get_logger(__name__)

# The message header carrying the correlation id: the intake (or import, or job) id a chain of tasks began
# with. Celery's own ``correlation_id`` is the task id, hence a name of our own.
CORRELATION_HEADER = "leadrelay_correlation_id"


def publish(
    task_name: str,
    key: uuid.UUID | None,
    *,
    queue: str | None = None,
    countdown: float | None = None,
    headers: dict[str, Any] | None = None,
) -> bool:
    """Send a task whose one argument is the id of a committed row (or none, for a task that reads what
    waits, such as ``notifications.flush``), routed by its name (``celeryconfig.TASK_QUEUES``) unless
    ``queue`` is given, ``countdown`` seconds later if given. A failed publish loses nothing (the row is
    kept, and a replay or the relay sends it again), so it is logged, never raised: the caller has already
    committed, and often answered. Whether it was sent."""
    options: dict[str, Any] = {"queue": queue} if queue else {}
    if countdown is not None:
        options["countdown"] = countdown
    if headers:
        options["headers"] = headers
    try:
        app.send_task(task_name, args=[str(key)] if key is not None else [], **options)
    except Exception as exc:
        log.warning("task.enqueue_failed", task=task_name, id=str(key), error=type(exc).__name__)
        return False
    return True


# New intakes of an account share a queued task (Redis brokers), one kind at a time: signups, and inbound
# texts. A task takes the intakes of its kind waiting beside its own (``SignupStore.claim``), so while one
# task of the account's kind is queued and not yet started, a new intake of that kind needs no task of its
# own: the API publishes one only when it sets the account's flag of that kind, and that task clears the
# flag before it claims (the header names the kind and the account). The flag lives in the broker's Redis,
# beside the message it stands for (a Redis that loses its queue loses the flags with it), and expires after
# FLAG_TTL_MS, so a task lost on the way (a killed worker holding it) holds back new intakes no longer than
# that; the relay sends what is left waiting.
SIGNUPS, TEXTS = "signups", "texts"
SIGNUPS_QUEUED_HEADER = "leadrelay_signups_queued"
TEXTS_QUEUED_HEADER = "leadrelay_texts_queued"
QUEUED_HEADERS = {SIGNUPS: SIGNUPS_QUEUED_HEADER, TEXTS: TEXTS_QUEUED_HEADER}
FLAG_TTL_MS = 5000


@lru_cache(maxsize=4)
def _flags_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def shared_flags(kind: str) -> tuple[redis.Redis, str] | None:
    """The broker's Redis and the prefix of ``kind``'s flags (the installation's key prefix first), or None
    when the broker is not Redis."""
    settings = get_settings()
    url = settings.effective_broker_url
    if not url.startswith(("redis://", "rediss://")):
        return None
    return _flags_client(url), f"{settings.queue_prefix}{kind}-queued:"


def publish_shared(intake_id: uuid.UUID, account_id: int, kind: str, *, queue: str | None = None) -> bool:
    """After a new intake of ``kind`` of ``account_id`` is committed: publish its task (on ``queue`` if
    given), unless a task of the account's ``kind`` is queued and not started (it takes this intake too).
    Whether the intake is covered."""
    flags = shared_flags(kind)
    if flags is None:
        return publish("intake.process", intake_id, queue=queue)
    client, prefix = flags
    key = f"{prefix}{account_id}"
    try:
        if not client.set(key, str(intake_id), nx=True, px=FLAG_TTL_MS):
            return True
    except redis.RedisError as exc:
        log.warning("intake.flag_unset", error=type(exc).__name__)
    sent = publish("intake.process", intake_id, queue=queue, headers={QUEUED_HEADERS[kind]: account_id})
    if not sent:
        with contextlib.suppress(redis.RedisError):
            client.delete(key)  # no task stands for the flag: the next intake publishes its own
    return sent


def publish_signup(intake_id: uuid.UUID, account_id: int) -> bool:
    """:func:`publish_shared` of a signup."""
    return publish_shared(intake_id, account_id, SIGNUPS)


def claimed_from_now(account_id: int, kind: str) -> None:
    """Before a task that stood for its account's flag of ``kind`` claims: an intake of that kind committed
    from now on publishes a task of its own (one committed before is in the claim's snapshot)."""
    flags = shared_flags(kind)
    if flags is None:
        return
    client, prefix = flags
    try:
        client.delete(f"{prefix}{account_id}")
    except redis.RedisError as exc:  # the flag expires on its own
        log.warning("intake.flag_not_cleared", error=type(exc).__name__)


@setup_logging.connect  # type: ignore[untyped-decorator]
def _project_logging(**_: Any) -> None:
    # Connected, so Celery leaves logging to us however the worker or beat is started (``leadrelay worker``
    # or ``celery -A workers worker``): the project's structlog setup, emails and phones masked.
    settings = get_settings()
    configure_logging(fmt=settings.log_format, level=settings.log_level)


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _fresh_engine_per_child(**_: Any) -> None:
    # Prefork children must not share the parent's database sockets.
    dispose_engine(close=False)


@before_task_publish.connect  # type: ignore[untyped-decorator]
def _carry_correlation_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    # Whatever the publisher is doing for (an HTTP request's intake, a task's own correlation id) goes along.
    correlation_id = structlog.contextvars.get_contextvars().get("correlation_id")
    if correlation_id and headers is not None:
        headers.setdefault(CORRELATION_HEADER, correlation_id)


@task_prerun.connect  # type: ignore[untyped-decorator]
def _bind_correlation_id(task_id: str, task: Any, args: tuple[Any, ...] = (), **_: Any) -> None:
    # A task published without one (by the relay, or a replay) is its own origin: its argument is the row's id.
    structlog.contextvars.clear_contextvars()
    correlation_id = task.request.get(CORRELATION_HEADER) or (str(args[0]) if args else None)
    structlog.contextvars.bind_contextvars(task=task.name, task_id=task_id)
    if correlation_id:
        structlog.contextvars.bind_contextvars(correlation_id=correlation_id)


@task_postrun.connect  # type: ignore[untyped-decorator]
def _clear_correlation_id(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()
