"""Merging two leads (M1-M7): who may, which lead stays, who owns and works it, what moves and what stops."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from rules.entities import Kind
from rules.permissions import Actor, LeadFacts, Refusal, Refused, can_edit, can_view, is_owner, manages


@dataclass(frozen=True)
class MergePlan:
    primary_id: uuid.UUID
    other_id: uuid.UUID
    owner_id: int  # M1: the primary's owner, always
    assignee_id: int | None
    stops: tuple[str, ...]  # M5: the other's active campaigns, stopped with a note each
    rules: tuple[str, ...]  # the rules that decided this plan, for the preview and the note


def plan_merge(actor: Actor, primary: LeadFacts, other: LeadFacts, assignee: int | None = None) -> MergePlan | Refusal:
    """M1: the other party keeps ownership (ownership is only given away, O7); M2: two different
    non-agent owners never merge; M3: where owners differ, the primary is the lead of the party that
    is not merging; M4: the primary keeps its data; M6: an admin merging its entity's leads assigned
    to two agents chooses the assignee."""
    for lead, name in ((primary, "primary_id"), (other, "other_id")):
        if not can_view(actor, lead):
            return Refusal("V1", f"{name}: no such lead", Refused.NOT_FOUND, name)
        if lead.status == "merged":
            return Refusal("M4", f"{name}: this lead was already merged into another", Refused.CONFLICT, name)
    if primary.id == other.id:
        return Refusal("M3", "a lead cannot be merged with itself", Refused.INVALID, "other_id")
    a, b = primary.owner, other.owner
    if a.id != b.id and a.kind is not Kind.AGENT and b.kind is not Kind.AGENT:
        return Refusal(
            "M2",
            f"leads owned by two different entities ({a.kind.value} {a.slug}, {b.kind.value} {b.slug}) cannot be merged",
            Refused.CONFLICT,
        )
    rules: list[str] = []
    if a.id == b.id and not (can_edit(actor, primary) and can_edit(actor, other)):
        return Refusal("SH2", "merging needs edit access to both leads")
    if a.id != b.id:
        # The actor gives its own lead (the other) to the other party's lead, which it need only see.
        owns_primary, owns_other = is_owner(actor, primary), is_owner(actor, other)
        if not (owns_primary or owns_other):
            return Refusal("M1", "ownership is only given away: merge from a lead you own into the other party's")
        if owns_primary and not owns_other:
            return Refusal(
                "M3",
                f"the owners differ: the primary must be the lead owned by the other party ({b.kind.value} {b.slug})",
                Refused.CONFLICT,
                "primary_id",
            )
        rules += ["M1", "M3"]
    two_agents = (
        primary.assignee_id is not None and other.assignee_id is not None and primary.assignee_id != other.assignee_id
    )
    admin_choice = a.id == b.id and a.kind is not Kind.AGENT and manages(actor, primary) and two_agents
    if admin_choice:
        if assignee is None:
            return Refusal(
                "M6", "the leads are assigned to two agents: choose the assignee", Refused.INVALID, "assigned_agent_id"
            )
        if assignee not in (primary.assignee_id, other.assignee_id):
            return Refusal("M6", "the assignee is one of the two leads' agents", Refused.INVALID, "assigned_agent_id")
        rules.append("M6")
        chosen: int | None = assignee
    else:
        if assignee is not None and assignee != primary.assignee_id:
            return Refusal(
                "M6",
                "an assignee is chosen only by an admin merging its entity's leads assigned to two agents",
                Refused.INVALID,
                "assigned_agent_id",
            )
        chosen = primary.assignee_id if primary.assignee_id is not None else other.assignee_id
    rules += ["M4", "M5"]
    return MergePlan(primary.id, other.id, a.id, chosen, tuple(other.campaigns), tuple(rules))


def merged_note(
    *,
    name: str,
    lead_id: uuid.UUID,
    owner: str,
    email: str | None,
    phone: str | None,
    tags: Sequence[str],
    campaigns: Sequence[str],
    source: str,
    contact: dict[str, object],
) -> tuple[str, dict[str, object]]:
    """M5: the merged note (summary, data): the other lead's name, id, owner, email, phone, hashtags,
    active campaigns, contact info and source."""
    data: dict[str, object] = {
        "name": name,
        "id": str(lead_id),
        "owner": owner,
        "email": email,
        "phone": phone,
        "hashtags": list(tags),
        "active_campaigns": list(campaigns),
        "contact": contact,
        "source": source,
    }
    summary = f"Merged {name or 'a lead'} ({lead_id}) owned by {owner} into this lead"
    return summary, data
