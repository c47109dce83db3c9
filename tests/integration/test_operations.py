"""Operations: readiness, metrics, the correlation id across processes, outages of the
database and the broker as the API sees them, and replaying dead intakes over HTTP. Outages are made by
a TCP forwarder this test owns (tests/support/proxy.py) or a port nothing listens on, in front of an
API process this test started: the shared PostgreSQL and Redis stay up for everyone else."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update

from models.secrets import generate_key
from models.tables import Intake, IntakeSource, IntakeStatus
from models.uow import UnitOfWork
from rules.events import LeadSignup
from tests.support.client import Brokerage
from tests.support.processes import api_server, free_port, wait_for
from tests.support.proxy import Proxy, proxy
from workers import relay, services
from workers.app import publish

LONG_AGO = dt.timedelta(minutes=30)
KNOWN_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}


def samples(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = httpx.get(f"{base}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


WAITING_KINDS = {"intakes", "texts", "mail", "jobs", "imports", "webhooks"}


def test_readyz_answers_with_the_database_and_the_broker_up(api: str) -> None:
    r = httpx.get(f"{api}/readyz", timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert {k: body.pop(k) for k in ("status", "database", "broker")} == {
        "status": "ok",
        "database": "ok",
        "broker": "ok",
    }
    assert set(body) == {"oldest_waiting_seconds", "oldest_waiting_by_kind"}
    assert set(body["oldest_waiting_by_kind"]) == WAITING_KINDS
    assert body["oldest_waiting_seconds"] == max(body["oldest_waiting_by_kind"].values())


def test_readyz_and_metrics_show_the_age_of_the_oldest_work_not_done_and_stay_ready(api: str, acme: Brokerage) -> None:
    # An intake kept "long ago" whose task never reached the broker, and that no relay has sent yet: the
    # pipeline is stuck for it, and both figures say so, whoever runs (or does not run) the relay's pass.
    host = acme.host("co")
    signup = LeadSignup(
        source_kind="site",
        page_url=f"https://{host}/",
        host=host,
        email="stuck@example.com",
        email_normalized="stuck@example.com",
    )
    with UnitOfWork() as uow:
        account = uow.orgs.account_by_slug(acme.org["account"])
        assert account is not None
        stuck = uow.intakes.add(
            Intake(
                account_id=account.id,
                source=IntakeSource.REGISTRATION,
                raw_body="{}",
                payload=signup.to_dict(),
                created_at=dt.datetime.now(dt.UTC) - LONG_AGO,
            )
        )
        uow.commit()
        stuck_id = stuck.id
    try:
        r = httpx.get(f"{api}/readyz", timeout=10)
        assert r.status_code == 200, "a long wait is reported, never a reason to take the API out"
        assert r.json()["oldest_waiting_by_kind"]["intakes"] >= LONG_AGO.total_seconds()
        assert r.json()["oldest_waiting_seconds"] >= LONG_AGO.total_seconds()

        def gauge() -> float:
            return samples(api).get(("leadrelay_oldest_waiting_seconds", frozenset({("kind", "intakes")})), 0.0)

        wait_for(lambda: gauge() >= LONG_AGO.total_seconds(), timeout=15, what="the gauge (scrapes share 5 s)")
        assert {
            dict(labels)["kind"] for name, labels in samples(api) if name == "leadrelay_oldest_waiting_seconds"
        } == WAITING_KINDS
    finally:
        publish("intake.process", stuck_id)  # the run leaves nothing waiting
    assert acme.wait_done(str(stuck_id))["status"] == "done"


def test_metrics_count_intakes_latency_assignments_and_answers(api: str, acme: Brokerage) -> None:
    before = samples(api)
    done = [acme.register_and_wait("downtown", f"metrics-{i}@example.com") for i in range(3)]
    assert {d["status"] for d in done} == {"done"}
    time.sleep(5.1)  # the database figures are shared by scrapes less than 5 s apart
    after = samples(api)

    def grew(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("leadrelay_intakes", source="registration", status="done") >= 3
    assert grew("leadrelay_intake_latency_seconds_count") >= 3
    assert grew("leadrelay_intake_latency_seconds_bucket", le="+Inf") >= 3
    assert grew("leadrelay_http_requests_total", method="POST", route="/v1/intake/registrations", status="202") == 3
    # The downtown rule's round robin over john, jill and bob: one lead each.
    account = acme.org["account"]
    per_agent = {
        agent: after.get(("leadrelay_leads_assigned", frozenset({("account", account), ("agent", agent)})), 0.0)
        for agent in ("john", "jill", "bob")
    }
    assert per_agent == {"john": 1.0, "jill": 1.0, "bob": 1.0}
    for kind in ("intakes", "mail", "texts", "imports", "jobs"):
        assert ("leadrelay_dead_letters", frozenset({("kind", kind)})) in after
        assert ("leadrelay_relay_resends_total", frozenset({("kind", kind)})) in after


def test_metrics_labels_stay_in_a_known_set_whatever_the_method_or_path(api: str) -> None:
    for i in range(5):
        httpx.request(f"INVENTED{i}", f"{api}/healthz", timeout=10)
        httpx.request("PROPFIND", f"{api}/nowhere-{uuid.uuid4().hex}", timeout=10)
        httpx.get(f"{api}/v1/intake/{uuid.uuid4()}", timeout=10)
    after = samples(api)
    documented = httpx.get(f"{api}/openapi.json", timeout=10).json()["paths"]
    routes = {*documented, "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "unmatched"}
    labels = [dict(labels) for name, labels in after if name.startswith("leadrelay_http_")]
    assert {label["method"] for label in labels} <= KNOWN_METHODS | {"other"}
    assert {label["route"] for label in labels} <= routes

    def answers(method: str, route: str, status: str) -> float:
        return after[
            ("leadrelay_http_requests_total", frozenset({("method", method), ("route", route), ("status", status)}))
        ]

    assert answers("other", "/healthz", "405") >= 5
    assert answers("GET", "/v1/intake/{intake_id}", "401") >= 5


def test_in_production_metrics_answer_only_the_metrics_token_and_the_docs_are_off(
    pipeline_env: dict[str, str], workers: Path, tmp_path: Path
) -> None:
    token = f"metrics-{uuid.uuid4().hex}"
    env = {
        **pipeline_env,
        "LEADRELAY_ENV": "production",
        "LEADRELAY_METRICS_TOKEN": token,
        "LEADRELAY_SECRET_KEY": generate_key(),
    }
    with api_server(env, tmp_path / "api.log") as base:
        for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": f"Basic {token}"}):
            r = httpx.get(f"{base}/metrics", headers=headers, timeout=10)
            assert r.status_code == 401, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            assert "leads_assigned" not in r.text
        r = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200, r.text
        assert "leadrelay_http_requests_total" in r.text
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert httpx.get(f"{base}{path}", timeout=10).status_code == 404, path
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200


def test_the_intake_id_is_the_correlation_id_of_every_task_it_causes(
    acme: Brokerage, workers: Path, smtp_server: Any
) -> None:
    # A downtown signup is assigned to an agent, whose notification mail a flush task sends.
    r = acme.register("downtown", "correlated@example.com")
    assert r.status_code == 202, r.text
    intake_id = r.json()["intake_id"]
    assert acme.wait_done(intake_id)["status"] == "done"

    def tasks_seen() -> set[str]:
        seen = set()
        for log in workers.glob("worker-*.log"):
            for line in log.read_text(errors="replace").splitlines():
                if intake_id in line and line.startswith("{"):
                    record = json.loads(line)
                    if record.get("correlation_id") == intake_id and "task" in record:
                        seen.add(record["task"])
        return seen

    wait_for(lambda: {"intake.process", "notifications.flush"} <= tasks_seen(), timeout=30, what="both tasks' lines")
    mail_lines = [
        json.loads(line)
        for log in workers.glob("worker-*.log")
        for line in log.read_text(errors="replace").splitlines()
        if line.startswith("{") and '"notification.mail"' in line and intake_id in line
    ]
    # The mail's own line names its outbox row, yet carries the intake's id, kept on the row: one flush
    # sends the mail of many intakes, and each mail's line names its own.
    assert mail_lines
    assert all(m["correlation_id"] == intake_id and m["outbox_id"] != intake_id for m in mail_lines)


@pytest.fixture
def database_proxy(pg_database: str) -> Iterator[Proxy]:
    with proxy(("127.0.0.1", 5432)) as p:
        yield p


def test_with_postgresql_down_intake_answers_503_at_once_and_stores_nothing(
    pipeline_env: dict[str, str], workers: Path, acme: Brokerage, database_proxy: Proxy, tmp_path: Path
) -> None:
    env = {
        **pipeline_env,
        "LEADRELAY_DATABASE_URL": pipeline_env["LEADRELAY_DATABASE_URL"].replace(
            "127.0.0.1:5432", f"127.0.0.1:{database_proxy.port}"
        ),
    }
    key = f"outage-{uuid.uuid4()}"
    body = {"page_url": f"https://{acme.host('downtown')}/", "email": "outage@example.com"}
    headers = {"Authorization": f"Bearer key-{acme.s}", "Idempotency-Key": key}
    with api_server(env, tmp_path / "api.log") as base, httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/readyz").status_code == 200
        database_proxy.cut()
        start = time.monotonic()
        r = client.post("/v1/intake/registrations", json=body, headers=headers)
        seconds = time.monotonic() - start
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["retry-after"] == "5"
        assert "database" in r.json()["detail"]
        assert seconds < 6, seconds
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "database" in ready.json()["detail"]
        assert client.get("/healthz").status_code == 200
        with UnitOfWork() as uow:  # the test's own connection does not go through the proxy
            kept = uow.session.execute(select(func.count()).where(Intake.idempotency_key == key)).scalar_one()
        assert kept == 0

        database_proxy.restore()
        r = client.post("/v1/intake/registrations", json=body, headers=headers)
        assert r.status_code == 202, r.text
        assert acme.wait_done(r.json()["intake_id"])["status"] == "done"
        print(f"\n503 in {seconds:.3f} s with PostgreSQL unreachable")


@pytest.fixture
def api_without_broker(pipeline_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """An API process whose broker is a port nothing listens on: Redis down, as this API sees it."""
    env = {**pipeline_env, "LEADRELAY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    with api_server(env, tmp_path / "api.log") as base:
        yield base


def _kept_while_broker_down(acme: Brokerage, base: str, email: str) -> tuple[str, float]:
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer key-{acme.s}"}, timeout=30) as client:
        start = time.monotonic()
        r = client.post("/v1/intake/registrations", json={"page_url": f"https://{acme.host('co')}/", "email": email})
        seconds = time.monotonic() - start
    assert r.status_code == 202, r.text
    return str(r.json()["intake_id"]), seconds


def test_with_redis_down_intake_still_answers_202_and_the_relay_sends_it_later(
    api_without_broker: str, acme: Brokerage, workers: Path
) -> None:
    intake_id, seconds = _kept_while_broker_down(acme, api_without_broker, "no-broker@example.com")
    assert seconds < 5, seconds  # the publish is bounded: no request hangs on a dead broker
    ready = httpx.get(f"{api_without_broker}/readyz", timeout=10)
    assert ready.status_code == 503
    assert "broker" in ready.json()["detail"]
    time.sleep(1)
    with UnitOfWork() as uow:
        intake = uow.intakes.get(uuid.UUID(intake_id))
        assert intake is not None
        assert intake.status is IntakeStatus.ACCEPTED
        # As if stored long ago, so this pass relays it and no other test's waiting work.
        uow.session.execute(
            update(Intake).where(Intake.id == intake.id).values(created_at=dt.datetime.now(dt.UTC) - LONG_AGO)
        )
        uow.commit()
    assert relay.sweep(after=LONG_AGO - dt.timedelta(minutes=5))["intakes"] >= 1
    assert acme.wait_done(intake_id)["status"] == "done"
    print(f"\n202 in {seconds:.3f} s with the broker unreachable")


def test_a_company_admin_replays_the_accounts_dead_intakes_over_http(
    api: str, api_without_broker: str, brokerage_factory: Any
) -> None:
    acme, other = brokerage_factory(), brokerage_factory()
    dead: dict[str, str] = {}
    for b in (acme, other):
        intake_id, _ = _kept_while_broker_down(b, api_without_broker, "dead-letter@example.com")
        with UnitOfWork() as uow:  # what the task does past its retries
            services.mark_dead(uow, uuid.UUID(intake_id), "OperationalError: the database went away")
        dead[b.s] = intake_id
    assert acme.wait_done(dead[acme.s])["status"] == "dead"

    for user in ("john", "oscar"):  # an agent, an office admin
        with acme.user(user) as c:
            r = c.post("/v1/intake/replay", json={"status": "dead"})
            assert r.status_code == 403, r.text
    with acme.user("olivia") as c:
        assert c.post("/v1/intake/replay", json={"status": "lost"}).status_code == 422
        # since: an RFC 3339 date and time with its offset; a number is not read as a Unix time.
        assert c.post("/v1/intake/replay", json={"status": "dead", "since": 1700000000}).status_code == 422
        assert c.post("/v1/intake/replay", json={"status": "dead", "since": "2026-11-01T00:00:00"}).status_code == 422
        later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
        r = c.post("/v1/intake/replay", json={"status": "dead", "since": later})
        assert r.json() == {"replayed": 0, "intake_ids": []}, r.text
        earlier = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z")
        r = c.post("/v1/intake/replay", json={"status": "dead", "since": earlier})
    assert r.status_code == 202, r.text
    assert r.json() == {"replayed": 1, "intake_ids": [dead[acme.s]]}
    final = acme.wait_done(dead[acme.s])
    assert final["status"] == "done"
    assert acme.lead(final["lead_id"])["email"] == "dead-letter@example.com"
    # Another account's dead letter is not touched.
    assert other.wait_done(dead[other.s])["status"] == "dead"
