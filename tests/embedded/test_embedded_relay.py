"""The relay's pass on SQLite (the embedded mode), which has no ``SKIP LOCKED``: SQLite lets one writer at a
time (every transaction begins ``IMMEDIATE``: models.db.make_engine) and a claim is one UPDATE, so the passes
of several workers on one SQLite file run one after the other, and the second finds the rows the first
claimed not due. A SQLite file of the test's own,
migrated with Alembic; two sessions of one engine, as two worker processes would hold."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from models.db import make_engine
from models.migrate import upgrade
from models.repositories import WAITING_WORK, RelayRepository, conditions_at
from models.tables import Account, Intake, IntakeSource

pytestmark = pytest.mark.embedded

ROWS = 10


def test_two_passes_on_sqlite_run_one_after_the_other_and_never_claim_a_row_twice(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'relay.db'}"
    upgrade(url)
    engine = make_engine(url)
    now = dt.datetime.now(dt.UTC)
    with Session(engine) as setup:
        account = Account(slug="acct-sqlite-relay", name="SQLite relay")
        setup.add(account)
        setup.flush()
        setup.add_all(
            Intake(
                account_id=account.id,
                source=IntakeSource.REGISTRATION,
                raw_body="{}",
                payload={},
                created_at=now - dt.timedelta(hours=1),
            )
            for _ in range(ROWS)
        )
        setup.commit()
    table, conditions = WAITING_WORK["intakes"]

    def claim(session: Session) -> list[Any]:
        return RelayRepository(session).claim(
            table, conditions_at(conditions, now), cutoff=now - dt.timedelta(minutes=1), now=now, limit=100
        )

    theirs: list[Any] = []
    failed: list[BaseException] = []

    def second_pass() -> None:
        try:
            with Session(engine) as second:
                theirs.extend(claim(second))
                second.commit()
        except BaseException as exc:  # surfaced below
            failed.append(exc)

    with Session(engine) as first:
        mine = claim(first)  # holds SQLite's one write lock until it commits
        other = threading.Thread(target=second_pass)
        other.start()
        other.join(0.5)
        first.commit()
    other.join(30)
    engine.dispose()
    assert not other.is_alive()
    assert not failed, failed
    assert len(mine) == ROWS
    assert theirs == [], "the second pass waited for the first and found its rows claimed"
