"""The mail outbox's queries."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from models.repositories.common import OUTBOX, dialect_insert
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

    def claim(
        self,
        *,
        now: dt.datetime,
        retry_after: Sequence[dt.timedelta],
        until: dt.datetime,
        exclude: Iterable[uuid.UUID] = (),
        limit: int,
    ) -> list[ClaimedMail]:
        """Claim up to ``limit`` pending mails that are due and no flush holds, oldest first, until ``until``,
        in one UPDATE ... RETURNING (the caller commits at once); the mails claimed. A mail tried ``n``
        times is due ``retry_after[n]`` after it was stored (the last entry for every further try). The
        rows are chosen with ``FOR UPDATE SKIP LOCKED`` (SQLite's ``BEGIN IMMEDIATE`` already lets one
        writer in at a time), and once claimed no other claim takes them until ``until``: two flushes never
        send one mail, and a flush killed mid-batch leaves the rest to the first flush after ``until``."""
        skipped = list(exclude)
        params: dict[str, object] = {
            **{f"due_{n}": now - wait for n, wait in enumerate(retry_after)},
            "claim_limit": limit,
            "now": now,
            "until": until,
        }
        if skipped:
            params["skipped"] = skipped
        rows = self.session.execute(_claim_statement(len(retry_after), bool(skipped)), params).all()
        return sorted((ClaimedMail(*row) for row in rows), key=lambda mail: (mail.created_at, str(mail.id)))

    def settle(
        self, mail_id: uuid.UUID, *, attempts: int, status: str, error: str | None, sent_at: dt.datetime | None
    ) -> None:
        """A claimed mail after its try: sent, pending again (with the error, for a later try) or failed."""
        self.session.execute(
            _SETTLE, {"mail_id": mail_id, "attempts": attempts, "status": status, "error": error, "sent_at": sent_at}
        )

    def release(self, mail_ids: Sequence[uuid.UUID]) -> None:
        """Claimed mails this flush will not try after all (its time is up): any flush may take them now."""
        if mail_ids:
            self.session.execute(update(OUTBOX).where(OUTBOX.c.id.in_(list(mail_ids))).values(claimed_until=None))


# Settling a mail, built once (a statement per mail sent): on the table, not the mapped class, as no loaded
# row is to be kept in step.
_SETTLE = (
    update(OUTBOX)
    .where(OUTBOX.c.id == bindparam("mail_id"))
    .values(
        attempts=bindparam("attempts"),
        status=bindparam("status"),
        error=bindparam("error"),
        sent_at=bindparam("sent_at"),
        claimed_until=None,
    )
)


@dataclass(frozen=True)
class ClaimedMail:
    """A mail a flush claimed: what it sends, and how many times it was tried before."""

    id: uuid.UUID
    to_address: str
    subject: str
    body: str
    attempts: int
    created_at: dt.datetime
    correlation_id: str | None


@functools.lru_cache(maxsize=8)
def _claim_statement(steps: int, excluding: bool) -> Any:
    """The claim for a schedule of ``steps`` waits, built once: a mail tried ``n`` times is due once it was
    stored before ``due_n`` (the last for every further try). Its cutoffs, limit, times and skipped ids are
    bound at each claim, so a flush of many mails builds and compiles it once."""
    last = steps - 1
    due = or_(
        *[and_(Outbox.attempts == n, Outbox.created_at <= bindparam(f"due_{n}")) for n in range(last)],
        and_(Outbox.attempts >= last, Outbox.created_at <= bindparam(f"due_{last}")),
    )
    free = or_(Outbox.claimed_until.is_(None), Outbox.claimed_until <= bindparam("now"))
    chosen = select(Outbox.id).where(Outbox.status == "pending", due, free)
    if excluding:
        chosen = chosen.where(Outbox.id.not_in(bindparam("skipped", expanding=True)))
    chosen = chosen.order_by(Outbox.created_at).limit(bindparam("claim_limit")).with_for_update(skip_locked=True)
    return (
        update(Outbox)
        .where(Outbox.id.in_(chosen.scalar_subquery()))
        .values(claimed_until=bindparam("until"))
        .returning(
            Outbox.id,
            Outbox.to_address,
            Outbox.subject,
            Outbox.body,
            Outbox.attempts,
            Outbox.created_at,
            Outbox.correlation_id,
        )
    )
