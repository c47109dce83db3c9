"""With ``LEADRELAY_LOG_FORMAT=json`` a worker's log is one JSON object a line through its whole life: its
start, tasks that succeed, retry and die, a pool child lost, and its warm shutdown. A worker of this test's
own (its own queue prefix and log), fed through the broker, a pool child SIGKILLed, then SIGTERM."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from tests.chaos.conftest import CONCURRENCY, make_account
from tests.support.chaos import (
    Lane,
    Report,
    Stack,
    Worker,
    env_for_children,
    feed,
    kill_own,
    non_json_lines,
    private_celery,
    python_module,
    start_time,
)

pytestmark = pytest.mark.chaos


def kind_of(line: str) -> str:
    if "Warning" in line or line.startswith(("  ", "absolutely", "Please specify", "User information")):
        return "python warning"
    if "shutdown" in line:
        return "shutdown message"
    if "exited with" in line:
        return "pool child lost"
    return "startup banner"


def test_a_workers_whole_life_logs_one_json_object_per_line(stack: Stack, report: Report) -> None:
    t0 = time.monotonic()
    prefix = f"{stack.env['LEADRELAY_QUEUE_PREFIX']}json."
    argv = python_module("leadrelay", "worker", "--concurrency", str(CONCURRENCY), "-n", f"json-{os.getpid()}@%h")
    env = env_for_children({**stack.env, "LEADRELAY_QUEUE_PREFIX": prefix})
    worker = Worker("worker-json", argv, env, stack.folder / "worker-json.log")
    app = private_celery(prefix)
    try:
        worker.start()
        stack.wait_ready(worker)
        lane = Lane(app, make_account(), prefix)
        feed(stack, [lane], 20, poison=[1])
        child = random.choice(worker.wait_pool(CONCURRENCY))
        assert kill_own(child, start_time(child), signal.SIGKILL)
        worker.wait_pool(CONCURRENCY)
        feed(stack, [lane], 10)
    finally:
        app.close()
        worker.close()  # SIGTERM: a warm shutdown
    # Celery writes its warm-shutdown notice with safe_say() straight to stdout (celery/apps/worker.py), not
    # through logging, so no handler can shape it. That one line is allowed; every log record must be JSON.
    bad = [line for line in non_json_lines(worker.log) if line.strip() != "worker: Warm shutdown (MainProcess)"]
    kinds: dict[str, int] = {}
    for line in bad:
        kinds[kind_of(line)] = kinds.get(kind_of(line), 0) + 1
    f = {
        "log_lines": len(worker.log.read_text(errors="replace").splitlines()),
        "non_json_lines": len(bad),
        "non_json_by_kind": kinds,
        "examples": [line[:100] for line in bad[:4]] + [line[:100] for line in bad if "shutdown" in line][:1],
        "duration_s": round(time.monotonic() - t0, 1),
    }
    report("7b worker logs are JSON", f)
    assert not bad, f"{len(bad)} lines of the worker's log are not JSON: {kinds}"
