"""The embedded mode: SQLite and kombu's filesystem transport, a real Celery worker process, no server.

Everything runs in child processes with their own data directory, so this never shares settings
with the PostgreSQL/Redis run in the same pytest session."""

from __future__ import annotations

import collections
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

from tests.support.chaos import records
from tests.support.client import Brokerage
from tests.support.orgs import brokerage
from tests.support.processes import ROOT, api_server, celery_workers, child_env, free_port, wait_for

pytestmark = pytest.mark.embedded

# Twilio's webhook in the embedded mode: the token the texting account names.
TOKEN_ENV, TOKEN = "LEADRELAY_EMBEDDED_TWILIO_TOKEN", "embedded-twilio-token"


def leadrelay(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "leadrelay", *args],
        env=child_env(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    data = tmp_path_factory.mktemp("embedded")
    env = {
        "LEADRELAY_DATA_DIR": str(data),
        "LEADRELAY_ENV": "dev",
        "COLUMNS": "200",
        TOKEN_ENV: TOKEN,
    }
    done = leadrelay(env, "db", "upgrade")
    assert done.returncode == 0, done.stderr
    return env, data


@pytest.fixture(scope="module")
def embedded_brokerage(embedded: tuple[dict[str, str], Path]) -> Iterator[Brokerage]:
    env, data = embedded
    org = brokerage()
    org["routing"][0]["rules"] = [{"name": "Three agents", "agents": ["john", "jill", "bob"]}]
    org_file = data / "org.yaml"
    org_file.write_text(yaml.safe_dump(org))
    applied = leadrelay(env, "org", "apply", str(org_file))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    with celery_workers(env, data, count=1, concurrency=2), api_server(env, data / "api.log") as base:
        b = Brokerage(base, org)
        yield b
        b.site.close()


def test_embedded_O2_O3_D4_O9_through_a_real_worker_on_sqlite(embedded_brokerage: Brokerage) -> None:
    b = embedded_brokerage
    agent = b.register_and_wait("john", "ann@example.com")
    company = b.register_and_wait("co", "ann@example.com")
    again = b.register_and_wait("co", "Ann@Example.com")
    unknown = b.register_and_wait("nowhere.example", "zed@example.com")
    assert b.lead(agent["lead_id"])["owner"]["id"] == "john"
    assert b.lead(company["lead_id"])["owner"]["id"] == "co"
    assert again["lead_id"] == company["lead_id"]
    assert [e["kind"] for e in b.timeline(company["lead_id"])] == ["created", "routed", "signup"]
    assert unknown["status"] == "rejected"


def test_embedded_A2_round_robin_is_even_on_sqlite(embedded_brokerage: Brokerage) -> None:
    b = embedded_brokerage
    ids = [b.register("co", f"even{i}@example.com").json()["intake_id"] for i in range(30)]
    agents = collections.Counter(b.lead(b.wait_done(i)["lead_id"])["assigned_agent"]["id"] for i in ids)
    assert sorted(agents.values()) == [10, 10, 10]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``make demo``'s command, run once, with JSON logs (so that a log line on the terminal is easy to tell)."""
    data = tmp_path_factory.mktemp("demo")
    env = {"LEADRELAY_DATA_DIR": str(data), "COLUMNS": "200", "LEADRELAY_LOG_FORMAT": "json"}
    done = leadrelay(env, "dev", "--exit-after-demo", "--port", str(free_port()), timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, data


def test_the_readme_demo_command_shows_routed_leads(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    out = demo[0].stdout
    assert "Leads after the sample registrations" in out
    assert "demo-co (company)" in out
    assert "john (agent)" in out
    assert "sunrise (team)" in out
    assert "rejected intake" in out
    # S1 in the demo: John texts Ann, Ann's reply is routed back to John on that lead's timeline.
    assert "A text conversation" in out
    assert "text_sent" in out
    assert "text_received" in out


def test_the_demo_shows_its_outbound_webhooks_each_verified_by_the_local_receiver(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    out = demo[0].stdout
    assert "Outbound webhooks:" in out
    for event in ("lead.created", "lead.assigned", "lead.signup", "text.received", "intake.rejected"):
        assert event in out, event
    assert "│ NO " not in out, "a delivery the receiver could not verify"


def test_the_demo_prints_its_steps_and_tables_and_sends_every_log_line_to_its_log_file(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    done, data = demo
    log = data / "dev.log"
    assert f"logs of the API, the worker and this command: {log}" in done.stdout.replace("\n", "")
    assert records(done.stdout.splitlines()) == []
    assert done.stderr == ""
    logged = records(log.read_text(encoding="utf-8").splitlines())
    loggers = {str(r.get("logger")) for r in logged}
    # This command's own (Alembic, httpx), the API's (uvicorn) and the worker's (Celery) lines.
    assert {"alembic.runtime.migration", "httpx"} <= loggers, loggers
    assert any(name.startswith("uvicorn") for name in loggers), loggers
    assert any(name.startswith("celery") for name in loggers), loggers
    assert any(r.get("event") == "intake.accepted" for r in logged)


def test_embedded_O1_an_uploaded_import_runs_on_the_worker_on_sqlite(embedded_brokerage: Brokerage) -> None:
    """The upload is kept in SQLite and the imports.run task imports it there (one writer at a time)."""
    body = "First Name,Email\n" + "".join(f"Up{i},up{i}@example.com\n" for i in range(9)) + "Bad,nope\n"
    with embedded_brokerage.user("oscar") as oscar:
        r = oscar.post("/v1/imports", data={"owner": "downtown"}, files={"file": ("up.csv", body, "text/csv")})
        assert r.status_code == 202, r.text
        result: dict[str, object] = {}

        def finished() -> bool:
            result.update(oscar.get(r.json()["status_url"]).json())
            return result["status"] in ("done", "failed")

        wait_for(finished, timeout=90, interval=0.2, what="the embedded import")
    assert (result["status"], result["created"], result["rejected"]) == ("done", 9, 1), result


def test_embedded_S2_S4_texts_to_a_smart_number_are_routed_on_sqlite(
    embedded: tuple[dict[str, str], Path], embedded_brokerage: Brokerage
) -> None:
    """A text's batch on SQLite (one text at a time, its writes one statement per step): two texts from one
    phone land on its lead, the second (STOP) unsubscribes it, and its agent is mailed each."""
    env, data = embedded
    org = brokerage()
    number, phone = "+15550170001", "+15550170002"
    for entity in org["entities"]:
        if entity["id"] == "co":
            entity["smart_numbers"] = [number]
    org["sms"] = {"provider": "twilio", "account_sid": "ACembedded", "auth_tokens_env": [TOKEN_ENV]}
    org_file = data / "texting.yaml"
    org_file.write_text(yaml.safe_dump(org))
    applied = leadrelay(env, "org", "apply", str(org_file))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    b = Brokerage(embedded_brokerage.base, org)
    lead_id = b.register_and_wait("co", "texter@example.com", phone=phone)["lead_id"]
    for i, body in enumerate(["Is it still available?", "STOP"]):
        fields = {"MessageSid": f"SMembedded{i}", "From": phone, "To": number, "Body": body, "NumMedia": "0"}
        path = "/v1/intake/sms/twilio"
        signature = RequestValidator(TOKEN).compute_signature(b.base + path, fields)  # the API's public URL
        answer = b.site.post(path, data=fields, headers={"X-Twilio-Signature": signature})
        assert answer.status_code == 200, answer.text

    def routed() -> bool:
        kinds = [e["kind"] for e in b.timeline(lead_id)]
        return kinds.count("text_received") == 2 and "sms_unsubscribed" in kinds

    wait_for(routed, timeout=60)
    events = [e for e in b.timeline(lead_id) if e["kind"] == "text_received"]
    assert [e["data"]["rule"] for e in events] == ["S2", "S2"]
    [note] = [e for e in b.timeline(lead_id) if e["kind"] == "sms_unsubscribed"]
    assert note["data"]["changed"] is True
    b.site.close()
