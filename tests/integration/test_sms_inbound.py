"""Inbound texts: Twilio's webhooks signed by the real ``twilio`` package, the reply routed to the
lead and agent that texted that phone last (S1-S3, O6), STOP and START (S4, D8), and delivery reports of
outbound texts, end to end through the API, Redis and two real Celery workers on PostgreSQL.

Outbound texts are rows written straight into ``messages`` with explicit times: what S1 reads, whoever
sends them (``POST /v1/leads/{id}/messages`` is tested on its own)."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import subprocess
import sys
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from sqlalchemy import event, func, select
from sqlalchemy.engine.interfaces import CacheStats
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

from leadrelay.settings import get_settings
from models.db import get_engine
from models.migrate import upgrade
from models.secrets import Keyring, UndecryptableSecret, generate_key
from models.tables import (
    Intake,
    IntakeSource,
    IntakeStatus,
    Lead,
    Message,
    MessageStatusCallback,
    Outbox,
)
from models.uow import UnitOfWork
from rules.texts import InboundText
from tests.integration.conftest import PG_ADMIN, SmtpSink, apply, delete_broker_queues
from tests.integration.test_pipeline import count_intakes
from tests.integration.test_sms_outbound import api_logdir, log_lines
from tests.integration.test_working_leads import mails_to, text_of
from tests.support.client import Brokerage
from tests.support.leads import make_lead
from tests.support.orgs import brokerage
from tests.support.processes import ROOT, api_server, child_env, wait_for
from workers import intakes, texts
from workers.services import Outcome

pytestmark = pytest.mark.integration

TOKEN_ENV, NEXT_TOKEN_ENV = "LEADRELAY_TEST_TWILIO_TOKEN", "LEADRELAY_TEST_TWILIO_TOKEN_NEXT"
TOKEN, NEXT_TOKEN = "twilio-test-token-current", "twilio-test-token-next"  # tests/integration/conftest.py
# Tokens written in the org file itself (sms.auth_tokens), kept encrypted.
LITERAL_TOKEN, LITERAL_NEXT_TOKEN = "twilio-literal-token-8c4e1a", "twilio-literal-token-next-3f9d2b"
INBOUND, STATUS = "/v1/intake/sms/twilio", "/v1/intake/sms/twilio/status"
NOW = dt.datetime.now(dt.UTC)
YESTERDAY = NOW - dt.timedelta(days=1)
# Other messages in the table when the reply-routing query is explained: the benchmark's figure is a million
# (about 35 s to write); the suite uses a tenth, which already makes a sequential scan the planner's
# loss. LEADRELAY_TEST_EXPLAIN_ROWS=1000000 runs the benchmark's figure (docs/benchmarks.md shows that plan).
EXPLAIN_ROWS = int(os.environ.get("LEADRELAY_TEST_EXPLAIN_ROWS", "100000"))

_used: set[str] = set()


def fresh_number() -> str:
    """A possible US number not used yet in this run (smart numbers are unique across accounts)."""
    while True:
        number = f"+1555{random.randint(2_000_000, 9_999_999)}"
        if number not in _used:
            _used.add(number)
            return number


class Texting(Brokerage):
    """An account with smart numbers (the company's, john's, the downtown office's) and Twilio's webhooks."""

    numbers: dict[str, str]

    def public(self, path: str) -> str:
        return get_settings().public_base_url.rstrip("/") + path

    def signed(self, path: str, fields: dict[str, str], *, token: str = TOKEN, url: str | None = None) -> str:
        return str(RequestValidator(token).compute_signature(url or self.public(path), fields))

    def post_signed(
        self,
        path: str,
        fields: dict[str, str],
        *,
        token: str = TOKEN,
        url: str | None = None,
        sent: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Post ``sent`` (default: ``fields``) signed over ``fields`` and ``url`` with ``token``."""
        signature = {"X-Twilio-Signature": self.signed(path, fields, token=token, url=url)}
        return httpx.post(
            f"{self.base}{path}", data=sent or fields, headers={**signature, **(headers or {})}, timeout=30
        )

    def inbound(self, from_: str, body: str, *, to: str = "co", sid: str | None = None) -> dict[str, str]:
        return {
            "MessageSid": sid or f"SM{uuid.uuid4().hex}",
            "AccountSid": "ACtest",
            "From": from_,
            "To": self.numbers.get(to, to),
            "Body": body,
            "NumMedia": "0",
            "ApiVersion": "2010-04-01",
            "SmsStatus": "received",
        }

    def text_in(self, from_: str, body: str, **kwargs: Any) -> dict[str, Any]:
        """Text the smart number and wait for the worker: the intake, with ``sid``."""
        fields = self.inbound(from_, body, **kwargs)
        r = self.post_signed(INBOUND, fields)
        assert r.status_code == 200, r.text
        intake = self.wait_done(str(self.sms_intake(fields["MessageSid"])))
        assert intake["status"] == "done", intake
        return {**intake, "sid": fields["MessageSid"]}

    def sms_intake(self, sid: str) -> uuid.UUID:
        with UnitOfWork() as uow:
            return uow.session.execute(
                select(Intake.id).where(
                    Intake.account_id == self.account_id,
                    Intake.source == IntakeSource.SMS,
                    Intake.idempotency_key == sid,
                )
            ).scalar_one()

    @property
    def account_id(self) -> int:
        with UnitOfWork() as uow:
            account = uow.orgs.account_by_slug(self.org["account"])
            assert account is not None
            return account.id

    def entity_id(self, slug: str) -> int:
        with UnitOfWork() as uow:
            entity = uow.orgs.entity_by_slug(self.account_id, slug)
            assert entity is not None
            return entity.id

    def signup(self, site: str, email: str, phone: str) -> str:
        intake = self.register_and_wait(site, email, phone=phone)
        assert intake["status"] == "done", intake
        return str(intake["lead_id"])

    def texted(self, lead_id: str, agent: str, at: dt.datetime, *, sid: str | None = None, status: str = "sent") -> str:
        """An outbound text to the lead's phone, as the send side records it, at ``at``."""
        with UnitOfWork() as uow:
            lead = uow.leads.get(uuid.UUID(lead_id))
            assert lead is not None
            assert lead.phone_e164 is not None
            message = Message(
                id=uuid.uuid4(),
                account_id=lead.account_id,
                lead_id=lead.id,
                direction="outbound",
                lead_phone=lead.phone_e164,
                smart_number=self.numbers["co"],
                body="12 Oak St just listed: https://listings.test/123",
                agent_id=self.entity_id(agent),
                provider_sid=sid,
                status=status,
                created_at=at,
                updated_at=at,
            )
            uow.session.add(message)
            uow.commit()
            return str(message.id)

    def events(self, lead_id: str, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.timeline(lead_id) if e["kind"] == kind]


def texting_org(
    *, tokens: tuple[str, ...] = (TOKEN_ENV,), literal: tuple[str, ...] = (), jill_takes_company_leads: bool = True
) -> dict[str, Any]:
    """``tokens`` names variables (auth_tokens_env); ``literal`` gives tokens in the file (auth_tokens)."""
    org = brokerage()
    numbers = {"co": fresh_number(), "john": fresh_number(), "downtown": fresh_number()}
    for entity in org["entities"]:
        if entity["id"] in numbers:
            entity["smart_numbers"] = [numbers[entity["id"]]]
    org["sms"] = {"provider": "twilio", "account_sid": "ACtest", "auth_tokens_env": list(tokens)}
    if literal:
        org["sms"]["auth_tokens"] = list(literal)
    if jill_takes_company_leads:
        org["routing"][0]["rules"] = [{"name": "Jill takes all", "agents": ["jill"]}]
    org["_numbers"] = numbers
    return org


@pytest.fixture
def texting(api: str) -> Iterator[Any]:
    made: list[Texting] = []

    def make(**kwargs: Any) -> Texting:
        org = texting_org(**kwargs)
        numbers = org.pop("_numbers")
        t = Texting(api, apply(org))
        t.numbers = numbers
        made.append(t)
        return t

    yield make
    for t in made:
        t.site.close()


@pytest.fixture
def acme(texting: Any) -> Texting:
    return texting()  # type: ignore[no-any-return]


def inbound_messages(sid: str) -> list[Message]:
    with UnitOfWork() as uow:
        rows = list(uow.session.execute(select(Message).where(Message.provider_sid == sid)).scalars())
        for row in rows:
            uow.session.expunge(row)
        return rows


def lead_row(lead_id: str) -> Lead:
    with UnitOfWork() as uow:
        lead = uow.leads.get(uuid.UUID(lead_id))
        assert lead is not None
        uow.session.expunge(lead)
        return lead


def outbox_for(account_id: int, sid: str) -> list[Outbox]:
    with UnitOfWork() as uow:
        rows = list(
            uow.session.execute(select(Outbox).where(Outbox.dedupe_key == f"text:{account_id}:{sid}")).scalars()
        )
        for row in rows:
            uow.session.expunge(row)
        return rows


# --- signatures ---------------------------------------------------------------------------------------


def test_a_validly_signed_text_is_kept_before_the_answer_and_answered_with_empty_twiml(acme: Texting) -> None:
    """Twilio's webhook is answered ``200 text/xml <Response/>``; the text is stored before the answer (accepted means kept)."""
    fields = acme.inbound(fresh_number(), "Hello")
    fields["SomethingTwilioAddsLater"] = "kept"
    r = acme.post_signed(INBOUND, fields)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/xml")
    assert "<Response/>" in r.text
    with UnitOfWork() as uow:
        intake = uow.intakes.get(acme.sms_intake(fields["MessageSid"]))  # committed before the 200
        assert intake is not None
        assert "SomethingTwilioAddsLater=kept" in intake.raw_body
        assert intake.payload["message_sid"] == fields["MessageSid"]
        assert intake.payload["to"] == acme.numbers["co"]


@pytest.mark.parametrize(
    "how",
    [
        "missing",
        "tampered body",
        "wrong url",
        "the server's own url",
        "forwarded host",
        "wrong token",
        "unknown number",
    ],
)
def test_a_missing_or_wrong_signature_or_an_unknown_number_is_403_and_stores_nothing(acme: Texting, how: str) -> None:
    """The signature is checked with the account's token over ``LEADRELAY_PUBLIC_BASE_URL`` and the path, never
    over the URL the request reached or one rebuilt from ``X-Forwarded-*``; a number no account has is refused."""
    fields = acme.inbound(fresh_number(), "Hello")
    before = count_intakes(acme.org["account"])
    if how == "missing":
        r = httpx.post(f"{acme.base}{INBOUND}", data=fields, timeout=30)
    elif how == "tampered body":
        r = acme.post_signed(INBOUND, fields, sent={**fields, "Body": "Hello, send me everything"})
    elif how == "wrong url":
        r = acme.post_signed(INBOUND, fields, url="https://elsewhere.example/v1/intake/sms/twilio")
    elif how == "the server's own url":
        r = acme.post_signed(INBOUND, fields, url=f"{acme.base}{INBOUND}")
    elif how == "forwarded host":
        forwarded = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https", "Host": "evil.example"}
        r = acme.post_signed(INBOUND, fields, url=f"https://evil.example{INBOUND}", headers=forwarded)
    elif how == "wrong token":
        r = acme.post_signed(INBOUND, fields, token=NEXT_TOKEN)  # a real token, but not this account's
    else:
        fields["To"] = fresh_number()
        r = acme.post_signed(INBOUND, fields)
    assert r.status_code == 403, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 403
    assert count_intakes(acme.org["account"]) == before


def test_rotation_both_the_old_and_the_new_token_are_valid_while_the_account_names_both(texting: Any) -> None:
    rotating = texting(tokens=(TOKEN_ENV, NEXT_TOKEN_ENV))
    for token in (TOKEN, NEXT_TOKEN):
        r = rotating.post_signed(INBOUND, rotating.inbound(fresh_number(), "Hi"), token=token)
        assert r.status_code == 200, (token, r.text)
    rotated = texting(tokens=(NEXT_TOKEN_ENV,))
    assert rotated.post_signed(INBOUND, rotated.inbound(fresh_number(), "Hi"), token=NEXT_TOKEN).status_code == 200
    assert rotated.post_signed(INBOUND, rotated.inbound(fresh_number(), "Hi"), token=TOKEN).status_code == 403


def test_literal_auth_tokens_of_the_org_file_verify_a_signed_text_which_is_kept(texting: Any) -> None:
    """``sms.auth_tokens`` in the file: stored encrypted, decrypted by the API, every one accepted."""
    t = texting(tokens=(), literal=(LITERAL_TOKEN, LITERAL_NEXT_TOKEN))
    for token in (LITERAL_TOKEN, LITERAL_NEXT_TOKEN):
        fields = t.inbound(fresh_number(), "Is it still for sale?")
        r = t.post_signed(INBOUND, fields, token=token)
        assert r.status_code == 200, r.text
        assert "<Response/>" in r.text
        intake = t.wait_done(str(t.sms_intake(fields["MessageSid"])))
        assert intake["status"] == "done", intake
    assert t.post_signed(INBOUND, t.inbound(fresh_number(), "Hi"), token=TOKEN).status_code == 403  # not its token


def test_literal_and_variable_auth_tokens_given_together_both_verify(texting: Any) -> None:
    t = texting(tokens=(NEXT_TOKEN_ENV,), literal=(LITERAL_TOKEN,))
    for token in (LITERAL_TOKEN, NEXT_TOKEN):
        r = t.post_signed(INBOUND, t.inbound(fresh_number(), "Hi"), token=token)
        assert r.status_code == 200, (token, r.text)
    assert t.post_signed(INBOUND, t.inbound(fresh_number(), "Hi"), token=TOKEN).status_code == 403


def test_every_refusal_of_a_webhook_answers_the_same_403_and_logs_the_real_reason_masked(
    texting: Any, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A caller without a token must not learn which numbers are smart numbers, nor which have a token."""
    acme = texting()
    # Set for `org apply` in this process only: the API has no such variable, so this account has no token.
    monkeypatch.setenv("LEADRELAY_TEST_TWILIO_TOKEN_NOT_IN_THE_API", "only-here")
    tokenless = texting(tokens=("LEADRELAY_TEST_TWILIO_TOKEN_NOT_IN_THE_API",))
    unknown = fresh_number()
    answers = {
        "unknown number": acme.post_signed(INBOUND, acme.inbound(fresh_number(), "Hi", to=unknown)),
        "no token configured": tokenless.post_signed(INBOUND, tokenless.inbound(fresh_number(), "Hi")),
        "bad signature": acme.post_signed(INBOUND, acme.inbound(fresh_number(), "Hi"), token=NEXT_TOKEN),
        "missing signature": httpx.post(f"{acme.base}{INBOUND}", data=acme.inbound(fresh_number(), "Hi"), timeout=30),
        "status of an unknown sid": acme.post_signed(
            STATUS, {"MessageSid": f"SM{uuid.uuid4().hex}", "MessageStatus": "delivered", "From": unknown}
        ),
    }
    assert {how: r.status_code for how, r in answers.items()} == dict.fromkeys(answers, 403)
    assert len({(r.content, r.headers["content-type"]) for r in answers.values()}) == 1, {
        how: r.text for how, r in answers.items()
    }

    reasons = {
        "To is not a smart number of any account",
        "no auth token is configured for this number's account",
        "X-Twilio-Signature does not match this request",
        "X-Twilio-Signature is missing",
        "neither From nor MessageSid belongs to an account",
    }

    def logged_reasons() -> set[str]:
        lines = [line for line in log_lines(api_logdir(tmp_path_factory)) if "sms.webhook_refused" in line]
        return {str(json.loads(line).get("reason")) for line in lines} & reasons

    wait_for(lambda: logged_reasons() == reasons, timeout=30, what="the refusals in the API's log")
    assert unknown not in "\n".join(log_lines(api_logdir(tmp_path_factory)))


def test_rotating_the_secret_key_reencrypts_the_tokens_and_the_new_key_alone_verifies(
    pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    """Apply with key A; put B first ("B,A") and run ``leadrelay secrets rotate`` (twice: the second
    re-encrypts nothing); then an API with B alone verifies the token. A database of its own, because
    rotating re-encrypts every account of a database, and the run's shared one holds others."""
    key_a, key_b = generate_key(), generate_key()
    name = f"leadrelay_rotate_{uuid.uuid4().hex[:10]}"
    prefix = f"t{uuid.uuid4().hex[:8]}."
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    env = {**pipeline_env, "LEADRELAY_DATABASE_URL": url, "LEADRELAY_QUEUE_PREFIX": prefix}
    try:
        upgrade(url)
        org = texting_org(tokens=(), literal=(LITERAL_TOKEN,))
        number = org.pop("_numbers")["co"]
        path = tmp_path / "org.yaml"
        path.write_text(yaml.safe_dump(org))

        def leadrelay(*args: str, key: str) -> str:
            result = subprocess.run(
                [sys.executable, "-m", "leadrelay", *args],
                env=child_env({**env, "LEADRELAY_SECRET_KEY": key, "COLUMNS": "200"}),
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )
            assert result.returncode == 0, result.stdout + result.stderr
            assert LITERAL_TOKEN not in result.stdout + result.stderr
            return result.stdout

        leadrelay("org", "apply", str(path), key=key_a)
        assert "re-encrypted 1 value(s)" in leadrelay("secrets", "rotate", key=f"{key_b},{key_a}")
        assert "re-encrypted 0 value(s)" in leadrelay("secrets", "rotate", key=f"{key_b},{key_a}")
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            row = conn.execute("SELECT sms_auth_tokens_encrypted FROM accounts").fetchone()
        assert row is not None
        (stored,) = row[0]
        with pytest.raises(UndecryptableSecret):
            Keyring([key_a]).decrypt(stored)

        fields = {"MessageSid": f"SM{uuid.uuid4().hex}", "From": fresh_number(), "To": number, "Body": "Hi"}
        with api_server({**env, "LEADRELAY_SECRET_KEY": key_b}, tmp_path / "api.log") as base:
            signature = RequestValidator(LITERAL_TOKEN).compute_signature(
                get_settings().public_base_url.rstrip("/") + INBOUND, fields
            )
            r = httpx.post(f"{base}{INBOUND}", data=fields, headers={"X-Twilio-Signature": signature}, timeout=30)
        assert r.status_code == 200, r.text
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            kept = conn.execute("SELECT count(*) FROM intakes WHERE idempotency_key = %s", (fields["MessageSid"],))
            assert kept.fetchone() == (1,)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        delete_broker_queues(prefix)


def test_a_signed_text_without_a_message_sid_is_a_422_naming_it(acme: Texting) -> None:
    fields = acme.inbound(fresh_number(), "Hi")
    del fields["MessageSid"]
    r = acme.post_signed(INBOUND, fields)
    assert r.status_code == 422, r.text
    assert r.json()["errors"] == [{"field": "MessageSid", "message": "required, at most 64 characters"}]


# --- S1, S3: the John and Jill story ------------------------------------------------------------------


def test_S1_john_texted_yesterday_jill_today_the_reply_goes_to_jill_on_the_lead_jill_texted(
    acme: Texting, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The help articles' own example: John and Jill are in the same office; John's campaign texted his lead yesterday, Jill texted a
    listing to her (company-owned) lead today: the reply goes to Jill, on the lead Jill texted (S3: with the
    reason, and Jill is told). If John texts again, the next reply goes to him."""
    phone = fresh_number()
    johns = acme.signup("john", "ann@example.com", phone)  # John's site: John owns and is assigned (O2)
    jills = acme.signup("co", "ann@example.com", phone)  # the company site: company-owned, routed to Jill
    assert acme.lead(johns)["assigned_agent"]["id"] == "john"
    assert acme.lead(jills)["assigned_agent"]["id"] == "jill"
    acme.texted(johns, "john", YESTERDAY)
    jills_text = acme.texted(jills, "jill", NOW - dt.timedelta(hours=1))

    reply = acme.text_in(phone, "Is 12 Oak still available?")

    assert reply["lead_id"] == jills
    [event] = acme.events(jills, "text_received")
    assert event["data"]["rule"] == "S1"
    assert event["data"]["agent"] == "jill"
    assert event["data"]["deciding_text"]["message_id"] == jills_text
    assert event["data"]["deciding_text"]["agent"] == "jill"
    assert "Jill Jones" in event["summary"]
    assert "Is 12 Oak still available?" in event["summary"]
    assert sorted(event["data"]["candidates"]) == sorted([johns, jills])
    assert acme.events(johns, "text_received") == []
    [message] = inbound_messages(reply["sid"])
    assert (str(message.lead_id), message.direction, message.agent_id) == (jills, "inbound", acme.entity_id("jill"))
    assert message.intake_id == uuid.UUID(reply["id"])
    [mail] = outbox_for(acme.account_id, reply["sid"])
    assert mail.to_address == "jill@co.test"
    assert "Is 12 Oak still available?" in mail.body
    assert phone not in mail.subject  # the subject is logged when the mail goes out

    acme.texted(johns, "john", NOW)
    assert acme.text_in(phone, "And 14 Oak?")["lead_id"] == johns
    # Logs never hold the lead's phone: the API's and the workers' (every log file of this run).
    logs = "\n".join(path.read_text() for path in tmp_path_factory.getbasetemp().glob("**/*.log"))
    assert "intake.accepted" in logs
    assert phone[2:] not in logs


def test_S1_three_duplicates_with_interleaved_texts_the_latest_text_decides_and_other_accounts_do_not_count(
    acme: Texting, texting: Any
) -> None:
    phone = fresh_number()
    johns = acme.signup("john", "bo@example.com", phone)
    jills = acme.signup("co", "bo@example.com", phone)
    taras = acme.signup("sunrise", "bo@example.com", phone)  # the team's lead, to its admin Tara (O4)
    assert acme.lead(taras)["assigned_agent"]["id"] == "tara"
    for lead_id, agent, hours_ago in ((johns, "john", 5), (jills, "jill", 4), (taras, "tara", 3), (johns, "john", 2)):
        acme.texted(lead_id, agent, NOW - dt.timedelta(hours=hours_ago))
    deciding = acme.texted(jills, "jill", NOW - dt.timedelta(hours=1))
    # Another brokerage texted the same phone more recently: nothing crosses accounts (V4).
    other = texting()
    other.texted(other.signup("co", "bo@example.com", phone), "jill", NOW)

    reply = acme.text_in(phone, "Yes please")
    assert reply["lead_id"] == jills
    assert acme.events(jills, "text_received")[0]["data"]["deciding_text"]["message_id"] == deciding

    acme.texted(taras, "tara", NOW)
    assert acme.text_in(phone, "Tara, call me")["lead_id"] == taras


def test_S3_every_inbound_text_is_on_its_leads_timeline_with_the_reason_and_its_agent_is_mailed(
    acme: Texting, smtp_server: SmtpSink
) -> None:
    """Whatever routed it (S1, S2, or O6 making a new lead), a text lands on the timeline of the lead it went
    to, with the rule and the reason, and that lead's assignee gets a mail over SMTP. A lead in a team's pond
    has nobody to tell: its event says so and no mail is written."""
    known, unknown, pond_phone = fresh_number(), fresh_number(), fresh_number()
    johns = acme.signup("john", f"s3-{uuid.uuid4().hex[:6]}@example.com", known)
    acme.texted(johns, "john", YESTERDAY)
    pond = make_lead(str(acme.org["account"]), owner="sunrise", phone=pond_phone, in_pond=True, first_name="Pia")

    by_rule = {
        "S1": acme.text_in(known, "Still open on Sunday?", to="co"),
        "O6": acme.text_in(unknown, "Saw your sign on Birch Ln", to="co"),
        "S2": acme.text_in(pond_phone, "Anyone there?", to="co"),
    }

    viewer = {"S1": "john", "O6": "olivia", "S2": "tara"}  # the team's lead: its admin
    for rule, reply in by_rule.items():
        timeline = acme.timeline(reply["lead_id"], viewer[rule])
        [event] = [e for e in timeline if e["kind"] == "text_received" and e["data"]["provider_sid"] == reply["sid"]]
        assert event["data"]["rule"] == rule, event
        assert event["data"]["reason"].startswith(f"{rule}:"), event
        assert event["data"]["reason"] in event["summary"], event
    assert by_rule["S1"]["lead_id"] == johns
    assert by_rule["S2"]["lead_id"] == pond
    assert acme.lead(by_rule["O6"]["lead_id"])["assigned_agent"]["id"] == "jill"  # Jill takes the company's leads

    def text_mails(address: str, lead_id: str) -> list[str]:
        found = mails_to(smtp_server, address, [lead_id])
        return [text_of(m) for m in found if m["Subject"] == "New text from a lead"]

    for address, lead_id, body in (
        ("john@co.test", johns, "Still open on Sunday?"),
        ("jill@co.test", by_rule["O6"]["lead_id"], "Saw your sign on Birch Ln"),
    ):
        wait_for(lambda a=address, i=lead_id: text_mails(a, i), timeout=30, what=f"the text's mail to {address}")
        [mail] = text_mails(address, lead_id)
        assert body in mail
    [pond_event] = [e for e in acme.timeline(pond, "tara") if e["kind"] == "text_received"]
    assert pond_event["data"]["agent"] is None
    assert "nobody is assigned to this lead" in pond_event["summary"]
    assert outbox_for(acme.account_id, by_rule["S2"]["sid"]) == []


# --- S2, O6 ----------------------------------------------------------------------------------------


def test_S2_with_no_outbound_text_the_lead_of_the_numbers_entity_else_the_most_recently_active(acme: Texting) -> None:
    phone = fresh_number()
    johns = acme.signup("john", "cy@example.com", phone)
    company = acme.signup("co", "cy@example.com", phone)

    to_company = acme.text_in(phone, "Hi", to="co")
    assert to_company["lead_id"] == company
    assert acme.events(company, "text_received")[0]["data"]["rule"] == "S2"
    assert acme.text_in(phone, "Hi John", to="john")["lead_id"] == johns

    # The downtown office owns neither lead: the most recently active one (John's, after its text above).
    reply = acme.text_in(phone, "Anyone?", to="downtown")
    assert reply["lead_id"] == johns
    event = next(e for e in acme.events(johns, "text_received") if e["data"]["provider_sid"] == reply["sid"])
    assert event["data"]["rule"] == "S2"
    assert "most recently active" in event["data"]["reason"]


def test_O6_an_unknown_phone_makes_a_lead_owned_by_the_numbers_entity_and_routed_by_its_rules(acme: Texting) -> None:
    phone = fresh_number()
    reply = acme.text_in(phone, "Saw your sign on Elm St", to="co")
    lead = acme.lead(reply["lead_id"])
    assert lead["owner"]["id"] == "co"
    assert lead["assigned_agent"]["id"] == "jill"  # the company's rules: "Jill takes all"
    assert lead["phone"] == phone
    assert lead["source"]["kind"] == "sms"
    kinds = [e["kind"] for e in acme.timeline(reply["lead_id"])]
    assert kinds == ["created", "routed", "text_received"]
    assert acme.events(reply["lead_id"], "created")[0]["data"]["rule"] == "O6"
    assert acme.events(reply["lead_id"], "text_received")[0]["data"]["rule"] == "O6"
    assert outbox_for(acme.account_id, reply["sid"])[0].to_address == "jill@co.test"

    # An agent's number: the agent owns the lead and is assigned (O6 with O2's shape); the next text joins it.
    other = fresh_number()
    johns = acme.text_in(other, "Hi John", to="john")
    assert acme.lead(johns["lead_id"])["owner"]["id"] == "john"
    assert acme.lead(johns["lead_id"])["assigned_agent"]["id"] == "john"
    assert acme.text_in(other, "Again", to="john")["lead_id"] == johns["lead_id"]


def test_a_sender_that_is_not_a_phone_number_is_kept_and_rejected_with_its_reason(acme: Texting) -> None:
    fields = acme.inbound("whatsapp:not-a-number", "Hi")
    assert acme.post_signed(INBOUND, fields).status_code == 200
    intake = acme.wait_done(str(acme.sms_intake(fields["MessageSid"])))
    assert intake["status"] == "rejected"
    assert intake["reason"].startswith("D9")


# --- redelivery -------------------------------------------------------------------------------------------


def test_a_message_sid_delivered_five_times_at_once_is_kept_and_routed_once(acme: Texting) -> None:
    """Twilio retries: five copies of one text arriving together answer alike and make one reply."""
    phone = fresh_number()
    lead_id = acme.signup("co", "di@example.com", phone)
    fields = acme.inbound(phone, "Only once please")
    signature = acme.signed(INBOUND, fields)
    answers: list[httpx.Response] = []
    barrier = threading.Barrier(5)

    def post() -> None:
        barrier.wait()
        answers.append(
            httpx.post(f"{acme.base}{INBOUND}", data=fields, headers={"X-Twilio-Signature": signature}, timeout=30)
        )

    threads = [threading.Thread(target=post) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [(r.status_code, r.text) for r in answers] == [(200, answers[0].text)] * 5
    intake = acme.wait_done(str(acme.sms_intake(fields["MessageSid"])))
    assert intake["lead_id"] == lead_id
    again = acme.post_signed(INBOUND, fields)  # a sixth, once it is processed
    assert (again.status_code, again.text) == (200, answers[0].text)

    with UnitOfWork() as uow:
        intakes = uow.session.execute(
            select(func.count()).select_from(Intake).where(Intake.idempotency_key == fields["MessageSid"])
        ).scalar_one()
    assert intakes == 1
    assert len(inbound_messages(fields["MessageSid"])) == 1
    assert len(acme.events(lead_id, "text_received")) == 1
    assert len(outbox_for(acme.account_id, fields["MessageSid"])) == 1


# --- S4: STOP and START -----------------------------------------------------------------------------------


def test_S4_D8_stop_unsubscribes_the_lead_replied_on_only_and_start_resubscribes_it(acme: Texting) -> None:
    phone = fresh_number()
    johns = acme.signup("john", "ed@example.com", phone)
    jills = acme.signup("co", "ed@example.com", phone)
    acme.texted(johns, "john", YESTERDAY)
    acme.texted(jills, "jill", NOW)

    assert acme.text_in(phone, " stop ")["lead_id"] == jills
    assert lead_row(jills).sms_unsubscribed is True
    assert lead_row(johns).sms_unsubscribed is False  # D8: its duplicate stays subscribed
    [note] = acme.events(jills, "sms_unsubscribed")
    assert note["data"] == {**note["data"], "rule": "S4", "keyword": "STOP", "changed": True}
    assert acme.events(johns, "sms_unsubscribed") == []

    assert acme.text_in(phone, "START")["lead_id"] == jills
    assert lead_row(jills).sms_unsubscribed is False
    assert len(acme.events(jills, "sms_resubscribed")) == 1

    assert acme.text_in(phone, "Please stop calling me at work")["lead_id"] == jills  # a message, not a keyword
    assert lead_row(jills).sms_unsubscribed is False


# --- delivery reports -----------------------------------------------------------------------------------


def status(b: Texting, sid: str, value: str, *, error: str | None = None, token: str = TOKEN) -> httpx.Response:
    fields = {
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": value,
        "SmsStatus": value,
        "AccountSid": "ACtest",
        "From": b.numbers["co"],
        "To": "+15552000000",
        "ApiVersion": "2010-04-01",
    }
    if error:
        fields["ErrorCode"] = error
    return b.post_signed(STATUS, fields, token=token)


def message_row(message_id: str) -> Message:
    with UnitOfWork() as uow:
        row = uow.session.get(Message, uuid.UUID(message_id))
        assert row is not None
        uow.session.expunge(row)
        return row


def kept_callbacks(sid: str) -> list[str]:
    with UnitOfWork() as uow:
        return sorted(
            uow.session.execute(
                select(MessageStatusCallback.status).where(MessageStatusCallback.provider_sid == sid)
            ).scalars()
        )


def test_status_callbacks_out_of_order_are_kept_once_and_only_move_a_text_forward(acme: Texting) -> None:
    lead_id = acme.signup("co", "fa@example.com", fresh_number())
    sid = f"SM{uuid.uuid4().hex}"
    message_id = acme.texted(lead_id, "jill", NOW, sid=sid, status="queued")
    for value in ("sent", "delivered", "sending", "sent", "queued", "delivered"):
        r = status(acme, sid, value)
        assert r.status_code == 200, r.text
        assert "<Response/>" in r.text
    assert message_row(message_id).status == "delivered"
    assert kept_callbacks(sid) == ["delivered", "queued", "sending", "sent"]

    failing = f"SM{uuid.uuid4().hex}"
    failed_id = acme.texted(lead_id, "jill", NOW, sid=failing, status="sent")
    assert status(acme, failing, "undelivered", error="30003").status_code == 200
    assert status(acme, failing, "sent").status_code == 200
    row = message_row(failed_id)
    assert (row.status, row.error) == ("undelivered", "gateway error 30003")


def test_a_status_callback_before_the_sid_is_recorded_is_applied_when_it_is(acme: Texting) -> None:
    """The gateway may report before the send call returns: the report is kept, and the send side applies it
    (``workers.texts.apply_pending_statuses``) in the transaction that records the sid."""
    lead_id = acme.signup("co", "gi@example.com", fresh_number())
    sid = f"SM{uuid.uuid4().hex}"
    assert status(acme, sid, "delivered").status_code == 200
    message_id = acme.texted(lead_id, "jill", NOW, status="sending")
    assert message_row(message_id).status == "sending"
    with UnitOfWork() as uow:
        message = uow.session.get(Message, uuid.UUID(message_id))
        assert message is not None
        message.provider_sid = sid
        texts.apply_pending_statuses(uow, message)
        uow.commit()
    assert message_row(message_id).status == "delivered"


def test_status_callbacks_are_signed_too(acme: Texting) -> None:
    lead_id = acme.signup("co", "hu@example.com", fresh_number())
    sid = f"SM{uuid.uuid4().hex}"
    message_id = acme.texted(lead_id, "jill", NOW, sid=sid, status="sent")
    assert status(acme, sid, "failed", token=NEXT_TOKEN).status_code == 403
    r = httpx.post(f"{acme.base}{STATUS}", data={"MessageSid": sid, "MessageStatus": "failed"}, timeout=30)
    assert r.status_code == 403
    assert kept_callbacks(sid) == []
    assert message_row(message_id).status == "sent"


# --- the reply-routing query stays an index lookup -----------------------------------------------------------


def seed_many_messages(t: Texting, session: Any) -> None:
    """EXPLAIN_ROWS / 10 other leads of the account, each with its own phone and ten texts, both ways,
    analysed: in the caller's transaction, which rolls them back."""
    seed = {"account": t.account_id, "owner": t.entity_id("co"), "leads": EXPLAIN_ROWS // 10}
    session.connection().exec_driver_sql(
        "INSERT INTO leads (id, account_id, owner_entity_id, unique_key, status, in_pond, phone_e164, tags, "
        "source_kind, email_unsubscribed, sms_unsubscribed, created_at, updated_at, last_activity_at) "
        "SELECT gen_random_uuid(), %(account)s, %(owner)s, 'p:explain:' || g, 'active', false, "
        "'+1556' || lpad(g::text, 7, '0'), '[]'::jsonb, 'explain', false, false, now(), now(), now() "
        "FROM generate_series(1, %(leads)s) AS g",
        seed,
    )
    session.connection().exec_driver_sql(
        "INSERT INTO messages (id, account_id, lead_id, direction, lead_phone, body, status, attempts, "
        "created_at, updated_at) "
        "SELECT gen_random_uuid(), l.account_id, l.id, CASE WHEN mod(g, 2) = 0 THEN 'outbound' ELSE 'inbound' END, "
        "l.phone_e164, 'x', 'sent', 0, now() - g * interval '1 hour', now() "
        "FROM leads AS l CROSS JOIN generate_series(1, 10) AS g "
        "WHERE l.account_id = %(account)s AND l.source_kind = 'explain'",
        seed,
    )
    session.connection().exec_driver_sql("ANALYZE leads")
    session.connection().exec_driver_sql("ANALYZE messages")


def test_S1_the_reply_routing_query_is_an_index_lookup_with_many_messages(acme: Texting) -> None:
    """The query reading the last outbound texts to a phone stays an index lookup with a
    million messages in the table (``EXPLAIN_ROWS``). The rows are written and analysed in a transaction that
    is rolled back, so no other test sees them."""
    phone = fresh_number()
    lead_id = acme.signup("co", "ix@example.com", phone)
    acme.texted(lead_id, "jill", NOW)
    with UnitOfWork() as uow:
        session = uow.session
        seed_many_messages(acme, session)
        captured: list[tuple[str, Any]] = []
        engine = session.get_bind()

        def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
            if "row_number" in statement:
                captured.append((statement, parameters))

        event.listen(engine, "before_cursor_execute", capture)
        try:
            found = uow.texts.last_outbound_texts(acme.account_id, phone)
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        assert [str(m.lead_id) for m, _ in found] == [lead_id]
        [(statement, parameters)] = captured
        plan = "\n".join(row[0] for row in session.connection().exec_driver_sql(f"EXPLAIN {statement}", parameters))
        uow.session.rollback()
    print(f"\nEXPLAIN of the reply-routing query with {EXPLAIN_ROWS:,} more messages:\n{plan}")
    assert "Seq Scan" not in plan, plan
    assert re.search(r"Index Scan( Backward)? using ix_messages_account_id_lead_phone_direction_created_at", plan), plan


def test_S1_the_workers_one_routing_read_is_index_lookups_with_many_messages(acme: Texting) -> None:
    """The statement the worker reads a phone's live leads and their last outbound texts with
    (``texts.reply_facts``) walks the leads' and the messages' indexes, with ``EXPLAIN_ROWS`` more messages."""
    phone = fresh_number()
    johns = acme.signup("john", "iy@example.com", phone)
    jills = acme.signup("co", "iy@example.com", phone)
    acme.texted(johns, "john", YESTERDAY)
    deciding = acme.texted(jills, "jill", NOW)
    account_id = acme.account_id
    with UnitOfWork() as uow:
        session = uow.session
        seed_many_messages(acme, session)
        captured: list[tuple[str, Any]] = []

        def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
            captured.append((statement, parameters))

        engine = session.get_bind()
        event.listen(engine, "before_cursor_execute", capture)
        try:
            facts = uow.texts.reply_facts(account_id, phone)
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        [(statement, parameters)] = captured
        plan = "\n".join(row[0] for row in session.connection().exec_driver_sql(f"EXPLAIN {statement}", parameters))
        uow.session.rollback()
    print(f"\nEXPLAIN of the worker's reply-routing read with {EXPLAIN_ROWS:,} more messages:\n{plan}")
    assert [str(c.lead_id) for c in facts.candidates] == [johns, jills]
    assert {str(t.lead_id): str(t.message_id) for t in facts.last_texts}[jills] == deciding
    assert "Seq Scan" not in plan, plan
    assert re.search(r"Index Scan( Backward)? using ix_messages_account_id_lead_phone_direction_created_at", plan), plan


# --- what a text costs the worker ----------------------------------------------------------------------------


def stored_text(t: Texting, phone: str, body: str) -> tuple[uuid.UUID, str]:
    """An inbound text stored as the webhook stores it, its task not published: (intake id, sid)."""
    fields = t.inbound(phone, body)
    sid = fields["MessageSid"]
    with UnitOfWork() as uow:
        intake = Intake(
            account_id=t.account_id,
            source=IntakeSource.SMS,
            idempotency_key=sid,
            raw_body=urllib.parse.urlencode(fields),
            payload=InboundText(sid, fields["To"], phone, phone, body).to_dict(),
            content_type="application/x-www-form-urlencoded",
        )
        intake_id = uow.intakes.add(intake).id
        uow.commit()
    return intake_id, sid


def processed_counting(intake_id: uuid.UUID, compiled: list[bool] | None = None) -> tuple[Outcome, list[str]]:
    """Process a stored intake in this process as its task does: its outcome, and the first word of each SQL
    statement it sent; with ``compiled``, whether SQLAlchemy compiled each one (not taken from its cache)."""
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        statements.append(statement.split(None, 1)[0].upper())
        if compiled is not None:
            compiled.append(context.cache_hit is not CacheStats.CACHE_HIT)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", count)
    try:
        with UnitOfWork() as uow:
            outcome = intakes.process_intake(uow, intake_id)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return outcome, statements


def intake_row(intake_id: uuid.UUID) -> Intake:
    with UnitOfWork() as uow:
        row = uow.intakes.get(intake_id)
        assert row is not None
        uow.session.expunge(row)
        return row


@pytest.mark.parametrize("body", ["Is it still available?", "STOP"])
def test_a_reply_routed_to_a_known_lead_costs_four_statements(acme: Texting, body: str) -> None:
    """Once the worker keeps the account's organisation: the intake's lock, the phone's lock, the phone's live
    leads with their last outbound texts, then everything the text decides (its message, timeline, the lead's
    activity and subscription, the agent's mail, the intake's end) in one statement."""
    phone = fresh_number()
    johns = acme.signup("john", "ki@example.com", phone)
    jills = acme.signup("co", "ki@example.com", phone)
    acme.texted(johns, "john", YESTERDAY)
    deciding = acme.texted(jills, "jill", NOW - dt.timedelta(hours=1))
    warm, _ = stored_text(acme, phone, "Hello")  # the first text of this process loads the organisation
    assert processed_counting(warm)[0].lead_id == uuid.UUID(jills)

    intake_id, sid = stored_text(acme, phone, body)
    compiled: list[bool] = []
    outcome, statements = processed_counting(intake_id, compiled)

    assert statements == ["SELECT", "SELECT", "SELECT", "WITH"]
    if body != "STOP":  # a plan of the shape the first text's was: every statement is SQLAlchemy's cached one
        assert compiled == [False] * 4
    assert (outcome.status, outcome.lead_id) == ("done", uuid.UUID(jills))
    done = intake_row(intake_id)
    assert (done.status, done.lead_id, done.reason, done.attempts) == (IntakeStatus.DONE, uuid.UUID(jills), None, 1)
    assert done.processed_at is not None
    [message] = inbound_messages(sid)
    assert (str(message.lead_id), message.agent_id, message.status) == (jills, acme.entity_id("jill"), "received")
    assert (message.intake_id, message.created_at) == (intake_id, done.created_at)
    [event] = [e for e in acme.events(jills, "text_received") if e["data"]["provider_sid"] == sid]
    assert event["data"]["rule"] == "S1"
    assert event["data"]["deciding_text"] == {**event["data"]["deciding_text"], "message_id": deciding, "agent": "jill"}
    assert "Jill Jones" in event["summary"]
    lead = lead_row(jills)
    assert lead.last_activity_at == done.created_at
    assert lead.sms_unsubscribed is (body == "STOP")
    assert len(acme.events(jills, "sms_unsubscribed")) == (body == "STOP")
    [mail] = outbox_for(acme.account_id, sid)
    assert mail.to_address == "jill@co.test"
    assert mail.subject == ("A lead unsubscribed from texts" if body == "STOP" else "New text from a lead")


def test_a_text_processed_again_writes_nothing_twice(acme: Texting) -> None:
    """The plan's rows are kept once: a text whose intake is reopened and processed again (a replay) adds no
    second message, event or mail, and ends done again."""
    phone = fresh_number()
    lead_id = acme.signup("co", "lu@example.com", phone)
    intake_id, sid = stored_text(acme, phone, "STOP")
    processed_counting(intake_id)
    with UnitOfWork() as uow:
        uow.intakes.reopen([intake_id])
        uow.commit()
    outcome, _ = processed_counting(intake_id)
    assert (outcome.status, outcome.lead_id) == ("done", uuid.UUID(lead_id))
    assert intake_row(intake_id).attempts == 2
    assert len(inbound_messages(sid)) == 1
    assert len(outbox_for(acme.account_id, sid)) == 1
    [note] = acme.events(lead_id, "sms_unsubscribed")
    assert note["data"]["changed"] is True  # the first run's note stays
    assert len(acme.events(lead_id, "text_received")) == 1
