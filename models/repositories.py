"""Every query of the application, named for what it answers. Repositories never commit."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, false, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from models.orgsnapshot import OrgSnapshot, RoutingSnapshot
from models.tables import (
    Account,
    AdminRole,
    ApiConnection,
    Entity,
    EntityKind,
    Import,
    ImportStatus,
    Intake,
    IntakeKey,
    IntakeSource,
    IntakeStatus,
    Job,
    JobStatus,
    Lead,
    LeadCampaign,
    LeadShare,
    LeadStatus,
    Membership,
    Message,
    MessageStatusCallback,
    Outbox,
    RoutingRule,
    RoutingRuleMember,
    SiteActivity,
    SiteDomain,
    SmartNumber,
    TimelineEvent,
    User,
)
from rules.entities import AgentState, EntityRef, Kind
from rules.permissions import Actor, AgentTarget, EntityTarget, LeadFacts, UserTarget
from rules.routing import Member, Rule


def dialect_insert(session: Session, table: Any) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT (PostgreSQL and SQLite both do)."""
    name = session.get_bind().dialect.name
    return (postgresql.insert if name == "postgresql" else sqlite.insert)(table)


def to_ref(entity: Entity, parent: Entity | None = None) -> EntityRef:
    return EntityRef(entity.id, entity.slug, Kind(entity.kind.value), entity.name, to_ref(parent) if parent else None)


def _assemble_rules(
    kind: Kind,
    rows: Sequence[tuple[RoutingRule, Sequence[tuple[int, int]]]],
    connected: dict[int, AgentState],
    listed: dict[int, AgentState],
    team_admins: Sequence[AgentState],
    *,
    default_cursor: int,
) -> tuple[list[Rule], Rule]:
    """A routing entity's rules as values: its rule rows with their (agent id, weight) members in order,
    the agents connected to it and those the rules list (slug order), and a team's admin agents."""
    rules: list[Rule] = []
    for r, members in rows:
        if r.all_connected:
            weights = dict(members)
            rule_members = tuple(Member(a, weights.get(a.id, 1)) for a in connected.values())
        else:
            rule_members = tuple(Member(listed[agent_id], weight) for agent_id, weight in members)
        rules.append(Rule(r.id, r.name, rule_members, dict(r.conditions), r.strategy, r.cursor, r.campaign))
    default_agents = list(connected.values())
    default_name = "Default: round robin over connected agents"
    if kind is Kind.TEAM and team_admins:
        default_agents, default_name = list(team_admins), "Default: the team's admin (O4)"
    default = Rule(None, default_name, tuple(Member(a) for a in default_agents), {}, "round_robin", default_cursor)
    return rules, default


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


# A user as the rules and the visibility filter (V1) see it.
Caller = Actor


class IntakeRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, intake: Intake) -> Intake:
        self.session.add(intake)
        self.session.flush()
        return intake

    def add_idempotent(self, values: dict[str, Any]) -> tuple[uuid.UUID, bool]:
        """Insert unless (account, source, idempotency key) exists; the id and whether it is new."""
        new_id = uuid.uuid4()
        stmt = (
            dialect_insert(self.session, Intake)
            .values(id=new_id, **values)
            .on_conflict_do_nothing(index_elements=["account_id", "source", "idempotency_key"])
            .returning(Intake.id)
        )
        inserted = self.session.execute(stmt).scalar_one_or_none()
        if inserted is not None:
            return inserted, True
        existing = self.session.execute(
            select(Intake.id).where(
                Intake.account_id == values["account_id"],
                Intake.source == values["source"],
                Intake.idempotency_key == values["idempotency_key"],
            )
        ).scalar_one()
        return existing, False

    def get(self, intake_id: uuid.UUID) -> Intake | None:
        return self.session.get(Intake, intake_id)

    def get_for_update(self, intake_id: uuid.UUID) -> Intake | None:
        """The intake, locked: a redelivered task waits for the first run and then sees it done."""
        return self.session.execute(select(Intake).where(Intake.id == intake_id).with_for_update()).scalar_one_or_none()

    def get_for_update_with_account(self, intake_id: uuid.UUID) -> tuple[Intake, Account] | None:
        """The intake, locked as :meth:`get_for_update` locks it, and its account (its duplication flag and
        ``org_version``) read by the same statement; the account row is not locked."""
        row = self.session.execute(
            select(Intake, Account)
            .join(Account, Account.id == Intake.account_id)
            .where(Intake.id == intake_id)
            .with_for_update(of=Intake)
        ).one_or_none()
        return (row[0], row[1]) if row is not None else None

    def reopen(self, ids: Sequence[uuid.UUID]) -> None:
        """Back to accepted, reason cleared, in one statement. Marked as sent now (``relayed_at``): the
        caller publishes each one's task, so the relay need not send it again at once."""
        if ids:
            self.session.execute(
                update(Intake)
                .where(Intake.id.in_(list(ids)))
                .values(status=IntakeStatus.ACCEPTED, reason=None, relayed_at=dt.datetime.now(dt.UTC))
            )

    def with_status(
        self,
        statuses: Iterable[str],
        *,
        since: dt.datetime | None = None,
        account_id: int | None = None,
        limit: int = 1000,
    ) -> list[tuple[uuid.UUID, IntakeSource]]:
        """(id, source) of the intakes in ``statuses``, oldest first; of one account when given."""
        stmt = (
            select(Intake.id, Intake.source)
            .where(Intake.status.in_(list(statuses)))
            .order_by(Intake.created_at)
            .limit(limit)
        )
        if since is not None:
            stmt = stmt.where(Intake.created_at >= since)
        if account_id is not None:
            stmt = stmt.where(Intake.account_id == account_id)
        return [(key, source) for key, source in self.session.execute(stmt).all()]


class OrgRepository:
    def __init__(self, session: Session) -> None:
        self.session = session
        # The account's organisation as a worker keeps it (models.orgsnapshot), when the caller set one:
        # domain claims, connection owners and routing rules are then read from it, cursors excepted.
        self.snapshot: OrgSnapshot | None = None

    def use_snapshot(self, snapshot: OrgSnapshot | None) -> None:
        self.snapshot = snapshot

    def bump_org_version(self, account_id: int) -> None:
        """Tell every worker that what it keeps of this account's organisation is stale. Called in the
        transaction that changes entities, domains, connections, memberships, admin roles, users' agents
        or routing rules, so the new version is visible exactly when the change is."""
        self.session.execute(
            update(Account)
            .where(Account.id == account_id)
            .values(org_version=Account.org_version + 1)
            .execution_options(synchronize_session=False)
        )

    def load_snapshot(self, account_id: int, version: int) -> OrgSnapshot:
        """The account's organisation as :meth:`domain_claims`, :meth:`connection_owner` and
        :meth:`routing_rules` read it, for every routing entity at once (seven queries whatever its
        size), tagged with the ``version`` the caller read before (a change committed in between makes
        the tag older than the content, so the next intake loads it again: never the other way round)."""
        entities = {
            e.id: e
            for e in self.session.execute(
                select(Entity).where(Entity.account_id == account_id).order_by(Entity.slug)
            ).scalars()
        }
        # Routing lists agents in slug order, as the database sorts them (the query above is in that order).
        rank = {entity_id: n for n, entity_id in enumerate(entities)}

        def ref(entity_id: int) -> EntityRef:
            entity = entities[entity_id]
            return to_ref(entity, entities.get(entity.parent_id) if entity.parent_id else None)

        domains = {
            host: ref(entity_id)
            for host, entity_id in self.session.execute(
                select(SiteDomain.host, SiteDomain.entity_id).where(SiteDomain.account_id == account_id)
            ).all()
        }
        connections = {
            connection_id: (slug, ref(entity_id))
            for connection_id, slug, entity_id in self.session.execute(
                select(ApiConnection.id, ApiConnection.slug, ApiConnection.entity_id).where(
                    ApiConnection.account_id == account_id
                )
            ).all()
        }
        connected: dict[int, set[int]] = {}
        for group_id, agent_id in self.session.execute(
            select(Membership.group_id, Membership.agent_id)
            .join(Entity, Entity.id == Membership.group_id)
            .where(Entity.account_id == account_id)
        ).all():
            connected.setdefault(group_id, set()).add(agent_id)
        rule_rows: dict[int, list[RoutingRule]] = {}
        for rule in self.session.execute(
            select(RoutingRule).where(RoutingRule.account_id == account_id).order_by(RoutingRule.position)
        ).scalars():
            rule_rows.setdefault(rule.entity_id, []).append(rule)
        members: dict[int, list[tuple[int, int]]] = {}
        for rule_id, agent_id, weight in self.session.execute(
            select(RoutingRuleMember.rule_id, RoutingRuleMember.agent_id, RoutingRuleMember.weight)
            .join(RoutingRule, RoutingRule.id == RoutingRuleMember.rule_id)
            .where(RoutingRule.account_id == account_id)
            .order_by(RoutingRuleMember.position)
        ).all():
            members.setdefault(rule_id, []).append((agent_id, weight))
        admins: dict[int, set[int]] = {}
        for entity_id, agent_id in self.session.execute(
            select(AdminRole.entity_id, User.agent_id)
            .join(User, User.id == AdminRole.user_id)
            .where(User.account_id == account_id, User.agent_id.is_not(None))
        ).all():
            admins.setdefault(entity_id, set()).add(agent_id)

        def states(group_id: int, agent_ids: Iterable[int]) -> dict[int, AgentState]:
            """As :meth:`_agent_states`: the agents among ``agent_ids``, in slug order, connected or not."""
            group = connected.get(group_id, set())
            return {
                e.id: AgentState(e.id, e.slug, e.name, active=e.active, paused=e.paused, connected=e.id in group)
                for e in sorted(
                    (entities[a] for a in set(agent_ids) if a in entities and entities[a].kind is EntityKind.AGENT),
                    key=lambda e: rank[e.id],
                )
            }

        routing: dict[int, RoutingSnapshot] = {}
        for entity in entities.values():
            if entity.kind is EntityKind.AGENT:
                continue
            rows = [(r, members.get(r.id, [])) for r in rule_rows.get(entity.id, [])]
            listed_ids = {agent_id for _, ms in rows for agent_id, _ in ms}
            team_admins = states(entity.id, admins.get(entity.id, set())) if entity.kind is EntityKind.TEAM else {}
            rules, default = _assemble_rules(
                Kind(entity.kind.value),
                rows,
                states(entity.id, connected.get(entity.id, set())),
                states(entity.id, listed_ids),
                list(team_admins.values()),
                default_cursor=0,
            )
            routing[entity.id] = RoutingSnapshot(tuple(replace(r, cursor=0) for r in rules), default)
        return OrgSnapshot(account_id, version, domains, connections, routing)

    def account(self, account_id: int) -> Account:
        account = self.session.get(Account, account_id)
        assert account is not None
        return account

    def account_by_slug(self, slug: str) -> Account | None:
        return self.session.execute(select(Account).where(Account.slug == slug)).scalar_one_or_none()

    def intake_key_by_hash(self, key_hash: str) -> IntakeKey | None:
        return self.session.execute(
            select(IntakeKey).where(IntakeKey.key_hash == key_hash, IntakeKey.revoked_at.is_(None))
        ).scalar_one_or_none()

    def api_connection_by_hash(self, key_hash: str) -> ApiConnection | None:
        return self.session.execute(
            select(ApiConnection).where(ApiConnection.key_hash == key_hash, ApiConnection.revoked_at.is_(None))
        ).scalar_one_or_none()

    def connection_owner(self, connection_id: int) -> tuple[str, EntityRef]:
        """The slug of an API connection and the entity it belongs to."""
        if self.snapshot is not None and connection_id in self.snapshot.connections:
            return self.snapshot.connections[connection_id]
        connection = self.session.get(ApiConnection, connection_id)
        assert connection is not None
        return connection.slug, self.entity_ref(connection.entity_id)

    def caller_by_token_hash(self, token_hash: str) -> Caller | None:
        user = self.session.execute(
            select(User).where(User.token_hash == token_hash, User.active.is_(True))
        ).scalar_one_or_none()
        return self._caller(user)

    def caller_by_slug(self, account_id: int, slug: str) -> Caller | None:
        """An active user by id within an account (the CLI acts as a named user)."""
        user = self.session.execute(
            select(User).where(User.account_id == account_id, User.slug == slug, User.active.is_(True))
        ).scalar_one_or_none()
        return self._caller(user)

    def caller_by_id(self, user_id: int) -> Caller | None:
        """An active user by row id (a bulk job acts as the user who asked for it)."""
        user = self.session.get(User, user_id)
        return self._caller(user if user is not None and user.active else None)

    def _caller(self, user: User | None) -> Caller | None:
        if user is None:
            return None
        admin_of = self.session.execute(select(AdminRole.entity_id).where(AdminRole.user_id == user.id)).scalars()
        return Caller(user.id, user.account_id, user.slug, user.agent_id, frozenset(admin_of))

    def is_company_admin(self, caller: Caller) -> bool:
        """The caller administers its account's company (account-wide operations, such as replaying intakes)."""
        return bool(
            caller.admin_of
            and self.session.execute(
                select(
                    exists().where(
                        Entity.id.in_(list(caller.admin_of)),
                        Entity.account_id == caller.account_id,
                        Entity.kind == EntityKind.COMPANY,
                    )
                )
            ).scalar_one()
        )

    def entity(self, entity_id: int) -> Entity:
        entity = self.session.get(Entity, entity_id)
        assert entity is not None
        return entity

    def entity_by_slug(self, account_id: int, slug: str) -> Entity | None:
        return self.session.execute(
            select(Entity).where(Entity.account_id == account_id, Entity.slug == slug)
        ).scalar_one_or_none()

    def user(self, user_id: int) -> User:
        user = self.session.get(User, user_id)
        assert user is not None
        return user

    def smart_number_for(self, owner: Entity) -> tuple[str, Entity] | None:
        """The number an owner's texts go out from (SH4), and whose it is: the owner's own smart number,
        else its parent's (an office's company), else the account's company's; None when none has one.
        An entity with several numbers uses the first registered."""
        chain: list[Entity] = []
        entity: Entity | None = owner
        while entity is not None and entity not in chain:
            chain.append(entity)
            entity = self.session.get(Entity, entity.parent_id) if entity.parent_id else None
        chain += self.session.execute(
            select(Entity)
            .where(Entity.account_id == owner.account_id, Entity.kind == EntityKind.COMPANY)
            .order_by(Entity.id)
        ).scalars()
        ids = [e.id for e in chain]
        numbers: dict[int, str] = {}
        for entity_id, e164 in self.session.execute(
            select(SmartNumber.entity_id, SmartNumber.e164)
            .where(SmartNumber.entity_id.in_(ids))
            .order_by(SmartNumber.id.desc())
        ).all():
            numbers[entity_id] = e164  # the lowest id wins: rows come last-registered first
        for e in chain:
            if e.id in numbers:
                return numbers[e.id], e
        return None

    def entity_ref(self, entity_id: int) -> EntityRef:
        entity = self.entity(entity_id)
        parent = self.entity(entity.parent_id) if entity.parent_id else None
        return to_ref(entity, parent)

    def entities_by_ids(self, ids: Iterable[int]) -> dict[int, Entity]:
        wanted = set(ids)
        if not wanted:
            return {}
        return {e.id: e for e in self.session.execute(select(Entity).where(Entity.id.in_(wanted))).scalars()}

    def domain_claims(self, account_id: int, hosts: Sequence[str]) -> dict[str, EntityRef]:
        """The entities of the account that registered any of ``hosts`` (one index lookup)."""
        if not hosts:
            return {}
        if self.snapshot is not None and self.snapshot.account_id == account_id:
            return {host: self.snapshot.domains[host] for host in hosts if host in self.snapshot.domains}
        parent = aliased(Entity)
        rows = self.session.execute(
            select(SiteDomain.host, Entity, parent)
            .join(Entity, Entity.id == SiteDomain.entity_id)
            .outerjoin(parent, parent.id == Entity.parent_id)
            .where(SiteDomain.account_id == account_id, SiteDomain.host.in_(list(hosts)))
        ).all()
        return {host: to_ref(entity, par) for host, entity, par in rows}

    def _agent_states(self, group_id: int, agent_ids: Sequence[int] | None) -> dict[int, AgentState]:
        """Agents (all connected to ``group_id`` when ``agent_ids`` is None) with their eligibility."""
        connected = select(Membership.agent_id).where(Membership.group_id == group_id)
        stmt = select(Entity, Entity.id.in_(connected).label("connected")).where(Entity.kind == EntityKind.AGENT)
        stmt = stmt.where(Entity.id.in_(connected)) if agent_ids is None else stmt.where(Entity.id.in_(list(agent_ids)))
        return {
            e.id: AgentState(e.id, e.slug, e.name, active=e.active, paused=e.paused, connected=bool(conn))
            for e, conn in self.session.execute(stmt.order_by(Entity.slug)).all()
        }

    def routing_rules(self, entity: EntityRef, *, lock: bool) -> tuple[list[Rule], Rule]:
        """The entity's ordered rules and its default rule, as values. With ``lock`` the cursors are
        locked (entity row first, then its rules, always in that order) until the transaction ends.

        With a snapshot (:meth:`use_snapshot`) that holds the entity, only the cursors are read here
        and the rest comes from the snapshot; when the rows read are not the snapshot's rules (an org
        apply committed since the caller read the version), everything is read again from the tables."""
        cached = self.snapshot.routing.get(entity.id) if self.snapshot is not None else None
        if cached is not None:
            default_cursor, cursors = self._routing_cursors(entity.id, lock=lock)
            if [rule_id for rule_id, _ in cursors] == [r.id for r in cached.rules]:
                rules = [
                    replace(r, cursor=cursor, conditions=dict(r.conditions))
                    for r, (_, cursor) in zip(cached.rules, cursors, strict=True)
                ]
                return rules, replace(cached.default, cursor=default_cursor)
        return self._routing_rules_read(entity, lock=lock)

    def _routing_cursors(self, entity_id: int, *, lock: bool) -> tuple[int, list[tuple[int, int]]]:
        """The entity's default cursor and its rules' (id, cursor) in order, locked as :meth:`routing_rules` locks."""
        entity_stmt = select(Entity.default_cursor).where(Entity.id == entity_id)
        rules_stmt = (
            select(RoutingRule.id, RoutingRule.cursor)
            .where(RoutingRule.entity_id == entity_id)
            .order_by(RoutingRule.position)
        )
        if lock:
            # FOR NO KEY UPDATE, entity first: see _routing_rules_read.
            entity_stmt = entity_stmt.with_for_update(key_share=True)
            rules_stmt = rules_stmt.with_for_update(key_share=True)
        default_cursor = self.session.execute(entity_stmt).scalar_one()
        return default_cursor, [(rule_id, cursor) for rule_id, cursor in self.session.execute(rules_stmt).all()]

    def _routing_rules_read(self, entity: EntityRef, *, lock: bool) -> tuple[list[Rule], Rule]:
        """:meth:`routing_rules` read entirely from the tables."""
        entity_stmt = select(Entity).where(Entity.id == entity.id)
        rules_stmt = select(RoutingRule).where(RoutingRule.entity_id == entity.id).order_by(RoutingRule.position)
        if lock:
            # FOR NO KEY UPDATE: a cursor is no key. Plain FOR UPDATE would also wait for the KEY SHARE lock
            # that inserting a lead takes on its owner entity (the foreign key), and two workers each
            # inserting a lead of this owner, then locking its cursors, would deadlock.
            entity_stmt = entity_stmt.with_for_update(key_share=True)
            rules_stmt = rules_stmt.with_for_update(key_share=True)
        row = self.session.execute(entity_stmt).scalar_one()
        rule_rows = list(self.session.execute(rules_stmt).scalars())
        members: dict[int, list[tuple[int, int]]] = {r.id: [] for r in rule_rows}
        if rule_rows:
            for m in self.session.execute(
                select(RoutingRuleMember)
                .where(RoutingRuleMember.rule_id.in_(list(members)))
                .order_by(RoutingRuleMember.position)
            ).scalars():
                members[m.rule_id].append((m.agent_id, m.weight))
        listed_ids = {agent_id for ms in members.values() for agent_id, _ in ms}
        connected = self._agent_states(entity.id, None)
        listed = self._agent_states(entity.id, sorted(listed_ids)) if listed_ids else {}
        admins = self._team_admin_agents(entity.id, connected) if entity.kind is Kind.TEAM else []
        return _assemble_rules(
            entity.kind,
            [(r, members[r.id]) for r in rule_rows],
            connected,
            listed,
            admins,
            default_cursor=row.default_cursor,
        )

    def _team_admin_agents(self, team_id: int, connected: dict[int, AgentState]) -> list[AgentState]:
        agent_ids = self.session.execute(
            select(User.agent_id)
            .join(AdminRole, AdminRole.user_id == User.id)
            .where(AdminRole.entity_id == team_id, User.agent_id.is_not(None))
        ).scalars()
        states = self._agent_states(team_id, [a for a in agent_ids if a is not None])
        return [states[a] for a in sorted(states, key=lambda i: states[i].slug)]

    def move_cursor(self, entity_id: int, rule: Rule, cursor: int) -> None:
        if rule.id is None:
            self.session.execute(update(Entity).where(Entity.id == entity_id).values(default_cursor=cursor))
        else:
            self.session.execute(update(RoutingRule).where(RoutingRule.id == rule.id).values(cursor=cursor))

    def user_target(self, account_id: int, slug: str) -> UserTarget | None:
        """A user of the account by id (SH5: a user of another account is not found)."""
        user = self.session.execute(
            select(User).where(User.account_id == account_id, User.slug == slug)
        ).scalar_one_or_none()
        return UserTarget(user.id, user.slug, user.name, user.active, user.agent_id) if user else None

    def agent_target(self, account_id: int, slug: str) -> AgentTarget | None:
        """An agent of the account by id, with the groups it is connected to."""
        agent = self.session.execute(
            select(Entity).where(Entity.account_id == account_id, Entity.slug == slug, Entity.kind == EntityKind.AGENT)
        ).scalar_one_or_none()
        if agent is None:
            return None
        groups = self.session.execute(select(Membership.group_id).where(Membership.agent_id == agent.id)).scalars()
        return AgentTarget(agent.id, agent.slug, agent.name, agent.active, frozenset(groups))

    def entity_target(self, account_id: int, slug: str) -> EntityTarget | None:
        entity = self.entity_by_slug(account_id, slug)
        if entity is None:
            return None
        parent = self.session.get(Entity, entity.parent_id) if entity.parent_id else None
        return EntityTarget(to_ref(entity, parent), entity.active)

    def mail_addresses(self, entity_id: int) -> list[tuple[str, str]]:
        """Who hears about an entity's leads (T3): an agent itself, else the entity's admins; (name, email) pairs."""
        entity = self.entity(entity_id)
        if entity.kind is EntityKind.AGENT:
            if entity.email:
                return [(entity.name, entity.email)]
            user = self.session.execute(select(User).where(User.agent_id == entity.id)).scalar_one_or_none()
            return [(user.name, user.email)] if user is not None and user.email else []
        admins = self.session.execute(
            select(User.name, User.email)
            .join(AdminRole, AdminRole.user_id == User.id)
            .where(AdminRole.entity_id == entity_id, User.email.is_not(None), User.active.is_(True))
            .order_by(User.slug)
        ).all()
        return [(name, email) for name, email in admins]

    def user_mail_address(self, user_id: int) -> tuple[str, str] | None:
        user = self.user(user_id)
        if user.email:
            return user.name, user.email
        if user.agent_id is not None:
            agent = self.entity(user.agent_id)
            if agent.email:
                return user.name, agent.email
        return None

    def move_cursors(self, entity_id: int, before: Sequence[Rule], after: Sequence[Rule]) -> None:
        """Write back the cursors ``route_many`` moved (``after`` lists the rules in ``before``'s order)."""
        for old, new in zip(before, after, strict=True):
            if old.cursor != new.cursor:
                self.move_cursor(entity_id, new, new.cursor)

    def user_id_of_agent(self, agent_id: int) -> int | None:
        return self.session.execute(select(User.id).where(User.agent_id == agent_id)).scalar_one_or_none()

    def smart_number_by_e164(self, e164: str) -> SmartNumber | None:
        """The smart number with this E.164 form, of whichever account registered it (one only)."""
        return self.session.execute(select(SmartNumber).where(SmartNumber.e164 == e164)).scalar_one_or_none()

    def smart_number_of_account(self, account_id: int, e164: str) -> SmartNumber | None:
        return self.session.execute(
            select(SmartNumber).where(SmartNumber.account_id == account_id, SmartNumber.e164 == e164)
        ).scalar_one_or_none()


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
        digest = hashlib.sha256(f"person:{account_id}:{email_normalized}".encode()).digest()
        self.session.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest[:8], "big", signed=True))))

    def add_site_activity(self, values: dict[str, Any]) -> None:
        """Keep anonymous activity (D7); one row per intake, so a redelivered task adds nothing."""
        self.session.execute(
            dialect_insert(self.session, SiteActivity)
            .values(id=uuid.uuid4(), **values)
            .on_conflict_do_nothing(index_elements=["intake_id"])
        )

    def claim_site_activity(
        self, *, account_id: int, email_normalized: str, owner_entity_id: int | None, lead_id: uuid.UUID
    ) -> list[ClaimedActivity]:
        """Give unclaimed anonymous activity of this email (under ``owner_entity_id``, or under any owner
        of the account when None) to ``lead_id``, in one UPDATE ... RETURNING; the rows claimed, oldest first."""
        stmt = (
            update(SiteActivity)
            .where(
                SiteActivity.account_id == account_id,
                SiteActivity.email_normalized == email_normalized,
                SiteActivity.lead_id.is_(None),
            )
            .values(lead_id=lead_id)
            .returning(*CLAIMED_COLUMNS)
            .execution_options(synchronize_session=False)
        )
        if owner_entity_id is not None:
            stmt = stmt.where(SiteActivity.owner_entity_id == owner_entity_id)
        rows = [ClaimedActivity(*row) for row in self.session.execute(stmt).all()]
        return sorted(rows, key=lambda r: (r.at, str(r.id)))

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

    def has_event_of(self, lead_ids: Sequence[uuid.UUID], intake_id: uuid.UUID) -> bool:
        """Whether the intake left an event on any of these leads (the (lead, intake, kind) index)."""
        return bool(
            self.session.execute(
                select(exists().where(TimelineEvent.lead_id.in_(list(lead_ids)), TimelineEvent.intake_id == intake_id))
            ).scalar_one()
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

    def add_outbound_text(self, values: dict[str, Any]) -> uuid.UUID:
        """Record an outbound text (S1 reads these rows from the moment they are written)."""
        message = Message(id=uuid.uuid4(), direction="outbound", status="queued", attempts=0, **values)
        self.session.add(message)
        self.session.flush()
        return message.id

    def message_for_update(self, message_id: uuid.UUID) -> Message | None:
        """A text, locked until the transaction ends: a redelivered send task waits, then sees what the first did."""
        return self.session.execute(
            select(Message).where(Message.id == message_id).with_for_update()
        ).scalar_one_or_none()

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

    # --- Inbound texts and delivery reports (reply routing S1-S3, Twilio status callbacks) ---

    def _xact_lock(self, key: str) -> None:
        """A PostgreSQL advisory lock on ``key`` until the transaction ends; nothing on SQLite, which
        takes one writer at a time."""
        if self.session.get_bind().dialect.name != "postgresql":
            return
        digest = hashlib.sha256(key.encode()).digest()
        self.session.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest[:8], "big", signed=True))))

    def lock_phone(self, account_id: int, phone_e164: str) -> None:
        """Serialise the texts of one phone to one account: two first texts at once make one lead (O6)."""
        self._xact_lock(f"phone:{account_id}:{phone_e164}")

    def lock_text_sid(self, provider_sid: str) -> None:
        """Serialise a status callback and the send that records the gateway's sid for the same text,
        so a callback that arrives before the sid is recorded is seen by one of the two."""
        self._xact_lock(f"sms-sid:{provider_sid}")

    def live_leads_with_phone(self, account_id: int, phone_e164: str) -> list[Lead]:
        """S1/S2 candidates: the account's leads with this phone that are neither merged nor deleted."""
        return list(
            self.session.execute(
                select(Lead)
                .where(
                    Lead.account_id == account_id,
                    Lead.phone_e164 == phone_e164,
                    Lead.status.in_([LeadStatus.ACTIVE, LeadStatus.ARCHIVED]),
                )
                .order_by(Lead.created_at, Lead.id)
            ).scalars()
        )

    def last_outbound_texts(self, account_id: int, phone_e164: str) -> list[tuple[Message, str | None]]:
        """S1: for each lead that was texted at this phone, its most recent outbound text there, with the
        name of the agent it counts for. One range of the (account, phone, direction, created_at) index,
        whatever the size of the table; the rule skips the leads that are no candidates any more."""
        ranked = (
            select(
                Message.id,
                func.row_number()
                .over(partition_by=Message.lead_id, order_by=(Message.created_at.desc(), Message.id.desc()))
                .label("n"),
            )
            .where(
                Message.account_id == account_id,
                Message.lead_phone == phone_e164,
                Message.direction == "outbound",
                Message.lead_id.is_not(None),
            )
            .subquery()
        )
        rows = self.session.execute(
            select(Message, Entity.name)
            .join(ranked, and_(ranked.c.id == Message.id, ranked.c.n == 1))
            .outerjoin(Entity, Entity.id == Message.agent_id)
        ).all()
        return [(message, name) for message, name in rows]

    def add_inbound_text(self, values: dict[str, Any]) -> uuid.UUID | None:
        """Record an inbound text once per gateway sid; the new row's id, or None when it is there already."""
        return self.session.execute(
            dialect_insert(self.session, Message)
            .values(id=uuid.uuid4(), direction="inbound", **values)
            .on_conflict_do_nothing(index_elements=["provider_sid"])
            .returning(Message.id)
        ).scalar_one_or_none()

    def outbound_text_by_sid(self, provider_sid: str) -> Message | None:
        """The outbound text the gateway knows by ``provider_sid``, locked until the transaction ends."""
        return self.session.execute(
            select(Message)
            .where(Message.provider_sid == provider_sid, Message.direction == "outbound")
            .with_for_update()
        ).scalar_one_or_none()

    def account_of_text_sid(self, provider_sid: str) -> int | None:
        """The account of the text the gateway knows by ``provider_sid``, if any."""
        return self.session.execute(
            select(Message.account_id).where(Message.provider_sid == provider_sid)
        ).scalar_one_or_none()

    def add_status_callback(self, values: dict[str, Any]) -> bool:
        """Keep a delivery report once per (sid, status); whether it is new."""
        inserted = self.session.execute(
            dialect_insert(self.session, MessageStatusCallback)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["provider_sid", "status"])
            .returning(MessageStatusCallback.id)
        ).scalar_one_or_none()
        return inserted is not None

    def status_callbacks_of(self, provider_sid: str) -> list[MessageStatusCallback]:
        """The delivery reports kept for a text, in the order they arrived."""
        return list(
            self.session.execute(
                select(MessageStatusCallback)
                .where(MessageStatusCallback.provider_sid == provider_sid)
                .order_by(MessageStatusCallback.received_at, MessageStatusCallback.id)
            ).scalars()
        )


__all__ = [
    "Caller",
    "Candidate",
    "ClaimedActivity",
    "IntakeRepository",
    "LeadRepository",
    "OrgRepository",
    "dialect_insert",
    "to_ref",
]


# The relay's wait for a row doubles with each time it was relayed, this many times at most (32x).
RELAY_BACKOFF_CAP = 5


class RelayRepository:
    """The relay's queries: kept work (intakes, outbound texts, mail, bulk jobs, imports) that is not done
    a while after it was stored or last relayed, so its task may have been lost."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def claim(
        self,
        table: Any,
        conditions: Sequence[ColumnElement[bool]],
        *,
        cutoff: dt.datetime,
        now: dt.datetime,
        limit: int,
    ) -> list[Any]:
        """Mark up to ``limit`` waiting rows relayed now and return them (id first). Rows another relay
        or a running task holds are skipped (``FOR UPDATE SKIP LOCKED``), so relays on several hosts
        share the work and never send one row twice in a pass."""
        touched = func.coalesce(table.relayed_at, table.created_at)
        # A row relayed before waits twice as long each time (up to RELAY_BACKOFF_CAP doublings): under a
        # backlog longer than the period, sending the same waiting work every pass only lengthened the queue.
        after = now - cutoff
        due = or_(
            *[and_(table.relays == n, touched < now - after * 2**n) for n in range(RELAY_BACKOFF_CAP)],
            and_(table.relays >= RELAY_BACKOFF_CAP, touched < now - after * 2**RELAY_BACKOFF_CAP),
        )
        waiting = (
            select(table.id).where(*conditions, due).order_by(touched).limit(limit).with_for_update(skip_locked=True)
        )
        columns = [table.id, table.source] if table is Intake else [table.id]
        stmt = (
            update(table)
            .where(table.id.in_(waiting.scalar_subquery()))
            .values(relayed_at=now, relays=table.relays + 1)
            .returning(*columns)
            .execution_options(synchronize_session=False)
        )
        return list(self.session.execute(stmt).all())


class OutboxRepository:
    """The mail outbox's queries."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def claim_pending(
        self,
        *,
        now: dt.datetime,
        retry_after: Sequence[dt.timedelta],
        exclude: Iterable[uuid.UUID] = (),
        limit: int,
    ) -> list[Outbox]:
        """Lock up to ``limit`` pending mails that are due, oldest first, and return them. A mail tried ``n``
        times is due ``retry_after[n]`` after it was stored (the last entry for every further try). Rows
        another flush holds are skipped (``FOR UPDATE SKIP LOCKED``; SQLite's ``BEGIN IMMEDIATE`` already
        lets one writer in at a time), so two flushes never send one mail."""
        last = len(retry_after) - 1
        due = or_(
            *[and_(Outbox.attempts == n, Outbox.created_at <= now - wait) for n, wait in enumerate(retry_after[:last])],
            and_(Outbox.attempts >= last, Outbox.created_at <= now - retry_after[last]),
        )
        stmt = select(Outbox).where(Outbox.status == "pending", due)
        skipped = list(exclude)
        if skipped:
            stmt = stmt.where(Outbox.id.not_in(skipped))
        stmt = stmt.order_by(Outbox.created_at).limit(limit).with_for_update(skip_locked=True)
        return list(self.session.execute(stmt).scalars())


# Upper bounds (seconds) of the intake latency histogram, from stored to done.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(frozen=True)
class Latency:
    """A cumulative histogram: ``buckets[i]`` intakes took at most ``LATENCY_BUCKETS[i]`` seconds."""

    buckets: tuple[int, ...]
    count: int
    total_seconds: float


class MetricsRepository:
    """What ``GET /metrics`` reports, read from the database, so every API, worker and relay process on
    every host is counted, and a restart forgets nothing. Each figure is one aggregate query (per kind of
    work, for the relay's re-sends and the dead letters)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def _seconds(self, start: Any, end: Any) -> ColumnElement[Any]:
        if self.session.get_bind().dialect.name == "sqlite":
            return (func.julianday(end) - func.julianday(start)) * 86400.0
        return func.extract("epoch", end - start)

    def intakes(self) -> list[tuple[str, str, int]]:
        """(source, status, count) of every kept intake."""
        stmt = select(Intake.source, Intake.status, func.count()).group_by(Intake.source, Intake.status)
        return [(str(source), str(status), int(n)) for source, status, n in self.session.execute(stmt).all()]

    def intake_latency(self) -> Latency:
        """Seconds from stored to done of every intake that is done."""
        seconds = self._seconds(Intake.created_at, Intake.processed_at)
        row = self.session.execute(
            select(
                *[func.count().filter(seconds <= bound) for bound in LATENCY_BUCKETS],
                func.count(),
                func.coalesce(func.sum(seconds), 0.0),
            ).where(Intake.status == IntakeStatus.DONE, Intake.processed_at.is_not(None))
        ).one()
        return Latency(tuple(int(n) for n in row[: len(LATENCY_BUCKETS)]), int(row[-2]), float(row[-1]))

    def relay_resends(self) -> dict[str, int]:
        """How many times the relay sent each kind of kept work again."""
        tables: dict[str, Any] = {"intakes": Intake, "texts": Message, "mail": Outbox, "jobs": Job, "imports": Import}
        return {
            kind: int(self.session.execute(select(func.coalesce(func.sum(table.relays), 0))).scalar_one())
            for kind, table in tables.items()
        }

    def dead_letters(self) -> dict[str, int]:
        """Work that ended failed past its retries: dead intakes, failed mail, texts, imports and bulk jobs."""
        counts = {
            "intakes": select(func.count()).where(Intake.status == IntakeStatus.DEAD),
            "mail": select(func.count()).where(Outbox.status == "failed"),
            "texts": select(func.count()).where(Message.direction == "outbound", Message.status == "failed"),
            "imports": select(func.count()).where(Import.status == ImportStatus.FAILED),
            "jobs": select(func.count()).where(Job.status == JobStatus.FAILED),
        }
        return {kind: int(self.session.execute(stmt).scalar_one()) for kind, stmt in counts.items()}

    def assigned_per_agent(self) -> list[tuple[str, str, int]]:
        """(account slug, agent slug, live leads assigned to the agent): how evenly routing spreads the work."""
        stmt = (
            select(Account.slug, Entity.slug, func.count())
            .select_from(Lead)
            .join(Entity, Entity.id == Lead.assigned_agent_id)
            .join(Account, Account.id == Lead.account_id)
            .where(Lead.status.in_([LeadStatus.ACTIVE, LeadStatus.ARCHIVED]))
            .group_by(Account.slug, Entity.slug)
        )
        return [(str(account), str(agent), int(n)) for account, agent, n in self.session.execute(stmt).all()]
