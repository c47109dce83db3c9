"""The parts a benchmark runs against: a database of its own, queues of its own, a real API server and
real Celery worker processes, started and stopped by pid, and what each process spent in CPU.

Nothing here is shared with another run: the database is created and dropped, the queue keys carry a
prefix of the run and are deleted at the end, and only processes this module started are stopped.
With ``embedded=True`` the same stack runs on the embedded defaults (a SQLite file and kombu's
filesystem broker) in a folder of the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from sqlalchemy import Engine

from tests.support.processes import _stop, child_env, free_port

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("LEADRELAY_BENCH_PG_ADMIN", "postgresql://root@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LEADRELAY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@contextmanager
def database() -> Iterator[str]:
    """A database of this run, empty; its SQLAlchemy URL. Dropped at the end."""
    name = f"leadrelay_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    finally:
        from models.db import dispose_engine

        dispose_engine()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@contextmanager
def settings_of(env: dict[str, str]) -> Iterator[None]:
    """This process reads the same settings as the API and the worker (and forgets them after)."""
    from leadrelay.settings import get_settings
    from models.db import dispose_engine

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    dispose_engine()
    try:
        yield
    finally:
        dispose_engine()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()


@contextmanager
def redis_keys(prefix: str) -> Iterator[None]:
    """Leave no key of this run's queues behind on the shared Redis."""
    try:
        yield
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


# --- CPU of processes ------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    out = [pid]
    for child in children_of(pid):
        out += tree(child)
    return out


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds the process has used (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def postgres_pids() -> list[int]:
    """Every PostgreSQL server process on the machine (backends, writers): read to account CPU, never signalled."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == "postgres":
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / CLK_TCK, sum(values) / CLK_TCK


@dataclass
class CpuMeter:
    """CPU seconds per part of the stack over a window: ``start()``, run the load, ``stop()``."""

    parts: Mapping[str, Any]  # name -> callable returning the pids of that part now
    _before: dict[str, dict[int, float]] = field(default_factory=dict)
    _machine: tuple[float, float] = (0.0, 0.0)
    _started: float = 0.0

    def _sample(self) -> dict[str, dict[int, float]]:
        return {name: {pid: cpu_seconds(pid) for pid in pids()} for name, pids in self.parts.items()}

    def start(self) -> None:
        self._before = self._sample()
        self._machine = machine_busy_seconds()
        self._started = time.monotonic()

    def stop(self) -> dict[str, Any]:
        after = self._sample()
        busy, total = machine_busy_seconds()
        wall = time.monotonic() - self._started
        used = {
            name: sum(v - self._before[name].get(pid, 0.0) for pid, v in pids.items()) for name, pids in after.items()
        }
        return {
            "wall_seconds": wall,
            "cores": os.cpu_count(),
            # Of the machine's cores over the window: 1.0 means every core was busy all the time.
            "machine_busy": (busy - self._machine[0]) / max(total - self._machine[1], 1e-9),
            "cores_used": {name: seconds / wall for name, seconds in used.items()},
        }


# --- The stack ------------------------------------------------------------------------------------


@dataclass
class Stack:
    """One run's database, queues, API and worker, with the URLs and pids a scenario needs."""

    folder: Path
    url: str  # SQLAlchemy URL
    env: dict[str, str]
    embedded: bool
    base: str = ""
    api: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    _logs: list[Any] = field(default_factory=list)

    def engine(self) -> Engine:
        """This process's pooled engine: while the stack is open the process's settings are the stack's,
        so it is the run's database (a poll every tenth of a second opens no new connection)."""
        from models.db import get_engine

        engine = get_engine()
        assert engine.url.render_as_string(hide_password=False) == self.url, "the stack's settings are not in force"
        return engine

    @property
    def dsn(self) -> str:
        """The psycopg DSN of the database (PostgreSQL only)."""
        return self.url.replace("postgresql+psycopg://", "postgresql://")

    def start_api(self, args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> str:
        """uvicorn on a free port, one process, as ``leadrelay api`` runs it, serving ``bench.app`` (the
        product's app plus the baseline endpoints); ``args`` go to ``bench.app``, ``env`` over the stack's.
        An API this stack started before is stopped first."""
        if self.api is not None:
            _stop(self.api, timeout=30)
        port = free_port()
        out = (self.folder / "api.log").open("ab")
        self._logs.append(out)
        self.api = subprocess.Popen(
            [sys.executable, "-m", "bench.app", "--port", str(port), *args],
            env=child_env({**self.env, **(env or {})}),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if self.api.poll() is not None:
                raise RuntimeError(f"API exited: {(self.folder / 'api.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return self.base
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("API did not start")
            time.sleep(0.1)

    def start_worker(self, processes: int) -> None:
        """One Celery worker node, prefork, ``processes`` pool processes: ``leadrelay worker`` as deployed,
        with the baseline's no-op task imported too."""
        if self.worker is not None:
            _stop(self.worker, timeout=30)
        log = self.folder / f"worker-{processes}.log"
        out = log.open("ab")
        self._logs.append(out)
        self.worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "leadrelay",
                "worker",
                "--concurrency",
                str(processes),
                "--pool",
                "prefork",
                "-n",
                f"bench{processes}-{os.getpid()}@%h",
                "--include",
                "bench.tasks",
            ],
            env=child_env(self.env),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 60
        # Ready when a no-op task posted through the API has run: the pool is up and consuming.
        while len(children_of(self.worker.pid)) < processes or not self._round_trip(deadline):
            if self.worker.poll() is not None:
                raise RuntimeError(f"the worker exited: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)

    def _round_trip(self, deadline: float) -> bool:
        from bench.tasks import ran

        key = f"ready-{uuid.uuid4()}"
        httpx.post(
            f"{self.base}/v1/bench/noop", headers={"Idempotency-Key": key}, json={}, timeout=10
        ).raise_for_status()
        while time.monotonic() < deadline:
            if ran(self.engine(), [key]):
                return True
            time.sleep(0.1)
        return False

    def api_pids(self) -> list[int]:
        return tree(self.api.pid) if self.api else []

    def worker_pids(self) -> list[int]:
        return tree(self.worker.pid) if self.worker else []

    def close(self) -> None:
        for proc in (self.api, self.worker):
            if proc is not None:
                _stop(proc, timeout=30)
        for out in self._logs:
            out.close()


@contextmanager
def stack(folder: Path, *, embedded: bool = False, extra_env: Mapping[str, str] | None = None) -> Iterator[Stack]:
    """A migrated database and, once started, the API and the worker; all of it gone at the end."""
    from models.migrate import upgrade

    with ExitStack() as exits:
        folder.mkdir(parents=True, exist_ok=True)
        if embedded:
            url = f"sqlite:///{folder / 'bench.db'}"
            env = {"LEADRELAY_DATABASE_URL": url, "LEADRELAY_DATA_DIR": str(folder / "data")}
        else:
            url = exits.enter_context(database())
            prefix = f"bench{uuid.uuid4().hex[:8]}."
            exits.enter_context(redis_keys(prefix))
            env = {
                "LEADRELAY_DATABASE_URL": url,
                "LEADRELAY_BROKER_URL": REDIS_URL,
                "LEADRELAY_QUEUE_PREFIX": prefix,
                "LEADRELAY_DATA_DIR": str(folder / "data"),
            }
        env |= {
            "LEADRELAY_ENV": "test",
            "LEADRELAY_LOG_FORMAT": "json",
            # The load comes with one intake key, past the default limit per key (200/s): the limiter still
            # counts every request, so its cost is measured, but never refuses one.
            "LEADRELAY_INTAKE_RATE_PER_KEY": "1000000",
            **(extra_env or {}),
        }
        exits.enter_context(settings_of(env))
        upgrade(url)
        s = Stack(folder=folder, url=url, env=env, embedded=embedded)
        exits.callback(s.close)
        yield s
