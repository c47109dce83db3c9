"""Leads made straight in the database, for tests of what users do with leads: the intake
pipeline that normally makes them has its own tests, and a permission matrix needs many leads of
exact shapes (owner, assignee, routed through an office, shared) quickly."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Mapping, Sequence

from models.tables import Lead, LeadCampaign, LeadShare, LeadStatus, TimelineEvent
from models.uow import UnitOfWork
from rules.uniqueness import unique_key

_emails = itertools.count(1)


def make_lead(
    account: str,
    *,
    owner: str,
    assignee: str | None = None,
    routed_via: str | None = None,
    email: str | None = None,
    phone: str | None = None,
    first_name: str = "Ann",
    last_name: str | None = None,
    shares: Mapping[str, str] | None = None,
    campaigns: Sequence[str] = (),
    in_pond: bool = False,
    tags: Sequence[str] = (),
) -> str:
    """A lead of ``account`` (slug) owned by entity ``owner`` (slug), with its created event; its id."""
    with UnitOfWork() as uow:
        acct = uow.orgs.account_by_slug(account)
        assert acct is not None, account
        ids = {}
        for slug in {owner, assignee, routed_via} - {None}:
            entity = uow.orgs.entity_by_slug(acct.id, slug)  # type: ignore[arg-type]
            assert entity is not None, slug
            ids[slug] = entity.id
        email = email or f"lead{next(_emails)}-{uuid.uuid4().hex[:6]}@example.com"
        normalized = email.strip().lower() if email else None
        now = dt.datetime.now(dt.UTC)
        lead = Lead(
            id=uuid.uuid4(),
            account_id=acct.id,
            owner_entity_id=ids[owner],
            assigned_agent_id=ids.get(assignee) if assignee else None,
            routed_via_entity_id=ids.get(routed_via) if routed_via else None,
            unique_key=unique_key(
                duplication=acct.duplication, owner_id=ids[owner], email_normalized=normalized, phone_e164=phone
            ),
            status=LeadStatus.ACTIVE,
            in_pond=in_pond,
            email=email,
            email_normalized=normalized,
            phone_e164=phone,
            first_name=first_name,
            last_name=last_name,
            tags=list(tags),
            source_kind="site",
            source_detail="made by a test",
            created_at=now,
            updated_at=now,
            last_activity_at=now,
        )
        uow.session.add(lead)
        uow.session.flush()
        uow.session.add(
            TimelineEvent(
                account_id=acct.id, lead_id=lead.id, kind="created", summary="Made by a test", data={}, at=now
            )
        )
        for user_slug, permission in (shares or {}).items():
            user = uow.orgs.user_target(acct.id, user_slug)
            assert user is not None, user_slug
            uow.session.add(LeadShare(lead_id=lead.id, user_id=user.id, permission=permission))
        for name in campaigns:
            uow.session.add(LeadCampaign(lead_id=lead.id, name=name))
        lead_id = str(lead.id)
        uow.commit()
    return lead_id


def lead_row(lead_id: str) -> Lead:
    """The lead as stored (deleted and merged leads included), detached."""
    with UnitOfWork() as uow:
        lead = uow.leads.get(uuid.UUID(lead_id))
        assert lead is not None
        uow.session.expunge(lead)
        return lead
