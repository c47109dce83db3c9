"""What the repositories share: the dialect's INSERT, entities as values, the caller as the rules see it."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models.tables import Entity
from rules.entities import EntityRef, Kind
from rules.permissions import Actor


def dialect_insert(session: Session, table: Any) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT (PostgreSQL and SQLite both do)."""
    name = session.get_bind().dialect.name
    return (postgresql.insert if name == "postgresql" else sqlite.insert)(table)


def to_ref(entity: Entity, parent: Entity | None = None) -> EntityRef:
    return EntityRef(entity.id, entity.slug, Kind(entity.kind.value), entity.name, to_ref(parent) if parent else None)


# A user as the rules and the visibility filter (V1) see it.
Caller = Actor


def person_lock_key(account_id: int, email_normalized: str) -> int:
    """The advisory lock of one person of an account: taken by whatever decides whether the person has a lead
    (a signup making it, an activity finding none), so the two cannot miss each other."""
    digest = hashlib.sha256(f"person:{account_id}:{email_normalized}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
