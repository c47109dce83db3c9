"""The worker killed under load. A SIGKILLed main process takes the messages it reserved
with it: they stay in Redis's unacked hash for the 3600 s visibility timeout, so the relay is their only
way back. A SIGKILLed pool child's message is requeued (``task_reject_on_worker_lost``) and the pool
replaced. Either way every accepted registration ends done, once: one lead per person, one `created` and
one `routed` event per lead, and the company's round robin within 1."""

from __future__ import annotations

import datetime as dt
import random
import signal
import time
from typing import Any

import pytest

from tests.chaos.conftest import RR_AGENTS, Baseline, make_account
from tests.support.chaos import (
    Load,
    Outcome,
    Report,
    Stack,
    Worker,
    alive,
    kill_own,
    outcome,
    probe,
    start_time,
    wait_final,
)

pytestmark = pytest.mark.chaos

MAIN_KILLS_AT = (500, 1000, 1500)  # of 2,000 registrations: early, midway and late in the run
POOL_KILLS = 200, (40, 80, 120, 160)  # registrations, and the kills among them
PROBE, PROBE_WITHIN = 10, 60.0


def figures(load: Load, seen: Any, o: Outcome, drain: float, throttled: float) -> dict[str, Any]:
    """The figures every load scenario reports."""
    return {
        "posted": load.posted,
        "accepted": len(load.accepted),
        "done": seen["done"],
        "dead": seen["dead"],
        "lost": len(load.accepted) - seen["done"],
        "leads": o.leads,
        "duplicates": o.duplicates,
        "signup_events": o.signup_events,
        "rr_spread": o.rr_spread,
        "agents": o.agents,
        "client_retries": load.retries,
        "http_5xx": load.server_errors,
        "transport_errors": load.transport_errors,
        "relayed_intakes": o.relayed_intakes,
        "relays": o.relays,
        "latency_p50_s": o.latency_p50,
        "latency_p99_s": o.latency_p99,
        "latency_max_s": o.latency_max,
        "post_s": round(load.seconds, 1),
        "throttled_s": round(throttled, 1),
        "drain_s": round(drain, 1),
    }


def crashes(stack: Stack, since: dt.datetime) -> list[str]:
    """The stack's processes that ended on their own since ``since`` (the supervisor started them again)."""
    return [f"{e.name} exit {e.code}: {e.last_error}" for e in stack.exits(since)]


def assert_exactly_once(f: dict[str, Any]) -> None:
    assert f["accepted"] == f["posted"], "every registration is accepted in the end (the client retries 5xx)"
    assert f["dead"] == 0, f"{f['dead']} accepted registrations dead"
    assert f["lost"] == 0, f"{f['lost']} accepted registrations never done"
    assert f["leads"] == f["accepted"], "one lead per person"
    assert f["duplicates"] == 0
    assert f["signup_events"] == 0, "a retried post added a signup to a lead (Idempotency-Key ignored)"
    assert f["rr_spread"] <= 1, f["agents"]
    assert not f["crashes"], f"a process of the stack died on its own: {f['crashes']}"


@pytest.mark.timeout(600)  # 2,000 registrations at the pace of a loaded machine may need more than 300 s
def test_worker_main_process_sigkilled_three_times_under_2000_registrations(
    stack: Stack, report: Report, baseline: Baseline
) -> None:
    baseline.require()
    t0, since = time.monotonic(), dt.datetime.now(dt.UTC)
    org = make_account()
    worker = stack.workers[0]
    kills: list[list[tuple[int, int | None]]] = []
    restart_s: list[float] = []
    with baseline.load(stack, org, 2000, "main") as runner:
        for at in MAIN_KILLS_AT:
            runner.wait_sent(at)
            pool, seconds = stack.crash_worker(worker)
            kills.append(pool)
            restart_s.append(seconds)
        load = runner.join()
    orphans = sum(alive(pid) for pool in kills for pid, _ in pool)
    ids = list(load.accepted.values())
    seen, drain = wait_final(stack.dsn, ids, baseline.deadline(len(ids)))
    reaped = sum(Worker.reap_orphans(pool, grace=0) for pool in kills)
    with stack.redis.client() as r:
        # What the killed main processes had reserved: kept there until the visibility timeout (3600 s).
        unacked = int(r.hlen(f"{stack.env['LEADRELAY_QUEUE_PREFIX']}unacked"))
    o = outcome(stack.dsn, org["account"], ids, RR_AGENTS)
    after = probe(stack, make_account(), PROBE, timeout=PROBE_WITHIN)
    f = {
        **figures(load, seen, o, drain, runner.throttled),
        "pace_per_s": baseline.pace,
        "kills": len(kills),
        "kill_to_ready_again_s": restart_s,
        "crashes": crashes(stack, since),
        "pool_children_alive_after_their_main_died": orphans,
        "orphans_sigkilled_by_test": reaped,
        "unacked_messages_left_in_redis": unacked,
        "probe_after_s": after,
        "duration_s": round(time.monotonic() - t0, 1),
    }
    report("1 worker main SIGKILLed x3", f)
    assert_exactly_once(f)
    assert after is not None, f"{PROBE} registrations posted after the kills were not done within {PROBE_WITHIN} s"


def test_pool_children_sigkilled_under_load(stack: Stack, report: Report, baseline: Baseline) -> None:
    baseline.require()
    t0, since = time.monotonic(), dt.datetime.now(dt.UTC)
    org = make_account()
    mark = stack.mark()
    worker = stack.workers[0]
    n, kills_at = POOL_KILLS
    killed = []
    with baseline.load(stack, org, n, "pool") as runner:
        for at in kills_at:
            runner.wait_sent(at)
            pool = worker.wait_pool(stack.concurrency)
            child = random.choice(pool)
            if kill_own(child, start_time(child), signal.SIGKILL):
                killed.append(child)
        load = runner.join()
    ids = list(load.accepted.values())
    seen, drain = wait_final(stack.dsn, ids, baseline.deadline(len(ids)))
    o = outcome(stack.dsn, org["account"], ids, RR_AGENTS)
    lines = stack.lines_since(mark, "worker")
    waited = time.monotonic()
    pool_after = worker.wait_pool(stack.concurrency, timeout=30)
    replaced_s = round(time.monotonic() - waited, 2)
    after = probe(stack, make_account(), PROBE, timeout=PROBE_WITHIN)
    f = {
        **figures(load, seen, o, drain, runner.throttled),
        "pace_per_s": baseline.pace,
        "pool_kills": len(killed),
        "crashes": crashes(stack, since),
        "worker_lost_errors": sum("WorkerLostError" in line for line in lines),
        "main_process_alive": worker.running(),
        "pool_after": len(pool_after),
        "pool_full_again_after_drain_s": replaced_s,
        "probe_after_s": after,
        "duration_s": round(time.monotonic() - t0, 1),
    }
    report("2 pool children SIGKILLed", f)
    assert len(killed) == len(kills_at)
    assert_exactly_once(f)
    assert worker.running(), "the main process survives its children"
    assert len(pool_after) == stack.concurrency, "every killed pool child was replaced"
    assert not set(killed) & set(pool_after)
    assert after is not None, f"{PROBE} registrations posted after the kills were not done within {PROBE_WITHIN} s"
