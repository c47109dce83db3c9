"""The relay: the database is the system of record and the broker only
carries ids, so a lost message, a killed worker or a Redis restart must delay work, never lose it.
Every pass claims the kept work that is not done a while after it was stored or last relayed
(``FOR UPDATE SKIP LOCKED``: relays on several hosts share it) and publishes its task again. Every
task is idempotent by its data, so a copy that was only slow does no harm.

Every worker runs the pass itself (:class:`RelaySweep`, a bootstep of the worker's main process), so the
API and the workers are the whole pipeline; ``leadrelay relay`` (or ``relay.sweep`` under celery beat) runs
it apart, for those who turn the workers' off (``--no-relay``, ``LEADRELAY_WORKER_RELAY=false``)."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

import click
import structlog
from celery import bootsteps

from leadrelay.settings import get_settings
from models.repositories import WAITING_WORK, conditions_at
from models.tables import Intake, IntakeSource
from models.uow import UnitOfWork
from workers.app import TEXTS, app, publish, publish_shared
from workers.celeryconfig import queue_name

log = structlog.get_logger(__name__)

# What waits for a task (models.repositories.WAITING_WORK), and which task.
TASKS = {
    "intakes": "intake.process",
    "texts": "texts.send",
    "mail": "notifications.flush",
    "jobs": "jobs.run",
    "imports": "imports.run",
    "webhooks": "webhooks.deliver",
}
WAITING: dict[str, tuple[Any, list[Any], str]] = {
    kind: (table, conditions, TASKS[kind]) for kind, (table, conditions) in WAITING_WORK.items()
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
            rows = uow.relay.claim(table, conditions_at(conditions, now), cutoff=cutoff, now=now, limit=limit)
            counts[kind] = len(rows)
            if kind in ONE_TASK_A_PASS:
                if rows:
                    sends.append((task, None, None))
                continue
            for row in rows:
                sends.append((task, row.id, intake_queue(row.source) if table is Intake else None))
        uow.commit()
    for n, (task, key, queue) in enumerate(sends):
        if not publish(task, key, queue=queue):
            # The broker refuses: the others would each wait out the publish's retries too (seconds apiece,
            # in a worker's main process). Claimed, they are due again a doubled wait later.
            log.error("relay.publish_failed", unsent=len(sends) - n)
            break
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


class RelaySweep(bootsteps.StartStopStep):  # type: ignore[misc]
    """The relay's pass in every worker's main process, on the worker's timer every
    ``LEADRELAY_RELAY_EVERY_SECONDS``: with prefork over Redis or RabbitMQ that timer is the event loop's, so a
    pass runs between the loop's other work, never beside a fork of a pool child, and never in a pool child
    (whose tasks it would hold up). Any number of workers sweep at once: each pass claims its rows with
    ``FOR UPDATE SKIP LOCKED`` (SQLite, which has none, lets one writer at a time, and a claim is one UPDATE),
    and a row claimed by one pass is not due again for a doubled wait, so no row is sent twice in a period.
    Off with ``--no-relay`` or ``LEADRELAY_WORKER_RELAY=false``."""

    label = "Relay"
    requires = ("celery.worker.components:Timer",)

    def __init__(self, parent: Any, no_relay: bool = False, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.enabled = get_settings().worker_relay and not no_relay
        self.every = get_settings().relay_every_seconds
        self.tref: Any = None

    def start(self, parent: Any) -> None:
        self.tref = parent.timer.call_repeatedly(self.every, self.sweep)
        log.info("relay.in_worker", every_seconds=self.every)

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def sweep(self) -> None:
        try:
            sweep()
        except Exception as exc:  # the database is down: the next pass tries again
            log.error("relay.failed", error=type(exc).__name__)


app.steps["worker"].add(RelaySweep)
app.user_options["worker"].add(
    click.Option(
        ["--no-relay"],
        is_flag=True,
        default=False,
        help="Do not run the relay's pass in this worker (LEADRELAY_WORKER_RELAY=false does the same).",
    )
)
