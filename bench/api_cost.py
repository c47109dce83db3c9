"""What one request costs the API process in CPU: a registration (``POST /v1/intake/registrations``, the
body and headers the registration scenarios send) against the no-op baseline on the same server
(``POST /v1/bench/noop``: a Celery task published to the same broker and queue, then 202).

The API is ``bench.app`` under uvicorn as ``leadrelay api`` runs it, on a database and a queue prefix of
its own (``bench.stack``). No worker runs: the tasks pile up in the run's queue, deleted at the end.
Requests go over a few keep-alive connections, one after another on each, as fast as the API answers;
the figure is the API process's user + system CPU (``/proc``) over the requests, divided by their count.
Registrations and no-ops alternate in blocks, so a change in what else the machine does falls on both.

Each variant is an API process of its own, all of them up at once and measured in turn: ``deployed`` as
``leadrelay api`` runs (uvloop, h11), ``asyncio`` on Python's own event loop, ``httptools`` with that
HTTP parser instead of h11, ``no-rate-limit`` with ``LEADRELAY_INTAKE_RATE_PER_KEY=0``. The difference between two
variants of one run is what that part costs.

    python -m bench.api_cost                            # 3,000 of each per variant, every variant
    python -m bench.api_cost --variants deployed --profile   # then py-spy: where a registration's CPU goes
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.load import Request
from bench.stack import Stack, cpu_seconds, tree
from tests.support.processes import _stop

WARMUP = 300  # requests of each kind before measuring: imports, caches, pools
ROUNDS = 3  # blocks of each kind, alternating

VARIANTS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "deployed": ((), {}),
    "asyncio": (("--loop", "asyncio"), {}),
    "httptools": (("--http", "httptools"), {}),
    "no-rate-limit": ((), {"LEADRELAY_INTAKE_RATE_PER_KEY": "0"}),
}


def post_all(base: str, requests: Sequence[Request], connections: int) -> int:
    """POST every request, ``connections`` keep-alive connections at once; how many were not answered 202."""
    url = urllib.parse.urlsplit(base)
    chunks = [requests[i::connections] for i in range(connections)]

    def run(chunk: Sequence[Request]) -> int:
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
        refused = 0
        try:
            for r in chunk:
                conn.request("POST", r.path, body=r.body, headers=r.headers)
                answer = conn.getresponse()
                answer.read()
                refused += answer.status != 202
        finally:
            conn.close()
        return refused

    with ThreadPoolExecutor(connections) as pool:
        return sum(pool.map(run, chunks))


@dataclass
class Api:
    """One variant's API process, started by the stack and then kept apart from it, so several run at once."""

    name: str
    proc: subprocess.Popen[bytes]
    base: str

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in tree(self.proc.pid))


def start(stack: Stack, name: str) -> Api:
    args, env = VARIANTS[name]
    base = stack.start_api(args, env)
    assert stack.api is not None
    api = Api(name, stack.api, base)
    stack.api = None  # ours to stop: the next start_api must not stop it
    return api


def measure(apis: Sequence[Api], *, n: int, connections: int) -> dict[str, Any]:
    """Every variant's CPU per request of each kind. The variants' blocks alternate with the kinds', so
    whatever else the machine does falls on all of them alike."""
    from bench.workload import noop, registration

    kinds: dict[str, Callable[[int, Mapping[str, Any]], Request]] = {"registration": registration, "noop": noop}
    params = {"suffix": "bench", "tag": uuid.uuid4().hex[:8], "preloaded": 0, "repeat_every": 0}
    counter = iter(range(10**9))

    def batch(kind: str, size: int) -> list[Request]:
        return [kinds[kind](next(counter), params) for _ in range(size)]

    for api in apis:
        post_all(api.base, batch("registration", WARMUP) + batch("noop", WARMUP), connections)
    cpu = {(a.name, k): 0.0 for a in apis for k in kinds}
    wall = dict.fromkeys(cpu, 0.0)
    refused = dict.fromkeys(cpu, 0)
    per_round = max(1, n // ROUNDS)
    for _ in range(ROUNDS):
        for api in apis:
            for kind in kinds:
                requests = batch(kind, per_round)
                before, started = api.cpu(), time.monotonic()
                refused[api.name, kind] += post_all(api.base, requests, connections)
                wall[api.name, kind] += time.monotonic() - started
                cpu[api.name, kind] += api.cpu() - before
    count = per_round * ROUNDS
    out: dict[str, Any] = {}
    for api in apis:
        ms = {k: 1000 * cpu[api.name, k] / count for k in kinds}
        out[api.name] = {
            "requests": count,
            "ms_cpu": ms,
            "ratio": ms["registration"] / ms["noop"],
            "per_s": {k: count / wall[api.name, k] for k in kinds},
            "not_202": {k: refused[api.name, k] for k in kinds},
        }
    return out


def profile_registrations(api: Api, requests: Sequence[Request], connections: int, folder: Path) -> dict[str, Any]:
    """py-spy on the API (the thread holding the GIL: where its CPU goes) while it takes ``requests``."""
    from bench.registrations import summarise

    path = folder / f"profile-{api.name}.txt"
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(api.proc.pid),
            "--gil",
            "--rate",
            "200",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)  # attached
    post_all(api.base, requests, connections)
    spy.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
    spy.wait(timeout=60)
    return summarise(path, top=25) if path.exists() else {}


def main() -> None:
    from bench.registrations import apply_org
    from bench.stack import stack

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="of each kind, per variant")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"a comma-separated subset of {list(VARIANTS)}")
    parser.add_argument(
        "--profile", action="store_true", help="then py-spy the first variant's API over one more block"
    )
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    names = [v for v in args.variants.split(",") if v]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {sorted(unknown)}")
    folder = Path(tempfile.mkdtemp(prefix="leadrelay-api-cost-"))
    with stack(folder) as s:
        apply_org(s, "bench")
        apis = [start(s, name) for name in names]
        try:
            results = measure(apis, n=args.requests, connections=args.connections)
            for name, r in results.items():
                print(
                    f"{name:>14}: registration {r['ms_cpu']['registration']:.2f} ms CPU, "
                    f"no-op {r['ms_cpu']['noop']:.2f} ms, ratio {r['ratio']:.2f}x "
                    f"({r['per_s']['registration']:.0f}/s and {r['per_s']['noop']:.0f}/s; "
                    f"not 202: {r['not_202']['registration']} and {r['not_202']['noop']})",
                    flush=True,
                )
            if args.profile:
                from bench.workload import registration

                params = {"suffix": "bench", "tag": uuid.uuid4().hex[:8], "preloaded": 0, "repeat_every": 0}
                requests = [registration(i, params) for i in range(args.requests)]
                results[apis[0].name]["profile"] = profile_registrations(apis[0], requests, args.connections, folder)
                print(json.dumps(results[apis[0].name]["profile"], indent=2), flush=True)
        finally:
            for api in apis:
                _stop(api.proc, timeout=30)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"logs in {folder}")


if __name__ == "__main__":
    main()
