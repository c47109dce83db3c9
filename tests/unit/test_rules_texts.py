"""S1-S4, O6: which lead a reply goes to, what a keyword does, what a text writes, and how delivery reports move
a text."""

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
    EXCERPT,
    Agent,
    CandidateLead,
    InboundText,
    LeadChange,
    MadeLead,
    NeedsLead,
    NewTextLead,
    OutboundText,
    PhoneFacts,
    PlannedText,
    ReplyRoute,
    StatusChange,
    StatusReport,
    TextIn,
    TextLead,
    TextPlan,
    apply_status_reports,
    choose_reply_lead,
    excerpt,
    keyword_action,
    plan_text,
    plan_texts,
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


# --- What a text writes ----------------------------------------------------------------------------------

AGENTS = {
    JILL: Agent(JILL, "jill", "Jill Jones", "jill@co.test"),
    JOHN: Agent(JOHN, "john", "John Smith", "john@co.test"),
    BOB: Agent(BOB, "bob", "Bob Brown"),  # no mail address
}
PHONE, NUMBER = "+15552000001", "+15550100001"


def inbound(body: str, sid: str = "SM1") -> InboundText:
    return InboundText(sid, NUMBER, PHONE, PHONE, body)


def landing(agent: int | None = JILL, *, active: dt.datetime = YESTERDAY, unsubscribed: bool = False) -> TextLead:
    return TextLead(uuid.uuid4(), agent, active, unsubscribed, "Ann", "Lee", PHONE)


def planned(body: str, to: TextLead, deciding: OutboundText | None = None, **kwargs: object) -> TextPlan:
    args: dict[str, object] = {
        "account_id": 7,
        "intake_id": uuid.UUID(int=1),
        "at": NOW,
        "lead": to,
        "rule": "S1" if deciding else "S2",
        "reason": "S1: because" if deciding else "S2: because",
        "deciding": deciding,
        "candidates": [to.lead_id],
        "agents": AGENTS,
        "public_base_url": "https://leads.test/",
        "correlation_id": "intake-1",
        **kwargs,
    }
    return plan_text(inbound(body), **args)  # type: ignore[arg-type]


def test_a_reply_is_kept_on_its_lead_for_its_agent_with_the_deciding_text_and_mailed_to_that_agent() -> None:
    to = landing(JILL)
    deciding = OutboundText(uuid.uuid4(), to.lead_id, JOHN, "John Smith", YESTERDAY)
    plan = planned("Is 12 Oak   still\navailable?", to, deciding)
    assert plan.lead_id == to.lead_id
    assert plan.message == {
        "account_id": 7,
        "lead_id": to.lead_id,
        "direction": "inbound",
        "lead_phone": PHONE,
        "smart_number": NUMBER,
        "body": "Is 12 Oak   still\navailable?",
        "agent_id": JILL,
        "provider_sid": "SM1",
        "status": "received",
        "intake_id": uuid.UUID(int=1),
        "created_at": NOW,
        "updated_at": NOW,
    }
    [event] = plan.events
    assert (event.lead_id, event.kind, event.intake_id, event.at) == (
        to.lead_id,
        "text_received",
        uuid.UUID(int=1),
        NOW,
    )
    assert event.summary == f"Text received on {NUMBER}: “Is 12 Oak still available?”; for Jill Jones (S1: because)"
    assert event.data["agent"] == "jill"
    assert event.data["deciding_text"] == {
        "message_id": str(deciding.message_id),
        "agent_id": JOHN,
        "at": YESTERDAY.isoformat(),
        "agent": "john",
    }
    assert event.data["candidates"] == [str(to.lead_id)]
    assert plan.lead_change == LeadChange(activity_at=NOW)
    assert plan.mail is not None
    assert (plan.mail.dedupe_key, plan.mail.to_address) == ("text:7:SM1", "jill@co.test")
    assert (plan.mail.subject, plan.mail.correlation_id) == ("New text from a lead", "intake-1")
    assert f"Ann Lee ({PHONE}) texted {NUMBER}" in plan.mail.body
    assert f"https://leads.test/v1/leads/{to.lead_id}" in plan.mail.body
    assert PHONE not in plan.mail.subject
    assert (plan.rule, plan.keyword) == ("S1", None)


def test_a_lead_nobody_is_assigned_to_or_whose_agent_has_no_address_is_mailed_to_nobody() -> None:
    nobody = planned("Hi", landing(None))
    assert nobody.mail is None
    assert nobody.message["agent_id"] is None
    assert "nobody is assigned to this lead" in nobody.events[0].summary
    assert nobody.events[0].data["agent"] is None
    assert planned("Hi", landing(BOB)).mail is None


def test_a_text_older_than_the_leads_last_activity_leaves_it() -> None:
    assert planned("Hi", landing(active=NOW + dt.timedelta(minutes=1))).lead_change is None
    assert planned("Hi", landing(active=NOW)).lead_change is None


@pytest.mark.parametrize(
    ("body", "unsubscribed", "kind", "changed"),
    [
        (" stop ", False, "sms_unsubscribed", True),
        ("STOP", True, "sms_unsubscribed", False),
        ("start", True, "sms_resubscribed", True),
        ("UNSTOP", False, "sms_resubscribed", False),
    ],
)
def test_S4_D8_a_keyword_changes_this_leads_subscription_with_a_note(
    body: str, unsubscribed: bool, kind: str, changed: bool
) -> None:
    plan = planned(body, landing(active=NOW, unsubscribed=unsubscribed))
    received, note = plan.events
    assert (received.kind, note.kind, note.lead_id) == ("text_received", kind, received.lead_id)
    assert note.data == {"rule": "S4", "keyword": body.strip().upper(), "changed": changed, "provider_sid": "SM1"}
    assert note.summary.endswith("; it already was") is not changed
    stop = kind == "sms_unsubscribed"
    assert plan.lead_change == (LeadChange(sms_unsubscribed=stop) if changed else None)
    assert plan.keyword == ("unsubscribe" if stop else "resubscribe")
    assert plan.mail is not None
    assert plan.mail.subject == ("A lead unsubscribed from texts" if stop else "New text from a lead")


@PROPERTY
@given(st.text(max_size=400))
def test_a_texts_excerpt_is_its_body_on_one_line_cut_to_the_limit(body: str) -> None:
    cut = excerpt(body)
    assert len(cut) <= EXCERPT
    assert "\n" not in cut
    flat = " ".join(body.split())
    assert cut == flat or (cut.endswith("…") and flat.startswith(cut[:-1]))
    plan = planned(body, landing())
    assert f"“{cut}”" in plan.events[0].summary
    assert plan.keyword == keyword_action(body)
    assert len(plan.events) == 1 + (plan.keyword is not None)


# --- A batch of texts, in arrival order ------------------------------------------------------------------


def batch_of(*bodies_to: tuple[str, int]) -> list[TextIn]:
    return [
        TextIn(
            uuid.UUID(int=100 + i), InboundText(f"SM{i}", NUMBER, PHONE, PHONE, body), NOW + dt.timedelta(minutes=i), to
        )
        for i, (body, to) in enumerate(bodies_to)
    ]


def planned_batch(
    items: list[TextIn], facts: dict[str, PhoneFacts], made: dict[uuid.UUID, MadeLead] | None = None
) -> list[PlannedText | NeedsLead]:
    return plan_texts(
        items,
        facts,
        made or {},
        account_id=7,
        agents=AGENTS,
        public_base_url="https://leads.test/",
        correlation_id=None,
    )


def test_a_batch_routes_each_text_over_its_phones_leads_as_the_texts_before_it_left_them() -> None:
    """S2 compares the leads' last activity, which each text moves; STOP twice notes that it already was."""
    johns = CandidateLead(uuid.uuid4(), JOHN, JOHN, YESTERDAY, YESTERDAY)
    company = CandidateLead(uuid.uuid4(), COMPANY, JILL, YESTERDAY + dt.timedelta(hours=1), YESTERDAY)
    leads = {c.lead_id: TextLead(c.lead_id, c.assigned_agent_id, c.last_activity_at, False) for c in (johns, company)}
    facts = {PHONE: PhoneFacts((johns, company), leads, ())}
    items = batch_of(("Hi", BOB), ("Hi John", JOHN), ("Anyone?", BOB), ("STOP", JOHN), ("STOP", JOHN))

    got = planned_batch(items, facts)

    assert all(isinstance(p, PlannedText) for p in got)
    plans = [p.plan for p in got if isinstance(p, PlannedText)]
    assert [p.lead_id for p in plans] == [company.lead_id, johns.lead_id, johns.lead_id, johns.lead_id, johns.lead_id]
    assert [p.rule for p in plans] == ["S2"] * 5
    notes = [e.data["changed"] for p in plans for e in p.events if e.kind == "sms_unsubscribed"]
    assert notes == [True, False]
    assert [p.lead_change.sms_unsubscribed if p.lead_change else None for p in plans][3:] == [True, None]


def test_a_batch_makes_one_lead_for_an_unknown_phones_first_text_and_routes_the_next_to_it() -> None:
    items = batch_of(("Saw your sign", COMPANY), ("Me again", COMPANY))
    first = planned_batch(items, {PHONE: PhoneFacts((), {}, ())})
    assert [type(p) for p in first] == [NeedsLead, NeedsLead]
    assert [p.choice is not None for p in first if isinstance(p, NeedsLead)] == [True, False]  # the first makes it

    made = CandidateLead(uuid.uuid4(), COMPANY, JILL, NOW, NOW)
    lead_made = TextLead(made.lead_id, JILL, NOW, False)
    again = planned_batch(
        items,
        {PHONE: PhoneFacts((made,), {made.lead_id: lead_made}, ())},
        {items[0].intake_id: MadeLead(lead_made, True, "O6: new")},
    )
    assert [(p.plan.lead_id, p.plan.rule, p.created) for p in again if isinstance(p, PlannedText)] == [
        (made.lead_id, "O6", True),
        (made.lead_id, "S2", False),
    ]
