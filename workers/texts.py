"""Smart-number texts inside a unit of work: an inbound text routed to the lead and agent that texted
that phone last (S1-S3, O6), its keywords (S4, D8), and the gateway's delivery reports of outbound
texts (kept once per (sid, status), applied forward only)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import structlog

from leadrelay.settings import get_settings
from models.orgsnapshot import OrgSnapshot
from models.repositories import ReplyFacts, event_row
from models.signups import Claimed, SignupStore
from models.tables import Intake, Message
from models.uow import UnitOfWork
from rules.events import LeadSignup
from rules.ownership import decide_number_owner
from rules.signups import SignupIn
from rules.texts import (
    Agent,
    InboundText,
    MadeLead,
    NeedsLead,
    OutboundText,
    PhoneFacts,
    PlannedText,
    StatusReport,
    TextIn,
    apply_status_reports,
    plan_texts,
)
from workers import notifications, services, signups, webhooks

log = structlog.get_logger(__name__)


def run_batch(
    uow: UnitOfWork, store: SignupStore, claimed: Claimed, intakes: Sequence[Intake]
) -> dict[uuid.UUID, services.Outcome]:
    """S1-S4, O6: put the claimed inbound texts ``intakes`` (rows locked by ``intakes.process_intake``, of
    one account, oldest first) each on the lead it belongs to, tell each lead's agent once, and commit,
    as one transaction whatever the batch's size.

    The account's organisation is the one read at its version with the lock (smart numbers, agents'
    names and addresses). The texts' phones are locked (in key order, one statement), so two first texts
    from one phone never make two leads; then the facts are read for every phone at once (their live
    leads with their last outbound texts, one statement), the texts are planned purely in arrival order
    (:func:`rules.texts.plan_texts`: two texts from one phone route as one by one would), and the plans
    and the intakes' ends are written together (one statement on PostgreSQL). A text from a phone with no
    lead (O6) first makes its lead through the signup path, those of the batch together; the phones it
    made leads for are read again, and the batch planned again. The reason on the timeline names the
    outbound text that decided (S1) or the fallback that did (S2, O6)."""
    snapshot = signups.snapshot_of(uow, store, claimed)
    account_id = claimed.account_id
    items: list[TextIn] = []
    rejected: list[tuple[Intake, str]] = []
    for intake in intakes:
        text = InboundText.from_dict(intake.payload)
        number_entity_id = snapshot.smart_numbers.get(text.to)
        if number_entity_id is None:
            rejected.append(
                (intake, f"O9: {text.to} is not a smart number of this account (any more); register it and replay")
            )
        elif text.from_e164 is None:
            rejected.append((intake, "D9: the sender is not a possible phone number; no lead is made for it"))
        else:
            items.append(TextIn(intake.id, text, intake.created_at, number_entity_id))
    by_id = {intake.id: intake for intake in intakes}
    item_of = {item.intake_id: item for item in items}
    phones = sorted({item.text.from_e164 for item in items if item.text.from_e164 is not None})
    uow.texts.lock_phones(account_id, phones)
    facts = uow.texts.reply_facts_of(account_id, phones)
    made: dict[uuid.UUID, MadeLead] = {}
    while True:
        agents = _agents(uow, snapshot, _agent_ids(facts.values(), made.values()))
        planned = plan_texts(
            items,
            {phone: _phone_facts(f, agents) for phone, f in facts.items()},
            made,
            account_id=account_id,
            agents=agents,
            public_base_url=get_settings().public_base_url,
            correlation_id=notifications.correlation_id(),
        )
        new = [(p.intake_id, p.choice) for p in planned if isinstance(p, NeedsLead) and p.choice is not None]
        if not new:
            break
        # O6: the first text of each phone with no lead makes one, owned by the number's entity and routed by
        # its rules, through the signup path (all of them together); then their phones are read again.
        signed: list[tuple[Intake, SignupIn, str]] = []
        for intake_id, choice in new:
            item = item_of[intake_id]
            ownership = decide_number_owner(uow.orgs.entity_ref(item.number_entity_id), item.text.to)
            signup = LeadSignup(
                source_kind="sms",
                phone=item.text.from_e164,
                message=item.text.body,
                source_detail=f"text to {item.text.to}",
            )
            signed.append(
                (
                    by_id[intake_id],
                    signups.signup_in(by_id[intake_id], signup, ownership),
                    f"{choice.reason} ({ownership.reason})",
                )
            )
        outcomes = signups.plan_and_write(
            uow, store, snapshot, claimed, [item for _, item, _ in signed], finish=False
        ).outcomes
        leads: dict[uuid.UUID, tuple[uuid.UUID, bool, str]] = {}
        for intake, _, reason in signed:
            outcome = outcomes[intake.id]
            if outcome.lead_id is None:  # X4: a replayed text whose lead was deleted
                rejected.append((intake, outcome.reason or "rejected"))
                items = [i for i in items if i.intake_id != intake.id]
            else:
                leads[intake.id] = (outcome.lead_id, outcome.created, reason)
        again = {i.text.from_e164 for i in items if i.intake_id in leads and i.text.from_e164 is not None}
        facts.update(uow.texts.reply_facts_of(account_id, again))
        known = {lead_id: lead for f in facts.values() for lead_id, lead in f.leads.items()}
        for lead_id, _, _ in leads.values():
            if lead_id not in known:  # not a live lead of the phone (a signup joined another lead)
                known[lead_id] = uow.texts.text_lead(lead_id)
        made.update({key: MadeLead(known[lead_id], created, why) for key, (lead_id, created, why) in leads.items()})
    plans = [(by_id[p.intake_id], p) for p in planned if isinstance(p, PlannedText)]
    events = [e for _, p in plans for e in p.plan.events]
    webhooks.record_timeline(uow, account_id, [event_row(e) for e in events])
    for intake, reason in rejected:
        webhooks.record_intake(uow, intake, "intake.rejected", reason)
    store.write_texts(account_id, [(intake, p.plan) for intake, p in plans], rejected)
    if any(p.plan.mail is not None for _, p in plans):
        uow.after_commit(notifications.request_flush)
    uow.commit()
    results: dict[uuid.UUID, services.Outcome] = {}
    for intake, reason in rejected:
        log.info("intake.rejected", intake_id=str(intake.id), reason=reason)
        results[intake.id] = services.Outcome("rejected", reason=reason)
    for intake, p in plans:
        log.info(
            "intake.done",
            intake_id=str(intake.id),
            lead_id=str(p.plan.lead_id),
            created=p.created,
            text_rule=p.plan.rule,
            keyword=p.plan.keyword,
        )
        results[intake.id] = services.Outcome("done", p.plan.lead_id, created=p.created)
    if len(intakes) > 1:
        log.info("intake.batch", intakes=len(intakes), source="sms")
    return results


def _agent_ids(facts: Iterable[ReplyFacts], made: Iterable[MadeLead]) -> set[int | None]:
    """The agents a batch's plans may name: the last texts' and every lead's assignee."""
    ids: set[int | None] = set()
    for f in facts:
        ids.update(t.agent_id for t in f.last_texts)
        ids.update(lead.assigned_agent_id for lead in f.leads.values())
    ids.update(m.lead.assigned_agent_id for m in made)
    return ids


def _phone_facts(facts: ReplyFacts, agents: Mapping[int, Agent]) -> PhoneFacts:
    return PhoneFacts(
        tuple(facts.candidates),
        facts.leads,
        tuple(
            OutboundText(
                t.message_id, t.lead_id, t.agent_id, agents[t.agent_id].name if t.agent_id else None, t.created_at
            )
            for t in facts.last_texts
        ),
    )


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


__all__ = ["apply_pending_statuses", "record_status_callback", "run_batch"]
