"""What the repositories share: the dialect's INSERT, PostgreSQL's rows bound as one JSON recordset,
entities as values, the caller as the rules see it."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    ColumnClause,
    Table,
    Text,
    bindparam,
    column,
    exists,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy import cast as sa_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from models.base import UTCDateTime
from models.tables import Entity, Intake, Lead, Outbox, TimelineEvent
from rules.entities import EntityRef, Kind
from rules.permissions import Actor

# The tables the one-statement writers (signups, texts) write with Core, not the ORM's bulk paths.
LEADS = cast(Table, Lead.__table__)
EVENTS = cast(Table, TimelineEvent.__table__)
OUTBOX = cast(Table, Outbox.__table__)
INTAKES = cast(Table, Intake.__table__)
# A timestamp bound or cast as the columns hold it.
AT = UTCDateTime()


def event_row(event: Any) -> dict[str, Any]:
    """A planned timeline event (a signup plan's or a text plan's: they share these fields) as a row of
    ``EVENTS`` without its account, which the writer adds."""
    return {
        "lead_id": event.lead_id,
        "kind": event.kind,
        "intake_id": event.intake_id,
        "at": event.at,
        "summary": event.summary,
        "data": event.data,
        "actor": event.actor,
    }


def dialect_insert(session: Session, table: Any) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT (PostgreSQL and SQLite both do)."""
    name = session.get_bind().dialect.name
    return (postgresql.insert if name == "postgresql" else sqlite.insert)(table)


def with_scalar_defaults(table: Table, row: Mapping[str, Any]) -> dict[str, Any]:
    """The row with the table's scalar column defaults filled in (nothing evaluates them inside a CTE)."""
    defaults = {
        c.name: c.default.arg  # type: ignore[attr-defined]
        for c in table.c
        if c.name not in row and c.default is not None and c.default.is_scalar
    }
    return {**defaults, **row}


def recordset(name: str, columns: Sequence[ColumnClause[Any]]) -> Any:
    """PostgreSQL: ``jsonb_to_recordset(:name) AS name(column type, ...)``, rows bound as one JSON parameter
    (:func:`rows_json`). However many rows, the statement's text is the same, so SQLAlchemy compiles a
    statement built on these once per shape and keeps it (a VALUES list it compiles again every time).
    Each column has its type, so a column of NULLs only is not text."""
    return (
        func.jsonb_to_recordset(sa_cast(bindparam(name, type_=Text), JSONB))
        .table_valued(*columns, name=name)
        .render_derived(with_types=True)
    )


def columns_of(table: Table, names: Sequence[str]) -> list[ColumnClause[Any]]:
    """Free columns named and typed as ``table``'s, for :func:`recordset`."""
    return [column(n, table.c[n].type) for n in names]


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass an aware datetime")
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal | dt.date):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not bound through a recordset")


def rows_json(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> str:
    """The rows as :func:`recordset` reads them: a JSON array of objects with the columns ``names``."""
    return json.dumps([{n: row[n] for n in names} for row in rows], default=_json_value, separators=(",", ":"))


def insert_from(table: Table, source: Any, names: Sequence[str], key: Sequence[str] = ()) -> Any:
    """INSERT INTO table (names) SELECT names FROM source (a :func:`recordset`), skipping a row whose ``key``
    columns' values the table already holds (WHERE NOT EXISTS; like :func:`insert_once`, for writers a lock
    already serialises, and with no two rows of one key in ``source``). No column default is evaluated (none
    is inside a CTE): the rows carry them (:func:`with_scalar_defaults` for the scalar ones)."""
    rows = select(*(source.c[n] for n in names))
    if key:
        rows = rows.where(~exists().where(*(table.c[k] == source.c[k] for k in key)))
    return insert(table).from_select(list(names), rows, include_defaults=False)


def insert_once(table: Table, row: Mapping[str, Any], key: Sequence[str]) -> Any:
    """INSERT of one row unless the table has a row with its ``key`` columns' values (INSERT ... SELECT ...
    WHERE NOT EXISTS), each value (or bind parameter) cast to its column's type and the scalar defaults
    filled in, for a data-modifying CTE: several share one statement. Unlike ON CONFLICT DO NOTHING
    (SQLAlchemy compiles PostgreSQL's INSERT again every time),
    a statement of these is compiled once and kept. A concurrent insert of the same key is not skipped but
    fails on the unique index: use it where a lock already serialises the writers of that key."""
    row = with_scalar_defaults(table, row)
    there = select(literal(1)).where(*(table.c[name] == row[name] for name in key))
    source = select(
        *(
            sa_cast(
                value if isinstance(value, BindParameter) else literal(value, table.c[name].type), table.c[name].type
            )
            for name, value in row.items()
        )
    )
    return insert(table).from_select(list(row), source.where(~there.exists()))


def to_ref(entity: Entity, parent: Entity | None = None) -> EntityRef:
    return EntityRef(entity.id, entity.slug, Kind(entity.kind.value), entity.name, to_ref(parent) if parent else None)


# A user as the rules and the visibility filter (V1) see it.
Caller = Actor


def person_lock_key(account_id: int, email_normalized: str) -> int:
    """The advisory lock of one person of an account: taken by whatever decides whether the person has a lead
    (a signup making it, an activity finding none), so the two cannot miss each other."""
    digest = hashlib.sha256(f"person:{account_id}:{email_normalized}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def activity_lock_key(account_id: int) -> int:
    """The advisory lock of an account's kept activity (D7) as a whole: an activity deciding to keep itself
    takes it shared (activities never wait for each other), an import claiming the kept activity of the
    people it made leads of takes it exclusively, briefly, at its end (it holds no lock per person)."""
    digest = hashlib.sha256(f"activity:{account_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
