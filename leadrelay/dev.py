"""``leadrelay dev``: the pipeline on the embedded defaults (SQLite, filesystem broker) in one process tree."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from intake.orgfile import load_org_file
from leadrelay.settings import get_settings
from models.migrate import upgrade
from models.org import apply_org
from models.tables import Lead
from models.uow import UnitOfWork

DEMO_ORG = Path(__file__).parent / "demo" / "org.yaml"
DEMO_KEY = "demo-site-key"
# Wide enough for the table when output is not a terminal (a log file, CI).
console = Console(width=140) if not sys.stdout.isatty() else Console()

# (page, email, extras): what each sample shows.
SAMPLES: list[tuple[str, str, dict[str, object]]] = [
    (
        "https://kvcore-demo.com/listings/123",
        "ann@example.com",
        {"first_name": "Ann", "price_max": 1_500_000},
    ),  # O3 + Luxury rule
    (
        "https://kvcore-demo.com/buy",
        "ben@example.com",
        {"first_name": "Ben", "price_max": 350_000},
    ),  # O3 + default rule
    (
        "https://downtown.kvcore-demo.com/sell",
        "cat@example.com",
        {"first_name": "Cat", "lead_type": "seller"},
    ),  # O3, office routing
    ("https://downtown.kvcore-demo.com/buy", "dan@example.com", {"first_name": "Dan"}),  # office round robin
    (
        "https://john.kvcore-demo.com/squeeze/1",
        "ann@example.com",
        {"first_name": "Ann", "kind": "squeeze_page"},
    ),  # O2, D2
    ("https://sunriseteam.com/landing", "eve@example.com", {"first_name": "Eve", "kind": "landing_page"}),  # O4
    ("https://kvcore-demo.com/listings/123", "ANN@example.com ", {"first_name": "Ann"}),  # D4: repeat signup
    ("https://unknown-site.example/", "fay@example.com", {"first_name": "Fay"}),  # O9: rejected
]


def _wait_healthy(base: str, procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a child process exited during start-up; see its output above")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the API did not answer on {base} within {timeout}s")


def _post_samples(base: str) -> list[str]:
    ids = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {DEMO_KEY}"}, timeout=10) as client:
        for page, email, extra in SAMPLES:
            r = client.post(
                "/v1/intake/registrations",
                json={"page_url": page, "email": email, **extra},
                headers={"Idempotency-Key": f"demo-{uuid.uuid4()}"},
            )
            r.raise_for_status()
            ids.append(r.json()["intake_id"])
    return ids


def _wait_final(base: str, ids: list[str], timeout: float = 60) -> dict[str, dict[str, object]]:
    deadline = time.monotonic() + timeout
    final: dict[str, dict[str, object]] = {}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {DEMO_KEY}"}, timeout=10) as client:
        while len(final) < len(ids) and time.monotonic() < deadline:
            for intake_id in ids:
                if intake_id not in final:
                    body = client.get(f"/v1/intake/{intake_id}").json()
                    if body["status"] in ("done", "rejected", "dead"):
                        final[intake_id] = body
            time.sleep(0.2)
    if len(final) < len(ids):
        raise TimeoutError(f"{len(ids) - len(final)} intake(s) not processed within {timeout}s")
    return final


def _print_leads(intakes: dict[str, dict[str, object]]) -> None:
    with UnitOfWork() as uow:
        leads = uow.session.query(Lead).order_by(Lead.created_at).all()
        entities = uow.orgs.entities_by_ids(
            {le.owner_entity_id for le in leads} | {le.assigned_agent_id for le in leads if le.assigned_agent_id}
        )
        events = {le.id: len(uow.leads.timeline(le.id, after=None, limit=1000)) for le in leads}
        table = Table(title="Leads after the sample registrations")
        for column in ("email", "owner", "assigned agent", "source", "timeline events"):
            table.add_column(column, overflow="fold")
        for le in leads:
            owner = entities[le.owner_entity_id]
            agent = entities[le.assigned_agent_id].slug if le.assigned_agent_id else "-"
            table.add_row(
                le.email or le.phone_e164 or "",
                f"{owner.slug} ({owner.kind.value})",
                agent,
                le.source_detail or "",
                str(events[le.id]),
            )
    console.print(table)
    rejected = [i for i in intakes.values() if i["status"] == "rejected"]
    for intake in rejected:
        console.print(f"[yellow]rejected intake {intake['id']}[/yellow]: {intake['reason']}")


def run_dev(*, port: int, exit_after_demo: bool, env: dict[str, str]) -> int:
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_database_url)
    with UnitOfWork() as uow:
        apply_org(uow.session, load_org_file(DEMO_ORG))
        uow.commit()
    console.print(f"database: {settings.effective_database_url}\nbroker:   {settings.effective_broker_url}")

    base = f"http://127.0.0.1:{port}"
    cli = [sys.executable, "-m", "leadrelay"]
    procs = [
        subprocess.Popen([*cli, "api", "--port", str(port)], env=env),  # noqa: S603
        subprocess.Popen([*cli, "worker", "--concurrency", "2"], env=env),  # noqa: S603
    ]
    try:
        _wait_healthy(base, procs)
        intakes = _wait_final(base, _post_samples(base))
        _print_leads(intakes)
        if exit_after_demo:
            return 0
        console.print(f"API on {base} (OpenAPI at {base}/docs). Ctrl-C stops all.")
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
