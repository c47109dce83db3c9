"""The relay's queries."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from types import FunctionType
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session

from models.tables import (
    Import,
    ImportStatus,
    Intake,
    IntakeStatus,
    Job,
    JobStatus,
    Message,
    Outbox,
    WebhookDelivery,
)

# The relay's wait for a row doubles with each time it was relayed, this many times at most (32x).
RELAY_BACKOFF_CAP = 5

# Kept work that waits for a task: each kind's table and the conditions of its rows not done. A condition
# may depend on the time of the pass (a delivery's next try): then it is a function of it. Imports and
# bulk jobs only while queued: once running, a worker holds them (a killed one's message comes back from
# the broker's visibility timeout).
WAITING_WORK: dict[str, tuple[Any, list[Any]]] = {
    "intakes": (Intake, [Intake.status.in_([IntakeStatus.ACCEPTED, IntakeStatus.PROCESSING])]),
    "texts": (Message, [Message.direction == "outbound", Message.status == "queued"]),
    "mail": (Outbox, [Outbox.status == "pending"]),
    "jobs": (Job, [Job.status == JobStatus.QUEUED]),
    "imports": (Import, [Import.status == ImportStatus.QUEUED]),
    # Deliveries whose try is due (a wait longer than a task's countdown, a lost task, a killed worker's lease).
    "webhooks": (
        WebhookDelivery,
        [WebhookDelivery.status == "pending", lambda now: WebhookDelivery.next_attempt_at <= now],
    ),
}


def conditions_at(conditions: Sequence[Any], now: dt.datetime) -> list[ColumnElement[bool]]:
    """A kind's conditions at the time ``now`` (those that are functions of it, applied)."""
    return [c(now) if isinstance(c, FunctionType) else c for c in conditions]


def waiting_since(table: Any) -> Any:
    """Since when a waiting row waits: since it was stored, or, for a webhook delivery, since its try was due."""
    return WebhookDelivery.next_attempt_at if table is WebhookDelivery else table.created_at


class RelayRepository:
    """The relay's queries: kept work (intakes, outbound texts, mail, bulk jobs, imports, webhook deliveries)
    that is not done a while after it was stored or last relayed, so its task may have been lost; and how
    long the oldest of it has waited."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def claim(
        self,
        table: Any,
        conditions: Sequence[ColumnElement[bool]],
        *,
        cutoff: dt.datetime,
        now: dt.datetime,
        limit: int,
    ) -> list[Any]:
        """Mark up to ``limit`` waiting rows relayed now and return them (id first). Rows another relay
        or a running task holds are skipped (``FOR UPDATE SKIP LOCKED``), so relays on several hosts
        share the work and never send one row twice in a pass."""
        touched = func.coalesce(table.relayed_at, table.created_at)
        # A row relayed before waits twice as long each time (up to RELAY_BACKOFF_CAP doublings): under a
        # backlog longer than the period, sending the same waiting work every pass only lengthened the queue.
        after = now - cutoff
        due = or_(
            *[and_(table.relays == n, touched < now - after * 2**n) for n in range(RELAY_BACKOFF_CAP)],
            and_(table.relays >= RELAY_BACKOFF_CAP, touched < now - after * 2**RELAY_BACKOFF_CAP),
        )
        waiting = (
            select(table.id).where(*conditions, due).order_by(touched).limit(limit).with_for_update(skip_locked=True)
        )
        columns = [table.id, table.source] if table is Intake else [table.id]
        stmt = (
            update(table)
            .where(table.id.in_(waiting.scalar_subquery()))
            .values(relayed_at=now, relays=table.relays + 1)
            .returning(*columns)
            .execution_options(synchronize_session=False)
        )
        return list(self.session.execute(stmt).all())

    def oldest_waiting(self, now: dt.datetime) -> dict[str, float]:
        """Seconds the oldest row of each kind of ``WAITING_WORK`` has waited (``waiting_since``), 0 when none
        waits: a stuck pipeline shows here whoever runs the relay's pass. One aggregate query a kind."""
        found: dict[str, float] = {}
        for kind, (table, conditions) in WAITING_WORK.items():
            oldest = self.session.execute(
                select(func.min(waiting_since(table))).where(*conditions_at(conditions, now))
            ).scalar_one()
            if oldest is not None and oldest.tzinfo is None:  # SQLite keeps no zone; every time stored is UTC
                oldest = oldest.replace(tzinfo=dt.UTC)
            found[kind] = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
        return found
