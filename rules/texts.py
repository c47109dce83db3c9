"""Smart-number texts, the pure part: which lead a reply goes to (S1, S2, O6), what a keyword does
(S4, D8), and how a gateway's delivery reports move an outbound text's status (forward only)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

# --- The canonical inbound text -------------------------------------------------------------------


@dataclass(frozen=True)
class InboundText:
    """An inbound text as the intake keeps it (the gateway's raw body is kept beside it)."""

    message_sid: str
    to: str  # the smart number, E.164
    from_raw: str  # as the gateway sent it
    from_e164: str | None  # None when it is not a possible phone number (D9): no lead can be made
    body: str
    account_sid: str | None = None
    num_media: int = 0
    media_urls: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "message_sid": self.message_sid,
            "to": self.to,
            "from_raw": self.from_raw,
            "from_e164": self.from_e164,
            "body": self.body,
            "account_sid": self.account_sid,
            "num_media": self.num_media,
            "media_urls": list(self.media_urls),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InboundText:
        return cls(
            message_sid=str(data["message_sid"]),
            to=str(data["to"]),
            from_raw=str(data.get("from_raw") or ""),
            from_e164=data.get("from_e164"),
            body=str(data.get("body") or ""),
            account_sid=data.get("account_sid"),
            num_media=int(data.get("num_media") or 0),
            media_urls=tuple(data.get("media_urls") or ()),
        )


# --- Which lead a reply goes to ------------------------------------------------------------------


@dataclass(frozen=True)
class CandidateLead:
    """A live lead of the account with the texting phone (a duplicate, D1, shares it)."""

    lead_id: uuid.UUID
    owner_id: int
    assigned_agent_id: int | None
    last_activity_at: dt.datetime
    created_at: dt.datetime


@dataclass(frozen=True)
class OutboundText:
    """The last outbound text to that phone of one candidate lead: what S1 compares."""

    message_id: uuid.UUID
    lead_id: uuid.UUID
    agent_id: int | None  # the agent it counts for (SH4: the owner's side, whoever really sent it)
    agent_name: str | None
    created_at: dt.datetime


@dataclass(frozen=True)
class ReplyRoute:
    """The lead a reply lands on, the rule that chose it and why; ``deciding_text`` for S1."""

    lead_id: uuid.UUID
    rule: Literal["S1", "S2"]
    reason: str
    deciding_text: OutboundText | None = None


@dataclass(frozen=True)
class NewTextLead:
    """O6: no lead of the account has this phone; the text makes one, owned by the number's entity."""

    reason: str
    rule: Literal["O6"] = "O6"


def choose_reply_lead(
    candidates: Sequence[CandidateLead], last_texts: Iterable[OutboundText], number_entity_id: int
) -> ReplyRoute | NewTextLead:
    """S1-S2, O6: the lead an inbound text from a phone lands on.

    S1: the candidate with the most recent outbound text to that phone, across all the duplicates
    (John texted yesterday, Jill today: Jill's lead). S2: with no outbound text to any of them, the
    candidate owned by the smart number's entity, else the most recently active one. O6: no
    candidate at all makes a new lead. Texts of leads that are not candidates are ignored. Ties go
    to the later created lead, then the larger id, so the answer never depends on input order."""
    if not candidates:
        return NewTextLead(
            "O6: no lead of this account has this phone; the text makes a new lead owned by the number's entity"
        )
    by_id = {c.lead_id: c for c in candidates}
    texts = [t for t in last_texts if t.lead_id in by_id]
    if texts:
        last = max(texts, key=lambda t: (t.created_at, str(t.message_id)))
        who = last.agent_name or "an unnamed sender"
        others = len({t.lead_id for t in texts}) - 1
        reason = (
            f"S1: the most recent outbound text to this phone was {who}'s at {_when(last.created_at)} "
            f"to this lead"
            + (
                f" (later than the last text to {others} other lead{'s' if others != 1 else ''} with this phone)"
                if others
                else ""
            )
        )
        return ReplyRoute(last.lead_id, "S1", reason, last)
    owned = [c for c in candidates if c.owner_id == number_entity_id]
    if owned:
        chosen = _most_recently_active(owned)
        reason = "S2: no outbound text to this phone yet; the lead owned by the smart number's entity"
        if len(owned) > 1:
            reason += f" (the most recently active of {len(owned)})"
        return ReplyRoute(chosen.lead_id, "S2", reason)
    chosen = _most_recently_active(candidates)
    reason = (
        "S2: no outbound text to this phone yet and no lead of the smart number's entity; the most recently active lead"
    )
    if len(candidates) > 1:
        reason += f" of {len(candidates)} with this phone"
    return ReplyRoute(chosen.lead_id, "S2", reason)


def _most_recently_active(leads: Sequence[CandidateLead]) -> CandidateLead:
    return max(leads, key=lambda c: (c.last_activity_at, c.created_at, str(c.lead_id)))


def _when(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if at.tzinfo else at.strftime("%Y-%m-%d %H:%M")


# --- Keywords (S4, D8) ----------------------------------------------------------------------------

# Twilio's default opt-out and opt-in keywords: the whole message, case-insensitive, trimmed.
STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
START_WORDS = frozenset({"START", "UNSTOP"})


def keyword_action(body: str) -> Literal["unsubscribe", "resubscribe"] | None:
    """S4: a text that is exactly an opt-out keyword unsubscribes its lead from texts, an opt-in
    keyword re-subscribes it (D8: that lead only). "Please stop" is a message, not a keyword, as
    for Twilio, which matches the whole body."""
    word = body.strip().upper()
    if word in STOP_WORDS:
        return "unsubscribe"
    if word in START_WORDS:
        return "resubscribe"
    return None


# --- Delivery statuses ----------------------------------------------------------------------------

# The outbound life of a text; statuses of one rank are alternatives (the first reported stays).
STATUS_RANK = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 1,
    "sending": 2,
    "sent": 3,
    "delivered": 4,
    "undelivered": 4,
    "failed": 4,
    "canceled": 4,
    "read": 5,
}
FAILED_STATUSES = frozenset({"undelivered", "failed"})


@dataclass(frozen=True)
class StatusReport:
    """One delivery status the gateway reported for a text (a status callback)."""

    status: str
    error_code: str | None = None


@dataclass(frozen=True)
class StatusChange:
    status: str
    error: str | None  # set when the text ends failed or undelivered with an error code


def apply_status_reports(current: str, reports: Iterable[StatusReport]) -> StatusChange | None:
    """The status a text moves to given the reports received so far, in any order, or None for no
    change. Statuses only move forward (queued < sending < sent < delivered/undelivered/failed):
    a late "sent" never moves a delivered text back, and of two final statuses the one already
    there stays. Unknown statuses are ignored."""
    status, error, changed = current, None, False
    for report in sorted(reports, key=lambda r: STATUS_RANK.get(r.status, -1)):
        rank = STATUS_RANK.get(report.status)
        if rank is None or rank <= STATUS_RANK.get(status, -1):
            continue
        status, changed = report.status, True
        error = f"gateway error {report.error_code}" if report.status in FAILED_STATUSES and report.error_code else None
    return StatusChange(status, error) if changed else None
