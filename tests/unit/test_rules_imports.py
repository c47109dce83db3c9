"""CSV imports, the pure part: header spellings, row meaning and reasons, and who may import (O1)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.entities import EntityRef, Kind
from rules.imports import (
    ImportedBy,
    ImportRow,
    MappingError,
    RowParser,
    map_header,
    may_import,
    parse_price,
    parse_tags,
    row_signup,
)
from rules.signups import Event

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


# --- a row as the signup planner takes it, and the planner's events as an import words them -----------------


def a_row(**fields: object) -> ImportRow:
    values: dict[str, object] = {
        "email": "Ann@Example.com",
        "email_normalized": "ann@example.com",
        "phone": None,
        "first_name": "Ann",
        "last_name": "Lee",
        "tags": ("buyer",),
        "source": None,
        "notes": "met at the open house",
        "price": 450_000,
        "zip": "02134",
        **fields,
    }
    return ImportRow(**values)  # type: ignore[arg-type]


def test_a_row_is_an_import_signup_from_its_source_or_else_the_file() -> None:
    signup = row_signup(a_row(), "leads.csv")
    assert (signup.source_kind, signup.source_detail, signup.price_max, signup.zip) == (
        "import",
        "leads.csv",
        450_000,
        "02134",
    )
    assert signup.message is None  # the notes are the lead's note, not the signup's message
    assert row_signup(a_row(source="Open house"), "leads.csv").source_detail == "Open house"


def test_an_import_words_the_planners_events_as_its_own_and_keeps_their_reasons() -> None:
    import_id, lead, intake = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    by = ImportedBy(import_id, "leads.csv", "oscar")
    created = Event(lead, "created", intake, at, "Registered on leads.csv (import)", {"rule": "O1", "owner": "co"})
    repeat = Event(lead, "signup", intake, at, "Registered again on leads.csv", {"rule": "D4", "reason": "same"})
    routed = Event(lead, "routed", intake, at, "Assigned to Ann by co's rule 'x'", {"rule": "x"})

    made = by.event(created, 7)
    assert (made.kind, made.actor, made.summary) == ("created", "oscar", "Imported from leads.csv by oscar (line 7)")
    assert made.data == {"rule": "O1", "owner": "co", "import_id": str(import_id)}
    again = by.event(repeat, 9)
    assert (again.kind, again.actor, again.summary) == (
        "import",
        "oscar",
        "Listed again in import leads.csv by oscar (line 9)",
    )
    assert again.data == {"rule": "D4", "reason": "same", "import_id": str(import_id)}
    assert by.event(routed, 7) is routed
    note = by.note(lead, "call back", intake, at)
    assert (note.kind, note.actor, note.summary, note.data) == ("note", "oscar", "call back", {"from": "import"})
