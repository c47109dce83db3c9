"""Services: load values through the repositories, ask the rules, write the plan, in one unit of work."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import structlog

from models.repositories import OrgRepository
from models.tables import Intake, IntakeSource, IntakeStatus, Lead, LeadStatus
from models.uow import UnitOfWork
from rules.entities import Kind
from rules.events import LeadSignup
from rules.ownership import Ownership, Unclaimed, candidate_hosts, decide_connection_owner, decide_site_owner
from rules.routing import Decision, route
from rules.uniqueness import unique_key

log = structlog.get_logger(__name__)

FINAL = (IntakeStatus.DONE, IntakeStatus.REJECTED)


@dataclass(frozen=True)
class Outcome:
    status: str
    lead_id: uuid.UUID | None = None
    created: bool = False
    reason: str | None = None


def decide_registration_owner(orgs: OrgRepository, account_id: int, signup: LeadSignup) -> Ownership | Unclaimed:
    """O1-O4, O9 for a site registration: the rule over the account's claims on the page's host."""
    claims = orgs.domain_claims(account_id, candidate_hosts(signup.host or ""))
    return decide_site_owner(signup.page_url or "", claims)


def decide_intake_owner(orgs: OrgRepository, intake: Intake, signup: LeadSignup) -> Ownership | Unclaimed:
    """O1: the owner from the intake's source: its connection (O4, O5) or its page's host (O2-O4, O9)."""
    if intake.source is IntakeSource.PROVIDER:
        assert intake.api_connection_id is not None, "provider intakes are stored with their connection"
        slug, entity = orgs.connection_owner(intake.api_connection_id)
        return decide_connection_owner(entity, slug)
    return decide_registration_owner(orgs, intake.account_id, signup)


def plan_routing(orgs: OrgRepository, ownership: Ownership, signup: LeadSignup, *, lock: bool) -> Decision | None:
    """A1/A2: the routing decision for a new lead; None when the owner is an agent (O2, O5)."""
    if ownership.routing_entity is None:
        return None
    rules, default = orgs.routing_rules(ownership.routing_entity, lock=lock)
    return route(rules, default, signup)


def process_intake(uow: UnitOfWork, intake_id: uuid.UUID) -> Outcome:
    """Turn one stored intake into a lead (or a repeat signup on one), exactly once.

    The intake row is locked first, so a redelivered or relayed copy of the task waits and then
    finds it final; the lead insert, the cursor move and the timeline commit together."""
    intake = uow.intakes.get_for_update(intake_id)
    if intake is None:
        return Outcome("missing", reason="no such intake")
    if intake.status in FINAL:
        return Outcome(intake.status.value, intake.lead_id, reason="already processed")
    intake.attempts += 1
    signup = LeadSignup.from_dict(intake.payload)
    ownership = decide_intake_owner(uow.orgs, intake, signup)
    if isinstance(ownership, Unclaimed):
        _finish(intake, IntakeStatus.REJECTED, None, ownership.reason)
        uow.commit()
        log.info("intake.rejected", intake_id=str(intake.id), reason=ownership.reason)
        return Outcome("rejected", reason=ownership.reason)

    outcome = _record_signup(uow, intake, signup, ownership)
    _finish(intake, IntakeStatus.DONE, outcome.lead_id, None)
    uow.commit()
    log.info("intake.done", intake_id=str(intake.id), lead_id=str(outcome.lead_id), created=outcome.created)
    return outcome


def _finish(intake: Intake, status: IntakeStatus, lead_id: uuid.UUID | None, reason: str | None) -> None:
    intake.status = status
    intake.lead_id = lead_id
    intake.reason = reason
    intake.processed_at = dt.datetime.now(dt.UTC)


def _record_signup(uow: UnitOfWork, intake: Intake, signup: LeadSignup, ownership: Ownership) -> Outcome:
    account = uow.orgs.account(intake.account_id)
    at = signup.occurred_at or intake.created_at
    chosen = _prompt_choice(uow, account.id, signup)
    if chosen is not None:
        # D5: the person picked a lead they already have; the signup logs into it.
        _repeat_signup(uow, chosen, intake, signup, at, "D5", "chose an existing lead at the duplicate prompt")
        return Outcome("done", chosen.id)
    key = unique_key(
        duplication=account.duplication,
        owner_id=ownership.owner.id,
        email_normalized=signup.email_normalized,
        phone_e164=signup.phone,
    )
    lead_id = uow.leads.insert_if_absent(
        {
            "account_id": account.id,
            "owner_entity_id": ownership.owner.id,
            "unique_key": key,
            "email": signup.email,
            "email_normalized": signup.email_normalized,
            "phone_e164": signup.phone,
            "first_name": signup.first_name,
            "last_name": signup.last_name,
            "tags": list(signup.tags),
            "lead_type": signup.lead_type,
            "price_min": signup.price_min,
            "price_max": signup.price_max,
            "zip": signup.zip,
            "source_kind": signup.source_kind,
            "source_detail": _source_detail(signup),
            "created_by_intake_id": intake.id,
            "created_at": at,
            "updated_at": at,
            "last_activity_at": at,
        }
    )
    if lead_id is None:
        assert key is not None
        existing = uow.leads.by_unique_key(account.id, key)
        assert existing is not None, "the conflicting lead is committed before ON CONFLICT returns"
        rule = "D3" if not account.duplication else "D4"
        _repeat_signup(uow, existing, intake, signup, at, rule, "same unique lead; no new lead")
        return Outcome("done", existing.id)

    lead = uow.leads.get(lead_id)
    assert lead is not None
    uow.leads.add_event(
        account_id=account.id,
        lead_id=lead_id,
        kind="created",
        intake_id=intake.id,
        at=at,
        summary=f"Registered on {_source_detail(signup)} ({signup.source_kind})",
        data={"rule": ownership.rule, "owner": ownership.owner.slug, "reason": ownership.reason},
    )
    _assign_new_lead(uow, lead, intake, ownership, signup, at)
    return Outcome("done", lead_id, created=True)


def _assign_new_lead(
    uow: UnitOfWork, lead: Lead, intake: Intake, ownership: Ownership, signup: LeadSignup, at: dt.datetime
) -> None:
    decision = plan_routing(uow.orgs, ownership, signup, lock=True)
    if decision is None:
        assert ownership.assignee is not None
        lead.assigned_agent_id = ownership.assignee.id
        data: dict[str, Any] = {
            "rule": None,
            "agent": ownership.assignee.slug,
            "skipped": [],
            "explanation": ownership.reason,
        }
        summary = f"Assigned to {ownership.assignee.name} ({ownership.rule}: the owner is the assignee)"
    else:
        routing_entity = ownership.routing_entity
        assert routing_entity is not None
        lead.routed_via_entity_id = routing_entity.id
        if decision.rule is not None and decision.cursor is not None:
            uow.orgs.move_cursor(routing_entity.id, decision.rule, decision.cursor)
        if decision.agent is not None:
            lead.assigned_agent_id = decision.agent.id
            summary = f"Assigned to {decision.agent.name} by {routing_entity.slug}'s rule {decision.rule.name if decision.rule else ''!r}"
        else:
            lead.in_pond = routing_entity.kind is Kind.TEAM
            summary = "Not assigned: " + decision.explanation + (" (in the team pond)" if lead.in_pond else "")
        if decision.rule is not None and decision.rule.campaign and decision.agent is not None:
            uow.leads.start_campaign(lead.id, decision.rule.campaign)
        data = {"routing_entity": routing_entity.slug, **decision.as_data()}
    uow.leads.add_event(
        account_id=lead.account_id,
        lead_id=lead.id,
        kind="routed",
        intake_id=intake.id,
        at=at,
        summary=summary,
        data=data,
    )


def _repeat_signup(
    uow: UnitOfWork, lead: Lead, intake: Intake, signup: LeadSignup, at: dt.datetime, rule: str, why: str
) -> None:
    lead.last_activity_at = max(lead.last_activity_at, at)
    uow.leads.add_event(
        account_id=lead.account_id,
        lead_id=lead.id,
        kind="signup",
        intake_id=intake.id,
        at=at,
        summary=f"Registered again on {_source_detail(signup)}",
        data={"rule": rule, "reason": why, "source_kind": signup.source_kind, "message": signup.message},
    )


def _prompt_choice(uow: UnitOfWork, account_id: int, signup: LeadSignup) -> Lead | None:
    """D5: the lead named by ``existing_lead_id``, if it is an active lead of this person in this account."""
    if not signup.existing_lead_id:
        return None
    try:
        lead = uow.leads.get(uuid.UUID(signup.existing_lead_id))
    except ValueError:
        return None
    if lead is None or lead.account_id != account_id or lead.status is not LeadStatus.ACTIVE:
        return None
    if not signup.email_normalized or lead.email_normalized != signup.email_normalized:
        return None
    return lead


def _source_detail(signup: LeadSignup) -> str:
    if signup.source_detail:
        return signup.source_detail[:500]
    if not signup.page_url:
        return signup.source_kind
    url = signup.page_url.split("://", 1)[-1]
    return url.split("?", 1)[0][:500]


def mark_dead(uow: UnitOfWork, intake_id: uuid.UUID, error: str) -> None:
    """After its retries an intake is dead, with the error, for an operator to replay."""
    intake = uow.intakes.get_for_update(intake_id)
    if intake is None or intake.status in FINAL:
        return
    intake.status = IntakeStatus.DEAD
    intake.reason = error[:2000]
    uow.commit()


def reopen_intakes(uow: UnitOfWork, status: IntakeStatus, since: dt.datetime | None) -> list[uuid.UUID]:
    """Put kept intakes of ``status`` back to accepted so the pipeline takes them again."""
    ids = uow.intakes.ids_with_status([status.value], since=since, limit=100_000)
    uow.intakes.reopen(ids)
    uow.commit()
    return ids
