"""Outbound webhooks, the pure part: which events there are, which timeline entry is which event, the
body a receiver gets, and when a failed delivery is tried again.

An event's body follows the Standard Webhooks specification: ``{"type", "timestamp", "data"}``. ``data``
names the lead, its owner and assignee (by id), the rule that decided and its explanation (the same as
the timeline's), and ``version``: a number that grows with every change of the lead, so a receiver that
gets two events of one lead out of order keeps the higher one.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# Every event type, with what it reports (the manual and the OpenAPI description list the same).
EVENT_TYPES: dict[str, str] = {
    "lead.created": "A signup, provider lead or text made a new lead (a CSV import's leads are in its import.finished).",
    "lead.signup": "A signup joined a lead that exists already (D3/D4/D5): no new lead.",
    "lead.activity": "A page view, property view or save landed on a lead (D7).",
    "lead.assigned": "Routing or a person gave the lead an assignee, or put it in a team's pond (A1-A5, T6).",
    "lead.transferred": "The lead has a new owner (T1-T3).",
    "lead.shared": "The lead was shared with a user, or the share's permission changed (SH1-SH3).",
    "lead.unshared": "A share of the lead was removed (SH6, A5).",
    "lead.merged": "Another lead was merged into this one (M4, M5); the other lead's id is in the details.",
    "lead.archived": "The lead was archived (X2).",
    "lead.deleted": "The lead was deleted; its tombstone stays (X1, X4). No contact details are sent.",
    "lead.unsubscribed": "The lead unsubscribed from mail or texts (D8).",
    "text.received": "An inbound text was put on a lead; the details say which outbound text decided (S1-S4).",
    "text.status": "The SMS gateway reported an outbound text's delivery status.",
    "intake.rejected": "A kept intake was refused by a rule (O9, X4, ...), with the reason; it can be replayed.",
    "intake.dead": "A kept intake failed past its retries; it can be replayed.",
    "import.finished": (
        "A CSV import ended, done or failed, with its counts: one event for the whole file (its leads send no"
        " lead.created each; GET /v1/imports/{id} and GET /v1/leads give them)."
    ),
}

# Timeline kinds and the event each one is. A kind not here (notes, campaigns, edits) sends nothing.
TIMELINE_EVENTS: dict[str, str] = {
    "created": "lead.created",
    "signup": "lead.signup",
    "page_view": "lead.activity",
    "property_view": "lead.activity",
    "property_save": "lead.activity",
    "routed": "lead.assigned",
    "assigned": "lead.assigned",
    "pond": "lead.assigned",
    "transferred": "lead.transferred",
    "shared": "lead.shared",
    "unshared": "lead.unshared",
    "merged": "lead.merged",
    "archived": "lead.archived",
    "deleted": "lead.deleted",
    "unsubscribed": "lead.unsubscribed",
    "sms_unsubscribed": "lead.unsubscribed",
    "text_received": "text.received",
}

# Deliveries that fail are tried again after these waits (the Standard Webhooks guidance: about a day
# in all), then left ``failed`` for a replay. LEADRELAY_WEBHOOKS_RETRY_SECONDS may shorten them.
RETRY_SECONDS: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
# Each wait is stretched by up to this fraction at random, so receivers coming back are not hit by every
# retry at the same second.
JITTER = 0.2
# What is kept of a receiver's answer: a short excerpt, never trusted, never more.
EXCERPT_CHARS = 200


@dataclass(frozen=True)
class LeadView:
    """A lead as an event describes it (slugs, not row ids)."""

    id: uuid.UUID
    status: str
    owner: str | None
    assignee: str | None
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None


@dataclass(frozen=True)
class Event:
    """One event of one account, before it is addressed to the endpoints that subscribe to it."""

    type: str
    at: dt.datetime
    data: dict[str, Any]
    lead_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Delivery:
    """An event addressed to one endpoint: the row the writer inserts, in the change's own transaction."""

    id: uuid.UUID
    endpoint_id: int
    event: Event


@dataclass(frozen=True)
class Subscriptions:
    """An account's active endpoints by the event types they want."""

    by_type: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(self.by_type.values())

    def wants(self, event_type: str) -> tuple[int, ...]:
        return self.by_type.get(event_type, ())


def subscriptions(endpoints: Iterable[tuple[int, Sequence[str]]]) -> Subscriptions:
    """``(endpoint id, its events)`` of the active endpoints -> who wants what; ``*`` is every type."""
    by_type: dict[str, list[int]] = {}
    for endpoint_id, events in endpoints:
        wanted = EVENT_TYPES if "*" in events else events
        for event_type in wanted:
            by_type.setdefault(event_type, []).append(endpoint_id)
    return Subscriptions({t: tuple(ids) for t, ids in by_type.items()})


def lead_data(lead: LeadView | None) -> dict[str, Any]:
    """What every lead event says of its lead; a deleted lead's contact details are not sent (X4)."""
    if lead is None:
        return {}
    contact = (
        {}
        if lead.status == "deleted"
        else {
            "first_name": lead.first_name,
            "last_name": lead.last_name,
            "email": lead.email,
            "phone": lead.phone,
        }
    )
    return {
        "lead_id": str(lead.id),
        "status": lead.status,
        "owner": lead.owner,
        "assignee": lead.assignee,
        "lead": contact,
    }


def timeline_event(
    kind: str,
    *,
    at: dt.datetime,
    summary: str,
    details: Mapping[str, Any],
    lead: LeadView | None,
    actor: str = "system",
    intake_id: uuid.UUID | None = None,
) -> Event | None:
    """The event a timeline entry is, or None for a kind that sends none (:data:`TIMELINE_EVENTS`)."""
    event_type = TIMELINE_EVENTS.get(kind)
    if event_type is None:
        return None
    rule = details.get("rule") or details.get("cause")
    data: dict[str, Any] = {
        **lead_data(lead),
        "rule": rule,
        "explanation": summary,
        "details": dict(details),
        "actor": actor,
        "intake_id": str(intake_id) if intake_id else None,
    }
    return Event(event_type, at, data, lead.id if lead else None)


class TimelineEntry(Protocol):
    """A timeline entry as a plan holds it (``rules.signups.Event``, ``rules.texts.Event``)."""

    @property
    def lead_id(self) -> uuid.UUID: ...
    @property
    def kind(self) -> str: ...
    @property
    def intake_id(self) -> uuid.UUID | None: ...
    @property
    def at(self) -> dt.datetime: ...
    @property
    def summary(self) -> str: ...
    @property
    def data(self) -> dict[str, Any]: ...
    @property
    def actor(self) -> str: ...


def timeline_events(entries: Iterable[TimelineEntry], leads: Mapping[uuid.UUID, LeadView]) -> list[Event]:
    """The events a plan's timeline entries are, each describing its lead as ``leads`` has it."""
    out: list[Event] = []
    for entry in entries:
        event = timeline_event(
            entry.kind,
            at=entry.at,
            summary=entry.summary,
            details=entry.data,
            lead=leads.get(entry.lead_id),
            actor=entry.actor,
            intake_id=entry.intake_id,
        )
        if event is not None:
            out.append(event)
    return out


def intake_event(event_type: str, *, intake_id: uuid.UUID, source: str, reason: str, at: dt.datetime) -> Event:
    """``intake.rejected`` or ``intake.dead``: no lead; the intake and why."""
    rule = reason.split(":", 1)[0] if ":" in reason[:6] else None
    return Event(event_type, at, {"intake_id": str(intake_id), "source": source, "rule": rule, "explanation": reason})


def import_event(
    *,
    import_id: uuid.UUID,
    status: str,
    counts: Mapping[str, int],
    error: str | None,
    at: dt.datetime,
) -> Event:
    """``import.finished``: no lead; the import, how it ended and what it made of its rows."""
    data: dict[str, Any] = {"import_id": str(import_id), "status": status, **counts, "error": error}
    return Event("import.finished", at, data)


def address(
    events: Iterable[Event], subs: Subscriptions, new_id: Callable[[], uuid.UUID] = uuid.uuid4
) -> list[Delivery]:
    """Each event once for every endpoint that wants its type, in the events' order."""
    return [Delivery(new_id(), endpoint_id, event) for event in events for endpoint_id in subs.wants(event.type)]


def body(event_type: str, at: dt.datetime, data: Mapping[str, Any], version: int | None) -> dict[str, Any]:
    """The JSON body a receiver gets (the same on every attempt)."""
    out: dict[str, Any] = {"type": event_type, "timestamp": at.astimezone(dt.UTC).isoformat(), "data": dict(data)}
    if version is not None and "lead_id" in data:
        out["data"]["version"] = version
    return out


def message_id(delivery_id: uuid.UUID) -> str:
    """The ``webhook-id`` header: the delivery's id, the same on every attempt (receivers dedupe by it)."""
    return f"msg_{delivery_id.hex}"


def retry_wait(
    attempts: int, schedule: Sequence[float] = RETRY_SECONDS, *, rand: Callable[[], float] = random.random
) -> float | None:
    """Seconds before the next try of a delivery that has failed ``attempts`` times (1 after the first
    failure), jittered; None when the schedule is spent and the delivery is ``failed``."""
    if attempts < 1 or attempts > len(schedule):
        return None
    return schedule[attempts - 1] * (1 + JITTER * rand())


def excerpt(text: str) -> str:
    """The part of a receiver's answer that is kept: the start, printable characters only."""
    kept = "".join(c if c.isprintable() else " " for c in text[: EXCERPT_CHARS * 2])
    return kept[:EXCERPT_CHARS]


def outcome_of(status_code: int) -> str:
    """What a receiver's HTTP status means: ``delivered`` (2xx), ``gone`` (410: the endpoint is disabled)
    or ``retry`` (anything else: redirects are not followed)."""
    if 200 <= status_code < 300:
        return "delivered"
    if status_code == 410:
        return "gone"
    return "retry"
