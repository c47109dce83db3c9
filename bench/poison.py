"""Scenario 6: poison intakes among the others. A poison intake (its stored payload makes
``intakes.process_intake`` raise, every time) is retried ``LEADRELAY_TASK_MAX_RETRIES`` times (2 here,
0.3 s apart and doubling, as in the chaos suite, so that its retries fall inside a round) and ends
``dead``; the figure is how much the other signups' throughput drops meanwhile, with one poison intake
in each round of 80 others. Target: under 5%.

Measured against a control running at the same moment, so that the load of other processes on the two
shared cores falls on both sides: two lanes, each an account of its own and a worker of its own (two
installations of the same code and settings on one Redis, on two queue prefixes), are fed at once
through the broker (intakes stored as the API stores them, their ids published as the API publishes
them, a short queue kept so each worker is always busy and a poison's retries, published to the queue's
tail, run inside the round). In each round one lane gets the poison, alternately, and the poisoned
lane's rate over the clean one's is the round's ratio; a lane's own speed cancels out between the
rounds that poison lane 0 and those that poison lane 1 (``estimate``). Rounds are added, up to
MAX_ROUNDS, until the estimate is two standard errors away from 5% (``decided`` says whether it got there).

The parts are the chaos suite's (``tests.support.chaos``): a redis-server and a migrated database of
this run, the two workers started and stopped by pid; no API (the intakes go through the broker) and
no relay.

    python -m bench.poison
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench.stack import settings_of
from tests.support.chaos import (
    Fed,
    Lane,
    RedisServer,
    Stack,
    Worker,
    env_for_children,
    events,
    feed,
    make_account,
    median,
    own_database,
    private_celery,
    python_module,
    query,
)

PER_ROUND, POISON_PER_ROUND = 80, 1
# Up to 12 rounds: on a busy machine the rounds' spread can keep the estimate undecided for longer.
MIN_ROUNDS, MAX_ROUNDS = 6, 12
MAX_DROP = 0.05
# Each worker as the chaos suite's: two pool children (on two cores a second worker adds overhead).
CONCURRENCY = 2
MAX_RETRIES, RETRY_BACKOFF = 2, 0.3


def estimate(ratios: list[float]) -> float:
    """The poisoned lane's rate over the clean one's: the geometric mean of the median ratio of the rounds
    that poisoned lane 0 and of those that poisoned lane 1 (a lane faster than the other by itself counts
    once for and once against)."""
    return math.sqrt(median(ratios[0::2]) * median(ratios[1::2])) if len(ratios) > 1 else 1.0


def standard_error(ratios: list[float]) -> float:
    """Of the estimate's logarithm (about its relative error), from the rounds' spread."""
    if len(ratios) < 3:
        return math.inf
    logs = [math.log(r) for r in ratios[0::2]] + [-math.log(r) for r in ratios[1::2]]
    return statistics.stdev(logs) / math.sqrt(len(ratios))


def clear(ratios: list[float]) -> bool:
    """Whether the estimate is two standard errors away from the 5% line."""
    if len(ratios) < MIN_ROUNDS:
        return False
    return abs((1 - estimate(ratios)) - MAX_DROP) > 2 * standard_error(ratios)


@contextmanager
def two_lanes(folder: Path) -> Iterator[tuple[Stack, list[str]]]:
    """A redis-server and a database of this run, this process's settings theirs, and a worker on each of
    two queue prefixes; the stack and the prefixes. All of it stopped and dropped at the end."""
    with ExitStack() as exits:
        folder.mkdir(parents=True, exist_ok=True)
        redis_server = RedisServer(folder / "redis")
        redis_server.start()
        exits.callback(redis_server.close)
        url, dsn = exits.enter_context(own_database())
        prefix = f"p{uuid.uuid4().hex[:6]}."
        env = {
            "LEADRELAY_ENV": "test",
            "LEADRELAY_DATABASE_URL": url,
            "LEADRELAY_BROKER_URL": redis_server.url,
            "LEADRELAY_QUEUE_PREFIX": prefix,
            "LEADRELAY_DATA_DIR": str(folder / "data"),
            "LEADRELAY_LOG_FORMAT": "json",
            "LEADRELAY_TASK_MAX_RETRIES": str(MAX_RETRIES),
            "LEADRELAY_RETRY_BACKOFF_SECONDS": str(RETRY_BACKOFF),
        }
        exits.enter_context(settings_of(env))
        stack = Stack(folder, redis_server, url, dsn, env)
        exits.callback(stack.close)
        stack.start_workers(1, CONCURRENCY)
        twin_prefix = f"{prefix}twin."
        argv = python_module("leadrelay", "worker", "--concurrency", str(CONCURRENCY), "-n", f"twin-{os.getpid()}@%h")
        twin = Worker(
            "worker-twin",
            argv,
            env_for_children({**env, "LEADRELAY_QUEUE_PREFIX": twin_prefix}),
            folder / "worker-twin.log",
        )
        twin.start()
        exits.callback(twin.close)
        stack.wait_ready(twin)
        yield stack, [prefix, twin_prefix]


def measure(stack: Stack, prefixes: list[str]) -> dict[str, Any]:
    """The rounds, alternately poisoning one lane, until the estimate is decided (or MAX_ROUNDS)."""
    orgs = [make_account(), make_account()]
    apps = [private_celery(prefix) for prefix in prefixes]
    lanes = [Lane(app, org, prefix) for app, org, prefix in zip(apps, orgs, prefixes, strict=True)]
    rounds: list[tuple[int, list[Fed]]] = []
    ratios: list[float] = []
    try:
        # Warm-up on accounts of its own, not measured: each pool child's first failure pays one-off costs.
        feed(stack, [Lane(lane.app, make_account(), lane.prefix) for lane in lanes], PER_ROUND // 2, poison=[2, 2])
        mark = stack.mark()
        while len(rounds) < MAX_ROUNDS and not clear(ratios):
            sick = len(rounds) % 2
            fed = feed(stack, lanes, PER_ROUND, poison=[POISON_PER_ROUND if i == sick else 0 for i in range(2)])
            rounds.append((sick, fed))
            ratios.append(fed[sick].rate / fed[1 - sick].rate)
    finally:
        for app in apps:
            app.close()
    poison = [i for _, fed in rounds for lane in fed for i in lane.poison]
    normal = [i for _, fed in rounds for lane in fed for i in lane.normal]
    lines = stack.lines_since(mark, "worker")
    sql = "SELECT count(*) FROM intakes WHERE id = ANY(%s::uuid[]) AND status = %s"
    ratio = estimate(ratios)
    return {
        "per_round": PER_ROUND,
        "poison_per_round": POISON_PER_ROUND,
        "max_retries": MAX_RETRIES,
        "retry_backoff_s": RETRY_BACKOFF,
        "rounds": [
            {"poisoned_lane": sick, "rates_per_s": [f.rate for f in fed], "seconds": max(f.seconds for f in fed)}
            for sick, fed in rounds
        ],
        "ratios_poisoned_over_clean": [round(x, 4) for x in ratios],
        "poisoned_per_s": round(median([fed[sick].rate for sick, fed in rounds]), 2),
        "clean_per_s": round(median([fed[1 - sick].rate for sick, fed in rounds]), 2),
        "ratio": round(ratio, 4),
        "drop_pct": round(100 * (1 - ratio), 1),
        "drop_stderr_pct": round(100 * ratio * standard_error(ratios), 1),
        "target": f"< {100 * MAX_DROP:.0f}%",
        "met": 1 - ratio < MAX_DROP,
        "decided": clear(ratios),
        "checks": {
            "poison_intakes": len(poison),
            "poison_dead": query(stack.dsn, sql, (poison, "dead"))[0][0],
            "poison_retries": sum(r.get("intake_id") in poison for r in events(lines, "intake.retry")),
            "normal": len(normal),
            "normal_done": query(stack.dsn, sql, (normal, "done"))[0][0],
        },
        "load_1m_after": round(os.getloadavg()[0], 2),
    }


def run(folder: Path) -> dict[str, Any]:
    """Scenario 6 on a stack of its own; its figures (``drop_pct`` against ``target``)."""
    t0 = time.monotonic()
    with two_lanes(folder) as (stack, prefixes):
        figures = measure(stack, prefixes)
    figures["seconds"] = round(time.monotonic() - t0, 1)
    return figures


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="leadrelay-bench-poison-") as tmp:
        print(json.dumps(run(Path(tmp)), indent=2))
