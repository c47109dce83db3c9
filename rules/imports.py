"""CSV imports, the pure part: who may import for whom (O1), which column is which field, what a row
means, and how a row is a signup for the one signup planner (:mod:`rules.signups`). The loader streams
rows through :class:`RowParser` and never sees a header spelling.

An import decides nothing of its own about leads: each row's first occurrence in the file is a signup
(:func:`row_signup`) owned as the import's owner decides (:func:`rules.ownership.decide_import_owner`),
and the planner makes, joins or refuses its lead, routes it and claims its kept activity exactly as for
a live signup. What is the import's own is the wording of its timeline (:class:`ImportedBy`): the file,
the line and who imported it, a repeat named ``import`` rather than ``signup``, and a row's notes as a
``note`` on the lead it makes."""

from __future__ import annotations

import datetime as dt
import functools
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rules.contact import InvalidPhone, normalize_email, normalize_phone
from rules.entities import EntityRef, Kind
from rules.events import LeadSignup
from rules.signups import Event

FIELDS = ("first_name", "last_name", "full_name", "email", "phone", "tags", "source", "notes", "price", "zip")

# Spellings people export, compared after lower-casing and dropping everything but letters and
# digits, so "First Name", "first_name", "firstName" and "FIRST-NAME" are one key.
_ALIASES: dict[str, tuple[str, ...]] = {
    "first_name": ("firstname", "first", "fname", "givenname", "forename"),
    "last_name": ("lastname", "last", "lname", "surname", "familyname"),
    "full_name": ("name", "fullname", "contactname", "leadname"),
    "email": ("email", "emailaddress", "email1", "primaryemail", "mail"),
    "phone": ("phone", "phonenumber", "phone1", "mobile", "mobilephone", "cell", "cellphone", "primaryphone", "tel"),
    "tags": ("tags", "tag", "hashtags", "hashtag", "labels"),
    "source": ("source", "leadsource", "sourcename"),
    "notes": ("notes", "note", "comments", "comment", "message"),
    "price": ("price", "listprice", "budget", "pricemax", "maxprice", "targetprice"),
    "zip": ("zip", "zipcode", "postalcode", "postcode", "zippostalcode"),
}
_BY_KEY = {alias: field for field, aliases in _ALIASES.items() for alias in aliases}
_NOT_KEY = re.compile(r"[^a-z0-9]")

_EMAIL = re.compile(r"^[^@\s,;<>()\[\]\"]+@[^@\s,;<>()\[\]\"]+\.[^@\s,;<>()\[\]\".]+$")
_ZIP = re.compile(r"^[A-Z0-9][A-Z0-9 -]{1,8}[A-Z0-9]$")
_PRICE = re.compile(r"^(\d+(?:\.\d+)?)([KM]?)$")
_TAG_SPLIT = re.compile(r"[#,;|]")
_PRICE_JUNK = str.maketrans("", "", "$, ")

MAX_NAME = 100
MAX_EMAIL = 320
MAX_SOURCE = 500
MAX_NOTES = 10_000
MAX_TAGS = 50
MAX_TAG = 100
MAX_PRICE = 10**12


class MappingError(ValueError):
    """The header cannot be imported (no email or phone column, a column named twice, a bad --map)."""


def header_key(name: str) -> str:
    return _NOT_KEY.sub("", name.strip().lower())


@dataclass(frozen=True)
class ColumnMap:
    """Field -> column index, and the columns that are not imported."""

    columns: Mapping[str, int]
    ignored: tuple[str, ...]

    def describe(self, header: Sequence[str]) -> dict[str, str]:
        return {field: header[i] for field, i in self.columns.items()}


def map_header(header: Sequence[str], extra: Mapping[str, str] | None = None) -> ColumnMap:
    """Which column holds which field. ``extra`` maps a header (as written) to a field name, or to
    ``""`` to skip a column; it wins over the known spellings."""
    extra = extra or {}
    unknown_fields = sorted({f for f in extra.values() if f and f not in FIELDS})
    if unknown_fields:
        raise MappingError(f"--map names unknown fields {unknown_fields}; the fields are {', '.join(FIELDS)}")
    by_header = {header_key(h): f for h, f in extra.items()}
    missing = sorted(h for h in extra if header_key(h) not in {header_key(c) for c in header})
    if missing:
        raise MappingError(f"--map names columns the file does not have: {missing}")
    columns: dict[str, int] = {}
    ignored: list[str] = []
    for i, name in enumerate(header):
        key = header_key(name)
        field = by_header.get(key, _BY_KEY.get(key))
        if not field:
            ignored.append(name)
            continue
        if field in columns:
            raise MappingError(f"columns {header[columns[field]]!r} and {name!r} both map to {field}; use --map")
        columns[field] = i
    if "email" not in columns and "phone" not in columns:
        raise MappingError(f"no email or phone column among {list(header)}; name one with --map 'Your Header=email'")
    return ColumnMap(columns, tuple(ignored))


@dataclass(frozen=True, slots=True)
class ImportRow:
    email: str | None
    email_normalized: str | None
    phone: str | None
    first_name: str | None
    last_name: str | None
    tags: tuple[str, ...]
    source: str | None
    notes: str | None
    price: int | None
    zip: str | None


class RowParser:
    """One row of cells into an :class:`ImportRow`, or the reason it is rejected."""

    def __init__(self, columns: ColumnMap, width: int) -> None:
        self.width = width
        get = columns.columns.get
        self._first, self._last, self._full = get("first_name"), get("last_name"), get("full_name")
        self._email, self._phone, self._tags = get("email"), get("phone"), get("tags")
        self._source, self._notes, self._price, self._zip = get("source"), get("notes"), get("price"), get("zip")
        # The columns a row's fields are read from, in the order parse() takes them (-1: no such column).
        self._picks = tuple(
            -1 if index is None else index
            for index in (
                self._email,
                self._phone,
                self._first,
                self._last,
                self._full,
                self._price,
                self._zip,
                self._notes,
                self._source,
                self._tags,
            )
        )

    def parse(self, cells: Sequence[str]) -> ImportRow | str:
        if len(cells) > self.width and any(c.strip() for c in cells[self.width :]):
            return f"{len(cells)} fields but the header has {self.width}"
        if "\x00" in "".join(cells):
            return "contains a NUL character"  # no database text column can hold one
        # Each field trimmed, None when empty or missing (one pass: a large import parses millions of rows).
        count = len(cells)
        email, phone, first, last, full, raw_price, zip_code, notes, source, tags = [
            (cells[i].strip() or None) if 0 <= i < count else None for i in self._picks
        ]
        email_normalized = None
        if email is not None:
            if len(email) > MAX_EMAIL or not _EMAIL.match(email):
                return f"email: not an email address ({len(email)} characters)"
            email_normalized = normalize_email(email)
        if phone is not None:
            try:
                phone = normalize_phone(phone)
            except InvalidPhone as exc:
                return f"phone: {exc}"
        if email is None and phone is None:
            return "no email or phone"
        if full is not None and first is None and last is None:
            first, _, rest = full.partition(" ")
            last = rest.strip() or None
        for name, value in (("first_name", first), ("last_name", last)):
            if value is not None and len(value) > MAX_NAME:
                return f"{name}: longer than {MAX_NAME} characters"
        price: int | None = None
        if raw_price is not None:
            parsed = parse_price(raw_price)
            if parsed is None:
                return f"price: not an amount ({raw_price[:40]!r})"
            price = parsed
        if zip_code is not None:
            zip_code = zip_code.upper()
            if not _ZIP.match(zip_code):
                return f"zip: not a postal code ({zip_code[:20]!r})"
        return ImportRow(
            email=email,
            email_normalized=email_normalized,
            phone=phone,
            first_name=first,
            last_name=last,
            tags=parse_tags(tags),
            source=source[:MAX_SOURCE] if source else None,
            notes=notes[:MAX_NOTES] if notes else None,
            price=price,
            zip=zip_code,
        )


def parse_price(raw: str) -> int | None:
    """``$450,000`` -> 450000, ``450k`` -> 450000, ``1.2M`` -> 1200000; None when it is not an amount."""
    match = _PRICE.match(raw.translate(_PRICE_JUNK).upper())
    if match is None:
        return None
    number, suffix = match.groups()
    value = round(float(number) * {"": 1, "K": 1_000, "M": 1_000_000}[suffix])
    return value if value <= MAX_PRICE else None


@functools.lru_cache(maxsize=4096)
def parse_tags(raw: str | None) -> tuple[str, ...]:
    """``#buyer #first-home`` or ``buyer, first home``: the tags in order, once each. Kept for the last
    few thousand spellings: most rows of a file share their tags."""
    if not raw:
        return ()
    seen: dict[str, None] = {}
    for part in _TAG_SPLIT.split(raw):
        tag = part.strip()[:MAX_TAG]
        if tag:
            seen.setdefault(tag, None)
    return tuple(seen)[:MAX_TAGS]


def may_import(*, user: str, agent_id: int | None, admin_of: frozenset[int], owner: EntityRef) -> str | None:
    """O1: an import's owner owns every lead it makes, so only that owner imports: an agent for
    itself, an admin for the entity it administers. None when allowed, else the refusal."""
    if owner.kind is Kind.AGENT and owner.id == agent_id:
        return None
    if owner.id in admin_of:
        return None
    return (
        f"O1: {user} may import only for itself (an agent) or for an entity it administers, "
        f"not for {owner.kind.value} {owner.slug}"
    )


def row_signup(row: ImportRow, filename: str) -> LeadSignup:
    """A row as the signup the planner takes: an ``import`` whose source detail is the row's source, else
    the file's name. A row's notes are not the signup's message: they become a ``note`` on the lead the row
    makes (:meth:`ImportedBy.note`), as they always have."""
    return LeadSignup(
        source_kind="import",
        email=row.email,
        email_normalized=row.email_normalized,
        phone=row.phone,
        first_name=row.first_name,
        last_name=row.last_name,
        price_max=row.price,
        zip=row.zip,
        tags=row.tags,
        source_detail=row.source or filename[:MAX_SOURCE],
    )


@dataclass(frozen=True)
class ImportedBy:
    """Who imported which file: how the import's timeline words the events the planner decided. The data
    stay the planner's (the rules that decided, X4's deleted lead) and name the import besides."""

    import_id: uuid.UUID
    filename: str
    actor: str  # the importing user's slug

    def event(self, event: Event, line: int) -> Event:
        """A planned event as the import writes it: ``created`` names the file, the line and the importer,
        who is its actor; a repeat (``signup``: D3/D4, or M4 through a merge) is an ``import`` event, listed
        again; any other (``routed``) is the planner's as it is."""
        if event.kind == "created":
            summary = f"Imported from {self.filename} by {self.actor} (line {line})"
            kind = "created"
        elif event.kind == "signup":
            summary = f"Listed again in import {self.filename} by {self.actor} (line {line})"
            kind = "import"
        else:
            return event
        data: dict[str, Any] = {**event.data, "import_id": self.import_ref}
        return Event(event.lead_id, kind, event.intake_id, event.at, summary, data, self.actor[:64])

    @functools.cached_property
    def import_ref(self) -> str:
        """The import's id as its events' data name it."""
        return str(self.import_id)

    def note(self, lead_id: uuid.UUID, notes: str, intake_id: uuid.UUID | None, at: dt.datetime) -> Event:
        """A row's notes, on the lead the row made."""
        return Event(lead_id, "note", intake_id, at, notes, {"from": "import"}, self.actor[:64])
