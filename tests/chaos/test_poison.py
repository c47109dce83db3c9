"""A poison intake (its stored payload makes ``services.process_intake`` raise, every time) retries
``LEADRELAY_TASK_MAX_RETRIES`` times (2 in this suite, 0.3 s apart and doubling), then ends ``dead`` with
the error, while the other signups flow: their throughput drops less than 5% (one poison intake in each
round of 100 others).

Measured against a control running at the same moment, so that the load of other processes on the two
shared cores falls on both sides: two lanes, each an account of its own and a worker of its own (the
suite's worker, and a twin on another queue prefix, as a second installation on the same Redis would
be), are fed at once through the broker (intakes stored as the API stores them, their ids published as the
API publishes them, a short queue kept so each worker is always busy and a poison's retries, published to
the queue's tail, run inside the round). In each round one lane gets the poison, alternately, and the
poisoned lane's rate over the clean one's is the round's ratio; a lane's own speed cancels out between
the rounds that poison lane 0 and those that poison lane 1 (``estimate``). Rounds are added, up to
MAX_ROUNDS, until the estimate is clearly on one side of 5%."""

from __future__ import annotations

import datetime as dt
import math
import os
import statistics
import time
from collections.abc import Iterator

import pytest

from tests.chaos.conftest import CONCURRENCY, MAX_RETRIES, RR_AGENTS, Baseline, make_account
from tests.support.chaos import (
    Fed,
    Lane,
    Report,
    Stack,
    Worker,
    env_for_children,
    events,
    feed,
    log_time,
    median,
    outcome,
    private_celery,
    python_module,
    query,
)

pytestmark = pytest.mark.chaos

PER_ROUND, POISON_PER_ROUND = 80, 1
MIN_ROUNDS, MAX_ROUNDS = 6, 8
MAX_DROP = 0.05


@pytest.fixture
def twin(stack: Stack) -> Iterator[str]:
    """A second worker of the same code and settings on its own queue prefix, for this test only."""
    prefix = f"{stack.env['LEADRELAY_QUEUE_PREFIX']}twin."
    argv = python_module("leadrelay", "worker", "--concurrency", str(CONCURRENCY), "-n", f"twin-{os.getpid()}@%h")
    worker = Worker(
        "worker-twin",
        argv,
        env_for_children({**stack.env, "LEADRELAY_QUEUE_PREFIX": prefix}),
        stack.folder / "worker-twin.log",
    )
    worker.start()
    try:
        stack.wait_ready(worker)
        yield prefix
    finally:
        worker.close()


def estimate(ratios: list[float]) -> float:
    """The poisoned lane's rate over the clean one's: the geometric mean of the median ratio of the rounds
    that poisoned lane 0 and of those that poisoned lane 1 (a lane faster than the other by itself counts
    once for and once against)."""
    return math.sqrt(median(ratios[0::2]) * median(ratios[1::2])) if len(ratios) > 1 else 1.0


def clear(ratios: list[float]) -> bool:
    """Whether the estimate is two standard errors away from the 5% line."""
    if len(ratios) < MIN_ROUNDS:
        return False
    logs = [math.log(r) for r in ratios[0::2]] + [-math.log(r) for r in ratios[1::2]]
    error = statistics.stdev(logs) / math.sqrt(len(ratios))
    return abs((1 - estimate(ratios)) - MAX_DROP) > 2 * error


def test_a_poison_intake_ends_dead_after_its_retries_and_barely_slows_the_others(
    stack: Stack, report: Report, baseline: Baseline, twin: str
) -> None:
    baseline.require()
    t0 = time.monotonic()
    orgs = [make_account(), make_account()]
    apps = [private_celery(), private_celery(twin)]
    lanes = [Lane(apps[0], orgs[0], stack.env["LEADRELAY_QUEUE_PREFIX"]), Lane(apps[1], orgs[1], twin)]
    mark = stack.mark()
    rounds: list[tuple[int, list[Fed]]] = []
    ratios: list[float] = []
    try:
        # Warm-up on accounts of its own, not measured: each pool child's first failure pays one-off costs.
        feed(stack, [Lane(lane.app, make_account(), lane.prefix) for lane in lanes], PER_ROUND // 2, poison=[2, 2])
        while len(rounds) < MAX_ROUNDS and not clear(ratios):
            sick = len(rounds) % 2
            fed = feed(stack, lanes, PER_ROUND, poison=[POISON_PER_ROUND if i == sick else 0 for i in range(2)])
            rounds.append((sick, fed))
            ratios.append(fed[sick].rate / fed[1 - sick].rate)
    finally:
        for app in apps:
            app.close()
    poison = [pid for _, fed in rounds for lane in fed for pid in lane.poison]
    normal = [[i for _, fed in rounds for i in fed[n].normal] for n in range(2)]
    lines = stack.lines_since(mark, "worker")
    retries = [r for r in events(lines, "intake.retry") if r.get("intake_id") in poison]
    dead_logged = {r.get("intake_id") for r in events(lines, "intake.dead")} & set(poison)
    windows = [
        (fed[0].started, fed[0].started + dt.timedelta(seconds=max(f.seconds for f in fed))) for _, fed in rounds
    ]
    inside = sum(any(a <= log_time(r) <= b for a, b in windows) for r in retries)
    rows = query(stack.dsn, "SELECT status::text, reason FROM intakes WHERE id = ANY(%s::uuid[])", (poison,))
    drop = 1 - estimate(ratios)
    outcomes = [outcome(stack.dsn, org["account"], ids, RR_AGENTS) for org, ids in zip(orgs, normal, strict=True)]
    f = {
        "rounds": [f"poison on lane {sick}: {fed[0].rate}/s vs {fed[1].rate}/s" for sick, fed in rounds],
        "ratios_poisoned_over_clean": [round(x, 3) for x in ratios],
        "drop_pct": round(100 * drop, 1),
        "decided": clear(ratios),
        "load_average": round(os.getloadavg()[0], 2),
        "poison_intakes": len(poison),
        "poison_dead": sum(status == "dead" for status, _ in rows),
        "poison_retries": len(retries),
        "poison_retries_inside_measured_rounds": inside,
        "poison_dead_logged": len(dead_logged),
        "dead_reason": rows[0][1] if rows else None,
        "normal_done": sum(o.intakes["done"] for o in outcomes),
        "leads": sum(o.leads for o in outcomes),
        "duplicates": sum(o.duplicates for o in outcomes),
        "rr_spread": max(o.rr_spread for o in outcomes),
        "duration_s": round(time.monotonic() - t0, 1),
    }
    report("6 poison intake", f)
    assert all(status == "dead" for status, _ in rows), rows
    assert all(reason and reason.startswith("ValueError") for _, reason in rows), [
        r for r in rows if not str(r[1]).startswith("ValueError")
    ]
    assert len(dead_logged) == len(poison)
    assert len(retries) >= MAX_RETRIES * len(poison), "each poison intake used its retries before dying"
    assert inside >= len(retries) // 2, "the poison retried while the others' throughput was measured"
    assert f["normal_done"] == f["leads"] == sum(len(ids) for ids in normal)
    assert f["duplicates"] == 0
    assert f["rr_spread"] <= 1
    assert drop < MAX_DROP, f"the others' throughput dropped {100 * drop:.1f}% with poison ({f['rounds']})"
