"""What the repositories share: the dialect's INSERT, PostgreSQL's INSERT of many rows from typed VALUES,
entities as values, the caller as the rules see it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import BindParameter, Table, column, insert, literal, select, values
from sqlalchemy import cast as sa_cast
from sqlalchemy.dialects import postgresql, sqlite
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


def dialect_insert(session: Session, table: Any) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT (PostgreSQL and SQLite both do)."""
    name = session.get_bind().dialect.name
    return (postgresql.insert if name == "postgresql" else sqlite.insert)(table)


def _with_scalar_defaults(table: Table, row: Mapping[str, Any]) -> dict[str, Any]:
    """The row with the table's scalar column defaults filled in (nothing evaluates them inside a CTE)."""
    defaults = {
        c.name: c.default.arg  # type: ignore[attr-defined]
        for c in table.c
        if c.name not in row and c.default is not None and c.default.is_scalar
    }
    return {**defaults, **row}


def insert_rows(table: Table, rows: Sequence[Mapping[str, Any]]) -> Any:
    """PostgreSQL: INSERT INTO table (columns) SELECT ... FROM (VALUES ...), each value cast to its column's
    type (a column of NULLs only would be text), the columns' scalar defaults filled in. Its binds are
    anonymous, so several of these share one statement, each a data-modifying CTE (multi-row VALUES inserts
    of tables with a column name in common cannot). SQLAlchemy compiles a VALUES list again each time:
    for a row or two of a fixed shape, :func:`insert_once` is cheaper."""
    rows = [_with_scalar_defaults(table, row) for row in rows]
    names = list(rows[0])
    source = values(*(column(name, table.c[name].type) for name in names), name=f"{table.name}_rows").data(
        [tuple(row[name] for name in names) for row in rows]
    )
    return postgresql.insert(table).from_select(
        names, select(*(sa_cast(source.c[name], table.c[name].type) for name in names))
    )


def insert_once(table: Table, row: Mapping[str, Any], key: Sequence[str]) -> Any:
    """INSERT of one row unless the table has a row with its ``key`` columns' values (INSERT ... SELECT ...
    WHERE NOT EXISTS), each value (or bind parameter) cast to its column's type and the scalar defaults
    filled in, for a data-modifying CTE: several share one statement. Unlike ON CONFLICT DO NOTHING
    (SQLAlchemy compiles PostgreSQL's INSERT again every time) or :func:`insert_rows`'s VALUES (likewise),
    a statement of these is compiled once and kept. A concurrent insert of the same key is not skipped but
    fails on the unique index: use it where a lock already serialises the writers of that key."""
    row = _with_scalar_defaults(table, row)
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
