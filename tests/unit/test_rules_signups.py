"""The signup planner: a batch decides as the same signups decided one by one would (owner, unique
lead, routing and round robin, timeline, mail, activity claims), and the cases a batch adds."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.entities import AgentState, EntityRef, Kind
from rules.events import LeadSignup
from rules.routing import Member, Rule
from rules.signups import (
    Contact,
    Facts,
    KnownLead,
    OrgView,
    SignupIn,
    SignupPlan,
    advance_routing,
    decide_owners,
    needs,
    plan_signups,
)

COMPANY = EntityRef(1, "co", Kind.COMPANY, "Demo Realty")
TEAM = EntityRef(2, "sunrise", Kind.TEAM, "Sunrise")
AGENT = EntityRef(3, "john", Kind.AGENT, "John")
ANN, BOB, CAT = (AgentState(10 + i, slug, slug.title()) for i, slug in enumerate(("ann", "bob", "cat")))
PAUSED = AgentState(20, "pat", "Pat", paused=True)
SITES = {"co.test": COMPANY, "team.test": TEAM, "john.test": AGENT}
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def org(duplication: bool = True) -> OrgView:
    contacts = {e.id: Contact(e.name, f"{e.slug}@co.test") for e in (ANN, BOB, CAT, PAUSED)}
    contacts[AGENT.id] = Contact("John", "john@co.test")
    contacts[COMPANY.id] = Contact("Demo Realty")
    return OrgView(1, duplication, SITES, {}, contacts, "https://leads.example")


def routing() -> dict[int, tuple[list[Rule], Rule]]:
    luxury = Rule(1, "Luxury", (Member(ANN), Member(PAUSED), Member(BOB)), {"price_min": 1_000_000}, campaign="lux")
    everyone = Rule(2, "Everyone", (Member(ANN), Member(BOB), Member(CAT)), strategy="weighted")
    team_default = Rule(None, "Sunrise default", (Member(BOB), Member(CAT)))
    return {COMPANY.id: ([luxury, everyone], Rule(None, "co default", ())), TEAM.id: ([], team_default)}


def signup(site: str, person: int, price: int | None = None, existing: str | None = None) -> LeadSignup:
    email = f"p{person}@example.com"
    return LeadSignup(
        source_kind="site",
        page_url=f"https://{site}/x",
        email=email,
        email_normalized=email,
        price_max=price,
        existing_lead_id=existing,
    )


def ids() -> Callable[[], uuid.UUID]:
    counter = itertools.count(1)
    return lambda: uuid.UUID(int=next(counter))


def plan(view: OrgView, items: list[SignupIn], facts: Facts, new_id: Callable[[], uuid.UUID]) -> SignupPlan:
    return plan_signups(view, items, decide_owners(view, items), facts, new_id=new_id)


def one_by_one(view: OrgView, items: list[SignupIn], facts: Facts) -> list[SignupPlan]:
    """Each signup planned alone, the facts moved on by the plan before it (what the writer leaves)."""
    by_key, by_id = dict(facts.by_key), dict(facts.by_id)
    cursors = {entity: (list(rules), default) for entity, (rules, default) in facts.routing.items()}
    new_id = ids()
    plans = []
    for item in items:
        p = plan(view, [item], Facts(by_key, by_id, cursors), new_id)
        plans.append(p)
        for lead in p.leads:
            known = KnownLead(lead.id, lead.values["owner_entity_id"], "active", lead.values["email_normalized"])
            by_id[lead.id] = known
            if lead.values["unique_key"]:
                by_key[lead.values["unique_key"]] = known
        for move in p.cursors:
            rules, default = cursors[move.entity_id]
            if move.rule_id is None:
                default = replace(default, cursor=move.cursor)
            else:
                rules = [replace(r, cursor=move.cursor) if r.id == move.rule_id else r for r in rules]
            cursors[move.entity_id] = (rules, default)
    return plans


def effective(plans: list[SignupPlan]) -> dict[str, Any]:
    """What the plans leave, as the writer would write them in order."""
    leads: dict[uuid.UUID, dict[str, Any]] = {}
    last: dict[uuid.UUID, dt.datetime] = {}
    cursors: dict[tuple[int, int | None], int] = {}
    for p in plans:
        for lead in p.leads:
            leads[lead.id] = {k: v for k, v in lead.values.items() if k != "last_activity_at"}
            last[lead.id] = lead.values["last_activity_at"]
        for lead_id, at in p.touched.items():
            last[lead_id] = max(last.get(lead_id, at), at)
        for move in p.cursors:
            cursors[(move.entity_id, move.rule_id)] = move.cursor
    return {
        "leads": leads,
        "last_activity": last,
        "cursors": cursors,
        "events": [e for p in plans for e in p.events],
        "finished": [f for p in plans for f in p.finished],
        "mails": [m for p in plans for m in p.mails],
        "claims": [c for p in plans for c in p.claims],
        "campaigns": [c for p in plans for c in p.campaigns],
    }


def existing_facts(view: OrgView) -> Facts:
    """Person 0 already has a lead of the company; person 1's company lead was merged into person 0's."""
    live = KnownLead(uuid.UUID(int=10**6), COMPANY.id, "active", "p0@example.com")
    merged = KnownLead(uuid.UUID(int=10**6 + 1), COMPANY.id, "merged", "p1@example.com", merged_into_id=live.id)
    keys = {"e:1:p0@example.com": live, "e:1:p1@example.com": merged}
    return Facts(keys, {live.id: live, merged.id: merged}, routing())


signups = st.lists(
    st.tuples(
        st.sampled_from([*sorted(SITES), "nobody.test"]),
        st.integers(0, 4),
        st.sampled_from([None, 500_000, 1_500_000]),
        st.booleans(),
    ),
    min_size=1,
    max_size=25,
)


@settings(deadline=None, max_examples=200)
@given(signups, st.booleans())
def test_a_batch_plans_exactly_what_the_same_signups_planned_one_by_one_would(
    drawn: list[tuple[str, int, int | None, bool]], duplication: bool
) -> None:
    view = org(duplication)
    facts = existing_facts(view)
    items = [
        SignupIn(
            uuid.UUID(int=i + 1),
            signup(site, person, price, existing=str(uuid.UUID(int=10**6)) if d5 and person == 0 else None),
            T0 + dt.timedelta(minutes=i),
        )
        for i, (site, person, price, d5) in enumerate(drawn)
    ]
    batch = plan(view, items, facts, ids())
    assert effective([batch]) == effective(one_by_one(view, items, facts))


def test_two_signups_of_one_person_in_a_batch_make_one_lead_and_one_signup_event() -> None:
    view = org()
    items = [SignupIn(uuid.uuid4(), signup("co.test", 7), T0), SignupIn(uuid.uuid4(), signup("co.test", 7), T0)]
    p = plan(view, items, Facts({}, {}, routing()), ids())
    assert len(p.leads) == 1
    assert [e.kind for e in p.events] == ["created", "routed", "signup"]
    assert [f.lead_id for f in p.finished] == [p.leads[0].id] * 2
    assert [f.created for f in p.finished] == [True, False]
    assert len(p.mails) == 1
    assert len(p.claims) == 1


def test_a_batch_routes_round_robin_across_owners_and_rules_with_its_explanations() -> None:
    view = org()
    items = [
        SignupIn(uuid.uuid4(), signup("co.test", 1, 2_000_000), T0),
        SignupIn(uuid.uuid4(), signup("team.test", 2), T0),
        SignupIn(uuid.uuid4(), signup("co.test", 3, 2_000_000), T0),
        SignupIn(uuid.uuid4(), signup("team.test", 4), T0),
        SignupIn(uuid.uuid4(), signup("john.test", 5), T0),
        SignupIn(uuid.uuid4(), signup("nobody.test", 6), T0),
    ]
    p = plan(view, items, Facts({}, {}, routing()), ids())
    assert [lead.values["assigned_agent_id"] for lead in p.leads] == [ANN.id, BOB.id, BOB.id, CAT.id, AGENT.id]
    routed = [e.data for e in p.events if e.kind == "routed"]
    assert routed[2]["skipped"] == [{"agent": "pat", "reason": "paused"}]  # Luxury passed over the paused agent
    assert [(m.entity_id, m.rule_id, m.cursor) for m in p.cursors] == [(1, 1, 3), (2, None, 2)]
    assert p.campaigns == [(p.leads[0].id, "lux"), (p.leads[2].id, "lux")]
    assert p.finished[-1].status == "rejected"
    assert p.finished[-1].reason.startswith("O9")
    assert [m.to_address for m in p.mails] == [
        "ann@co.test",
        "bob@co.test",
        "bob@co.test",
        "cat@co.test",
        "john@co.test",
    ]


def test_X4_a_deleted_lead_frees_its_key_for_a_new_signup_but_not_for_a_replay() -> None:
    view = org()
    dead = KnownLead(uuid.uuid4(), COMPANY.id, "deleted", "p1@example.com", deleted_by="olivia", deleted_at=T0)
    facts = Facts({"e:1:p1@example.com": dead}, {dead.id: dead}, routing())
    replay = SignupIn(uuid.uuid4(), signup("co.test", 1), T0, lead_before=dead.id)
    fresh = SignupIn(uuid.uuid4(), signup("co.test", 1), T0)
    p = plan(view, [replay, fresh, fresh], facts, ids())
    assert p.finished[0].status == "rejected"
    assert "deleted by olivia" in (p.finished[0].reason or "")
    assert [lead.replaces for lead in p.leads] == [dead.id]
    assert p.events[0].data["replaces"] == str(dead.id)
    assert p.finished[2].lead_id == p.leads[0].id
    assert not p.finished[2].created


def test_a_second_run_of_an_intake_that_made_its_lead_adds_nothing() -> None:
    """A task whose first commit landed though its worker saw an error runs again: the lead says which
    intake made it (and the intake which lead it is on), so the run finishes without a repeat signup."""
    view = org()
    maker, joiner, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    lead = KnownLead(uuid.uuid4(), COMPANY.id, "active", "p1@example.com", created_by_intake_id=maker)
    facts = Facts({"e:1:p1@example.com": lead}, {lead.id: lead}, routing())
    items = [
        SignupIn(maker, signup("co.test", 1), T0),
        SignupIn(joiner, signup("co.test", 1), T0, lead_before=lead.id),
        SignupIn(other, signup("co.test", 1), T0),
    ]
    p = plan(view, items, facts, ids())
    assert [(f.intake_id, f.status, f.lead_id, f.created) for f in p.finished] == [
        (maker, "done", lead.id, False),
        (joiner, "done", lead.id, False),
        (other, "done", lead.id, False),
    ]
    assert [(e.kind, e.intake_id) for e in p.events] == [("signup", other)]  # only the new intake repeats
    assert not p.leads
    assert not p.mails


def test_needs_names_what_to_lock_in_order() -> None:
    view = org()
    items = [
        SignupIn(uuid.uuid4(), signup("team.test", 2), T0),
        SignupIn(uuid.uuid4(), signup("co.test", 1), T0),
        SignupIn(uuid.uuid4(), signup("nobody.test", 3), T0),
    ]
    wanted = needs(view, items, decide_owners(view, items))
    assert wanted.people == ("p1@example.com", "p2@example.com")
    assert wanted.routing_entities == (COMPANY.id, TEAM.id)
    assert wanted.keys == ("e:1:p1@example.com", "e:2:p2@example.com")


@settings(deadline=None, max_examples=200)
@given(
    st.lists(
        st.tuples(st.sampled_from(["co.test", "team.test", "john.test"]), st.sampled_from([None, 1_500_000])),
        min_size=1,
        max_size=20,
    ),
    st.integers(0, 20),
)
def test_a_run_planned_in_two_batches_routes_as_one_plan_of_it_all(
    drawn: list[tuple[str, int | None]], cut: int
) -> None:
    """advance_routing carries the round robin from one batch to the next (an import, chunk by chunk):
    the two plans make the leads, routed with the reasons, and leave the cursors, of one plan of all."""
    view = org()
    items = [SignupIn(uuid.UUID(int=i + 1), signup(site, i, price), T0) for i, (site, price) in enumerate(drawn)]
    facts = Facts({}, {}, routing())
    whole = plan(view, items, facts, ids())
    new_id = ids()
    head = plan(view, items[:cut], facts, new_id)
    tail = plan(view, items[cut:], Facts({}, {}, advance_routing(facts.routing, head.cursors)), new_id)
    assert [lead.values for lead in head.leads + tail.leads] == [lead.values for lead in whole.leads]
    assert [e.data for e in head.events + tail.events] == [e.data for e in whole.events]
    assert head.campaigns + tail.campaigns == whole.campaigns
    after = advance_routing(advance_routing(facts.routing, head.cursors), tail.cursors)
    assert after == advance_routing(facts.routing, whole.cursors)
