"""The mail outbox's claims, on PostgreSQL in a database of its own (no worker of the session's pool sends
its mail): a flush claims a batch for a while, so no other flush sends those mails meanwhile, and a
batch whose flush died is sent once its claim is over, each mail once; two flushes claiming at the same
moment split the mail between them."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.orm import sessionmaker

from models.db import make_engine
from models.migrate import upgrade
from models.tables import Outbox
from models.uow import UnitOfWork
from tests.integration.conftest import PG_ADMIN
from workers import notifications

pytestmark = pytest.mark.integration

LEASE = dt.timedelta(minutes=5)


@pytest.fixture
def outbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], UnitOfWork]]:
    """Units of work on a migrated database with one account and three pending mails; flushes run here use
    it (the log backend: no SMTP server)."""
    name = f"leadrelay_mail_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        upgrade(url)
        engine = make_engine(url, pool_size=2)
        factory = sessionmaker(engine, expire_on_commit=False)
        monkeypatch.setattr(notifications, "UnitOfWork", lambda: UnitOfWork(factory))
        with UnitOfWork(factory) as uow:
            uow.session.execute(
                text(
                    "INSERT INTO accounts (id, slug, name, duplication, org_version, sms_auth_token_envs, created_at) "
                    "VALUES (1, 'mail', 'Mail', true, 1, '[]', now())"
                )
            )
            for n in range(3):
                uow.outbox.add_mail_once(
                    account_id=1,
                    dedupe_key=f"assigned:{n}",
                    to_address=f"agent{n}@example.com",
                    subject=f"New lead {n}",
                    body="A new lead",
                    correlation_id=None,
                )
            uow.commit()
        yield lambda: UnitOfWork(factory)
        engine.dispose()
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def statuses(uow: UnitOfWork) -> list[tuple[str, str, int]]:
    rows = uow.session.execute(select(Outbox.dedupe_key, Outbox.status, Outbox.attempts).order_by(Outbox.dedupe_key))
    return [(key, status, attempts) for key, status, attempts in rows]


def claim(uow: UnitOfWork, limit: int = 50) -> list[notifications.ClaimedMail]:
    now = dt.datetime.now(dt.UTC)
    return uow.outbox.claim(now=now, retry_after=notifications.retry_schedule(), until=now + LEASE, limit=limit)


def test_a_batch_whose_flush_died_is_sent_once_its_claim_is_over_and_not_before(
    outbox: Callable[[], UnitOfWork],
) -> None:
    # A flush claimed the three mails, sent the first and was killed before the others.
    with outbox() as uow:
        first, *_rest = claim(uow)
        uow.commit()
        uow.outbox.settle(first.id, attempts=1, status="sent", error=None, sent_at=dt.datetime.now(dt.UTC))
        uow.commit()

    assert notifications.flush().sent == 0, "the dead flush's claim still holds the other two"

    with outbox() as uow:
        uow.session.execute(update(Outbox).values(claimed_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
        uow.commit()
    assert notifications.flush().sent == 2, "the two it did not send, and not the one it sent"
    assert notifications.flush().sent == 0
    with outbox() as uow:
        assert statuses(uow) == [("assigned:0", "sent", 1), ("assigned:1", "sent", 1), ("assigned:2", "sent", 1)]


def test_two_flushes_claiming_at_once_split_the_mail(outbox: Callable[[], UnitOfWork]) -> None:
    with outbox() as one, outbox() as two:
        mine = claim(one, limit=2)  # not committed yet: its rows are locked
        theirs = claim(two)  # skips them
        one.commit()
        two.commit()
        assert len(mine) == 2
        assert len(theirs) == 1
        assert not {m.id for m in mine} & {m.id for m in theirs}
    with outbox() as uow:
        assert claim(uow) == [], "every mail is claimed by one flush or the other"


def test_a_mail_whose_claim_is_given_back_is_sent_by_the_next_flush(outbox: Callable[[], UnitOfWork]) -> None:
    with outbox() as uow:
        claimed = claim(uow)
        uow.commit()
        uow.outbox.release([m.id for m in claimed])
        uow.commit()
    assert notifications.flush().sent == 3


def test_a_flush_whose_time_is_up_gives_its_batch_back_for_the_next(outbox: Callable[[], UnitOfWork]) -> None:
    spent = notifications.flush(budget=0)
    assert (spent.sent, spent.more) == (0, True), "nothing sent once the budget is spent, and more to do"
    assert notifications.flush().sent == 3, "the batch given back is not held by a lease"
