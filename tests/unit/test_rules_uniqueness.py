"""D1-D4, D9: the unique-lead key the database holds a unique index on (per account)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.contact import normalize_email, normalize_phone
from rules.uniqueness import unique_key

PROPERTY = settings(database=None, max_examples=200)

COMPANY, JOHN, JILL = 1, 2, 3
ANN = "ann@example.com"
ANN_PHONE = "+12025550143"


def key(owner_id: int, email: str | None = None, phone: str | None = None, *, duplication: bool = True) -> str | None:
    return unique_key(duplication=duplication, owner_id=owner_id, email_normalized=email, phone_e164=phone)


def test_D1_same_email_two_owners_two_keys() -> None:
    assert key(JOHN, ANN) != key(JILL, ANN)


def test_D2_company_page_and_agent_page_signups_are_two_leads() -> None:
    # Both may be assigned to John; the owners differ (company vs John), so the keys do.
    assert key(COMPANY, ANN) != key(JOHN, ANN)


def test_D4_same_email_same_owner_is_the_same_lead() -> None:
    assert key(JOHN, ANN) == key(JOHN, ANN)


def test_D3_duplication_off_keys_on_account() -> None:
    assert (
        key(COMPANY, ANN, duplication=False) == key(JOHN, ANN, duplication=False) == key(JILL, ANN, duplication=False)
    )


def test_D9_email_decides_when_both_email_and_phone_are_given() -> None:
    assert key(JOHN, ANN, ANN_PHONE) == key(JOHN, ANN, "+12025550199") == key(JOHN, ANN)


def test_D9_phone_only_lead_keyed_on_phone_and_owner() -> None:
    assert key(JOHN, phone=ANN_PHONE) == key(JOHN, phone=ANN_PHONE)
    assert key(JOHN, phone=ANN_PHONE) != key(JILL, phone=ANN_PHONE)


def test_D9_phone_only_lead_is_keyed_on_owner_even_with_duplication_off() -> None:
    assert key(JOHN, phone=ANN_PHONE, duplication=False) == key(JOHN, phone=ANN_PHONE, duplication=True)


def test_D9_empty_email_falls_back_to_the_phone() -> None:
    assert key(JOHN, "", ANN_PHONE) == key(JOHN, None, ANN_PHONE)


def test_D9_email_key_and_phone_key_never_collide() -> None:
    # A phone-only lead must not join an email lead whose address happens to look like a phone.
    assert key(JOHN, email=ANN_PHONE) != key(JOHN, phone=ANN_PHONE)


def test_D9_nothing_to_match_on_gives_no_key() -> None:
    assert key(JOHN) is None
    assert key(JOHN, "", "") is None


def test_D9_spellings_of_one_contact_make_one_key_once_normalized() -> None:
    assert key(JOHN, normalize_email(" Ann@Example.com")) == key(JOHN, normalize_email("ANN@example.COM"))
    assert key(JOHN, phone=normalize_phone("(202) 555-0143")) == key(JOHN, phone=normalize_phone("+1 202.555.0143"))


@PROPERTY
@given(st.integers(1, 10**9), st.integers(1, 10**9), st.sampled_from([ANN, "bob@example.org"]))
def test_D1_D3_owners_split_an_email_only_with_duplication_on(owner_a: int, owner_b: int, email: str) -> None:
    assert (key(owner_a, email) == key(owner_b, email)) == (owner_a == owner_b)
    assert key(owner_a, email, duplication=False) == key(owner_b, email, duplication=False)
