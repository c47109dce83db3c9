"""The one signup path, the pure part: a batch of 1..N signups of one account, in the order they came,
planned together as values.

The caller works in three steps, as every writer in this project does (load the facts, plan purely,
write the plan):

1. :func:`decide_owners` gives each signup its owner (O1-O6, O9) from the account's organisation, and
   :func:`needs` says what to lock and read for them: their unique keys, the leads a signup names (D5),
   the routing entities whose cursors move, the people whose kept activity a new lead may claim (D7).
2. The caller locks those (people first, then cursors, each in a fixed order) and reads :class:`Facts`.
3. :func:`plan_signups` decides everything else: per signup, whether it makes a lead, joins one (D3/D4,
   D5, M4 through merges) or is refused (X4), the routing of each new lead with its explanation (A1, A2,
   A7, the team pond), the cursor moves, the timeline, the agents' mail and the activity to claim. The
   caller writes the :class:`SignupPlan` in one transaction.

Signups are decided in order, each seeing what the ones before it made: two signups of one person in a
batch make one lead and one ``signup`` event, and round robin across a batch equals routing the same
signups one by one (:class:`rules.routing.Router`)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rules.entities import EntityRef, Kind
from rules.events import LeadSignup
from rules.ownership import Ownership, Unclaimed, decide_connection_owner, decide_site_owner
from rules.routing import Router, Rule
from rules.uniqueness import unique_key
from rules.webhooks import Delivery

# How far a merge chain is followed before the lead counts as gone (M4; chains are short in practice).
MAX_MERGE_HOPS = 20


@dataclass(frozen=True)
class Contact:
    """An entity as a mail names it: an agent told of its new lead, or the lead's owner."""

    name: str
    email: str | None = None


@dataclass(frozen=True)
class OrgView:
    """What the planner knows of the account's organisation (a worker keeps it between batches)."""

    account_id: int
    duplication: bool
    domains: Mapping[str, EntityRef]  # registered host -> the entity that registered it
    connections: Mapping[int, tuple[str, EntityRef]]  # API connection id -> (its slug, its entity)
    contacts: Mapping[int, Contact]  # entity id -> name and mail address
    public_base_url: str = ""


@dataclass(frozen=True)
class SignupIn:
    """One signup to plan, with what its intake says about it."""

    intake_id: uuid.UUID
    signup: LeadSignup
    at: dt.datetime
    # An intake of an API connection: the connection decides the owner (O4, O5), never the body.
    connection_id: int | None = None
    # An owner the source's own rule already decided (O6: a text from an unknown phone).
    ownership: Ownership | None = None
    # The lead this intake made or joined in an earlier run (a replay: X4).
    lead_before: uuid.UUID | None = None


@dataclass(frozen=True)
class KnownLead:
    """A lead the batch meets: by a unique key, as the lead a signup names (D5), or on a merge chain."""

    id: uuid.UUID
    owner_entity_id: int
    status: str  # active | archived | merged | deleted
    email_normalized: str | None
    merged_into_id: uuid.UUID | None = None
    created_by_intake_id: uuid.UUID | None = None
    deleted_by: str | None = None  # the slug of who deleted it
    deleted_at: dt.datetime | None = None
    assigned_agent_id: int | None = None


@dataclass(frozen=True)
class Needs:
    """What the caller locks and reads before planning."""

    keys: tuple[str, ...]  # unique keys, sorted
    named_leads: tuple[uuid.UUID, ...]  # leads signups chose at the duplicate prompt (D5)
    routing_entities: tuple[int, ...]  # entities whose cursors may move, sorted: lock in this order
    people: tuple[str, ...]  # emails, sorted: lock in this order (against activity deciding there is no lead)


@dataclass(frozen=True)
class Facts:
    by_key: Mapping[str, KnownLead]
    # Every lead a key or a D5 choice names, and every lead on their merge chains.
    by_id: Mapping[uuid.UUID, KnownLead]
    # Each routing entity of :attr:`Needs.routing_entities`: its rules and default rule, cursors as locked.
    routing: Mapping[int, tuple[Sequence[Rule], Rule]]
    # (lead id, intake id) pairs with an event on a deleted lead (or the lead it was merged into), for the
    # keys held by deleted leads: X4 tells a replay from a new signup by them.
    events_of: frozenset[tuple[uuid.UUID, uuid.UUID]] = frozenset()


@dataclass(frozen=True)
class Event:
    lead_id: uuid.UUID
    kind: str
    intake_id: uuid.UUID | None
    at: dt.datetime
    summary: str
    data: dict[str, Any]
    actor: str = "system"


@dataclass(frozen=True)
class Mail:
    dedupe_key: str
    to_address: str
    subject: str
    body: str
    correlation_id: str  # the intake whose lead it tells of


@dataclass(frozen=True)
class Claim:
    """D7: kept anonymous activity of ``email`` (under ``owner_id``; under any owner when None, with
    duplication off) joins ``lead_id``."""

    email: str
    owner_id: int | None
    lead_id: uuid.UUID


@dataclass(frozen=True)
class CursorMove:
    entity_id: int
    rule_id: int | None  # None: the entity's default rule
    cursor: int


@dataclass(frozen=True)
class Finished:
    intake_id: uuid.UUID
    status: str  # done | rejected
    lead_id: uuid.UUID | None
    reason: str | None = None
    created: bool = False


@dataclass
class NewLead:
    id: uuid.UUID
    values: dict[str, Any]  # the lead's columns
    # X4: the deleted lead whose unique key this lead takes (the writer frees it first).
    replaces: uuid.UUID | None = None


@dataclass
class SignupPlan:
    leads: list[NewLead] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    # Existing leads a signup joined: their last activity is at least this.
    touched: dict[uuid.UUID, dt.datetime] = field(default_factory=dict)
    cursors: list[CursorMove] = field(default_factory=list)
    campaigns: list[tuple[uuid.UUID, str]] = field(default_factory=list)
    mails: list[Mail] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    finished: list[Finished] = field(default_factory=list)
    # Outbound webhook deliveries of what the plan decided (``rules.webhooks``), written with it.
    deliveries: list[Delivery] = field(default_factory=list)


def decide_owner(org: OrgView, item: SignupIn) -> Ownership | Unclaimed:
    """O1: the owner from the signup's source: the owner already decided (O6), its connection (O4, O5),
    or its page's host (O2-O4, O9)."""
    if item.ownership is not None:
        return item.ownership
    if item.connection_id is not None:
        slug, entity = org.connections[item.connection_id]
        return decide_connection_owner(entity, slug)
    return decide_site_owner(item.signup.page_url or "", org.domains)


def decide_owners(org: OrgView, items: Sequence[SignupIn]) -> list[Ownership | Unclaimed]:
    return [decide_owner(org, item) for item in items]


def key_of(org: OrgView, ownership: Ownership, signup: LeadSignup) -> str | None:
    """D1 (D3 with duplication off, D9 by phone): the unique key of this signup's lead."""
    return unique_key(
        duplication=org.duplication,
        owner_id=ownership.owner.id,
        email_normalized=signup.email_normalized,
        phone_e164=signup.phone,
    )


def named_lead_id(signup: LeadSignup) -> uuid.UUID | None:
    """D5: the lead a signup chose at the duplicate prompt, if it names one at all."""
    if not signup.existing_lead_id:
        return None
    try:
        return uuid.UUID(signup.existing_lead_id)
    except ValueError:
        return None


def needs(org: OrgView, items: Sequence[SignupIn], owners: Sequence[Ownership | Unclaimed]) -> Needs:
    keys: set[str] = set()
    named: set[uuid.UUID] = set()
    entities: set[int] = set()
    people: set[str] = set()
    for item, ownership in zip(items, owners, strict=True):
        if isinstance(ownership, Unclaimed):
            continue
        key = key_of(org, ownership, item.signup)
        if key is not None:
            keys.add(key)
        chosen = named_lead_id(item.signup)
        if chosen is not None:
            named.add(chosen)
        if ownership.routing_entity is not None:
            entities.add(ownership.routing_entity.id)
        if item.signup.email_normalized:
            people.add(item.signup.email_normalized)
    return Needs(tuple(sorted(keys)), tuple(sorted(named)), tuple(sorted(entities)), tuple(sorted(people)))


def surviving(lead: KnownLead, by_id: Mapping[uuid.UUID, KnownLead]) -> KnownLead | None:
    """The lead that stands for ``lead`` now: itself, or the lead it was merged into, followed through
    chains of merges (M4); None for a deleted lead."""
    for _ in range(MAX_MERGE_HOPS):
        if lead.status == "deleted":
            return None
        if lead.status != "merged" or lead.merged_into_id is None:
            return lead
        nxt = by_id.get(lead.merged_into_id)
        if nxt is None:
            return None
        lead = nxt
    return None


def merge_chain(lead: KnownLead, by_id: Mapping[uuid.UUID, KnownLead]) -> list[KnownLead]:
    """``lead`` and the leads it was merged into, in order (what :func:`surviving` walks)."""
    chain = [lead]
    while lead.status == "merged" and lead.merged_into_id is not None and len(chain) < MAX_MERGE_HOPS:
        nxt = by_id.get(lead.merged_into_id)
        if nxt is None:
            break
        chain.append(nxt)
        lead = nxt
    return chain


def deleted_reason(tombstone: KnownLead, by_id: Mapping[uuid.UUID, KnownLead]) -> str:
    """X4: who deleted the lead that held this person's key, and when."""
    dead = merge_chain(tombstone, by_id)[-1]
    who = dead.deleted_by or "someone"
    when = dead.deleted_at.isoformat() if dead.deleted_at else "earlier"
    return f"X4: lead {dead.id} of this person was deleted by {who} at {when}; a replay does not bring it back"


def made_or_joined(item: SignupIn, tombstone: KnownLead, events_of: frozenset[tuple[uuid.UUID, uuid.UUID]]) -> bool:
    """X4: whether this intake already made or joined the deleted lead that holds its key. Its lead id
    says so on a first replay; a rejection clears it, so a second replay is known by the lead it created
    or the events it left there (moved to the lead the tombstone was merged into, if any)."""
    if item.lead_before is not None or tombstone.created_by_intake_id == item.intake_id:
        return True
    leads = [tombstone.id] + ([tombstone.merged_into_id] if tombstone.merged_into_id else [])
    return any((lead, item.intake_id) in events_of for lead in leads)


def source_detail(signup: LeadSignup) -> str:
    if signup.source_detail:
        return signup.source_detail[:500]
    if not signup.page_url:
        return signup.source_kind
    url = signup.page_url.split("://", 1)[-1]
    return url.split("?", 1)[0][:500]


def assignment_mail(
    *, lead_id: uuid.UUID, values: Mapping[str, Any], agent_id: int, agent: Contact, owner: Contact, base_url: str
) -> tuple[str, str, str] | None:
    """The mail telling an agent a new lead was assigned to it (once per lead and agent: the dedupe
    key), as (dedupe key, subject, body); None when the agent has no address. The subject is logged, so
    it names the lead at most, never its email or phone."""
    if not agent.email:
        return None
    name = " ".join(part for part in (values.get("first_name"), values.get("last_name")) if part)
    detail = values.get("source_detail")
    lines = [
        f"Hello {agent.name},",
        "",
        "A new lead was assigned to you.",
        "",
        f"Name:   {name or '(no name given)'}",
        f"Email:  {values.get('email') or '-'}",
        f"Phone:  {values.get('phone_e164') or '-'}",
        f"Source: {values['source_kind']}" + (f" ({detail})" if detail else ""),
        f"Owner:  {owner.name}",
    ]
    if values.get("lead_type"):
        lines.append(f"Type:   {values['lead_type']}")
    price_min, price_max = values.get("price_min"), values.get("price_max")
    if price_min is not None or price_max is not None:
        lines.append(f"Price:  {price_min or '-'} to {price_max or '-'}")
    lines += ["", f"Lead {lead_id}: {base_url.rstrip('/')}/v1/leads/{lead_id}", ""]
    subject = f"New lead assigned to you: {name}" if name else f"New lead assigned to you ({values['source_kind']})"
    return f"assigned:{lead_id}:{agent_id}", subject, "\n".join(lines)


class _Batch:
    """The state of one planning pass: the plan so far and the leads the batch made, by key."""

    def __init__(self, org: OrgView, facts: Facts, new_id: Callable[[], uuid.UUID]) -> None:
        self.org = org
        self.facts = facts
        self.new_id = new_id
        self.plan = SignupPlan()
        self.made: dict[str, NewLead] = {}  # unique key -> the lead this batch made with it
        self.made_by_id: dict[uuid.UUID, NewLead] = {}
        self.freed: set[str] = set()  # keys taken from deleted leads (X4)
        self.routers = {entity: Router(rules, default) for entity, (rules, default) in facts.routing.items()}

    def run(self, item: SignupIn, ownership: Ownership | Unclaimed) -> None:
        if isinstance(ownership, Unclaimed):
            self.finish(item, "rejected", None, ownership.reason)
            return
        signup = item.signup
        chosen = self.prompt_choice(signup)
        if chosen is not None:
            # D5: the person picked a lead they already have; the signup logs into it.
            self.repeat(item, chosen, "D5", "chose an existing lead at the duplicate prompt")
            return
        key = key_of(self.org, ownership, signup)
        repeat_rule = "D4" if self.org.duplication else "D3"
        if key is not None and key in self.made:
            self.repeat(item, self.made[key].id, repeat_rule, "same unique lead; no new lead")
            return
        tombstone: KnownLead | None = None
        known = self.facts.by_key.get(key) if key is not None and key not in self.freed else None
        if known is not None:
            live = surviving(known, self.facts.by_id)
            if live is not None and (known.created_by_intake_id == item.intake_id or item.lead_before == live.id):
                # This intake already made (or joined) the lead: a second run of it (its first commit landed
                # but the worker never heard so) adds nothing, not even a repeat signup.
                self.finish(item, "done", live.id, "already processed")
                return
            if live is not None:
                # D4/D3; a merged lead's key leads to the lead it was merged into (M4).
                self.repeat(item, live.id, repeat_rule, "same unique lead; no new lead")
                return
            # X4: a deleted lead holds the key. This intake already made or joined a lead once: a replay
            # does not bring it back. A new signup makes a new lead, which says what was deleted.
            if made_or_joined(item, known, self.facts.events_of):
                self.finish(item, "rejected", None, deleted_reason(known, self.facts.by_id))
                return
            tombstone = known
            assert key is not None
            self.freed.add(key)
        self.new_lead(item, ownership, key, tombstone)

    def prompt_choice(self, signup: LeadSignup) -> uuid.UUID | None:
        """D5: the lead named by ``existing_lead_id``, if it is an active lead of this person."""
        chosen = named_lead_id(signup)
        lead = self.facts.by_id.get(chosen) if chosen is not None else None
        if lead is None or lead.status != "active":
            return None
        if not signup.email_normalized or lead.email_normalized != signup.email_normalized:
            return None
        return lead.id

    def repeat(self, item: SignupIn, lead_id: uuid.UUID, rule: str, why: str) -> None:
        signup = item.signup
        made = self.made_by_id.get(lead_id)
        if made is not None:
            made.values["last_activity_at"] = max(made.values["last_activity_at"], item.at)
        else:
            touched = self.plan.touched.get(lead_id)
            self.plan.touched[lead_id] = item.at if touched is None else max(touched, item.at)
        self.plan.events.append(
            Event(
                lead_id,
                "signup",
                item.intake_id,
                item.at,
                f"Registered again on {source_detail(signup)}",
                {"rule": rule, "reason": why, "source_kind": signup.source_kind, "message": signup.message},
            )
        )
        self.finish(item, "done", lead_id)

    def new_lead(self, item: SignupIn, ownership: Ownership, key: str | None, tombstone: KnownLead | None) -> None:
        signup, at, org = item.signup, item.at, self.org
        lead_id = self.new_id()
        values: dict[str, Any] = {
            "account_id": org.account_id,
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
            "source_detail": source_detail(signup),
            "created_by_intake_id": item.intake_id,
            "created_at": at,
            "updated_at": at,
            "last_activity_at": at,
            "assigned_agent_id": None,
            "routed_via_entity_id": None,
            "in_pond": False,
        }
        lead = NewLead(lead_id, values, tombstone.id if tombstone is not None else None)
        self.plan.leads.append(lead)
        self.made_by_id[lead_id] = lead
        if key is not None:
            self.made[key] = lead
        replaced = (
            {"X4": deleted_reason(tombstone, self.facts.by_id), "replaces": str(tombstone.id)} if tombstone else {}
        )
        events = self.plan.events
        events.append(
            Event(
                lead_id,
                "created",
                item.intake_id,
                at,
                f"Registered on {source_detail(signup)} ({signup.source_kind})",
                {"rule": ownership.rule, "owner": ownership.owner.slug, "reason": ownership.reason, **replaced},
            )
        )
        summary, data = self.assign(lead, ownership, signup)
        events.append(Event(lead_id, "routed", item.intake_id, at, summary, data))
        self.mail(item, lead, ownership)
        if signup.email_normalized:
            owner_id = ownership.owner.id if org.duplication else None
            self.plan.claims.append(Claim(signup.email_normalized, owner_id, lead_id))
        self.finish(item, "done", lead_id, created=True)

    def assign(self, lead: NewLead, ownership: Ownership, signup: LeadSignup) -> tuple[str, dict[str, Any]]:
        """A1/A2 (A7: the explanation): the owner agent is the assignee, or its routing entity's rules choose."""
        entity = ownership.routing_entity
        if entity is None:
            assert ownership.assignee is not None, "an owner with no routing entity is an agent"
            lead.values["assigned_agent_id"] = ownership.assignee.id
            return ownership.owner_assigned()
        decision = self.routers[entity.id].route(signup)
        lead.values["routed_via_entity_id"] = entity.id
        if decision.agent is not None:
            lead.values["assigned_agent_id"] = decision.agent.id
        else:
            lead.values["in_pond"] = entity.kind is Kind.TEAM
        if decision.rule is not None and decision.rule.campaign and decision.agent is not None:
            self.plan.campaigns.append((lead.id, decision.rule.campaign))
        summary = decision.summary(entity.slug, in_pond=lead.values["in_pond"])
        return summary, {"routing_entity": entity.slug, **decision.as_data()}

    def mail(self, item: SignupIn, lead: NewLead, ownership: Ownership) -> None:
        agent_id = lead.values["assigned_agent_id"]
        if agent_id is None:
            return
        contacts = self.org.contacts
        agent = contacts.get(agent_id)
        if agent is None:
            return
        owner = contacts.get(ownership.owner.id, Contact(ownership.owner.name))
        made = assignment_mail(
            lead_id=lead.id,
            values=lead.values,
            agent_id=agent_id,
            agent=agent,
            owner=owner,
            base_url=self.org.public_base_url,
        )
        if made is not None:
            dedupe, subject, body = made
            assert agent.email is not None
            self.plan.mails.append(Mail(dedupe, agent.email, subject, body, str(item.intake_id)))

    def finish(
        self, item: SignupIn, status: str, lead_id: uuid.UUID | None, reason: str | None = None, created: bool = False
    ) -> None:
        self.plan.finished.append(Finished(item.intake_id, status, lead_id, reason, created))

    def cursor_moves(self) -> list[CursorMove]:
        return [
            CursorMove(entity, rule.id, cursor)
            for entity, router in sorted(self.routers.items())
            for rule, cursor in router.moves()
        ]


def plan_signups(
    org: OrgView,
    items: Sequence[SignupIn],
    owners: Sequence[Ownership | Unclaimed],
    facts: Facts,
    *,
    new_id: Callable[[], uuid.UUID] = uuid.uuid4,
) -> SignupPlan:
    """The whole batch's plan, deciding the signups in order (see the module's text)."""
    batch = _Batch(org, facts, new_id)
    for item, ownership in zip(items, owners, strict=True):
        batch.run(item, ownership)
    batch.plan.cursors = batch.cursor_moves()
    return batch.plan


def advance_routing(
    routing: Mapping[int, tuple[Sequence[Rule], Rule]], moves: Sequence[CursorMove]
) -> dict[int, tuple[list[Rule], Rule]]:
    """``routing`` (:attr:`Facts.routing`) with a plan's cursor moves made: the routing facts of the next
    batch of a caller that plans one long run of signups in several batches (an import, chunk by chunk),
    so that its round robin carries on as one plan of them all, or the signups routed one by one, would."""
    cursors = {(move.entity_id, move.rule_id): move.cursor for move in moves}
    advanced: dict[int, tuple[list[Rule], Rule]] = {}
    for entity_id, (rules, default) in routing.items():
        moved = [
            replace(rule, cursor=cursors[(entity_id, rule.id)]) if (entity_id, rule.id) in cursors else rule
            for rule in [*rules, default]
        ]
        advanced[entity_id] = (moved[:-1], moved[-1])
    return advanced
