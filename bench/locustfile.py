"""The load generator of the benchmarks: locust, open-loop.

Each simulated user posts on a fixed schedule of its own (a period, from a random phase) whatever its
answers take, and there are enough users that each posts at most twice a second: the offered rate is
the rate asked for, spread evenly over time. What a request is comes from
``BENCH_REQUEST`` (``module:function``, called with the request's number and ``BENCH_PARAMS``); every
request is logged to ``BENCH_SENT_LOG`` as ``sent_at,key,status,ms`` so the run can join it with the
database. Started by ``bench.load.run_load``, never by hand.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import random
import time

import gevent
from locust import FastHttpUser, events, task

_module, _function = os.environ["BENCH_REQUEST"].split(":")
MAKE = getattr(importlib.import_module(_module), _function)
PARAMS = json.loads(os.environ.get("BENCH_PARAMS", "{}"))
RATE_PER_USER = float(os.environ["BENCH_RATE_PER_USER"])
_numbers = itertools.count()
_log = open(os.environ["BENCH_SENT_LOG"], "w", buffering=1 << 16)  # noqa: SIM115 - open for the whole run


class Poster(FastHttpUser):
    connection_timeout = 30.0
    network_timeout = 30.0

    def on_start(self) -> None:
        # Each user posts on a fixed schedule of its own, from a random phase: the users start together,
        # and locust's constant_throughput would keep them in step, a burst of all of them each period.
        self.next_at = time.time() + random.random() / RATE_PER_USER
        gevent.sleep(max(0.0, self.next_at - time.time()))

    def wait_time(self) -> float:
        # Open-loop: the next post is due one period after the last one was due, however long the answer
        # took (late ones go at once and the schedule catches up).
        self.next_at += 1 / RATE_PER_USER
        return max(0.0, self.next_at - time.time())

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
