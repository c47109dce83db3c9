"""The canonical lead event. It is kept with the intake and rebuilt from its stored form when an
unclaimed intake is replayed (O9), and its price is what routing conditions compare (A2)."""

from __future__ import annotations

import datetime as dt
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.events import LeadSignup

PROPERTY = settings(database=None, max_examples=200)

WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC 0123456789-@.+/:", max_size=30)
optional_words = st.none() | WORDS
optional_prices = st.none() | st.integers(0, 50_000_000)
# Offsets in whole minutes, as ISO 8601 and every parser of the intake give them (an offset of seconds or
# microseconds is not one a request can carry, and Python's isoformat round trip drops its microseconds).
offsets = st.builds(lambda minutes: dt.timezone(dt.timedelta(minutes=minutes)), st.integers(-23 * 60, 23 * 60))
moments = st.none() | st.datetimes(timezones=offsets)

signups = st.builds(
    LeadSignup,
    source_kind=st.sampled_from(["site", "squeeze_page", "landing_page", "provider", "sms", "import"]),
    page_url=optional_words,
    host=optional_words,
    email=optional_words,
    email_normalized=optional_words,
    phone=optional_words,
    first_name=optional_words,
    last_name=optional_words,
    lead_type=st.none() | st.sampled_from(["buyer", "seller", "renter"]),
    price_min=optional_prices,
    price_max=optional_prices,
    zip=st.none() | st.text(alphabet="0123456789", min_size=5, max_size=5),
    message=optional_words,
    tags=st.lists(WORDS, max_size=4).map(tuple),
    existing_lead_id=optional_words,
    occurred_at=moments,
)

ANN = LeadSignup(
    source_kind="site",
    page_url="https://jane.kvrealty.com/homes/1",
    host="jane.kvrealty.com",
    email="Ann@Example.com",
    email_normalized="ann@example.com",
    phone="+12025550143",
    first_name="Ann",
    tags=("vip", "spring"),
    occurred_at=dt.datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=dt.UTC),
)


def test_O9_signup_dict_holds_plain_json_values() -> None:
    data = ANN.to_dict()
    assert data["tags"] == ["vip", "spring"]
    assert data["occurred_at"] == "2025-03-14T09:26:53.589793+00:00"
    assert json.loads(json.dumps(data)) == data


def test_O9_signup_without_a_time_stores_none() -> None:
    assert LeadSignup(source_kind="sms").to_dict()["occurred_at"] is None


def test_O9_signup_round_trips_through_its_dict() -> None:
    assert LeadSignup.from_dict(ANN.to_dict()) == ANN


@PROPERTY
@given(signups)
def test_O9_any_signup_round_trips_through_json_for_replay(signup: LeadSignup) -> None:
    stored = json.loads(json.dumps(signup.to_dict()))
    rebuilt = LeadSignup.from_dict(stored)
    assert rebuilt == signup
    assert rebuilt.to_dict() == signup.to_dict()


def test_O9_replay_ignores_fields_it_does_not_know_and_defaults_missing_ones() -> None:
    rebuilt = LeadSignup.from_dict({"source_kind": "import", "email": "ann@example.com", "added_later": 1})
    assert rebuilt == LeadSignup(source_kind="import", email="ann@example.com")
    assert rebuilt.tags == ()
    assert rebuilt.occurred_at is None


def test_A2_price_is_the_top_of_the_range() -> None:
    assert LeadSignup(source_kind="site", price_min=300_000, price_max=450_000).price == 450_000


def test_A2_price_is_the_minimum_when_no_maximum_is_given() -> None:
    assert LeadSignup(source_kind="site", price_min=300_000).price == 300_000


def test_A2_price_of_zero_is_a_known_price() -> None:
    assert LeadSignup(source_kind="site", price_min=100, price_max=0).price == 0


def test_A2_price_is_unknown_without_either_bound() -> None:
    assert LeadSignup(source_kind="site").price is None
