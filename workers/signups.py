"""The one signup path, run: a batch of stored signups (or one text's new lead) loaded, planned by
:mod:`rules.signups` and written by :mod:`models.signups` in one transaction."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from leadrelay.settings import get_settings
from models.orgsnapshot import SNAPSHOTS, OrgSnapshot
from models.signups import Claimed, SignupStore
from models.tables import Intake, IntakeSource
from models.uow import UnitOfWork
from rules.events import LeadSignup
from rules.ownership import Ownership
from rules.signups import OrgView, SignupIn, SignupPlan, decide_owners, needs, plan_signups
from workers import notifications, webhooks
from workers.services import CONNECTION_SOURCES, Outcome, claimed_activity_events

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Planned:
    """A written plan, with each intake's outcome."""

    plan: SignupPlan
    outcomes: dict[uuid.UUID, Outcome]


def snapshot_of(uow: UnitOfWork, store: SignupStore, claimed: Claimed) -> OrgSnapshot:
    """The account's organisation this process keeps at the version read with the intakes' lock."""
    version = claimed.org_version
    snapshot = SNAPSHOTS.get(claimed.account_id, version, lambda: store.load_snapshot(claimed.account_id, version))
    uow.orgs.use_snapshot(snapshot)
    return snapshot


def org_view(snapshot: OrgSnapshot, claimed: Claimed) -> OrgView:
    return OrgView(
        account_id=claimed.account_id,
        duplication=claimed.duplication,
        domains=snapshot.domains,
        connections=snapshot.connections,
        contacts=snapshot.contacts,
        public_base_url=get_settings().public_base_url,
    )


def signup_in(intake: Intake, signup: LeadSignup, ownership: Ownership | None = None) -> SignupIn:
    return SignupIn(
        intake_id=intake.id,
        signup=signup,
        at=signup.occurred_at or intake.created_at,
        connection_id=intake.api_connection_id if intake.source in CONNECTION_SOURCES else None,
        ownership=ownership,
        lead_before=intake.lead_id,
    )


def plan_and_write(
    uow: UnitOfWork,
    store: SignupStore,
    snapshot: OrgSnapshot,
    claimed: Claimed,
    items: Sequence[SignupIn],
    *,
    finish: bool = True,
) -> Planned:
    """Decide the signups together and write the plan, each intake finished as it says unless ``finish``
    is false (the caller commits)."""
    org = org_view(snapshot, claimed)
    owners = decide_owners(org, items)
    wanted = needs(org, items, owners)
    facts = store.facts(claimed.account_id, snapshot, wanted, [item.intake_id for item in items])
    plan = plan_signups(org, items, owners, facts)
    by_id = {intake.id: intake for intake in claimed.intakes}
    if snapshot.webhooks:
        plan.deliveries = webhooks.signup_deliveries(snapshot, plan, facts, items, by_id, finish=finish)
        webhooks.after_commit_send(uow, [d.id for d in plan.deliveries])
    claimed_activity = store.write(claimed.account_id, plan, by_id, finish=finish)
    if claimed_activity:
        # D7: the kept activity a new lead claimed joins its timeline, each at its own time.
        store.add_events(claimed.account_id, claimed_activity_events(claimed.account_id, claimed_activity))
        latest: dict[uuid.UUID, dt.datetime] = {}
        for lead_id, row in claimed_activity:
            latest[lead_id] = max(row.at, latest.get(lead_id, row.at))
        store.touch(latest)
    if plan.mails:
        uow.after_commit(notifications.request_flush)
    outcomes = {
        done.intake_id: Outcome(done.status, done.lead_id, created=done.created, reason=done.reason)
        for done in plan.finished
    }
    return Planned(plan, outcomes)


def run_batch(
    uow: UnitOfWork, store: SignupStore, claimed: Claimed, intakes: Sequence[Intake]
) -> dict[uuid.UUID, Outcome]:
    """Process the claimed signups ``intakes`` (each counted as one more attempt) and commit."""
    snapshot = snapshot_of(uow, store, claimed)
    items = [signup_in(intake, signup_of(intake)) for intake in intakes]
    planned = plan_and_write(uow, store, snapshot, claimed, items)
    uow.commit()
    for intake in intakes:
        outcome = planned.outcomes[intake.id]
        if outcome.status == "rejected":
            log.info("intake.rejected", intake_id=str(intake.id), reason=outcome.reason)
        elif outcome.reason:  # a second run of an intake that already made its lead (rules.signups)
            log.warning(
                "intake.done_again", intake_id=str(intake.id), lead_id=str(outcome.lead_id), reason=outcome.reason
            )
        else:
            log.info("intake.done", intake_id=str(intake.id), lead_id=str(outcome.lead_id), created=outcome.created)
    if len(intakes) > 1:
        log.info("intake.batch", intakes=len(intakes))
    return planned.outcomes


def signup_of(intake: Intake) -> LeadSignup:
    """The signup a stored signup intake holds (an event intake holds it under ``signup``)."""
    if intake.source is IntakeSource.EVENTS:
        return LeadSignup.from_dict(intake.payload["signup"])
    return LeadSignup.from_dict(intake.payload)
