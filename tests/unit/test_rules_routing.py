"""A1, A2, A7: ordered routing rules, first match wins, round robin or weighted, and the reasons recorded."""

from __future__ import annotations

from collections import Counter
from dataclasses import fields, replace
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rules.entities import AgentState
from rules.events import LeadSignup
from rules.routing import (
    Decision,
    Member,
    Rule,
    Skip,
    Tried,
    failed_conditions,
    next_agent,
    route,
    route_many,
    weighted_sequence,
    with_cursor,
)

# Properties, not timings: no deadline, so a busy machine cannot fail them.
PROPERTY = settings(database=None, max_examples=200, deadline=None)


# --- small builders ----------------------------------------------------------------------------


def number(text: str) -> int:
    """A stable id for a slug or rule name (``hash`` changes between runs)."""
    return int.from_bytes(text.encode(), "big") % 1_000_003


def agent(slug: str, **flags: bool) -> AgentState:
    return AgentState(id=number(slug), slug=slug, name=slug.title(), **flags)


ANN, BOB, CAT, DAN = agent("ann"), agent("bob"), agent("cat"), agent("dan")


def rule(name: str, *agents: AgentState, weights: tuple[int, ...] = (), cursor: int = 0, **conditions: Any) -> Rule:
    weights = weights or (1,) * len(agents)
    return Rule(
        id=None if name == "default" else number(name),
        name=name,
        members=tuple(Member(a, w) for a, w in zip(agents, weights, strict=True)),
        conditions=conditions,
        strategy="weighted" if any(w != 1 for w in weights) else "round_robin",
        cursor=cursor,
    )


def lead(**fields: Any) -> LeadSignup:
    return LeadSignup(**{"source_kind": "site", **fields})


def deal(first: Rule, leads: int) -> list[str]:
    """Route ``leads`` leads through one rule, writing the cursor back as the caller does."""
    chosen: list[str] = []
    current = first
    for _ in range(leads):
        picked, cursor, _ = next_agent(current)
        assert picked is not None
        chosen.append(picked.slug)
        current = Rule(current.id, current.name, current.members, current.conditions, current.strategy, cursor)
    return chosen


# --- failed_conditions -------------------------------------------------------------------------


def test_A2_a_rule_without_conditions_matches_every_lead() -> None:
    assert failed_conditions({}, lead()) == ()


@pytest.mark.parametrize(
    ("conditions", "signup", "failed"),
    [
        ({"price_min": 500_000}, lead(price_max=500_000), ()),
        ({"price_min": 500_000}, lead(price_max=499_999), ("price_min",)),
        ({"price_max": 500_000}, lead(price_min=500_000), ()),
        ({"price_max": 500_000}, lead(price_min=500_001), ("price_max",)),
        ({"price_min": 200_000, "price_max": 400_000}, lead(price_min=100_000, price_max=300_000), ()),
        ({"price_min": 200_000, "price_max": 400_000}, lead(price_min=300_000, price_max=450_000), ("price_max",)),
    ],
    ids=["min-inclusive", "below-min", "max-inclusive", "above-max", "range-top-inside", "range-top-above"],
)
def test_A2_price_conditions_compare_the_top_of_the_leads_range(
    conditions: dict[str, Any], signup: LeadSignup, failed: tuple[str, ...]
) -> None:
    assert failed_conditions(conditions, signup) == failed


def test_A2_zip_condition_matches_a_listed_zip_only() -> None:
    assert failed_conditions({"zips": ["02139", "02140"]}, lead(zip="02139")) == ()
    assert failed_conditions({"zips": ["02139", "02140"]}, lead(zip="10001")) == ("zips",)


def test_A2_lead_type_condition_matches_a_listed_type_only() -> None:
    assert failed_conditions({"lead_types": ["buyer"]}, lead(lead_type="buyer")) == ()
    assert failed_conditions({"lead_types": ["buyer"]}, lead(lead_type="seller")) == ("lead_types",)


def test_A2_source_kind_condition_matches_a_listed_kind_only() -> None:
    assert failed_conditions({"source_kinds": ["provider", "sms"]}, lead(source_kind="provider")) == ()
    assert failed_conditions({"source_kinds": ["provider", "sms"]}, lead(source_kind="site")) == ("source_kinds",)


@pytest.mark.parametrize(
    "conditions",
    [{"price_min": 0}, {"price_max": 10**9}, {"zips": ["02139"]}, {"lead_types": ["buyer", "seller", "renter"]}],
    ids=["price_min", "price_max", "zips", "lead_types"],
)
def test_A2_an_unknown_value_meets_no_condition(conditions: dict[str, Any]) -> None:
    # The lead gave no price, zip or type: even the widest condition on it fails.
    assert failed_conditions(conditions, lead()) == tuple(conditions)


def test_A2_every_failed_condition_is_named_in_order() -> None:
    conditions = {"price_min": 1, "price_max": 2, "zips": ["1"], "lead_types": ["buyer"], "source_kinds": ["sms"]}
    assert failed_conditions(conditions, lead()) == ("price_min", "price_max", "zips", "lead_types", "source_kinds")


def test_A2_all_conditions_must_hold() -> None:
    conditions = {"zips": ["02139"], "lead_types": ["buyer"]}
    assert failed_conditions(conditions, lead(zip="02139", lead_type="buyer")) == ()
    assert failed_conditions(conditions, lead(zip="02139", lead_type="renter")) == ("lead_types",)


# --- weighted_sequence -------------------------------------------------------------------------


def test_A2_weighted_sequence_gives_each_member_its_weight_per_cycle() -> None:
    order = weighted_sequence([Member(ANN, 3), Member(BOB, 1)])
    assert len(order) == 4
    assert Counter(order) == {0: 3, 1: 1}


def test_A2_weighted_sequence_spreads_equal_weights_rather_than_running_them() -> None:
    assert weighted_sequence([Member(ANN, 3), Member(BOB, 3)]) == [0, 1, 0, 1, 0, 1]


def test_A2_weighted_sequence_of_no_members_is_empty() -> None:
    assert weighted_sequence([]) == []


@PROPERTY
@given(st.lists(st.integers(1, 6), min_size=1, max_size=6))
def test_A2_weighted_sequence_counts_match_the_weights(weights: list[int]) -> None:
    order = weighted_sequence([Member(agent(f"a{i}"), w) for i, w in enumerate(weights)])
    assert Counter(order) == dict(enumerate(weights))


# --- next_agent --------------------------------------------------------------------------------


def test_A2_round_robin_takes_turns_in_member_order() -> None:
    assert deal(rule("r", ANN, BOB, CAT), 7) == ["ann", "bob", "cat", "ann", "bob", "cat", "ann"]


def test_A2_cursor_wraps_around_the_members() -> None:
    picked, cursor, skipped = next_agent(rule("r", ANN, BOB, CAT, cursor=2))
    assert (picked, cursor, skipped) == (CAT, 3, ())
    picked, _, _ = next_agent(rule("r", ANN, BOB, CAT, cursor=3))
    assert picked == ANN


def test_A2_a_cursor_many_laps_ahead_is_read_modulo_the_members() -> None:
    picked, cursor, _ = next_agent(rule("r", ANN, BOB, CAT, cursor=3 * 1000 + 1))
    assert picked == BOB
    assert cursor == 3 * 1000 + 2


def test_A2_paused_and_inactive_agents_skipped_keep_their_place() -> None:
    paused_bob, inactive_cat = agent("bob", paused=True), agent("cat", active=False)
    picked, cursor, skipped = next_agent(rule("r", ANN, paused_bob, inactive_cat, DAN, cursor=1))
    assert picked == DAN
    assert skipped == (Skip("bob", "paused"), Skip("cat", "inactive"))
    # Back at work, Bob and Cat are still in the rotation at their positions: the cursor counted them.
    assert cursor == 4
    assert deal(rule("r", ANN, BOB, CAT, DAN, cursor=cursor), 4) == ["ann", "bob", "cat", "dan"]


def test_A2_disconnected_agent_is_skipped() -> None:
    picked, _, skipped = next_agent(rule("r", agent("ann", connected=False), BOB))
    assert picked == BOB
    assert skipped == (Skip("ann", "not connected to the routing entity"),)


def test_A2_skipping_past_the_end_wraps_to_the_first_eligible() -> None:
    picked, cursor, skipped = next_agent(rule("r", ANN, BOB, agent("cat", paused=True), cursor=2))
    assert picked == ANN
    assert cursor == 4
    assert skipped == (Skip("cat", "paused"),)


def test_A2_no_eligible_member_leaves_the_cursor_where_it_was() -> None:
    picked, cursor, skipped = next_agent(rule("r", agent("ann", paused=True), agent("bob", active=False), cursor=5))
    assert picked is None
    assert cursor == 5
    # Skips are listed from the cursor on: 5 % 2 is Bob's position.
    assert skipped == (Skip("bob", "inactive"), Skip("ann", "paused"))


def test_A2_a_rule_without_members_chooses_nobody() -> None:
    assert next_agent(rule("r", cursor=2)) == (None, 2, ())


def test_A2_weighted_rule_gives_three_of_four_leads_to_weight_three() -> None:
    counts = Counter(deal(rule("r", ANN, BOB, weights=(3, 1)), 4 * 250))
    assert counts == {"ann": 750, "bob": 250}


def test_A2_weighted_distribution_over_many_leads_follows_the_weights() -> None:
    counts = Counter(deal(rule("r", ANN, BOB, CAT, weights=(5, 3, 2)), 1003))
    # 100 full cycles of 10, then 3 more: within one cycle of the exact proportions.
    for slug, share in (("ann", 0.5), ("bob", 0.3), ("cat", 0.2)):
        assert abs(counts[slug] - 1003 * share) <= 5


def test_A2_weight_zero_member_never_gets_a_weighted_lead() -> None:
    counts = Counter(deal(rule("r", ANN, BOB, CAT, weights=(2, 0, 1)), 30))
    assert counts == {"ann": 20, "cat": 10}


def test_A2_weighted_rule_skips_an_ineligible_heavy_agent() -> None:
    counts = Counter(deal(rule("r", agent("ann", paused=True), BOB, weights=(3, 1)), 8))
    assert counts == {"bob": 8}


agent_flags = st.fixed_dictionaries({"active": st.booleans(), "paused": st.booleans(), "connected": st.booleans()})


@PROPERTY
@given(
    st.lists(agent_flags, min_size=1, max_size=8),
    st.integers(0, 10**9),
    st.sampled_from(["round_robin", "weighted"]),
    st.data(),
)
def test_A2_any_rule_with_an_eligible_agent_and_any_cursor_picks_an_eligible_agent(
    flags: list[dict[str, bool]], cursor: int, strategy: str, data: st.DataObject
) -> None:
    members = tuple(Member(agent(f"a{i}", **f), data.draw(st.integers(1, 4))) for i, f in enumerate(flags))
    assume(any(m.agent.ineligible_reason is None for m in members))
    picked, new_cursor, skipped = next_agent(Rule(1, "r", members, strategy=strategy, cursor=cursor))
    assert picked is not None
    assert picked.ineligible_reason is None
    assert all(s.reason == agent(s.agent, **flags[int(s.agent[1:])]).ineligible_reason for s in skipped)
    assert picked.slug not in {s.agent for s in skipped}
    assert cursor < new_cursor <= cursor + sum(m.weight for m in members)


@PROPERTY
@given(st.integers(1, 8), st.integers(1, 5), st.integers(0, 10**6))
def test_A2_over_k_times_n_leads_each_of_n_eligible_agents_gets_exactly_k(n: int, k: int, cursor: int) -> None:
    agents = [agent(f"a{i}") for i in range(n)]
    counts = Counter(deal(rule("r", *agents, cursor=cursor), k * n))
    assert counts == {a.slug: k for a in agents}


@PROPERTY
@given(st.integers(1, 8), st.integers(0, 100), st.integers(0, 10**6))
def test_A2_round_robin_counts_differ_by_at_most_one_over_any_number_of_leads(n: int, leads: int, cursor: int) -> None:
    agents = [agent(f"a{i}") for i in range(n)]
    counts = Counter(deal(rule("r", *agents, cursor=cursor), leads))
    per_agent = [counts[a.slug] for a in agents]
    assert max(per_agent) - min(per_agent) <= 1
    assert sum(per_agent) == leads


@PROPERTY
@given(st.lists(st.integers(1, 5), min_size=1, max_size=5), st.integers(1, 4), st.integers(0, 10**6))
def test_A2_over_k_weighted_cycles_each_agent_gets_k_times_its_weight(weights: list[int], k: int, cursor: int) -> None:
    agents = [agent(f"a{i}") for i in range(len(weights))]
    first = Rule(
        1, "r", tuple(Member(a, w) for a, w in zip(agents, weights, strict=True)), strategy="weighted", cursor=cursor
    )
    counts = Counter(deal(first, k * sum(weights)))
    assert counts == {a.slug: k * w for a, w in zip(agents, weights, strict=True)}


# --- route ---------------------------------------------------------------------------------------


DEFAULT = rule("default", DAN)


def test_A2_first_matching_rule_wins() -> None:
    cambridge = rule("cambridge", ANN, zips=["02139"])
    buyers = rule("buyers", BOB, lead_types=["buyer"])
    decision = route([cambridge, buyers], DEFAULT, lead(zip="02139", lead_type="buyer"))
    assert decision.agent == ANN
    assert decision.rule == cambridge
    assert decision.tried == ()


def test_A2_rules_are_tried_in_order_until_one_matches() -> None:
    cambridge = rule("cambridge", ANN, zips=["02139"])
    buyers = rule("buyers", BOB, lead_types=["buyer"])
    decision = route([cambridge, buyers], DEFAULT, lead(zip="10001", lead_type="buyer"))
    assert decision.agent == BOB
    assert decision.tried == (Tried("cambridge", ("zips",)),)


def test_A2_default_rule_when_no_rule_matches() -> None:
    luxury = rule("luxury", ANN, price_min=1_000_000)
    decision = route([luxury], DEFAULT, lead(price_max=400_000))
    assert decision.agent == DAN
    assert decision.rule == DEFAULT
    assert decision.rule is not None
    assert decision.rule.id is None
    assert decision.tried == (Tried("luxury", ("price_min",)),)


def test_A2_no_rules_means_the_default_rule_routes() -> None:
    assert route([], DEFAULT, lead()).agent == DAN


def test_A2_a_rule_whose_agents_are_all_ineligible_passes_to_the_next() -> None:
    paused_ann, inactive_bob = agent("ann", paused=True), agent("bob", active=False)
    stalled = rule("cambridge", paused_ann, inactive_bob, zips=["02139"])
    backup = rule("backup", CAT)
    decision = route([stalled, backup], DEFAULT, lead(zip="02139"))
    assert decision.agent == CAT
    assert decision.rule == backup
    assert decision.tried == (Tried("cambridge", ("no eligible agent",)),)
    assert decision.skipped == (Skip("ann", "paused"), Skip("bob", "inactive"))


def test_A2_the_cursor_written_back_is_the_chosen_rules() -> None:
    chosen = rule("r", ANN, BOB, CAT, cursor=7)
    assert route([chosen], DEFAULT, lead()).cursor == 8


def test_A2_route_takes_turns_when_the_cursor_is_written_back() -> None:
    rotation = rule("r", ANN, BOB)
    first = route([rotation], DEFAULT, lead())
    assert first.cursor is not None
    second = route([rule("r", ANN, BOB, cursor=first.cursor)], DEFAULT, lead())
    assert (first.agent, second.agent) == (ANN, BOB)


def test_A2_no_eligible_agent_anywhere_leaves_the_lead_unassigned() -> None:
    nobody = rule("default", agent("dan", paused=True))
    decision = route([rule("r", agent("ann", active=False))], nobody, lead())
    assert decision.agent is None
    assert decision.rule is None
    assert decision.cursor is None
    assert decision.tried == (Tried("r", ("no eligible agent",)), Tried("default", ("no eligible agent",)))
    assert decision.skipped == (Skip("ann", "inactive"), Skip("dan", "paused"))
    assert "unassigned" in decision.explanation


def test_A7_decision_records_rule_and_skipped_reasons() -> None:
    luxury = rule("luxury", ANN, price_min=1_000_000)
    cambridge = rule("cambridge", agent("bob", paused=True), agent("cat", connected=False), DAN, zips=["02139"])
    decision = route([luxury, cambridge], DEFAULT, lead(zip="02139", price_max=500_000))
    assert decision.as_data() == {
        "rule": "cambridge",
        "rule_id": cambridge.id,
        "strategy": "round_robin",
        "agent": "dan",
        "skipped": [
            {"agent": "bob", "reason": "paused"},
            {"agent": "cat", "reason": "not connected to the routing entity"},
        ],
        "rules_not_matched": [{"rule": "luxury", "failed": ["price_min"]}],
        "explanation": "rule 'cambridge' matched; round_robin chose dan after skipping bob (paused), "
        "cat (not connected to the routing entity)",
    }


def test_A7_explanation_without_skips_names_only_the_rule_and_agent() -> None:
    assert route([], DEFAULT, lead()).explanation == "rule 'default' matched; round_robin chose dan"


def test_A7_unassigned_decision_data_names_no_rule_or_agent() -> None:
    data = Decision(None, None, None, (), (), "no rule had an eligible agent: the lead is unassigned").as_data()
    assert (data["rule"], data["rule_id"], data["strategy"], data["agent"]) == (None, None, None, None)
    assert data["skipped"] == []
    assert data["rules_not_matched"] == []


def test_A7_weighted_decision_names_its_strategy() -> None:
    decision = route([rule("weighted", ANN, BOB, weights=(2, 1))], DEFAULT, lead())
    assert decision.as_data()["strategy"] == "weighted"
    assert decision.explanation == "rule 'weighted' matched; weighted chose ann"


# --- route_many: routing existing leads again in a batch (T6, A5) -----------------------------------


@PROPERTY
@given(
    st.lists(st.sampled_from([None, 100_000, 600_000]), min_size=1, max_size=40),
    st.integers(0, 7),
)
def test_A2_routing_a_batch_equals_routing_one_by_one(prices: list[int | None], start: int) -> None:
    """A batch routed in order with the cursors carried along: the same agents, in the same order, as
    the pipeline routing them one at a time and writing each cursor back."""
    rules = [
        rule("luxury", ANN, agent("bob", paused=True), CAT, weights=(3, 1, 2), cursor=start, price_min=500_000),
        rule("everyone", BOB, CAT, DAN, cursor=start + 1),
    ]
    default = rule("default", ANN, BOB, cursor=start)
    leads = [lead(price_max=p) for p in prices]

    batch, rules_after, default_after = route_many(rules, default, leads)

    one_by_one: list[Decision] = []
    current = [*rules, default]
    for signup in leads:
        decision = route(current[:-1], current[-1], signup)
        one_by_one.append(decision)
        current = [
            Rule(r.id, r.name, r.members, r.conditions, r.strategy, decision.cursor, r.campaign)
            if decision.rule is not None and r.name == decision.rule.name and decision.cursor is not None
            else r
            for r in current
        ]
    assert [d.as_data() for d in batch] == [d.as_data() for d in one_by_one]
    assert [r.cursor for r in [*rules_after, default_after]] == [r.cursor for r in current]


def test_A2_a_batch_of_999_over_three_agents_is_333_each() -> None:
    decisions, _, _ = route_many([], rule("default", ANN, BOB, CAT), [lead()] * 999)
    assert Counter(d.agent.slug for d in decisions if d.agent) == {"ann": 333, "bob": 333, "cat": 333}


def test_with_cursor_moves_the_cursor_alone() -> None:
    """A router's cheap ``replace(rule, cursor=...)``: it names every field of a rule, so a field added to
    ``Rule`` must be added to it too (this list says so)."""
    r = Rule(7, "lux", (Member(ANN, 2), Member(BOB)), {"zips": ["02134"]}, "weighted", 3, "drip")
    assert with_cursor(r, 9) == replace(r, cursor=9)
    assert [f.name for f in fields(Rule)] == ["id", "name", "members", "conditions", "strategy", "cursor", "campaign"]
