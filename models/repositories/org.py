"""The organisation's queries: the account, its entities, domains, connections, routing rules and cursors,
its users as callers and targets, smart numbers, and the snapshot a worker keeps of it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import NamedTuple

from sqlalchemy import bindparam, delete, exists, select, update
from sqlalchemy.orm import Session, aliased

from models.orgsnapshot import OrgSnapshot, RoutingSnapshot
from models.repositories.common import Caller, to_ref
from models.tables import (
    Account,
    AdminRole,
    ApiConnection,
    Entity,
    EntityKind,
    IntakeKey,
    Membership,
    RoutingRule,
    RoutingRuleMember,
    SiteDomain,
    SmartNumber,
    User,
    WebhookEndpoint,
)
from rules.entities import AgentState, EntityRef, Kind
from rules.permissions import AgentTarget, EntityTarget, UserTarget
from rules.routing import Member, Rule
from rules.webhooks import Subscriptions, subscriptions


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


class KeyRef(NamedTuple):
    """An intake key as a request needs it."""

    id: int
    account_id: int


_INTAKE_KEY = select(IntakeKey.id, IntakeKey.account_id).where(
    IntakeKey.key_hash == bindparam("key_hash"), IntakeKey.revoked_at.is_(None)
)


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

    def disconnect(self, agent_id: int, group_id: int) -> None:
        """The agent is no longer connected to the group (A5). The caller bumps the org version in the same
        transaction (:meth:`bump_org_version`)."""
        self.session.execute(delete(Membership).where(Membership.agent_id == agent_id, Membership.group_id == group_id))

    def load_snapshot(self, account_id: int, version: int) -> OrgSnapshot:
        """The account's organisation as :meth:`domain_claims`, :meth:`connection_owner` and
        :meth:`routing_rules` read it, for every routing entity at once, with the entities' slugs and the
        smart numbers (eight queries whatever its size), tagged with the ``version`` the caller read before
        (a change committed in between makes the tag older than the content, so the next intake loads it
        again: never the other way round)."""
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
        smart_numbers: dict[str, int] = dict(
            self.session.execute(  # type: ignore[arg-type]
                select(SmartNumber.e164, SmartNumber.entity_id).where(SmartNumber.account_id == account_id)
            ).all()
        )
        return OrgSnapshot(
            account_id,
            version,
            domains,
            connections,
            routing,
            slugs={entity_id: e.slug for entity_id, e in entities.items()},
            smart_numbers=smart_numbers,
            webhooks=self.webhook_subscriptions(account_id),
        )

    def webhook_subscriptions(self, account_id: int) -> Subscriptions:
        """The account's endpoints that may be sent to (active, not disabled by a 410) by the events they want."""
        rows = self.session.execute(
            select(WebhookEndpoint.id, WebhookEndpoint.events).where(
                WebhookEndpoint.account_id == account_id,
                WebhookEndpoint.active.is_(True),
                WebhookEndpoint.disabled_at.is_(None),
            )
        ).all()
        return subscriptions((endpoint_id, list(events)) for endpoint_id, events in rows)

    def account(self, account_id: int) -> Account:
        account = self.session.get(Account, account_id)
        assert account is not None
        return account

    def account_by_slug(self, slug: str) -> Account | None:
        return self.session.execute(select(Account).where(Account.slug == slug)).scalar_one_or_none()

    def intake_key_by_hash(self, key_hash: str) -> KeyRef | None:
        """The intake key with this hash, unless revoked: its id and account (no ORM row: every intake asks)."""
        row = self.session.execute(_INTAKE_KEY, {"key_hash": key_hash}).one_or_none()
        return KeyRef(row.id, row.account_id) if row is not None else None

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
