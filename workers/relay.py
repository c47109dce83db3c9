"""The relay: the database is the system of record and the broker only
carries ids, so a lost message, a killed worker or a Redis restart must delay work, never lose it.
Every pass claims the kept work that is not done a while after it was stored or last relayed
(``FOR UPDATE SKIP LOCKED``: relays on several hosts share it) and publishes its task again. Every
task is idempotent by its data, so a copy that was only slow does no harm."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from types import FunctionType
from typing import Any

import structlog

from leadrelay.settings import get_settings
from models.tables import (
    Import,
    ImportStatus,
    Intake,
    IntakeSource,
    IntakeStatus,
    Job,
    JobStatus,
    Message,
    Outbox,
    WebhookDelivery,
)
from models.uow import UnitOfWork
from workers.app import TEXTS, publish, publish_shared
from workers.celeryconfig import queue_name

log = structlog.get_logger(__name__)

# What waits for a task, and which task. Imports and bulk jobs only while queued: once running, a worker
# holds them (a killed one's message comes back from the broker's visibility timeout).
WAITING: dict[str, tuple[Any, list[Any], str]] = {
    "intakes": (Intake, [Intake.status.in_([IntakeStatus.ACCEPTED, IntakeStatus.PROCESSING])], "intake.process"),
    "texts": (Message, [Message.direction == "outbound", Message.status == "queued"], "texts.send"),
    "mail": (Outbox, [Outbox.status == "pending"], "notifications.flush"),
    "jobs": (Job, [Job.status == JobStatus.QUEUED], "jobs.run"),
    "imports": (Import, [Import.status == ImportStatus.QUEUED], "imports.run"),
    # Deliveries whose try is due (a wait longer than a task's countdown, a lost task, a killed worker's lease).
    "webhooks": (
        WebhookDelivery,
        [WebhookDelivery.status == "pending", lambda now: WebhookDelivery.next_attempt_at <= now],
        "webhooks.deliver",
    ),
}
# Kinds whose task takes no id but sends everything of its kind that waits: one task a pass, however
# many rows were claimed (a flush sends the pending mail over one SMTP connection).
ONE_TASK_A_PASS = frozenset({"mail"})


def intake_queue(source: IntakeSource) -> str | None:
    """An SMS intake runs on the texts queue, as the webhook sends it; every other on ``intake.process``'s own."""
    return queue_name(get_settings(), "texts") if source is IntakeSource.SMS else None


def send_intake(key: uuid.UUID, source: IntakeSource, *, countdown: float | None = None) -> None:
    """Publish a kept intake's task on its source's queue (a replay, a batch's task sent again), ``countdown``
    seconds later if given."""
    publish("intake.process", key, queue=intake_queue(source), countdown=countdown)


def send_text(key: uuid.UUID, account_id: int) -> bool:
    """After a new inbound text of ``account_id`` is committed: its task on the texts queue, unless a task
    of the account's texts is queued and not started, which takes it (``workers.app.publish_shared``)."""
    return publish_shared(key, account_id, TEXTS, queue=intake_queue(IntakeSource.SMS))


def sweep(*, after: dt.timedelta | None = None, limit: int = 1000) -> dict[str, int]:
    """One pass: claim what waits longer than ``after`` (``LEADRELAY_RELAY_AFTER_SECONDS``), commit, then
    publish each task again; how many of each kind were sent."""
    settings = get_settings()
    now = dt.datetime.now(dt.UTC)
    cutoff = now - (after if after is not None else dt.timedelta(seconds=settings.relay_after_seconds))
    sends: list[tuple[str, uuid.UUID | None, str | None]] = []
    counts: dict[str, int] = {}
    with UnitOfWork() as uow:
        for kind, (table, conditions, task) in WAITING.items():
            # A condition may depend on the time of the pass (a delivery's next try): a function of it.
            at_now = [c(now) if isinstance(c, FunctionType) else c for c in conditions]
            rows = uow.relay.claim(table, at_now, cutoff=cutoff, now=now, limit=limit)
            counts[kind] = len(rows)
            if kind in ONE_TASK_A_PASS:
                if rows:
                    sends.append((task, None, None))
                continue
            for row in rows:
                sends.append((task, row.id, intake_queue(row.source) if table is Intake else None))
        uow.commit()
    for task, key, queue in sends:
        publish(task, key, queue=queue)
    if any(counts.values()):
        log.warning("relay.resent", **counts)
    return counts


def run_forever(every: float | None = None) -> None:
    """``leadrelay relay``: a pass every ``every`` seconds (``LEADRELAY_RELAY_EVERY_SECONDS``) until stopped."""
    interval = every if every is not None else get_settings().relay_every_seconds
    while True:
        try:
            sweep()
        except Exception as exc:  # the database is down: the next pass tries again
            log.error("relay.failed", error=type(exc).__name__)
        time.sleep(interval)
