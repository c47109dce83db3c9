"""Smart-number texts inside a unit of work: an inbound text routed to the lead and agent that texted
that phone last (S1-S3, O6), its keywords (S4, D8), and the gateway's delivery reports of outbound
texts (kept once per (sid, status), applied forward only)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import structlog

from leadrelay.settings import get_settings
from models.tables import Entity, Intake, IntakeStatus, Lead, Message
from models.uow import UnitOfWork
from rules.events import LeadSignup
from rules.ownership import decide_number_owner
from rules.texts import (
    CandidateLead,
    InboundText,
    NewTextLead,
    OutboundText,
    StatusReport,
    apply_status_reports,
    choose_reply_lead,
    keyword_action,
)
from workers import services, signups
from workers.notifications import queue_mail

log = structlog.get_logger(__name__)

EXCERPT = 160


def process_inbound_text(uow: UnitOfWork, intake: Intake) -> services.Outcome:
    """S1-S4, O6: put one inbound text on the lead it belongs to and tell that lead's agent, once.

    The intake row is already locked (``intakes.process_intake``); the phone is locked too, so two
    first texts from one phone make one lead. The reason on the timeline names the outbound text
    that decided (S1) or the fallback that did (S2, O6)."""
    text = InboundText.from_dict(intake.payload)
    number = uow.orgs.smart_number_of_account(intake.account_id, text.to)
    if number is None:
        return services.reject_intake(
            uow, intake, f"O9: {text.to} is not a smart number of this account (any more); register it and replay"
        )
    phone = text.from_e164
    if phone is None:
        return services.reject_intake(
            uow, intake, "D9: the sender is not a possible phone number; no lead is made for it"
        )
    account_id = intake.account_id
    at = intake.created_at
    uow.texts.lock_phone(account_id, phone)
    leads = uow.texts.live_leads_with_phone(account_id, phone)
    texts = uow.texts.last_outbound_texts(account_id, phone) if leads else []
    choice = choose_reply_lead(
        [CandidateLead(x.id, x.owner_entity_id, x.assigned_agent_id, x.last_activity_at, x.created_at) for x in leads],
        [OutboundText(m.id, m.lead_id, m.agent_id, name, m.created_at) for m, name in texts if m.lead_id is not None],
        number.entity_id,
    )
    created = False
    rule: str
    deciding: dict[str, Any] | None = None
    if isinstance(choice, NewTextLead):
        entity = uow.orgs.entity_ref(number.entity_id)
        ownership = decide_number_owner(entity, text.to)
        signup = LeadSignup(source_kind="sms", phone=phone, message=text.body, source_detail=f"text to {text.to}")
        outcome = signups.record_one(uow, intake, signup, ownership)
        if outcome.lead_id is None:  # X4: a replayed text whose lead was deleted
            return services.reject_intake(uow, intake, outcome.reason or "rejected")
        lead = uow.leads.get(outcome.lead_id)
        created = outcome.created
        rule, reason = choice.rule, f"{choice.reason} ({ownership.reason})"
    else:
        lead = uow.leads.get(choice.lead_id)
        rule, reason = choice.rule, choice.reason
        if choice.deciding_text is not None:
            t = choice.deciding_text
            deciding = {"message_id": str(t.message_id), "agent_id": t.agent_id, "at": t.created_at.isoformat()}
    assert lead is not None

    agent = uow.orgs.entity(lead.assigned_agent_id) if lead.assigned_agent_id is not None else None
    if deciding is not None and deciding["agent_id"] is not None:
        deciding["agent"] = uow.orgs.entity(deciding["agent_id"]).slug
    uow.texts.add_inbound_text(
        {
            "account_id": account_id,
            "lead_id": lead.id,
            "lead_phone": phone,
            "smart_number": text.to,
            "body": text.body,
            "agent_id": agent.id if agent else None,
            "provider_sid": text.message_sid,
            "status": "received",
            "intake_id": intake.id,
            "created_at": at,
            "updated_at": at,
        }
    )
    lead.last_activity_at = max(lead.last_activity_at, at)
    to_whom = f"for {agent.name}" if agent else "nobody is assigned to this lead"
    uow.leads.add_event(
        account_id=account_id,
        lead_id=lead.id,
        kind="text_received",
        intake_id=intake.id,
        at=at,
        summary=f"Text received on {text.to}: “{_excerpt(text.body)}”; {to_whom} ({reason})",
        data={
            "rule": rule,
            "reason": reason,
            "agent": agent.slug if agent else None,
            "deciding_text": deciding,
            "candidates": [str(x.id) for x in leads],
            "provider_sid": text.message_sid,
            "smart_number": text.to,
            "body": text.body,
            "num_media": text.num_media,
            "media_urls": list(text.media_urls),
        },
    )
    action = keyword_action(text.body)
    if action is not None:
        _subscription(uow, lead, intake, text, action == "unsubscribe", at)
    _notify(uow, lead, agent, text, reason, action)
    services.finish_intake(intake, IntakeStatus.DONE, lead.id, None)
    uow.commit()
    log.info(
        "intake.done",
        intake_id=str(intake.id),
        lead_id=str(lead.id),
        created=created,
        text_rule=rule,
        keyword=action,
    )
    return services.Outcome("done", lead.id, created=created)


def _subscription(uow: UnitOfWork, lead: Lead, intake: Intake, text: InboundText, stop: bool, at: dt.datetime) -> None:
    """S4, D8: this lead only; its duplicates keep their own subscription."""
    word = text.body.strip().upper()
    changed = lead.sms_unsubscribed != stop
    lead.sms_unsubscribed = stop
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
    uow.leads.add_event(
        account_id=lead.account_id,
        lead_id=lead.id,
        kind=kind,
        intake_id=intake.id,
        at=at,
        summary=summary,
        data={"rule": "S4", "keyword": word, "changed": changed, "provider_sid": text.message_sid},
    )


def _notify(
    uow: UnitOfWork, lead: Lead, agent: Entity | None, text: InboundText, reason: str, action: str | None
) -> None:
    """S3: the agent the reply went to is told by mail (an outbox row, sent after the commit). The
    subject is logged when the mail goes out, so it names no phone and no email."""
    if agent is None or not agent.email:
        return
    name = " ".join(p for p in (lead.first_name, lead.last_name) if p) or "A lead"
    subject = "A lead unsubscribed from texts" if action == "unsubscribe" else "New text from a lead"
    link = f"{get_settings().public_base_url.rstrip('/')}/v1/leads/{lead.id}"
    body = (
        f"{name} ({lead.phone_e164}) texted {text.to}:\n\n{text.body}\n\n"
        f"It is on the lead's timeline: {link}\nWhy you: {reason}\n"
    )
    queue_mail(
        uow,
        account_id=lead.account_id,
        dedupe_key=f"text:{lead.account_id}:{text.message_sid}",
        to_address=agent.email,
        subject=subject,
        body=body,
    )


def _excerpt(body: str) -> str:
    flat = " ".join(body.split())
    return flat if len(flat) <= EXCERPT else flat[: EXCERPT - 1] + "…"


# --- Delivery reports --------------------------------------------------------------------------------


def record_status_callback(
    uow: UnitOfWork, *, account_id: int, provider_sid: str, status: str, error_code: str | None, raw: dict[str, Any]
) -> bool:
    """Keep a delivery report once per (sid, status) and apply it to its outbound text if the text is
    known; commit. Whether the report was new.

    Locks: the text's row first (as the send holds it while recording the sid), then the sid, so a
    report and a send recording that sid never both miss each other: if the text was not visible
    before the sid lock, it is looked up again after it (the send that held it has committed)."""
    message = uow.texts.outbound_text_by_sid(provider_sid)
    uow.texts.lock_text_sid(provider_sid)
    new = uow.texts.add_status_callback(
        {
            "account_id": account_id,
            "provider_sid": provider_sid,
            "status": status,
            "error_code": error_code,
            "raw": raw,
        }
    )
    if message is None:
        message = uow.texts.outbound_text_by_sid(provider_sid)
    if message is not None and message.account_id == account_id:
        _apply_reports(uow, message)
    uow.commit()
    log.info("text.status", provider_sid=provider_sid, status=status, new=new, known=message is not None)
    return new


def apply_pending_statuses(uow: UnitOfWork, message: Message) -> None:
    """Apply the delivery reports already kept for ``message.provider_sid`` (callbacks can arrive before
    the send call returns the sid). For the send side: call it in the transaction that records the
    sid, after setting it and before the commit; it does not commit."""
    if not message.provider_sid:
        return
    uow.texts.lock_text_sid(message.provider_sid)
    _apply_reports(uow, message)


def _apply_reports(uow: UnitOfWork, message: Message) -> None:
    assert message.provider_sid is not None
    reports = [StatusReport(r.status, r.error_code) for r in uow.texts.status_callbacks_of(message.provider_sid)]
    change = apply_status_reports(message.status, reports)
    if change is None:
        return
    message.status = change.status
    if change.error is not None:
        message.error = change.error


__all__ = ["apply_pending_statuses", "process_inbound_text", "record_status_callback"]
