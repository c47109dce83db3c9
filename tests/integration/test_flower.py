"""``leadrelay flower`` on this run's Redis and queue prefix: it sees the two workers and the intakes'
tasks through events, answers only with its basic auth, and refuses every control call (read-only)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.client import Brokerage
from tests.support.processes import ROOT, _stop, child_env, free_port, wait_for

pytestmark = pytest.mark.integration

AUTH = ("ops", "flower-test-pw")


def names_of_this_run() -> tuple[str, str]:
    """The node names ``celery_workers`` gives (``w<i>-<pid of this test process>@host``), up to the host."""
    return f"w0-{os.getpid()}@", f"w1-{os.getpid()}@"


@pytest.fixture(scope="module")
def flower(
    pipeline_env: dict[str, str], workers: Path, api: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    """Flower in its own process, on a free port, with basic auth; a client that sends the credentials."""
    port = free_port()
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "leadrelay", "flower", "--port", str(port), "--basic-auth", ":".join(AUTH)],
            env=child_env(pipeline_env),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=AUTH, timeout=10)
        try:

            def answers() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"flower exited: {log.read_text()[-2000:]}")
                try:
                    # /healthcheck is not behind the auth.
                    return client.get("/healthcheck", auth=None, timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(answers, timeout=20, what="flower")
            yield client
        finally:
            client.close()
            _stop(proc)


def alive_workers(flower: httpx.Client) -> dict[str, bool]:
    # ?status=1 answers from the events Flower has received (heartbeats), not from a remote inspect.
    r = flower.get("/api/workers", params={"status": "1"})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_flower_sees_both_workers_by_their_events_on_the_prefixed_broker(
    flower: httpx.Client, pipeline_env: dict[str, str]
) -> None:
    prefixes = names_of_this_run()
    wait_for(
        lambda: sum(alive for name, alive in alive_workers(flower).items() if name.startswith(prefixes)) == 2,
        timeout=10,
        what="both workers alive in flower",
    )
    # A remote inspect (the pidbox) reaches them too, with their queues.
    r = flower.get("/api/workers", params={"refresh": "1"})
    assert r.status_code == 200, r.text
    queue = f"{pipeline_env['LEADRELAY_QUEUE_PREFIX']}registrations"
    ours = {name: info for name, info in r.json().items() if name.startswith(prefixes)}
    assert len(ours) == 2
    for info in ours.values():
        assert queue in {q["name"] for q in info["active_queues"]}
    if pipeline_env["LEADRELAY_BROKER_URL"].startswith("redis://"):
        # On Redis the key prefix (global_keyprefix) isolates the run, events and pidbox included: workers
        # of other runs on the same Redis are not seen. Flower counts the prefixed queues' messages itself.
        assert all(name.startswith(prefixes) for name in alive_workers(flower))
        assert set(r.json()) == set(ours)
        lengths = flower.get("/api/queues/length")
        assert lengths.status_code == 200, lengths.text
        assert queue in {q["name"] for q in lengths.json()["active_queues"]}


def test_flower_lists_the_intakes_tasks_with_their_ids_and_workers(flower: httpx.Client, acme: Brokerage) -> None:
    prefixes = names_of_this_run()
    wait_for(
        lambda: sum(alive for name, alive in alive_workers(flower).items() if name.startswith(prefixes)) == 2,
        timeout=10,
        what="both workers alive in flower",
    )
    ids = []
    # One after the other: signups that arrive while their account's task is still queued share it (they
    # are in its batch, with no task of their own for flower to list), so each waits for the one before.
    for n in range(3):
        r = acme.register("co", f"flower{n}@example.com")
        assert r.status_code == 202, r.text
        ids.append(r.json()["intake_id"])
        assert acme.wait_done(ids[-1])["status"] == "done"

    seen: dict[str, dict[str, Any]] = {}

    def all_succeeded() -> bool:
        r = flower.get("/api/tasks", params={"taskname": "intake.process", "limit": "1000"})
        assert r.status_code == 200, r.text
        for uuid_, task in r.json().items():
            args = ast.literal_eval(task["args"]) if task.get("args") else []
            if args and args[0] in ids and task["state"] == "SUCCESS":
                seen[args[0]] = {"uuid": uuid_, **task}
        return set(seen) == set(ids)

    wait_for(all_succeeded, timeout=10, what="flower to list the intakes' tasks")
    for task in seen.values():
        assert task["name"] == "intake.process"
        assert task["worker"].startswith(prefixes)

    # Read-only: no control call goes through, whatever it names.
    task_id = next(iter(seen.values()))["uuid"]
    worker = next(name for name in alive_workers(flower) if name.startswith(prefixes))
    for path in (
        f"/api/task/revoke/{task_id}",
        "/api/task/async-apply/intake.process",
        f"/api/worker/shutdown/{worker}",
        f"/api/worker/pool/restart/{worker}",
    ):
        r = flower.post(path, json={})
        assert r.status_code == 403, (path, r.status_code, r.text)
        assert "Read only mode is enabled" in r.text
    assert alive_workers(flower)[worker] is True


def test_flower_answers_401_without_its_credentials(flower: httpx.Client) -> None:
    for auth in (None, ("ops", "wrong"), ("someone", AUTH[1])):
        assert flower.get("/api/workers", auth=auth).status_code == 401, auth
        assert flower.get("/api/tasks", auth=auth).status_code == 401, auth
        # The web UI too, which asks the browser for the credentials (the API's 401 does not).
        r = flower.get("/workers", auth=auth)
        assert r.status_code == 401, auth
        assert r.headers["WWW-Authenticate"].startswith("Basic")
