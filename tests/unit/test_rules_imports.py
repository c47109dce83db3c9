"""CSV imports, the pure part: header spellings, row meaning and reasons, and who may import (O1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.entities import EntityRef, Kind
from rules.imports import (
    ImportRow,
    MappingError,
    RowParser,
    map_header,
    may_import,
    parse_price,
    parse_tags,
)

# Properties, not timings: no deadline, so a busy machine cannot fail them.
PROPERTY = settings(database=None, max_examples=200, deadline=None)


@pytest.mark.parametrize(
    "header",
    [
        ["first_name", "last_name", "email", "phone", "tags", "source", "notes", "price", "zip"],
        [
            "firstName",
            "lastName",
            "emailAddress",
            "phoneNumber",
            "hashtags",
            "leadSource",
            "Notes",
            "listPrice",
            "zipCode",
        ],
        [
            "First Name",
            "Last Name",
            "E-mail",
            "Mobile Phone",
            "Tags",
            "Lead Source",
            "Comments",
            "Price",
            "Postal Code",
        ],
        ["FIRST-NAME", "LAST_NAME", "EMAIL", "CELL", "#hashtags", "SOURCE", "NOTE", "BUDGET", "ZIP"],
    ],
    ids=["snake", "camel", "spaced", "shouting"],
)
def test_the_usual_spellings_map_to_the_fields(header: list[str]) -> None:
    columns = map_header(header)
    assert dict(columns.columns) == {
        "first_name": 0,
        "last_name": 1,
        "email": 2,
        "phone": 3,
        "tags": 4,
        "source": 5,
        "notes": 6,
        "price": 7,
        "zip": 8,
    }
    assert columns.ignored == ()


def test_map_names_the_rest_and_can_skip_a_column() -> None:
    columns = map_header(["Contact E", "Tel", "Agent"], {"Contact E": "email", "Tel": ""})
    assert dict(columns.columns) == {"email": 0}
    assert columns.ignored == ("Tel", "Agent")


@pytest.mark.parametrize(
    ("header", "extra", "message"),
    [
        (["name", "city"], {}, "no email or phone column"),
        (["email", "E-Mail"], {}, "both map to email"),
        (["email"], {"Missing": "phone"}, "does not have"),
        (["email", "x"], {"x": "favourite_colour"}, "unknown fields"),
    ],
)
def test_a_header_that_cannot_be_imported_says_why(header: list[str], extra: dict[str, str], message: str) -> None:
    with pytest.raises(MappingError, match=message):
        map_header(header, extra)


HEADER = ["First Name", "Last Name", "Email", "Phone", "Tags", "Price", "Zip", "Notes"]
PARSER = RowParser(map_header(HEADER), len(HEADER))


def test_a_good_row_is_normalized() -> None:
    row = PARSER.parse(
        ["Ann", "Lee", " Ann@Example.COM ", "(555) 201-4567", "#buyer #first-home", "$450,000", "02134", "call"]
    )
    assert row == ImportRow(
        email="Ann@Example.COM",
        email_normalized="ann@example.com",
        phone="+15552014567",
        first_name="Ann",
        last_name="Lee",
        tags=("buyer", "first-home"),
        source=None,
        notes="call",
        price=450_000,
        zip="02134",
    )


@pytest.mark.parametrize(
    ("cells", "reason"),
    [
        (["Ann", "Lee", "not-an-email", "", "", "", "", ""], "email: not an email address"),
        (["Ann", "Lee", "", "12", "", "", "", ""], "phone: "),
        (["Ann", "Lee", "", "", "", "", "", ""], "no email or phone"),
        (["Ann", "Lee", "a@b.co", "", "", "lots", "", ""], "price: not an amount"),
        (["Ann", "Lee", "a@b.co", "", "", "", "!!!", ""], "zip: not a postal code"),
        (["A" * 101, "Lee", "a@b.co", "", "", "", "", ""], "first_name: longer than 100"),
        (["Ann", "Lee", "a@b.co", "", "", "", "", "", "extra"], "9 fields but the header has 8"),
        (["A\x00nn", "Lee", "a@b.co", "", "", "", "", ""], "contains a NUL character"),
    ],
)
def test_a_malformed_row_is_rejected_with_the_reason(cells: list[str], reason: str) -> None:
    result = PARSER.parse(cells)
    assert isinstance(result, str)
    assert result.startswith(reason)


def test_a_short_row_has_empty_trailing_fields() -> None:
    row = PARSER.parse(["Ann", "Lee", "a@b.co"])
    assert isinstance(row, ImportRow)
    assert (row.phone, row.tags, row.price) == (None, (), None)


def test_a_full_name_column_splits_when_there_is_no_first_or_last() -> None:
    parser = RowParser(map_header(["Name", "Email"]), 2)
    row = parser.parse(["Ann Marie Lee", "a@b.co"])
    assert isinstance(row, ImportRow)
    assert (row.first_name, row.last_name) == ("Ann", "Marie Lee")


def test_no_email_in_a_row_is_kept_when_there_is_a_phone() -> None:
    row = PARSER.parse(["", "", "", "555-201-4567"])
    assert isinstance(row, ImportRow)
    assert (row.email_normalized, row.phone) == (None, "+15552014567")


@pytest.mark.parametrize(
    ("raw", "amount"),
    [
        ("450000", 450_000),
        ("$450,000", 450_000),
        ("450k", 450_000),
        ("1.2M", 1_200_000),
        ("12.5", 12),
        ("x", None),
        ("", None),
    ],
)
def test_prices(raw: str, amount: int | None) -> None:
    assert parse_price(raw) == amount


def test_tags_split_on_hashes_and_commas_once_each() -> None:
    assert parse_tags("#buyer, #buyer ;vip|first home") == ("buyer", "vip", "first home")


@PROPERTY
@given(st.lists(st.text(max_size=30), max_size=12))
def test_any_row_parses_or_gives_a_reason(cells: list[str]) -> None:
    """A malformed row never raises: the import reports it and goes on."""
    result = PARSER.parse(cells)
    assert isinstance(result, (ImportRow, str))


# --- O1: who may import for whom ------------------------------------------------------------------

COMPANY = EntityRef(1, "acme", Kind.COMPANY, "Acme")
TEAM = EntityRef(2, "sunrise", Kind.TEAM, "Sunrise")
JOHN = EntityRef(3, "john", Kind.AGENT, "John")


def test_O1_an_agent_imports_for_itself() -> None:
    assert may_import(user="john", agent_id=JOHN.id, admin_of=frozenset(), owner=JOHN) is None


def test_O1_an_admin_imports_for_its_entity() -> None:
    assert may_import(user="tina", agent_id=None, admin_of=frozenset({TEAM.id}), owner=TEAM) is None


@pytest.mark.parametrize(
    ("agent_id", "admin_of", "owner"),
    [
        (JOHN.id, frozenset(), TEAM),
        (JOHN.id, frozenset(), COMPANY),
        (None, frozenset({TEAM.id}), COMPANY),
        (None, frozenset({COMPANY.id}), JOHN),
        (99, frozenset(), JOHN),
    ],
    ids=[
        "agent-for-its-team",
        "agent-for-company",
        "team-admin-for-company",
        "company-admin-for-agent",
        "another-agent",
    ],
)
def test_O1_nobody_imports_for_an_owner_it_is_not(
    agent_id: int | None, admin_of: frozenset[int], owner: EntityRef
) -> None:
    refusal = may_import(user="u", agent_id=agent_id, admin_of=admin_of, owner=owner)
    assert refusal is not None
    assert refusal.startswith("O1: ")
