"""Personal data never leaves the database sideways: a canary email and phone per source (site signup,
site activity, the duplicate prompt, the lead list's filter, Realtor.com/Zillow/HotPads posts, a Follow
Up Boss event, an inbound text through Twilio's signed webhook, a CSV upload, a contact edit, an outbound
text and a bulk share) must appear in no log line of the API, the workers, the relay or Flower, in no
Celery task message on the broker (Redis MONITOR, base64 bodies decoded), in no Celery event, and in no
task Flower lists, in any spelling: the email, its local part in any case, percent-encoded, and the
phone's ten digits with or without separators."""

from __future__ import annotations

import base64
import copy
import csv
import io
import json
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

from leadrelay.settings import get_settings
from tests.chaos.conftest import TWILIO_TOKEN, TWILIO_TOKEN_ENV, make_account
from tests.support.chaos import (
    Canary,
    EventTap,
    RedisTap,
    Report,
    Service,
    Stack,
    canaries,
    decoded_variants,
    env_for_children,
    leaks,
    private_celery,
    python_module,
    query,
    wait_final,
)
from tests.support.orgs import brokerage
from tests.support.processes import free_port, wait_for

pytestmark = pytest.mark.chaos

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FLOWER_AUTH = ("chaos", "flower-chaos-pw")
SOURCES = (
    "registration",
    "activity",
    "candidates",
    "lead_filter",
    "realtor_com",
    "zillow",
    "hotpads",
    "fub_event",
    "sms",
    "csv_import",
    "lead_patch",
)


@pytest.fixture
def flower(stack: Stack) -> Iterator[tuple[httpx.Client, Service]]:
    """``leadrelay flower`` of this suite (its own process, a free port, basic auth), before the canaries."""
    port = free_port()
    env = env_for_children({**stack.env, "LEADRELAY_FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)})
    service = Service(
        "flower", python_module("leadrelay", "flower", "--port", str(port)), env, stack.folder / "flower.log"
    )
    service.start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=FLOWER_AUTH, timeout=10)
    try:

        def answers() -> bool:
            if not service.running():
                raise RuntimeError(f"flower exited: {service.log.read_text()[-2000:]}")
            try:
                return client.get("/healthcheck", auth=None, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, timeout=30, what="flower")
        yield client, service
    finally:
        client.close()
        service.close()


def texting_org() -> dict[str, Any]:
    org = brokerage()
    number = f"+1555{random.randint(2_000_000, 9_999_999)}"
    for entity in org["entities"]:
        if entity["id"] == "co":
            entity["smart_numbers"] = [number]
    org["sms"] = {"provider": "twilio", "account_sid": "ACchaos", "auth_tokens_env": [TWILIO_TOKEN_ENV]}
    org["_number"] = number
    return org


class Sender:
    """Posts each canary through its source, as that source's client does; collects what to wait for."""

    def __init__(self, stack: Stack, org: dict[str, Any], number: str) -> None:
        self.s = str(org["account"]).removeprefix("acct-")
        self.number = number
        self.http = httpx.Client(base_url=stack.base, timeout=30)
        self.site = {"Authorization": f"Bearer key-{self.s}"}
        self.intakes: dict[str, str] = {}
        self.answers: dict[str, int] = {}
        self.sms_sid = ""
        self.import_url = ""

    def user(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer tok-{name}-{self.s}"}

    def accepted(self, source: str, r: httpx.Response) -> None:
        self.answers[source] = r.status_code
        assert r.status_code == 202, (source, r.text)
        self.intakes[source] = str(r.json()["intake_id"])

    def registration(self, c: Canary, source: str = "registration") -> None:
        body = {
            "page_url": f"https://co-{self.s}.test/homes",
            "email": c.email,
            "phone": f"({c.national[:3]}) {c.national[3:6]}-{c.national[6:]}",
            "first_name": "Canary",
            "message": f"Call me on {c.phone} or write to {c.email.upper()}",
        }
        self.accepted(source, self.http.post("/v1/intake/registrations", json=body, headers=self.site))

    def activity(self, c: Canary) -> None:
        body = {
            "page_url": f"https://co-{self.s}.test/listing/12",
            "email": c.email,
            "kind": "property_view",
            "listing": {"mls_id": "MLS-1", "address": "12 Oak St", "price": 450000},
        }
        self.accepted("activity", self.http.post("/v1/intake/activity", json=body, headers=self.site))

    def candidates(self, c: Canary) -> None:
        params = {"email": c.email, "page_url": f"https://co-{self.s}.test/"}
        r = self.http.get("/v1/intake/registrations/candidates", params=params, headers=self.site)
        self.answers["candidates"] = r.status_code
        assert r.status_code == 200, r.text

    def lead_filter(self, c: Canary) -> None:
        r = self.http.get("/v1/leads", params={"email": c.email}, headers=self.user("olivia"))
        self.answers["lead_filter"] = r.status_code
        assert r.status_code == 200, r.text

    def provider(self, c: Canary, fmt: str) -> None:
        key = {"X-Api-Key": f"conn-sunrise-{self.s}" if fmt == "realtor_com" else f"conn-john-{self.s}"}
        if fmt == "hotpads":
            form = {
                "listingId": f"HP-{uuid.uuid4().hex[:6]}",
                "name": "Canary Bird",
                "email": c.email,
                "phone": c.phone,
            }
            r = self.http.post(f"/v1/intake/providers/{fmt}", data=form, headers=key)
        else:
            body = copy.deepcopy(json.loads((FIXTURES / "realtor_com_lead.json").read_text()))
            body["lead_id"] = f"{fmt}-{uuid.uuid4().hex[:8]}"
            body["contact"].update({"email": c.email, "phone": c.national})
            r = self.http.post(f"/v1/intake/providers/{fmt}", json=body, headers=key)
        self.accepted(fmt, r)

    def fub_event(self, c: Canary) -> None:
        body = copy.deepcopy(json.loads((FIXTURES / "fub_event_registration.json").read_text()))
        body["person"]["emails"] = [{"value": c.email, "type": "home"}]
        body["person"]["phones"] = [{"value": c.phone, "type": "mobile"}]
        auth = "Basic " + base64.b64encode(f"conn-john-{self.s}:".encode()).decode()
        self.accepted("fub_event", self.http.post("/v1/events", json=body, headers={"Authorization": auth}))

    def sms(self, c: Canary) -> None:
        path = "/v1/intake/sms/twilio"
        self.sms_sid = f"SM{uuid.uuid4().hex}"
        fields = {
            "MessageSid": self.sms_sid,
            "AccountSid": "ACchaos",
            "From": c.phone,
            "To": self.number,
            "Body": f"Hi, it's me, {c.email}",
            "NumMedia": "0",
        }
        url = get_settings().public_base_url.rstrip("/") + path
        signature = RequestValidator(TWILIO_TOKEN).compute_signature(url, fields)
        r = self.http.post(path, data=fields, headers={"X-Twilio-Signature": str(signature)})
        self.answers["sms"] = r.status_code
        assert r.status_code == 200, r.text

    def csv_import(self, c: Canary) -> None:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["First Name", "Last Name", "Email", "Mobile Phone", "Notes"])
        writer.writerow(["Canary", "Import", c.email, c.phone, f"met at the open house, {c.email}"])
        files = {"file": ("canary.csv", out.getvalue(), "text/csv")}
        r = self.http.post("/v1/imports", data={"owner": "john"}, files=files, headers=self.user("john"))
        self.answers["csv_import"] = r.status_code
        assert r.status_code == 202, r.text
        # Its path on this stack's API: the status URL is on LEADRELAY_PUBLIC_BASE_URL, which the stack leaves unset.
        self.import_url = urlsplit(r.json()["status_url"]).path


def test_canaries_through_every_source_appear_in_no_log_task_event_or_flower(
    stack: Stack, report: Report, flower: tuple[httpx.Client, Service]
) -> None:
    t0 = time.monotonic()
    flower_client, flower_service = flower
    org = texting_org()
    number = org.pop("_number")
    make_account(org)
    birds = canaries(SOURCES)
    send = Sender(stack, org, number)
    app = private_celery()
    try:
        with RedisTap(stack.redis) as tap, EventTap(app) as tap_events:
            send.registration(birds["registration"])
            send.activity(birds["activity"])
            send.candidates(birds["candidates"])
            send.lead_filter(birds["lead_filter"])
            for fmt in ("realtor_com", "zillow", "hotpads"):
                send.provider(birds[fmt], fmt)
            send.fub_event(birds["fub_event"])
            send.sms(birds["sms"])
            send.csv_import(birds["csv_import"])
            send.registration(birds["lead_patch"], "lead_patch")
            (sms_intake,) = query(
                stack.dsn, "SELECT id::text FROM intakes WHERE source = 'sms' AND idempotency_key = %s", (send.sms_sid,)
            )[0]
            send.intakes["sms"] = sms_intake
            seen, _ = wait_final(stack.dsn, list(send.intakes.values()), 60)
            work = follow_up(stack, send, birds) if seen["done"] == len(send.intakes) else {}
            settle(stack, org["account"])
            time.sleep(1.5)  # the last events reach the taps and Flower
        tasks = flower_tasks(flower_client)
    finally:
        app.close()
        send.http.close()
    birds_list = list(birds.values())
    our_ids = set(send.intakes.values())
    found: list[str] = []
    for path in [*stack.logs(), flower_service.log]:
        found += leaks(path.name, path.read_text(errors="replace").splitlines(), birds_list)
    found += leaks("celery-event", [json.dumps(e, default=str) for e in tap_events.events], birds_list)
    found += leaks("redis-monitor", tap.commands, birds_list)
    found += leaks("flower-task", [json.dumps(t, default=str) for t in tasks.values()], birds_list)
    messages_with_our_ids = sum(
        any(i in v for v in decoded_variants(cmd) for i in our_ids) for cmd in tap.commands if "PUSH" in cmd.upper()
    )
    flower_ours = [t for t in tasks.values() if any(i in str(t.get("args", "")) for i in our_ids)]
    f = {
        "sources": [*SOURCES, "outbound_text", "bulk_share"],
        "answers": send.answers,
        "intakes_done": seen["done"],
        "follow_up": work,
        "log_lines_scanned": sum(
            len(p.read_text(errors="replace").splitlines()) for p in [*stack.logs(), flower_service.log]
        ),
        "celery_events": len(tap_events.events),
        "redis_commands": len(tap.commands),
        "task_messages_with_our_ids": messages_with_our_ids,
        "flower_tasks": len(tasks),
        "flower_tasks_of_our_intakes": len(flower_ours),
        "leaks": len(found),
        "leak_examples": found[:8],
        "duration_s": round(time.monotonic() - t0, 1),
    }
    report("7 PII canaries", f)
    assert not found, "personal data outside the database:\n" + "\n".join(found[:40])
    # The canaries got in and the taps saw the traffic: an empty scan proves nothing.
    assert seen["done"] == len(send.intakes), seen
    assert work
    reached = stored_canaries(stack, birds)
    assert reached == {s for s in SOURCES if s not in ("candidates", "lead_filter")}, reached
    assert tap_events.events
    assert messages_with_our_ids > 0
    # Not every intake has a task of its own (a signup that comes while its account's task is queued is taken
    # by that task, and no message names it): Flower lists every task the broker carried for them.
    carried = {
        i
        for i in our_ids
        if any(i in v for cmd in tap.commands if "PUSH" in cmd.upper() for v in decoded_variants(cmd))
    }
    listed = {i for i in our_ids if any(i in str(t.get("args", "")) for t in flower_ours)}
    assert carried, "the broker carried tasks of the intakes"
    assert listed >= carried, f"Flower listed the intakes' tasks: missing {sorted(carried - listed)}"


def follow_up(stack: Stack, send: Sender, birds: dict[str, Canary]) -> dict[str, Any]:
    """The work endpoints on the canary leads: a contact edit (phone), an outbound text, a bulk share; and
    the CSV import run to its end."""
    olivia = send.user("olivia")
    lead_of = dict(
        query(
            stack.dsn,
            "SELECT id::text, lead_id::text FROM intakes WHERE id = ANY(%s::uuid[])",
            (list(send.intakes.values()),),
        )
    )
    patched = send.http.patch(
        f"/v1/leads/{lead_of[send.intakes['lead_patch']]}", json={"phone": birds["lead_patch"].phone}, headers=olivia
    )
    assert patched.status_code == 200, patched.text
    texted = send.http.post(
        f"/v1/leads/{lead_of[send.intakes['registration']]}/messages",
        json={"body": "Hello from Demo Realty, when can we show you 12 Oak St?"},
        headers=olivia,
    )
    assert texted.status_code == 202, texted.text
    company_leads = [lead for lead in lead_of.values() if lead]
    bulk = send.http.post(
        "/v1/leads/bulk", json={"action": "share", "lead_ids": company_leads, "user_id": "bob"}, headers=olivia
    )
    assert bulk.status_code == 202, bulk.text
    message_id = texted.json()["message_id"]

    job_url = urlsplit(bulk.json()["status_url"]).path

    def finished() -> bool:
        (status,) = query(stack.dsn, "SELECT status FROM messages WHERE id = %s::uuid", (message_id,))[0]
        job = send.http.get(job_url, headers=olivia).json()
        imported = send.http.get(send.import_url, headers=send.user("john")).json()
        return (
            status in ("sent", "delivered", "failed")
            and job["status"] in ("done", "failed")
            and imported["status"] in ("done", "failed")
        )

    wait_for(finished, timeout=60, interval=0.2, what="the text, the bulk job and the import")
    job = send.http.get(job_url, headers=olivia).json()
    imported = send.http.get(send.import_url, headers=send.user("john")).json()
    assert imported["status"] == "done", imported
    assert imported["created"] == 1, imported
    assert job["status"] == "done", job
    return {
        "patch": patched.status_code,
        "text": texted.status_code,
        "bulk_done": job["done"],
        "import": imported["status"],
    }


def settle(stack: Stack, account: str) -> None:
    """Until the account's mail is sent (the notifications are tasks too)."""

    def sent() -> bool:
        (pending,) = query(
            stack.dsn,
            "SELECT count(*) FROM outbox o JOIN accounts a ON a.id = o.account_id WHERE a.slug = %s AND o.status = 'pending'",
            (account,),
        )[0]
        return int(pending) == 0

    wait_for(sent, timeout=30, interval=0.2, what="the account's mail")


def flower_tasks(client: httpx.Client) -> dict[str, Any]:
    r = client.get("/api/tasks", params={"limit": "100000"})
    assert r.status_code == 200, r.text
    return dict(r.json())


def stored_canaries(stack: Stack, birds: dict[str, Canary]) -> set[str]:
    """The sources whose canary reached the database (as a lead, or as kept site activity)."""
    reached = set()
    for source, c in birds.items():
        (leads,) = query(
            stack.dsn, "SELECT count(*) FROM leads WHERE email_normalized = %s OR phone_e164 = %s", (c.email, c.phone)
        )[0]
        (activity,) = query(stack.dsn, "SELECT count(*) FROM site_activity WHERE email_normalized = %s", (c.email,))[0]
        if leads or activity:
            reached.add(source)
    return reached
