"""The CSV imports' rows: the import (queued, running, done or failed), its uploaded file kept piece by piece,
and the rows it refused. The import's own work (its staging tables and set-wise writes) is
:class:`models.imports.ImportStore`'s, on the same session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from models.db import get_engine
from models.tables import Import, ImportChunk, ImportRejection, User


class ImportRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    @property
    def postgres(self) -> bool:
        return self.session.get_bind().dialect.name == "postgresql"

    def add(self, row: Import) -> uuid.UUID:
        """Keep a new import row now (flushed: its id is known); the caller commits."""
        self.session.add(row)
        self.session.flush()
        return row.id

    def add_chunk(self, import_id: uuid.UUID, seq: int, data: bytes) -> None:
        """Keep piece ``seq`` of an uploaded file now, so no more than one piece is held in memory."""
        self.session.add(ImportChunk(import_id=import_id, seq=seq, data=data))
        self.session.flush()

    def chunks(self, import_id: uuid.UUID) -> Iterator[bytes]:
        """An uploaded file, one stored piece at a time."""
        seq = 0
        while True:
            data = self.session.execute(
                select(ImportChunk.data).where(ImportChunk.import_id == import_id, ImportChunk.seq == seq)
            ).scalar_one_or_none()
            if data is None:
                return
            yield data
            seq += 1

    def delete_chunks(self, import_id: uuid.UUID) -> None:
        """The uploaded file, no longer needed once the import is done or failed."""
        self.session.execute(delete(ImportChunk).where(ImportChunk.import_id == import_id))

    def lock_run(self, import_id: uuid.UUID) -> None:
        """One run at a time per import, until this transaction ends: a second (a redelivery while the first
        still runs) waits here (PostgreSQL; SQLite lets one writer in at a time already)."""
        if self.postgres:
            self.session.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"import:{import_id}"))))

    def get(self, import_id: uuid.UUID, *, fresh: bool = False) -> Import | None:
        """The import row; ``fresh``: read again from the database, not as this session last saw it."""
        if fresh:
            return self.session.get(Import, import_id, populate_existing=True)
        return self.session.execute(select(Import).where(Import.id == import_id)).scalar_one_or_none()

    def set(self, import_id: uuid.UUID, **values: Any) -> None:
        """Write ``values`` on the import row (its status, phase, counts, times)."""
        self.session.execute(update(Import).where(Import.id == import_id).values(**values))

    def user_slug(self, user_id: int) -> str | None:
        """The slug of the user who started an import (its events' actor)."""
        user = self.session.get(User, user_id)
        return user.slug if user is not None else None

    def rejections(self, import_id: uuid.UUID, limit: int) -> list[tuple[int, str]]:
        """The first ``limit`` rows the import refused, by line: (line, reason)."""
        rows = self.session.execute(
            select(ImportRejection.line, ImportRejection.reason)
            .where(ImportRejection.import_id == import_id)
            .order_by(ImportRejection.line)
            .limit(limit)
        ).all()
        return [(int(line), reason) for line, reason in rows]


def set_at_once(import_id: uuid.UUID, **values: Any) -> None:
    """Write ``values`` on the import row on a connection of its own, committed at once: its progress, which
    ``GET /v1/imports/{id}`` sees while the import's own transaction is still open (PostgreSQL; SQLite lets
    one writer in at a time, which the import is)."""
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(update(Import).where(Import.id == import_id).values(**values))
