"""The embedded mode's text path, in this process on SQLite (where the text's write is one statement per
step): a reply is kept once on the lead its agent texted, with its timeline, the S4 keyword and the agent's
mail, and its intake ends done; processed again (a replay) it writes nothing twice."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from models.db import make_engine
from models.migrate import upgrade
from models.org import apply_org
from models.orgsnapshot import SNAPSHOTS
from models.orgspec import parse_org
from models.tables import Entity, Intake, IntakeSource, IntakeStatus, Lead, Message, Outbox, TimelineEvent
from models.uow import UnitOfWork
from rules.texts import InboundText
from tests.support.orgs import brokerage
from workers import intakes, notifications

NUMBER, PHONE = "+15550100001", "+15552000001"
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], UnitOfWork]]:
    """A migrated SQLite database with the test brokerage (the company's smart number): units of work on it.
    The organisations this process keeps are dropped before and after (another database's accounts have
    the same ids), and no flush is published."""
    url = f"sqlite:///{tmp_path / 'texts.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = sessionmaker(engine, expire_on_commit=False)
    monkeypatch.setattr(notifications, "request_flush", lambda: None)
    org = brokerage()
    next(e for e in org["entities"] if e["id"] == "co")["smart_numbers"] = [NUMBER]
    SNAPSHOTS.clear()
    with UnitOfWork(factory) as uow:
        apply_org(uow.session, parse_org(org))
        uow.commit()
    yield lambda: UnitOfWork(factory)
    SNAPSHOTS.clear()
    engine.dispose()


def entity_id(uow: UnitOfWork, slug: str) -> int:
    return int(uow.session.execute(select(Entity.id).where(Entity.slug == slug)).scalar_one())


def jills_lead(uow: UnitOfWork) -> tuple[int, uuid.UUID]:
    """A company lead assigned to Jill with this phone, which Jill texted an hour ago: (account, lead)."""
    jill = entity_id(uow, "jill")
    account_id = uow.session.execute(select(Entity.account_id).where(Entity.id == jill)).scalar_one()
    lead = Lead(
        account_id=account_id,
        owner_entity_id=entity_id(uow, "co"),
        assigned_agent_id=jill,
        unique_key=f"p:{PHONE}",
        phone_e164=PHONE,
        first_name="Ann",
        last_name="Lee",
        source_kind="site",
        created_at=NOW - dt.timedelta(days=1),
        last_activity_at=NOW - dt.timedelta(days=1),
    )
    uow.session.add(lead)
    uow.session.flush()
    at = NOW - dt.timedelta(hours=1)
    uow.session.add(
        Message(
            account_id=account_id,
            lead_id=lead.id,
            direction="outbound",
            lead_phone=PHONE,
            smart_number=NUMBER,
            body="12 Oak St just listed",
            agent_id=jill,
            status="sent",
            created_at=at,
            updated_at=at,
        )
    )
    uow.commit()
    return account_id, lead.id


def stored(uow: UnitOfWork, account_id: int, body: str) -> uuid.UUID:
    sid = f"SM{uuid.uuid4().hex}"
    intake = Intake(
        account_id=account_id,
        source=IntakeSource.SMS,
        idempotency_key=sid,
        raw_body="",
        payload=InboundText(sid, NUMBER, PHONE, PHONE, body).to_dict(),
        content_type="application/x-www-form-urlencoded",
    )
    uow.session.add(intake)
    uow.commit()
    return intake.id


def count(uow: UnitOfWork, model: type, *where: object) -> int:
    return int(uow.session.execute(select(func.count()).select_from(model).where(*where)).scalar_one())  # type: ignore[arg-type]


def test_a_stop_reply_on_sqlite_is_kept_once_on_the_texted_lead_and_mailed_to_its_agent(
    embedded: Callable[[], UnitOfWork],
) -> None:
    with embedded() as uow:
        account_id, lead_id = jills_lead(uow)
        intake_id = stored(uow, account_id, "STOP")
    for run in (1, 2):  # the second is a replay
        with embedded() as uow:
            if run == 2:
                uow.intakes.reopen([intake_id])
                uow.commit()
            outcome = intakes.process_intake(uow, intake_id)
        assert (outcome.status, outcome.lead_id) == ("done", lead_id)
        with embedded() as uow:
            intake = uow.intakes.get(intake_id)
            assert intake is not None
            assert (intake.status, intake.lead_id, intake.attempts) == (IntakeStatus.DONE, lead_id, run)
            sid = intake.idempotency_key
            [message] = uow.session.execute(select(Message).where(Message.provider_sid == sid)).scalars()
            assert (message.lead_id, message.direction, message.agent_id) == (
                lead_id,
                "inbound",
                entity_id(uow, "jill"),
            )
            kinds = uow.session.execute(
                select(TimelineEvent.kind).where(TimelineEvent.intake_id == intake_id).order_by(TimelineEvent.id)
            ).scalars()
            assert list(kinds) == ["text_received", "sms_unsubscribed"]
            lead = uow.leads.get(lead_id)
            assert lead is not None
            assert lead.sms_unsubscribed is True
            assert lead.last_activity_at == intake.created_at
            [mail] = uow.session.execute(
                select(Outbox).where(Outbox.dedupe_key == f"text:{account_id}:{sid}")
            ).scalars()
            assert (mail.to_address, mail.subject) == ("jill@co.test", "A lead unsubscribed from texts")
