"""Every query of the application, named for what it answers, one module per area. Repositories never commit:
the unit of work (``models.uow``) holds one of each on its session and commits once.

- ``intakes``: the intakes (kept, locked while processed, reopened for a replay).
- ``org``: the account and its organisation: entities, domains, connections, routing rules and cursors,
  users as callers and targets, smart numbers, the snapshot a worker keeps.
- ``leads``: the leads, their timeline, site activity, shares, campaigns, facts for the rules, V1 and export.
- ``texts``: outbound and inbound texts (reply routing S1-S3), the gateway's delivery reports.
- ``jobs``: the bulk jobs and the leads they did not change.
- ``imports``: the CSV imports' rows, their uploaded files and the rows they refused.
- ``webhooks``: outbound webhooks' deliveries (written with a change, claimed, settled, listed, replayed).
- ``relay``, ``outbox``, ``metrics``: the relay's claims, the mail outbox, what ``GET /metrics`` reads.
- ``common``: what they share (the dialect's INSERT, entities as values, the caller).

Import from this package (``from models.repositories import LeadRepository``): it names every public
class, helper and constant of the modules."""

from __future__ import annotations

from models.repositories.common import Caller, dialect_insert, event_row, to_ref
from models.repositories.imports import ImportRepository, set_at_once
from models.repositories.intakes import IntakeRepository
from models.repositories.jobs import JobRepository
from models.repositories.leads import CLAIMED_COLUMNS, Candidate, ClaimedActivity, LeadRepository
from models.repositories.metrics import LATENCY_BUCKETS, Latency, MetricsRepository
from models.repositories.org import OrgRepository
from models.repositories.outbox import ClaimedMail, OutboxRepository
from models.repositories.relay import RELAY_BACKOFF_CAP, WAITING_WORK, RelayRepository, conditions_at, waiting_since
from models.repositories.texts import ReplyFacts, TextRepository
from models.repositories.webhooks import DELIVERIES, WebhookRepository, delivery_rows

__all__ = [
    "CLAIMED_COLUMNS",
    "DELIVERIES",
    "LATENCY_BUCKETS",
    "RELAY_BACKOFF_CAP",
    "WAITING_WORK",
    "Caller",
    "Candidate",
    "ClaimedActivity",
    "ClaimedMail",
    "ImportRepository",
    "IntakeRepository",
    "JobRepository",
    "Latency",
    "LeadRepository",
    "MetricsRepository",
    "OrgRepository",
    "OutboxRepository",
    "RelayRepository",
    "ReplyFacts",
    "TextRepository",
    "WebhookRepository",
    "conditions_at",
    "delivery_rows",
    "dialect_insert",
    "event_row",
    "set_at_once",
    "to_ref",
    "waiting_since",
]
