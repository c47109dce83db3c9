"""Working the leads: load the facts, ask the rule, carry out the plan, in the caller's unit
of work. The API calls these for one lead; a bulk job calls them for a chunk of leads at a time, with
set-wise writes, so the same rule decides either way (SH7, T4)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from leadrelay.settings import get_settings
from models.tables import Lead, LeadStatus
from models.uow import UnitOfWork
from rules.entities import EntityRef, Kind
from rules.events import LeadSignup
from rules.merge import MergePlan, merged_note, plan_merge
from rules.permissions import (
    NOT_VISIBLE,
    Actor,
    AgentTarget,
    AssignPlan,
    CampaignPlan,
    EditPlan,
    EntityTarget,
    LeadFacts,
    Plan,
    Refusal,
    Refused,
    SharePlan,
    StatusPlan,
    TransferPlan,
    UnsharePlan,
    UnsubscribePlan,
    UserTarget,
    plan_archive,
    plan_assign,
    plan_campaign,
    plan_delete,
    plan_edit,
    plan_leave_team,
    plan_share,
    plan_transfer,
    plan_unshare,
    plan_unsubscribe,
)
from rules.routing import Decision, route_many
from rules.uniqueness import unique_key
from workers import notifications, webhooks

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Targets:
    """What a request names, looked up once in the actor's account (SH5: nothing of another account)."""

    user: UserTarget | None = None
    agent: AgentTarget | None = None
    entity: EntityTarget | None = None
    permission: str = "view"
    pond: bool = False


@dataclass
class Mailbag:
    """Mail decided while applying plans, as lines (one per lead) by (address, cause); ``counts`` says
    how many leads a line list stands for when a bulk job's digest names only the first ones."""

    items: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    names: dict[str, str] = field(default_factory=dict)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, to: tuple[str, str] | None, cause: str, line: str) -> None:
        if to is None:
            return
        name, address = to
        self.names[address] = name
        self.items[(address, cause)].append(line)


def resolve_targets(uow: UnitOfWork, actor: Actor, params: Mapping[str, Any]) -> Targets:
    """The user, agent or entity a request names, by id within the actor's account."""
    orgs = uow.orgs
    user = orgs.user_target(actor.account_id, params["user_id"]) if params.get("user_id") else None
    agent = orgs.agent_target(actor.account_id, params["agent_id"]) if params.get("agent_id") else None
    entity = orgs.entity_target(actor.account_id, params["to"]) if params.get("to") else None
    return Targets(user, agent, entity, params.get("permission") or "view", bool(params.get("pond")))


def decide(action: str, actor: Actor, lead: LeadFacts, targets: Targets) -> Plan | Refusal:
    """The rule for one bulk-able action on one lead."""
    if action == "share":
        return plan_share(actor, lead, targets.user, targets.permission)
    if action == "transfer":
        return plan_transfer(actor, lead, targets.entity)
    if action == "assign":
        return plan_assign(actor, lead, targets.agent, pond=targets.pond)
    if action == "archive":
        return plan_archive(actor, lead)
    raise ValueError(f"unknown action {action!r}")


def apply_action(
    uow: UnitOfWork,
    actor: Actor,
    action: str,
    lead_ids: Sequence[uuid.UUID],
    targets: Targets,
    mail: Mailbag,
) -> dict[uuid.UUID, Refusal]:
    """Decide ``action`` for each lead with the same rule, carry out every plan set-wise, and return
    the refusals by lead. Leads are locked until the caller commits. Does not commit."""
    facts = uow.leads.facts(lead_ids, lock=True)
    refusals: dict[uuid.UUID, Refusal] = {}
    plans: list[Plan] = []
    for lead_id in dict.fromkeys(lead_ids):
        lead = facts.get(lead_id)
        decided = NOT_VISIBLE if lead is None else decide(action, actor, lead, targets)
        if isinstance(decided, Refusal):
            refusals[lead_id] = decided
        else:
            plans.append(decided)
    refusals.update(carry_out(uow, actor, plans, facts, mail))
    return refusals


def carry_out(
    uow: UnitOfWork, actor: Actor, plans: Sequence[Plan], facts: Mapping[uuid.UUID, LeadFacts], mail: Mailbag
) -> dict[uuid.UUID, Refusal]:
    """Write what the plans decided, set-wise by kind; the refusals found only now (a unique-key clash)."""
    refusals: dict[uuid.UUID, Refusal] = {}
    by_kind: dict[type[Plan], list[Plan]] = defaultdict(list)
    for plan in plans:
        by_kind[type(plan)].append(plan)
    now = dt.datetime.now(dt.UTC)
    events: list[dict[str, Any]] = []
    writer = _Writer(uow, actor, facts, mail, now, events)
    for kind, group in by_kind.items():
        refusals.update(writer.apply(kind, group))
    uow.leads.add_events(events)
    webhooks.record_timeline(uow, actor.account_id, events)
    return refusals


class _Writer:
    def __init__(
        self,
        uow: UnitOfWork,
        actor: Actor,
        facts: Mapping[uuid.UUID, LeadFacts],
        mail: Mailbag,
        now: dt.datetime,
        events: list[dict[str, Any]],
    ) -> None:
        self.uow, self.actor, self.facts, self.mail, self.now, self.events = uow, actor, facts, mail, now, events
        # Who hears about an entity's or a user's leads, asked once per writer, not once per lead.
        self._addresses: dict[int, list[tuple[str, str]]] = {}
        self._user_addresses: dict[int, tuple[str, str] | None] = {}

    def mail_addresses(self, entity_id: int) -> list[tuple[str, str]]:
        if entity_id not in self._addresses:
            self._addresses[entity_id] = self.uow.orgs.mail_addresses(entity_id)
        return self._addresses[entity_id]

    def user_mail_address(self, user_id: int) -> tuple[str, str] | None:
        if user_id not in self._user_addresses:
            self._user_addresses[user_id] = self.uow.orgs.user_mail_address(user_id)
        return self._user_addresses[user_id]

    def lead_lines(self, lead_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
        """The leads as a mail names them, in one query."""
        names = self.uow.leads.names_of(lead_ids)
        return {lead_id: _lead_line(lead_id, first, last) for lead_id, (first, last) in names.items()}

    def event(self, lead_id: uuid.UUID, kind: str, summary: str, data: dict[str, Any]) -> None:
        self.events.append(
            {
                "account_id": self.actor.account_id,
                "lead_id": lead_id,
                "kind": kind,
                "actor": self.actor.slug,
                "at": self.now,
                "summary": summary,
                "data": data,
            }
        )

    def apply(self, kind: type[Plan], plans: list[Plan]) -> dict[uuid.UUID, Refusal]:
        handler = {
            SharePlan: self.share,
            UnsharePlan: self.unshare,
            AssignPlan: self.assign,
            TransferPlan: self.transfer,
            StatusPlan: self.status,
            EditPlan: self.edit,
            UnsubscribePlan: self.unsubscribe,
            CampaignPlan: self.campaign,
        }[kind]
        return handler(plans) or {}

    def share(self, plans: list[Any]) -> None:
        """SH1-SH3: the share (a changed permission replaces the old), a note, a mail to the user."""
        new: list[SharePlan] = [p for p in plans if p.previous != p.permission]
        if not new:
            return
        rows = [
            {
                "lead_id": p.lead_id,
                "user_id": p.user.id,
                "permission": p.permission,
                "shared_by_user_id": self.actor.user_id,
                "created_at": self.now,
            }
            for p in new
        ]
        self.uow.leads.put_shares(rows)
        lines = self.lead_lines([p.lead_id for p in new])
        for p in new:
            data = {"rule": "SH3", "user": p.user.slug, "permission": p.permission, "previous": p.previous}
            self.event(p.lead_id, "shared", p.note, data)
            self.mail.add(
                self.user_mail_address(p.user.id),
                f"shared:{p.user.id}",
                f"{lines[p.lead_id]} ({'view & edit' if p.permission == 'edit' else 'view only'}, "
                f"shared by {self.actor.slug})",
            )

    def unshare(self, plans: list[Any]) -> None:
        """SH6: the share goes at once (the next read no longer finds the lead), with a note."""
        for p in plans:
            self.uow.leads.remove_share(p.lead_id, p.user_id)
            self.event(p.lead_id, "unshared", p.note, {"rule": "SH6", "user_id": p.user_id})

    def assign(self, plans: list[Any]) -> None:
        """A3/A4: the assignee (or the team's pond) changes; the owner never does."""
        groups: dict[int | None, list[AssignPlan]] = defaultdict(list)
        for p in plans:
            lead = self.facts[p.lead_id]
            target = p.agent.id if p.agent else None
            if target == lead.assignee_id and lead.in_pond == (target is None):
                continue  # already so: nothing to note
            groups[target].append(p)
        lines = self.lead_lines([p.lead_id for group in groups.values() for p in group]) if groups else {}
        for target, group in groups.items():
            ids = [p.lead_id for p in group]
            self.uow.leads.assign(ids, target, at=self.now)
            for p in group:
                data = {"rule": "A3", "agent": p.agent.slug if p.agent else None, "owner_unchanged": "A4"}
                self.event(p.lead_id, "assigned" if p.agent else "pond", p.note, data)
                for to in self.mail_addresses(p.agent.id) if p.agent else []:
                    line = f"{lines[p.lead_id]} (assigned by {self.actor.slug})"
                    self.mail.add(to, f"assigned:{to[1]}", line)

    def transfer(self, plans: list[Any]) -> dict[uuid.UUID, Refusal]:
        """T1-T3, T6: the new owner (and unique key), the assignee kept, given or routed; a note, a mail."""
        refusals: dict[uuid.UUID, Refusal] = {}
        leads = {lead.id: lead for lead in self.uow.leads.by_ids([p.lead_id for p in plans])}
        wanted: dict[str, uuid.UUID] = {}
        keys: dict[uuid.UUID, str | None] = {}
        for p in plans:
            lead = leads[p.lead_id]
            key = unique_key(
                duplication=self.facts[lead.id].duplication,
                owner_id=p.to.id,
                email_normalized=lead.email_normalized,
                phone_e164=lead.phone_e164,
            )
            if key is not None and key in wanted:
                refusals[lead.id] = _clash(p.to)
                continue
            keys[lead.id] = key
            if key is not None:
                wanted[key] = lead.id
        if wanted:
            taken = self.uow.leads.key_holders(self.actor.account_id, list(wanted))
            # X4: a deleted lead's tombstone lets its key go, as it does for a new signup: no lead to clash with.
            tombstones = [lead_id for lead_id, _, status in taken if status is LeadStatus.DELETED]
            if tombstones:
                self.uow.leads.release_unique_keys(tombstones)
            for holder, key, status in taken:
                if status is LeadStatus.DELETED:
                    continue
                assert key is not None
                if holder == wanted[key]:
                    continue  # D3: with duplication off the key names no owner, and the lead keeps its own
                assert key is not None
                refusals[wanted[key]] = _clash(next(p.to for p in plans if p.lead_id == wanted[key]))
        to_route: dict[int, list[tuple[TransferPlan, Lead]]] = defaultdict(list)
        for p in plans:
            if p.lead_id in refusals:
                continue
            lead = leads[p.lead_id]
            previous = self.facts[lead.id].owner
            lead.owner_entity_id = p.to.id
            lead.unique_key = keys[lead.id]
            lead.in_pond = False
            lead.updated_at = self.now
            if p.route:
                to_route[p.to.id].append((p, lead))
            else:
                lead.assigned_agent_id = p.assignee_id
                # The old owner's routing no longer speaks for the lead (V1: an office admin saw it through it).
                lead.routed_via_entity_id = None
            # T6: kept only when the assignee stays the same (a transfer to an agent assigns it).
            kept = not p.route and p.assignee_id == self.facts[lead.id].assignee_id
            data = {"rule": "T3", "from": previous.slug, "to": p.to.slug, "assignee_kept": kept}
            self.event(lead.id, "transferred", p.note, data)
            line = _lead_line(lead.id, lead.first_name, lead.last_name)
            for to in self.mail_addresses(p.to.id):
                self.mail.add(to, f"transferred:{p.to.id}", f"{line} (from {previous.name})")
        # The unique keys move first: two leads trading owners must not meet half-way.
        self.uow.flush()
        for group in to_route.values():
            target = group[0][0].to
            decisions = reroute(self.uow, target, [lead for _, lead in group])
            for (_, lead), decision in zip(group, decisions, strict=True):
                self.event(
                    lead.id,
                    "routed",
                    decision.summary(target.slug, in_pond=lead.in_pond),
                    {"cause": "T6", "routing_entity": target.slug, **decision.as_data()},
                )
        return refusals

    def status(self, plans: list[Any]) -> None:
        """X2 (archive) and X1/X4 (delete: a tombstone with who and when; what was merged into it goes too)."""
        for status in ("archived", "deleted"):
            group = [p for p in plans if p.status == status and self.facts[p.lead_id].status != status]
            if not group:
                continue
            ids = [p.lead_id for p in group]
            if status == "deleted":
                self.uow.leads.mark_deleted(ids, at=self.now, by_user_id=self.actor.user_id)
            else:
                self.uow.leads.mark_archived(ids, at=self.now)
            for p in group:
                self.event(p.lead_id, status, p.note, {"rule": p.rule})

    def edit(self, plans: list[Any]) -> dict[uuid.UUID, Refusal]:
        """SH2/V2: the contact's details; a lead known by its phone (D9) gets its new key, unless taken."""
        refusals: dict[uuid.UUID, Refusal] = {}
        for p in plans:
            lead = self.uow.leads.get(p.lead_id)
            assert lead is not None
            changes = dict(p.changes)
            if "phone" in changes:
                changes["phone_e164"] = changes.pop("phone")
                if not lead.email_normalized:
                    if changes["phone_e164"] is None:
                        refusals[lead.id] = Refusal(
                            "D9", "a lead with no email keeps a phone", Refused.INVALID, "phone"
                        )
                        continue
                    key = unique_key(
                        duplication=self.facts[lead.id].duplication,
                        owner_id=lead.owner_entity_id,
                        email_normalized=None,
                        phone_e164=changes["phone_e164"],
                    )
                    if key != lead.unique_key and self.uow.leads.by_unique_key(lead.account_id, key or "") is not None:
                        refusals[lead.id] = Refusal(
                            "D9", "the owner already has a lead with this phone", Refused.CONFLICT, "phone"
                        )
                        continue
                    changes["unique_key"] = key
            for column, value in changes.items():
                setattr(lead, column, value)
            lead.updated_at = self.now
            shown = sorted(k for k in p.changes)
            self.event(lead.id, "edited", p.note, {"rule": p.rule, "fields": shown})
        return refusals

    def unsubscribe(self, plans: list[Any]) -> None:
        """D8: this lead only."""
        for p in plans:
            self.uow.leads.unsubscribe(p.lead_id, p.channel, at=self.now)
            self.event(p.lead_id, "unsubscribed", p.note, {"rule": "D8", "channel": p.channel})

    def campaign(self, plans: list[Any]) -> None:
        """D6: start or stop one of the lead's own campaigns, with a note."""
        for p in plans:
            if p.start:
                if p.name in self.facts[p.lead_id].campaigns:
                    continue
                self.uow.leads.start_campaign(p.lead_id, p.name)
            else:
                self.uow.leads.stop_campaign(p.lead_id, p.name)
            kind = "campaign_started" if p.start else "campaign_stopped"
            self.event(p.lead_id, kind, p.note, {"rule": "D6", "campaign": p.name})


def _clash(to: EntityRef) -> Refusal:
    return Refusal(
        "D1",
        f"{to.kind.value} {to.slug} already has a lead for this person; merge the two instead",
        Refused.CONFLICT,
        "to",
    )


def _lead_line(lead_id: uuid.UUID, first_name: str | None, last_name: str | None) -> str:
    """A lead as a mail names it: its name (never its email or phone) and its link."""
    name = " ".join(part for part in (first_name, last_name) if part) or "(no name given)"
    return f"{name}: {get_settings().public_base_url.rstrip('/')}/v1/leads/{lead_id}"


def reroute(uow: UnitOfWork, entity: EntityRef, leads: Sequence[Lead]) -> list[Decision]:
    """A2 for leads that already exist (T6, A5): the entity's rules in order, the cursors moved in the
    caller's transaction; no eligible agent leaves the lead unassigned (in the pond for a team)."""
    rules, default = uow.orgs.routing_rules(entity, lock=True)
    before = [*rules, default]
    signups = [
        LeadSignup(
            source_kind=lead.source_kind,
            lead_type=lead.lead_type,
            price_min=lead.price_min,
            price_max=lead.price_max,
            zip=lead.zip,
        )
        for lead in leads
    ]
    decisions, rules, default = route_many(rules, default, signups)
    uow.orgs.move_cursors(entity.id, before, [*rules, default])
    for lead, decision in zip(leads, decisions, strict=True):
        lead.routed_via_entity_id = entity.id
        lead.assigned_agent_id = decision.agent.id if decision.agent else None
        lead.in_pond = decision.agent is None and entity.kind is Kind.TEAM
        if decision.agent is not None and decision.rule is not None and decision.rule.campaign:
            uow.leads.start_campaign(lead.id, decision.rule.campaign)
    return decisions


def send_mail(uow: UnitOfWork, account_id: int, mail: Mailbag, *, job_id: uuid.UUID | None = None) -> None:
    """Queue the decided mail through the outbox: one per (person, cause), listing its leads."""
    subjects = {
        "shared": ("A lead was shared with you", "{n} leads were shared with you"),
        "transferred": ("A lead was transferred to you", "{n} leads were transferred to you"),
        "assigned": ("A lead was assigned to you", "{n} leads were assigned to you"),
    }
    for (address, cause), lines in mail.items.items():
        one, many = subjects[cause.split(":", 1)[0]]
        count = mail.counts.get((address, cause), len(lines))
        subject = one if count == 1 else many.format(n=count)
        more = [f"... and {count - len(lines)} more"] if count > len(lines) else []
        body = "\n".join([f"Hello {mail.names[address]},", "", subject + ":", "", *lines, *more, ""])
        dedupe = f"job:{job_id}:{cause}:{address}" if job_id else f"{cause}:{uuid.uuid4()}"
        notifications.queue_mail(
            uow, account_id=account_id, dedupe_key=dedupe, to_address=address, subject=subject, body=body
        )


# --- One lead at a time (the API) ----------------------------------------------------------------


def act(uow: UnitOfWork, actor: Actor, action: str, lead_id: uuid.UUID, params: Mapping[str, Any]) -> Refusal | None:
    """One bulk-able action on one lead, with its mail; commits when it is carried out."""
    mail = Mailbag()
    refusals = apply_action(uow, actor, action, [lead_id], resolve_targets(uow, actor, params), mail)
    if lead_id in refusals:
        return refusals[lead_id]
    send_mail(uow, actor.account_id, mail)
    uow.commit()
    return None


def act_on(uow: UnitOfWork, actor: Actor, lead_id: uuid.UUID, decide_one: Any) -> Refusal | None:
    """Decide with ``decide_one(facts)`` (delete, unshare, edit, unsubscribe, campaigns) and carry it out; commits."""
    facts = uow.leads.facts([lead_id], lock=True)
    lead = facts.get(lead_id)
    decided = NOT_VISIBLE if lead is None else decide_one(lead)
    if isinstance(decided, Refusal):
        return decided
    mail = Mailbag()
    refusals = carry_out(uow, actor, [decided], facts, mail)
    if lead_id in refusals:
        return refusals[lead_id]
    send_mail(uow, actor.account_id, mail)
    uow.commit()
    return None


def delete_lead(uow: UnitOfWork, actor: Actor, lead_id: uuid.UUID) -> Refusal | None:
    return act_on(uow, actor, lead_id, lambda lead: plan_delete(actor, lead))


def archive_lead(uow: UnitOfWork, actor: Actor, lead_id: uuid.UUID) -> Refusal | None:
    return act_on(uow, actor, lead_id, lambda lead: plan_archive(actor, lead))


def unshare_lead(uow: UnitOfWork, actor: Actor, lead_id: uuid.UUID, user_slug: str) -> Refusal | None:
    user = uow.orgs.user_target(actor.account_id, user_slug)
    return act_on(uow, actor, lead_id, lambda lead: plan_unshare(actor, lead, user))


def edit_lead(uow: UnitOfWork, actor: Actor, lead_id: uuid.UUID, changes: Mapping[str, object]) -> Refusal | None:
    return act_on(uow, actor, lead_id, lambda lead: plan_edit(actor, lead, changes))


def unsubscribe_lead(uow: UnitOfWork, actor: Actor, lead_id: uuid.UUID, channel: str) -> Refusal | None:
    return act_on(uow, actor, lead_id, lambda lead: plan_unsubscribe(actor, lead, channel))


def campaign(uow: UnitOfWork, actor: Actor, lead_id: uuid.UUID, name: str, *, start: bool) -> Refusal | None:
    return act_on(uow, actor, lead_id, lambda lead: plan_campaign(actor, lead, name, start=start))


# --- Merge (M1-M7) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeOutcome:
    plan: MergePlan
    moves: dict[str, int]
    note: str
    note_data: dict[str, Any]


def merge(
    uow: UnitOfWork,
    actor: Actor,
    primary_id: uuid.UUID,
    other_id: uuid.UUID,
    assignee_slug: str | None,
    *,
    preview: bool,
) -> MergeOutcome | Refusal:
    """M7: with ``preview`` decide and describe, writing nothing; else carry the merge out and commit."""
    facts = uow.leads.facts([primary_id, other_id], lock=not preview)
    assignee: int | None = None
    if assignee_slug:
        agent = uow.orgs.agent_target(actor.account_id, assignee_slug)
        if agent is None:
            return Refusal("M6", "no such agent in this account", Refused.INVALID, "assigned_agent_id")
        assignee = agent.id
    primary, other = facts.get(primary_id), facts.get(other_id)
    if primary is None:
        return Refusal("V1", "primary_id: no such lead", Refused.NOT_FOUND, "primary_id")
    if other is None:
        return Refusal("V1", "other_id: no such lead", Refused.NOT_FOUND, "other_id")
    decided = plan_merge(actor, primary, other, assignee)
    if isinstance(decided, Refusal):
        return decided
    other_row = uow.leads.get(other_id)
    assert other_row is not None
    moves = uow.leads.history_counts(other_id)
    owner = uow.orgs.entity(other_row.owner_entity_id)
    note, data = merged_note(
        name=" ".join(p for p in (other_row.first_name, other_row.last_name) if p),
        lead_id=other_id,
        owner=f"{owner.kind.value} {owner.name}",
        email=other_row.email,
        phone=other_row.phone_e164,
        tags=other_row.tags,
        campaigns=other.campaigns,
        source=other_row.source_kind + (f" ({other_row.source_detail})" if other_row.source_detail else ""),
        contact={
            "lead_type": other_row.lead_type,
            "price_min": other_row.price_min,
            "price_max": other_row.price_max,
            "zip": other_row.zip,
        },
    )
    outcome = MergeOutcome(decided, moves, note, data)
    if not preview:
        _carry_out_merge(uow, actor, decided, outcome)
        uow.commit()
    return outcome


def _carry_out_merge(uow: UnitOfWork, actor: Actor, plan: MergePlan, outcome: MergeOutcome) -> None:
    """M4/M5: the primary keeps its data (blanks filled from the other) and gains the other's timeline,
    texts and activity; the other's campaigns stop with a note each; the other becomes ``merged``.
    Its unique key stays on it, so the next signup with that key follows ``merged_into`` to the primary."""
    now = dt.datetime.now(dt.UTC)
    primary, other = uow.leads.get(plan.primary_id), uow.leads.get(plan.other_id)
    assert primary is not None
    assert other is not None
    uow.leads.move_history(other.id, primary.id)
    uow.leads.stop_campaigns(other.id)
    # Leads merged into the other now point straight at the primary: a merged lead points at a live one.
    uow.leads.repoint_merged(other.id, primary.id)
    for column in ("first_name", "last_name", "phone_e164"):
        if getattr(primary, column) is None and getattr(other, column) is not None:
            setattr(primary, column, getattr(other, column))
    primary.assigned_agent_id = plan.assignee_id
    if plan.assignee_id is not None:
        primary.in_pond = False
    primary.last_activity_at = max(primary.last_activity_at, other.last_activity_at)
    primary.updated_at = now
    other.status = LeadStatus.MERGED
    other.merged_into_id = primary.id
    other.updated_at = now
    events = [
        {
            "account_id": actor.account_id,
            "lead_id": primary.id,
            "kind": "merged",
            "actor": actor.slug,
            "at": now,
            "summary": outcome.note,
            "data": {"rule": "M5", "rules": list(plan.rules), **outcome.note_data, "moved": outcome.moves},
        },
        *(
            {
                "account_id": actor.account_id,
                "lead_id": primary.id,
                "kind": "campaign_stopped",
                "actor": actor.slug,
                "at": now,
                "summary": f"Campaign {name} of the merged lead {other.id} stopped",
                "data": {"rule": "M5", "campaign": name, "lead_id": str(other.id)},
            }
            for name in plan.stops
        ),
        {
            "account_id": actor.account_id,
            "lead_id": other.id,
            "kind": "merged_into",
            "actor": actor.slug,
            "at": now,
            "summary": f"Merged into lead {primary.id} by {actor.slug}; its timeline moved there",
            "data": {"rule": "M4", "primary_id": str(primary.id)},
        },
    ]
    uow.leads.add_events(events)
    webhooks.record_timeline(uow, actor.account_id, events)
    log.info("lead.merged", primary_id=str(primary.id), other_id=str(other.id), actor=actor.slug)


# --- Team membership (A5, T5) ------------------------------------------------------------------


@dataclass(frozen=True)
class LeaveOutcome:
    rerouted: int
    unshared: int
    kept: int


def leave_team(uow: UnitOfWork, actor: Actor, team_slug: str, agent_slug: str) -> LeaveOutcome | Refusal:
    """A5: the agent is disconnected from the team; the team-owned leads it was assigned are re-routed
    by the team's rules (never back to it), the team-owned leads shared with it are unshared, each with
    a note; T5: the leads it owns (a team's transfer included) stay with it. Commits."""
    team = uow.orgs.entity_target(actor.account_id, team_slug)
    agent = uow.orgs.agent_target(actor.account_id, agent_slug)
    decided = plan_leave_team(actor, team.ref if team else None, agent)
    if isinstance(decided, Refusal):
        return decided
    assert team is not None
    assert agent is not None
    uow.orgs.disconnect(agent.id, team.ref.id)
    uow.orgs.bump_org_version(actor.account_id)
    uow.flush()
    leads = uow.leads.lock_live_assigned(team.ref.id, agent.id)
    now = dt.datetime.now(dt.UTC)
    events: list[dict[str, Any]] = []
    if leads:
        decisions = reroute(uow, team.ref, leads)
        for lead, decision in zip(leads, decisions, strict=True):
            events.append(
                {
                    "account_id": actor.account_id,
                    "lead_id": lead.id,
                    "kind": "routed",
                    "actor": actor.slug,
                    "at": now,
                    "summary": f"{agent.name} left {team.ref.name}: "
                    + decision.summary(team.ref.slug, in_pond=lead.in_pond),
                    "data": {"cause": "A5", "routing_entity": team.ref.slug, **decision.as_data()},
                }
            )
    unshared: list[uuid.UUID] = []
    if agent_user := uow.orgs.user_id_of_agent(agent.id):
        unshared = uow.leads.unshare_owned_by(team.ref.id, agent_user)
        events += [
            {
                "account_id": actor.account_id,
                "lead_id": lead_id,
                "kind": "unshared",
                "actor": actor.slug,
                "at": now,
                "summary": f"{agent.name} left {team.ref.name}: removed from the lead",
                "data": {"rule": "A5", "user": agent.slug},
            }
            for lead_id in unshared
        ]
    uow.leads.add_events(events)
    webhooks.record_timeline(uow, actor.account_id, events)
    kept = uow.leads.count_owned(agent.id)
    uow.commit()
    log.info("team.left", team=team.ref.slug, agent=agent.slug, rerouted=len(leads), unshared=len(unshared))
    return LeaveOutcome(len(leads), len(unshared), kept)
