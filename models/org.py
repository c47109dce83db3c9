"""Writing a checked org file (:class:`models.orgspec.OrgSpec`) into the database: ``leadrelay org apply``.

The file is the truth for everything relational (memberships, admin roles, domains, smart
numbers, credentials, routing rules) but rows that leads or intakes point at are never deleted:
entities missing from the file are reported and left alone, removed keys and connections are
revoked, users missing from the file are deactivated. Applying the same file twice writes nothing
the second time; in particular routing cursors survive, because rules are matched by
(entity, position) and updated in place.

Literal SMS ``auth_tokens`` are stored encrypted (a Twilio signature check needs the token itself,
so it cannot be hashed like the keys): each is a Fernet token under the newest key of the keyring
the caller passes (:mod:`models.secrets`), and a token given again is not re-encrypted, so applying
the same file twice still writes nothing. The names in ``auth_tokens_env`` are stored as names.
:func:`reencrypt_sms_tokens` moves every stored token to the newest key (``leadrelay secrets rotate``).
Webhooks' literal signing ``secrets`` are kept the same way, for the same reason (they sign in clear).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr
from sqlalchemy import ColumnElement, select, true
from sqlalchemy.orm import Session

from models.base import utcnow
from models.orgspec import AgentSpec, OfficeSpec, OrgFileError, OrgSpec, RuleSpec
from models.repositories import OrgRepository
from models.secrets import Keyring, UndecryptableSecret
from models.security import hash_secret
from models.tables import (
    Account,
    AdminRole,
    ApiConnection,
    Entity,
    EntityKind,
    IntakeKey,
    Lead,
    Membership,
    RoutingRule,
    RoutingRuleMember,
    SiteDomain,
    SmartNumber,
    User,
    WebhookEndpoint,
)

KINDS = (
    "account",
    "entity",
    "user",
    "membership",
    "admin_role",
    "domain",
    "smart_number",
    "intake_key",
    "api_connection",
    "routing_rule",
    "routing_rule_member",
    "webhook",
)


@dataclass
class ApplyReport:
    """What :func:`apply_org` did, counted per kind of row (see ``KINDS``)."""

    account: str
    created: Counter[str] = field(default_factory=Counter)
    updated: Counter[str] = field(default_factory=Counter)
    unchanged: Counter[str] = field(default_factory=Counter)
    deleted: Counter[str] = field(default_factory=Counter)
    revoked: Counter[str] = field(default_factory=Counter)
    # Entities of the account that the file no longer names: kept, because leads may point at them.
    not_in_file: list[str] = field(default_factory=list)
    deactivated_users: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(c.total() for c in (self.created, self.updated, self.deleted, self.revoked))

    def summary(self) -> str:
        """One line per kind of row that the file touches, then the users and entities it left out."""
        lines: list[str] = []
        for kind in KINDS:
            counts = [
                f"{n} {label}"
                for label, counter in (
                    ("created", self.created),
                    ("updated", self.updated),
                    ("deleted", self.deleted),
                    ("revoked", self.revoked),
                    ("unchanged", self.unchanged),
                )
                if (n := counter[kind])
            ]
            if counts:
                lines.append(f"{kind}: {', '.join(counts)}")
        if self.deactivated_users:
            lines.append(f"users deactivated (not in the file): {', '.join(self.deactivated_users)}")
        if self.not_in_file:
            lines.append(f"entities not in the file, left as they are: {', '.join(self.not_in_file)}")
        return "\n".join(lines)

    def record(self, kind: str, *, created: bool = False, changed: bool = False) -> None:
        (self.created if created else self.updated if changed else self.unchanged)[kind] += 1


def apply_org(session: Session, spec: OrgSpec, keyring: Keyring | None = None) -> ApplyReport:
    """Create or update ``spec.account`` to match the file, in ``session``; the caller commits.

    ``keyring`` encrypts the literal ``sms.auth_tokens``; a file that gives some needs one.
    Everything that would make the file fail half-way (a domain, number, key or token of another
    account, a duplication change under existing leads, an entity changing kind) is checked
    before the first write and raised as one :class:`OrgFileError` listing every problem."""
    if spec.sms is not None and spec.sms.auth_tokens and keyring is None:
        raise ValueError("the org file gives sms.auth_tokens: apply_org needs the keyring that encrypts them")
    if any(w.secrets for w in spec.webhooks) and keyring is None:
        raise ValueError("the org file gives webhooks' secrets: apply_org needs the keyring that encrypts them")
    account = session.execute(select(Account).where(Account.slug == spec.account)).scalar_one_or_none()
    problems = _refusals(session, spec, account)
    if problems:
        raise OrgFileError(problems)
    return _Apply(session, spec, account, keyring).run()


@dataclass
class RotateReport:
    """What :func:`reencrypt_sms_tokens` did: values re-encrypted, values under the newest key already,
    and the accounts holding a value that no key opens (left as they are)."""

    reencrypted: int = 0
    current: int = 0
    unreadable: list[str] = field(default_factory=list)


def reencrypt_sms_tokens(session: Session, keyring: Keyring) -> RotateReport:
    """Encrypt every stored SMS auth token and webhook secret again under the newest key of ``keyring``; the
    caller commits.
    Values under that key already are left alone, so a second run re-encrypts nothing. The rows are
    locked, so an ``org apply`` at the same time waits rather than writing tokens under an older key."""
    report = RotateReport()
    accounts = session.execute(
        select(Account).where(Account.sms_auth_tokens_encrypted != []).order_by(Account.id).with_for_update()
    ).scalars()
    for account in accounts:
        rotated, unreadable = _rotate_all(keyring, account.sms_auth_tokens_encrypted, report)
        if unreadable:
            report.unreadable.append(account.slug)
        if rotated != account.sms_auth_tokens_encrypted:
            account.sms_auth_tokens_encrypted = rotated
    endpoints = session.execute(
        select(WebhookEndpoint, Account.slug)
        .join(Account, Account.id == WebhookEndpoint.account_id)
        .where(WebhookEndpoint.secrets_encrypted != [])
        .order_by(WebhookEndpoint.id)
        .with_for_update(of=WebhookEndpoint)
    ).all()
    for endpoint, slug in endpoints:
        rotated, unreadable = _rotate_all(keyring, endpoint.secrets_encrypted, report)
        if unreadable and slug not in report.unreadable:
            report.unreadable.append(slug)
        if rotated != endpoint.secrets_encrypted:
            endpoint.secrets_encrypted = rotated
    session.flush()
    return report


def _rotate_all(keyring: Keyring, values: list[str], report: RotateReport) -> tuple[list[str], bool]:
    """``values`` each under the newest key (counted in ``report``), and whether any could not be opened."""
    rotated: list[str] = []
    unreadable = False
    for stored in values:
        try:
            fresh = keyring.rotate(stored)
        except UndecryptableSecret:
            unreadable = True
            rotated.append(stored)
            continue
        if fresh is None:
            report.current += 1
            rotated.append(stored)
        else:
            report.reencrypted += 1
            rotated.append(fresh)
    return rotated, unreadable


def _secret(value: SecretStr | None) -> str:
    # parse_org copies every ..._env value into the field, so a checked spec always has one here.
    assert value is not None, "apply_org takes an OrgSpec from parse_org or load_org_file"
    return value.get_secret_value()


def _key_path(base: str, env: str | None, field_name: str) -> str:
    return f"{base}.{field_name}_env" if env is not None else f"{base}.{field_name}"


def _refusals(session: Session, spec: OrgSpec, account: Account | None) -> list[str]:
    errors: list[str] = []

    def elsewhere(column: Any) -> ColumnElement[bool]:
        return true() if account is None else column != account.id

    if account is not None:
        if account.duplication != spec.duplication:
            has_leads = session.execute(select(Lead.id).where(Lead.account_id == account.id).limit(1)).first()
            if has_leads is not None:
                errors.append("duplication: cannot change once the account has leads (unique keys depend on it)")
        kinds = dict(
            session.execute(
                select(Entity.slug, Entity.kind).where(
                    Entity.account_id == account.id, Entity.slug.in_([e.id for e in spec.entities])
                )
            )
            .tuples()
            .all()
        )
        for i, e in enumerate(spec.entities):
            old = kinds.get(e.id)
            if old is not None and old.value != e.kind:
                # Leads, memberships and users were written for the old kind; changing it would break them.
                errors.append(
                    f"entities[{i}].kind: {e.id!r} is a {old.value} in the database; an entity's kind cannot change"
                )

    hosts = {h: f"entities[{i}].domains[{j}]" for i, e in enumerate(spec.entities) for j, h in enumerate(e.domains)}
    if hosts:
        for host in session.execute(
            select(SiteDomain.host).where(SiteDomain.host.in_(list(hosts)), elsewhere(SiteDomain.account_id))
        ).scalars():
            errors.append(f"{hosts[host]}: domain {host!r} belongs to another account")
    numbers = {
        n: f"entities[{i}].smart_numbers[{j}]"
        for i, e in enumerate(spec.entities)
        for j, n in enumerate(e.smart_numbers)
    }
    if numbers:
        for number in session.execute(
            select(SmartNumber.e164).where(SmartNumber.e164.in_(list(numbers)), elsewhere(SmartNumber.account_id))
        ).scalars():
            errors.append(f"{numbers[number]}: smart number {number!r} belongs to another account")

    intake = {
        hash_secret(_secret(k.key)): f"intake_keys[{i}]" + (".key_env" if k.key_env else "")
        for i, k in enumerate(spec.intake_keys)
    }
    if intake:
        for digest in session.execute(
            select(IntakeKey.key_hash).where(IntakeKey.key_hash.in_(list(intake)), elsewhere(IntakeKey.account_id))
        ).scalars():
            errors.append(f"{intake[digest]}: key belongs to another account")

    connections = {hash_secret(_secret(c.key)): (i, c) for i, c in enumerate(spec.api_connections)}
    if connections:
        for holder in session.execute(
            select(ApiConnection).where(ApiConnection.key_hash.in_(list(connections)))
        ).scalars():
            i, c = connections[holder.key_hash]
            path = _key_path(f"api_connections[{i}]", c.key_env, "key")
            if account is None or holder.account_id != account.id:
                errors.append(f"{path}: key belongs to another account")
            elif holder.slug != c.id:
                # A key identifies its connection (O5); moving it would re-point the provider's leads silently.
                errors.append(
                    f"{path}: key is already used by connection {holder.slug!r} (keep that id, or give a new key)"
                )

    tokens = {
        hash_secret(_secret(u.token)): _key_path(f"users[{i}]", u.token_env, "token")
        for i, u in enumerate(spec.users)
        if u.token is not None
    }
    if tokens:
        for held in session.execute(
            select(User.token_hash).where(User.token_hash.in_(list(tokens)), elsewhere(User.account_id))
        ).scalars():
            assert held is not None
            errors.append(f"{tokens[held]}: token belongs to another account")
    return errors


def _sync(row: Any, values: dict[str, Any]) -> bool:
    """Set the attributes that differ; True when any did. Equal values are not assigned, so a
    second apply leaves the session clean and issues no UPDATE."""
    changed = False
    for name, value in values.items():
        if getattr(row, name) != value:
            setattr(row, name, value)
            changed = True
    return changed


class _Apply:
    def __init__(self, session: Session, spec: OrgSpec, account: Account | None, keyring: Keyring | None) -> None:
        self.session = session
        self.spec = spec
        self.keyring = keyring
        self.report = ApplyReport(spec.account)
        self._existing_account = account
        self.now = utcnow()

    def run(self) -> ApplyReport:
        self.account = self._account()
        self.entity_ids = self._entities()
        self.user_ids = self._users()
        self._memberships()
        self._admin_roles()
        self._places(SiteDomain, "host", "domain", {h: e.id for e in self.spec.entities for h in e.domains})
        self._places(
            SmartNumber, "e164", "smart_number", {n: e.id for e in self.spec.entities for n in e.smart_numbers}
        )
        self._intake_keys()
        self._connections()
        self._routing()
        self._webhooks()
        if self.report.changed:
            # Workers keep the organisation (models.orgsnapshot) until this version moves.
            OrgRepository(self.session).bump_org_version(self.account.id)
        self.session.flush()
        return self.report

    def _account(self) -> Account:
        sms = self.spec.sms
        values: dict[str, Any] = {
            "name": self.spec.name,
            "duplication": self.spec.duplication,
            "sms_provider": sms.provider if sms else None,
            "sms_account_sid": sms.account_sid if sms else None,
            "sms_auth_token_envs": list(sms.auth_tokens_env) if sms else [],
            "sms_auth_tokens_encrypted": self._encrypted_tokens([t.get_secret_value() for t in sms.auth_tokens])
            if sms
            else [],
        }
        account = self._existing_account
        if account is None:
            account = Account(slug=self.spec.account, **values)
            self.session.add(account)
            self.session.flush()
            self.report.record("account", created=True)
        else:
            self.report.record("account", changed=_sync(account, values))
        return account

    def _encrypted_tokens(self, tokens: list[str], stored: list[str] | None = None) -> list[str]:
        """``tokens`` encrypted; the stored values themselves when they decrypt to exactly ``tokens``
        (Fernet encrypts the same token differently every time, so encrypting again would rewrite
        the row on every apply). ``stored``: the values kept now (the account's SMS tokens by default)."""
        if not tokens:
            return []
        assert self.keyring is not None  # apply_org refuses literal tokens without a keyring
        if stored is None:
            stored = self._existing_account.sms_auth_tokens_encrypted if self._existing_account else []
        if len(stored) == len(tokens):
            try:
                if [self.keyring.decrypt(value) for value in stored] == tokens:
                    return list(stored)
            except UndecryptableSecret:
                pass  # under a key since dropped: the file's tokens replace them
        return [self.keyring.encrypt(token) for token in tokens]

    def _entities(self) -> dict[str, int]:
        existing = {
            e.slug: e
            for e in self.session.execute(select(Entity).where(Entity.account_id == self.account.id)).scalars()
        }
        rows: list[tuple[Entity, bool, bool]] = []  # row, created, changed
        for spec in self.spec.entities:
            agent = spec if isinstance(spec, AgentSpec) else None
            values: dict[str, Any] = {
                "kind": EntityKind(spec.kind),
                "name": spec.name,
                "email": agent.email if agent else None,
                "phone": agent.phone if agent else None,
                "active": agent.active if agent else True,
                "paused": agent.paused if agent else False,
                "private": agent.private if agent else False,
                "hide_from_team": agent.hide_from_team if agent else False,
            }
            row = existing.get(spec.id)
            if row is None:
                row = Entity(account_id=self.account.id, slug=spec.id, **values)
                self.session.add(row)
                rows.append((row, True, False))
            else:
                rows.append((row, False, _sync(row, values)))
        self.session.flush()  # parents may be new rows: ids first
        ids = {slug: row.id for slug, row in existing.items()} | {row.slug: row.id for row, _, _ in rows}
        for spec, (row, created, changed) in zip(self.spec.entities, rows, strict=True):
            parent = spec.parent if isinstance(spec, OfficeSpec) else None
            moved = _sync(row, {"parent_id": ids[parent] if parent else None})
            self.report.record("entity", created=created, changed=changed or moved)
        self.report.not_in_file = sorted(set(existing) - {e.id for e in self.spec.entities})
        return ids

    def _users(self) -> dict[str, int]:
        entries = {u.id: u for u in self.spec.users}
        wanted: dict[str, dict[str, Any]] = {}
        for agent in self.spec.agents:
            entry = entries.get(agent.id)
            wanted[agent.id] = {
                "name": entry.name if entry and entry.name else agent.name,
                "email": entry.email if entry and entry.email else agent.email,
                "agent_id": self.entity_ids[agent.id],
                "token_hash": hash_secret(_secret(entry.token)) if entry and entry.token else None,
                # An agent set inactive has left: its token stops working at once. The hash stays, so
                # setting it active again with the same token gives access back.
                "active": agent.active,
            }
        for entry in self.spec.users:
            if entry.id not in wanted:
                assert entry.name is not None  # parse_org requires a name of a user who is not an agent
                wanted[entry.id] = {
                    "name": entry.name,
                    "email": entry.email,
                    "agent_id": None,
                    "token_hash": hash_secret(_secret(entry.token)) if entry.token else None,
                    "active": True,
                }
        existing = {
            u.slug: u for u in self.session.execute(select(User).where(User.account_id == self.account.id)).scalars()
        }
        # A user left out of the file loses access; the row stays for the leads and shares that name it.
        gone: dict[str, Any] = {"active": False, "token_hash": None}
        # token_hash is unique: a token moving from one user to another would collide mid-flush, so
        # every changing token is cleared and flushed before the new ones are set.
        clearing = [
            row
            for slug, row in existing.items()
            if row.token_hash is not None and row.token_hash != wanted.get(slug, gone)["token_hash"]
        ]
        for row in clearing:
            row.token_hash = None
        if clearing:
            self.session.flush()
        cleared = {row.slug for row in clearing}
        for slug, row in existing.items():
            if slug not in wanted:
                was_active = row.active
                changed = _sync(row, gone) or slug in cleared
                if was_active:
                    self.report.deactivated_users.append(slug)
                self.report.record("user", changed=changed)
        for slug, values in wanted.items():
            user = existing.get(slug)
            if user is None:
                self.session.add(User(account_id=self.account.id, slug=slug, **values))
                self.report.record("user", created=True)
            else:
                self.report.record("user", changed=_sync(user, values) or slug in cleared)
        self.session.flush()
        return dict(
            self.session.execute(select(User.slug, User.id).where(User.account_id == self.account.id)).tuples().all()
        )

    def _memberships(self) -> None:
        ids = self.entity_ids
        # Every agent is connected to its company (docs/org-file.md), as well as to its office and teams.
        companies = [ids[e.id] for e in self.spec.entities if e.kind == "company"]
        wanted: set[tuple[int, int]] = set()
        for agent in self.spec.agents:
            groups = [*companies, *(ids[t] for t in agent.teams)]
            if agent.office:
                groups.append(ids[agent.office])
            wanted.update((ids[agent.id], group) for group in groups)
        existing = {
            (m.agent_id, m.group_id): m
            for m in self.session.execute(
                select(Membership)
                .join(Entity, Entity.id == Membership.agent_id)
                .where(Entity.account_id == self.account.id)
            ).scalars()
        }
        self._sync_pairs("membership", wanted, existing, lambda a, g: Membership(agent_id=a, group_id=g))

    def _admin_roles(self) -> None:
        users, ids = self.user_ids, self.entity_ids
        wanted = {(users[u.id], ids[e]) for u in self.spec.users for e in u.admin_of}
        wanted |= {(users[admin], ids[e.id]) for e in self.spec.entities for admin in e.admins}
        existing = {
            (r.user_id, r.entity_id): r
            for r in self.session.execute(
                select(AdminRole).join(User, User.id == AdminRole.user_id).where(User.account_id == self.account.id)
            ).scalars()
        }
        self._sync_pairs("admin_role", wanted, existing, lambda u, e: AdminRole(user_id=u, entity_id=e))

    def _sync_pairs(
        self,
        kind: str,
        wanted: set[tuple[int, int]],
        existing: dict[tuple[int, int], Any],
        make: Callable[[int, int], Any],
    ) -> None:
        for pair, row in existing.items():
            if pair in wanted:
                self.report.record(kind)
            else:
                self.session.delete(row)
                self.report.deleted[kind] += 1
        for pair in sorted(wanted - set(existing)):
            self.session.add(make(*pair))
            self.report.record(kind, created=True)

    def _places(
        self, model: type[SiteDomain] | type[SmartNumber], attr: str, kind: str, wanted_slugs: dict[str, str]
    ) -> None:
        wanted = {key: self.entity_ids[slug] for key, slug in wanted_slugs.items()}
        existing = {
            getattr(row, attr): row
            for row in self.session.execute(select(model).where(model.account_id == self.account.id)).scalars()
        }
        for key, row in existing.items():
            if key not in wanted:
                self.session.delete(row)
                self.report.deleted[kind] += 1
        for key, entity_id in wanted.items():
            place = existing.get(key)
            if place is None:
                self.session.add(model(account_id=self.account.id, entity_id=entity_id, **{attr: key}))
                self.report.record(kind, created=True)
            else:
                self.report.record(kind, changed=_sync(place, {"entity_id": entity_id}))

    def _intake_keys(self) -> None:
        wanted = [hash_secret(_secret(k.key)) for k in self.spec.intake_keys]
        existing = {
            k.key_hash: k
            for k in self.session.execute(select(IntakeKey).where(IntakeKey.account_id == self.account.id)).scalars()
        }
        for digest in wanted:
            row = existing.get(digest)
            if row is None:
                self.session.add(IntakeKey(account_id=self.account.id, key_hash=digest))
                self.report.record("intake_key", created=True)
            else:
                # A key given again after it was removed works again: same row, so its intakes stay linked.
                self.report.record("intake_key", changed=_sync(row, {"revoked_at": None}))
        for digest, row in existing.items():
            if digest not in wanted and row.revoked_at is None:
                row.revoked_at = self.now
                self.report.revoked["intake_key"] += 1

    def _connections(self) -> None:
        existing = {
            c.slug: c
            for c in self.session.execute(
                select(ApiConnection).where(ApiConnection.account_id == self.account.id)
            ).scalars()
        }
        for spec in self.spec.api_connections:
            values: dict[str, Any] = {
                "provider": spec.provider,
                "entity_id": self.entity_ids[spec.entity],
                "key_hash": hash_secret(_secret(spec.key)),
                "revoked_at": None,
            }
            row = existing.get(spec.id)
            if row is None:
                self.session.add(ApiConnection(account_id=self.account.id, slug=spec.id, **values))
                self.report.record("api_connection", created=True)
            else:
                self.report.record("api_connection", changed=_sync(row, values))
        named = {c.id for c in self.spec.api_connections}
        for slug, row in existing.items():
            if slug not in named and row.revoked_at is None:
                row.revoked_at = self.now
                self.report.revoked["api_connection"] += 1

    def _routing(self) -> None:
        rules_by_entity: dict[int, dict[int, RoutingRule]] = {}
        for rule in self.session.execute(
            select(RoutingRule).where(RoutingRule.account_id == self.account.id)
        ).scalars():
            rules_by_entity.setdefault(rule.entity_id, {})[rule.position] = rule
        members: dict[int, dict[int, RoutingRuleMember]] = {}
        for member in self.session.execute(
            select(RoutingRuleMember)
            .join(RoutingRule, RoutingRule.id == RoutingRuleMember.rule_id)
            .where(RoutingRule.account_id == self.account.id)
        ).scalars():
            members.setdefault(member.rule_id, {})[member.agent_id] = member

        routed = {self.entity_ids[r.entity]: r.rules for r in self.spec.routing}
        kept: list[tuple[RoutingRule, RuleSpec]] = []
        dropped: list[RoutingRule] = []
        # Entities not in the file keep their rules along with the rest of their row.
        for entity_id in (self.entity_ids[e.id] for e in self.spec.entities):
            current = rules_by_entity.get(entity_id, {})
            specs = routed.get(entity_id, [])
            for position, spec in enumerate(specs):
                values: dict[str, Any] = {
                    "name": spec.name,
                    "conditions": spec.when.conditions(),
                    "strategy": spec.strategy,
                    "all_connected": spec.all_connected,
                    "campaign": spec.campaign,
                }
                row = current.get(position)
                if row is None:
                    row = RoutingRule(account_id=self.account.id, entity_id=entity_id, position=position, **values)
                    self.session.add(row)
                    self.report.record("routing_rule", created=True)
                else:
                    # Same (entity, position): the row and its cursor stay, so the rotation goes on.
                    self.report.record("routing_rule", changed=_sync(row, values))
                kept.append((row, spec))
            dropped.extend(row for position, row in current.items() if position >= len(specs))

        self.session.flush()  # new rules need ids for their members
        for row, spec in kept:
            self._rule_members(row, spec, members.get(row.id, {}))
        if dropped:
            for row in dropped:
                for member in members.get(row.id, {}).values():
                    self.session.delete(member)
                    self.report.deleted["routing_rule_member"] += 1
            # Members first: no ORM relationship tells the flush which table to empty first.
            self.session.flush()
            for row in dropped:
                self.session.delete(row)
                self.report.deleted["routing_rule"] += 1

    def _rule_members(self, rule: RoutingRule, spec: RuleSpec, existing: dict[int, RoutingRuleMember]) -> None:
        weights = spec.weights or {}
        # With agents: connected, member rows only carry weights: every other connected agent weighs 1
        # (models.repositories.OrgRepository.routing_rules reads them that way).
        listed = list(weights) if spec.all_connected else spec.agent_ids
        wanted = {
            self.entity_ids[slug]: {"position": position, "weight": weights.get(slug, 1)}
            for position, slug in enumerate(listed)
        }
        for agent_id, row in existing.items():
            if agent_id not in wanted:
                self.session.delete(row)
                self.report.deleted["routing_rule_member"] += 1
        for agent_id, values in wanted.items():
            member = existing.get(agent_id)
            if member is None:
                self.session.add(RoutingRuleMember(rule_id=rule.id, agent_id=agent_id, **values))
                self.report.record("routing_rule_member", created=True)
            else:
                self.report.record("routing_rule_member", changed=_sync(member, values))

    def _webhooks(self) -> None:
        """The file's webhooks, matched by id. One missing from the file is made inactive, not deleted (its
        deliveries stay listed). Applying the file clears a 410's disabling: the file says the endpoint is on."""
        existing = {
            w.slug: w
            for w in self.session.execute(
                select(WebhookEndpoint).where(WebhookEndpoint.account_id == self.account.id)
            ).scalars()
        }
        for spec in self.spec.webhooks:
            row = existing.get(spec.id)
            secrets = [s.get_secret_value() for s in spec.secrets]
            values: dict[str, Any] = {
                "url": spec.url,
                "events": list(spec.events),
                "secret_envs": list(spec.secrets_env),
                "secrets_encrypted": self._encrypted_tokens(secrets, row.secrets_encrypted if row else []),
                "active": spec.active,
                "disabled_at": None,
                "disabled_reason": None,
            }
            if row is None:
                self.session.add(WebhookEndpoint(account_id=self.account.id, slug=spec.id, **values))
                self.report.record("webhook", created=True)
            else:
                self.report.record("webhook", changed=_sync(row, values))
        named = {w.id for w in self.spec.webhooks}
        for slug, row in existing.items():
            if slug not in named and row.active:
                row.active = False
                self.report.revoked["webhook"] += 1
