"""The mail outbox's queries."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Iterable, Sequence

from sqlalchemy import Select, and_, bindparam, or_, select
from sqlalchemy.orm import Session

from models.repositories.common import dialect_insert
from models.tables import Outbox


class OutboxRepository:
    """The mail outbox's queries."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add_mail_once(
        self,
        *,
        account_id: int,
        dedupe_key: str,
        to_address: str,
        subject: str,
        body: str,
        correlation_id: str | None,
    ) -> bool:
        """Keep a mail to send, unless one with this ``dedupe_key`` is kept already (one INSERT ... ON CONFLICT
        DO NOTHING); whether it is new."""
        inserted = self.session.execute(
            dialect_insert(self.session, Outbox)
            .values(
                id=uuid.uuid4(),
                account_id=account_id,
                kind="email",
                dedupe_key=dedupe_key,
                to_address=to_address,
                subject=subject,
                body=body,
                correlation_id=correlation_id,
            )
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(Outbox.id)
        ).scalar_one_or_none()
        return inserted is not None

    def get(self, outbox_id: uuid.UUID) -> Outbox | None:
        return self.session.get(Outbox, outbox_id)

    def get_for_update(self, outbox_id: uuid.UUID) -> Outbox | None:
        """A mail, locked until the transaction ends: a redelivered send waits, then finds it sent."""
        return self.session.execute(select(Outbox).where(Outbox.id == outbox_id).with_for_update()).scalar_one_or_none()

    def claim_pending(
        self,
        *,
        now: dt.datetime,
        retry_after: Sequence[dt.timedelta],
        exclude: Iterable[uuid.UUID] = (),
        limit: int,
    ) -> list[Outbox]:
        """Lock up to ``limit`` pending mails that are due, oldest first, and return them. A mail tried ``n``
        times is due ``retry_after[n]`` after it was stored (the last entry for every further try). Rows
        another flush holds are skipped (``FOR UPDATE SKIP LOCKED``; SQLite's ``BEGIN IMMEDIATE`` already
        lets one writer in at a time), so two flushes never send one mail."""
        cutoffs = {f"due_{n}": now - wait for n, wait in enumerate(retry_after)}
        skipped = list(exclude)
        stmt = _claim_statement(len(retry_after), bool(skipped))
        params: dict[str, object] = {**cutoffs, "claim_limit": limit}
        if skipped:
            params["skipped"] = skipped
        return list(self.session.execute(stmt, params).scalars())


@functools.lru_cache(maxsize=8)
def _claim_statement(steps: int, excluding: bool) -> Select[tuple[Outbox]]:
    """The claim for a schedule of ``steps`` waits, built once: a mail tried ``n`` times is due once it was
    stored before ``due_n`` (the last for every further try). Its cutoffs, limit and skipped ids are bound
    at each claim, so a flush of many mails builds and compiles it once (it was a third of a mail's cost)."""
    last = steps - 1
    due = or_(
        *[and_(Outbox.attempts == n, Outbox.created_at <= bindparam(f"due_{n}")) for n in range(last)],
        and_(Outbox.attempts >= last, Outbox.created_at <= bindparam(f"due_{last}")),
    )
    stmt = select(Outbox).where(Outbox.status == "pending", due)
    if excluding:
        stmt = stmt.where(Outbox.id.not_in(bindparam("skipped", expanding=True)))
    return stmt.order_by(Outbox.created_at).limit(bindparam("claim_limit")).with_for_update(skip_locked=True)
