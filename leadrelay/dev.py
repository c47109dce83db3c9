"""``leadrelay dev``: the pipeline on the embedded defaults (SQLite, filesystem broker) in one process tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import yaml
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from intake.orgfile import load_org_file
from leadrelay.devreceiver import DevReceiver, Got
from leadrelay.logging import configure_logging
from leadrelay.settings import get_settings
from models.org import apply_org
from models.orgspec import OrgSpec, WebhookSpec
from models.secrets import keyring
from models.tables import Lead
from models.uow import UnitOfWork

DEMO_ORG = Path(__file__).parent / "demo" / "org.yaml"
DEMO_KEY = "demo-site-key"
# The demo account's Twilio auth token lives in this variable (the demo shows auth_tokens_env; literal
# auth_tokens would be stored encrypted); a published demo secret, used only to sign the sample text below.
DEMO_TOKEN_ENV = "LEADRELAY_DEMO_TWILIO_TOKEN"  # noqa: S105 (a variable name)
DEMO_TOKEN = "demo-twilio-token"  # noqa: S105 (the published demo secret)
DEMO_SMART_NUMBER = "+15550100000"
# The local receiver's signing secret (a published demo secret): the demo org gets a webhook to the receiver
# ``leadrelay dev`` starts, every event, signed with it (read from this variable, as secrets_env says).
DEMO_WEBHOOK_SECRET_ENV = "LEADRELAY_DEMO_WEBHOOK_SECRET"  # noqa: S105 (a variable name)
DEMO_WEBHOOK_SECRET = "whsec_ZGVtby13ZWJob29rLXNlY3JldC0wMTIzNDU2Nzg5YWI="  # noqa: S105 (the published demo secret)
ANN_PHONE = "+15550102001"
# Wide enough for the table when output is not a terminal (a log file, CI).
console = Console(width=140) if not sys.stdout.isatty() else Console()

# (page, email, extras): what each sample shows.
SAMPLES: list[tuple[str, str, dict[str, object]]] = [
    (
        "https://kvcore-demo.com/listings/123",
        "ann@example.com",
        {"first_name": "Ann", "price_max": 1_500_000, "phone": ANN_PHONE},
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


def demo_credentials() -> set[str]:
    """Every key and token the demo org file publishes, and the Twilio token ``leadrelay dev`` sets for it."""
    # The file's own shape only: resolving it would need the demo's variable set, and nothing here is applied.
    spec = OrgSpec.model_validate(yaml.safe_load(DEMO_ORG.read_text(encoding="utf-8")))
    given: list[SecretStr | None] = [k.key for k in spec.intake_keys]
    given += [u.token for u in spec.users] + [c.key for c in spec.api_connections]
    given += list(spec.sms.auth_tokens) if spec.sms else []
    return {secret.get_secret_value() for secret in given if secret is not None} | {DEMO_TOKEN}


def demo_credentials_in(spec: OrgSpec) -> list[str]:
    """Where a checked org file gives a credential of the demo org (published, so anyone could use it):
    one line per place, naming the field as the file spells it. Production refuses such a file."""
    demo = demo_credentials()
    found: list[tuple[str, SecretStr | None]] = []
    # In the order of the file's sections, as every other refusal of a file is listed.
    for i, k in enumerate(spec.intake_keys):
        found.append((f"intake_keys[{i}]" + (".key_env" if k.key_env else ""), k.key))
    if spec.sms is not None:
        found += [(f"sms.auth_tokens[{j}]", token) for j, token in enumerate(spec.sms.auth_tokens)]
        found += [
            (f"sms.auth_tokens_env[{j}]", SecretStr(os.environ.get(env, "").strip()))
            for j, env in enumerate(spec.sms.auth_tokens_env)
        ]
    for i, u in enumerate(spec.users):
        found.append((f"users[{i}].token" + ("_env" if u.token_env else ""), u.token))
    for i, c in enumerate(spec.api_connections):
        found.append((f"api_connections[{i}].key" + ("_env" if c.key_env else ""), c.key))
    return [
        f"{path}: a published demo credential (leadrelay/demo/org.yaml); production refuses it, give a secret of your own"
        for path, secret in found
        if secret is not None and secret.get_secret_value().strip() in demo
    ]


def _wait_healthy(base: str, procs: list[subprocess.Popen[bytes]], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a child process exited during start-up; its log is in {log}")
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


def _text_conversation(base: str, public_base_url: str, first_intake: dict[str, object]) -> None:
    """S1 in the demo: John texts Ann's company lead, Ann replies to the company's smart number, and
    the reply is routed to the agent who texted her last and lands on that lead's timeline."""
    from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

    lead_id = str(first_intake["lead_id"])  # Ann's company lead, assigned to John by the Luxury rule
    john = httpx.Client(base_url=base, headers={"Authorization": "Bearer demo-john-token"}, timeout=30)
    with john:
        sent = john.post(
            f"/v1/leads/{lead_id}/messages", json={"body": "Hi Ann, John here: 123 Main St is open Sunday."}
        )
        sent.raise_for_status()
        form = {
            "MessageSid": f"SMdemo{uuid.uuid4().hex}",
            "AccountSid": "ACdemo",
            "From": ANN_PHONE,
            "To": DEMO_SMART_NUMBER,
            "Body": "Great, see you Sunday!",
            "NumMedia": "0",
        }
        url = public_base_url.rstrip("/") + "/v1/intake/sms/twilio"
        signature = RequestValidator(DEMO_TOKEN).compute_signature(url, form)
        reply = httpx.post(f"{base}/v1/intake/sms/twilio", data=form, headers={"X-Twilio-Signature": signature})
        reply.raise_for_status()
        deadline = time.monotonic() + 60
        events: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            events = john.get(f"/v1/leads/{lead_id}/timeline").json()["items"]
            if any(e["kind"] == "text_received" for e in events):
                break
            time.sleep(0.2)
    table = Table(title="A text conversation (S1: the reply goes to the agent who texted last)")
    for column in ("at", "kind", "who", "summary"):
        table.add_column(column, overflow="fold")
    for e in events:
        if str(e["kind"]).startswith("text_"):
            table.add_row(str(e["at"])[11:19], str(e["kind"]), str(e["actor"]), str(e["summary"]))
    console.print(table)


def _print_deliveries(receiver: DevReceiver, timeout: float = 30) -> None:
    """The demo's outbound webhook deliveries, once every delivery of the account is settled."""
    deadline = time.monotonic() + timeout
    pending = True
    while pending and time.monotonic() < deadline:
        with UnitOfWork() as uow:
            endpoints = uow.webhooks.endpoints(_demo_account_id(uow))
            counts = uow.webhooks.counts_by_status([e.id for e in endpoints])
            pending = any(counts.get((e.id, "pending"), 0) for e in endpoints)
        time.sleep(0.2)
    got = receiver.received()
    table = Table(title=f"Outbound webhooks: {len(got)} deliveries to the local receiver, each verified")
    for column in ("type", "lead", "verified", "explanation"):
        table.add_column(column, overflow="fold")
    for g in got:
        table.add_row(g.type, (g.lead_id or "")[:8], "yes" if g.verified else "NO", g.explanation)
    console.print(table)


def _demo_account_id(uow: UnitOfWork) -> int:
    account = uow.orgs.account_by_slug("demo")
    assert account is not None
    return account.id


def run_dev(*, port: int, exit_after_demo: bool, env: dict[str, str]) -> int:
    settings = get_settings()
    if settings.env == "production":
        # The demo org's keys and tokens are published: loaded into a production database, they would
        # let anyone post leads and read them.
        console.print(
            "[red]leadrelay dev loads the demo org, whose keys and tokens are published: "
            "it does not run with LEADRELAY_ENV=production[/red]"
        )
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Every log line of this command, the API and the worker goes to one file, so the terminal shows the
    # demo: its steps and its tables. Truncated here, then opened for appending (O_APPEND), so the three
    # processes' lines never overwrite each other.
    log_path = (settings.data_dir / "dev.log").resolve()
    log_path.write_text("", encoding="utf-8")
    # Left open until the process exits: the logging setup writes to it to the last record.
    log = log_path.open("a", encoding="utf-8")
    configure_logging(fmt=settings.log_format, level=settings.log_level, stream=log)
    console.print(f"logs of the API, the worker and this command: {log_path}", highlight=False)
    # The demo's published Twilio token (the org file names the variable), and the URL the API
    # checks signatures against: this run's own address unless one is configured.
    os.environ.setdefault(DEMO_TOKEN_ENV, DEMO_TOKEN)
    env = {**env, DEMO_TOKEN_ENV: os.environ[DEMO_TOKEN_ENV]}
    env.setdefault("LEADRELAY_PUBLIC_BASE_URL", f"http://127.0.0.1:{port}")
    console.print(f"database: {settings.effective_database_url}\nbroker:   {settings.effective_broker_url}")
    console.print("migrating the database and loading the demo org (leadrelay/demo/org.yaml)")
    # Imported here, once the log file is set up: importing Alembic logs its plugins.
    from models.migrate import upgrade

    upgrade(settings.effective_database_url)
    # Outbound webhooks: a receiver of this process, which the demo org's one webhook posts every event to
    # (over http on 127.0.0.1, which the worker may reach in development only).
    os.environ.setdefault(DEMO_WEBHOOK_SECRET_ENV, DEMO_WEBHOOK_SECRET)
    live = {"on": False}

    def show(got: Got) -> None:
        if live["on"]:
            mark = "verified" if got.verified else "[red]signature refused[/red]"
            console.print(f"webhook {got.type} {got.lead_id or ''} ({mark}): {got.explanation}", highlight=False)

    receiver = DevReceiver(os.environ[DEMO_WEBHOOK_SECRET_ENV], show).start()
    env = {
        **env,
        DEMO_WEBHOOK_SECRET_ENV: os.environ[DEMO_WEBHOOK_SECRET_ENV],
        "LEADRELAY_WEBHOOKS_ALLOW_PRIVATE": "true",
        # A receiver on this machine answers at once; a failed try is tried again within seconds.
        "LEADRELAY_WEBHOOKS_RETRY_SECONDS": env.get("LEADRELAY_WEBHOOKS_RETRY_SECONDS", "1,2,5,10,30"),
    }
    demo = load_org_file(DEMO_ORG)
    hook = WebhookSpec(id="demo-receiver", url=receiver.url, events=["*"], secrets_env=[DEMO_WEBHOOK_SECRET_ENV])
    with UnitOfWork() as uow:
        apply_org(uow.session, demo.model_copy(update={"webhooks": [hook]}), keyring(settings))
        uow.commit()

    base = f"http://127.0.0.1:{port}"
    cli = [sys.executable, "-m", "leadrelay"]
    console.print(f"starting the API on {base} and a Celery worker")
    procs = [
        subprocess.Popen([*cli, "api", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT),  # noqa: S603
        subprocess.Popen([*cli, "worker", "--concurrency", "2"], env=env, stdout=log, stderr=subprocess.STDOUT),  # noqa: S603
    ]
    try:
        _wait_healthy(base, procs, log_path)
        console.print(f"posting {len(SAMPLES)} sample registrations; the worker owns, de-duplicates and routes them")
        ids = _post_samples(base)
        intakes = _wait_final(base, ids)
        _print_leads(intakes)
        console.print("John texts Ann; Ann replies to the company's smart number")
        _text_conversation(base, env["LEADRELAY_PUBLIC_BASE_URL"], intakes[ids[0]])
        _print_deliveries(receiver)
        live["on"] = True
        if exit_after_demo:
            console.print(f"done; the logs are in {log_path}", highlight=False)
            return 0
        console.print(
            f"API on {base} (OpenAPI at {base}/docs); logs: tail -f {log_path}. Ctrl-C stops all.", highlight=False
        )
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        console.print(f"[red]a child process stopped; its log is in {log_path}[/red]", highlight=False)
        return 1
    except KeyboardInterrupt:
        return 0
    except Exception:
        console.print(f"[red]the demo failed; the logs are in {log_path}[/red]", highlight=False)
        raise
    finally:
        receiver.stop()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
