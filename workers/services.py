"""Services: load values through the repositories, ask the rules, write the plan, in one unit of work."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from models.repositories import ClaimedActivity, OrgRepository
from models.tables import Account, Intake, IntakeSource, IntakeStatus, Lead
from models.uow import UnitOfWork
from rules.activity import SiteActivityEvent, describe_activity
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
from workers import webhooks

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


def activity_of(intake: Intake) -> SiteActivityEvent:
    """The activity (D7) an activity intake holds (an event intake holds it under ``activity``)."""
    if intake.source is IntakeSource.EVENTS:
        return SiteActivityEvent.from_dict(intake.payload["activity"])
    return SiteActivityEvent.from_dict(intake.payload)


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


def process_activity(uow: UnitOfWork, intake: Intake) -> Outcome:
    """D7: put a view, save or visit on the lead of the site's (or connection's) owner for this person,
    whoever its assignee; with no such lead, keep it as anonymous activity until a signup makes one.
    The intake row is locked already (``intakes.process_intake``); commits."""
    activity = activity_of(intake)
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
        uow.leads.lock_kept_activity(account.id)  # against an import claiming the kept activity right now
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
    event: dict[str, Any] = {
        "account_id": account.id,
        "lead_id": lead.id,
        "kind": activity.kind,
        "intake_id": intake.id,
        "at": at,
        "summary": describe_activity(activity.kind, activity.listing_data, activity.page_url),
        "data": {
            "rule": "D7",
            "listing": activity.listing_data,
            "page_url": activity.page_url,
            "source": activity.source_detail,
        },
    }
    uow.leads.add_event(**event)
    webhooks.record_timeline(uow, account.id, [event])
    _finish(intake, IntakeStatus.DONE, lead.id, None)
    uow.commit()
    log.info("intake.done", intake_id=str(intake.id), lead_id=str(lead.id), activity=activity.kind)
    return Outcome("done", lead.id)


def _reject(uow: UnitOfWork, intake: Intake, reason: str) -> Outcome:
    _finish(intake, IntakeStatus.REJECTED, None, reason)
    webhooks.record_intake(uow, intake, "intake.rejected", reason)
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


def mark_dead(uow: UnitOfWork, intake_id: uuid.UUID, error: str) -> None:
    """After its retries an intake is dead, with the error, for an operator to replay."""
    intake = uow.intakes.get_for_update(intake_id)
    if intake is None or intake.status in FINAL:
        return
    intake.status = IntakeStatus.DEAD
    intake.reason = error[:2000]
    webhooks.record_intake(uow, intake, "intake.dead", intake.reason)
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
