"""Smart-number texts, the pure part: which lead a reply goes to (S1, S2, O6), what a keyword does
(S4, D8), what an inbound text writes once its lead is known (:func:`plan_text`), and how a gateway's
delivery reports move an outbound text's status (forward only)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rules.signups import Event

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


# --- What an inbound text writes -------------------------------------------------------------------

# The text's excerpt in the timeline's summary, in characters.
EXCERPT = 160


@dataclass(frozen=True)
class TextLead:
    """The lead a text lands on, as its plan needs it: read with the candidates, or just made (O6)."""

    lead_id: uuid.UUID
    assigned_agent_id: int | None
    last_activity_at: dt.datetime
    sms_unsubscribed: bool
    first_name: str | None = None
    last_name: str | None = None
    phone_e164: str | None = None


@dataclass(frozen=True)
class Agent:
    """An agent as a text's timeline and mail name it (the organisation a worker keeps)."""

    id: int
    slug: str
    name: str
    email: str | None = None


@dataclass(frozen=True)
class LeadChange:
    """What a text changes on its lead: its last activity moved to at least ``activity_at``, its texts'
    subscription set to ``sms_unsubscribed``; None for what stays."""

    activity_at: dt.datetime | None = None
    sms_unsubscribed: bool | None = None


@dataclass(frozen=True)
class TextMail:
    """S3: the agent told of the text (once per gateway sid: ``dedupe_key``)."""

    dedupe_key: str
    to_address: str
    subject: str
    body: str
    correlation_id: str | None


@dataclass(frozen=True)
class TextPlan:
    """Everything one inbound text writes, as values: its message row, its timeline, what it changes on
    its lead, the agent's mail; its intake then ends ``done`` on ``lead_id``."""

    lead_id: uuid.UUID
    message: dict[str, Any]  # the inbound row of ``messages`` (its columns), kept once per gateway sid
    events: tuple[Event, ...]  # kept once per (lead, intake, kind)
    lead_change: LeadChange | None
    mail: TextMail | None
    rule: str
    keyword: Literal["unsubscribe", "resubscribe"] | None


def plan_text(
    text: InboundText,
    *,
    account_id: int,
    intake_id: uuid.UUID,
    at: dt.datetime,
    lead: TextLead,
    rule: str,
    reason: str,
    deciding: OutboundText | None,
    candidates: Sequence[uuid.UUID],
    agents: Mapping[int, Agent],
    public_base_url: str,
    correlation_id: str | None,
) -> TextPlan:
    """S1-S4: what a text routed to ``lead`` (by ``rule``, for ``reason``) writes. The text is kept on the
    lead for its assigned agent and put on its timeline with the reason and the deciding text; the lead's
    last activity moves to the text's time; a keyword (S4) changes this lead's subscription only (D8), with
    a note saying whether it changed; and the assigned agent, if it has a mail address, is told (S3).
    ``agents`` holds the lead's assigned agent and the deciding text's."""
    phone = text.from_e164
    assert phone is not None, "D9: a text from no possible phone is rejected before it is planned"
    agent = agents[lead.assigned_agent_id] if lead.assigned_agent_id is not None else None
    deciding_data: dict[str, Any] | None = None
    if deciding is not None:
        deciding_data = {
            "message_id": str(deciding.message_id),
            "agent_id": deciding.agent_id,
            "at": deciding.created_at.isoformat(),
        }
        if deciding.agent_id is not None:
            deciding_data["agent"] = agents[deciding.agent_id].slug
    message = {
        "account_id": account_id,
        "lead_id": lead.lead_id,
        "direction": "inbound",
        "lead_phone": phone,
        "smart_number": text.to,
        "body": text.body,
        "agent_id": agent.id if agent else None,
        "provider_sid": text.message_sid,
        "status": "received",
        "intake_id": intake_id,
        "created_at": at,
        "updated_at": at,
    }
    to_whom = f"for {agent.name}" if agent else "nobody is assigned to this lead"
    events = [
        Event(
            lead.lead_id,
            "text_received",
            intake_id,
            at,
            f"Text received on {text.to}: “{excerpt(text.body)}”; {to_whom} ({reason})",
            {
                "rule": rule,
                "reason": reason,
                "agent": agent.slug if agent else None,
                "deciding_text": deciding_data,
                "candidates": [str(c) for c in candidates],
                "provider_sid": text.message_sid,
                "smart_number": text.to,
                "body": text.body,
                "num_media": text.num_media,
                "media_urls": list(text.media_urls),
            },
        )
    ]
    action = keyword_action(text.body)
    unsubscribed: bool | None = None
    if action is not None:
        stop = action == "unsubscribe"
        events.append(_subscription_note(lead, intake_id, text, stop, at))
        unsubscribed = stop if stop != lead.sms_unsubscribed else None
    moved = at if at > lead.last_activity_at else None
    change = LeadChange(moved, unsubscribed) if moved is not None or unsubscribed is not None else None
    mail = None
    if agent is not None and agent.email:
        mail = _mail(account_id, lead, agent.email, text, reason, action, public_base_url, correlation_id)
    return TextPlan(lead.lead_id, message, tuple(events), change, mail, rule, action)


@dataclass(frozen=True)
class TextIn:
    """One inbound text of a batch, as the batch plans it: its intake, its time and the smart number's entity."""

    intake_id: uuid.UUID
    text: InboundText
    at: dt.datetime
    number_entity_id: int


@dataclass(frozen=True)
class PhoneFacts:
    """What the texts from one phone are routed over (S1, S2): its live leads as :func:`choose_reply_lead`
    compares them and as :func:`plan_text` writes on them, and each one's last outbound text there."""

    candidates: tuple[CandidateLead, ...]
    leads: Mapping[uuid.UUID, TextLead]
    last_texts: tuple[OutboundText, ...]


@dataclass(frozen=True)
class MadeLead:
    """O6: the lead a text's signup made (or joined), and the reason its timeline gives."""

    lead: TextLead
    created: bool
    reason: str


@dataclass(frozen=True)
class NeedsLead:
    """O6: the text makes a lead first (``choice``; None for a later text of a phone whose first text
    makes one: it is planned once that lead is made)."""

    intake_id: uuid.UUID
    choice: NewTextLead | None


@dataclass(frozen=True)
class PlannedText:
    """A text's plan, with how it was routed."""

    intake_id: uuid.UUID
    plan: TextPlan
    created: bool


def plan_texts(
    items: Sequence[TextIn],
    facts: Mapping[str, PhoneFacts],
    made: Mapping[uuid.UUID, MadeLead],
    *,
    account_id: int,
    agents: Mapping[int, Agent],
    public_base_url: str,
    correlation_id: str | None,
) -> list[PlannedText | NeedsLead]:
    """S1-S4, O6 for a batch of texts, in arrival order, exactly as one by one: each text is routed over its
    phone's leads as the texts before it left them (a text moves its lead's last activity, which S2
    compares; STOP and START change the subscription the next one notes). A text whose phone has no lead
    yet (O6) and is not in ``made`` is :class:`NeedsLead`: the caller makes its lead (the signup path) and
    plans again with it in ``made`` and the phone's facts read again; the texts after it from that phone
    then land on that lead. ``facts`` holds every phone's (the phone of a text in ``made``: as read after
    its lead was made); ``agents`` every agent the facts and the made leads name."""
    candidates = {phone: list(f.candidates) for phone, f in facts.items()}
    leads: dict[uuid.UUID, TextLead] = {}
    for f in facts.values():
        leads.update(f.leads)
    for m in made.values():
        leads.setdefault(m.lead.lead_id, m.lead)
    waiting: set[str] = set()  # phones whose first text waits for its lead: the later ones wait too
    out: list[PlannedText | NeedsLead] = []
    for item in items:
        phone = item.text.from_e164
        assert phone is not None, "D9: a text from no possible phone is rejected before it is planned"
        phone_facts = facts[phone]
        created = False
        deciding: OutboundText | None = None
        seen: list[uuid.UUID]
        if phone in waiting:
            out.append(NeedsLead(item.intake_id, None))
            continue
        if item.intake_id in made:
            new = made[item.intake_id]
            lead, created, rule, reason, seen = leads[new.lead.lead_id], new.created, "O6", new.reason, []
        else:
            choice = choose_reply_lead(candidates[phone], phone_facts.last_texts, item.number_entity_id)
            if isinstance(choice, NewTextLead):
                waiting.add(phone)
                out.append(NeedsLead(item.intake_id, choice))
                continue
            lead, rule, reason, deciding = leads[choice.lead_id], choice.rule, choice.reason, choice.deciding_text
            seen = [c.lead_id for c in candidates[phone]]
        plan = plan_text(
            item.text,
            account_id=account_id,
            intake_id=item.intake_id,
            at=item.at,
            lead=lead,
            rule=rule,
            reason=reason,
            deciding=deciding,
            candidates=seen,
            agents=agents,
            public_base_url=public_base_url,
            correlation_id=correlation_id,
        )
        out.append(PlannedText(item.intake_id, plan, created))
        change = plan.lead_change
        if change is not None:
            after = dataclasses.replace(
                lead,
                last_activity_at=change.activity_at or lead.last_activity_at,
                sms_unsubscribed=lead.sms_unsubscribed if change.sms_unsubscribed is None else change.sms_unsubscribed,
            )
            leads[lead.lead_id] = after
            candidates[phone] = [
                dataclasses.replace(c, last_activity_at=after.last_activity_at) if c.lead_id == lead.lead_id else c
                for c in candidates[phone]
            ]
    return out


def _subscription_note(lead: TextLead, intake_id: uuid.UUID, text: InboundText, stop: bool, at: dt.datetime) -> Event:
    """S4, D8: this lead only; its duplicates keep their own subscription."""
    word = text.body.strip().upper()
    changed = lead.sms_unsubscribed != stop
    if stop:
        kind = "sms_unsubscribed"
        summary = (
            f"Unsubscribed from texts by replying “{word}” (S4; this lead only, its duplicates stay subscribed: D8)"
        )
    else:
        kind = "sms_resubscribed"
        summary = f"Subscribed to texts again by replying “{word}” (S4; this lead only: D8)"
    if not changed:
        summary += "; it already was"
    data = {"rule": "S4", "keyword": word, "changed": changed, "provider_sid": text.message_sid}
    return Event(lead.lead_id, kind, intake_id, at, summary, data)


def _mail(
    account_id: int,
    lead: TextLead,
    to_address: str,
    text: InboundText,
    reason: str,
    action: str | None,
    public_base_url: str,
    correlation_id: str | None,
) -> TextMail:
    """S3: the agent the reply went to is told by mail. The subject is logged when the mail goes out, so it
    names no phone and no email."""
    name = " ".join(p for p in (lead.first_name, lead.last_name) if p) or "A lead"
    subject = "A lead unsubscribed from texts" if action == "unsubscribe" else "New text from a lead"
    link = f"{public_base_url.rstrip('/')}/v1/leads/{lead.lead_id}"
    body = (
        f"{name} ({lead.phone_e164}) texted {text.to}:\n\n{text.body}\n\n"
        f"It is on the lead's timeline: {link}\nWhy you: {reason}\n"
    )
    return TextMail(f"text:{account_id}:{text.message_sid}", to_address, subject, body, correlation_id)


def excerpt(body: str) -> str:
    """The body on one line, cut to :data:`EXCERPT` characters."""
    flat = " ".join(body.split())
    return flat if len(flat) <= EXCERPT else flat[: EXCERPT - 1] + "…"


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
