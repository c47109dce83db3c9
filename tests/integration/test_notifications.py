"""Notifications: a new lead assigned to an agent mails that agent through the outbox and the
notifications.flush task, over SMTP to a real server (aiosmtpd in its own process, started by conftest:
the session's workers send to it). A burst of leads is mailed by few tasks over few connections; a mail
the server refuses is sent on a later pass, once. Imports do not mail per lead."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from models.tables import Outbox
from models.uow import UnitOfWork
from tests.integration.conftest import SmtpSink, apply, broker_idle
from tests.integration.test_sms_outbound import api_logdir, entity_id, lead_phone, log_lines, logged
from tests.support.client import Brokerage, post_all
from tests.support.orgs import brokerage
from tests.support.processes import wait_for
from workers.notifications import SmtpServer, parse_smtp_url

pytestmark = pytest.mark.integration


def outbox_for(lead_id: str) -> list[Outbox]:
    with UnitOfWork() as uow:
        rows = list(
            uow.session.execute(select(Outbox).where(Outbox.dedupe_key.like(f"assigned:{lead_id}:%"))).scalars()
        )
        uow.session.expunge_all()
        return rows


def text_of(mail: Message) -> str:
    payload = mail.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


def mails_about(smtp: SmtpSink, lead_id: str) -> list[Message]:
    return [m for m in smtp.messages() if lead_id in text_of(m)]


def wait_mail(smtp: SmtpSink, lead_id: str) -> Message:
    found: list[Message] = []

    def received() -> bool:
        found[:] = mails_about(smtp, lead_id)
        return bool(found)

    wait_for(received, timeout=60, interval=0.1, what=f"the mail about lead {lead_id}")
    (mail,) = found
    return mail


def test_a_new_lead_assigned_to_an_agent_is_mailed_to_that_agent_over_smtp(
    acme: Brokerage, smtp_server: SmtpSink, workers: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    first = f"Zed{uuid.uuid4().hex[:6]}"
    email = f"{first.lower()}@example.com"
    phone = lead_phone()
    intake = acme.register_and_wait("john", email, first_name=first, last_name="Quill", phone=phone)
    lead_id = intake["lead_id"]

    mail = wait_mail(smtp_server, lead_id)
    assert mail["To"] == "john@co.test"
    assert mail["Subject"] == f"New lead assigned to you: {first} Quill"
    assert mail["From"] == "leadrelay <leadrelay@localhost>"
    body = text_of(mail)
    assert "Hello John Smith," in body
    assert email in body  # the agent gets the lead's contact details; the logs never do
    assert phone in body
    assert f"/v1/leads/{lead_id}" in body

    (row,) = outbox_for(lead_id)
    assert row.dedupe_key == f"assigned:{lead_id}:{entity_id(acme, 'john')}"
    wait_for(lambda: outbox_for(lead_id)[0].status == "sent", timeout=30, what="the outbox row marked sent")
    assert mail["Message-ID"] == f"<{row.id}@leadrelay>"

    # Neither the lead's email or phone nor the agent's address appears in any log line of the run.
    logs = "\n".join(log_lines(workers) + log_lines(api_logdir(tmp_path_factory)))
    for secret in (email, phone, phone[2:], "john@co.test"):
        assert secret not in logs
    assert any(f'"subject": "New lead assigned to you: {first} Quill"' in line for line in log_lines(workers))


def test_a_lead_whose_name_breaks_lines_is_mailed_with_a_one_line_subject_and_no_header_of_its_own(
    acme: Brokerage, smtp_server: SmtpSink
) -> None:
    first = f"Ann{uuid.uuid4().hex[:6]}"
    email = f"{first.lower()}@example.com"
    intake = acme.register_and_wait("john", email, first_name=f"{first}\r\nBcc: spy@example.com", last_name="Lee\x0c")
    lead_id = intake["lead_id"]

    mail = wait_mail(smtp_server, lead_id)
    assert mail["Subject"] == f"New lead assigned to you: {first} Bcc: spy@example.com Lee"
    assert mail["Bcc"] is None
    assert mail["To"] == "john@co.test"
    wait_for(lambda: outbox_for(lead_id)[0].status == "sent", timeout=30, what="the outbox row marked sent")


def test_A1_a_company_lead_mails_the_agent_routing_chose_and_a_repeat_signup_mails_nobody(
    acme: Brokerage, smtp_server: SmtpSink
) -> None:
    email = f"r{uuid.uuid4().hex[:6]}@example.com"
    intake = acme.register_and_wait("co", email, first_name="Rae")
    lead = acme.lead(intake["lead_id"])
    agent = lead["assigned_agent"]["id"]
    mail = wait_mail(smtp_server, lead["id"])
    assert mail["To"] == f"{agent}@co.test"

    again = acme.register_and_wait("co", email, first_name="Rae")  # D4: a timeline event, no new lead
    assert again["lead_id"] == lead["id"]
    wait_for(broker_idle, timeout=30, interval=0.1, what="the queues to drain")
    assert len(mails_about(smtp_server, lead["id"])) == 1
    assert len(outbox_for(lead["id"])) == 1


def test_an_agent_without_an_email_gets_no_mail(brokerage_factory: Any) -> None:
    org = brokerage()
    (bob,) = [e for e in org["entities"] if e["id"] == "bob"]
    bob.pop("email")
    org["routing"][0]["rules"] = [{"name": "Bob takes all", "agents": ["bob"]}]
    b = brokerage_factory(org=org)
    intake = b.register_and_wait("co", f"b{uuid.uuid4().hex[:6]}@example.com")
    assert b.lead(intake["lead_id"])["assigned_agent"]["id"] == "bob"
    wait_for(broker_idle, timeout=30, interval=0.1, what="the queues to drain")
    assert outbox_for(intake["lead_id"]) == []


def test_an_import_does_not_mail_per_imported_lead(acme: Brokerage, smtp_server: SmtpSink) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["first_name", "email"])
    for i in range(5):
        writer.writerow([f"Imp{i}", f"imp{i}-{uuid.uuid4().hex[:6]}@example.com"])
    with acme.user("john") as john:
        r = john.post("/v1/imports", data={"owner": "john"}, files={"file": ("few.csv", out.getvalue(), "text/csv")})
        assert r.status_code == 202, r.text
        status_url = r.json()["status_url"]
        wait_for(lambda: john.get(status_url).json()["status"] == "done", timeout=60, what="the import")
        leads = john.get("/v1/leads", params={"owner": "john"}).json()["items"]
    imported = [lead for lead in leads if (lead["first_name"] or "").startswith("Imp")]
    assert len(imported) == 5
    wait_for(broker_idle, timeout=30, interval=0.1, what="the queues to drain")
    for lead in imported:
        assert outbox_for(lead["id"]) == []
        assert mails_about(smtp_server, lead["id"]) == []


BURST = 40


@dataclass(frozen=True)
class Burst:
    """Leads assigned to one agent in a burst (posted 20 at a time), and the mail about each."""

    lead_ids: list[str]
    mails: dict[str, list[Message]]
    intake_of: dict[str, str]


@pytest.fixture(scope="module")
def burst(api: str, smtp_server: SmtpSink) -> Iterator[Burst]:
    b = Brokerage(api, apply(brokerage()))
    try:
        bodies = [
            {"page_url": f"https://{b.host('john')}/", "email": f"burst{i}-{uuid.uuid4().hex[:6]}@example.com"}
            for i in range(BURST)
        ]
        intake_ids = asyncio.run(post_all(b, bodies, parallel=20))
        lead_ids = [b.wait_done(intake_id)["lead_id"] for intake_id in intake_ids]

        john = entity_id(b, "john")
        keys = [f"assigned:{lead_id}:{john}" for lead_id in lead_ids]

        def all_mailed() -> bool:
            with UnitOfWork() as uow:
                sent = uow.session.execute(
                    select(Outbox.id).where(Outbox.status == "sent", Outbox.dedupe_key.in_(keys))
                ).all()
            return len(sent) == len(keys)

        wait_for(all_mailed, timeout=120, interval=0.2, what="the burst's mail")
        wait_for(broker_idle, timeout=60, interval=0.1, what="the queues to drain")
        messages = smtp_server.messages()
        yield Burst(
            lead_ids,
            {lead_id: [m for m in messages if lead_id in text_of(m)] for lead_id in lead_ids},
            dict(zip(lead_ids, intake_ids, strict=True)),
        )
    finally:
        b.site.close()


def test_a_burst_of_leads_is_mailed_once_each_over_far_fewer_smtp_connections_than_mails(
    burst: Burst, smtp_server: SmtpSink
) -> None:
    assert {lead_id: len(mails) for lead_id, mails in burst.mails.items()} == dict.fromkeys(burst.lead_ids, 1)
    connections = {smtp_server.connection_of(mail) for mails in burst.mails.values() for mail in mails}
    # One connection per mail before; now one per flush, and a flush takes every mail committed before it runs.
    assert len(connections) * 4 <= BURST, f"{len(connections)} SMTP connections for {BURST} mails"


def test_a_burst_of_leads_is_mailed_by_far_fewer_notification_tasks_than_leads(burst: Burst, workers: Path) -> None:
    outbox_ids = {str(row.id) for lead_id in burst.lead_ids for row in outbox_for(lead_id)}
    assert len(outbox_ids) == BURST
    sent = [record for record in logged(log_lines(workers), "notification.mail") if record["outbox_id"] in outbox_ids]
    assert {record["outbox_id"] for record in sent} == outbox_ids
    tasks = {record["task_id"] for record in sent}
    assert len(tasks) * 4 <= BURST, f"{len(tasks)} notification tasks for {BURST} leads"
    assert {record["task"] for record in sent} == {"notifications.flush"}


def test_each_mail_of_a_flush_is_logged_under_the_intake_that_caused_it(burst: Burst, workers: Path) -> None:
    lead_of = {str(row.id): lead_id for lead_id in burst.lead_ids for row in outbox_for(lead_id)}
    sent = [record for record in logged(log_lines(workers), "notification.mail") if record["outbox_id"] in lead_of]
    assert len(sent) == BURST
    # One flush sends many intakes' mail: each line names its own intake, not the flush's publisher.
    assert {r["outbox_id"]: r["correlation_id"] for r in sent} == {
        outbox_id: burst.intake_of[lead_id] for outbox_id, lead_id in lead_of.items()
    }


def test_a_mail_the_server_refuses_for_a_while_stays_pending_and_is_sent_once_on_a_later_pass(
    brokerage_factory: Any, smtp_server: SmtpSink
) -> None:
    org = brokerage()
    address = f"john-{uuid.uuid4().hex[:8]}@co.test"
    (john,) = [e for e in org["entities"] if e["id"] == "john"]
    john["email"] = address
    b = brokerage_factory(org=org)
    with smtp_server.refusing(address):
        lead_id = b.register_and_wait("john", f"r{uuid.uuid4().hex[:6]}@example.com", first_name="Ref")["lead_id"]

        def refused() -> bool:
            rows = outbox_for(lead_id)
            return bool(rows) and rows[0].error is not None

        wait_for(refused, timeout=60, interval=0.1, what="a refused try")
        (row,) = outbox_for(lead_id)
        assert row.status == "pending"
        assert row.attempts >= 1
        assert row.error is not None
        assert "451" in row.error
        assert mails_about(smtp_server, lead_id) == []
    mail = wait_mail(smtp_server, lead_id)
    assert mail["To"] == address
    wait_for(lambda: outbox_for(lead_id)[0].status == "sent", timeout=30, what="the outbox row marked sent")
    wait_for(broker_idle, timeout=60, interval=0.1, what="the queues to drain")
    assert len(mails_about(smtp_server, lead_id)) == 1
    (row,) = outbox_for(lead_id)
    assert row.attempts >= 2
    assert row.error is None


@pytest.mark.parametrize(
    ("url", "server"),
    [
        ("smtp://mail.test", SmtpServer("mail.test", 25, tls=False, starttls=False, username=None, password=None)),
        (
            "smtp://127.0.0.1:2525",
            SmtpServer("127.0.0.1", 2525, tls=False, starttls=False, username=None, password=None),
        ),
        (
            "smtp://u%40x:p%2Fw@mail.test?starttls=true",
            SmtpServer("mail.test", 587, tls=False, starttls=True, username="u@x", password="p/w"),
        ),
        (
            "smtps://me:pw@mail.test",
            SmtpServer("mail.test", 465, tls=True, starttls=False, username="me", password="pw"),
        ),
    ],
)
def test_the_smtp_url_names_host_port_tls_and_login(url: str, server: SmtpServer) -> None:
    assert parse_smtp_url(url) == server


@pytest.mark.parametrize("url", ["http://me:s3cret@mail.test", "smtp://me:s3cret@", "mail.test:25"])
def test_a_bad_smtp_url_is_refused_without_echoing_its_password(url: str) -> None:
    with pytest.raises(ValueError, match="LEADRELAY_SMTP_URL must be") as caught:
        parse_smtp_url(url)
    assert "s3cret" not in str(caught.value)
