"""Durability with only the API and the workers: no ``leadrelay relay`` process, no beat. Every worker's main
process runs the relay's pass (workers.relay.RelaySweep), so work whose message a SIGKILLed worker took with
it, or a Redis without persistence lost, is sent again by the workers themselves. Two and three workers
sweeping at once share the kept work (FOR UPDATE SKIP LOCKED) and never send a row twice in a period; and
``--no-relay`` (or ``LEADRELAY_WORKER_RELAY=false``) really turns a worker's pass off.

Each test stops the stack's relay process and starts workers of its own shape; the fixture puts the stack
back as it was (one worker that does not sweep, and the relay apart)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Sequence

import pytest

from tests.chaos.conftest import CONCURRENCY, RR_AGENTS, WORKERS, Baseline, make_account
from tests.chaos.test_broker_loss import queued_messages, restart
from tests.chaos.test_worker_kills import assert_exactly_once, crashes, figures
from tests.support.chaos import (
    IntakeStore,
    LoadRunner,
    Report,
    Stack,
    alive,
    env_for_children,
    events,
    kill_own,
    outcome,
    python_module,
    query,
    registration_calls,
    start_time,
    statuses,
    wait_final,
)
from tests.support.processes import ROOT, wait_for

pytestmark = pytest.mark.chaos

# The workers' own pass, every second (the relay's wait, RELAY_AFTER_SECONDS, is the stack's: 3 s).
SWEEP = {"LEADRELAY_WORKER_RELAY": "true", "LEADRELAY_RELAY_EVERY_SECONDS": "1"}
# 850 registrations paced as the baseline says, the first kill midway; then a burst of 150 while the pool
# children are stopped (SIGSTOP), and the second kill once the worker has taken the burst's messages off the
# queue: they were the only messages standing for that work (a later signup's task would take it along),
# so nothing but a relay pass can send it again.
PACED, FIRST_KILL_AT, BURST = 850, 425, 150
QUEUED = 100
# Sharing: a pass every 0.05 s in each worker, a wait of 300 s (so a claimed row is not due again for 600 s,
# far longer than the test, even on a loaded machine), and rows stored "long ago" while the workers sweep: in chunks (passes of every worker
# share them), then in batches at once (passes of several workers find the same rows due together).
SHARE = {
    "LEADRELAY_WORKER_RELAY": "true",
    "LEADRELAY_RELAY_EVERY_SECONDS": "0.05",
    "LEADRELAY_RELAY_AFTER_SECONDS": "300",
}
SHARED_ROWS, CHUNK, BATCHES, BATCH = 100, 20, 2, 200
# --no-relay: this many of the worker's periods (0.2 s) pass with due rows and nothing may be sent.
OFF = {"LEADRELAY_WORKER_RELAY": "true", "LEADRELAY_RELAY_EVERY_SECONDS": "0.2"}
OFF_PERIODS = 15
OFF_ROWS = 20
REFUSED_ROWS = 10


@pytest.fixture
def sweeping(stack: Stack) -> Iterator[Stack]:
    """The stack with its relay process stopped: the workers a test starts are the only ones to sweep."""
    relay = stack.relay
    assert relay is not None
    relay.stop()
    try:
        yield stack
    finally:
        stack.start_workers(WORKERS, CONCURRENCY)
        relay.start()


def age(stack: Stack, ids: Sequence[str], minutes: int = 10) -> None:
    """As if stored ``minutes`` ago: due at a worker's next pass."""
    query(
        stack.dsn,
        "UPDATE intakes SET created_at = now() - make_interval(mins => %s) WHERE id = ANY(%s::uuid[]) RETURNING 1",
        (minutes, list(ids)),
    )


def relays_of(stack: Stack, ids: Sequence[str]) -> Counter[int]:
    """How many intakes were claimed by a relay pass how many times."""
    rows = query(stack.dsn, "SELECT relays, count(*) FROM intakes WHERE id = ANY(%s::uuid[]) GROUP BY 1", (list(ids),))
    return Counter({int(relays): int(n) for relays, n in rows})


def done_by(stack: Stack, ids: Sequence[str], before: dt.datetime) -> dt.datetime | None:
    """When the last of ``ids`` accepted before ``before`` was done (None when none was)."""
    rows = query(
        stack.dsn,
        "SELECT max(processed_at) FROM intakes WHERE id = ANY(%s::uuid[]) AND created_at < %s",
        (list(ids), before),
    )
    return rows[0][0]


@pytest.mark.timeout(600)
def test_worker_process_group_sigkilled_twice_with_only_api_and_workers_loses_nothing(
    sweeping: Stack, report: Report, baseline: Baseline
) -> None:
    baseline.require()
    stack = sweeping
    t0, since = time.monotonic(), dt.datetime.now(dt.UTC)
    stack.start_workers(WORKERS, CONCURRENCY, SWEEP, own_group=True)
    assert stack.relay is not None
    assert not stack.relay.running(), "no relay process: only the API and the workers"
    worker = stack.workers[0]
    org = make_account()
    mark = stack.mark()
    kills: list[dt.datetime] = []
    pools: list[list[tuple[int, int | None]]] = []
    ready_again_s: list[float] = []

    def kill() -> None:
        kills.append(dt.datetime.now(dt.UTC))
        pool, seconds = stack.crash_worker_group(worker)
        pools.append(pool)
        ready_again_s.append(seconds)

    with baseline.load(stack, org, PACED, "wsweep") as runner:
        runner.wait_sent(FIRST_KILL_AT)
        kill()
        load = runner.join()
    queue = f"{stack.env['LEADRELAY_QUEUE_PREFIX']}{stack.env['LEADRELAY_QUEUE_PREFIX']}registrations"
    pool = [(pid, start_time(pid)) for pid in worker.wait_pool(CONCURRENCY)]
    stopped = [pid for pid, started in pool if kill_own(pid, started, signal.SIGSTOP)]
    try:
        burst = LoadRunner(stack.base, registration_calls(org, BURST, "wtail"), concurrency=16).start().join()
        with stack.redis.client() as r:
            # Once the worker took them. On a slow machine its own pass may already have sent the burst's
            # rows again (due after 3 s) into a queue it can no longer take from: kill it then anyway.
            deadline = time.monotonic() + 30
            while (queued := int(r.llen(queue))) > 0 and time.monotonic() < deadline:
                time.sleep(0.05)
        held = statuses(stack.dsn, list(burst.accepted.values()))
    finally:
        kill()  # the stopped children die with their group
    load.posted += burst.posted
    load.accepted |= burst.accepted
    load.retries += burst.retries
    load.server_errors += burst.server_errors
    load.transport_errors += burst.transport_errors
    ids = list(load.accepted.values())
    seen, drain = wait_final(stack.dsn, ids, baseline.deadline(len(ids)))
    with stack.redis.client() as r:
        unacked = int(r.hlen(f"{stack.env['LEADRELAY_QUEUE_PREFIX']}unacked"))
    o = outcome(stack.dsn, org["account"], ids, RR_AGENTS)
    recovered = [done_by(stack, ids, at) for at in kills]
    lines = stack.lines_since(mark, "worker")
    f = {
        **figures(load, seen, o, drain, runner.throttled),
        "pace_per_s": baseline.pace,
        "kills": len(kills),
        "pool_children_stopped_before_the_tail": len(stopped),
        "tail_burst_not_done_at_the_kill": held["accepted"] + held["processing"],
        "messages_queued_at_the_tail_kill": queued,
        "pool_children_alive_after_the_group_kill": sum(alive(pid) for pool in pools for pid, _ in pool),
        "kill_to_ready_again_s": ready_again_s,
        # From each kill until every registration accepted before it was done.
        "kill_to_all_done_s": [
            round((done - at).total_seconds(), 2) if done else None for done, at in zip(recovered, kills, strict=True)
        ],
        "worker_passes_that_resent": len(events(lines, "relay.resent")),
        "unacked_messages_left_in_redis": unacked,
        "crashes": crashes(stack, since),
        "duration_s": round(time.monotonic() - t0, 1),
    }
    report("8 worker process group SIGKILLed x2, workers sweep, no relay", f)
    assert len(stopped) == CONCURRENCY
    assert f["tail_burst_not_done_at_the_kill"] == BURST, "the burst waited for the stopped children"
    assert f["pool_children_alive_after_the_group_kill"] == 0
    assert_exactly_once(f)
    assert f["relayed_intakes"] > 0, "the workers' own pass sent again what the killed worker held"
    assert f["worker_passes_that_resent"] > 0


def test_redis_killed_with_work_queued_the_workers_sweep_recovers_every_lead(
    sweeping: Stack, report: Report, baseline: Baseline
) -> None:
    baseline.require()
    stack = sweeping
    t0, since = time.monotonic(), dt.datetime.now(dt.UTC)
    stack.start_workers(WORKERS, CONCURRENCY, SWEEP)
    org = make_account()
    # Nothing consumes: the messages wait in Redis only.
    stack.stop_workers()
    try:
        load = LoadRunner(stack.base, registration_calls(org, QUEUED, "wgone"), concurrency=16).start().join()
        ids = list(load.accepted.values())
        queued_before = queued_messages(stack.redis)
        restart(stack.redis, signal.SIGKILL)
        queued_after = queued_messages(stack.redis)
        back = time.monotonic()
    finally:
        stack.resume_workers()
    seen, _ = wait_final(stack.dsn, ids, baseline.deadline(QUEUED))
    recover = time.monotonic() - back
    o = outcome(stack.dsn, org["account"], ids, RR_AGENTS)
    f = {
        **figures(load, seen, o, recover, 0.0),
        "queued_before_kill": queued_before,
        "queued_after_restart": queued_after,
        "recovered_by_the_workers": o.relayed_intakes,
        "crashes": crashes(stack, since),
        # From Redis back (empty) to every lead done: the workers start, and their first pass sends it all.
        "redis_back_to_all_done_s": round(recover, 1) if seen["done"] == len(ids) else None,
        "duration_s": round(time.monotonic() - t0, 1),
    }
    report("9 Redis killed, queue lost, the workers' pass recovers", f)
    assert queued_before >= 1, "the registrations' work was queued in Redis"
    assert queued_after == 0, "persistence off: the restart lost them"
    assert_exactly_once(f)
    # Nothing but the workers' pass publishes lost work (with it off, none of them is ever done), and a task it
    # sends takes the other signups of its account waiting beside it: fewer than all are sent again themselves.
    assert o.relayed_intakes >= 1, "the workers' pass sent the lost work again"


def queued_intake_ids(stack: Stack) -> Counter[str]:
    """The ids of the intake.process messages waiting in the registrations queue, with how many each."""
    prefix = stack.env["LEADRELAY_QUEUE_PREFIX"]
    found: Counter[str] = Counter()
    with stack.redis.client() as r:
        for raw in r.lrange(f"{prefix}{prefix}registrations", 0, -1):
            message = json.loads(raw)
            if message["headers"]["task"] != "intake.process":
                continue
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            found[str(args[0])] += 1
    return found


@pytest.mark.parametrize("count", [2, 3])
def test_workers_sweeping_at_once_never_send_a_row_twice(sweeping: Stack, report: Report, count: int) -> None:
    stack = sweeping
    t0 = time.monotonic()
    prefix = stack.env["LEADRELAY_QUEUE_PREFIX"]
    # They sweep but take nothing from the registrations queue, so every message they send waits there to
    # be counted.
    stack.start_workers(count, 1, SHARE, ["-Q", f"{prefix}imports"])
    mark = stack.mark()
    store = IntakeStore(make_account())
    ids: list[str] = []
    while len(ids) < SHARED_ROWS:
        chunk = store.add(CHUNK, f"share{count}")
        age(stack, chunk)
        ids += chunk
    for _ in range(BATCHES):
        batch = store.add(BATCH, f"batch{count}")
        age(stack, batch)  # one statement: all due at once
        ids += batch
        time.sleep(0.3)
    wait_for(lambda: sum(queued_intake_ids(stack)[i] for i in ids) >= len(ids), timeout=60, what="every row sent")
    time.sleep(1)  # twenty more passes of each worker
    sent = queued_intake_ids(stack)
    claimed = relays_of(stack, ids)
    passes = [len(events(stack.lines_since(mark, f"worker-{i}.log"), "relay.resent")) for i in range(count)]
    twice = sorted(i for i in ids if sent[i] > 1)
    f = {
        "workers": count,
        "rows": len(ids),
        "messages": sum(sent[i] for i in ids),
        "rows_sent_twice": len(twice),
        "rows_never_sent": sum(1 for i in ids if sent[i] == 0),
        "rows_by_claims": dict(claimed),
        "passes_that_sent_by_worker": passes,
        "duration_s": round(time.monotonic() - t0, 1),
    }
    report(f"10 {count} workers sweeping at once", f)
    assert not twice, f"{len(twice)} rows sent twice, e.g. {twice[:3]}"
    assert f["rows_never_sent"] == 0
    assert claimed == Counter({1: len(ids)}), "each row claimed by one pass of one worker"
    assert sum(1 for n in passes if n) >= 2, f"the rows were shared by the workers: {passes}"


@pytest.mark.parametrize(
    ("how", "args", "env"),
    [("--no-relay", ["--no-relay"], {}), ("LEADRELAY_WORKER_RELAY=false", [], {"LEADRELAY_WORKER_RELAY": "false"})],
)
def test_a_worker_told_not_to_sweep_sends_nothing(
    sweeping: Stack, report: Report, how: str, args: list[str], env: dict[str, str]
) -> None:
    stack = sweeping
    stack.start_workers(1, CONCURRENCY, {**OFF, **env}, args)
    mark = stack.mark()
    store = IntakeStore(make_account())
    ids = store.add(OFF_ROWS, "off")
    age(stack, ids)  # due at once; a worker that sweeps sends them at its next pass (0.2 s)
    time.sleep(OFF_PERIODS * float(OFF["LEADRELAY_RELAY_EVERY_SECONDS"]))
    lines = stack.lines_since(mark, "worker")
    off = {
        "claimed": sum(n for relays, n in relays_of(stack, ids).items() if relays),
        "statuses": dict(statuses(stack.dsn, ids)),
        "relay_lines": len(events(lines, "relay.in_worker", "relay.resent")),
    }
    # The same worker without the opt-out sends them: the rows were due, and the test would have seen it.
    stack.start_workers(1, CONCURRENCY, OFF)
    seen, waited = wait_final(stack.dsn, ids, 60)
    report(f"11 {how}", {**off, "done_once_sweeping": seen["done"], "sweeping_done_s": round(waited, 1)})
    assert off["claimed"] == 0, f"{how}: the worker claimed {off['claimed']} rows"
    assert off["statuses"] == {"accepted": len(ids)}
    assert off["relay_lines"] == 0
    assert seen["done"] == len(ids)


def test_a_pass_whose_publish_the_broker_refuses_stops_at_the_first(sweeping: Stack, report: Report) -> None:
    """In a worker's main process a pass must not hold the event loop through every publish's retries
    when the broker goes away mid-pass: it stops at the first refused publish, and what it claimed is due
    again a doubled wait later (``leadrelay relay --once`` runs the same pass, against this suite's Redis
    stopped)."""
    stack = sweeping
    stack.stop_workers()  # nobody consumes or sweeps: the pass below is the only one
    ids = IntakeStore(make_account()).add(REFUSED_ROWS, "refused")
    age(stack, ids)
    stack.redis.stop()
    try:
        t0 = time.monotonic()
        done = subprocess.run(
            python_module("leadrelay", "relay", "--once"),
            env=env_for_children(stack.env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            timeout=240,
            check=False,
        )
        seconds = round(time.monotonic() - t0, 1)
    finally:
        stack.redis.start()
    lines = done.stdout.decode("utf-8", errors="replace").splitlines()
    refused = events(lines, "task.enqueue_failed")
    stopped = events(lines, "relay.publish_failed")
    claimed = relays_of(stack, ids)
    # With Redis back, the workers' pass sends them when they are due again.
    stack.start_workers(WORKERS, CONCURRENCY, SWEEP)
    seen, _ = wait_final(stack.dsn, ids, 60)
    report(
        "12 the broker refuses a pass's publish",
        {
            "claimed": dict(claimed),
            "publishes_tried": len(refused),
            "unsent_when_stopped": [r.get("unsent") for r in stopped],
            "pass_s": seconds,
            "done_after_redis_back": seen["done"],
        },
    )
    assert done.returncode == 0, lines[-20:]
    assert claimed == Counter({1: REFUSED_ROWS})
    assert len(refused) == 1, f"{len(refused)} publishes tried with the broker gone"
    # These rows, and whatever else of earlier tests was due (their pending mail, say).
    assert len(stopped) == 1
    assert stopped[0]["unsent"] >= REFUSED_ROWS
    assert seen["done"] == REFUSED_ROWS
