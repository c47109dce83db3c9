"""The chaos suite's parts, started once for the package and stopped by pid at its end: its own
redis-server, its own PostgreSQL database, an API server, a Celery worker (two pool children) and a relay,
supervised as docker-compose.yml's ``restart: unless-stopped`` does (a wanted process that ends is started
again; every such exit the test did not cause is reported and fails the test). Each test makes its own
account, so its figures are its own.

A fault-free baseline runs first: it measures the workers' capacity and sets the pace the scenarios post
at; when the pipeline cannot even drain that, they are skipped with its figures (test_baseline fails)
instead of each waiting out its deadline."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from leadrelay.settings import get_settings
from models.db import dispose_engine
from tests.support.chaos import (
    RR_AGENTS,
    Lane,
    LoadRunner,
    RedisServer,
    Report,
    Stack,
    backlog_of,
    events,
    feed,
    make_account,
    outcome,
    own_database,
    private_celery,
    registration_calls,
    wait_final,
)

# The relay sends again what is not done this long after it was stored (or last relayed): the only way
# back for a message held by a SIGKILLed worker or lost with Redis (visibility timeout: 3600 s).
RELAY_AFTER_SECONDS = 3
# One worker, two pool children: on two cores a second worker adds overhead, not throughput.
WORKERS, CONCURRENCY = 1, 2
# Short retries for every intake (the poison test's, and stricter for the others: a transient fault retried
# twice 0.3 s apart must not kill an intake either).
MAX_RETRIES, RETRY_BACKOFF = 2, 0.3
TWILIO_TOKEN_ENV, TWILIO_TOKEN = "LEADRELAY_TEST_TWILIO_TOKEN", "twilio-chaos-token"
BASELINE_FED, BASELINE_POSTED = 100, 100
PACE_OF_CAPACITY = 0.8
BACKLOG_SECONDS = 2.0  # under RELAY_AFTER_SECONDS


@pytest.fixture(scope="package")
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Report:
    """Where the figures go: LEADRELAY_CHAOS_REPORT_DIR, else the session's pytest tmp dir."""
    folder = Path(os.environ.get("LEADRELAY_CHAOS_REPORT_DIR") or tmp_path_factory.getbasetemp())
    capture = request.config.pluginmanager.getplugin("capturemanager")
    terminal = request.config.pluginmanager.getplugin("terminalreporter")

    def write(line: str) -> None:
        with capture.global_and_fixture_disabled():
            if terminal is not None:
                terminal.write_line(line)
            else:
                print(line)

    r = Report(folder, write)
    write(f"[chaos] figures: {r.path}")
    return r


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory, report: Report) -> Iterator[Stack]:
    t0 = time.monotonic()
    folder = tmp_path_factory.mktemp("chaos")
    redis_server = RedisServer(folder / "redis")
    redis_server.start()
    saved = {k: v for k, v in os.environ.items() if k.startswith("LEADRELAY_")}
    try:
        with own_database() as (db_url, dsn):
            env = {
                "LEADRELAY_ENV": "test",
                "LEADRELAY_DATABASE_URL": db_url,
                "LEADRELAY_BROKER_URL": redis_server.url,
                "LEADRELAY_QUEUE_PREFIX": f"c{uuid.uuid4().hex[:6]}.",
                "LEADRELAY_DATA_DIR": str(folder / "data"),
                "LEADRELAY_LOG_FORMAT": "json",
                "LEADRELAY_RELAY_AFTER_SECONDS": str(RELAY_AFTER_SECONDS),
                "LEADRELAY_RELAY_EVERY_SECONDS": "1",
                # The stack's relay is a process apart (``leadrelay relay``), as before workers swept: its
                # scenarios measure that relay. test_worker_relay turns it off and the workers' own pass on.
                "LEADRELAY_WORKER_RELAY": "false",
                "LEADRELAY_TASK_MAX_RETRIES": str(MAX_RETRIES),
                "LEADRELAY_RETRY_BACKOFF_SECONDS": str(RETRY_BACKOFF),
                # The load is this suite's own: a per-key rate limit would only slow it down.
                "LEADRELAY_INTAKE_RATE_PER_KEY": "100000",
                TWILIO_TOKEN_ENV: TWILIO_TOKEN,
                # Outbound webhooks reach the suite's receiver on 127.0.0.1 over http, and retry within seconds.
                "LEADRELAY_WEBHOOKS_ALLOW_PRIVATE": "true",
                "LEADRELAY_WEBHOOKS_RETRY_SECONDS": "0.5,1,1.5,2,3",
            }
            # The test process reads the same settings (org files are applied in-process).
            for k in saved:
                os.environ.pop(k, None)
            os.environ.update(env)
            get_settings.cache_clear()
            dispose_engine()
            s = Stack(folder, redis_server, db_url, dsn, env)
            try:
                s.start_workers(WORKERS, CONCURRENCY)
                s.start_api()
                s.start_relay()
                s.supervise()
                report("stack", {"folder": str(folder), "start_s": round(time.monotonic() - t0, 1)})
                yield s
            finally:
                s.close()
                dispose_engine()
    finally:
        redis_server.close()
        for k in [k for k in os.environ if k.startswith("LEADRELAY_")]:
            os.environ.pop(k)
        os.environ.update(saved)
        get_settings.cache_clear()
        dispose_engine()


@dataclass
class Baseline:
    """What the pipeline does when nothing breaks, on this machine now: the workers' capacity (intakes fed
    through the broker), and a fault-free load through the API paced below it. The scenarios post at the
    same pace (open loop), so their figures show the fault, not a queue the relay keeps resending."""

    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    capacity: float = 0.0

    @property
    def pace(self) -> float:
        """Registrations per second the scenarios post: the API and the workers share two cores."""
        return round(PACE_OF_CAPACITY * self.capacity, 1)

    @property
    def max_backlog(self) -> int:
        return max(20, int(BACKLOG_SECONDS * self.pace))

    def require(self) -> None:
        """Skip a scenario when the pipeline could not drain even the fault-free load (test_baseline fails)."""
        if self.problems:
            pytest.skip("not meaningful: the fault-free baseline failed: " + "; ".join(self.problems))

    def deadline(self, n: int, *, slack: float = 30.0) -> float:
        """Seconds to allow ``n`` intakes to drain after their load: twice the workers' pace, plus slack."""
        return slack + 2.0 * n / max(self.capacity, 5.0)

    def load(self, stack: Stack, org: dict[str, Any], n: int, tag: str) -> LoadRunner:
        """``n`` registrations posted open loop at ``pace`` from 16 threads (paused while the backlog is over
        ``max_backlog``)."""
        return LoadRunner(
            stack.base,
            registration_calls(org, n, tag),
            concurrency=16,
            rate=self.pace,
            backlog=backlog_of(stack.dsn, org["account"]),
            max_backlog=self.max_backlog,
        )


@pytest.fixture(scope="package")
def baseline(stack: Stack, report: Report) -> Baseline:
    t0 = time.monotonic()
    b = Baseline()
    mark = stack.mark()
    app = private_celery()
    try:
        (fed,) = feed(stack, [Lane(app, make_account(), stack.env["LEADRELAY_QUEUE_PREFIX"])], BASELINE_FED)
        b.capacity = fed.rate
    except AssertionError as exc:
        b.problems.append(f"fed through the broker: {exc}")
    finally:
        app.close()
    b.figures = {"capacity_per_s": b.capacity, "pace_per_s": b.pace, "max_backlog": b.max_backlog}
    if not b.problems:
        org = make_account()
        with b.load(stack, org, BASELINE_POSTED, "base") as runner:
            load = runner.join()
        ids = list(load.accepted.values())
        seen, drain = wait_final(stack.dsn, ids, b.deadline(len(ids)))
        o = outcome(stack.dsn, org["account"], ids, RR_AGENTS)
        b.figures |= {
            "posted": load.posted,
            "accepted": len(ids),
            "done": seen["done"],
            "lost": len(ids) - seen["done"],
            "leads": o.leads,
            "duplicates": o.duplicates,
            "rr_spread": o.rr_spread,
            "agents": o.agents,
            "relays": o.relays,
            "latency_p50_s": o.latency_p50,
            "latency_p99_s": o.latency_p99,
            "post_s": round(load.seconds, 1),
            "drain_s": round(drain, 1),
        }
        if seen["done"] < len(ids) or len(ids) < load.posted:
            b.problems.append(f"{seen['done']} of {len(ids)} accepted fault-free registrations done")
        if o.duplicates or o.rr_spread > 1:
            b.problems.append(f"duplicates {o.duplicates}, round robin spread {o.rr_spread}")
    lines = stack.lines_since(mark, "worker")
    b.figures |= {
        "intake_retries": len(events(lines, "intake.retry")),
        "deadlock_retries": sum("DeadlockDetected" in line and " retry: " in line for line in lines),
        "duration_s": round(time.monotonic() - t0, 1),
    }
    report("baseline", b.figures)
    return b
