"""PostgreSQL stays up but every connection to this suite's database is terminated under load, a few
times (``pg_terminate_backend``, naming this database only). The API may answer 5xx (the client retries
with the same Idempotency-Key: a 5xx is not an acceptance), tasks retry, pools replace a connection the
server left when it is checked out; nothing accepted is lost, nothing is done twice, and no worker is left
stuck."""

from __future__ import annotations

import datetime as dt
import time

import psycopg
import pytest

from tests.chaos.conftest import RR_AGENTS, Baseline, make_account
from tests.chaos.test_worker_kills import PROBE, PROBE_WITHIN, assert_exactly_once, crashes, figures
from tests.support.chaos import (
    PG_ADMIN,
    Report,
    Stack,
    events,
    outcome,
    probe,
    query,
    terminate_connections,
    wait_final,
)

pytestmark = pytest.mark.chaos

TERMINATIONS = 240, (50, 100, 150, 200)  # registrations, and when every connection is terminated
RECOVER_WITHIN_SECONDS = 30


def first_after(dsn: str, ids: list[str], column: str, at: dt.datetime) -> float | None:
    """Seconds from ``at`` to the first of ``ids`` whose ``column`` (created_at: the API stored one;
    processed_at: a worker committed one) is later."""
    (first,) = query(
        dsn,
        f"SELECT min({column}) FROM intakes WHERE id = ANY(%s::uuid[]) AND {column} > %s",
        (ids, at),
    )[0]
    return None if first is None else round((first - at).total_seconds(), 2)


def test_database_connections_terminated_under_load_lose_nothing(
    stack: Stack, report: Report, baseline: Baseline
) -> None:
    baseline.require()
    t0, since = time.monotonic(), dt.datetime.now(dt.UTC)
    org = make_account()
    mark = stack.mark()
    n, plan = TERMINATIONS
    terminations: list[tuple[dt.datetime, int]] = []
    with baseline.load(stack, org, n, "pg") as runner, psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        for at in plan:
            runner.wait_sent(at)
            when = dt.datetime.now(dt.UTC)
            terminations.append((when, terminate_connections(admin, stack.db_name)))
        load = runner.join()
    ids = list(load.accepted.values())
    seen, drain = wait_final(stack.dsn, ids, baseline.deadline(len(ids)))
    o = outcome(stack.dsn, org["account"], ids, RR_AGENTS)
    worker_lines = stack.lines_since(mark, "worker")
    api_lines = stack.lines_since(mark, "api")
    alive = {w.name: (w.running(), len(w.pool())) for w in stack.workers}
    after = probe(stack, make_account(), PROBE, timeout=PROBE_WITHIN)
    recovery = [
        {
            "connections": n,
            "api_stored_again_s": first_after(stack.dsn, ids, "created_at", when),
            "worker_done_again_s": first_after(stack.dsn, ids, "processed_at", when),
        }
        for when, n in terminations
    ]
    f = {
        **figures(load, seen, o, drain, runner.throttled),
        "terminations": len(terminations),
        "crashes": crashes(stack, since),
        "connections_terminated": sum(n for _, n in terminations),
        "answers": dict(load.answers),
        "intake_task_retries": len(events(worker_lines, "intake.retry")),
        "api_unexpected_errors": len(events(api_lines, "http.unexpected_error")),
        "recovery": recovery,
        "workers_alive_pool": alive,
        "probe_after_s": after,
        "duration_s": round(time.monotonic() - t0, 1),
    }
    report("5 PostgreSQL connections terminated x4", f)
    assert all(n > 0 for _, n in terminations), "each termination hit live connections of the stack"
    assert_exactly_once(f)
    for r in recovery:
        assert r["worker_done_again_s"] is not None, recovery
        assert r["worker_done_again_s"] <= RECOVER_WITHIN_SECONDS, recovery
    assert all(running and size == stack.concurrency for running, size in alive.values()), alive
    assert after is not None, (
        f"{PROBE} registrations posted after the terminations were not done within {PROBE_WITHIN} s"
    )
