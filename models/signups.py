"""The one signup path, the database part: claim a batch of waiting intakes, lock and read what their
plan needs (:class:`rules.signups.Needs`), and write the plan (:class:`rules.signups.SignupPlan`) in a
handful of statements whatever the batch's size.

Locks, always in this order, so two batches (or a batch and any other writer) cannot deadlock:
the intake rows (``FOR UPDATE SKIP LOCKED``: batches never wait for each other's intakes), the people
(advisory locks in key order: an activity of the person deciding right now that there is no lead waits,
then finds it), the routing entities (rows in id order; an entity's rule cursors move only under its
row lock). Leads are inserted last: two batches making the same person's lead are already serialised
by the person lock, so the unique index never makes one wait for the other."""

from __future__ import annotations

import datetime as dt
import functools
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    Integer,
    String,
    Table,
    Text,
    Uuid,
    any_,
    bindparam,
    case,
    column,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy import cast as sa_cast
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from models.orgsnapshot import OrgSnapshot
from models.repositories import (
    CLAIMED_COLUMNS,
    DELIVERIES,
    ClaimedActivity,
    IntakeRepository,
    OrgRepository,
    delivery_rows,
    dialect_insert,
)
from models.repositories.common import (
    AT,
    EVENTS,
    INTAKES,
    LEADS,
    OUTBOX,
    columns_of,
    event_row,
    insert_from,
    person_lock_key,
    recordset,
    rows_json,
    with_scalar_defaults,
)
from models.tables import (
    Account,
    Entity,
    Intake,
    IntakeSource,
    IntakeStatus,
    Lead,
    LeadCampaign,
    Message,
    Outbox,
    RoutingRule,
    SiteActivity,
    TimelineEvent,
    User,
)
from rules.routing import Rule
from rules.signups import Contact, Facts, KnownLead, Mail, Needs, SignupPlan
from rules.texts import TextMail, TextPlan

# The sources a batch takes beside the intake its task was sent for, of the intake's own kind: signups
# (decided together by the signup path), or inbound texts (``workers.texts``, in arrival order). An event
# intake may hold activity: those are taken one at a time.
BATCHED_SOURCES = (IntakeSource.REGISTRATION, IntakeSource.PROVIDER)
TEXT_SOURCES = (IntakeSource.SMS,)
FINAL = (IntakeStatus.DONE, IntakeStatus.REJECTED)
# The other tables the writer writes with Core (the shared ones are in models.repositories.common).
RULES = cast(Table, RoutingRule.__table__)
ENTITIES = cast(Table, Entity.__table__)
ACTIVITY = cast(Table, SiteActivity.__table__)
CAMPAIGNS = cast(Table, LeadCampaign.__table__)
MESSAGES = cast(Table, Message.__table__)
# Past this many keys (an import's chunk, never a live batch), the leads are read by a JSON array of keys.
MANY_KEYS = 1_000
_KEYS_IN_JSON = text("leads.unique_key = ANY(ARRAY(SELECT jsonb_array_elements_text(CAST(:keys AS jsonb))))")


def _constant(value: Any, type_: Any) -> Any:
    """``value`` written into the statement's SQL when it runs (a literal), not sent as a parameter."""
    return literal(value, type_, literal_execute=True)


@functools.cache
def _claim_statement(batch: bool, skip_locked: bool) -> Any:
    """:meth:`SignupStore.claim`'s statement, built once: bound ``intake_id``, ``limit`` and ``twice``."""
    intake_id = bindparam("intake_id", type_=Uuid)
    stmt = select(Intake, Account.org_version, Account.duplication).join(Account, Account.id == Intake.account_id)
    if batch:
        # The constants are written into the SQL, not bound: psycopg prepares a statement it runs often, and
        # PostgreSQL's generic plan of it cannot tell "accepted" (a few rows) from "done" (nearly all) when
        # the status is a parameter: it then scans the whole table for the waiting signups.
        accepted = _constant(IntakeStatus.ACCEPTED, Intake.status.type)
        final = [_constant(status, Intake.status.type) for status in FINAL]
        first = _constant(0, Intake.attempts.type)
        this = select(Intake.account_id).where(Intake.id == intake_id).scalar_subquery()

        def waiting(sources: Sequence[IntakeSource]) -> Any:
            kind = [_constant(source, Intake.source.type) for source in sources]
            # Companions for an intake of this kind on its first try, or one already finished (its task
            # stood for the intakes that came while it was queued: ``workers.app.publish_shared``); an
            # intake that failed before is tried alone. Of the two kinds, the one the intake is not of reads
            # nothing: its condition is a constant of the statement (a one-time filter).
            first_try = (
                select(Intake.id)
                .where(
                    Intake.id == intake_id,
                    Intake.source.in_(kind),
                    or_(Intake.attempts == first, Intake.status.in_(final)),
                )
                .exists()
            )
            # The oldest waiting intakes of the kind in the account, found by the partial index that holds
            # exactly them (``ix_intakes_waiting_signups``, ``ix_intakes_waiting_texts``), however many
            # intakes are finished or wait for something else; twice the batch, as another batch may hold some.
            return (
                select(Intake.id)
                .where(
                    Intake.account_id == this,
                    Intake.status == accepted,
                    Intake.attempts == first,
                    Intake.source.in_(kind),
                    first_try,
                )
                .order_by(Intake.created_at)
                .limit(bindparam("twice", type_=Integer))
            )

        wanted = union_all(select(intake_id), waiting(BATCHED_SOURCES), waiting(TEXT_SOURCES)).subquery()
        # The ids as one array (computed once, first), so the rows are found by the primary key: as an IN
        # (semi-join), PostgreSQL may read the intakes through the status index instead, every waiting one.
        ids = select(func.array_agg(wanted.c[0])).scalar_subquery()
        stmt = (
            stmt.where(Intake.id == any_(sa_cast(ids, ARRAY(Uuid))))
            # The companions still waiting once their lock is had (a batch may have just finished them).
            .where(or_(Intake.id == intake_id, Intake.status == accepted))
            .order_by((Intake.id == intake_id).desc(), Intake.created_at)
            .limit(bindparam("limit", type_=Integer))
        )
    else:
        stmt = stmt.where(Intake.id == intake_id)
    # The locked row is the truth: an Intake this session loaded earlier (a batch that failed, then read
    # again before another task finished it) is overwritten, never trusted over what the lock returns.
    return stmt.with_for_update(of=Intake, skip_locked=skip_locked).execution_options(populate_existing=True)


_ENTITY_IDS: Any = bindparam("entity_ids", expanding=True)
# SignupStore.routing's two statements: the entities' rows locked in id order, then their rules' cursors.
_LOCK_ENTITIES = (
    select(ENTITIES.c.id, ENTITIES.c.default_cursor)
    .where(ENTITIES.c.id.in_(_ENTITY_IDS))
    .order_by(ENTITIES.c.id)
    .with_for_update(key_share=True)
)
_CURSORS = (
    select(RULES.c.entity_id, RULES.c.id, RULES.c.cursor)
    .where(RULES.c.entity_id.in_(_ENTITY_IDS))
    .order_by(RULES.c.entity_id, RULES.c.position)
)


@dataclass(frozen=True)
class _Rows:
    """A plan's rows, table by table, as the statements take them."""

    account_id: int
    leads: list[dict[str, Any]]
    events: list[dict[str, Any]]
    campaigns: list[dict[str, Any]]
    mails: list[dict[str, Any]]
    deliveries: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, account_id: int, plan: SignupPlan, now: dt.datetime) -> _Rows:
        return cls(
            account_id,
            leads=[{"id": lead.id, **lead.values} for lead in plan.leads],
            events=[event_row(e) for e in plan.events],
            campaigns=[{"lead_id": lead_id, "name": name, "started_at": now} for lead_id, name in plan.campaigns],
            mails=[mail_row(account_id, m, now) for m in plan.mails],
            deliveries=delivery_rows(account_id, plan.deliveries, now),
        )


def mail_row(account_id: int, mail: Mail | TextMail, now: dt.datetime) -> dict[str, Any]:
    """The outbox row of a planned mail (a signup's or a text's), pending, cut to the columns' lengths."""
    return {
        "id": uuid.uuid4(),
        "account_id": account_id,
        "kind": "email",
        "dedupe_key": mail.dedupe_key[:200],
        "to_address": mail.to_address,
        "subject": mail.subject[:300],
        "body": mail.body,
        "correlation_id": mail.correlation_id[:64] if mail.correlation_id is not None else None,
        "status": "pending",
        "attempts": 0,
        "created_at": now,
    }


@dataclass(frozen=True)
class Claimed:
    """The intakes a batch holds, the one its task was sent for first when it was free to take."""

    intakes: list[Intake]
    org_version: int
    duplication: bool
    account_id: int


class SignupStore:
    """The batch's statements, on the unit of work's session."""

    def __init__(self, session: Session, orgs: OrgRepository) -> None:
        self.session = session
        self.orgs = orgs
        self.postgres = session.get_bind().dialect.name == "postgresql"

    # --- claim -----------------------------------------------------------------------------------

    def claim(self, intake_id: uuid.UUID, limit: int) -> Claimed | None:
        """Lock the intake ``intake_id`` and, when it is a signup on its first try and ``limit`` allows, up to
        ``limit - 1`` other signups of its account waiting their first try, oldest first, in one statement. Rows another
        batch holds are skipped, never waited for: the intake itself too (the caller then waits for it
        alone). None when no row was taken. SQLite (one writer, no row locks) takes the intake alone."""
        batch = self.postgres and limit > 1
        rows = self.session.execute(
            _claim_statement(batch, self.postgres), {"intake_id": intake_id, "limit": limit, "twice": 2 * limit}
        ).all()
        if not rows:
            return None
        _, version, duplication = rows[0]
        return Claimed([row[0] for row in rows], version, duplication, rows[0][0].account_id)

    def wait_for(self, intake_id: uuid.UUID) -> Claimed | None:
        """Lock the intake alone, waiting for the batch that holds it to end."""
        locked = IntakeRepository(self.session).get_for_update_with_account(intake_id)
        if locked is None:
            return None
        intake, account = locked
        return Claimed([intake], account.org_version, account.duplication, intake.account_id)

    def count_attempt(self, intake_id: uuid.UUID) -> None:
        """One more try of an intake that failed alone (a batch takes only intakes on their first try)."""
        self.session.execute(
            update(Intake)
            .where(Intake.id == intake_id)
            .values(attempts=Intake.attempts + 1)
            .execution_options(synchronize_session=False)
        )

    def contacts(self, account_id: int) -> dict[int, Contact]:
        """Every entity's name and mail address (the snapshot keeps them: a new lead's mail names both)."""
        rows = self.session.execute(select(Entity.id, Entity.name, Entity.email).where(Entity.account_id == account_id))
        return {entity_id: Contact(name, email) for entity_id, name, email in rows}

    def load_snapshot(self, account_id: int, version: int) -> OrgSnapshot:
        return replace(self.orgs.load_snapshot(account_id, version), contacts=self.contacts(account_id))

    # --- lock and read ---------------------------------------------------------------------------

    def lock_people(self, account_id: int, emails: Sequence[str]) -> None:
        """One advisory lock per person, taken in key order in one statement (PostgreSQL; SQLite has one writer)."""
        if not self.postgres or not emails:
            return
        keys = sorted({person_lock_key(account_id, e) for e in emails})
        # The subquery's order is the order the locks are taken in (OFFSET 0 keeps it from being flattened).
        ordered = (
            select(func.unnest(bindparam("keys", keys, type_=ARRAY(BigInteger))).label("k"))
            .order_by("k")
            .offset(0)
            .subquery()
        )
        self.session.execute(select(func.pg_advisory_xact_lock(ordered.c.k))).all()

    def routing(self, snapshot: OrgSnapshot, entity_ids: Sequence[int]) -> dict[int, tuple[Sequence[Rule], Rule]]:
        """Each entity's rules and default rule with its cursors, locked until the transaction ends: the
        entity rows in id order, then their rules' cursors (which move only under the entity's lock).
        The rest comes from the snapshot; an entity whose rules are not the snapshot's (an org apply
        committed since its version was read) is read whole from the tables."""
        if not entity_ids:
            return {}
        defaults: dict[int, int] = dict(
            self.session.execute(_LOCK_ENTITIES, {"entity_ids": list(entity_ids)}).all()  # type: ignore[arg-type]
        )
        cursors: dict[int, list[tuple[int, int]]] = {entity_id: [] for entity_id in entity_ids}
        # A statement of its own, after the locks: one statement reads every table as it was when it began.
        for entity_id, rule_id, cursor in self.session.execute(_CURSORS, {"entity_ids": list(entity_ids)}).all():
            cursors[entity_id].append((rule_id, cursor))
        routing: dict[int, tuple[Sequence[Rule], Rule]] = {}
        for entity_id in entity_ids:
            cached = snapshot.routing.get(entity_id)
            rows = cursors[entity_id]
            if cached is not None and [rule_id for rule_id, _ in rows] == [r.id for r in cached.rules]:
                rules = [
                    replace(r, cursor=cursor, conditions=dict(r.conditions))
                    for r, (_, cursor) in zip(cached.rules, rows, strict=True)
                ]
                routing[entity_id] = (rules, replace(cached.default, cursor=defaults[entity_id]))
            else:
                routing[entity_id] = self.orgs.routing_rules(self.orgs.entity_ref(entity_id), lock=True)
        return routing

    def known_leads(self, account_id: int, needs: Needs) -> tuple[dict[str, KnownLead], dict[uuid.UUID, KnownLead]]:
        """The leads that hold the batch's keys or that its signups name (D5), with every lead on their merge
        chains (M4), in one statement."""
        if not needs.keys and not needs.named_leads:
            return {}, {}
        return self._known(account_id, or_(Lead.unique_key.in_(needs.keys), Lead.id.in_(needs.named_leads)), {})

    def known_leads_of_keys(
        self, account_id: int, keys: Sequence[str]
    ) -> tuple[dict[str, KnownLead], dict[uuid.UUID, KnownLead]]:
        """:meth:`known_leads` of many keys (an import's chunk of 10,000), none named: on PostgreSQL bound as
        one JSON array and read with one index scan of the unique key, rather than as a parameter each (whose
        binding and parsing cost more than the read itself)."""
        if not self.postgres:
            return self.known_leads(account_id, Needs(tuple(keys), (), (), ()))
        if not keys:
            return {}, {}
        return self._known(account_id, _KEYS_IN_JSON, {"keys": json.dumps(list(keys))})

    def _known(
        self, account_id: int, which: Any, params: dict[str, Any]
    ) -> tuple[dict[str, KnownLead], dict[uuid.UUID, KnownLead]]:
        """The account's leads ``which`` selects, with every lead on their merge chains, by key and by id."""
        columns = (
            Lead.id,
            Lead.owner_entity_id,
            Lead.status,
            Lead.email_normalized,
            Lead.merged_into_id,
            Lead.created_by_intake_id,
            Lead.deleted_by_user_id,
            Lead.deleted_at,
            Lead.unique_key,
            Lead.assigned_agent_id,
        )
        first = select(*columns).where(Lead.account_id == account_id, which)
        chain = first.cte("chain", recursive=True)
        chain = chain.union(select(*columns).join(chain, Lead.id == chain.c.merged_into_id))
        rows = self.session.execute(
            select(chain, User.slug).outerjoin(User, User.id == chain.c.deleted_by_user_id), params
        ).all()
        by_key: dict[str, KnownLead] = {}
        by_id: dict[uuid.UUID, KnownLead] = {}
        for row in rows:
            status = row.status.value if hasattr(row.status, "value") else str(row.status)
            lead = KnownLead(
                row.id,
                row.owner_entity_id,
                status,
                row.email_normalized,
                row.merged_into_id,
                row.created_by_intake_id,
                row.slug,
                row.deleted_at,
                assigned_agent_id=row.assigned_agent_id,
            )
            by_id[lead.id] = lead
            if row.unique_key is not None:
                by_key[row.unique_key] = lead
        return by_key, by_id

    def events_of(self, pairs: Iterable[tuple[uuid.UUID, uuid.UUID]]) -> frozenset[tuple[uuid.UUID, uuid.UUID]]:
        """Of (lead id, intake id) pairs, those with an event (X4: a replay's earlier run left one)."""
        wanted = list(pairs)
        if not wanted:
            return frozenset()
        leads = {lead for lead, _ in wanted}
        intakes = {intake for _, intake in wanted}
        found = self.session.execute(
            select(TimelineEvent.lead_id, TimelineEvent.intake_id)
            .where(TimelineEvent.lead_id.in_(leads), TimelineEvent.intake_id.in_(intakes))
            .distinct()
        ).all()
        asked = set(wanted)
        return frozenset((lead, intake) for lead, intake in found if (lead, intake) in asked)

    def facts(self, account_id: int, snapshot: OrgSnapshot, needs: Needs, intake_ids: Sequence[uuid.UUID]) -> Facts:
        """Lock the people and the cursors, then read what the plan decides over."""
        self.lock_people(account_id, needs.people)
        routing = self.routing(snapshot, needs.routing_entities)
        return self.read_facts(account_id, needs, routing, intake_ids)

    def read_facts(
        self,
        account_id: int,
        needs: Needs,
        routing: Mapping[int, tuple[Sequence[Rule], Rule]],
        intake_ids: Sequence[uuid.UUID],
    ) -> Facts:
        """What :meth:`facts` reads once it holds its locks, with the routing given: the leads of the keys and
        their merge chains, and for the keys deleted leads hold, which of ``intake_ids`` left events there
        (X4). Taken alone (no lock) by an import, which plans chunk by chunk from cursors it settles at its
        end and claims its people's kept activity under a lock of its own (``workers.imports``)."""
        if len(needs.keys) > MANY_KEYS and not needs.named_leads:
            by_key, by_id = self.known_leads_of_keys(account_id, needs.keys)
        else:
            by_key, by_id = self.known_leads(account_id, needs)
        tombstones = [lead for lead in by_key.values() if lead.status in ("deleted", "merged")]
        pairs = [
            (lead_id, intake_id)
            for lead in tombstones
            for lead_id in (lead.id, lead.merged_into_id)
            if lead_id is not None
            for intake_id in intake_ids
        ]
        return Facts(by_key, by_id, routing, self.events_of(pairs) if tombstones else frozenset())

    # --- write -----------------------------------------------------------------------------------

    def write(
        self, account_id: int, plan: SignupPlan, intakes: Mapping[uuid.UUID, Intake], *, finish: bool = True
    ) -> list[tuple[uuid.UUID, ClaimedActivity]]:
        """Write the plan. On PostgreSQL it is one statement (each step a data-modifying CTE); on SQLite one
        statement per step. With ``finish`` each intake ends as the plan says, counted as one more try
        (a text's own path finishes its intake itself). Returns the kept activity the new leads claimed
        (D7), for the caller to put on their timelines (:meth:`add_events`)."""
        now = dt.datetime.now(dt.UTC)
        freed = [lead.replaces for lead in plan.leads if lead.replaces is not None]
        if freed:
            # Before the new lead takes the key: one statement's steps cannot be ordered against the index.
            self.session.execute(update(LEADS).where(LEADS.c.id.in_(freed)).values(unique_key=None))
        rows = _Rows.of(account_id, plan, now)
        if self.postgres:
            return self._write_at_once(rows, plan, finish, now)
        session = self.session
        if rows.leads:
            session.execute(insert(LEADS), rows.leads)
        self.add_events(account_id, rows.events)
        self.touch(plan.touched)
        self._move_cursors(plan)
        if rows.campaigns:
            session.execute(dialect_insert(session, LeadCampaign).on_conflict_do_nothing(), rows.campaigns)
        if rows.mails:
            session.execute(
                dialect_insert(session, Outbox).on_conflict_do_nothing(index_elements=["dedupe_key"]), rows.mails
            )
        if rows.deliveries:
            session.execute(insert(DELIVERIES), rows.deliveries)
        claimed = self._claim_activity(account_id, plan)
        if finish:
            for done in plan.finished:
                intake = intakes[done.intake_id]
                intake.status = IntakeStatus(done.status)
                intake.lead_id = done.lead_id
                intake.reason = done.reason
                intake.processed_at = now
                intake.attempts += 1
        return claimed

    def _write_at_once(
        self, rows: _Rows, plan: SignupPlan, finish: bool, now: dt.datetime
    ) -> list[tuple[uuid.UUID, ClaimedActivity]]:
        """PostgreSQL: every step of the plan as a data-modifying CTE of one statement (one round trip
        whatever the batch's size). Each step's rows are one JSON parameter, so the statement is built and
        compiled once per shape (which steps, which columns) and kept. Foreign keys between the steps (an
        event on a lead inserted by another step) are checked at the end of the statement, when every step
        is done."""
        rules = [{"id": m.rule_id, "cursor": m.cursor} for m in plan.cursors if m.rule_id is not None]
        defaults = [{"id": m.entity_id, "cursor": m.cursor} for m in plan.cursors if m.rule_id is None]
        steps: dict[str, list[dict[str, Any]]] = {
            "leads": [with_scalar_defaults(LEADS, lead) for lead in rows.leads],
            "events": _first_of_each(
                [with_scalar_defaults(EVENTS, {"account_id": rows.account_id, **e}) for e in rows.events],
                ("lead_id", "intake_id", "kind"),
            ),
            "touched": [{"id": lead_id, "at": at} for lead_id, at in plan.touched.items()],
            "rules": rules,
            "defaults": defaults,
            "campaigns": _first_of_each(
                [with_scalar_defaults(CAMPAIGNS, c) for c in rows.campaigns], ("lead_id", "name")
            ),
            "mails": _first_of_each([with_scalar_defaults(OUTBOX, m) for m in rows.mails], ("dedupe_key",)),
            "deliveries": rows.deliveries,
            "finished": (
                [
                    {"id": f.intake_id, "status": f.status, "lead_id": f.lead_id, "reason": f.reason}
                    for f in plan.finished
                ]
                if finish
                else []
            ),
            "claims": [{"email": c.email, "owner_id": c.owner_id, "lead_id": c.lead_id} for c in plan.claims],
        }
        shape = tuple((step, tuple(got[0])) for step, got in steps.items() if got)
        if not shape:
            return []
        params: dict[str, Any] = {f"{step}_rows": rows_json(steps[step], names) for step, names in shape}
        params["now"] = now
        if "claims" in dict(shape):
            params["claims_account"] = rows.account_id
            result = self.session.execute(_plan_statement(shape), params).all()
            return sorted(
                ((row[0], ClaimedActivity(*row[1:])) for row in result),
                key=lambda r: (str(r[0]), r[1].at, str(r[1].id)),
            )
        self.session.execute(_plan_statement(shape), params)
        return []

    def write_texts(
        self,
        account_id: int,
        plans: Sequence[tuple[Intake, TextPlan]],
        rejected: Sequence[tuple[Intake, str]],
    ) -> None:
        """Write what a batch of inbound texts decided (``workers.texts``) and end each intake, counted as one
        more try: ``done`` on its plan's lead, or ``rejected`` with its reason. Every text's message (once
        per gateway sid), timeline events (once per lead, intake and kind) and mail (once per dedupe key),
        what they change on their leads (one row a lead, the texts' changes in arrival order), and the
        intakes' ends: on PostgreSQL one statement, the signups' plan statement (:func:`_plan_statement`),
        whatever the batch's size; on SQLite one statement per step."""
        now = dt.datetime.now(dt.UTC)
        messages = [{"id": uuid.uuid4(), **plan.message} for _, plan in plans]
        events = [{"account_id": account_id, **event_row(e)} for _, plan in plans for e in plan.events]
        texted: dict[uuid.UUID, dict[str, Any]] = {}
        for _, plan in plans:
            change = plan.lead_change
            if change is None:
                continue
            row = texted.setdefault(plan.lead_id, {"id": plan.lead_id, "at": None, "unsubscribed": None})
            if change.activity_at is not None:
                row["at"] = max(row["at"] or change.activity_at, change.activity_at)
            if change.sms_unsubscribed is not None:
                row["unsubscribed"] = change.sms_unsubscribed
        mails = [mail_row(account_id, plan.mail, now) for _, plan in plans if plan.mail is not None]
        finished = [
            {"id": intake.id, "status": IntakeStatus.DONE, "lead_id": plan.lead_id, "reason": None}
            for intake, plan in plans
        ] + [
            {"id": intake.id, "status": IntakeStatus.REJECTED, "lead_id": None, "reason": why}
            for intake, why in rejected
        ]
        if not self.postgres:
            self._write_texts_by_steps(messages, events, list(texted.values()), mails, finished, plans, rejected, now)
            return
        steps: dict[str, list[dict[str, Any]]] = {
            "messages": _first_of_each([with_scalar_defaults(MESSAGES, m) for m in messages], ("provider_sid",)),
            "events": _first_of_each(
                [with_scalar_defaults(EVENTS, e) for e in events], ("lead_id", "intake_id", "kind")
            ),
            "texted": list(texted.values()),
            "mails": _first_of_each([with_scalar_defaults(OUTBOX, m) for m in mails], ("dedupe_key",)),
            "finished": finished,
        }
        shape = tuple((step, tuple(got[0])) for step, got in steps.items() if got)
        params: dict[str, Any] = {f"{step}_rows": rows_json(steps[step], names) for step, names in shape}
        params["now"] = now
        with self.session.no_autoflush:
            self.session.execute(_plan_statement(shape), params)
        # The intake rows now hold these: the session has nothing more to send for them.
        ends = {row["id"]: row for row in finished}
        for intake in [intake for intake, _ in plans] + [intake for intake, _ in rejected]:
            end = ends[intake.id]
            values = {
                "status": end["status"],
                "lead_id": end["lead_id"],
                "reason": end["reason"],
                "processed_at": now,
                "updated_at": now,
                "attempts": intake.attempts + 1,
            }
            for name, value in values.items():
                set_committed_value(intake, name, value)

    def _write_texts_by_steps(
        self,
        messages: list[dict[str, Any]],
        events: list[dict[str, Any]],
        texted: list[dict[str, Any]],
        mails: list[dict[str, Any]],
        finished: list[dict[str, Any]],
        plans: Sequence[tuple[Intake, TextPlan]],
        rejected: Sequence[tuple[Intake, str]],
        now: dt.datetime,
    ) -> None:
        """SQLite (the embedded mode): :meth:`write_texts` one statement per step."""
        session = self.session
        if messages:
            session.execute(
                dialect_insert(session, MESSAGES).on_conflict_do_nothing(index_elements=["provider_sid"]), messages
            )
        if events:
            session.execute(
                dialect_insert(session, TimelineEvent).on_conflict_do_nothing(
                    index_elements=["lead_id", "intake_id", "kind"]
                ),
                events,
            )
        for row in texted:
            lead: dict[str, Any] = {"updated_at": now}
            if row["at"] is not None:
                # A bind of the column's type, not a CAST: SQLite would cast the text to a number.
                at = literal(row["at"], LEADS.c.last_activity_at.type)
                lead["last_activity_at"] = case((LEADS.c.last_activity_at < at, at), else_=LEADS.c.last_activity_at)
            if row["unsubscribed"] is not None:
                lead["sms_unsubscribed"] = row["unsubscribed"]
            session.execute(update(LEADS).where(LEADS.c.id == row["id"]).values(**lead))
        if mails:
            session.execute(
                dialect_insert(session, Outbox).on_conflict_do_nothing(index_elements=["dedupe_key"]), mails
            )
        ends = {row["id"]: row for row in finished}
        for intake in [intake for intake, _ in plans] + [intake for intake, _ in rejected]:
            end = ends[intake.id]
            intake.status = IntakeStatus(end["status"])
            intake.lead_id = end["lead_id"]
            intake.reason = end["reason"]
            intake.processed_at = now
            intake.attempts += 1

    def add_events(self, account_id: int, rows: Sequence[dict[str, Any]]) -> None:
        """Timeline events in one executemany; an (lead, intake, kind) already there is skipped."""
        if rows:
            self.session.execute(
                dialect_insert(self.session, TimelineEvent).on_conflict_do_nothing(
                    index_elements=["lead_id", "intake_id", "kind"]
                ),
                [{"account_id": account_id, "actor": "system", **row} for row in rows],
            )

    def touch(self, lead_ids_at: Mapping[uuid.UUID, dt.datetime]) -> None:
        """Leads' last activity moved to at least the given time."""
        if not lead_ids_at:
            return
        at = bindparam("b_at", type_=Lead.last_activity_at.type)
        self.session.execute(
            update(LEADS)
            .where(LEADS.c.id == bindparam("b_id"))
            .values(last_activity_at=case((LEADS.c.last_activity_at < at, at), else_=LEADS.c.last_activity_at)),
            [{"b_id": lead_id, "b_at": when} for lead_id, when in lead_ids_at.items()],
        )

    def _move_cursors(self, plan: SignupPlan) -> None:
        rules = [{"b_id": m.rule_id, "b_cursor": m.cursor} for m in plan.cursors if m.rule_id is not None]
        defaults = [{"b_id": m.entity_id, "b_cursor": m.cursor} for m in plan.cursors if m.rule_id is None]
        if rules:
            self.session.execute(
                update(RULES).where(RULES.c.id == bindparam("b_id")).values(cursor=bindparam("b_cursor")),
                rules,
            )
        if defaults:
            self.session.execute(
                update(ENTITIES).where(ENTITIES.c.id == bindparam("b_id")).values(default_cursor=bindparam("b_cursor")),
                defaults,
            )

    def _claim_activity(self, account_id: int, plan: SignupPlan) -> list[tuple[uuid.UUID, ClaimedActivity]]:
        """SQLite: D7, kept anonymous activity of the new leads' people joins them, one statement per lead
        (PostgreSQL claims it inside the plan's one statement, :func:`_plan_statement`); the rows claimed,
        oldest first per lead."""
        rows = []
        for claim in plan.claims:
            stmt = (
                update(ACTIVITY)
                .where(
                    ACTIVITY.c.account_id == account_id,
                    ACTIVITY.c.email_normalized == claim.email,
                    ACTIVITY.c.lead_id.is_(None),
                )
                .values(lead_id=claim.lead_id)
                .returning(*(ACTIVITY.c[c.key] for c in CLAIMED_COLUMNS))
            )
            if claim.owner_id is not None:
                stmt = stmt.where(ACTIVITY.c.owner_entity_id == claim.owner_id)
            rows += [(claim.lead_id, ClaimedActivity(*row)) for row in self.session.execute(stmt).all()]
        return sorted(rows, key=lambda r: (str(r[0]), r[1].at, str(r[1].id)))


def _first_of_each(rows: list[dict[str, Any]], key: Sequence[str]) -> list[dict[str, Any]]:
    """The rows, the first of each ``key`` only (one statement's INSERT cannot skip its own duplicates)."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for row in rows:
        k = tuple(row[c] for c in key)
        if k not in seen:
            seen.add(k)
            out.append(row)
    return out


# The plan's steps that insert rows: the table, and the key of a row already there (skipped).
_INSERTED: dict[str, tuple[Table, tuple[str, ...]]] = {
    "leads": (LEADS, ()),
    "events": (EVENTS, ("lead_id", "intake_id", "kind")),
    "campaigns": (CAMPAIGNS, ("lead_id", "name")),
    "mails": (OUTBOX, ("dedupe_key",)),
    "deliveries": (DELIVERIES, ()),
    "messages": (MESSAGES, ("provider_sid",)),
}


@functools.cache
def _plan_statement(shape: tuple[tuple[str, tuple[str, ...]], ...]) -> Any:
    """PostgreSQL: the one statement that writes a plan of this shape (the steps it has, each with its
    columns), its rows bound as ``<step>_rows`` JSON parameters, ``now`` and, with D7 claims,
    ``claims_account``; built once per shape, so SQLAlchemy's compiled cache keeps it. No parameter may
    share a column's name: SQLAlchemy would take it as a value to SET in every UPDATE step."""
    now = sa_cast(bindparam("now", type_=AT), AT)
    ctes: list[Any] = []
    returning: Any = None
    for step, names in shape:
        name = f"{step}_rows"
        if step in _INSERTED:
            table, key = _INSERTED[step]
            source = recordset(name, columns_of(table, names))
            ctes.append(insert_from(table, source, names, key).cte(f"new_{step}"))
        elif step == "touched":
            touched = recordset(name, [column("id", Uuid), column("at", AT)])
            ctes.append(
                update(LEADS)
                .where(LEADS.c.id == touched.c.id)
                .values(
                    last_activity_at=func.greatest(LEADS.c.last_activity_at, touched.c.at),
                    # Set here: a column's onupdate default is not evaluated inside a CTE.
                    updated_at=now,
                )
                .cte("touched_leads")
            )
        elif step == "texted":
            # What texts change on their leads (one row a lead): the last activity moved to at least ``at``,
            # the texts' subscription set when ``unsubscribed`` is not null (S4).
            texted = recordset(name, [column("id", Uuid), column("at", AT), column("unsubscribed", Boolean)])
            ctes.append(
                update(LEADS)
                .where(LEADS.c.id == texted.c.id)
                .values(
                    last_activity_at=func.greatest(LEADS.c.last_activity_at, texted.c.at),
                    sms_unsubscribed=func.coalesce(texted.c.unsubscribed, LEADS.c.sms_unsubscribed),
                    updated_at=now,
                )
                .cte("texted_leads")
            )
        elif step in ("rules", "defaults"):
            moved = recordset(name, [column("id", Integer), column("cursor", BigInteger)])
            if step == "rules":
                stmt = update(RULES).where(RULES.c.id == moved.c.id).values(cursor=moved.c.cursor)
            else:
                stmt = update(ENTITIES).where(ENTITIES.c.id == moved.c.id).values(default_cursor=moved.c.cursor)
            ctes.append(stmt.cte(f"moved_{step}"))
        elif step == "finished":
            done = recordset(
                name,
                [
                    column("id", Uuid),
                    column("status", INTAKES.c.status.type),
                    column("lead_id", Uuid),
                    column("reason", Text),
                ],
            )
            ctes.append(
                update(INTAKES)
                .where(INTAKES.c.id == done.c.id)
                .values(
                    status=done.c.status,
                    lead_id=done.c.lead_id,
                    reason=done.c.reason,
                    processed_at=now,
                    updated_at=now,
                    attempts=INTAKES.c.attempts + 1,
                )
                .cte("finished")
            )
        elif step == "claims":
            # D7: kept activity of the new leads' people, of the owner when duplication is on.
            wanted = recordset(name, [column("email", String), column("owner_id", Integer), column("lead_id", Uuid)])
            returning = (
                update(ACTIVITY)
                .where(
                    ACTIVITY.c.account_id == bindparam("claims_account", type_=Integer),
                    ACTIVITY.c.lead_id.is_(None),
                    ACTIVITY.c.email_normalized == wanted.c.email,
                    or_(wanted.c.owner_id.is_(None), ACTIVITY.c.owner_entity_id == wanted.c.owner_id),
                )
                .values(lead_id=wanted.c.lead_id)
                .returning(ACTIVITY.c.lead_id, *(ACTIVITY.c[c.key] for c in CLAIMED_COLUMNS))
                .cte("claimed")
            )
        else:  # pragma: no cover - the steps are the writer's own
            raise ValueError(step)
    if returning is not None:
        return select(returning).add_cte(*ctes)
    return select(literal_column("1")).add_cte(*ctes)
