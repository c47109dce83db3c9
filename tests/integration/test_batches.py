"""Live intakes in batches: a signup's task also takes the signups waiting beside it and decides them
together, exactly as deciding them one by one would, in a handful of statements.

The intakes here are stored as the API stores them, but without publishing their tasks, so that the
running workers leave them waiting; each test then runs what a task runs, in this process."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from celery.signals import before_task_publish
from sqlalchemy import delete, event, select
from sqlalchemy.orm import Session

from intake.schemas import RegistrationIn
from models.db import get_engine
from models.security import hash_secret
from models.tables import Intake, IntakeSource, IntakeStatus, Lead, TimelineEvent
from models.uow import UnitOfWork
from tests.support.client import Brokerage
from workers import intakes
from workers.app import (
    FLAG_TTL_MS,
    SIGNUPS,
    SIGNUPS_QUEUED_HEADER,
    claimed_from_now,
    publish_signup,
    shared_flags,
)

pytestmark = pytest.mark.usefixtures("api")


def store(b: Brokerage, bodies: list[dict[str, Any]]) -> list[uuid.UUID]:
    """Stored registrations, waiting (no task published)."""
    with UnitOfWork() as uow:
        key = uow.orgs.intake_key_by_hash(hash_secret(f"key-{b.s}"))
        assert key is not None
        ids = []
        for body in bodies:
            payload = RegistrationIn(**body).to_signup().to_dict() if "page_url" in body else body
            intake = Intake(
                account_id=key.account_id,
                source=IntakeSource.REGISTRATION,
                intake_key_id=key.id,
                raw_body="{}",
                payload=payload,
                content_type="application/json",
            )
            ids.append(uow.intakes.add(intake).id)
        uow.commit()
    return ids


def body(b: Brokerage, site: str, email: str, **fields: Any) -> dict[str, Any]:
    return {"page_url": f"https://{b.host(site)}/", "email": email, **fields}


def process(intake_id: uuid.UUID, batch_size: int | None = None) -> intakes.services.Outcome:
    with UnitOfWork() as uow:
        return intakes.process_intake(uow, intake_id, batch_size=batch_size)


def rows(ids: list[uuid.UUID]) -> list[Intake]:
    with UnitOfWork() as uow:
        found = {i.id: i for i in uow.session.execute(select(Intake).where(Intake.id.in_(ids))).scalars()}
        uow.session.expunge_all()
    return [found[i] for i in ids]


def assignments(b: Brokerage, ids: list[uuid.UUID]) -> list[tuple[str, str | None, str | None]]:
    """Per intake: its status, its lead's assignee (slug) and the rule that routed it."""
    out = []
    for intake in rows(ids):
        if intake.lead_id is None:
            out.append((intake.status.value, None, None))
            continue
        lead = b.lead(str(intake.lead_id))
        routed = [e for e in b.timeline(str(intake.lead_id)) if e["kind"] == "routed"]
        out.append((intake.status.value, (lead.get("assigned_agent") or {}).get("id"), routed[0]["data"].get("rule")))
    return out


@contextmanager
def counted() -> Iterator[list[str]]:
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]).split(None, 1)[0].upper())

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def mixed(b: Brokerage) -> list[dict[str, Any]]:
    """Signups of two owners (the company, the team) and two of the company's rules (Luxury, Everyone)."""
    return [
        body(b, "co", "p1@example.com", price_max=2_000_000),
        body(b, "sunrise", "p2@example.com"),
        body(b, "co", "p3@example.com"),
        body(b, "co", "p4@example.com", price_max=3_000_000),
        body(b, "sunrise", "p5@example.com"),
        body(b, "co", "p6@example.com", price_max=1_500_000),
        body(b, "co", "p7@example.com"),
        body(b, "downtown", "p8@example.com"),
    ]


def test_a_batch_spanning_two_owners_and_two_rules_decides_as_one_by_one_would(brokerage_factory: Any) -> None:
    batched, alone = brokerage_factory(), brokerage_factory()
    batch_ids = store(batched, mixed(batched))
    alone_ids = store(alone, mixed(alone))

    first = process(batch_ids[0])
    assert first.status == "done"
    assert first.created
    assert [i.status for i in rows(batch_ids)] == [IntakeStatus.DONE] * len(batch_ids)  # one task did all
    for intake_id in alone_ids:
        process(intake_id, batch_size=1)

    got = assignments(batched, batch_ids)
    assert got == assignments(alone, alone_ids)
    assert {rule for _, _, rule in got} >= {"Luxury", "Everyone"}
    assert {agent for _, agent, _ in got} >= {"john", "jill"}


def test_a_task_whose_intake_a_batch_finished_is_one_statement(acme: Brokerage) -> None:
    ids = store(acme, [body(acme, "co", f"n{i}@example.com") for i in range(3)])
    process(ids[0])
    with counted() as statements:
        outcome = process(ids[1])
    assert outcome.reason == "already processed"
    assert statements == ["SELECT"]


def test_a_batch_of_twenty_costs_a_handful_of_statements_not_twenty_times_one(acme: Brokerage) -> None:
    process(store(acme, [body(acme, "co", "warm@example.com")])[0])  # the organisation is loaded once per process
    ids = store(acme, [body(acme, "co", f"s{i}@example.com") for i in range(20)])
    with counted() as statements:
        process(ids[0])
    assert [i.status for i in rows(ids)] == [IntakeStatus.DONE] * 20
    # claim, people, cursor rows, rule cursors, leads by key, and the plan written in one statement.
    assert len(statements) <= 6, statements


def test_two_signups_of_one_person_in_a_batch_make_one_lead_and_one_signup_event(acme: Brokerage) -> None:
    ids = store(acme, [body(acme, "co", "twice@example.com"), body(acme, "co", "Twice@Example.com ", first_name="T")])
    process(ids[0])
    first, second = rows(ids)
    assert first.status is second.status is IntakeStatus.DONE
    assert first.lead_id == second.lead_id is not None
    kinds = [e["kind"] for e in acme.timeline(str(first.lead_id))]
    assert kinds.count("created") == 1
    assert kinds.count("signup") == 1
    with UnitOfWork() as uow:
        leads = uow.session.execute(select(Lead).where(Lead.email_normalized == "twice@example.com")).scalars().all()
        assert [lead.id for lead in leads if lead.account_id == first.account_id] == [first.lead_id]


def test_a_poison_intake_inside_a_batch_fails_alone_and_is_not_taken_by_the_next_batch(acme: Brokerage) -> None:
    good = [body(acme, "co", f"g{i}@example.com") for i in range(4)]
    ids = store(acme, [good[0], good[1], {"not": "a signup"}, good[2], good[3]])
    poison = ids[2]

    with published() as sent:
        process(ids[0])
    assert [arg for name, arg, _ in sent if name == "intake.process"] == [str(poison)]  # its task, to retry it alone
    statuses = [i.status for i in rows(ids)]
    assert statuses == [
        IntakeStatus.DONE,
        IntakeStatus.DONE,
        IntakeStatus.ACCEPTED,
        IntakeStatus.DONE,
        IntakeStatus.DONE,
    ]
    assert rows([poison])[0].attempts == 1  # tried alone once: no batch takes it again

    later = store(acme, [body(acme, "co", "later@example.com")])
    with counted():
        process(later[0])
    assert rows(later)[0].status is IntakeStatus.DONE
    assert rows([poison])[0].attempts == 1

    with pytest.raises(TypeError):  # its own task meets the payload alone, and retries
        process(poison)
    with UnitOfWork() as uow:
        made = uow.session.execute(select(TimelineEvent.kind).where(TimelineEvent.intake_id.in_(ids))).scalars().all()
    assert sorted(made) == sorted(["created", "routed"] * 4)
    forget(poison)


def forget(intake_id: uuid.UUID) -> None:
    """Delete a poison intake: the task the split sent it retries it on the session's workers for a minute
    (its backoff), keeping the broker busy under the tests that follow; a task for a missing intake ends."""
    with UnitOfWork() as uow:
        uow.session.execute(delete(Intake).where(Intake.id == intake_id))
        uow.commit()


def test_a_companion_finished_by_its_own_task_while_a_failed_batch_is_split_is_not_run_again(
    acme: Brokerage,
) -> None:
    """A batch fails (here a poison intake; under load, a terminated connection) and releases its locks.
    The companion's own task takes it at once and finishes it. When the split reaches that companion, the
    lock it takes returns the row as it is now (done), not as this session first loaded it (accepted)."""
    ids = store(
        acme,
        [body(acme, "co", "first@example.com"), body(acme, "co", "second@example.com"), {"not": "a signup"}],
    )
    first, companion = ids[0], ids[1]
    ran: list[intakes.services.Outcome] = []
    started: list[bool] = []

    def companion_task_runs_now(_: Session) -> None:
        # Once, after the split's first commit: the companion's own task, in a session of its own.
        if not started:
            started.append(True)
            ran.append(process(companion))

    event.listen(Session, "after_commit", companion_task_runs_now)
    try:
        assert process(first).status == "done"
    finally:
        event.remove(Session, "after_commit", companion_task_runs_now)
    assert [o.status for o in ran] == ["done"]
    (row,) = rows([companion])
    assert (row.status, row.attempts, row.reason) == (IntakeStatus.DONE, 1, None)  # run once, not twice
    with UnitOfWork() as uow:
        kinds = uow.session.execute(select(TimelineEvent.kind).where(TimelineEvent.lead_id == row.lead_id)).scalars()
        assert sorted(kinds) == ["created", "routed"]
    forget(ids[2])


def finished_within(ids: list[uuid.UUID], seconds: float) -> list[IntakeStatus]:
    deadline = time.monotonic() + seconds
    while True:
        statuses = [i.status for i in rows(ids)]
        if all(s is not IntakeStatus.ACCEPTED for s in statuses) or time.monotonic() > deadline:
            return statuses
        time.sleep(0.1)


@contextmanager
def published() -> Iterator[list[tuple[str, str, dict[str, Any]]]]:
    """The tasks this process publishes while the block runs: (name, first argument, headers)."""
    sent: list[tuple[str, str, dict[str, Any]]] = []

    def record(sender: str, body: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
        args = body[0] if body else ()
        sent.append((sender, args[0] if args else "", dict(headers or {})))

    before_task_publish.connect(record, weak=False)
    try:
        yield sent
    finally:
        before_task_publish.disconnect(record)


def test_signups_that_come_while_a_task_of_their_account_is_queued_publish_none_and_that_task_takes_them(
    acme: Brokerage,
) -> None:
    ids = store(acme, [body(acme, "co", f"q{i}@example.com") for i in range(4)])
    account = rows(ids[:1])[0].account_id
    flags = shared_flags(SIGNUPS)
    assert flags is not None, "the integration broker is Redis"
    client, prefix = flags
    client.set(f"{prefix}{account}", str(ids[0]), px=FLAG_TTL_MS)  # ids[0]'s task: queued
    with published() as sent:
        for intake_id in ids[1:]:
            assert publish_signup(intake_id, account)
    assert sent == []  # each is covered by the queued task

    process(ids[0])  # the queued task runs: it takes the signups that came while it waited
    assert [i.status for i in rows(ids)] == [IntakeStatus.DONE] * 4

    claimed_from_now(account, SIGNUPS)  # what that task did first; from now on a signup publishes again
    (later,) = store(acme, [body(acme, "co", "after@example.com")])
    with published() as sent:
        assert publish_signup(later, account)
    client.pexpire(f"{prefix}{account}", 600_000)  # the flag outlives the test unless its task clears it
    assert sent == [("intake.process", str(later), sent[0][2])]
    assert sent[0][2][SIGNUPS_QUEUED_HEADER] == account
    assert finished_within([later], 30) == [IntakeStatus.DONE]
    assert not client.exists(f"{prefix}{account}")  # the running worker's task cleared it before its claim


def test_a_full_batch_sends_its_task_again_for_the_signups_it_could_not_take(acme: Brokerage) -> None:
    ids = store(acme, [body(acme, "co", f"full{i}@example.com") for i in range(5)])  # none has a task
    with published() as sent:
        process(ids[0], batch_size=2)
    assert [(name, arg) for name, arg, _ in sent if name == "intake.process"] == [("intake.process", str(ids[0]))]
    # The running workers take that task: its intake is done, so it takes the three still waiting.
    assert finished_within(ids, 30) == [IntakeStatus.DONE] * 5
