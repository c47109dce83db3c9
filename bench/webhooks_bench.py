"""Scenario 7: outbound webhooks. Two figures, each against its baseline in the same run:

- **Deliveries per second** against **bare POSTs** to the same receiver: ``n`` deliveries (rows as a
  change writes them, for one endpoint) published at once and sent by the worker (2 pool processes on the
  ``webhooks`` queue: claim, sign, POST, record), from the first publish to the last ``delivered_at``;
  against the same number of POSTs of a body of the same size from 2 processes, a new connection each,
  as a delivery's try opens one.
- **Registrations per second** with one endpoint subscribed to every event against none: the same
  registrations posted over the API to two accounts, one with the endpoint and one without, alternately
  (``rounds`` times, so the machine's drift falls on both), each round's rate from its first intake
  processed to its last; with the endpoint the worker sends its deliveries meanwhile (two a signup), and
  the round also reports its rate with every delivery delivered.

The receiver is uvicorn with an app that answers 204 to any POST, in a process of its own.

    python -m bench.webhooks_bench --deliveries 300 --registrations 200 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from bench.stack import Stack
from tests.support.processes import free_port
from workers.webhooks import tls_context

SECRET = "whsec_" + base64.b64encode(b"leadrelay-bench-webhook-secret!!").decode()
RECEIVER_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})
"""


@contextmanager
def receiver(folder: Path) -> Iterator[str]:
    """The bench's receiver: uvicorn, one process, answering 204; its URL."""
    (folder / "bench_receiver.py").write_text(RECEIVER_APP)
    port = free_port()
    log = (folder / "receiver.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench_receiver:app", "--port", str(port), "--log-level", "warning"],
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/hook"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.post(url, content=b"{}", timeout=1).status_code == 204:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the bench receiver did not start")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def account_with(stack: Stack, suffix: str, url: str | None) -> tuple[dict[str, Any], int]:
    """The test brokerage with, when ``url`` is given, one webhook subscribed to every event."""
    from models.org import apply_org
    from models.orgspec import parse_org
    from models.secrets import keyring
    from models.uow import UnitOfWork
    from tests.support.orgs import brokerage

    org = brokerage(suffix=suffix)
    if url is not None:
        org["webhooks"] = [{"id": "all", "url": url, "events": ["*"], "secrets": [SECRET]}]
    with UnitOfWork() as uow:
        apply_org(uow.session, parse_org(org), keyring())
        uow.commit()
        account = uow.orgs.account_by_slug(org["account"])
        assert account is not None
        return org, int(account.id)


def sample_event_data() -> dict[str, Any]:
    """A ``lead.assigned`` event's data, of the size a real one has."""
    return {
        "lead_id": str(uuid.uuid4()),
        "status": "active",
        "owner": "co",
        "assignee": "jill",
        "lead": {"first_name": "Ann", "last_name": "Lee", "email": "ann@example.com", "phone": "+15555550100"},
        "rule": "Everyone",
        "explanation": "Assigned to Jill Jones by co's rule 'Everyone'",
        "details": {"routing_entity": "co", "rule": "Everyone", "strategy": "round_robin", "agent": "jill"},
        "actor": "system",
        "intake_id": str(uuid.uuid4()),
    }


def deliveries_per_second(stack: Stack, account: int, n: int) -> dict[str, Any]:
    """``n`` deliveries written at once (as a change writes them), then their tasks published."""
    from models.uow import UnitOfWork
    from rules.webhooks import Delivery, Event
    from workers.webhooks import send_all

    with UnitOfWork() as uow:
        endpoint = uow.webhooks.endpoints(account)[0]
        now = dt.datetime.now(dt.UTC)
        rows = [
            Delivery(uuid.uuid4(), endpoint.id, Event("lead.assigned", now, sample_event_data(), uuid.uuid4()))
            for _ in range(n)
        ]
        uow.webhooks.add(account, rows)
        uow.commit()
    started = time.time()
    send_all([d.id for d in rows])
    deadline = time.monotonic() + 300
    with stack.engine().connect() as conn:
        while True:
            done, last = conn.execute(
                text(
                    "SELECT count(*), max(delivered_at) FROM webhook_deliveries "
                    "WHERE account_id = :a AND status = 'delivered'"
                ),
                {"a": account},
            ).one()
            if done >= n or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    seconds = max(_epoch(last) - started, 1e-6) if last is not None else None
    return {"n": n, "delivered": int(done), "seconds": seconds, "per_s": round(done / seconds, 1) if seconds else None}


def _post_many(url: str, n: int, body: bytes) -> None:
    """``n`` POSTs, each from a client of its own (a new connection), as a delivery's try sends one."""
    for _ in range(n):
        with httpx.Client(timeout=10, follow_redirects=False, trust_env=False, verify=tls_context()) as client:
            client.post(url, content=body, headers={"content-type": "application/json"})


def bare_posts_per_second(url: str, n: int, processes: int = 2) -> dict[str, Any]:
    """``n`` POSTs of a body of a delivery's size to the receiver from ``processes`` processes (as many as the
    worker's pool), a connection each."""
    body = json.dumps({"type": "lead.assigned", "timestamp": "x", "data": sample_event_data()}).encode()
    started = time.monotonic()
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_post_many, [url] * processes, [n // processes] * processes, [body] * processes))
    seconds = time.monotonic() - started
    sent = (n // processes) * processes
    return {"n": sent, "seconds": round(seconds, 2), "per_s": round(sent / seconds, 1)}


def registration_rate(stack: Stack, org: dict[str, Any], n: int, tag: str) -> dict[str, Any]:
    """``n`` registrations of distinct people on the company site, posted 8 at a time: finished per second
    (first POST to last processed), and, when the account has an endpoint, per second with every delivery
    delivered too (first POST to last delivered; waited for, so the next round starts on a quiet
    worker)."""
    from tests.support.client import Brokerage, post_all

    s = str(org["account"]).removeprefix("acct-")
    bodies = [{"page_url": f"https://co-{s}.test/listings", "email": f"{tag}{i}.{s}@example.com"} for i in range(n)]
    b = Brokerage(stack.base, org)
    # From the first POST, not the first processed: signups that wait while the workers deliver are taken in
    # larger batches later, so first-to-last processed would count a backlog's end as speed.
    started = dt.datetime.now(dt.UTC)
    try:
        ids = asyncio.run(post_all(b, bodies, parallel=8))
    finally:
        b.site.close()
    deadline = time.monotonic() + 300
    with stack.engine().connect() as conn:
        while True:
            count, _first, last = conn.execute(
                text(
                    "SELECT count(*), min(processed_at), max(processed_at) FROM intakes "
                    "WHERE id = ANY(CAST(:ids AS uuid[])) AND processed_at IS NOT NULL"
                ),
                {"ids": ids},
            ).one()
            if count >= n or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        out: dict[str, Any] = {"per_s": round(count / max(_epoch(last) - _epoch(started), 1e-6), 1)}
        while time.monotonic() < deadline:
            waiting, delivered_last, total = conn.execute(
                text(
                    "SELECT count(*) FILTER (WHERE d.status = 'pending'), max(d.delivered_at), count(*) "
                    "FROM webhook_deliveries d JOIN intakes i ON d.data->>'intake_id' = i.id::text "
                    "WHERE i.id = ANY(CAST(:ids AS uuid[]))"
                ),
                {"ids": ids},
            ).one()
            if not waiting:
                break
            time.sleep(0.2)
        if total:
            out["deliveries"] = int(total)
            out["with_deliveries_per_s"] = round(count / max(_epoch(delivered_last) - _epoch(started), 1e-6), 1)
    return out


def _epoch(at: Any) -> float:
    return float(at.timestamp())


def run(folder: Path, *, deliveries: int = 1000, registrations: int = 400, rounds: int = 3) -> dict[str, Any]:
    from bench.stack import stack
    from bench.tasks import create_table

    out: dict[str, Any] = {}
    with (
        stack(folder, extra_env={"LEADRELAY_WEBHOOKS_ALLOW_PRIVATE": "true"}) as s,
        receiver(folder) as url,
    ):
        create_table(s.url)  # the no-op task's table: the stack's readiness check posts one
        s.start_api()
        s.start_worker(2)
        with_hook, with_id = account_with(s, "benchhook", url)
        without_hook, _ = account_with(s, "benchnone", None)
        out["bare_posts"] = bare_posts_per_second(url, deliveries)
        out["deliveries"] = deliveries_per_second(s, with_id, deliveries)
        print(
            f"  deliveries: {out['deliveries']['per_s']}/s; bare POSTs to the same receiver: "
            f"{out['bare_posts']['per_s']}/s",
            flush=True,
        )
        subscribed: list[dict[str, Any]] = []
        none: list[dict[str, Any]] = []
        for r in range(rounds):
            none.append(registration_rate(s, without_hook, registrations, f"none{r}-"))
            subscribed.append(registration_rate(s, with_hook, registrations, f"hook{r}-"))
        out["registrations_no_webhook_per_s"] = [x["per_s"] for x in none]
        out["registrations_one_webhook_all_events_per_s"] = [x["per_s"] for x in subscribed]
        out["registrations_with_deliveries_done_per_s"] = [x.get("with_deliveries_per_s") for x in subscribed]
        out["deliveries_per_round"] = [x.get("deliveries") for x in subscribed]
        hook_rate = statistics.median(out["registrations_one_webhook_all_events_per_s"])
        none_rate = statistics.median(out["registrations_no_webhook_per_s"])
        out["registrations_ratio"] = round(hook_rate / none_rate, 3)
        print(
            f"  registrations: {hook_rate}/s with one endpoint subscribed to everything, {none_rate}/s with none "
            f"(ratio {out['registrations_ratio']}); with their deliveries done: "
            f"{statistics.median(x.get('with_deliveries_per_s') or 0 for x in subscribed)}/s",
            flush=True,
        )
        with s.engine().connect() as conn:
            out["deliveries_by_status"] = dict(
                conn.execute(text("SELECT status, count(*) FROM webhook_deliveries GROUP BY status")).tuples().all()
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deliveries", type=int, default=1000)
    parser.add_argument("--registrations", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from leadrelay.logging import configure_logging

    configure_logging(fmt="console", level="WARNING")
    with tempfile.TemporaryDirectory(prefix="leadrelay-bench-webhooks-") as tmp:
        result = run(Path(tmp), deliveries=args.deliveries, registrations=args.registrations, rounds=args.rounds)
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
