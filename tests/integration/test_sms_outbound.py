"""Outbound texts: POST /v1/leads/{id}/messages records the text at once and the texts.send task
sends it through the gateway, from the owner's smart number in the owner's name (SH4). Real API,
workers, PostgreSQL and Redis; the failing gateway is the real twilio client against a proxy that
refuses connections, and a token variable that is not set."""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import select

from leadrelay.settings import get_settings
from models.tables import Lead, LeadShare, LeadStatus, Message, TimelineEvent, User
from models.uow import UnitOfWork
from tests.integration.conftest import REDIS_URL, broker_idle
from tests.support.client import Brokerage
from tests.support.orgs import brokerage
from tests.support.processes import api_server, celery_workers, free_port, wait_for
from workers import texts, texts_outbound
from workers.celeryconfig import celery_config

pytestmark = pytest.mark.integration


def publish_send(message_id: str) -> None:
    """Publish texts.send as the API does, on this run's broker and queue. A fresh app: the test process's
    own Celery app may have read its configuration during collection, before ``pipeline_env`` was set
    (pytest looks at every module-level name, and a task object imported into a test module is a proxy
    that finalizes the app)."""
    app = Celery("test-publisher", set_as_current=False)
    app.conf.update(celery_config(get_settings()))
    try:
        app.send_task("texts.send", args=[message_id])
    finally:
        app.close()


def smart_number() -> str:
    """A fictional North American number no other test uses (smart numbers are unique across accounts)."""
    return f"+1555{random.randint(2_000_000, 9_999_999)}"


def lead_phone() -> str:
    return f"+1555{random.randint(2_000_000, 9_999_999)}"


def numbered_org(**kwargs: Any) -> dict[str, Any]:
    """The test brokerage with smart numbers: the company's and John's own."""
    org = brokerage(**kwargs)
    entities = {e["id"]: e for e in org["entities"]}
    entities["co"]["smart_numbers"] = [smart_number()]
    entities["john"]["smart_numbers"] = [smart_number()]
    return org


def numbers_of(b: Brokerage) -> dict[str, str]:
    return {e["id"]: e["smart_numbers"][0] for e in b.org["entities"] if e.get("smart_numbers")}


def make_lead(b: Brokerage, site: str, *, phone: str | None = None, email: str | None = None) -> dict[str, Any]:
    email = email or f"p{uuid.uuid4().hex[:8]}@example.com"
    fields = {"phone": phone} if phone else {}
    intake = b.register_and_wait(site, email, first_name="Pat", last_name="Lane", **fields)
    assert intake["status"] == "done", intake
    return b.lead(intake["lead_id"])


def text(b: Brokerage, user: str, lead_id: str, body: str = "Hi, it's about 12 Oak St") -> Any:
    with b.user(user) as c:
        return c.post(f"/v1/leads/{lead_id}/messages", json={"body": body})


def message(message_id: str) -> Message:
    with UnitOfWork() as uow:
        row = uow.session.get(Message, uuid.UUID(message_id))
        assert row is not None
        uow.session.expunge(row)
        return row


def wait_status(message_id: str, *statuses: str, timeout: float = 60) -> Message:
    found: list[Message] = []

    def reached() -> bool:
        found[:] = [message(message_id)]
        return found[0].status in statuses

    wait_for(reached, timeout=timeout, interval=0.05, what=f"text {message_id} to be {statuses}")
    return found[0]


def user_id(b: Brokerage, slug: str) -> int:
    with UnitOfWork() as uow:
        account = uow.orgs.account_by_slug(b.org["account"])
        assert account is not None
        return uow.session.execute(select(User.id).where(User.account_id == account.id, User.slug == slug)).scalar_one()


def entity_id(b: Brokerage, slug: str) -> int:
    with UnitOfWork() as uow:
        account = uow.orgs.account_by_slug(b.org["account"])
        assert account is not None
        entity = uow.orgs.entity_by_slug(account.id, slug)
        assert entity is not None
        return entity.id


def share(lead_id: str, b: Brokerage, user: str, permission: str = "edit") -> None:
    """Share a lead directly in the database (the sharing endpoints have their own tests)."""
    with UnitOfWork() as uow:
        uow.session.add(LeadShare(lead_id=uuid.UUID(lead_id), user_id=user_id(b, user), permission=permission))
        uow.commit()


def set_unsubscribed(lead_id: str) -> None:
    with UnitOfWork() as uow:
        lead = uow.session.get(Lead, uuid.UUID(lead_id))
        assert lead is not None
        lead.sms_unsubscribed = True
        uow.commit()


def texts_of(lead_id: str) -> list[Message]:
    with UnitOfWork() as uow:
        rows = list(uow.session.execute(select(Message).where(Message.lead_id == uuid.UUID(lead_id))).scalars())
        uow.session.expunge_all()
        return rows


def events(lead_id: str, kind: str) -> list[TimelineEvent]:
    with UnitOfWork() as uow:
        rows = list(
            uow.session.execute(
                select(TimelineEvent)
                .where(TimelineEvent.lead_id == uuid.UUID(lead_id), TimelineEvent.kind == kind)
                .order_by(TimelineEvent.id)
            ).scalars()
        )
        uow.session.expunge_all()
        return rows


def log_lines(*folders: Path) -> list[str]:
    return [
        line for folder in folders for path in sorted(folder.glob("**/*.log")) for line in path.read_text().splitlines()
    ]


def api_logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp()


def logged(lines: list[str], event: str, **fields: str) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if (
            isinstance(record, dict)
            and record.get("event") == event
            and all(record.get(k) == v for k, v in fields.items())
        ):
            out.append(record)
    return out


def test_S1_a_text_is_recorded_at_once_answered_202_and_sent_by_the_log_gateway(
    brokerage_factory: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    b = brokerage_factory(org=numbered_org())
    phone = lead_phone()
    lead = make_lead(b, "co", phone=phone)
    agent = lead["assigned_agent"]["id"]
    before = dt.datetime.now(dt.UTC)
    r = text(b, agent, lead["id"])
    after = dt.datetime.now(dt.UTC)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued"
    message_id = r.json()["message_id"]

    # The row exists the moment the answer does: S1 counts the text from then, sent or not yet.
    row = message(message_id)
    assert row.direction == "outbound"
    assert row.lead_phone == phone
    assert row.body == "Hi, it's about 12 Oak St"
    assert before <= row.created_at <= after
    assert row.status in ("queued", "sending", "sent")
    assert row.smart_number == numbers_of(b)["co"]
    assert row.agent_id == entity_id(b, agent)
    assert row.sent_by_user_id == user_id(b, agent)
    assert row.sent_as == "Demo Realty"

    sent = wait_status(message_id, "sent", "failed")
    assert sent.status == "sent", sent.error
    assert sent.provider_sid is not None
    assert sent.provider_sid.startswith("LOG")
    assert sent.attempts == 1
    assert sent.error is None

    (event,) = events(lead["id"], "text_sent")
    assert event.actor == agent
    assert event.data["message_id"] == message_id
    assert event.data["sent_as"] == "Demo Realty"
    assert event.data["smart_number"] == numbers_of(b)["co"]
    timeline = b.timeline(lead["id"])
    assert [e["kind"] for e in timeline][-1] == "text_sent"


def test_V1_a_lead_the_caller_cannot_see_is_404_and_records_nothing(brokerage_factory: Any) -> None:
    b = brokerage_factory(org=numbered_org())
    other = brokerage_factory(org=numbered_org())
    lead = make_lead(b, "john", phone=lead_phone())  # owned by and assigned to John
    assert text(b, "jill", lead["id"]).status_code == 404  # another agent of the office
    r = text(other, "olivia", lead["id"])  # another account's company admin
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert text(b, "olivia", str(uuid.uuid4())).status_code == 404
    assert texts_of(lead["id"]) == []
    with b.user("jill") as c:
        assert (
            c.post(
                f"/v1/leads/{lead['id']}/messages", json={"body": "x"}, headers={"Authorization": "Bearer nope"}
            ).status_code
            == 401
        )


def test_a_lead_with_no_phone_is_422_and_a_blank_body_is_422(brokerage_factory: Any) -> None:
    b = brokerage_factory(org=numbered_org())
    no_phone = make_lead(b, "john")
    r = text(b, "john", no_phone["id"])
    assert r.status_code == 422, r.text
    assert "no phone" in r.json()["detail"]
    assert r.json()["errors"][0]["field"] == "lead_id"
    with_phone = make_lead(b, "john", phone=lead_phone())
    for body in ("", "   ", "x" * 1601):
        assert text(b, "john", with_phone["id"], body).status_code == 422
    assert texts_of(no_phone["id"]) == texts_of(with_phone["id"]) == []


def test_S4_D8_an_unsubscribed_lead_is_409_and_its_duplicate_can_still_be_texted(brokerage_factory: Any) -> None:
    b = brokerage_factory(org=numbered_org())
    phone = lead_phone()
    email = f"dup{uuid.uuid4().hex[:6]}@example.com"
    company_lead = make_lead(b, "co", phone=phone, email=email)
    john_lead = make_lead(b, "john", phone=phone, email=email)  # D1: the same person, two leads
    assert company_lead["id"] != john_lead["id"]
    set_unsubscribed(john_lead["id"])

    r = text(b, "john", john_lead["id"])
    assert r.status_code == 409, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "S4" in r.json()["detail"]
    assert "D8" in r.json()["detail"]
    assert "unsubscribed" in r.json()["detail"]
    assert texts_of(john_lead["id"]) == []

    r = text(b, "olivia", company_lead["id"])
    assert r.status_code == 202, r.text
    assert wait_status(r.json()["message_id"], "sent", "failed").status == "sent"


def test_SH4_with_no_smart_number_for_the_owner_or_its_company_the_text_is_409(brokerage_factory: Any) -> None:
    b = brokerage_factory()  # no smart numbers at all
    lead = make_lead(b, "john", phone=lead_phone())
    r = text(b, "john", lead["id"])
    assert r.status_code == 409, r.text
    assert r.json()["detail"].startswith("SH4: no smart number")
    assert "'john'" in r.json()["detail"]
    assert texts_of(lead["id"]) == []


def test_SH4_a_shared_user_texts_in_the_owners_name_and_the_record_keeps_the_real_sender(
    brokerage_factory: Any,
) -> None:
    b = brokerage_factory(org=numbered_org())
    numbers = numbers_of(b)
    lead = make_lead(b, "john", phone=lead_phone())  # owned by and assigned to John, who has his own number
    assert text(b, "bob", lead["id"]).status_code == 404  # not shared yet: Bob cannot see it
    share(lead["id"], b, "bob")

    r = text(b, "bob", lead["id"], "Bob here, covering for John")
    assert r.status_code == 202, r.text
    sent = wait_status(r.json()["message_id"], "sent", "failed")
    assert sent.status == "sent"
    assert sent.sent_as == "John Smith"  # the owner's name: the lead sees John's text
    assert sent.smart_number == numbers["john"]  # from the owner's own number
    assert sent.sent_by_user_id == user_id(b, "bob")  # who really sent it
    assert sent.agent_id == entity_id(b, "john")  # the assignee it counts for (S1)

    (event,) = events(lead["id"], "text_sent")
    assert event.actor == "bob"
    assert event.data["rule"] == "SH4"
    assert event.data["sent_by"] == "bob"
    assert event.data["sent_as"] == "John Smith"
    assert "sent by Bob Brown" in event.summary

    # A team-owned lead: the team has no number of its own, so the text goes out from the company's,
    # still in the team's name; the user it is shared with sends it.
    team_lead = make_lead(b, "sunrise", phone=lead_phone())
    share(team_lead["id"], b, "jill")
    r = text(b, "jill", team_lead["id"])
    assert r.status_code == 202, r.text
    sent = wait_status(r.json()["message_id"], "sent", "failed")
    assert (sent.sent_as, sent.smart_number) == ("Sunrise Team", numbers["co"])
    assert sent.sent_by_user_id == user_id(b, "jill")
    assert sent.agent_id == entity_id(b, "tara")
    (event,) = events(team_lead["id"], "text_sent")
    assert event.data["smart_number_of"] == "co"


def test_SH4_a_view_only_share_cannot_text_the_lead_nor_steer_its_reply(brokerage_factory: Any) -> None:
    b = brokerage_factory(org=numbered_org())
    lead = make_lead(b, "john", phone=lead_phone())
    share(lead["id"], b, "bob", "view")
    with b.user("bob") as bob:
        assert bob.get(f"/v1/leads/{lead['id']}").status_code == 200  # Bob sees the lead

    r = text(b, "bob", lead["id"], "Bob here, reply to me")
    assert r.status_code == 403, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"].startswith("SH4: view permission does not allow texting")
    # Nothing recorded: no text in John's name, so S1 cannot send the lead's reply to Bob.
    assert texts_of(lead["id"]) == []
    assert events(lead["id"], "text_sent") == []

    share_permission(lead["id"], b, "bob", "edit")
    assert text(b, "bob", lead["id"]).status_code == 202  # edit permission may


def share_permission(lead_id: str, b: Brokerage, user: str, permission: str) -> None:
    with UnitOfWork() as uow:
        row = uow.session.get(LeadShare, (uuid.UUID(lead_id), user_id(b, user)))
        assert row is not None
        row.permission = permission
        uow.commit()


def test_a_redelivered_send_task_does_not_send_twice(
    brokerage_factory: Any, workers: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    b = brokerage_factory(org=numbered_org())
    phone = lead_phone()
    lead = make_lead(b, "john", phone=phone)
    r = text(b, "john", lead["id"])
    assert r.status_code == 202, r.text
    message_id = r.json()["message_id"]
    # Four more copies of the task at once, racing the first on two workers (a redelivery, a relay...).
    for _ in range(4):
        publish_send(message_id)
    first = wait_status(message_id, "sent", "failed")
    assert first.status == "sent"
    wait_for(broker_idle, timeout=60, interval=0.2, what="the copies of texts.send")
    # And one more after it is sent.
    publish_send(message_id)
    wait_for(broker_idle, timeout=30, interval=0.1, what="the late copy")

    again = message(message_id)
    assert (again.provider_sid, again.attempts, again.status) == (first.provider_sid, 1, "sent")
    # Six deliveries in all (the API's and five copies): one sent it, five found it sent. A copy that
    # found it in flight looks again a little later, so wait for its line rather than for an idle broker.
    wait_for(
        lambda: len(logged(log_lines(workers), "text.send_skipped", message_id=message_id, status="sent")) >= 5,
        timeout=60,
        interval=0.2,
        what="every copy to find the text sent",
    )
    lines = log_lines(workers)
    assert len(logged(lines, "text.sent", message_id=message_id)) == 1
    assert len(logged(lines, "text.send_skipped", message_id=message_id, status="sent")) == 5
    # Logs never hold the lead's phone, the worker's or the API's.
    everything = "\n".join(lines + log_lines(api_logdir(tmp_path_factory)))
    assert phone not in everything
    assert phone[2:] not in everything


# --- a failing gateway: the real twilio client, in a pipeline of its own whose gateway is twilio ---

TOKEN_ENV = "LEADRELAY_TEST_TWILIO_TOKEN"
MISSING_TOKEN_ENV = "LEADRELAY_TEST_TWILIO_TOKEN_NOT_IN_THE_WORKER"


@pytest.fixture(scope="module")
def twilio_pipeline(pipeline_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An API and a worker on queues of their own (same database) with ``LEADRELAY_SMS_GATEWAY=twilio``,
    at most two retries, and every HTTPS request sent through a proxy port where nothing listens: the
    twilio package really calls out and the connection is refused."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    refused = f"http://127.0.0.1:{free_port()}"
    env = {
        **pipeline_env,
        "LEADRELAY_QUEUE_PREFIX": prefix,
        "LEADRELAY_SMS_GATEWAY": "twilio",
        "LEADRELAY_TASK_MAX_RETRIES": "2",
        "HTTPS_PROXY": refused,
        "https_proxy": refused,
        "NO_PROXY": "",
        "no_proxy": "",
        TOKEN_ENV: "test-token",
    }
    logdir = tmp_path_factory.mktemp("twilio-pipeline")
    try:
        # The child processes get no LEADRELAY_* variable of this process: MISSING_TOKEN_ENV is not set there.
        with celery_workers(env, logdir, count=1), api_server(env, logdir / "api.log") as base:
            yield base
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


LITERAL_TOKEN = "twilio-literal-outbound-token-4e7a"


def twilio_org(token_env: str | None) -> dict[str, Any]:
    """An org whose Twilio token is in ``token_env``, or written in the file (kept encrypted) when None."""
    org = numbered_org()
    org["sms"] = {"provider": "twilio", "account_sid": "AC" + uuid.uuid4().hex}
    if token_env is None:
        org["sms"]["auth_tokens"] = [LITERAL_TOKEN]
    else:
        org["sms"]["auth_tokens_env"] = [token_env]
    return org


def failing_text(
    twilio_pipeline: str, brokerage_factory: Any, monkeypatch: pytest.MonkeyPatch, token_env: str | None
) -> tuple[dict[str, Any], Message]:
    # org apply checks that the named variable is set; the worker of this pipeline may not have it.
    if token_env is not None:
        monkeypatch.setenv(token_env, "test-token")
    b = brokerage_factory(org=twilio_org(token_env))
    lead = make_lead(b, "john", phone=lead_phone())
    twilio_side = Brokerage(twilio_pipeline, b.org)
    try:
        r = text(twilio_side, "john", lead["id"])
    finally:
        twilio_side.site.close()
    assert r.status_code == 202, r.text
    return lead, wait_status(r.json()["message_id"], "failed", "sent", timeout=90)


def test_a_failing_twilio_gateway_retries_with_backoff_and_ends_failed_with_the_error_keeping_the_record(
    twilio_pipeline: str, brokerage_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    lead, failed = failing_text(twilio_pipeline, brokerage_factory, monkeypatch, TOKEN_ENV)
    assert failed.status == "failed"
    assert failed.attempts == 3  # the first try and LEADRELAY_TASK_MAX_RETRIES=2 retries
    assert failed.error is not None
    assert "ProxyError" in failed.error or "ConnectionError" in failed.error, failed.error
    assert failed.provider_sid is None
    assert failed.lead_id == uuid.UUID(lead["id"])  # the record is kept, with its body and sender
    assert failed.body == "Hi, it's about 12 Oak St"
    (event,) = events(lead["id"], "text_failed")
    assert "after 3 attempt(s)" in event.summary
    assert event.data["message_id"] == str(failed.id)


def test_a_literal_auth_token_of_the_org_file_is_decrypted_and_used_by_the_twilio_gateway(
    twilio_pipeline: str, brokerage_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker decrypts the stored token and calls Twilio with it: the call itself fails (the proxy
    refuses), after the retries, rather than the text failing at once for want of a token."""
    _, failed = failing_text(twilio_pipeline, brokerage_factory, monkeypatch, None)
    assert failed.status == "failed"
    assert failed.attempts == 3
    assert failed.error is not None
    assert "ProxyError" in failed.error or "ConnectionError" in failed.error, failed.error
    assert LITERAL_TOKEN not in failed.error


def test_a_missing_twilio_token_variable_ends_failed_naming_it(
    twilio_pipeline: str, brokerage_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, failed = failing_text(twilio_pipeline, brokerage_factory, monkeypatch, MISSING_TOKEN_ENV)
    assert failed.status == "failed"
    assert failed.attempts == 3
    assert failed.error == f"the auth token variable {MISSING_TOKEN_ENV!r} is not set in the worker's environment"


def test_a_merged_lead_is_409_naming_the_lead_it_was_merged_into(brokerage_factory: Any) -> None:
    b = brokerage_factory(org=numbered_org())
    merged = make_lead(b, "john", phone=lead_phone())
    primary = make_lead(b, "co", phone=lead_phone())
    with UnitOfWork() as uow:
        row = uow.session.get(Lead, uuid.UUID(merged["id"]))
        assert row is not None
        row.status, row.merged_into_id, row.unique_key = LeadStatus.MERGED, uuid.UUID(primary["id"]), None
        uow.commit()
    r = text(b, "john", merged["id"])
    assert r.status_code == 409, r.text
    assert primary["id"] in r.json()["detail"]
    assert texts_of(merged["id"]) == []


def queued_text(b: Brokerage, lead_id: str) -> str:
    """A text recorded as the API records it, its send task not published."""
    with UnitOfWork() as uow:
        row = uow.session.get(Lead, uuid.UUID(lead_id))
        assert row is not None
        message_id = uow.texts.add_outbound_text(
            {
                "account_id": row.account_id,
                "lead_id": row.id,
                "lead_phone": row.phone_e164,
                "smart_number": numbers_of(b)["john"],
                "body": "Still interested?",
                "agent_id": row.assigned_agent_id,
                "sent_by_user_id": user_id(b, "john"),
                "sent_as": "John Smith",
            }
        )
        uow.commit()
    return str(message_id)


def test_S4_a_text_still_queued_when_the_lead_unsubscribes_is_canceled_not_sent(
    brokerage_factory: Any, workers: Path
) -> None:
    b = brokerage_factory(org=numbered_org())
    lead = make_lead(b, "john", phone=lead_phone())
    # A text recorded just before the lead's STOP was processed, its task not yet run.
    message_id = queued_text(b, lead["id"])
    set_unsubscribed(lead["id"])
    publish_send(str(message_id))
    canceled = wait_status(str(message_id), "canceled", "sent", "failed")
    assert canceled.status == "canceled"
    assert canceled.error is not None
    assert canceled.error.startswith("S4:")
    assert canceled.provider_sid is None
    assert logged(log_lines(workers), "text.sent", message_id=str(message_id)) == []


def test_a_delivery_report_that_came_before_the_sid_was_recorded_is_applied_when_it_is(brokerage_factory: Any) -> None:
    b = brokerage_factory(org=numbered_org())
    lead = make_lead(b, "john", phone=lead_phone())
    message_id = queued_text(b, lead["id"])
    sid = "SM" + uuid.uuid4().hex
    with UnitOfWork() as uow:  # the webhook's worker keeps the report: no text has that sid yet
        account = uow.orgs.account_by_slug(b.org["account"])
        assert account is not None
        assert texts.record_status_callback(
            uow, account_id=account.id, provider_sid=sid, status="delivered", error_code=None, raw={}
        )
    assert message(message_id).status == "queued"
    with UnitOfWork() as uow:  # then the send records the gateway's answer
        texts_outbound.record_sent(uow, uuid.UUID(message_id), sid)
    row = message(message_id)
    assert (row.provider_sid, row.status) == (sid, "delivered")
