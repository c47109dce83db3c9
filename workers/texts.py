"""Smart-number texts inside a unit of work: an inbound text routed to the lead and agent that texted
that phone last (S1-S3, O6), its keywords (S4, D8), and the gateway's delivery reports of outbound
texts (kept once per (sid, status), applied forward only)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import structlog

from leadrelay.settings import get_settings
from models.orgsnapshot import OrgSnapshot
from models.signups import Claimed
from models.tables import Intake, Message
from models.uow import UnitOfWork
from rules.events import LeadSignup
from rules.ownership import decide_number_owner
from rules.texts import (
    Agent,
    InboundText,
    NewTextLead,
    OutboundText,
    StatusReport,
    TextLead,
    apply_status_reports,
    choose_reply_lead,
    plan_text,
)
from workers import notifications, services, signups, webhooks

log = structlog.get_logger(__name__)


def process_inbound_text(uow: UnitOfWork, intake: Intake) -> services.Outcome:
    """S1-S4, O6: put one inbound text on the lead it belongs to and tell that lead's agent, once.

    The intake row is already locked (``intakes.process_intake``), and the account's organisation is the
    one read at its version then (smart numbers, agents' names and addresses); the phone is locked too,
    so two first texts from one phone make one lead. Then, as every writer here: the facts are read (the
    phone's live leads with their last outbound texts, one statement), the text is planned purely
    (:func:`rules.texts.plan_text`) and the plan written with the intake's end (one statement on
    PostgreSQL). The reason on the timeline names the outbound text that decided (S1) or the fallback
    that did (S2, O6)."""
    text = InboundText.from_dict(intake.payload)
    snapshot = _snapshot(uow, intake)
    number_entity_id = snapshot.smart_numbers.get(text.to)
    if number_entity_id is None:
        return services.reject_intake(
            uow, intake, f"O9: {text.to} is not a smart number of this account (any more); register it and replay"
        )
    phone = text.from_e164
    if phone is None:
        return services.reject_intake(
            uow, intake, "D9: the sender is not a possible phone number; no lead is made for it"
        )
    account_id = intake.account_id
    uow.texts.lock_phone(account_id, phone)
    facts = uow.texts.reply_facts(account_id, phone)
    agents = _agents(uow, snapshot, [t.agent_id for t in facts.last_texts])
    choice = choose_reply_lead(
        facts.candidates,
        [
            OutboundText(
                t.message_id, t.lead_id, t.agent_id, agents[t.agent_id].name if t.agent_id else None, t.created_at
            )
            for t in facts.last_texts
        ],
        number_entity_id,
    )
    created = False
    deciding: OutboundText | None = None
    lead: TextLead
    rule: str
    if isinstance(choice, NewTextLead):
        ownership = decide_number_owner(uow.orgs.entity_ref(number_entity_id), text.to)
        signup = LeadSignup(source_kind="sms", phone=phone, message=text.body, source_detail=f"text to {text.to}")
        outcome = signups.record_one(uow, intake, signup, ownership)
        if outcome.lead_id is None:  # X4: a replayed text whose lead was deleted
            return services.reject_intake(uow, intake, outcome.reason or "rejected")
        lead = uow.texts.text_lead(outcome.lead_id)
        created = outcome.created
        rule, reason = choice.rule, f"{choice.reason} ({ownership.reason})"
    else:
        lead = facts.leads[choice.lead_id]
        rule, reason, deciding = choice.rule, choice.reason, choice.deciding_text
    if lead.assigned_agent_id is not None:
        agents = {**agents, **_agents(uow, snapshot, [lead.assigned_agent_id])}
    plan = plan_text(
        text,
        account_id=account_id,
        intake_id=intake.id,
        at=intake.created_at,
        lead=lead,
        rule=rule,
        reason=reason,
        deciding=deciding,
        candidates=[c.lead_id for c in facts.candidates],
        agents=agents,
        public_base_url=get_settings().public_base_url,
        correlation_id=notifications.correlation_id(),
    )
    webhooks.record_timeline(
        uow,
        account_id,
        [
            {
                "lead_id": e.lead_id,
                "kind": e.kind,
                "intake_id": e.intake_id,
                "at": e.at,
                "summary": e.summary,
                "data": e.data,
                "actor": e.actor,
            }
            for e in plan.events
        ],
    )
    if uow.texts.write_inbound(account_id, plan, intake):
        uow.after_commit(notifications.request_flush)
    uow.commit()
    log.info(
        "intake.done",
        intake_id=str(intake.id),
        lead_id=str(lead.lead_id),
        created=created,
        text_rule=rule,
        keyword=plan.keyword,
    )
    return services.Outcome("done", lead.lead_id, created=created)


def _snapshot(uow: UnitOfWork, intake: Intake) -> OrgSnapshot:
    """The organisation ``intakes.process_intake`` set for this intake; read at the account's version now
    when none was (a caller of its own)."""
    if uow.orgs.snapshot is not None and uow.orgs.snapshot.account_id == intake.account_id:
        return uow.orgs.snapshot
    account = uow.orgs.account(intake.account_id)
    claimed = Claimed([intake], account.org_version, account.duplication, account.id)
    return signups.snapshot_of(uow, uow.signups, claimed)


def _agents(uow: UnitOfWork, snapshot: OrgSnapshot, ids: Iterable[int | None]) -> dict[int, Agent]:
    """The agents ``ids`` name, as the organisation kept names them; one made since its version (an org
    apply that committed after the intake's lock) is read from the tables."""
    wanted = {i for i in ids if i is not None}
    agents = {
        i: Agent(i, snapshot.slugs[i], snapshot.contacts[i].name, snapshot.contacts[i].email)
        for i in wanted
        if i in snapshot.slugs and i in snapshot.contacts
    }
    for i, entity in uow.orgs.entities_by_ids(wanted - set(agents)).items():
        agents[i] = Agent(i, entity.slug, entity.name, entity.email)
    return agents


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
    webhooks.record_text_status(uow, message)


__all__ = ["apply_pending_statuses", "process_inbound_text", "record_status_callback"]
