"""The relay's queries."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session

from models.tables import Intake

# The relay's wait for a row doubles with each time it was relayed, this many times at most (32x).
RELAY_BACKOFF_CAP = 5


class RelayRepository:
    """The relay's queries: kept work (intakes, outbound texts, mail, bulk jobs, imports) that is not done
    a while after it was stored or last relayed, so its task may have been lost."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def claim(
        self,
        table: Any,
        conditions: Sequence[ColumnElement[bool]],
        *,
        cutoff: dt.datetime,
        now: dt.datetime,
        limit: int,
    ) -> list[Any]:
        """Mark up to ``limit`` waiting rows relayed now and return them (id first). Rows another relay
        or a running task holds are skipped (``FOR UPDATE SKIP LOCKED``), so relays on several hosts
        share the work and never send one row twice in a pass."""
        touched = func.coalesce(table.relayed_at, table.created_at)
        # A row relayed before waits twice as long each time (up to RELAY_BACKOFF_CAP doublings): under a
        # backlog longer than the period, sending the same waiting work every pass only lengthened the queue.
        after = now - cutoff
        due = or_(
            *[and_(table.relays == n, touched < now - after * 2**n) for n in range(RELAY_BACKOFF_CAP)],
            and_(table.relays >= RELAY_BACKOFF_CAP, touched < now - after * 2**RELAY_BACKOFF_CAP),
        )
        waiting = (
            select(table.id).where(*conditions, due).order_by(touched).limit(limit).with_for_update(skip_locked=True)
        )
        columns = [table.id, table.source] if table is Intake else [table.id]
        stmt = (
            update(table)
            .where(table.id.in_(waiting.scalar_subquery()))
            .values(relayed_at=now, relays=table.relays + 1)
            .returning(*columns)
            .execution_options(synchronize_session=False)
        )
        return list(self.session.execute(stmt).all())
