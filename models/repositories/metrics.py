"""What ``GET /metrics`` reads from the database."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from models.tables import (
    Account,
    Entity,
    Import,
    ImportStatus,
    Intake,
    IntakeStatus,
    Job,
    JobStatus,
    Lead,
    LeadStatus,
    Message,
    Outbox,
    WebhookDelivery,
)

# Upper bounds (seconds) of the intake latency histogram, from stored to done.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(frozen=True)
class Latency:
    """A cumulative histogram: ``buckets[i]`` intakes took at most ``LATENCY_BUCKETS[i]`` seconds."""

    buckets: tuple[int, ...]
    count: int
    total_seconds: float


class MetricsRepository:
    """What ``GET /metrics`` reports, read from the database, so every API, worker and relay process on
    every host is counted, and a restart forgets nothing. Each figure is one aggregate query (per kind of
    work, for the relay's re-sends and the dead letters)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def _seconds(self, start: Any, end: Any) -> ColumnElement[Any]:
        if self.session.get_bind().dialect.name == "sqlite":
            return (func.julianday(end) - func.julianday(start)) * 86400.0
        return func.extract("epoch", end - start)

    def intakes(self) -> list[tuple[str, str, int]]:
        """(source, status, count) of every kept intake."""
        stmt = select(Intake.source, Intake.status, func.count()).group_by(Intake.source, Intake.status)
        return [(str(source), str(status), int(n)) for source, status, n in self.session.execute(stmt).all()]

    def intake_latency(self) -> Latency:
        """Seconds from stored to done of every intake that is done."""
        seconds = self._seconds(Intake.created_at, Intake.processed_at)
        row = self.session.execute(
            select(
                *[func.count().filter(seconds <= bound) for bound in LATENCY_BUCKETS],
                func.count(),
                func.coalesce(func.sum(seconds), 0.0),
            ).where(Intake.status == IntakeStatus.DONE, Intake.processed_at.is_not(None))
        ).one()
        return Latency(tuple(int(n) for n in row[: len(LATENCY_BUCKETS)]), int(row[-2]), float(row[-1]))

    def relay_resends(self) -> dict[str, int]:
        """How many times the relay sent each kind of kept work again."""
        tables: dict[str, Any] = {
            "intakes": Intake,
            "texts": Message,
            "mail": Outbox,
            "jobs": Job,
            "imports": Import,
            "webhooks": WebhookDelivery,
        }
        return {
            kind: int(self.session.execute(select(func.coalesce(func.sum(table.relays), 0))).scalar_one())
            for kind, table in tables.items()
        }

    def dead_letters(self) -> dict[str, int]:
        """Work that ended failed past its retries: dead intakes, failed mail, texts, imports and bulk jobs."""
        counts = {
            "intakes": select(func.count()).where(Intake.status == IntakeStatus.DEAD),
            "mail": select(func.count()).where(Outbox.status == "failed"),
            "texts": select(func.count()).where(Message.direction == "outbound", Message.status == "failed"),
            "imports": select(func.count()).where(Import.status == ImportStatus.FAILED),
            "jobs": select(func.count()).where(Job.status == JobStatus.FAILED),
            "webhooks": select(func.count()).where(WebhookDelivery.status == "failed"),
        }
        return {kind: int(self.session.execute(stmt).scalar_one()) for kind, stmt in counts.items()}

    def webhook_deliveries(self) -> list[tuple[str, str, int]]:
        """(event type, status, deliveries): what the outbound webhooks sent, wait to send, or gave up."""
        stmt = select(WebhookDelivery.event_type, WebhookDelivery.status, func.count()).group_by(
            WebhookDelivery.event_type, WebhookDelivery.status
        )
        return [(str(t), str(s), int(n)) for t, s, n in self.session.execute(stmt).all()]

    def assigned_per_agent(self) -> list[tuple[str, str, int]]:
        """(account slug, agent slug, live leads assigned to the agent): how evenly routing spreads the work."""
        stmt = (
            select(Account.slug, Entity.slug, func.count())
            .select_from(Lead)
            .join(Entity, Entity.id == Lead.assigned_agent_id)
            .join(Account, Account.id == Lead.account_id)
            .where(Lead.status.in_([LeadStatus.ACTIVE, LeadStatus.ARCHIVED]))
            .group_by(Account.slug, Entity.slug)
        )
        return [(str(account), str(agent), int(n)) for account, agent, n in self.session.execute(stmt).all()]
