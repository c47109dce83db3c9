"""S1-S4, O6: which lead a reply goes to, what a keyword does, and how delivery reports move a text."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.entities import EntityRef, Kind
from rules.ownership import decide_number_owner
from rules.texts import (
    CandidateLead,
    InboundText,
    NewTextLead,
    OutboundText,
    ReplyRoute,
    StatusChange,
    StatusReport,
    apply_status_reports,
    choose_reply_lead,
    keyword_action,
)

# Properties, not timings: no deadline, so a busy machine cannot fail them.
PROPERTY = settings(database=None, max_examples=200, deadline=None)

NOW = dt.datetime(2026, 11, 22, 15, 0, tzinfo=dt.UTC)
YESTERDAY = NOW - dt.timedelta(days=1)
COMPANY, JOHN, JILL, BOB = 1, 10, 11, 12


def lead(
    owner: int, agent: int | None, *, active: dt.datetime = NOW, created: dt.datetime = YESTERDAY
) -> CandidateLead:
    return CandidateLead(uuid.uuid4(), owner, agent, active, created)


def text(to: CandidateLead, agent: int | None, at: dt.datetime, name: str | None = None) -> OutboundText:
    return OutboundText(uuid.uuid4(), to.lead_id, agent, name, at)


def routed(decision: ReplyRoute | NewTextLead) -> ReplyRoute:
    assert isinstance(decision, ReplyRoute), decision
    return decision


# --- S1 --------------------------------------------------------------------------------------------


def test_S1_john_texted_yesterday_jill_today_the_reply_goes_to_the_lead_jill_texted() -> None:
    """The seed: John's campaign texted his lead yesterday, Jill texted a listing to her lead today."""
    johns = lead(JOHN, JOHN)
    jills = lead(COMPANY, JILL)
    johns_text = text(johns, JOHN, YESTERDAY, "John Smith")
    jills_text = text(jills, JILL, NOW, "Jill Jones")
    decision = routed(choose_reply_lead([johns, jills], [johns_text, jills_text], number_entity_id=COMPANY))
    assert decision.lead_id == jills.lead_id
    assert decision.rule == "S1"
    assert decision.deciding_text == jills_text
    assert "Jill Jones" in decision.reason
    assert "2026-11-22 15:00 UTC" in decision.reason


def test_S1_until_john_texts_again() -> None:
    johns, jills = lead(JOHN, JOHN), lead(COMPANY, JILL)
    texts = [text(johns, JOHN, YESTERDAY), text(jills, JILL, NOW), text(johns, JOHN, NOW + dt.timedelta(minutes=1))]
    assert routed(choose_reply_lead([johns, jills], texts, COMPANY)).lead_id == johns.lead_id


def test_S1_three_duplicates_with_interleaved_texts_the_latest_wins_whoever_owns_the_number() -> None:
    a, b, c = lead(JOHN, JOHN), lead(COMPANY, JILL), lead(COMPANY, BOB)
    texts = [
        text(a, JOHN, NOW - dt.timedelta(hours=5)),
        text(b, JILL, NOW - dt.timedelta(hours=4)),
        text(c, BOB, NOW - dt.timedelta(hours=3)),
        text(a, JOHN, NOW - dt.timedelta(hours=2)),
        text(b, JILL, NOW - dt.timedelta(hours=1)),
    ]
    decision = routed(choose_reply_lead([a, b, c], texts, number_entity_id=JOHN))
    assert decision.lead_id == b.lead_id
    assert decision.deciding_text == texts[-1]
    assert "2 other leads" in decision.reason


def test_S1_texts_of_leads_that_are_not_candidates_do_not_count() -> None:
    """A text to a lead that is merged, deleted or has another phone now decides nothing."""
    mine = lead(COMPANY, JILL)
    gone = lead(COMPANY, BOB)
    decision = routed(choose_reply_lead([mine], [text(gone, BOB, NOW), text(mine, JILL, YESTERDAY)], COMPANY))
    assert decision.lead_id == mine.lead_id
    assert decision.rule == "S1"


@PROPERTY
@given(st.permutations(range(4)), st.permutations(range(4)))
def test_S1_the_answer_does_not_depend_on_the_order_of_candidates_or_texts(
    lead_order: list[int], text_order: list[int]
) -> None:
    leads = [lead(COMPANY, a) for a in (JOHN, JILL, BOB, JOHN)]
    texts = [text(leads[i], JOHN, NOW - dt.timedelta(hours=i % 2)) for i in range(4)]  # two ties at NOW
    first = choose_reply_lead(leads, texts, COMPANY)
    again = choose_reply_lead([leads[i] for i in lead_order], [texts[i] for i in text_order], COMPANY)
    assert first == again


# --- S2, O6 ----------------------------------------------------------------------------------------


def test_S2_no_outbound_text_the_lead_owned_by_the_numbers_entity() -> None:
    johns, company = lead(JOHN, JOHN, active=NOW), lead(COMPANY, JILL, active=YESTERDAY)
    decision = routed(choose_reply_lead([johns, company], [], number_entity_id=COMPANY))
    assert (decision.lead_id, decision.rule, decision.deciding_text) == (company.lead_id, "S2", None)
    assert "owned by the smart number's entity" in decision.reason


def test_S2_several_leads_of_the_numbers_entity_the_most_recently_active() -> None:
    older, newer = lead(COMPANY, JILL, active=YESTERDAY), lead(COMPANY, BOB, active=NOW)
    assert routed(choose_reply_lead([older, newer, lead(JOHN, JOHN)], [], COMPANY)).lead_id == newer.lead_id


def test_S2_no_lead_of_the_numbers_entity_the_most_recently_active_duplicate() -> None:
    older, newer = lead(JOHN, JOHN, active=YESTERDAY), lead(COMPANY, JILL, active=NOW)
    decision = routed(choose_reply_lead([older, newer], [], number_entity_id=BOB))
    assert (decision.lead_id, decision.rule) == (newer.lead_id, "S2")
    assert "most recently active" in decision.reason


def test_O6_an_unknown_phone_makes_a_new_lead() -> None:
    decision = choose_reply_lead([], [], COMPANY)
    assert isinstance(decision, NewTextLead)
    assert decision.rule == "O6"


@pytest.mark.parametrize(
    ("kind", "owner_kind", "routes", "assigned"),
    [
        (Kind.AGENT, Kind.AGENT, False, True),
        (Kind.COMPANY, Kind.COMPANY, True, False),
        (Kind.OFFICE, Kind.OFFICE, True, False),
        (Kind.TEAM, Kind.TEAM, True, False),
    ],
)
def test_O6_the_numbers_entity_owns_the_new_lead(kind: Kind, owner_kind: Kind, routes: bool, assigned: bool) -> None:
    entity = EntityRef(7, "e", kind, "E")
    ownership = decide_number_owner(entity, "+15550100000")
    assert ownership.owner == entity
    assert ownership.owner.kind is owner_kind
    assert (ownership.routing_entity is not None) is routes
    assert (ownership.assignee is not None) is assigned
    assert ownership.rule == "O6"
    assert "+15550100000" in ownership.reason


# --- S4 keywords -----------------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["STOP", "stop", " Stop\n", "STOPALL", "unsubscribe", "CANCEL", "End", "quit"])
def test_S4_an_opt_out_keyword_unsubscribes(body: str) -> None:
    assert keyword_action(body) == "unsubscribe"


@pytest.mark.parametrize("body", ["START", "start ", "Unstop"])
def test_S4_start_resubscribes(body: str) -> None:
    assert keyword_action(body) == "resubscribe"


@pytest.mark.parametrize("body", ["Please stop", "stop it", "STOP!", "", "Is 12 Oak still available?", "started"])
def test_S4_a_message_that_is_not_exactly_a_keyword_is_just_a_message(body: str) -> None:
    assert keyword_action(body) is None


# --- delivery statuses -----------------------------------------------------------------------------


def reports(*statuses: str) -> list[StatusReport]:
    return [StatusReport(s, "30003" if s in ("failed", "undelivered") else None) for s in statuses]


def test_statuses_move_forward() -> None:
    assert apply_status_reports("queued", reports("sending")) == StatusChange("sending", None)
    assert apply_status_reports("queued", reports("sending", "sent", "delivered")) == StatusChange("delivered", None)


def test_a_late_callback_never_moves_a_text_back() -> None:
    assert apply_status_reports("delivered", reports("sent")) is None
    assert apply_status_reports("sent", reports("queued", "sending")) is None


def test_of_two_final_statuses_the_first_stays() -> None:
    assert apply_status_reports("sent", reports("delivered", "failed")) == StatusChange("delivered", None)
    assert apply_status_reports("delivered", reports("delivered", "undelivered")) is None


def test_a_failure_keeps_the_gateways_error_code() -> None:
    assert apply_status_reports("sent", reports("undelivered")) == StatusChange("undelivered", "gateway error 30003")
    assert apply_status_reports("sent", [StatusReport("failed")]) == StatusChange("failed", None)


def test_unknown_statuses_are_ignored() -> None:
    assert apply_status_reports("queued", reports("exploded")) is None
    assert apply_status_reports("logged", reports("sent")) == StatusChange("sent", None)


@PROPERTY
@given(st.permutations(["queued", "sending", "sent", "delivered"]), st.sampled_from(["queued", "sending", "sent"]))
def test_out_of_order_callbacks_end_where_in_order_ones_do(order: list[str], start: str) -> None:
    in_order = apply_status_reports(start, reports("queued", "sending", "sent", "delivered"))
    assert apply_status_reports(start, reports(*order)) == in_order == StatusChange("delivered", None)


@PROPERTY
@given(st.lists(st.sampled_from(["queued", "sending", "sent", "delivered", "failed"]), max_size=8))
def test_applying_reports_one_at_a_time_or_together_ends_the_same(statuses: list[str]) -> None:
    """The callback endpoint applies every kept report each time one arrives; folding one at a time ends
    where applying them all at once does, and never moves backwards."""
    together = apply_status_reports("queued", reports(*statuses))
    current = "queued"
    for prefix in itertools.accumulate([[s] for s in statuses]):
        change = apply_status_reports(current, reports(*prefix))
        if change is not None:
            current = change.status
    assert current == (together.status if together else "queued")


# --- the canonical inbound text --------------------------------------------------------------------


def test_an_inbound_text_round_trips_through_its_stored_form() -> None:
    text_in = InboundText("SM1", "+15550100000", "(555) 201-0001", "+15552010001", "Hi", "AC1", 2, ("u0", "u1"))
    assert InboundText.from_dict(text_in.to_dict()) == text_in
