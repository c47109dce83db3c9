"""A poison intake (its stored payload makes ``intakes.process_intake`` raise, every time) retries
``LEADRELAY_TASK_MAX_RETRIES`` times (2 in this suite, 0.3 s apart and doubling), then ends ``dead`` with
the error as its reason and an ``intake.dead`` record in the worker's log, while the other signups flow:
all of them done, one lead each, round robin within one.

One round fed through the broker on the suite's worker (intakes stored as the API stores them, their ids
published as the API publishes them, a short queue kept so the worker is always busy and a poison's
retries, published to the queue's tail, run while the others are still being processed). How much the
poison slows the others is a figure of ``make bench`` (scenario 6, ``bench/poison.py``), not of this test."""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict

import pytest

from tests.chaos.conftest import MAX_RETRIES
from tests.support.chaos import (
    RR_AGENTS,
    Lane,
    Report,
    Stack,
    events,
    feed,
    log_time,
    make_account,
    outcome,
    private_celery,
    query,
)

pytestmark = pytest.mark.chaos

NORMAL, POISON = 100, 4


def test_poison_intakes_end_dead_after_their_retries_while_the_others_are_done(stack: Stack, report: Report) -> None:
    t0 = time.monotonic()
    org = make_account()
    app = private_celery()
    mark = stack.mark()
    try:
        (fed,) = feed(stack, [Lane(app, org, stack.env["LEADRELAY_QUEUE_PREFIX"])], NORMAL, poison=[POISON])
    finally:
        app.close()
    lines = stack.lines_since(mark, "worker")
    retried: dict[str, set[int]] = defaultdict(set)
    retries = [r for r in events(lines, "intake.retry") if r.get("intake_id") in fed.poison]
    for r in retries:
        retried[str(r["intake_id"])].add(int(r["retries"]))
    dead_logged = {r.get("intake_id") for r in events(lines, "intake.dead")} & set(fed.poison)
    flowing = (fed.started, fed.started + dt.timedelta(seconds=fed.seconds))
    inside = sum(flowing[0] <= log_time(r) <= flowing[1] for r in retries)
    rows = query(stack.dsn, "SELECT status::text, reason FROM intakes WHERE id = ANY(%s::uuid[])", (fed.poison,))
    o = outcome(stack.dsn, org["account"], fed.normal, RR_AGENTS)
    f = {
        "normal": len(fed.normal),
        "poison_intakes": len(fed.poison),
        "poison_dead": sum(status == "dead" for status, _ in rows),
        "poison_retries": len(retries),
        "poison_retries_while_others_flowed": inside,
        "poison_dead_logged": len(dead_logged),
        "dead_reason": rows[0][1] if rows else None,
        "normal_done": o.intakes["done"],
        "leads": o.leads,
        "duplicates": o.duplicates,
        "rr_spread": o.rr_spread,
        # Informative only: the throughput figure, against a control, is make bench's.
        "normal_per_s": fed.rate,
        "duration_s": round(time.monotonic() - t0, 1),
    }
    report("6 poison intake", f)
    assert len(rows) == POISON
    assert all(status == "dead" for status, _ in rows), rows
    assert all(reason and reason.startswith("ValueError") for _, reason in rows), [
        r for r in rows if not str(r[1]).startswith("ValueError")
    ]
    assert dead_logged == set(fed.poison)
    short = {i: sorted(retried[i]) for i in fed.poison if not set(range(MAX_RETRIES)) <= retried[i]}
    assert not short, f"poison intakes dead before their {MAX_RETRIES} retries: {short}"
    # At least one retry while the others were processed: the poison was tried alone beside them, not
    # holding its batch. Not a share of them: the faster the others go, the fewer of the poison's retries
    # (0.3 s apart, doubling) fall inside their window (7 of 20 in a run at 208 a second).
    assert inside >= 1, "the poison retried while the others were being processed"
    assert f["normal_done"] == f["leads"] == NORMAL
    assert f["duplicates"] == 0
    assert f["rr_spread"] <= 1, o.agents
