"""The load generator of the benchmarks: locust, open-loop.

Each simulated user posts at a constant rate (``constant_throughput``) whatever its last answer took, and
there are enough users that each posts at most twice a second: the offered rate is the rate asked for
unless an answer takes longer than a user's whole period. What a request is comes from
``BENCH_REQUEST`` (``module:function``, called with the request's number and ``BENCH_PARAMS``); every
request is logged to ``BENCH_SENT_LOG`` as ``sent_at,key,status,ms`` so the run can join it with the
database. Started by ``bench.load.run_load``, never by hand.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import time

from locust import FastHttpUser, constant_throughput, events, task

_module, _function = os.environ["BENCH_REQUEST"].split(":")
MAKE = getattr(importlib.import_module(_module), _function)
PARAMS = json.loads(os.environ.get("BENCH_PARAMS", "{}"))
_numbers = itertools.count()
_log = open(os.environ["BENCH_SENT_LOG"], "w", buffering=1 << 16)  # noqa: SIM115 - open for the whole run


class Poster(FastHttpUser):
    wait_time = constant_throughput(float(os.environ["BENCH_RATE_PER_USER"]))
    connection_timeout = 30.0
    network_timeout = 30.0

    @task
    def post(self) -> None:
        request = MAKE(next(_numbers), PARAMS)
        sent = time.time()
        with self.client.post(
            request.path, data=request.body, headers=request.headers, name=request.name, catch_response=True
        ) as r:
            if r.status_code in (200, 202):
                r.success()
            else:
                r.failure(f"{r.status_code}")
        _log.write(f"{sent:.6f},{request.key},{r.status_code},{(time.time() - sent) * 1000:.2f}\n")


@events.quitting.add_listener
def _flush(**_: object) -> None:
    _log.flush()
