"""Start and stop the real parts a test needs: API servers and Celery workers, by process id."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(overrides: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADRELAY_")}
    env.update(overrides)
    env["PYTHONPATH"] = str(ROOT)
    return env


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


@contextmanager
def api_server(env: Mapping[str, str], log: Path, *, port: int | None = None) -> Iterator[str]:
    """A real uvicorn serving the app on ``port`` (a free one by default); yields its base URL. Unless ``env``
    names another, the base URL is its LEADRELAY_PUBLIC_BASE_URL, so the status URLs it answers lead back to it."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "leadrelay", "api", "--port", str(port)],
            env=child_env({"LEADRELAY_PUBLIC_BASE_URL": base, **env}),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"API exited: {log.read_text()[-2000:]}")
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"API did not start: {log.read_text()[-2000:]}")
                time.sleep(0.1)
            yield base
        finally:
            _stop(proc)


@contextmanager
def celery_workers(
    env: Mapping[str, str], logdir: Path, *, count: int = 2, concurrency: int = 1
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` separate Celery worker processes (prefork, ``concurrency`` children each)."""
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for i in range(count):
            out = (logdir / f"worker-{i}.log").open("wb")
            logs.append(out)
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "leadrelay",
                        "worker",
                        "--concurrency",
                        str(concurrency),
                        "-n",
                        f"w{i}-{os.getpid()}@%h",
                        "--pool",
                        "prefork",
                    ],
                    env=child_env(env),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                )
            )
        yield procs
    finally:
        for p in procs:
            _stop(p, timeout=30)
        for out in logs:
            out.close()


def wait_for(predicate: object, *, timeout: float, interval: float = 0.1, what: str = "condition") -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
