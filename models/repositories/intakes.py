"""The intakes' queries: kept once per idempotency key, locked while a worker processes one, reopened for a replay."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.orm import Session

from models.repositories.common import INTAKES, with_scalar_defaults
from models.tables import Account, Intake, IntakeSource, IntakeStatus


@functools.cache
def _insert_unless_kept(names: tuple[str, ...]) -> Any:
    """INSERT ... ON CONFLICT (account, source, idempotency key) DO NOTHING RETURNING id, for these columns,
    as text with typed binds: SQLAlchemy compiles its own ON CONFLICT again for every request, a text once."""
    columns = [INTAKES.c[n] for n in names]  # the table's own column names only (a KeyError otherwise)
    sql = (
        f"INSERT INTO {INTAKES.name} ({', '.join(c.name for c in columns)}) "  # noqa: S608 - column names, no values
        f"VALUES ({', '.join(':' + c.name for c in columns)}) "
        "ON CONFLICT (account_id, source, idempotency_key) DO NOTHING RETURNING id"
    )
    return text(sql).bindparams(*(bindparam(c.name, type_=c.type) for c in columns)).columns(INTAKES.c.id)


class IntakeRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, intake: Intake) -> Intake:
        self.session.add(intake)
        self.session.flush()
        return intake

    def add_idempotent(self, values: dict[str, Any]) -> tuple[uuid.UUID, bool]:
        """Insert unless (account, source, idempotency key) exists; the id and whether it is new."""
        now = dt.datetime.now(dt.UTC)
        row = with_scalar_defaults(
            INTAKES, {"id": uuid.uuid4(), "payload": {}, "created_at": now, "updated_at": now, **values}
        )
        names = tuple(sorted(row))
        inserted = self.session.execute(_insert_unless_kept(names), row).scalar_one_or_none()
        if inserted is not None:
            return inserted, True
        existing = self.session.execute(
            select(Intake.id).where(
                Intake.account_id == values["account_id"],
                Intake.source == values["source"],
                Intake.idempotency_key == values["idempotency_key"],
            )
        ).scalar_one()
        return existing, False

    def get(self, intake_id: uuid.UUID) -> Intake | None:
        return self.session.get(Intake, intake_id)

    def get_for_update(self, intake_id: uuid.UUID) -> Intake | None:
        """The intake, locked: a redelivered task waits for the first run and then sees it done."""
        return self.session.execute(
            select(Intake).where(Intake.id == intake_id).with_for_update().execution_options(populate_existing=True)
        ).scalar_one_or_none()

    def get_for_update_with_account(self, intake_id: uuid.UUID) -> tuple[Intake, Account] | None:
        """The intake, locked as :meth:`get_for_update` locks it, and its account (its duplication flag and
        ``org_version``) read by the same statement; the account row is not locked."""
        row = self.session.execute(
            select(Intake, Account)
            .join(Account, Account.id == Intake.account_id)
            .where(Intake.id == intake_id)
            .with_for_update(of=Intake)
            .execution_options(populate_existing=True)  # what the lock returns, whatever this session loaded before
        ).one_or_none()
        return (row[0], row[1]) if row is not None else None

    def reopen(self, ids: Sequence[uuid.UUID]) -> None:
        """Back to accepted, reason cleared, in one statement. Marked as sent now (``relayed_at``): the
        caller publishes each one's task, so the relay need not send it again at once."""
        if ids:
            self.session.execute(
                update(Intake)
                .where(Intake.id.in_(list(ids)))
                .values(status=IntakeStatus.ACCEPTED, reason=None, relayed_at=dt.datetime.now(dt.UTC))
            )

    def with_status(
        self,
        statuses: Iterable[str],
        *,
        since: dt.datetime | None = None,
        account_id: int | None = None,
        limit: int = 1000,
    ) -> list[tuple[uuid.UUID, IntakeSource]]:
        """(id, source) of the intakes in ``statuses``, oldest first; of one account when given."""
        stmt = (
            select(Intake.id, Intake.source)
            .where(Intake.status.in_(list(statuses)))
            .order_by(Intake.created_at)
            .limit(limit)
        )
        if since is not None:
            stmt = stmt.where(Intake.created_at >= since)
        if account_id is not None:
            stmt = stmt.where(Intake.account_id == account_id)
        return [(key, source) for key, source in self.session.execute(stmt).all()]
