"""The leads' queries: the leads, their timeline, anonymous site activity, shares, campaigns, what the rules
need to decide on them (their facts), what a caller may see of them (V1) and export (V3)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, delete, exists, false, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from models.repositories.common import Caller, activity_lock_key, dialect_insert, person_lock_key, to_ref
from models.tables import (
    Account,
    Entity,
    EntityKind,
    Intake,
    Lead,
    LeadCampaign,
    LeadShare,
    LeadStatus,
    Membership,
    Message,
    SiteActivity,
    TimelineEvent,
    User,
)
from rules.entities import EntityRef, Kind
from rules.permissions import LeadFacts


@dataclass(frozen=True)
class ClaimedActivity:
    """A row of anonymous site activity, as it was when a new lead claimed it (D7)."""

    id: uuid.UUID
    kind: str
    page_url: str
    listing: dict[str, Any]
    at: dt.datetime
    intake_id: uuid.UUID


# What a claim returns of each row, in :class:`ClaimedActivity`'s order.
CLAIMED_COLUMNS = (
    SiteActivity.id,
    SiteActivity.kind,
    SiteActivity.page_url,
    SiteActivity.listing,
    SiteActivity.at,
    SiteActivity.intake_id,
)


@dataclass(frozen=True)
class Candidate:
    """A lead the duplicate prompt offers (D5): its id, its assignee and its owner; no contact details."""

    lead_id: uuid.UUID
    agent: Entity
    owner: Entity


class LeadRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def insert_if_absent(self, values: dict[str, Any]) -> uuid.UUID | None:
        """INSERT ... ON CONFLICT DO NOTHING on (account, unique key): the new lead's id, or None
        when a concurrent or earlier signup already made the unique lead (D1, D3, D4)."""
        new_id = uuid.uuid4()
        stmt = (
            dialect_insert(self.session, Lead)
            .values(id=new_id, **values)
            .on_conflict_do_nothing(index_elements=["account_id", "unique_key"])
            .returning(Lead.id)
        )
        return self.session.execute(stmt).scalar_one_or_none()

    def get(self, lead_id: uuid.UUID) -> Lead | None:
        return self.session.get(Lead, lead_id)

    def by_unique_key(self, account_id: int, key: str) -> Lead | None:
        return self.session.execute(
            select(Lead).where(Lead.account_id == account_id, Lead.unique_key == key)
        ).scalar_one_or_none()

    def surviving(self, lead: Lead, *, max_hops: int = 20) -> Lead | None:
        """The lead that stands for ``lead`` now: itself, or the lead it was merged into (followed
        through chains of merges); None for a deleted lead."""
        for _ in range(max_hops):
            if lead.status is LeadStatus.DELETED:
                return None
            if lead.status is not LeadStatus.MERGED or lead.merged_into_id is None:
                return lead
            nxt = self.session.get(Lead, lead.merged_into_id)
            if nxt is None:
                return None
            lead = nxt
        return None

    def lock_person(self, account_id: int, email_normalized: str) -> None:
        """Serialise, until the transaction ends, the work that decides whether a person has a lead: an
        activity finding no lead (and keeping it anonymous) and a signup creating one (and claiming the
        kept activity). Without it both could miss each other and leave the activity unclaimed.
        A PostgreSQL advisory lock. SQLite (the embedded mode) takes one writer at a time, and a task whose
        read went stale meets a busy error there and is retried."""
        if self.session.get_bind().dialect.name != "postgresql":
            return
        self.session.execute(select(func.pg_advisory_xact_lock(person_lock_key(account_id, email_normalized))))

    def lock_kept_activity(self, account_id: int) -> None:
        """Until the transaction ends, hold the account's kept activity in shared mode: an activity that may
        keep itself anonymous takes it before it looks for the lead, so an import, which claims the kept
        activity of the people it made leads of at its end under the same lock taken exclusively, either
        waits for this activity to be kept (and claims it) or is waited for (and its leads are found).
        Activities share it and never wait for each other; a signup never takes it. PostgreSQL only."""
        if self.session.get_bind().dialect.name != "postgresql":
            return
        self.session.execute(select(func.pg_advisory_xact_lock_shared(activity_lock_key(account_id))))

    def add_site_activity(self, values: dict[str, Any]) -> None:
        """Keep anonymous activity (D7); one row per intake, so a redelivered task adds nothing."""
        self.session.execute(
            dialect_insert(self.session, SiteActivity)
            .values(id=uuid.uuid4(), **values)
            .on_conflict_do_nothing(index_elements=["intake_id"])
        )

    def site_activity_of(self, intake_id: uuid.UUID) -> SiteActivity | None:
        return self.session.execute(
            select(SiteActivity).where(SiteActivity.intake_id == intake_id)
        ).scalar_one_or_none()

    def add_events(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append many timeline events in one executemany (one cached statement, whatever the number of
        rows); an (lead, intake, kind) already there is skipped."""
        if rows:
            self.session.execute(
                dialect_insert(self.session, TimelineEvent).on_conflict_do_nothing(
                    index_elements=["lead_id", "intake_id", "kind"]
                ),
                [{"actor": "system", "intake_id": None, "data": {}, **row} for row in rows],
            )

    def history_counts(self, lead_id: uuid.UUID) -> dict[str, int]:
        """What a merge moves from this lead (M7's preview): its events, texts and site activity."""
        return {
            name: int(
                self.session.execute(
                    select(func.count()).select_from(table).where(table.lead_id == lead_id)
                ).scalar_one()
            )
            for name, table in (
                ("timeline_events", TimelineEvent),
                ("messages", Message),
                ("site_activity", SiteActivity),
            )
        }

    def move_history(self, from_id: uuid.UUID, to_id: uuid.UUID) -> None:
        """M4: a lead's timeline, texts and site activity go to another lead. An event of the same intake
        and kind on both keeps its place but no longer its intake id (one per intake, lead and kind)."""
        mine = aliased(TimelineEvent)
        self.session.execute(
            update(TimelineEvent)
            .where(
                TimelineEvent.lead_id == from_id,
                TimelineEvent.intake_id.is_not(None),
                exists().where(
                    mine.lead_id == to_id, mine.intake_id == TimelineEvent.intake_id, mine.kind == TimelineEvent.kind
                ),
            )
            .values(intake_id=None)
            .execution_options(synchronize_session=False)
        )
        for table in (TimelineEvent, Message, SiteActivity):
            self.session.execute(
                update(table)
                .where(table.lead_id == from_id)
                .values(lead_id=to_id)
                .execution_options(synchronize_session=False)
            )

    def duplicate_candidates(
        self, *, account_id: int, email_normalized: str, other_than_owner_id: int, limit: int = 50
    ) -> list[Candidate]:
        """D5: the account's active leads with this email under owners other than ``other_than_owner_id``
        that an agent works, most recently active first."""
        agent, owner = aliased(Entity), aliased(Entity)
        rows = self.session.execute(
            select(Lead.id, agent, owner)
            .join(agent, agent.id == Lead.assigned_agent_id)
            .join(owner, owner.id == Lead.owner_entity_id)
            .where(
                Lead.account_id == account_id,
                Lead.email_normalized == email_normalized,
                Lead.status == LeadStatus.ACTIVE,
                Lead.owner_entity_id != other_than_owner_id,
            )
            .order_by(Lead.last_activity_at.desc(), Lead.id)
            .limit(limit)
        ).all()
        return [Candidate(lead_id, a, o) for lead_id, a, o in rows]

    def add_event(
        self,
        *,
        account_id: int,
        lead_id: uuid.UUID,
        kind: str,
        summary: str,
        data: dict[str, Any] | None = None,
        actor: str = "system",
        intake_id: uuid.UUID | None = None,
        at: dt.datetime | None = None,
    ) -> None:
        """Append a timeline event; with an intake id, at most one event of a kind per intake."""
        values: dict[str, Any] = {
            "account_id": account_id,
            "lead_id": lead_id,
            "kind": kind,
            "summary": summary,
            "data": data or {},
            "actor": actor,
            "intake_id": intake_id,
            "at": at or dt.datetime.now(dt.UTC),
        }
        stmt = dialect_insert(self.session, TimelineEvent).values(**values)
        if intake_id is not None:
            stmt = stmt.on_conflict_do_nothing(index_elements=["lead_id", "intake_id", "kind"])
        self.session.execute(stmt)

    def facts(self, lead_ids: Sequence[uuid.UUID], *, lock: bool = False) -> dict[uuid.UUID, LeadFacts]:
        """What the rules need to decide on these leads, in six queries whatever their number. With
        ``lock`` the lead rows are locked (in id order, so two bulk jobs cannot deadlock) until commit."""
        if not lead_ids:
            return {}
        stmt = (
            select(
                Lead.id,
                Lead.account_id,
                Lead.status,
                Lead.owner_entity_id,
                Lead.assigned_agent_id,
                Lead.routed_via_entity_id,
                Lead.in_pond,
                Account.duplication,
            )
            .join(Account, Account.id == Lead.account_id)
            .where(Lead.id.in_(list(lead_ids)))
            .order_by(Lead.id)
        )
        if lock:
            stmt = stmt.with_for_update(of=Lead)
        rows = self.session.execute(stmt).all()
        if not rows:
            return {}
        ids = [row.id for row in rows]
        parent = aliased(Entity)
        people = {row.owner_entity_id for row in rows} | {
            row.assigned_agent_id for row in rows if row.assigned_agent_id
        }
        refs: dict[int, EntityRef] = {}
        hidden: set[int] = set()
        for entity, par in self.session.execute(
            select(Entity, parent).outerjoin(parent, parent.id == Entity.parent_id).where(Entity.id.in_(people))
        ).all():
            refs[entity.id] = to_ref(entity, par)
            if entity.private and entity.hide_from_team:
                hidden.add(entity.id)
        group = aliased(Entity)
        groups: dict[int, set[tuple[int, EntityKind]]] = {}
        for agent_id, group_id, kind in self.session.execute(
            select(Membership.agent_id, Membership.group_id, group.kind)
            .join(group, group.id == Membership.group_id)
            .where(Membership.agent_id.in_(people))
        ).all():
            groups.setdefault(agent_id, set()).add((group_id, kind))
        shares: dict[uuid.UUID, dict[int, str]] = {i: {} for i in ids}
        for lead_id, user_id, permission in self.session.execute(
            select(LeadShare.lead_id, LeadShare.user_id, LeadShare.permission).where(LeadShare.lead_id.in_(ids))
        ).all():
            shares[lead_id][user_id] = permission
        campaigns = self.campaigns_of(ids)
        watchers = (EntityKind.TEAM, EntityKind.COMPANY)
        out: dict[uuid.UUID, LeadFacts] = {}
        for row in rows:
            owner = refs[row.owner_entity_id]
            seen: set[int] = set()
            for agent_id in (row.owner_entity_id if owner.kind is Kind.AGENT else None, row.assigned_agent_id):
                if agent_id is not None and agent_id not in hidden:
                    seen |= {g for g, kind in groups.get(agent_id, ()) if kind in watchers}
            assignee_groups = {g for g, _ in groups.get(row.assigned_agent_id, ())} if row.assigned_agent_id else set()
            out[row.id] = LeadFacts(
                id=row.id,
                account_id=row.account_id,
                status=row.status.value,
                owner=owner,
                assignee_id=row.assigned_agent_id,
                routed_via_id=row.routed_via_entity_id,
                in_pond=row.in_pond,
                shares=shares[row.id],
                seen_by_groups=frozenset(seen),
                assignee_groups=frozenset(assignee_groups),
                duplication=row.duplication,
                campaigns=tuple(campaigns[row.id]),
            )
        return out

    def visible_to(self, caller: Caller) -> ColumnElement[bool]:
        """V1 as one SQL condition, used by every read: owner (and its admins), assignee, shares,
        an office admin for company leads routed through the office, a team or company admin for
        leads owned by or assigned to its connected agents unless private and hidden from the team."""
        admin_of = list(caller.admin_of)
        conds: list[ColumnElement[bool]] = [
            Lead.id.in_(select(LeadShare.lead_id).where(LeadShare.user_id == caller.user_id)),
        ]
        if caller.agent_id is not None:
            conds += [Lead.owner_entity_id == caller.agent_id, Lead.assigned_agent_id == caller.agent_id]
        if admin_of:
            below = select(Entity.id).where(Entity.parent_id.in_(admin_of))  # a company admin: its offices' leads
            companies = select(Entity.id).where(
                Entity.account_id == caller.account_id, Entity.kind == EntityKind.COMPANY
            )
            conds += [
                Lead.owner_entity_id.in_(admin_of),
                Lead.owner_entity_id.in_(below),
                # An office admin: the company's leads routed through its office.
                and_(Lead.routed_via_entity_id.in_(admin_of), Lead.owner_entity_id.in_(companies)),
            ]
            groups = select(Entity.id).where(
                Entity.id.in_(admin_of), Entity.kind.in_([EntityKind.TEAM, EntityKind.COMPANY])
            )
            agents = (
                select(Membership.agent_id)
                .join(Entity, Entity.id == Membership.agent_id)
                .where(Membership.group_id.in_(groups), ~and_(Entity.private, Entity.hide_from_team))
            )
            conds += [Lead.owner_entity_id.in_(agents), Lead.assigned_agent_id.in_(agents)]
        return and_(Lead.account_id == caller.account_id, Lead.status != LeadStatus.DELETED, or_(false(), *conds))

    def export_condition(self, caller: Caller) -> ColumnElement[bool]:
        """V3 as one SQL condition (``rules.permissions.in_export`` says the same in Python)."""
        conds: list[ColumnElement[bool]] = []
        if caller.agent_id is not None:
            entity_owned = select(Entity.id).where(
                Entity.account_id == caller.account_id, Entity.kind.in_([EntityKind.COMPANY, EntityKind.OFFICE])
            )
            conds += [
                Lead.owner_entity_id == caller.agent_id,
                and_(Lead.assigned_agent_id == caller.agent_id, Lead.owner_entity_id.in_(entity_owned)),
            ]
        if caller.admin_of:
            admin_of = list(caller.admin_of)
            administered = select(Entity.id).where(
                or_(Entity.id.in_(admin_of), Entity.parent_id.in_(admin_of)), Entity.kind != EntityKind.AGENT
            )
            conds.append(Lead.owner_entity_id.in_(administered))
        return and_(
            Lead.account_id == caller.account_id,
            Lead.status.in_([LeadStatus.ACTIVE, LeadStatus.ARCHIVED]),
            or_(false(), *conds),
        )

    def export_rows(self, caller: Caller, *, batch: int = 1000) -> Iterator[Sequence[Any]]:
        """The caller's export (V3), oldest first, streamed from a server-side cursor in batches."""
        owner, agent = aliased(Entity), aliased(Entity)
        stmt = (
            select(
                Lead.id,
                Lead.first_name,
                Lead.last_name,
                Lead.email,
                Lead.phone_e164,
                Lead.status,
                owner.slug,
                owner.kind,
                agent.slug,
                Lead.source_kind,
                Lead.source_detail,
                Lead.tags,
                Lead.created_at,
            )
            .join(owner, owner.id == Lead.owner_entity_id)
            .outerjoin(agent, agent.id == Lead.assigned_agent_id)
            .where(self.export_condition(caller))
            .order_by(Lead.created_at, Lead.id)
            .execution_options(yield_per=batch)
        )
        yield from self.session.execute(stmt).partitions()

    def visible(self, caller: Caller, lead_id: uuid.UUID) -> Lead | None:
        return self.session.execute(
            select(Lead).where(Lead.id == lead_id, self.visible_to(caller))
        ).scalar_one_or_none()

    def list_visible(
        self, caller: Caller, *, filters: dict[str, Any], after: tuple[dt.datetime, uuid.UUID] | None, limit: int
    ) -> list[Lead]:
        """Newest first, keyset-paginated on (created_at, id)."""
        stmt: Select[tuple[Lead]] = select(Lead).where(self.visible_to(caller))
        for column, value in filters.items():
            stmt = stmt.where(getattr(Lead, column) == value)
        if after is not None:
            at, last_id = after
            stmt = stmt.where(or_(Lead.created_at < at, and_(Lead.created_at == at, Lead.id < last_id)))
        stmt = stmt.order_by(Lead.created_at.desc(), Lead.id.desc()).limit(limit)
        return list(self.session.execute(stmt).scalars())

    def timeline(self, lead_id: uuid.UUID, *, after: tuple[dt.datetime, int] | None, limit: int) -> list[TimelineEvent]:
        """Oldest first, keyset-paginated on (at, id)."""
        stmt = select(TimelineEvent).where(TimelineEvent.lead_id == lead_id)
        if after is not None:
            at, last_id = after
            stmt = stmt.where(or_(TimelineEvent.at > at, and_(TimelineEvent.at == at, TimelineEvent.id > last_id)))
        return list(self.session.execute(stmt.order_by(TimelineEvent.at, TimelineEvent.id).limit(limit)).scalars())

    def shares_of(self, lead_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[tuple[str, str]]]:
        out: dict[uuid.UUID, list[tuple[str, str]]] = {i: [] for i in lead_ids}
        if lead_ids:
            rows = self.session.execute(
                select(LeadShare.lead_id, User.slug, LeadShare.permission)
                .join(User, User.id == LeadShare.user_id)
                .where(LeadShare.lead_id.in_(list(lead_ids)))
                .order_by(User.slug)
            ).all()
            for lead_id, slug, permission in rows:
                out[lead_id].append((slug, permission))
        return out

    def campaigns_of(self, lead_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
        out: dict[uuid.UUID, list[str]] = {i: [] for i in lead_ids}
        if lead_ids:
            rows = self.session.execute(
                select(LeadCampaign.lead_id, LeadCampaign.name)
                .where(LeadCampaign.lead_id.in_(list(lead_ids)))
                .order_by(LeadCampaign.started_at)
            ).all()
            for lead_id, name in rows:
                out[lead_id].append(name)
        return out

    def signup_messages(self, lead_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
        """The last message each lead sent with a signup or an inquiry: read from the intakes its
        ``created`` and ``signup`` events came from (a merge moves those events to the primary, so it
        has the other's messages too). Leads that never sent one are absent."""
        out: dict[uuid.UUID, str] = {}
        if not lead_ids:
            return out
        # A registration or provider keeps the signup as the payload; a Follow Up Boss event under "signup".
        message = func.coalesce(
            Intake.payload["message"].as_string(), Intake.payload[("signup", "message")].as_string()
        )
        rows = self.session.execute(
            select(TimelineEvent.lead_id, message)
            .join(Intake, Intake.id == TimelineEvent.intake_id)
            .where(
                TimelineEvent.lead_id.in_(list(lead_ids)),
                TimelineEvent.kind.in_(("created", "signup")),
                message.is_not(None),
            )
            .order_by(TimelineEvent.at.desc(), TimelineEvent.id.desc())
        ).all()
        for lead_id, text in rows:
            if text and text.strip():
                out.setdefault(lead_id, text)
        return out

    def start_campaign(self, lead_id: uuid.UUID, name: str) -> None:
        self.session.execute(
            dialect_insert(self.session, LeadCampaign).values(lead_id=lead_id, name=name).on_conflict_do_nothing()
        )

    def stop_campaign(self, lead_id: uuid.UUID, name: str) -> None:
        self.session.execute(delete(LeadCampaign).where(LeadCampaign.lead_id == lead_id, LeadCampaign.name == name))

    # --- Working the leads: what workers.leadwork writes for the rules' plans, set-wise, for one lead or a
    # bulk job's chunk (share, assign, transfer, archive, delete, unsubscribe, merge, leaving a team) ---

    def by_ids(self, lead_ids: Sequence[uuid.UUID]) -> list[Lead]:
        """These leads, in one query (in no particular order; ids of no lead are left out)."""
        return list(self.session.execute(select(Lead).where(Lead.id.in_(list(lead_ids)))).scalars())

    def names_of(self, lead_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, tuple[str | None, str | None]]:
        """(first name, last name) of these leads, in one query: how a mail names them."""
        rows = self.session.execute(
            select(Lead.id, Lead.first_name, Lead.last_name).where(Lead.id.in_(list(lead_ids)))
        ).all()
        return {lead_id: (first, last) for lead_id, first, last in rows}

    def put_shares(self, rows: Sequence[dict[str, Any]]) -> None:
        """Share leads with users (rows of lead_id, user_id, permission, shared_by_user_id, created_at) in one
        INSERT: a share already there takes the new permission and sharer (SH1-SH3)."""
        insert = dialect_insert(self.session, LeadShare)
        self.session.execute(
            insert.values(list(rows)).on_conflict_do_update(
                index_elements=["lead_id", "user_id"],
                set_={"permission": insert.excluded.permission, "shared_by_user_id": insert.excluded.shared_by_user_id},
            )
        )

    def remove_share(self, lead_id: uuid.UUID, user_id: int) -> None:
        """SH6: the user no longer sees the lead through a share."""
        self.session.execute(delete(LeadShare).where(LeadShare.lead_id == lead_id, LeadShare.user_id == user_id))

    def assign(self, lead_ids: Sequence[uuid.UUID], agent_id: int | None, *, at: dt.datetime) -> None:
        """A3: these leads' assignee, in one UPDATE; None puts them in the pond (a team's leads nobody works)."""
        self.session.execute(
            update(Lead)
            .where(Lead.id.in_(lead_ids))
            .values(assigned_agent_id=agent_id, in_pond=agent_id is None, updated_at=at)
            .execution_options(synchronize_session=False)
        )

    def key_holders(self, account_id: int, keys: Sequence[str]) -> list[tuple[uuid.UUID, str | None, LeadStatus]]:
        """(id, unique key, status) of the account's leads that hold any of these unique keys (D1)."""
        rows = self.session.execute(
            select(Lead.id, Lead.unique_key, Lead.status).where(
                Lead.account_id == account_id, Lead.unique_key.in_(list(keys))
            )
        ).all()
        return [(lead_id, key, status) for lead_id, key, status in rows]

    def release_unique_keys(self, lead_ids: Sequence[uuid.UUID]) -> None:
        """X4: deleted leads (tombstones) let their unique keys go, for another lead to take."""
        self.session.execute(
            update(Lead)
            .where(Lead.id.in_(lead_ids))
            .values(unique_key=None)
            .execution_options(synchronize_session=False)
        )

    def mark_archived(self, lead_ids: Sequence[uuid.UUID], *, at: dt.datetime) -> None:
        """X2: these leads archived, in one UPDATE."""
        values: dict[str, Any] = {"status": LeadStatus.ARCHIVED, "updated_at": at}
        self.session.execute(
            update(Lead).where(Lead.id.in_(lead_ids)).values(**values).execution_options(synchronize_session=False)
        )

    def mark_deleted(self, lead_ids: Sequence[uuid.UUID], *, at: dt.datetime, by_user_id: int) -> None:
        """X1/X4: these leads become tombstones with who deleted them and when, and so do the leads merged
        into them (two UPDATEs: the merged ones first)."""
        values: dict[str, Any] = {
            "status": LeadStatus.DELETED,
            "updated_at": at,
            "deleted_at": at,
            "deleted_by_user_id": by_user_id,
        }
        self.session.execute(
            update(Lead)
            .where(Lead.merged_into_id.in_(lead_ids), Lead.status == LeadStatus.MERGED)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        self.session.execute(
            update(Lead).where(Lead.id.in_(lead_ids)).values(**values).execution_options(synchronize_session=False)
        )

    def unsubscribe(self, lead_id: uuid.UUID, channel: str, *, at: dt.datetime) -> None:
        """D8: this lead (only) unsubscribed from ``channel``: email, else texts."""
        column = Lead.email_unsubscribed if channel == "email" else Lead.sms_unsubscribed
        self.session.execute(
            update(Lead)
            .where(Lead.id == lead_id)
            .values({column: True, Lead.updated_at: at})
            .execution_options(synchronize_session=False)
        )

    def stop_campaigns(self, lead_id: uuid.UUID) -> None:
        """Every campaign of the lead stops (M5: a lead merged into another)."""
        self.session.execute(delete(LeadCampaign).where(LeadCampaign.lead_id == lead_id))

    def repoint_merged(self, from_id: uuid.UUID, to_id: uuid.UUID) -> None:
        """The leads merged into ``from_id`` now point straight at ``to_id`` (a merged lead points at a live one)."""
        self.session.execute(
            update(Lead)
            .where(Lead.merged_into_id == from_id)
            .values(merged_into_id=to_id)
            .execution_options(synchronize_session=False)
        )

    def lock_live_assigned(self, owner_id: int, agent_id: int) -> list[Lead]:
        """The live (active or archived) leads of an owner assigned to an agent, oldest first, locked until
        the transaction ends (A5: re-routed when the agent leaves the owning team)."""
        return list(
            self.session.execute(
                select(Lead)
                .where(
                    Lead.owner_entity_id == owner_id,
                    Lead.assigned_agent_id == agent_id,
                    Lead.status.in_([LeadStatus.ACTIVE, LeadStatus.ARCHIVED]),
                )
                .order_by(Lead.created_at, Lead.id)
                .with_for_update()
            ).scalars()
        )

    def unshare_owned_by(self, owner_id: int, user_id: int) -> list[uuid.UUID]:
        """A5: remove the user's shares of the leads this owner owns, in one DELETE; the leads unshared."""
        return list(
            self.session.execute(
                delete(LeadShare)
                .where(
                    LeadShare.user_id == user_id,
                    LeadShare.lead_id.in_(select(Lead.id).where(Lead.owner_entity_id == owner_id)),
                )
                .returning(LeadShare.lead_id)
            ).scalars()
        )

    def count_owned(self, owner_id: int) -> int:
        """How many leads the entity owns, deleted ones left out."""
        return int(
            self.session.execute(
                select(func.count())
                .select_from(Lead)
                .where(Lead.owner_entity_id == owner_id, Lead.status != LeadStatus.DELETED)
            ).scalar_one()
        )
