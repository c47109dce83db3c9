"""The relay: kept work whose task was lost is sent again, once per pass, and relays on
several hosts share the work (FOR UPDATE SKIP LOCKED). Real PostgreSQL, Redis and Celery workers."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from models.tables import Intake, IntakeSource, IntakeStatus, Outbox
from models.uow import UnitOfWork
from rules.events import LeadSignup
from tests.integration.conftest import SmtpSink
from tests.support.client import Brokerage
from tests.support.processes import wait_for
from workers import relay
from workers.app import publish

LONG_AGO = dt.timedelta(minutes=30)
AFTER = dt.timedelta(minutes=20)  # only the rows these tests stored "long ago" are old enough


def _lost_intake(b: Brokerage, email: str) -> uuid.UUID:
    """An intake committed as the API commits one, whose task never reached the broker."""
    host = b.host("co")
    signup = LeadSignup(source_kind="site", page_url=f"https://{host}/", host=host, email=email, email_normalized=email)
    with UnitOfWork() as uow:
        account = uow.orgs.account_by_slug(b.org["account"])
        assert account is not None
        intake = uow.intakes.add(
            Intake(
                account_id=account.id,
                source=IntakeSource.REGISTRATION,
                raw_body="{}",
                payload=signup.to_dict(),
                created_at=dt.datetime.now(dt.UTC) - LONG_AGO,
            )
        )
        uow.commit()
        return intake.id


def test_a_lost_intake_is_relayed_once_and_becomes_a_lead(acme: Brokerage) -> None:
    intake_id = _lost_intake(acme, "relayed@example.com")
    sent = relay.sweep(after=AFTER)
    assert sent["intakes"] >= 1
    final = acme.wait_done(str(intake_id))
    assert final["status"] == "done"
    assert final["lead_id"] is not None
    assert acme.lead(final["lead_id"])["email"] == "relayed@example.com"
    with UnitOfWork() as uow:
        row = uow.intakes.get(intake_id)
        assert row is not None
        assert row.relayed_at is not None
        assert row.status is IntakeStatus.DONE
    # Done now, and relayed just now anyway: the next pass leaves it alone.
    again = _lost_intake(acme, "relayed-twice@example.com")
    first = relay.sweep(after=AFTER)
    second = relay.sweep(after=AFTER)
    assert first["intakes"] >= 1
    assert second["intakes"] == 0, "a row relayed in this pass waits another period"
    assert acme.wait_done(str(again))["status"] == "done"


def test_two_relays_never_claim_the_same_row(acme: Brokerage) -> None:
    ids = {_lost_intake(acme, f"shared-{i}@example.com") for i in range(6)}
    now = dt.datetime.now(dt.UTC)
    cutoff = now - AFTER
    waiting = relay.WAITING["intakes"]
    with UnitOfWork() as first, UnitOfWork() as second:
        # The first relay holds its claim (not committed yet) while the second one passes.
        mine = {row.id for row in first.relay.claim(waiting[0], waiting[1], cutoff=cutoff, now=now, limit=3)}
        theirs = {row.id for row in second.relay.claim(waiting[0], waiting[1], cutoff=cutoff, now=now, limit=100)}
        assert len(mine) == 3
        assert not mine & theirs, "SKIP LOCKED: a row claimed by one relay is skipped by the other"
        assert ids <= mine | theirs
        first.commit()
        second.commit()
    for intake_id in ids:  # send them, as the relays would after their commit, so the run leaves nothing waiting
        publish("intake.process", intake_id)
    for intake_id in ids:
        assert acme.wait_done(str(intake_id))["status"] == "done"


def test_mail_whose_task_was_lost_is_relayed_and_sent(acme: Brokerage, smtp_server: SmtpSink) -> None:
    subject = f"relayed mail {uuid.uuid4().hex[:8]}"
    with UnitOfWork() as uow:
        account = uow.orgs.account_by_slug(acme.org["account"])
        assert account is not None
        row = Outbox(
            account_id=account.id,
            dedupe_key=f"test:{subject}",
            to_address="jill@co.test",
            subject=subject,
            body="A mail whose task never reached the broker.",
            created_at=dt.datetime.now(dt.UTC) - LONG_AGO,
        )
        uow.session.add(row)
        uow.commit()
        outbox_id = row.id
    assert relay.sweep(after=AFTER)["mail"] >= 1

    def sent() -> Any:
        return any(m["Subject"] == subject for m in smtp_server.messages())

    wait_for(sent, timeout=60, what="the relayed mail")
    with UnitOfWork() as uow:
        kept = uow.session.get(Outbox, outbox_id)
        assert kept is not None
        assert kept.status == "sent"
