"""Inbound texts in batches: a text's task also takes the texts of its account waiting beside it, and routes
them in arrival order exactly as one by one would, in one transaction.

The texts here are stored as the webhook stores them, but without publishing their tasks, so that the
running workers leave them waiting; each test then runs what a task runs, in this process."""

from __future__ import annotations

import json
import urllib.parse
import uuid
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select

from models.tables import Intake, IntakeSource, IntakeStatus, TimelineEvent
from models.uow import UnitOfWork
from rules.texts import InboundText
from tests.integration.test_batches import counted, finished_within, forget, process, published, rows
from tests.integration.test_sms_inbound import Texting, fresh_number, texting
from tests.integration.test_webhooks import account, deliveries, path_of, receiver
from workers import tasks
from workers.app import FLAG_TTL_MS, TEXTS, TEXTS_QUEUED_HEADER, claimed_from_now, shared_flags
from workers.relay import send_text

pytestmark = pytest.mark.integration
__all__ = ["account", "receiver", "texting"]  # the fixtures, used by name


def store_texts(t: Texting, texts: list[tuple[str | None, str, str]]) -> list[uuid.UUID]:
    """Texts (phone, body, the smart number's entity) stored as the webhook stores them, oldest first, their
    tasks not published; a phone of None is a sender that is no phone number (D9)."""
    ids = []
    with UnitOfWork() as uow:
        for phone, body, to in texts:
            sender = phone or "whatsapp:not-a-number"
            fields = t.inbound(sender, body, to=to)
            sid = fields["MessageSid"]
            intake = Intake(
                account_id=t.account_id,
                source=IntakeSource.SMS,
                idempotency_key=sid,
                raw_body=urllib.parse.urlencode(fields),
                payload=InboundText(sid, fields["To"], sender, phone, body).to_dict(),
                content_type="application/x-www-form-urlencoded",
            )
            ids.append(uow.intakes.add(intake).id)
            uow.flush()
        uow.commit()
    return ids


def routed(t: Texting, ids: list[uuid.UUID], names: dict[str, str]) -> list[tuple[Any, ...]]:
    """Per text: its status, its lead (by name, a lead the texts made is "new"), the rule that routed it, and
    for a keyword whether its note says the subscription changed."""
    out = []
    for intake in rows(ids):
        assert intake.lead_id is not None, intake.status
        with UnitOfWork() as uow:
            kinds = dict(
                uow.session.execute(
                    select(TimelineEvent.kind, TimelineEvent.data).where(TimelineEvent.intake_id == intake.id)
                ).all()
            )
        note = kinds.get("sms_unsubscribed") or kinds.get("sms_resubscribed")
        out.append(
            (
                intake.status.value,
                names.get(str(intake.lead_id), "new"),
                kinds["text_received"]["rule"],
                note["changed"] if note else None,
            )
        )
    return out


def scenario(t: Texting) -> tuple[list[uuid.UUID], dict[str, str]]:
    """A phone with two leads (John's, then the company's) never texted, and an unknown phone: texts whose
    routes depend on the texts before them (S2's most recently active lead, STOP twice, O6 then S2)."""
    known, unknown = fresh_number(), fresh_number()
    johns = t.signup("john", "batch@example.com", known)
    company = t.signup("co", "batch@example.com", known)
    ids = store_texts(
        t,
        [
            (known, "Hi", "downtown"),  # S2: neither is downtown's; the most recently active, the company's
            (known, "Hi John", "john"),  # S2: John's lead, which it makes the most recently active
            (known, "Anyone?", "downtown"),  # S2: the most recently active now: John's
            (known, "STOP", "john"),  # S4 on John's lead: changed
            (known, "STOP", "john"),  # S4 again: it already was
            (unknown, "Saw your sign", "co"),  # O6: a new lead
            (unknown, "Me again", "co"),  # S2: on the lead the text before made
        ],
    )
    return ids, {johns: "johns", company: "company"}


def test_a_batch_of_texts_routes_two_texts_from_one_phone_in_order_as_one_by_one_would(texting: Any) -> None:
    batched, alone = texting(), texting()
    batch_ids, batch_names = scenario(batched)
    alone_ids, alone_names = scenario(alone)

    first = process(batch_ids[0])
    assert first.status == "done"
    assert [i.status for i in rows(batch_ids)] == [IntakeStatus.DONE] * len(batch_ids)  # one task did all
    for intake_id in alone_ids:
        assert process(intake_id, batch_size=1).status == "done"

    got = routed(batched, batch_ids, batch_names)
    assert got == routed(alone, alone_ids, alone_names)
    assert got == [
        ("done", "company", "S2", None),
        ("done", "johns", "S2", None),
        ("done", "johns", "S2", None),
        ("done", "johns", "S2", True),
        ("done", "johns", "S2", False),
        ("done", "new", "O6", None),
        ("done", "new", "S2", None),
    ]
    new_leads = {i.lead_id for i in rows(batch_ids[5:])}
    assert len(new_leads) == 1  # one lead for the unknown phone's two texts
    kinds = [e["kind"] for e in batched.timeline(str(new_leads.pop()))]
    assert sorted(kinds) == sorted(["created", "routed", "text_received", "text_received"])


def test_a_poison_text_inside_a_batch_is_retried_alone_and_ends_dead_alone(texting: Any) -> None:
    t = texting()
    phone = fresh_number()
    t.signup("co", "poison@example.com", phone)
    ids = store_texts(t, [(phone, "One", "co"), (phone, "Two", "co"), (phone, "Three", "co")])
    poison = ids[1]
    with UnitOfWork() as uow:
        row = uow.intakes.get(poison)
        assert row is not None
        row.payload = {"not": "a text"}
        uow.commit()

    with published() as sent:
        assert process(ids[0]).status == "done"
    assert [arg for name, arg, _ in sent if name == "intake.process"] == [str(poison)]  # its task, to retry it alone
    assert [i.status for i in rows(ids)] == [IntakeStatus.DONE, IntakeStatus.ACCEPTED, IntakeStatus.DONE]
    assert rows([poison])[0].attempts == 1  # tried alone once: no batch takes it again

    later = store_texts(t, [(phone, "Four", "co")])
    assert process(later[0]).status == "done"
    assert rows([poison])[0].attempts == 1

    with pytest.raises(KeyError):  # its own task meets the payload alone, and retries
        process(poison)
    # Its last try: the task ends it dead, and it alone.
    assert tasks.process_intake.apply(args=[str(poison)], retries=tasks.process_intake.ceiling).get() == "dead"
    assert [i.status for i in rows(ids + later)] == [
        IntakeStatus.DONE,
        IntakeStatus.DEAD,
        IntakeStatus.DONE,
        IntakeStatus.DONE,
    ]
    with UnitOfWork() as uow:
        made = uow.session.execute(select(TimelineEvent.intake_id).where(TimelineEvent.intake_id.in_(ids))).scalars()
        assert sorted(map(str, made)) == sorted([str(ids[0]), str(ids[2])])
    forget(poison)


def test_a_redelivered_task_for_a_text_a_batch_finished_is_one_statement(texting: Any) -> None:
    t = texting()
    phone = fresh_number()
    t.signup("co", "again@example.com", phone)
    ids = store_texts(t, [(phone, f"Text {i}", "co") for i in range(3)])
    process(ids[0])
    with counted() as statements:
        outcome = process(ids[1])
    assert outcome.reason == "already processed"
    assert statements == ["SELECT"]


def test_texts_that_come_while_a_task_of_their_accounts_texts_is_queued_publish_none(texting: Any) -> None:
    t = texting()
    phone = fresh_number()
    t.signup("co", "queued@example.com", phone)
    ids = store_texts(t, [(phone, f"Queued {i}", "co") for i in range(4)])
    account = t.account_id
    flags = shared_flags(TEXTS)
    assert flags is not None, "the integration broker is Redis"
    client, prefix = flags
    client.set(f"{prefix}{account}", str(ids[0]), px=FLAG_TTL_MS)  # ids[0]'s task: queued
    with published() as sent:
        for intake_id in ids[1:]:
            assert send_text(intake_id, account)
    assert sent == []  # each is covered by the queued task

    process(ids[0])  # the queued task runs: it takes the texts that came while it waited
    assert [i.status for i in rows(ids)] == [IntakeStatus.DONE] * 4

    claimed_from_now(account, TEXTS)  # what that task did first; from now on a text publishes again
    (later,) = store_texts(t, [(phone, "After", "co")])
    with published() as sent:
        assert send_text(later, account)
    client.pexpire(f"{prefix}{account}", 600_000)  # the flag outlives the test unless its task clears it
    assert [(name, arg) for name, arg, _ in sent] == [("intake.process", str(later))]
    assert sent[0][2][TEXTS_QUEUED_HEADER] == account
    assert finished_within([later], 30) == [IntakeStatus.DONE]
    assert not client.exists(f"{prefix}{account}")  # the running worker's task cleared it before its claim


def test_a_text_a_batch_rejects_is_an_intake_rejected_webhook_beside_the_others_text_received(account: Any) -> None:
    t: Texting = account(path_of())
    phone = fresh_number()
    t.signup("co", "rejected@example.com", phone)
    ids = store_texts(t, [(phone, "Hello", "co"), (None, "Hi", "co"), (phone, "Again", "co")])
    process(ids[0])
    assert [i.status for i in rows(ids)] == [IntakeStatus.DONE, IntakeStatus.REJECTED, IntakeStatus.DONE]
    assert rows(ids[1:2])[0].reason.startswith("D9")
    made = deliveries(t)
    rejected = [d for d in made if d.event_type == "intake.rejected"]
    assert len(rejected) == 1
    assert str(ids[1]) in json.dumps(rejected[0].data)
    assert Counter(d.event_type for d in made)["text.received"] == 2
