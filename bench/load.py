"""Run locust (``bench/locustfile.py``) open-loop at a rate for a while, and read back what it sent."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stack import ROOT, cpu_seconds
from tests.support.processes import child_env


@dataclass(frozen=True)
class Request:
    """One request of a workload: locust posts ``body`` to ``path``; ``key`` finds it in the database."""

    name: str
    path: str
    headers: dict[str, str]
    body: bytes
    key: str


@dataclass(frozen=True)
class Sent:
    at: float  # epoch seconds, when the request was sent
    key: str
    status: int
    ms: float  # the answer's time


@dataclass
class LoadRun:
    offered: float  # requests per second asked for
    seconds: float  # how long the load ran
    started: float  # epoch seconds
    sent: list[Sent]
    locust_cores: float  # the load generator's own CPU, in cores, over the run

    @property
    def accepted(self) -> list[Sent]:
        return [s for s in self.sent if s.status in (200, 202)]

    @property
    def sent_rate(self) -> float:
        return len(self.sent) / self.seconds

    def summary(self) -> dict[str, Any]:
        ms = sorted(s.ms for s in self.accepted)
        return {
            "offered_per_s": self.offered,
            "sent_per_s": self.sent_rate,
            "sent": len(self.sent),
            "accepted": len(self.accepted),
            "refused": {str(code): n for code, n in _count(s.status for s in self.sent if s.status not in (200, 202))},
            "http_ms": {"p50": quantile(ms, 0.5), "p99": quantile(ms, 0.99)},
            "locust_cores": self.locust_cores,
        }


def _count(values: Any) -> list[tuple[int, int]]:
    out: dict[int, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return sorted(out.items())


def quantile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile of sorted ``values`` (nearest rank), None when there are none."""
    if not values:
        return None
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def run_load(
    base: str,
    request: str,
    params: Mapping[str, Any],
    *,
    rate: float,
    seconds: float,
    folder: Path,
    name: str,
) -> LoadRun:
    """``rate`` requests a second of ``request`` (``module:function``) for ``seconds``, open-loop."""
    users = max(20, math.ceil(rate / 2))
    log = folder / f"sent-{name}.csv"
    env = child_env(
        {
            "BENCH_REQUEST": request,
            "BENCH_PARAMS": json.dumps(dict(params)),
            "BENCH_RATE_PER_USER": str(rate / users),
            "BENCH_SENT_LOG": str(log),
        }
    )
    argv = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(ROOT / "bench" / "locustfile.py"),
        "--headless",
        "--host",
        base,
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        f"{seconds:.0f}s",
        "--stop-timeout",
        "10",
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--exit-code-on-error",
        "0",
    ]
    with (folder / f"locust-{name}.log").open("wb") as out:
        started = time.time()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        cpu = 0.0
        while proc.poll() is None:
            cpu = max(cpu, cpu_seconds(proc.pid))
            time.sleep(0.5)
        elapsed = time.time() - started
    if proc.returncode != 0:
        raise RuntimeError(f"locust exited {proc.returncode}: {(folder / f'locust-{name}.log').read_text()[-2000:]}")
    sent = []
    for line in log.read_text().splitlines():
        at, key, status, ms = line.split(",")
        sent.append(Sent(float(at), key, int(status), float(ms)))
    return LoadRun(offered=rate, seconds=seconds, started=started, sent=sent, locust_cores=cpu / elapsed)
