"""Outbound webhooks' deliveries as the embedded mode writes them, in this process on SQLite: a signup's
deliveries are rows of the plan its writer writes (one statement per step here), committed with the lead,
and their tasks are published only after that commit; an account with no endpoint writes none."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from intake.schemas import RegistrationIn
from models.db import make_engine
from models.migrate import upgrade
from models.org import apply_org
from models.orgsnapshot import SNAPSHOTS
from models.orgspec import parse_org
from models.secrets import Keyring, generate_key
from models.tables import Intake, IntakeSource, WebhookDelivery
from models.uow import UnitOfWork
from tests.support.orgs import brokerage, suffix_of
from workers import intakes, notifications, webhooks

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Callable[[], UnitOfWork], list[Any]]]:
    """A migrated SQLite database: units of work on it, and the delivery ids published (in order, with
    whether the delivery was committed when its publish came)."""
    url = f"sqlite:///{tmp_path / 'hooks.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = sessionmaker(engine, expire_on_commit=False)
    published: list[Any] = []

    def send_all(ids: Any) -> None:
        for key in ids:
            with UnitOfWork(factory) as uow:
                row = uow.session.execute(select(WebhookDelivery).where(WebhookDelivery.id == key)).scalar_one_or_none()
                published.append((key, row is not None))

    monkeypatch.setattr(webhooks, "send_all", send_all)
    monkeypatch.setattr(notifications, "request_flush", lambda: None)
    SNAPSHOTS.clear()
    yield (lambda: UnitOfWork(factory)), published
    SNAPSHOTS.clear()
    engine.dispose()


def account(uow: UnitOfWork, *, webhook: bool) -> dict[str, Any]:
    org = brokerage()
    if webhook:
        org["webhooks"] = [{"id": "crm", "url": "https://crm.example.com/in", "events": ["*"], "secrets": [SECRET]}]
    apply_org(uow.session, parse_org(org), Keyring([generate_key()]))
    uow.commit()
    return org


def registration(uow: UnitOfWork, org: dict[str, Any], host: str, email: str) -> uuid.UUID:
    acct = uow.orgs.account_by_slug(org["account"])
    assert acct is not None
    body = {"page_url": f"https://{host}/listings", "email": email, "first_name": "Ann", "phone": "+15555550100"}
    intake = Intake(
        account_id=acct.id,
        source=IntakeSource.REGISTRATION,
        raw_body="{}",
        payload=RegistrationIn.model_validate(body).to_signup().to_dict(),
    )
    uow.session.add(intake)
    uow.commit()
    return intake.id


def rows_of(uow: UnitOfWork, org: dict[str, Any]) -> list[WebhookDelivery]:
    acct = uow.orgs.account_by_slug(org["account"])
    assert acct is not None
    rows = list(
        uow.session.execute(
            select(WebhookDelivery).where(WebhookDelivery.account_id == acct.id).order_by(WebhookDelivery.seq)
        ).scalars()
    )
    uow.session.expunge_all()  # kept as read: the unit of work's end rolls back and would expire them
    return rows


def test_a_signups_deliveries_are_committed_with_its_lead_and_published_after(embedded: Any) -> None:
    units, published = embedded
    with units() as uow:
        org = account(uow, webhook=True)
        intake_id = registration(uow, org, f"co-{suffix_of(org)}.test", "ann@example.com")
    with units() as uow:
        outcome = intakes.process_intake(uow, intake_id)
    assert outcome.status == "done"
    with units() as uow:
        rows = rows_of(uow, org)
    assert [r.event_type for r in rows] == ["lead.created", "lead.assigned"]
    created, assigned = rows
    assert created.data["lead_id"] == str(outcome.lead_id)
    assert created.data["owner"] == "co"
    assert created.data["lead"] == {
        "first_name": "Ann",
        "last_name": None,
        "email": "ann@example.com",
        "phone": "+15555550100",
    }
    assert created.data["intake_id"] == str(intake_id)
    assert assigned.data["assignee"] is not None
    assert assigned.seq > created.seq
    assert all(r.status == "pending" and r.attempts == 0 for r in rows)
    assert published == [(created.id, True), (assigned.id, True)], "published once each, after the commit"

    # A repeat signup of the person (D4): one lead.signup on the same lead, naming its owner and assignee.
    with units() as uow:
        again = registration(uow, org, f"co-{suffix_of(org)}.test", "ANN@example.com")
    with units() as uow:
        assert intakes.process_intake(uow, again).lead_id == outcome.lead_id
    with units() as uow:
        signup = rows_of(uow, org)[-1]
    assert signup.event_type == "lead.signup"
    assert (signup.data["rule"], signup.data["owner"], signup.data["assignee"]) == (
        "D4",
        "co",
        assigned.data["assignee"],
    )


def test_an_unclaimed_signup_is_an_intake_rejected_event(embedded: Any) -> None:
    units, _ = embedded
    with units() as uow:
        org = account(uow, webhook=True)
        intake_id = registration(uow, org, "unknown-site.example", "fay@example.com")
    with units() as uow:
        assert intakes.process_intake(uow, intake_id).status == "rejected"
    with units() as uow:
        [row] = rows_of(uow, org)
    assert row.event_type == "intake.rejected"
    assert row.lead_id is None
    assert (row.data["intake_id"], row.data["rule"]) == (str(intake_id), "O9")


def test_an_account_with_no_endpoint_writes_no_delivery(embedded: Any) -> None:
    units, published = embedded
    with units() as uow:
        org = account(uow, webhook=False)
        intake_id = registration(uow, org, f"co-{suffix_of(org)}.test", "bo@example.com")
    with units() as uow:
        assert intakes.process_intake(uow, intake_id).status == "done"
    with units() as uow:
        assert rows_of(uow, org) == []
    assert published == []
