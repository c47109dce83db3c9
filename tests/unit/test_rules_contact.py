"""D9: contact details as uniqueness compares them, and the masks logs use (emails and phones are masked in every log line)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.contact import InvalidPhone, mask_email, mask_phone, normalize_email, normalize_phone

# No example database: running the tests writes nothing outside the test run.
PROPERTY = settings(database=None, max_examples=200)

LOWER = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
local_parts = st.text(alphabet=LOWER + DIGITS + "._+-", min_size=2, max_size=20)
labels = st.text(alphabet=LOWER + DIGITS, min_size=1, max_size=12)
domains = st.lists(labels, min_size=2, max_size=4).map(".".join)
emails = st.builds(lambda local, domain: f"{local}@{domain}", local_parts, domains)
# NANP: area code and exchange start with 2-9.
us_numbers = st.builds(
    lambda area, exchange, line: f"{area}{exchange}{line:04d}",
    st.integers(200, 999),
    st.integers(200, 999),
    st.integers(0, 9999),
)


# --- normalize_email -------------------------------------------------------------------------------


def test_D9_email_trimmed_and_case_folded() -> None:
    assert normalize_email("  Ann.Lee@Example.COM \n") == "ann.lee@example.com"


def test_D9_two_spellings_of_one_email_compare_equal() -> None:
    assert normalize_email("ANN@example.com") == normalize_email("\tann@EXAMPLE.com ")


@PROPERTY
@given(emails, st.sampled_from(["", " ", "\t", "\n "]), st.sampled_from(["", " ", "\r\n"]))
def test_D9_normalizing_an_email_is_idempotent_whatever_its_case_and_padding(
    email: str, before: str, after: str
) -> None:
    shouted = before + email.upper() + after
    once = normalize_email(shouted)
    assert once == email
    assert normalize_email(once) == once


# --- normalize_phone -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "(202) 555-0143",
        "202-555-0143",
        "202.555.0143",
        "2025550143",
        "+1 202 555 0143",
        "1-202-555-0143",
        " +12025550143 ",
    ],
)
def test_D9_us_phone_formats_all_store_as_one_e164_number(raw: str) -> None:
    assert normalize_phone(raw) == "+12025550143"


@pytest.mark.parametrize("raw", ["555-555-0100", "(555) 555-0199", "+1 555 555 0123", "212-555-0100"])
def test_D9_fictional_555_numbers_are_possible(raw: str) -> None:
    assert normalize_phone(raw).startswith("+1")


def test_D9_number_with_a_country_code_keeps_its_country() -> None:
    assert normalize_phone("+44 20 7946 0958") == "+442079460958"


def test_D9_national_number_is_read_in_the_default_region() -> None:
    assert normalize_phone("020 7946 0958", default_region="GB") == "+442079460958"


@pytest.mark.parametrize("raw", ["", "   ", "abc", "not a phone", "12", "+1 555"])
def test_D9_what_is_not_a_possible_number_is_refused(raw: str) -> None:
    with pytest.raises(InvalidPhone):
        normalize_phone(raw)


def test_D9_invalid_phone_is_a_value_error_so_validators_catch_it() -> None:
    with pytest.raises(ValueError, match="phone"):
        normalize_phone("abc")


def test_D9_local_only_seven_digit_number_is_not_stored_as_e164() -> None:
    """``555-0123`` has no area code: phonenumbers calls it IS_POSSIBLE_LOCAL_ONLY, and formatting it
    gives ``+15550123``, which is not the E.164 form of any number (and every area code's 555-0123
    would share one unique key). D9 stores E.164, so such a number is refused."""
    with pytest.raises(InvalidPhone):
        normalize_phone("555-0123")


@PROPERTY
@given(us_numbers)
def test_D9_normalizing_a_phone_is_idempotent(national: str) -> None:
    e164 = normalize_phone(national)
    assert e164 == "+1" + national
    assert normalize_phone(e164) == e164


# --- masks (logs never carry a lead's email or phone in full) ----------------------------------------


def test_logs_mask_email_shows_first_letters_and_the_tld_only() -> None:
    assert mask_email("ann@example.com") == "a***@e***.com"


@pytest.mark.parametrize("email", ["ann", "ann@localhost", "ann@", ""])
def test_logs_mask_email_without_a_dotted_domain_shows_only_the_first_letter(email: str) -> None:
    assert mask_email(email) == email[:1] + "***"


@PROPERTY
@given(emails)
def test_logs_mask_email_never_reveals_the_full_email(email: str) -> None:
    masked = mask_email(email)
    local, _, domain = email.partition("@")
    assert email not in masked
    assert masked.split("@")[0] == local[0] + "***"
    assert masked.split("@")[1].startswith(domain[0] + "***.")


def test_logs_mask_phone_shows_the_last_two_digits_only() -> None:
    assert mask_phone("+12025550143") == "***43"


@pytest.mark.parametrize("phone", ["", "1234", "+1", "12-34"])
def test_logs_mask_phone_of_four_digits_or_fewer_shows_no_digit(phone: str) -> None:
    assert mask_phone(phone) == "***"


@PROPERTY
@given(st.text(alphabet=DIGITS + " +-()", max_size=20))
def test_logs_mask_phone_never_reveals_more_than_two_digits(phone: str) -> None:
    masked = mask_phone(phone)
    assert sum(c.isdigit() for c in masked) <= 2
    if sum(c.isdigit() for c in phone) > 2:
        assert phone not in masked


# --- the North American fast path ------------------------------------------------------------------

# The shapes people type a US number in, plus noise that must leave the fast path.
phone_shapes = st.sampled_from(
    [
        "{a}{e}{l}",
        "({a}) {e}-{l}",
        "{a}-{e}-{l}",
        "{a}.{e}.{l}",
        "1{a}{e}{l}",
        "+1 {a} {e} {l}",
        "+1({a}){e}-{l}",
        " {a} {e} {l} ",
        "+{a}{e}{l}",
        "1 {a}/{e}/{l}",
        "{a}{e}{l} x12",
        "+44 20 7946 {l}",
        "{a}{e}",
    ]
)
area_or_exchange = st.integers(0, 999).map(lambda n: f"{n:03d}")


@PROPERTY
@given(phone_shapes, area_or_exchange, area_or_exchange, st.integers(0, 9999))
def test_D9_fast_path_gives_what_the_parser_gives(shape: str, area: str, exchange: str, line: int) -> None:
    """The shortcut for plain US numbers answers exactly as phonenumbers does, or defers to it."""
    import phonenumbers

    raw = shape.format(a=area, e=exchange, l=f"{line:04d}")
    try:
        parsed = phonenumbers.parse(raw.strip(), "US")
        possible = phonenumbers.is_possible_number_with_reason(parsed) == phonenumbers.ValidationResult.IS_POSSIBLE
        expected: str | None = (
            phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) if possible else None
        )
    except phonenumbers.NumberParseException:
        expected = None
    try:
        got: str | None = normalize_phone(raw)
    except InvalidPhone:
        got = None
    assert got == expected
