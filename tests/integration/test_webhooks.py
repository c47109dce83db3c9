"""Outbound webhooks end to end: real PostgreSQL, Redis, Celery workers and API, and a real HTTP receiver
that verifies every delivery with the ``standardwebhooks`` package, as a brokerage's own system would.

The run's workers have ``LEADRELAY_WEBHOOKS_ALLOW_PRIVATE=true`` (the receiver listens on 127.0.0.1 over
http) and short retry waits (``LEADRELAY_WEBHOOKS_RETRY_SECONDS``, tests/integration/conftest.py)."""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from standardwebhooks import WebhookVerificationError

from leadrelay.settings import get_settings
from models.tables import WebhookDelivery, WebhookEndpoint
from models.uow import UnitOfWork
from tests.integration.conftest import apply
from tests.integration.test_sms_inbound import Texting, fresh_number, texting_org
from tests.support.leads import make_lead
from tests.support.processes import free_port, wait_for
from tests.support.receiver import Received, Receiver

SECRET = "whsec_" + base64.b64encode(b"leadrelay-test-webhook-secret-1!").decode()
NEXT_SECRET = "whsec_" + base64.b64encode(b"leadrelay-test-webhook-secret-2!").decode()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def account(api: str, receiver: Receiver) -> Iterator[Any]:
    """``account(path, secrets=..., events=...)``: a texting account whose one webhook posts to ``path``."""
    made: list[Texting] = []

    def make(
        path: str, *, secrets: list[str] | None = None, events: list[str] | None = None, url: str | None = None
    ) -> Texting:
        org = texting_org()
        numbers = org.pop("_numbers")
        org["webhooks"] = [
            {"id": "crm", "url": url or receiver.url(path), "events": events or ["*"], "secrets": secrets or [SECRET]}
        ]
        t = Texting(api, apply(org))
        t.numbers = numbers
        made.append(t)
        return t

    yield make
    for t in made:
        t.site.close()


def path_of() -> str:
    return f"/hook-{uuid.uuid4().hex[:8]}"


def of_lead(got: list[Received], lead_id: str) -> list[dict[str, Any]]:
    return [r.payload for r in got if r.payload["data"].get("lead_id") == lead_id]


def types(got: list[Received]) -> Counter[str]:
    return Counter(r.payload["type"] for r in got)


def deliveries(account: Texting) -> list[WebhookDelivery]:
    with UnitOfWork() as uow:
        rows = list(
            uow.session.execute(
                select(WebhookDelivery)
                .where(WebhookDelivery.account_id == account.account_id)
                .order_by(WebhookDelivery.seq)
            ).scalars()
        )
        uow.session.expunge_all()  # kept as read: the unit of work's end rolls back and would expire them
        return rows


def settled(account: Texting) -> bool:
    rows = deliveries(account)
    return bool(rows) and all(d.status != "pending" for d in rows)


def test_a_signup_a_routed_reply_a_transfer_and_a_merge_each_arrive_once_signed_and_explained(
    account: Any, receiver: Receiver
) -> None:
    path = path_of()
    acme: Texting = account(path)
    phone = fresh_number()
    email = f"wh-{uuid.uuid4().hex[:6]}@example.com"

    # A signup: the lead is made and routed ("Jill takes all"), two events.
    lead_id = acme.signup("co", email, phone)
    got = receiver.wait(path, lambda g: len(g) >= 2, what="the signup's events")
    signup = of_lead(got, lead_id)
    assert sorted(p["type"] for p in signup) == ["lead.assigned", "lead.created"]
    created = next(p for p in signup if p["type"] == "lead.created")
    assert created["data"]["owner"] == "co"
    assert created["data"]["lead"]["email"] == email
    assert created["data"]["lead"]["phone"] == phone
    assigned = next(p for p in signup if p["type"] == "lead.assigned")
    assert assigned["data"]["assignee"] == "jill"
    assert (
        assigned["data"]["explanation"] == next(e for e in acme.timeline(lead_id) if e["kind"] == "routed")["summary"]
    )
    assert assigned["data"]["version"] > created["data"]["version"]

    # A reply routed by S1: jill texted the lead, the lead answers.
    acme.texted(lead_id, "jill", dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    acme.text_in(phone, "Yes, Saturday works")
    got = receiver.wait(path, lambda g: "text.received" in types(g), what="the reply's event")
    reply = next(p for p in of_lead(got, lead_id) if p["type"] == "text.received")
    assert reply["data"]["rule"] == "S1"
    assert reply["data"]["details"]["body"] == "Yes, Saturday works"

    # A transfer to the downtown office (jill, its agent, stays assigned: T6).
    with acme.user("olivia") as olivia:
        r = olivia.post(f"/v1/leads/{lead_id}/transfer", json={"to": "downtown"})
        assert r.status_code == 200, r.text
    got = receiver.wait(path, lambda g: "lead.transferred" in types(g), what="the transfer's event")
    transferred = next(p for p in of_lead(got, lead_id) if p["type"] == "lead.transferred")
    assert transferred["data"]["owner"] == "downtown"
    assert transferred["data"]["rule"] == "T3"
    assert transferred["data"]["details"]["from"] == "co"

    # A merge: john merges his own lead of a person into the company's lead of that person assigned to him.
    other_email = f"wh-merge-{uuid.uuid4().hex[:6]}@example.com"
    primary = make_lead(acme.org["account"], owner="co", assignee="john", routed_via="downtown", email=other_email)
    mine = make_lead(acme.org["account"], owner="john", assignee="john", email=other_email, first_name="Ole")
    with acme.user("john") as john:
        r = john.post("/v1/leads/merge", json={"primary_id": primary, "other_id": mine})
        assert r.status_code == 200, r.text
    got = receiver.wait(path, lambda g: "lead.merged" in types(g), what="the merge's event")
    merged = next(p for p in got if p.payload["type"] == "lead.merged").payload
    assert merged["data"]["lead_id"] == primary
    assert merged["data"]["rule"] == "M5"
    assert merged["data"]["assignee"] == "john"

    wait_for(lambda: settled(acme), timeout=60, what="every delivery settled")
    got = receiver.got(path)
    # Each arrived once, under an id of its own, and every one verifies with the account's secret.
    assert len({r.webhook_id for r in got}) == len(got)
    for r in got:
        body = r.verified(SECRET)
        assert set(body) == {"type", "timestamp", "data"}
    assert types(got) == Counter(
        {"lead.created": 1, "lead.assigned": 1, "text.received": 1, "lead.transferred": 1, "lead.merged": 1}
    )
    versions = [p["data"]["version"] for p in of_lead(got, lead_id)]
    assert len(set(versions)) == len(versions)
    assert all(d.status == "delivered" for d in deliveries(acme))

    # The admin's view: the endpoint and its deliveries with their tries; never a secret.
    with acme.user("olivia") as olivia:
        listed = olivia.get("/v1/webhooks").json()["webhooks"]
        assert [(w["id"], w["secrets"], w["deliveries"]["delivered"]) for w in listed] == [("crm", 1, len(got))]
        assert SECRET not in olivia.get("/v1/webhooks").text
        page = olivia.get("/v1/webhooks/crm/deliveries").json()["deliveries"]
        assert {d["webhook_id"] for d in page} == {r.webhook_id for r in got}
        assert all(d["tries"][-1]["status"] == 200 for d in page)
    with acme.user("john") as john:
        assert john.get("/v1/webhooks").status_code == 403


def test_a_receiver_down_for_a_while_gets_everything_once_back_under_the_same_ids_in_backoff_order(
    account: Any, receiver: Receiver
) -> None:
    path = path_of()
    acme: Texting = account(path)
    receiver.answer(path, 500, 500, 503, 500, 502)
    email = f"down-{uuid.uuid4().hex[:6]}@example.com"
    intake = acme.register_and_wait("co", email)
    assert intake["status"] == "done"
    wait_for(lambda: settled(acme), timeout=90, what="the deliveries settled")
    got = receiver.got(path)
    ok = receiver.delivered(path)
    assert sorted(r.payload["type"] for r in ok) == ["lead.assigned", "lead.created"]
    # Every try of one event carried the same webhook-id: two events, two ids, however many tries.
    assert len({r.webhook_id for r in got}) == 2
    assert len(got) == 7
    waits = get_settings().webhook_retry_waits
    for webhook_id in {r.webhook_id for r in got}:
        tries = [r for r in got if r.webhook_id == webhook_id]
        assert [r.status for r in tries][-1] == 200
        assert len({r.body for r in tries}) == 1, "the same body on every try"
        # The backoff order: the n-th retry came no sooner than the n-th wait of the schedule after the try before.
        gaps = [b.at - a.at for a, b in itertools.pairwise(tries)]
        assert all(gap >= wait for gap, wait in zip(gaps, waits, strict=False)), (gaps, waits)
    # The pipeline's result is what it would have been: the lead made and assigned.
    lead = acme.lead(intake["lead_id"])
    assert lead["assigned_agent"]["id"] == "jill"
    rows = deliveries(acme)
    assert all(d.status == "delivered" for d in rows)
    assert sum(d.attempts for d in rows) == 7


def test_connection_refused_then_a_receiver_comes_up_and_gets_the_delivery(account: Any) -> None:
    port = free_port()
    late = Receiver(port)
    acme: Texting = account("/late", url=late.url("/late"), events=["lead.created"])
    try:
        acme.register_and_wait("co", f"late-{uuid.uuid4().hex[:6]}@example.com")
        wait_for(lambda: any(d.attempts >= 2 for d in deliveries(acme)), timeout=60, what="two refused tries")
        (row,) = deliveries(acme)
        assert row.status == "pending"
        assert row.attempt_log[0]["error"] == "ConnectError"
        late.start()
        got = late.wait("/late", lambda g: len(g) == 1, what="the delivery once the receiver is up")
        assert got[0].verified(SECRET)["type"] == "lead.created"
        assert got[0].webhook_id == f"msg_{row.id.hex}"
    finally:
        late.stop()


def test_rotation_signs_with_both_secrets_and_a_tampered_body_fails(account: Any, receiver: Receiver) -> None:
    path = path_of()
    acme: Texting = account(path, secrets=[SECRET, NEXT_SECRET], events=["lead.created"])
    acme.register_and_wait("co", f"rot-{uuid.uuid4().hex[:6]}@example.com")
    (got,) = receiver.wait(path, lambda g: len(g) == 1, what="the delivery")
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    assert got.verified(SECRET) == got.verified(NEXT_SECRET)
    other = "whsec_" + base64.b64encode(b"not-the-account's-secret-at-all!").decode()
    with pytest.raises(WebhookVerificationError):
        Received(got.path, got.headers, got.body, got.at, got.status).verified(other)
    tampered = got.body.replace(b"lead.created", b"lead.deleted")
    with pytest.raises(WebhookVerificationError):
        Received(got.path, got.headers, tampered, got.at, got.status).verified(SECRET)


def test_410_gone_disables_the_endpoint_until_the_org_file_is_applied_again(account: Any, receiver: Receiver) -> None:
    path = path_of()
    acme: Texting = account(path, events=["lead.created"])
    receiver.answer(path, 410)
    acme.register_and_wait("co", f"gone-{uuid.uuid4().hex[:6]}@example.com")
    wait_for(lambda: settled(acme), timeout=60, what="the delivery settled")
    (row,) = deliveries(acme)
    assert row.status == "failed"
    assert row.attempts == 1
    with UnitOfWork() as uow:
        endpoint = uow.session.execute(
            select(WebhookEndpoint).where(WebhookEndpoint.account_id == acme.account_id)
        ).scalar_one()
        assert endpoint.disabled_at is not None
    # Nothing more is written for it: the next signup makes no delivery.
    acme.register_and_wait("co", f"gone-2-{uuid.uuid4().hex[:6]}@example.com")
    assert len(deliveries(acme)) == 1
    with acme.user("olivia") as olivia:
        (listed,) = olivia.get("/v1/webhooks").json()["webhooks"]
        assert listed["disabled_at"] is not None
        assert listed["deliveries"]["failed"] == 1
    # Applying the file again turns it on; a replay sends the failed delivery, under its own id.
    apply(acme.org)
    with acme.user("olivia") as olivia:
        r = olivia.post("/v1/webhooks/crm/replay", json={})
        assert r.status_code == 202, r.text
        assert r.json()["delivery_ids"] == [str(row.id)]
    got = receiver.wait(path, lambda g: len(g) == 1, what="the replayed delivery")
    assert got[0].webhook_id == f"msg_{row.id.hex}"


def test_the_secret_is_stored_encrypted_never_in_clear(account: Any) -> None:
    acme: Texting = account(path_of(), events=["lead.created"])
    with UnitOfWork() as uow:
        endpoint = uow.session.execute(
            select(WebhookEndpoint).where(WebhookEndpoint.account_id == acme.account_id)
        ).scalar_one()
        assert endpoint.secrets_encrypted
        assert all(SECRET not in value for value in endpoint.secrets_encrypted)


def test_an_import_sends_one_import_finished_with_its_counts_and_no_event_per_lead(
    account: Any, receiver: Receiver
) -> None:
    path = path_of()
    acme: Texting = account(path, events=["import.finished", "lead.created", "lead.assigned"])
    tag = uuid.uuid4().hex[:8]
    body = (
        f"firstName,lastName,emailAddress\nAnn,Lee,ann-{tag}@example.com\nBo,Ray,bo-{tag}@example.com\nBad,Row,nope\n"
    )
    with acme.user("olivia") as olivia:
        r = olivia.post("/v1/imports", data={"owner": "co"}, files={"file": ("leads.csv", body, "text/csv")})
        assert r.status_code == 202, r.text
        import_id = r.json()["import_id"]
        wait_for(
            lambda: olivia.get(f"/v1/imports/{import_id}").json()["status"] in ("done", "failed"),
            timeout=60,
            what="the import",
        )
    wait_for(lambda: settled(acme) and receiver.delivered(path), timeout=60, what="the import's delivery")

    got = receiver.delivered(path)
    assert types(got) == Counter({"import.finished": 1}), "one event for the file, none per imported lead"
    event = got[0].verified(SECRET)
    assert event["type"] == "import.finished"
    data = event["data"]
    assert (data["import_id"], data["status"], data["error"]) == (import_id, "done", None)
    assert (data["rows"], data["created"], data["existing"], data["duplicates"], data["rejected"]) == (3, 2, 0, 0, 1)
    assert "ann-" not in got[0].body.decode(), "the counts, not the leads' contact details"
