"""May this user do this to this lead, and what happens? (V, A3-A6, SH, T, X, D8)

Each ``plan_*`` function takes plain values (who acts, the lead's facts, the target) and returns
either a plan (what to change, with the timeline note it leaves) or a :class:`Refusal` naming the
rule. The API and the bulk jobs only carry plans out; merges are in :mod:`rules.merge`."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from rules.entities import EntityRef, Kind


class Refused(StrEnum):
    """How a refusal reads at the edge: 403, 404, 409 or 422."""

    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    INVALID = "invalid"


@dataclass(frozen=True)
class Refusal:
    rule: str
    reason: str
    kind: Refused = Refused.FORBIDDEN
    field: str | None = None  # the request field at fault, for INVALID

    @property
    def detail(self) -> str:
        return f"{self.rule}: {self.reason}"


@dataclass(frozen=True)
class Actor:
    """A user acting on leads: its account, its agent (if it is one) and the entities it administers."""

    user_id: int
    account_id: int
    slug: str
    agent_id: int | None
    admin_of: frozenset[int]


@dataclass(frozen=True)
class LeadFacts:
    """What the rules need to know about one lead."""

    id: uuid.UUID
    account_id: int
    status: str  # active | archived | merged | deleted
    owner: EntityRef  # an office's ``parent`` is its company
    assignee_id: int | None
    routed_via_id: int | None
    in_pond: bool
    shares: Mapping[int, str] = field(default_factory=dict)  # user id -> "view" | "edit"
    # V1: the teams and companies whose admins see the lead through its owner or assignee agent
    # (connected to them, and not private and hidden from the team).
    seen_by_groups: frozenset[int] = frozenset()
    # T6: the groups the assignee is connected to (its company, office and teams).
    assignee_groups: frozenset[int] = frozenset()
    duplication: bool = True
    campaigns: tuple[str, ...] = ()


@dataclass(frozen=True)
class UserTarget:
    """A user of the actor's account named by a request (share, unshare)."""

    id: int
    slug: str
    name: str
    active: bool
    agent_id: int | None = None


@dataclass(frozen=True)
class AgentTarget:
    """An agent of the actor's account named by a request (assign), with the groups it is connected to."""

    id: int
    slug: str
    name: str
    active: bool
    groups: frozenset[int] = frozenset()


@dataclass(frozen=True)
class EntityTarget:
    """An entity of the actor's account named by a transfer."""

    ref: EntityRef
    active: bool = True


# --- Relations ---------------------------------------------------------------------------------


def is_owner(actor: Actor, lead: LeadFacts) -> bool:
    """O7/O8/T1: the owner side. An agent-owned lead: that agent alone (no admin, A6). An entity-owned
    lead: the admins of that entity, and of the company above an office."""
    owner = lead.owner
    if actor.account_id != lead.account_id:
        return False
    if owner.kind is Kind.AGENT:
        return actor.agent_id == owner.id
    return owner.id in actor.admin_of or (owner.parent is not None and owner.parent.id in actor.admin_of)


def manages(actor: Actor, lead: LeadFacts) -> bool:
    """V2/X1/A3: the owner side, and an office admin for company-owned leads routed through its office."""
    if is_owner(actor, lead):
        return True
    return (
        actor.account_id == lead.account_id
        and lead.owner.kind is Kind.COMPANY
        and lead.routed_via_id is not None
        and lead.routed_via_id in actor.admin_of
    )


def is_assignee(actor: Actor, lead: LeadFacts) -> bool:
    return actor.agent_id is not None and actor.agent_id == lead.assignee_id


def can_view(actor: Actor, lead: LeadFacts) -> bool:
    """V1 (and V4: never across accounts; a deleted lead is seen by nobody). The SQL filter
    ``LeadRepository.visible_to`` says the same, and a test checks that they agree."""
    if actor.account_id != lead.account_id or lead.status == "deleted":
        return False
    return (
        manages(actor, lead)
        or is_assignee(actor, lead)
        or actor.user_id in lead.shares
        or bool(actor.admin_of & lead.seen_by_groups)
    )


def can_edit(actor: Actor, lead: LeadFacts) -> bool:
    """SH2/V2: the owner side (whatever the privacy settings), the assignee, and users shared with edit."""
    if not can_view(actor, lead):
        return False
    return manages(actor, lead) or is_assignee(actor, lead) or lead.shares.get(actor.user_id) == "edit"


NOT_VISIBLE = Refusal("V1", "no such lead", Refused.NOT_FOUND)


def _live(actor: Actor, lead: LeadFacts) -> Refusal | None:
    """A lead the actor cannot see is not found (V1, V4); a merged lead takes no more changes."""
    if not can_view(actor, lead):
        return NOT_VISIBLE
    if lead.status == "merged":
        return Refusal("M4", "this lead was merged into another; work on the primary", Refused.CONFLICT)
    return None


def _edit_refusal(actor: Actor, lead: LeadFacts, what: str) -> Refusal | None:
    if refusal := _live(actor, lead):
        return refusal
    if not can_edit(actor, lead):
        return Refusal("SH2", f"view permission does not allow {what}")
    return None


# --- Plans ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """A decided change: the lead, the timeline note it leaves, and the rule that allowed it."""

    lead_id: uuid.UUID
    rule: str
    note: str


@dataclass(frozen=True)
class EditPlan(Plan):
    changes: Mapping[str, object] = field(default_factory=dict)


def plan_edit(actor: Actor, lead: LeadFacts, changes: Mapping[str, object]) -> EditPlan | Refusal:
    """SH2/V2: change the contact's details (name, phone, tags)."""
    if refusal := _edit_refusal(actor, lead, "editing the contact"):
        return refusal
    rule = "V2" if manages(actor, lead) else "SH2"
    fields = ", ".join(sorted(changes)) or "nothing"
    return EditPlan(lead.id, rule, f"Contact details edited by {actor.slug} ({fields})", changes)


@dataclass(frozen=True)
class SharePlan(Plan):
    user: UserTarget
    permission: str
    previous: str | None = None  # the permission the user had, when the share is changed


def plan_share(actor: Actor, lead: LeadFacts, user: UserTarget | None, permission: str) -> SharePlan | Refusal:
    """SH1: anyone who can see the lead shares it, owner or not, whatever its own permission;
    SH5: only with a user of the same account; SH2: view or edit; SH3: a note (and an email)."""
    if refusal := _live(actor, lead):
        return refusal
    if user is None:
        return Refusal("SH5", "no such user in this account", Refused.INVALID, "user_id")
    if not user.active:
        return Refusal("SH5", f"user {user.slug} is not active", Refused.INVALID, "user_id")
    if user.id == actor.user_id:
        return Refusal("SH1", "a lead cannot be shared with yourself", Refused.INVALID, "user_id")
    if permission not in ("view", "edit"):
        return Refusal("SH2", "permission is view or edit", Refused.INVALID, "permission")
    previous = lead.shares.get(user.id)
    label = "view & edit" if permission == "edit" else "view only"
    note = f"Shared with {user.name} ({label}) by {actor.slug}"
    if previous is not None and previous != permission:
        note = f"Share with {user.name} changed to {label} by {actor.slug}"
    return SharePlan(lead.id, "SH1", note, user, permission, previous)


@dataclass(frozen=True)
class UnsharePlan(Plan):
    user_id: int


def plan_unshare(actor: Actor, lead: LeadFacts, user: UserTarget | None) -> UnsharePlan | Refusal:
    """SH6: anyone shared on the lead (and the owner side) removes others; a note each; access ends at once."""
    if refusal := _live(actor, lead):
        return refusal
    if not (actor.user_id in lead.shares or manages(actor, lead)):
        return Refusal("SH6", "only users shared on this lead, and its owner, remove shares")
    if user is None or user.id not in lead.shares:
        return Refusal("SH6", "that user is not shared on this lead", Refused.NOT_FOUND, "user_id")
    return UnsharePlan(lead.id, "SH6", f"{user.name} removed from the lead by {actor.slug}", user.id)


@dataclass(frozen=True)
class AssignPlan(Plan):
    agent: AgentTarget | None = None  # None: to the team's pond
    previous_assignee_id: int | None = None


def plan_assign(actor: Actor, lead: LeadFacts, agent: AgentTarget | None, *, pond: bool) -> AssignPlan | Refusal:
    """A3: the owner's admins (an agent-owned lead: that agent) reassign, to an agent connected to the
    owner, or (a team-owned lead, by a team admin) to the team's pond; A6: no admin reassigns an
    agent-owned lead; A4: the owner never changes."""
    if refusal := _live(actor, lead):
        return refusal
    owner = lead.owner
    if not manages(actor, lead):
        if owner.kind is Kind.AGENT and actor.admin_of:
            return Refusal("A6", "an admin cannot reassign a lead owned by an agent")
        return Refusal("A3", f"only the admins of {owner.kind.value} {owner.slug} reassign this lead")
    if pond:
        if owner.kind is not Kind.TEAM:
            return Refusal("A3", "only a team-owned lead goes to a pond", Refused.INVALID, "pond")
        return AssignPlan(lead.id, "A3", f"Moved to the {owner.name} pond by {actor.slug}", None, lead.assignee_id)
    if agent is None:
        return Refusal("A3", "no such agent in this account", Refused.INVALID, "agent_id")
    if not agent.active:
        return Refusal("A3", f"agent {agent.slug} is not active", Refused.INVALID, "agent_id")
    if owner.kind is not Kind.AGENT and owner.id not in agent.groups:
        return Refusal(
            "A3", f"agent {agent.slug} is not connected to {owner.kind.value} {owner.slug}", Refused.INVALID, "agent_id"
        )
    return AssignPlan(lead.id, "A3", f"Assigned to {agent.name} by {actor.slug}", agent, lead.assignee_id)


@dataclass(frozen=True)
class TransferPlan(Plan):
    to: EntityRef
    # T6: the new assignee when it is decided here (a transfer to an agent, or an assignee connected
    # to the new owner); None with ``route`` set: the new owner's routing rules choose.
    assignee_id: int | None = None
    route: bool = False


def plan_transfer(actor: Actor, lead: LeadFacts, to: EntityTarget | None) -> TransferPlan | Refusal:
    """T1: only the owner side transfers (agents cannot transfer company-owned leads, admins cannot
    transfer agent-owned ones); T2: the new owner alone can give it back; SH5: inside the account;
    T6: a transfer to an agent assigns it, else the assignee stays if connected to the new owner."""
    if refusal := _live(actor, lead):
        return refusal
    owner = lead.owner
    if not is_owner(actor, lead):
        if owner.kind is Kind.AGENT:
            reason = (
                "an admin cannot transfer a lead owned by an agent"
                if actor.admin_of
                else "only the owner can transfer this lead"
            )
        elif actor.agent_id is not None and not actor.admin_of:
            reason = f"an agent cannot transfer a {owner.kind.value}-owned lead"
        else:
            reason = "only the owner can transfer this lead"
        return Refusal("T1", reason)
    if to is None:
        return Refusal("SH5", "no such entity in this account", Refused.INVALID, "to")
    target = to.ref
    if target.id == owner.id:
        return Refusal("T1", f"{target.kind.value} {target.slug} already owns this lead", Refused.INVALID, "to")
    if not to.active:
        return Refusal("T6", f"{target.kind.value} {target.slug} is not active", Refused.INVALID, "to")
    note = f"Transferred from {owner.kind.value} {owner.name} to {target.kind.value} {target.name} by {actor.slug}"
    if target.kind is Kind.AGENT:
        return TransferPlan(lead.id, "T1", note, target, target.id, route=False)
    if lead.assignee_id is not None and target.id in lead.assignee_groups:
        return TransferPlan(lead.id, "T1", note, target, lead.assignee_id, route=False)
    return TransferPlan(lead.id, "T1", note, target, None, route=True)


@dataclass(frozen=True)
class StatusPlan(Plan):
    status: str  # archived | deleted


def plan_archive(actor: Actor, lead: LeadFacts) -> StatusPlan | Refusal:
    """X2: the owner side and the assignee archive (for an agent, the only way to drop an entity-owned lead)."""
    if refusal := _live(actor, lead):
        return refusal
    if not (manages(actor, lead) or is_assignee(actor, lead)):
        return Refusal("X2", "only the owner side and the assigned agent archive this lead")
    return StatusPlan(lead.id, "X2", f"Archived by {actor.slug}", "archived")


def plan_delete(actor: Actor, lead: LeadFacts) -> StatusPlan | Refusal:
    """X1: the owner deletes (an agent its own leads; the admins their entity's; an office admin the
    company leads routed through its office); X2: an agent only archives entity-owned leads; X3: with
    duplication off no agent deletes; X4: a tombstone stays."""
    if refusal := _live(actor, lead):
        return refusal
    owner = lead.owner
    if owner.kind is Kind.AGENT:
        if actor.agent_id != owner.id:
            return Refusal("X1", "only the owner deletes this lead")
        if not lead.duplication:
            return Refusal("X3", "with duplication disabled no agent deletes leads; archive it")
        return StatusPlan(lead.id, "X1", f"Deleted by {actor.slug}", "deleted")
    if manages(actor, lead):
        return StatusPlan(lead.id, "X1", f"Deleted by {actor.slug}", "deleted")
    if is_assignee(actor, lead) or actor.agent_id is not None:
        return Refusal("X2", f"an agent cannot delete a {owner.kind.value}-owned lead; archive it")
    return Refusal("X1", "only the owner deletes this lead")


@dataclass(frozen=True)
class UnsubscribePlan(Plan):
    channel: str


def plan_unsubscribe(actor: Actor, lead: LeadFacts, channel: str) -> UnsubscribePlan | Refusal:
    """D8: this lead only, on one channel; the duplicates of the person keep theirs."""
    if refusal := _edit_refusal(actor, lead, "unsubscribing the lead"):
        return refusal
    return UnsubscribePlan(lead.id, "D8", f"Unsubscribed from {channel} by {actor.slug}", channel)


@dataclass(frozen=True)
class CampaignPlan(Plan):
    name: str
    start: bool


def plan_campaign(actor: Actor, lead: LeadFacts, name: str, *, start: bool) -> CampaignPlan | Refusal:
    """D6: each unique lead keeps its own campaigns; starting or stopping one is an edit (SH2)."""
    if refusal := _edit_refusal(actor, lead, "changing campaigns"):
        return refusal
    if not start and name not in lead.campaigns:
        return Refusal("D6", f"campaign {name!r} is not active on this lead", Refused.NOT_FOUND, "name")
    verb = "started" if start else "stopped"
    return CampaignPlan(lead.id, "D6", f"Campaign {name} {verb} by {actor.slug}", name, start)


def may_text(actor: Actor, lead: LeadFacts) -> Refusal | None:
    """SH4: a text goes out in the owner's name, from the owner's number, and decides where the lead's
    reply lands (S1: with the agent who texted it last), so texting is an edit: the owner side, the
    assignee and users shared with edit (SH2) text the lead; a view-only share does not."""
    if not can_view(actor, lead):
        return NOT_VISIBLE
    if not can_edit(actor, lead):
        return Refusal("SH4", "view permission does not allow texting the lead in the owner's name (SH2)")
    return None


# --- Team membership (A5, T5) ----------------------------------------------------------------


@dataclass(frozen=True)
class LeavePlan:
    team_id: int
    agent_id: int
    rule: str = "A5"


def plan_leave_team(actor: Actor, team: EntityRef | None, agent: AgentTarget | None) -> LeavePlan | Refusal:
    """A5: an agent leaves a team (by itself, or by a team admin): the team's leads it worked are
    re-routed and the team's shares to it removed; T5: the leads it owns stay with it."""
    if team is None or team.kind is not Kind.TEAM:
        return Refusal("A5", "no such team in this account", Refused.NOT_FOUND, "team_id")
    if agent is None or team.id not in agent.groups:
        return Refusal("A5", "that agent is not connected to this team", Refused.NOT_FOUND, "agent_id")
    if actor.agent_id != agent.id and team.id not in actor.admin_of:
        return Refusal("A5", "only the agent or a team admin removes an agent from a team")
    return LeavePlan(team.id, agent.id)


# --- Export (V3) ---------------------------------------------------------------------------------


def in_export(actor: Actor, lead: LeadFacts) -> bool:
    """V3: an agent's export holds the leads it owns and the company- (or office-) owned leads
    assigned to it, never team-owned ones; an admin's, the leads of the entities it administers (an
    office's too, under a company). Active and archived leads; never another account's (V4).
    ``LeadRepository.export_condition`` says the same in SQL."""
    if actor.account_id != lead.account_id or lead.status not in ("active", "archived"):
        return False
    owner = lead.owner
    if actor.agent_id is not None:
        if owner.id == actor.agent_id:
            return True
        if lead.assignee_id == actor.agent_id and owner.kind in (Kind.COMPANY, Kind.OFFICE):
            return True
    return owner.kind is not Kind.AGENT and is_owner(actor, lead)
