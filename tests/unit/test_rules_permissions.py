"""The rules of working the leads, as functions of plain values (no database)."""

from __future__ import annotations

import uuid

import pytest

from rules.entities import EntityRef, Kind
from rules.merge import MergePlan, merged_note, plan_merge
from rules.permissions import (
    Actor,
    AgentTarget,
    AssignPlan,
    EntityTarget,
    LeadFacts,
    Refusal,
    Refused,
    SharePlan,
    StatusPlan,
    TransferPlan,
    UserTarget,
    can_edit,
    can_view,
    in_export,
    may_text,
    plan_archive,
    plan_assign,
    plan_delete,
    plan_leave_team,
    plan_share,
    plan_transfer,
    plan_unshare,
)

ACCOUNT = 1
CO = EntityRef(10, "co", Kind.COMPANY, "Demo Realty")
OFFICE = EntityRef(11, "downtown", Kind.OFFICE, "Downtown", parent=CO)
TEAM = EntityRef(12, "sunrise", Kind.TEAM, "Sunrise")
OTHER_TEAM = EntityRef(13, "harbor", Kind.TEAM, "Harbor")
JOHN = EntityRef(20, "john", Kind.AGENT, "John")
JILL = EntityRef(21, "jill", Kind.AGENT, "Jill")

john = Actor(120, ACCOUNT, "john", JOHN.id, frozenset())
jill = Actor(121, ACCOUNT, "jill", JILL.id, frozenset())
olivia = Actor(130, ACCOUNT, "olivia", None, frozenset({CO.id}))
oscar = Actor(131, ACCOUNT, "oscar", None, frozenset({OFFICE.id}))
tara = Actor(132, ACCOUNT, "tara", 22, frozenset({TEAM.id}))
uma = Actor(133, ACCOUNT, "uma", None, frozenset())
stranger = Actor(900, 2, "olivia", None, frozenset({99}))


def lead(owner: EntityRef, assignee: int | None, **kw: object) -> LeadFacts:
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "account_id": ACCOUNT,
        "status": "active",
        "owner": owner,
        "assignee_id": assignee,
        "routed_via_id": None,
        "in_pond": False,
    }
    values.update(kw)
    return LeadFacts(**values)  # type: ignore[arg-type]


def refused(outcome: object, rule: str, kind: Refused = Refused.FORBIDDEN) -> None:
    assert isinstance(outcome, Refusal), outcome
    assert (outcome.rule, outcome.kind) == (rule, kind), outcome


def test_V1_owner_assignee_and_shared_users_see_a_lead_and_nobody_else() -> None:
    company_lead = lead(CO, JILL.id, routed_via_id=OFFICE.id, shares={uma.user_id: "view"})
    assert can_view(olivia, company_lead)
    assert can_view(jill, company_lead)
    assert can_view(uma, company_lead)
    assert can_view(oscar, company_lead)  # routed through the office
    assert not can_view(john, company_lead)
    assert not can_view(oscar, lead(CO, JILL.id, routed_via_id=CO.id))


def test_V1_a_team_admin_sees_its_agents_leads_unless_the_agent_hides_from_the_team() -> None:
    seen = lead(JOHN, JOHN.id, seen_by_groups=frozenset({TEAM.id}))
    hidden = lead(JOHN, JOHN.id)  # private and hidden: the repository lists no group
    assert can_view(tara, seen)
    assert not can_edit(tara, seen)
    assert not can_view(tara, hidden)


def test_V4_nothing_of_another_account_is_visible_or_exported() -> None:
    company_lead = lead(CO, JILL.id)
    assert not can_view(stranger, company_lead)
    assert not in_export(stranger, company_lead)
    refused(plan_share(stranger, company_lead, UserTarget(1, "x", "X", True), "view"), "V1", Refused.NOT_FOUND)


def test_V3_an_agents_export_has_its_own_and_company_leads_assigned_to_it_but_no_team_leads() -> None:
    assert in_export(john, lead(JOHN, JOHN.id))
    assert in_export(john, lead(CO, JOHN.id))
    assert not in_export(john, lead(TEAM, JOHN.id))
    assert in_export(olivia, lead(OFFICE, JILL.id))
    assert not in_export(olivia, lead(JOHN, JOHN.id))


def test_SH1_a_user_shared_with_view_shares_the_lead_further() -> None:
    shared = lead(JOHN, JOHN.id, shares={uma.user_id: "view"})
    plan = plan_share(uma, shared, UserTarget(121, "jill", "Jill", True, JILL.id), "edit")
    assert not isinstance(plan, Refusal)
    assert (plan.permission, plan.rule) == ("edit", "SH1")


def test_SH5_sharing_with_nobody_of_this_account_names_the_field() -> None:
    outcome = plan_share(john, lead(JOHN, JOHN.id), None, "view")
    refused(outcome, "SH5", Refused.INVALID)
    assert isinstance(outcome, Refusal)
    assert outcome.field == "user_id"


def test_SH4_texting_is_an_edit_a_view_share_or_a_seeing_admin_cannot_text() -> None:
    shared = lead(
        JOHN, JOHN.id, shares={uma.user_id: "view", jill.user_id: "edit"}, seen_by_groups=frozenset({TEAM.id})
    )
    refused(may_text(uma, shared), "SH4")
    refused(may_text(tara, shared), "SH4")  # sees it through the team, edits nothing
    assert may_text(jill, shared) is None
    assert may_text(john, shared) is None
    refused(may_text(oscar, shared), "V1", Refused.NOT_FOUND)
    assert may_text(oscar, lead(CO, JILL.id, routed_via_id=OFFICE.id)) is None


def test_SH6_only_shared_users_and_the_owner_side_remove_shares() -> None:
    shared = lead(CO, JILL.id, shares={uma.user_id: "view", 140: "view"})
    target = UserTarget(140, "tara", "Tara", True)
    assert not isinstance(plan_unshare(uma, shared, target), Refusal)
    assert not isinstance(plan_unshare(olivia, shared, target), Refusal)
    refused(plan_unshare(jill, shared, target), "SH6")


def test_A6_no_admin_reassigns_an_agent_owned_lead_and_A3_team_admins_use_their_pond() -> None:
    agent_lead = lead(JOHN, JOHN.id, seen_by_groups=frozenset({TEAM.id, CO.id}))
    target = AgentTarget(21, "jill", "Jill", True, frozenset({CO.id, TEAM.id}))
    refused(plan_assign(tara, agent_lead, target, pond=False), "A6")
    refused(plan_assign(olivia, agent_lead, target, pond=False), "A6")
    team_lead = lead(TEAM, JOHN.id)
    pond = plan_assign(tara, team_lead, None, pond=True)
    assert not isinstance(pond, Refusal)
    assert pond.agent is None
    refused(plan_assign(olivia, lead(CO, JILL.id), None, pond=True), "A3", Refused.INVALID)
    outsider = AgentTarget(23, "bob", "Bob", True, frozenset({CO.id}))
    refused(plan_assign(tara, team_lead, outsider, pond=False), "A3", Refused.INVALID)


def test_T1_only_the_owner_side_transfers() -> None:
    refused(plan_transfer(olivia, lead(JOHN, JOHN.id, seen_by_groups=frozenset({CO.id})), EntityTarget(CO)), "T1")
    refused(plan_transfer(jill, lead(CO, JILL.id), EntityTarget(JILL)), "T1")
    assert not isinstance(plan_transfer(john, lead(JOHN, JOHN.id), EntityTarget(CO)), Refusal)
    assert not isinstance(plan_transfer(olivia, lead(OFFICE, JILL.id), EntityTarget(CO)), Refusal)


def test_T6_a_transfer_to_an_agent_assigns_it_and_to_an_entity_keeps_a_connected_assignee() -> None:
    to_agent = plan_transfer(olivia, lead(CO, JILL.id), EntityTarget(JOHN))
    assert isinstance(to_agent, TransferPlan)
    assert (to_agent.assignee_id, to_agent.route) == (JOHN.id, False)
    kept = plan_transfer(john, lead(JOHN, JOHN.id, assignee_groups=frozenset({TEAM.id})), EntityTarget(TEAM))
    assert isinstance(kept, TransferPlan)
    assert (kept.assignee_id, kept.route) == (JOHN.id, False)
    routed = plan_transfer(john, lead(JOHN, JOHN.id, assignee_groups=frozenset({CO.id})), EntityTarget(TEAM))
    assert isinstance(routed, TransferPlan)
    assert (routed.assignee_id, routed.route) == (None, True)


def test_X2_an_agent_archives_but_never_deletes_an_entity_lead_and_X3_no_agent_deletes_without_duplication() -> None:
    refused(plan_delete(jill, lead(CO, JILL.id)), "X2")
    refused(plan_delete(john, lead(JOHN, JOHN.id, duplication=False)), "X3")
    assert not isinstance(plan_delete(olivia, lead(CO, JILL.id, duplication=False)), Refusal)
    assert not isinstance(plan_delete(john, lead(JOHN, JOHN.id)), Refusal)


def test_M2_two_entities_never_merge() -> None:
    refused(
        plan_merge(olivia, lead(CO, JILL.id), lead(OTHER_TEAM, JILL.id, shares={olivia.user_id: "edit"})),
        "M2",
        Refused.CONFLICT,
    )


def test_M1_M3_the_other_party_keeps_ownership_and_must_be_the_primary() -> None:
    agents = lead(JOHN, JOHN.id, seen_by_groups=frozenset({CO.id}))
    company = lead(CO, JOHN.id)
    plan = plan_merge(olivia, agents, company)
    assert isinstance(plan, MergePlan)
    assert plan.owner_id == JOHN.id
    refused(plan_merge(olivia, company, agents), "M3", Refused.CONFLICT)
    refused(plan_merge(jill, lead(JOHN, JILL.id), lead(CO, JILL.id)), "M1")


def test_M6_an_admin_merging_leads_assigned_to_two_agents_chooses_one_of_them() -> None:
    a, b = lead(CO, JOHN.id), lead(CO, JILL.id)
    refused(plan_merge(olivia, a, b), "M6", Refused.INVALID)
    refused(plan_merge(olivia, a, b, assignee=999), "M6", Refused.INVALID)
    plan = plan_merge(olivia, a, b, assignee=JILL.id)
    assert isinstance(plan, MergePlan)
    assert plan.assignee_id == JILL.id


def test_M5_the_merged_note_lists_the_other_leads_details() -> None:
    lead_id = uuid.uuid4()
    summary, data = merged_note(
        name="Ann Lee",
        lead_id=lead_id,
        owner="agent John",
        email="ann@example.com",
        phone="+15551234567",
        tags=["buyer"],
        campaigns=["Drip"],
        source="site (john.example.com)",
        contact={"zip": "02134"},
    )
    assert str(lead_id) in summary
    assert data["hashtags"] == ["buyer"]
    assert data["active_campaigns"] == ["Drip"]
    assert data["email"] == "ann@example.com"


@pytest.mark.parametrize(("actor", "expected"), [(john, None), (tara, None), (olivia, "A5")])
def test_A5_the_agent_or_a_team_admin_takes_the_agent_off_the_team(actor: Actor, expected: str | None) -> None:
    agent = AgentTarget(JOHN.id, "john", "John", True, frozenset({TEAM.id}))
    outcome = plan_leave_team(actor, TEAM, agent)
    if expected is None:
        assert not isinstance(outcome, Refusal)
    else:
        refused(outcome, expected)


# --- O7, O8: ownership is given, never taken; the owner keeps its lead whatever the privacy settings ------

TARA = EntityRef(22, "tara", Kind.AGENT, "Tara")
OWNERS = (CO, OFFICE, TEAM, JOHN, JILL, TARA)
ACTORS = (john, jill, olivia, oscar, tara, uma)


def owner_side(actor: Actor, owner: EntityRef) -> bool:
    """The owner side as O7 words it, written out here rather than taken from the rules: an agent's lead
    is that agent's alone; an entity's lead belongs to its admins and to the admins of the company above
    an office."""
    if owner.kind is Kind.AGENT:
        return actor.agent_id == owner.id
    return owner.id in actor.admin_of or (owner.parent is not None and owner.parent.id in actor.admin_of)


def every_shape(owner: EntityRef) -> list[LeadFacts]:
    """Leads of ``owner`` that every actor can see (assigned, routed through the office, shared with edit,
    seen through the team and the company), so that a refusal is never only V1's."""
    everyone = {actor.user_id: "edit" for actor in ACTORS}
    groups = frozenset({TEAM.id, CO.id})
    return [
        lead(owner, assignee, routed_via_id=OFFICE.id, shares=everyone, seen_by_groups=groups, assignee_groups=groups)
        for assignee in (JOHN.id, JILL.id, TARA.id, None)
    ]


def test_O7_no_actor_takes_ownership_by_a_transfer_only_the_owner_side_gives_it() -> None:
    given = 0
    for owner in OWNERS:
        for facts in every_shape(owner):
            for actor in ACTORS:
                for target in OWNERS:
                    outcome = plan_transfer(actor, facts, EntityTarget(target))
                    if owner_side(actor, owner):
                        given += isinstance(outcome, TransferPlan)
                    else:  # the assignee, a shared editor, an office admin who manages it: all refused
                        refused(outcome, "T1")
    assert given > 0  # not vacuous: the owner side does give leads away


def test_O7_a_merge_moves_ownership_only_away_from_the_user_merging() -> None:
    merged = 0
    for primary_owner in OWNERS:
        for other_owner in OWNERS:
            for primary in every_shape(primary_owner)[:2]:
                for other in every_shape(other_owner)[:2]:
                    for actor in ACTORS:
                        plan = plan_merge(actor, primary, other, assignee=primary.assignee_id)
                        if not isinstance(plan, MergePlan):
                            continue
                        merged += 1
                        # The merged lead keeps the primary's owner; the lead that loses its owner is the
                        # other, and where the owners differ that owner was the user's own side to give.
                        assert plan.owner_id == primary_owner.id
                        assert primary_owner.id == other_owner.id or owner_side(actor, other_owner), (
                            actor.slug,
                            primary_owner.slug,
                            other_owner.slug,
                        )
    assert merged > 0


@pytest.mark.parametrize("owner", [CO, OFFICE, TEAM], ids=lambda e: e.slug)
def test_O8_the_owner_side_views_and_manages_a_lead_assigned_to_a_private_hidden_agent(owner: EntityRef) -> None:
    # A private agent hidden from the team: the repository lists no group that sees the lead through it.
    hidden = lead(owner, JOHN.id, seen_by_groups=frozenset())
    admin = {CO.id: olivia, OFFICE.id: olivia, TEAM.id: tara}[owner.id]
    agent = AgentTarget(JILL.id, "jill", "Jill", active=True, groups=frozenset({owner.id, CO.id}))
    share_with = UserTarget(uma.user_id, "uma", "Uma", active=True)
    assert can_view(admin, hidden)
    assert can_edit(admin, hidden)
    assert isinstance(plan_assign(admin, hidden, agent, pond=False), AssignPlan)
    assert isinstance(plan_share(admin, hidden, share_with, "view"), SharePlan)
    assert isinstance(plan_archive(admin, hidden), StatusPlan)
    assert isinstance(plan_delete(admin, hidden), StatusPlan)
    assert isinstance(plan_transfer(admin, hidden, EntityTarget(JILL)), TransferPlan)
    # The same admin does not see the private agent's own lead: the privacy settings are in force.
    assert not can_view(admin, lead(JOHN, JOHN.id, seen_by_groups=frozenset()))
