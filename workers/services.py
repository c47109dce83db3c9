"""Services: load values through the repositories, ask the rules, write the plan, in one unit of work."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from models.repositories import ClaimedActivity, OrgRepository
from models.tables import Account, Intake, IntakeSource, IntakeStatus, Lead, LeadStatus
from models.uow import UnitOfWork
from rules.activity import SiteActivityEvent, describe_activity
from rules.entities import Kind
from rules.events import LeadSignup
from rules.ownership import (
    Ownership,
    Unclaimed,
    candidate_hosts,
    decide_connection_owner,
    decide_site_owner,
    host_of,
)
from rules.routing import Decision, route
from rules.uniqueness import unique_key
from workers import notifications

log = structlog.get_logger(__name__)

FINAL = (IntakeStatus.DONE, IntakeStatus.REJECTED)
# Sources whose API connection, never the body, decides the owner (O4, O5).
CONNECTION_SOURCES = (IntakeSource.PROVIDER, IntakeSource.EVENTS)
# At most this many intakes are replayed by one command or request; run it again for more.
REPLAY_LIMIT = 100_000


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


def decide_page_owner(orgs: OrgRepository, account_id: int, page_url: str) -> Ownership | Unclaimed:
    """O1-O4, O9 for any page of a site (a signup, an activity, the duplicate prompt): the page's host decides."""
    claims = orgs.domain_claims(account_id, candidate_hosts(host_of(page_url)))
    return decide_site_owner(page_url, claims)


def decide_intake_owner(orgs: OrgRepository, intake: Intake, signup: LeadSignup) -> Ownership | Unclaimed:
    """O1: the owner from the intake's source: its connection (O4, O5) or its page's host (O2-O4, O9)."""
    if intake.source in CONNECTION_SOURCES:
        return _connection_owner(orgs, intake)
    return decide_registration_owner(orgs, intake.account_id, signup)


def decide_activity_owner(orgs: OrgRepository, intake: Intake, activity: SiteActivityEvent) -> Ownership | Unclaimed:
    """D7: activity belongs with the site's owner (the page's host), or with the connection's for an event."""
    if intake.source in CONNECTION_SOURCES:
        return _connection_owner(orgs, intake)
    return decide_page_owner(orgs, intake.account_id, activity.page_url)


def _connection_owner(orgs: OrgRepository, intake: Intake) -> Ownership:
    assert intake.api_connection_id is not None, "connection intakes are stored with their connection"
    slug, entity = orgs.connection_owner(intake.api_connection_id)
    return decide_connection_owner(entity, slug)


def plan_routing(orgs: OrgRepository, ownership: Ownership, signup: LeadSignup, *, lock: bool) -> Decision | None:
    """A1/A2: the routing decision for a new lead; None when the owner is an agent (O2, O5)."""
    if ownership.routing_entity is None:
        return None
    rules, default = orgs.routing_rules(ownership.routing_entity, lock=lock)
    return route(rules, default, signup)


def intake_work(intake: Intake) -> LeadSignup | SiteActivityEvent:
    """What a stored intake asks for: a signup, or activity (D7). Activity intakes hold the activity;
    events hold ``{"signup": ...}`` or ``{"activity": ...}``; every other source holds the signup."""
    payload = intake.payload
    if intake.source is IntakeSource.ACTIVITY:
        return SiteActivityEvent.from_dict(payload)
    if intake.source is IntakeSource.EVENTS:
        if "activity" in payload:
            return SiteActivityEvent.from_dict(payload["activity"])
        return LeadSignup.from_dict(payload["signup"])
    return LeadSignup.from_dict(payload)


def process_signup_or_activity(uow: UnitOfWork, intake: Intake) -> Outcome:
    """Turn an intake that is not a text into a lead (or a repeat signup on one), or record its activity.

    The intake row is locked already (``intakes.process_intake``); the lead insert, the cursor move and
    the timeline commit together."""
    work = intake_work(intake)
    if isinstance(work, SiteActivityEvent):
        return _process_activity(uow, intake, work)
    signup = work
    ownership = decide_intake_owner(uow.orgs, intake, signup)
    if isinstance(ownership, Unclaimed):
        return _reject(uow, intake, ownership.reason)

    outcome = _record_signup(uow, intake, signup, ownership)
    if outcome.status == "rejected":
        return _reject(uow, intake, outcome.reason or "rejected")
    _finish(intake, IntakeStatus.DONE, outcome.lead_id, None)
    uow.commit()
    log.info("intake.done", intake_id=str(intake.id), lead_id=str(outcome.lead_id), created=outcome.created)
    return outcome


def record_signup(uow: UnitOfWork, intake: Intake, signup: LeadSignup, ownership: Ownership) -> Outcome:
    """Make or join the lead of ``signup`` under ``ownership`` (D1-D4), routed (A1, A2) with its timeline,
    for a source whose own worker decided the owner (a text from an unknown phone: O6). Does not commit.
    ``rejected`` (with the reason) when a replayed intake meets its deleted lead (X4)."""
    return _record_signup(uow, intake, signup, ownership)


def finish_intake(intake: Intake, status: IntakeStatus, lead_id: uuid.UUID | None, reason: str | None) -> None:
    _finish(intake, status, lead_id, reason)


def reject_intake(uow: UnitOfWork, intake: Intake, reason: str) -> Outcome:
    """O9 and kin: the intake ends ``rejected`` with its reason (kept, can be replayed); commits."""
    return _reject(uow, intake, reason)


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
    values = {
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
    lead_id = uow.leads.insert_if_absent(values)
    tombstone: Lead | None = None
    if lead_id is None:
        assert key is not None
        existing = uow.leads.by_unique_key(account.id, key)
        assert existing is not None, "the conflicting lead is committed before ON CONFLICT returns"
        live = uow.leads.surviving(existing)
        if live is not None:
            # D4/D3; a merged lead's key leads to the lead it was merged into (M4).
            rule = "D3" if not account.duplication else "D4"
            _repeat_signup(uow, live, intake, signup, at, rule, "same unique lead; no new lead")
            return Outcome("done", live.id)
        # X4: a deleted lead holds the key. This intake already made or joined a lead once: a replay
        # does not bring it back. A new signup makes a new lead, which says what was deleted.
        if _made_or_joined(uow, intake, existing):
            return Outcome("rejected", reason=_deleted_reason(uow, existing))
        tombstone = existing
        existing.unique_key = None
        uow.session.flush()
        lead_id = uow.leads.insert_if_absent(values)
        if lead_id is None:  # the key was taken again in between: the next attempt joins that lead
            raise RuntimeError("the unique key was taken while freeing it from a deleted lead")

    lead = uow.leads.get(lead_id)
    assert lead is not None
    uow.leads.add_event(
        account_id=account.id,
        lead_id=lead_id,
        kind="created",
        intake_id=intake.id,
        at=at,
        summary=f"Registered on {_source_detail(signup)} ({signup.source_kind})",
        data={
            "rule": ownership.rule,
            "owner": ownership.owner.slug,
            "reason": ownership.reason,
            **({"X4": _deleted_reason(uow, tombstone), "replaces": str(tombstone.id)} if tombstone else {}),
        },
    )
    _assign_new_lead(uow, lead, intake, ownership, signup, at)
    if signup.email_normalized:
        _claim_site_activity(uow, account, lead, ownership, signup.email_normalized)
    return Outcome("done", lead_id, created=True)


def _made_or_joined(uow: UnitOfWork, intake: Intake, tombstone: Lead) -> bool:
    """X4: whether this intake already made or joined the deleted lead that holds its key. Its lead id
    says so on a first replay; a rejection clears it, so a second replay (``intake replay --status
    rejected``) is known by the lead it created or the events it left there (moved to the lead the
    tombstone was merged into, if any), through the (lead, intake, kind) index."""
    if intake.lead_id is not None or tombstone.created_by_intake_id == intake.id:
        return True
    leads = [tombstone.id] + ([tombstone.merged_into_id] if tombstone.merged_into_id else [])
    return uow.leads.has_event_of(leads, intake.id)


def _deleted_reason(uow: UnitOfWork, tombstone: Lead) -> str:
    """X4: who deleted the lead that held this person's key, and when."""
    dead = tombstone
    while dead.status is LeadStatus.MERGED and dead.merged_into_id is not None:
        nxt = uow.leads.get(dead.merged_into_id)
        if nxt is None:
            break
        dead = nxt
    who = uow.orgs.user(dead.deleted_by_user_id).slug if dead.deleted_by_user_id else "someone"
    when = dead.deleted_at.isoformat() if dead.deleted_at else "earlier"
    return f"X4: lead {dead.id} of this person was deleted by {who} at {when}; a replay does not bring it back"


def _claim_site_activity(uow: UnitOfWork, account: Account, lead: Lead, ownership: Ownership, email: str) -> None:
    """D7: activity kept anonymous for this (owner, email) joins the new lead's timeline, set-wise.
    With duplication off (D3) the lead is the account's lead for the email, so every owner's rows join."""
    # Against an activity of this person deciding right now that there is no lead (it waits, then finds it).
    uow.leads.lock_person(account.id, email)
    claimed = uow.leads.claim_site_activity(
        account_id=account.id,
        email_normalized=email,
        owner_entity_id=ownership.owner.id if account.duplication else None,
        lead_id=lead.id,
    )
    if not claimed:
        return
    uow.leads.add_events(claimed_activity_events(account.id, [(lead.id, row) for row in claimed]))
    lead.last_activity_at = max(lead.last_activity_at, *(row.at for row in claimed))


def claimed_activity_events(
    account_id: int, claimed: Sequence[tuple[uuid.UUID, ClaimedActivity]]
) -> list[dict[str, Any]]:
    """D7: the timeline events of kept activity that a new lead claimed, each at its own time, under its
    own intake (replaying that intake later finds the event and adds nothing)."""
    return [
        {
            "account_id": account_id,
            "lead_id": lead_id,
            "kind": row.kind,
            "intake_id": row.intake_id,
            "at": row.at,
            "summary": describe_activity(row.kind, row.listing, row.page_url) + " (before signup)",
            "data": {
                "rule": "D7",
                "listing": row.listing,
                "page_url": row.page_url,
                "recorded_before_signup": True,
                "site_activity_id": str(row.id),
            },
        }
        for lead_id, row in claimed
    ]


def _assign_new_lead(
    uow: UnitOfWork, lead: Lead, intake: Intake, ownership: Ownership, signup: LeadSignup, at: dt.datetime
) -> None:
    decision = plan_routing(uow.orgs, ownership, signup, lock=True)
    if decision is None:
        assert ownership.assignee is not None
        lead.assigned_agent_id = ownership.assignee.id
        summary, data = ownership.owner_assigned()
    else:
        routing_entity = ownership.routing_entity
        assert routing_entity is not None
        lead.routed_via_entity_id = routing_entity.id
        if decision.rule is not None and decision.cursor is not None:
            uow.orgs.move_cursor(routing_entity.id, decision.rule, decision.cursor)
        if decision.agent is not None:
            lead.assigned_agent_id = decision.agent.id
        else:
            lead.in_pond = routing_entity.kind is Kind.TEAM
        summary = decision.summary(routing_entity.slug, in_pond=lead.in_pond)
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
    notifications.notify_new_lead_assigned(uow, lead)


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


def _process_activity(uow: UnitOfWork, intake: Intake, activity: SiteActivityEvent) -> Outcome:
    """D7: put a view, save or visit on the lead of the site's (or connection's) owner for this person,
    whoever its assignee; with no such lead, keep it as anonymous activity until a signup makes one."""
    ownership = decide_activity_owner(uow.orgs, intake, activity)
    if isinstance(ownership, Unclaimed):
        return _reject(uow, intake, ownership.reason)
    account = uow.orgs.account(intake.account_id)
    email, phone = activity.email_normalized, activity.phone
    if activity.lead_id:
        named = _named_lead(uow, account.id, activity.lead_id)
        if named is None:
            return _reject(uow, intake, f"D7: lead_id {activity.lead_id} is not a lead of this account")
        email, phone = named.email_normalized, named.phone_e164
    at = activity.occurred_at or intake.created_at
    if email:
        uow.leads.lock_person(account.id, email)  # against a signup creating the lead right now
    lead = _owners_lead(uow, account, ownership, email, phone)
    if lead is None:
        uow.leads.add_site_activity(
            {
                "account_id": account.id,
                "owner_entity_id": ownership.owner.id,
                "email_normalized": email,
                "kind": activity.kind,
                "page_url": activity.page_url,
                "listing": activity.listing_data,
                "at": at,
                "intake_id": intake.id,
            }
        )
        reason = (
            f"D7: no lead of {ownership.owner.kind.value} {ownership.owner.slug} for this person yet; "
            "kept as anonymous activity, joined to the lead when one is created"
        )
        _finish(intake, IntakeStatus.DONE, None, reason)
        uow.commit()
        log.info("intake.done", intake_id=str(intake.id), activity=activity.kind, anonymous=True)
        return Outcome("done", None, reason=reason)

    lead.last_activity_at = max(lead.last_activity_at, at)
    uow.leads.add_event(
        account_id=account.id,
        lead_id=lead.id,
        kind=activity.kind,
        intake_id=intake.id,
        at=at,
        summary=describe_activity(activity.kind, activity.listing_data, activity.page_url),
        data={
            "rule": "D7",
            "listing": activity.listing_data,
            "page_url": activity.page_url,
            "source": activity.source_detail,
        },
    )
    _finish(intake, IntakeStatus.DONE, lead.id, None)
    uow.commit()
    log.info("intake.done", intake_id=str(intake.id), lead_id=str(lead.id), activity=activity.kind)
    return Outcome("done", lead.id)


def _reject(uow: UnitOfWork, intake: Intake, reason: str) -> Outcome:
    _finish(intake, IntakeStatus.REJECTED, None, reason)
    uow.commit()
    log.info("intake.rejected", intake_id=str(intake.id), reason=reason)
    return Outcome("rejected", reason=reason)


def _named_lead(uow: UnitOfWork, account_id: int, lead_id: str) -> Lead | None:
    """The live lead a ``lead_id`` names in this account (a merged lead: the lead it was merged into)."""
    try:
        lead = uow.leads.get(uuid.UUID(lead_id))
    except ValueError:
        return None
    if lead is None or lead.account_id != account_id:
        return None
    return uow.leads.surviving(lead)


def _owners_lead(
    uow: UnitOfWork, account: Account, ownership: Ownership, email: str | None, phone: str | None
) -> Lead | None:
    """The lead of ``ownership.owner`` for this person by the unique key (D1; D3 with duplication off:
    the account's lead for the email), followed through merges to the lead that survives."""
    key = unique_key(
        duplication=account.duplication, owner_id=ownership.owner.id, email_normalized=email, phone_e164=phone
    )
    if key is None:
        return None
    lead = uow.leads.by_unique_key(account.id, key)
    return uow.leads.surviving(lead) if lead is not None else None


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


def reopen_intakes(
    uow: UnitOfWork,
    status: IntakeStatus,
    since: dt.datetime | None,
    *,
    account_id: int | None = None,
    limit: int = REPLAY_LIMIT,
) -> list[tuple[uuid.UUID, IntakeSource]]:
    """Put kept intakes of ``status`` back to accepted (of one account when given), commit, and return
    them: the caller sends each one's task (``relay.send_intake``)."""
    rows = uow.intakes.with_status([status.value], since=since, account_id=account_id, limit=limit)
    uow.intakes.reopen([key for key, _ in rows])
    uow.commit()
    return rows
