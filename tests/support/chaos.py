"""The chaos suite's own parts (tests/chaos): a Redis server, a PostgreSQL database, an API server,
Celery workers and a relay, all started here, killed and restarted here by process id, and nothing
else touched; a load generator that retries what was not accepted; the figures each test reports.

Nothing here kills by name: every signal goes to a pid this module started (or a pool child of one,
found by its parent pid in /proc), and ``pg_terminate_backend`` only ever names this run's database."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psycopg
import redis

from tests.support.processes import ROOT, child_env, free_port, wait_for

PG_ADMIN = os.environ.get("LEADRELAY_TEST_PG_ADMIN", "postgresql://root@127.0.0.1:5432/postgres")
FINAL_STATUSES = ("done", "rejected", "dead")


# --- processes -----------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def children_of(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc/<n>/stat: this kernel has no /proc/<pid>/task/*/children)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.append(int(entry))
    return sorted(found)


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid, it names one process (no pid reuse)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def kill_own(pid: int, started: int | None, sig: signal.Signals = signal.SIGKILL) -> bool:
    """Signal ``pid`` only if it is still the very process we noted (same start time); True if signalled."""
    if started is None or start_time(pid) != started:
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


@dataclass(frozen=True)
class Exit:
    """A process of the stack that ended while it was wanted: killed by the test (``expected``) or not."""

    name: str
    at: dt.datetime
    code: int | None
    expected: bool
    last_error: str | None


class Service:
    """One long-running child process of this test run, its output appended to one log file across restarts.
    ``wanted`` says whether it should be running: the stack's supervisor starts a wanted one that ended again,
    as the deployment's restart policy does (docker-compose.yml: ``restart: unless-stopped``)."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, list(argv), dict(env), log
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self.starts = 0
        self.log_offset = 0
        self.started_at = dt.datetime.now(dt.UTC)
        self.wanted = False
        self.exits: list[Exit] = []
        self._expected = 0
        self.lock = threading.RLock()
        # In a process group of its own (a new session), so the test can SIGKILL it with its children at once.
        self.own_group = False

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        with self.lock:
            assert not self.running(), f"{self.name} is running"
            if self._out is None:
                self._out = self.log.open("ab")
            self._out.flush()
            self.log_offset = self.log.stat().st_size
            self.started_at = dt.datetime.now(dt.UTC)
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=self._out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=self.own_group,
            )
            self.starts += 1
            self.wanted = True

    def send(self, sig: signal.Signals) -> None:
        with self.lock:
            if self.running():
                assert self.proc is not None
                self.proc.send_signal(sig)

    def crash(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Kill it with ``sig`` (and reap it), as a fault: it stays wanted, so the supervisor starts it again."""
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                self._expected += 1
                self.proc.send_signal(sig)
                self.proc.wait(timeout=30)

    def stop(self, timeout: float = 20) -> None:
        """No longer wanted: SIGTERM, then SIGKILL after ``timeout``."""
        with self.lock:
            self.wanted = False
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=30)

    def supervise(self) -> Exit | None:
        """Start it again if it ended while wanted; what ended."""
        with self.lock:
            if not self.wanted or self.proc is None or self.proc.poll() is None:
                return None
            expected = self._expected > 0
            self._expected = max(0, self._expected - 1)
            ended = Exit(self.name, dt.datetime.now(dt.UTC), self.proc.returncode, expected, self.last_error())
            self.exits.append(ended)
            self.start()
            return ended

    def last_error(self) -> str | None:
        """The last critical record its log has since its last start (else the last error)."""
        with self.log.open("rb") as f:
            f.seek(self.log_offset)
            lines = f.read().decode("utf-8", errors="replace").splitlines()
        recs = records(lines)
        bad = [r for r in recs if r.get("level") == "critical"] or [r for r in recs if r.get("level") == "error"]
        return str(bad[-1].get("event"))[:300] if bad else None

    def close(self) -> None:
        self.stop()
        if self._out is not None:
            self._out.close()
            self._out = None


class RedisServer(Service):
    """A redis-server of this run on its own port and directory, persistence off (as Celery's Redis transport warns
    against, so a restart loses every queued message)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ]
        super().__init__("redis", argv, dict(os.environ), folder / "redis.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def ping(self) -> bool:
        try:
            with self.client() as c:
                return bool(c.ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        super().start()
        wait_for(self.ping, timeout=15, interval=0.02, what=f"redis-server on port {self.port}")


class Worker(Service):
    """A Celery worker (``leadrelay worker``, prefork): its main process and its pool children, by pid."""

    def pool(self) -> list[int]:
        return children_of(self.pid) if self.running() else []

    def wait_pool(self, size: int, timeout: float = 30) -> list[int]:
        wait_for(lambda: len(self.pool()) >= size, timeout=timeout, interval=0.05, what=f"{self.name}'s pool")
        return self.pool()

    def sigkill_main(self) -> list[tuple[int, int | None]]:
        """SIGKILL the main process only (the supervisor starts it again); its pool children (noted first,
        with their start times) are left to notice. Returns them, for :meth:`reap_orphans`."""
        noted = [(pid, start_time(pid)) for pid in self.pool()]
        self.crash(signal.SIGKILL)
        return noted

    def sigkill_group(self) -> list[tuple[int, int | None]]:
        """SIGKILL its whole process group, the main process and its pool children at once, as a host or
        container dying does (the supervisor starts it again). Only for a worker started in a group of its
        own (``own_group``): the group's id is the main process's pid, a child of this test not yet reaped.
        Returns the pool children as they were."""
        assert self.own_group, f"{self.name} shares the test's process group"
        with self.lock:
            noted = [(pid, start_time(pid)) for pid in self.pool()]
            if self.proc is not None and self.proc.poll() is None:
                assert os.getpgid(self.proc.pid) == self.proc.pid
                self._expected += 1
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        return noted

    @staticmethod
    def reap_orphans(noted: Sequence[tuple[int, int | None]], grace: float) -> int:
        """Pool children of a killed main process still alive after ``grace`` seconds are SIGKILLed (they are
        this run's own processes, identified by pid and start time); how many had to be."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(pid) for pid, _ in noted):
            time.sleep(0.05)
        return sum(kill_own(pid, started) for pid, started in noted if alive(pid))


# --- the database ---------------------------------------------------------------------------------


@contextlib.contextmanager
def own_database() -> Iterator[tuple[str, str]]:
    """A database of this run, migrated with Alembic, dropped at the end (after terminating its own
    connections only). Yields (SQLAlchemy URL, psycopg URL)."""
    from models.migrate import upgrade

    name = f"leadrelay_chaos_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    try:
        url = base.replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
        upgrade(url)
        yield url, f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            terminate_connections(conn, name)
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def terminate_connections(admin: psycopg.Connection[Any], database: str) -> int:
    """``pg_terminate_backend`` on every connection to ``database`` (this run's own), but the caller's."""
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (database,),
    ).fetchall()
    return sum(1 for (ok,) in rows if ok)


# --- load -----------------------------------------------------------------------------------------

Call = Callable[[httpx.Client], httpx.Response]


@dataclass
class Load:
    """What the clients saw. ``accepted`` maps each request's key to its intake id (or the answer's body
    when the endpoint names no intake); a request is retried on 5xx, 429 and transport errors (with the same
    Idempotency-Key), never on another 4xx."""

    posted: int = 0
    accepted: dict[str, str] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    answers: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    server_errors: int = 0
    transport_errors: int = 0
    seconds: float = 0.0
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @property
    def unaccepted(self) -> int:
        return self.posted - len(self.accepted) - len(self.refused)


class LoadRunner:
    """Posts ``calls`` from ``concurrency`` threads in the background, open loop: one request every
    ``1 / rate`` seconds whatever the answers (a free thread takes the next), as fast as threads allow
    when ``rate`` is 0. ``sent`` says how far it got, so a test can break things mid-load.

    With ``backlog`` (accepted intakes not yet final) and ``max_backlog``, posting pauses while the
    backlog is above it: the suite's relay resends what waits longer than a few seconds, so a queue kept
    longer than that measures the relay's resends, not the fault (``throttled_s`` says how long it paused)."""

    def __init__(
        self,
        base: str,
        calls: Sequence[tuple[str, Call]],
        *,
        concurrency: int = 16,
        rate: float = 0.0,
        max_attempts: int = 60,
        intake_id: Callable[[httpx.Response], str] | None = None,
        backlog: Callable[[], int] | None = None,
        max_backlog: int = 0,
    ) -> None:
        self.base, self.calls, self.concurrency, self.rate = base, list(calls), concurrency, rate
        self.max_attempts = max_attempts
        self.intake_id = intake_id or (lambda r: str(r.json()["intake_id"]))
        self.backlog, self.max_backlog = backlog, max_backlog
        self.load = Load(posted=len(self.calls))
        self._lock = threading.Lock()
        self._next = 0
        self._next_at = 0.0
        self._paused = threading.Event()
        self._finished = threading.Event()
        self.throttled = 0.0
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="chaos-load", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> LoadRunner:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Take no more calls (the ones in flight finish)."""
        with self._lock:
            self.load.posted = min(self.load.posted, self._next)
            self._next = len(self.calls)

    def __enter__(self) -> LoadRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self.stop()
            self._thread.join(60)

    def wait_sent(self, n: int, timeout: float = 600) -> None:
        wait_for(
            lambda: self.sent >= n or not self._thread.is_alive(), timeout=timeout, interval=0.01, what=f"{n} sent"
        )

    def join(self, timeout: float = 240) -> Load:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the load generator did not finish"
        if self.error is not None:
            raise self.error
        return self.load

    def _run(self) -> None:
        t0 = time.monotonic()
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        valve = threading.Thread(target=self._valve, name="chaos-valve", daemon=True)
        try:
            if self.backlog is not None and self.max_backlog > 0:
                valve.start()
            with (
                httpx.Client(base_url=self.base, timeout=30, limits=limits) as client,
                ThreadPoolExecutor(self.concurrency, thread_name_prefix="chaos-post") as pool,
            ):
                for future in [pool.submit(self._worker, client) for _ in range(self.concurrency)]:
                    future.result()
        except BaseException as exc:  # surfaced by join()
            self.error = exc
        finally:
            self._finished.set()
        self.load.seconds = time.monotonic() - t0

    def _valve(self) -> None:
        assert self.backlog is not None
        last = time.monotonic()
        while not self._finished.is_set():
            try:
                over = self.backlog() > self.max_backlog
            except psycopg.Error:  # the test terminates the database's connections: ask again
                over = False
            now = time.monotonic()
            if self._paused.is_set():
                self.throttled += now - last
            last = now
            if over:
                self._paused.set()
            else:
                self._paused.clear()
            time.sleep(0.2)

    def _take(self) -> tuple[int, float] | None:
        while self._paused.is_set() and not self._finished.is_set():
            time.sleep(0.05)
        with self._lock:
            if self._next >= len(self.calls):
                return None
            i = self._next
            self._next += 1
            at = 0.0
            if self.rate > 0:
                at = max(self._next_at, time.monotonic())
                self._next_at = at + 1 / self.rate
            return i, at

    def _worker(self, client: httpx.Client) -> None:
        while (taken := self._take()) is not None:
            i, at = taken
            delay = at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            key, call = self.calls[i]
            self._send(client, key, call)
            with self._lock:
                self.sent += 1

    def _send(self, client: httpx.Client, key: str, call: Call) -> None:
        for attempt in range(self.max_attempts):
            if attempt:
                with self._lock:
                    self.load.retries += 1
            try:
                r = call(client)
            except httpx.TransportError as exc:
                with self._lock:
                    self.load.transport_errors += 1
                    self.load.answers[type(exc).__name__] += 1
                time.sleep(min(0.1 * 2**attempt, 1.0))
                continue
            with self._lock:
                self.load.answers[str(r.status_code)] += 1
                if r.status_code >= 500:
                    self.load.server_errors += 1
            if r.is_success:
                with self._lock:
                    self.load.accepted[key] = self.intake_id(r)
                return
            if r.status_code >= 500 or r.status_code == 429:
                wait = float(r.headers.get("Retry-After", 0) or 0)
                time.sleep(max(wait, min(0.1 * 2**attempt, 1.0)))
                continue
            with self._lock:
                self.load.refused[key] = r.status_code
            return


def backlog_of(dsn: str, account_slug: str) -> Callable[[], int]:
    """How many of the account's intakes are not final yet (accepted, processing)."""
    acct = account_id(dsn, account_slug)

    def count() -> int:
        rows = query(
            dsn, "SELECT count(*) FROM intakes WHERE account_id = %s AND status IN ('accepted', 'processing')", (acct,)
        )
        return int(rows[0][0])

    return count


# --- figures ----------------------------------------------------------------------------------------


def query(dsn: str, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
    """One query on a fresh connection (a test's own connections die with the others when it terminates them)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        return conn.execute(sql, params).fetchall()


def account_id(dsn: str, slug: str) -> int:
    return int(query(dsn, "SELECT id FROM accounts WHERE slug = %s", (slug,))[0][0])


def statuses(dsn: str, intake_ids: Sequence[str]) -> Counter[str]:
    if not intake_ids:
        return Counter()
    rows = query(
        dsn, "SELECT status::text, count(*) FROM intakes WHERE id = ANY(%s::uuid[]) GROUP BY 1", (list(intake_ids),)
    )
    return Counter({status: int(n) for status, n in rows})


def wait_final(dsn: str, intake_ids: Sequence[str], timeout: float) -> tuple[Counter[str], float]:
    """Wait until every intake is done, rejected or dead; their statuses then (or at the timeout), and the seconds waited."""
    t0 = time.monotonic()
    seen: Counter[str] = Counter()
    while True:
        seen = statuses(dsn, intake_ids)
        if sum(seen[s] for s in FINAL_STATUSES) >= len(intake_ids) or time.monotonic() - t0 > timeout:
            return seen, time.monotonic() - t0
        time.sleep(0.25)


@dataclass(frozen=True)
class Outcome:
    """The effects in the database of one account's registrations."""

    intakes: Counter[str]
    leads: int
    duplicate_leads: int
    leads_with_two_created: int
    leads_with_two_routed: int
    signup_events: int
    intakes_done_without_lead: int
    leads_per_intake_max: int
    agents: dict[str, int]
    relayed_intakes: int
    relays: int
    latency_p50: float
    latency_p99: float
    latency_max: float
    span_seconds: float

    @property
    def rr_spread(self) -> int:
        return max(self.agents.values()) - min(self.agents.values()) if self.agents else 0

    @property
    def duplicates(self) -> int:
        return self.duplicate_leads + self.leads_with_two_created + self.leads_with_two_routed


def outcome(dsn: str, slug: str, intake_ids: Sequence[str], agents: Sequence[str]) -> Outcome:
    """Leads, duplicates (same email and owner, a second `created` or `routed` event), round robin counts
    per agent of ``agents``, latencies (processed_at - created_at) and relays, for ``intake_ids``."""
    acct = account_id(dsn, slug)
    ids = list(intake_ids)

    def one(sql: str, *params: Any) -> Any:
        return query(dsn, sql, params)[0][0]

    counts = {
        slug: int(n)
        for slug, n in query(
            dsn,
            "SELECT e.slug, count(l.id) FROM entities e LEFT JOIN leads l ON l.assigned_agent_id = e.id "
            "AND l.account_id = e.account_id WHERE e.account_id = %s AND e.slug = ANY(%s) GROUP BY e.slug",
            (acct, list(agents)),
        )
    }
    lat = sorted(
        float(s)
        for (s,) in query(
            dsn,
            "SELECT extract(epoch FROM processed_at - created_at) FROM intakes "
            "WHERE id = ANY(%s::uuid[]) AND processed_at IS NOT NULL",
            (ids,),
        )
    )
    relayed, relays, span = query(
        dsn,
        "SELECT count(*) FILTER (WHERE relays > 0), coalesce(sum(relays), 0), "
        "coalesce(extract(epoch FROM max(processed_at) - min(created_at)), 0) FROM intakes WHERE id = ANY(%s::uuid[])",
        (ids,),
    )[0]
    return Outcome(
        intakes=statuses(dsn, ids),
        leads=int(one("SELECT count(*) FROM leads WHERE account_id = %s", acct)),
        duplicate_leads=int(
            one(
                "SELECT count(*) FROM (SELECT 1 FROM leads WHERE account_id = %s "
                "GROUP BY owner_entity_id, lower(coalesce(email_normalized, email)) HAVING count(*) > 1) d",
                acct,
            )
        ),
        leads_with_two_created=int(
            one(
                "SELECT count(*) FROM (SELECT 1 FROM timeline_events WHERE account_id = %s AND kind = 'created' "
                "GROUP BY lead_id HAVING count(*) > 1) d",
                acct,
            )
        ),
        leads_with_two_routed=int(
            one(
                "SELECT count(*) FROM (SELECT 1 FROM timeline_events WHERE account_id = %s AND kind = 'routed' "
                "GROUP BY lead_id HAVING count(*) > 1) d",
                acct,
            )
        ),
        signup_events=int(one("SELECT count(*) FROM timeline_events WHERE account_id = %s AND kind = 'signup'", acct)),
        intakes_done_without_lead=int(
            one("SELECT count(*) FROM intakes WHERE id = ANY(%s::uuid[]) AND status = 'done' AND lead_id IS NULL", ids)
        ),
        leads_per_intake_max=int(
            one(
                "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM leads WHERE account_id = %s "
                "GROUP BY created_by_intake_id) d",
                acct,
            )
        ),
        agents={a: counts.get(a, 0) for a in agents},
        relayed_intakes=int(relayed),
        relays=int(relays),
        latency_p50=_quantile(lat, 0.5),
        latency_p99=_quantile(lat, 0.99),
        latency_max=round(lat[-1], 3) if lat else 0.0,
        span_seconds=float(span),
    )


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


def records(lines: Sequence[str]) -> list[dict[str, Any]]:
    """The JSON log records among ``lines``."""
    found = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            found.append(record)
    return found


def events(lines: Sequence[str], *names: str) -> list[dict[str, Any]]:
    """The JSON log records among ``lines`` whose event is one of ``names``."""
    return [r for r in records(lines) if r.get("event") in names]


def log_time(record: Mapping[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00"))


def probe(stack: Stack, org: Mapping[str, Any], n: int, *, timeout: float) -> float | None:
    """Post ``n`` registrations after the chaos: the seconds until all are done, None if not within ``timeout``."""
    t0 = time.monotonic()
    load = LoadRunner(stack.base, registration_calls(org, n, "probe"), concurrency=4).start().join(timeout)
    seen, _ = wait_final(stack.dsn, list(load.accepted.values()), timeout)
    ok = len(load.accepted) == n and seen["done"] == n
    return round(time.monotonic() - t0, 2) if ok else None


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


# --- the report ---------------------------------------------------------------------------------------


class Report:
    """Each test's figures: printed past pytest's capture (they show in a plain ``pytest -q``) and
    appended, one JSON object a line, to ``chaos-figures.jsonl`` in ``LEADRELAY_CHAOS_REPORT_DIR``."""

    def __init__(self, folder: Path, write: Callable[[str], None]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "chaos-figures.jsonl"
        self.write = write

    def __call__(self, scenario: str, figures: Mapping[str, Any]) -> None:
        line = {"scenario": scenario, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **figures}
        with self.path.open("a") as f:
            f.write(json.dumps(line, default=str) + "\n")
        shown = ", ".join(f"{k}={v}" for k, v in figures.items())
        self.write(f"[chaos] {scenario}: {shown}")


def python_module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def env_for_children(env: Mapping[str, str]) -> dict[str, str]:
    return child_env(env)


# --- the stack ----------------------------------------------------------------------------------------


class Stack:
    """This run's Redis, database, API server, Celery workers and relay. ``env`` is what every child gets."""

    def __init__(self, folder: Path, redis_server: RedisServer, db_url: str, dsn: str, env: Mapping[str, str]) -> None:
        self.folder, self.redis, self.db_url, self.dsn = folder, redis_server, db_url, dsn
        self.db_name = dsn.rsplit("/", 1)[1]
        self.env = dict(env)
        self.api: Service | None = None
        self.base = ""
        self.workers: list[Worker] = []
        self.relay: Service | None = None
        self.worker_overrides: dict[str, str] = {}
        self.concurrency = 1
        self._supervising = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="chaos-supervisor", daemon=True)

    def services(self) -> list[Service]:
        return [s for s in (self.api, self.relay, *self.workers) if s is not None]

    def supervise(self) -> None:
        """From now on a wanted process of the stack that ends is started again within 0.2 s."""
        self._supervising.set()
        self._supervisor.start()

    def _supervise(self) -> None:
        while self._supervising.is_set():
            for service in self.services():
                service.supervise()
            time.sleep(0.2)

    def exits(self, since: dt.datetime, *, expected: bool = False) -> list[Exit]:
        """The processes that ended while wanted since ``since`` (the test's own kills with ``expected``)."""
        return [e for s in self.services() for e in s.exits if e.at >= since and e.expected == expected]

    # the API
    def start_api(self) -> str:
        port = free_port()
        self.api = Service(
            "api",
            python_module("leadrelay", "api", "--port", str(port)),
            env_for_children(self.env),
            self.folder / "api.log",
        )
        self.api.start()
        self.base = f"http://127.0.0.1:{port}"
        api = self.api

        def healthy() -> bool:
            if not api.running():
                raise RuntimeError(f"API exited: {api.log.read_text()[-2000:]}")
            try:
                return httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=30, interval=0.05, what="the API")
        return self.base

    # the workers
    def worker(self, i: int, concurrency: int, args: Sequence[str] = (), *, own_group: bool = False) -> Worker:
        argv = python_module(
            "leadrelay",
            "worker",
            "--concurrency",
            str(concurrency),
            "-n",
            f"chaos{i}-{os.getpid()}@%h",
            "--pool",
            "prefork",
            *args,
        )
        env = env_for_children({**self.env, **self.worker_overrides})
        w = Worker(f"worker-{i}", argv, env, self.folder / f"worker-{i}.log")
        w.own_group = own_group
        return w

    def start_workers(
        self,
        count: int,
        concurrency: int,
        overrides: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        *,
        own_group: bool = False,
    ) -> None:
        """Stop the running workers (warm shutdown: they give their messages back) and start ``count`` new
        ones with ``overrides`` in their environment and ``args`` on their command line (each in a process
        group of its own with ``own_group``); waits until each has its pool."""
        for w in self.workers:  # all at once: each warm shutdown takes seconds
            w.wanted = False
            w.send(signal.SIGTERM)
        for w in self.workers:
            w.close()
        self.worker_overrides = dict(overrides or {})
        self.workers = [self.worker(i, concurrency, args, own_group=own_group) for i in range(count)]
        self.concurrency = concurrency
        for w in self.workers:
            w.start()
        for w in self.workers:
            w.wait_pool(concurrency)
            self.wait_ready(w)

    def stop_workers(self) -> None:
        """Warm shutdown of every worker (a worker gives back the messages it holds)."""
        for w in self.workers:
            w.stop(timeout=60)

    def resume_workers(self) -> None:
        for w in self.workers:
            if not w.running():
                w.start()
        for w in self.workers:
            self.wait_ready(w)

    def crash_worker(self, w: Worker) -> tuple[list[tuple[int, int | None]], float]:
        """SIGKILL the worker's main process; the supervisor starts it again. Its pool children as they were,
        and the seconds from the kill until the new main process is ready."""
        t0 = time.monotonic()
        starts = w.starts
        pool = w.sigkill_main()
        wait_for(lambda: w.starts > starts, timeout=10, interval=0.02, what=f"{w.name} started again")
        self.wait_ready(w)
        return pool, round(time.monotonic() - t0, 2)

    def crash_worker_group(self, w: Worker) -> tuple[list[tuple[int, int | None]], float]:
        """SIGKILL the worker's whole process group; the supervisor starts it again. Its pool children as they
        were, and the seconds from the kill until the new main process is ready."""
        t0 = time.monotonic()
        starts = w.starts
        pool = w.sigkill_group()
        wait_for(lambda: w.starts > starts, timeout=10, interval=0.02, what=f"{w.name} started again")
        self.wait_ready(w)
        return pool, round(time.monotonic() - t0, 2)

    def wait_ready(self, w: Worker, timeout: float = 60) -> float:
        """Until the worker's log says ready since its last start (it consumes from then on); the seconds
        from that start to its ready line."""
        found: list[dt.datetime] = []

        def ready() -> bool:
            if not w.running() and not w.wanted:
                raise RuntimeError(f"{w.name} is stopped: {w.log.read_text()[-2000:]}")
            with w.log.open("rb") as f:
                f.seek(w.log_offset)
                lines = f.read().decode("utf-8", errors="replace").splitlines()
            found.extend(log_time(r) for r in records(lines) if str(r.get("event", "")).endswith(" ready."))
            return bool(found)

        wait_for(ready, timeout=timeout, interval=0.05, what=f"{w.name} ready")
        return round((found[0] - w.started_at).total_seconds(), 2)

    # the relay
    def start_relay(self, every: float = 1.0) -> None:
        self.relay = Service(
            "relay",
            python_module("leadrelay", "relay", "--every", str(every)),
            env_for_children(self.env),
            self.folder / "relay.log",
        )
        self.relay.start()

    def logs(self) -> list[Path]:
        return sorted(self.folder.glob("*.log"))

    def mark(self) -> dict[Path, int]:
        """Where each log ends now: :meth:`lines_since` reads what was written after."""
        return {p: p.stat().st_size for p in self.logs()}

    def lines_since(self, mark: Mapping[Path, int], prefix: str = "") -> list[str]:
        """The log lines written since ``mark`` (of the logs whose name starts with ``prefix``)."""
        lines: list[str] = []
        for p in self.logs():
            if p.name.startswith(prefix):
                with p.open("rb") as f:
                    f.seek(mark.get(p, 0))
                    lines += f.read().decode("utf-8", errors="replace").splitlines()
        return lines

    def close(self) -> None:
        self._supervising.clear()
        if self._supervisor.is_alive():
            self._supervisor.join(5)
        for service in self.services():
            service.close()


# --- registrations and the broker, from the test process ---------------------------------------------


def registration_calls(org: Mapping[str, Any], n: int, tag: str, *, host: str | None = None) -> list[tuple[str, Call]]:
    """``n`` signups of distinct people on the company site (``co-S.test``: every one routed by the company's
    rules), each with its own Idempotency-Key, so a retry after a lost answer adds nothing."""
    s = str(org["account"]).removeprefix("acct-")
    site = host or f"co-{s}.test"
    auth = {"Authorization": f"Bearer key-{s}"}
    calls: list[tuple[str, Call]] = []
    for i in range(n):
        key = f"{tag}-{i}-{uuid.uuid4().hex[:12]}"
        body = {"page_url": f"https://{site}/listings", "email": f"{tag}{i}.{s}@example.com", "first_name": "Load"}

        def call(c: httpx.Client, body: dict[str, Any] = body, key: str = key) -> httpx.Response:
            return c.post("/v1/intake/registrations", json=body, headers={**auth, "Idempotency-Key": key})

        calls.append((key, call))
    return calls


# Every signup goes to the company site, routed round robin over these agents by the company's only rule.
RR_AGENTS = ("john", "jill", "bob")


def make_account(org: dict[str, Any] | None = None) -> dict[str, Any]:
    """A new account in the database of this process's settings: brokerage()'s (or ``org``), every
    company-site signup round robin over RR_AGENTS."""
    from models.org import apply_org
    from models.orgspec import parse_org
    from models.uow import UnitOfWork
    from tests.support.orgs import brokerage

    org = org or brokerage()
    org["routing"] = [{"entity": "co", "rules": [{"name": "Chaos round robin", "agents": list(RR_AGENTS)}]}]
    with UnitOfWork() as uow:
        apply_org(uow.session, parse_org(org))
        uow.commit()
    return org


# A payload this version cannot read (as if another version of the API had stored it): LeadSignup.from_dict
# raises ValueError on it, on every attempt.
POISON_OCCURRED_AT = "yesterday, around noon"


class IntakeStore:
    """Registrations stored as ``POST /v1/intake/registrations`` stores them (the same columns, the payload
    from the API's own schema), committed and not yet published; ``poison`` spoils the payload."""

    def __init__(self, org: Mapping[str, Any]) -> None:
        from models.security import hash_secret
        from models.uow import UnitOfWork

        self.s = str(org["account"]).removeprefix("acct-")
        with UnitOfWork() as uow:
            account = uow.orgs.account_by_slug(str(org["account"]))
            key = uow.orgs.intake_key_by_hash(hash_secret(f"key-{self.s}"))
            assert account is not None
            assert key is not None
            self.account_id, self.key_id = account.id, key.id
        self.n = 0

    def add(self, count: int, tag: str, *, poison: bool = False) -> list[str]:
        from intake.schemas import RegistrationIn
        from models.tables import Intake, IntakeSource
        from models.uow import UnitOfWork

        rows = []
        for _ in range(count):
            self.n += 1
            body = {"page_url": f"https://co-{self.s}.test/", "email": f"{tag}{self.n}.{self.s}@example.com"}
            payload = RegistrationIn.model_validate(body).to_signup().to_dict()
            if poison:
                payload["occurred_at"] = POISON_OCCURRED_AT
            rows.append(
                Intake(
                    id=uuid.uuid4(),
                    account_id=self.account_id,
                    source=IntakeSource.REGISTRATION,
                    intake_key_id=self.key_id,
                    content_type="application/json",
                    raw_body=json.dumps(body),
                    payload=payload,
                )
            )
        with UnitOfWork() as uow:
            uow.session.add_all(rows)
            uow.commit()
        return [str(r.id) for r in rows]


@dataclass(frozen=True)
class Fed:
    """One lane of a round fed through the broker: the normal intakes' done rate (per second, between the
    round's 10% and 90% done: no filling, no draining), and the ids."""

    rate: float
    seconds: float
    normal: list[str]
    poison: list[str]
    started: dt.datetime


@dataclass
class Lane:
    """Where a round's intakes go: an account, and a queue prefix (with the Celery app that publishes there);
    a worker consumes each prefix's queues."""

    app: Any
    org: Mapping[str, Any]
    prefix: str

    def __post_init__(self) -> None:
        self.store = IntakeStore(self.org)


def feed(
    stack: Stack, lanes: Sequence[Lane], n: int, *, poison: Sequence[int] = (), depth: int = 12, timeout: float = 90
) -> list[Fed]:
    """Publish ``n`` intakes on every lane at once, as the API does, keeping about ``depth`` messages queued
    on each so its worker never waits and never faces a long queue; ``poison[i]`` poison intakes on lane i,
    at even steps between 15% and 65% of the round (their retries, published to the queue's tail, run inside
    it). Each intake is stored just before it is published, as the API does (an intake stored long before
    would be the relay's to resend). Waits until all are final (``timeout`` in all)."""
    tag = uuid.uuid4().hex[:6]
    counts = list(poison) + [0] * (len(lanes) - len(poison))
    poison_at = [{int(n * (0.15 + 0.5 * (j + 1) / (k + 1))) for j in range(k)} for k in counts]
    normal: list[list[str]] = [[] for _ in lanes]
    spoiled: list[list[str]] = [[] for _ in lanes]
    sent = [0 for _ in lanes]
    queues = [f"{lane.prefix}{lane.prefix}registrations" for lane in lanes]  # kombu's global_keyprefix first
    started = dt.datetime.now(dt.UTC)
    deadline = time.monotonic() + timeout
    with stack.redis.client() as r:
        while min(sent) < n:
            assert time.monotonic() < deadline, f"only {sent} of {n} fed in {timeout} s: the workers hardly consume"
            idle = True
            for i, lane in enumerate(lanes):
                if sent[i] >= n or int(r.llen(queues[i])) >= depth:
                    continue
                idle = False
                chunk = min(4, n - sent[i])
                bad = [
                    lane.store.add(1, f"p{tag}", poison=True)[0] if sent[i] + k in poison_at[i] else None
                    for k in range(chunk)
                ]
                good = lane.store.add(chunk, f"n{tag}")
                for spoiled_id, normal_id in zip(bad, good, strict=True):
                    if spoiled_id is not None:
                        lane.app.send_task("intake.process", args=[spoiled_id])
                        spoiled[i].append(spoiled_id)
                    lane.app.send_task("intake.process", args=[normal_id])
                    normal[i].append(normal_id)
                sent[i] += chunk
            if idle:
                time.sleep(0.002)
    every = [i for ids in normal + spoiled for i in ids]
    seen, _ = wait_final(stack.dsn, every, max(5.0, deadline - time.monotonic()))
    assert seen["done"] == n * len(lanes), f"{seen['done']} of {n * len(lanes)} fed intakes done ({dict(seen)})"
    assert seen["dead"] == sum(counts), seen
    fed = []
    for i in range(len(lanes)):
        done_at = [
            t
            for (t,) in query(
                stack.dsn, "SELECT processed_at FROM intakes WHERE id = ANY(%s::uuid[]) ORDER BY 1", (normal[i],)
            )
        ]
        lo, hi = n // 10, n - 1 - n // 10
        rate = (hi - lo) / max((done_at[hi] - done_at[lo]).total_seconds(), 1e-3)
        seconds = (done_at[-1] - started).total_seconds()
        fed.append(Fed(round(rate, 1), round(seconds, 2), normal[i], spoiled[i], started))
    return fed


def private_celery(queue_prefix: str | None = None) -> Any:
    """A Celery app of the test's own, configured from this process's settings (the chaos stack's broker
    and queue prefix, or ``queue_prefix``) exactly as the workers' app is; the project's global app is left
    alone."""
    from celery import Celery

    from leadrelay.settings import Settings
    from workers.celeryconfig import celery_config

    settings = Settings() if queue_prefix is None else Settings(queue_prefix=queue_prefix)
    app = Celery("leadrelay-chaos", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


class EventTap:
    """Every Celery event on the broker (task-sent with its args, received, started, retried with its
    exception, succeeded with its result, failed), collected in a thread of the test."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.events: list[dict[str, Any]] = []
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, name="chaos-events", daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        with self.app.connection_for_read() as conn:
            self._receiver = self.app.events.Receiver(conn, handlers={"*": self.events.append})
            self._ready.set()
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> EventTap:
        self._thread.start()
        assert self._ready.wait(10), "the event receiver did not start"
        time.sleep(0.5)  # its queue is bound once it consumes
        return self

    def __exit__(self, *exc: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(10)


class RedisTap:
    """Redis MONITOR on this run's own server: every command, raw (task messages and events included)."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.commands: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-monitor", daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        client = redis.Redis(host="127.0.0.1", port=self.server.port)
        with client.monitor() as m:  # type: ignore[no-untyped-call]
            self._ready.set()
            while not self._stop.is_set():
                try:
                    self.commands.append(str(m.next_command()["command"]))
                except (redis.RedisError, OSError):
                    return

    def __enter__(self) -> RedisTap:
        self._thread.start()
        assert self._ready.wait(10), "MONITOR did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError), self.server.client() as c:
            c.ping()  # wakes the MONITOR reader
        self._thread.join(10)


# --- personal data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Canary:
    """A made-up person for one source: an email whose local part appears nowhere else, and a phone."""

    source: str
    local: str
    phone: str  # E.164, +1 and ten digits

    @property
    def email(self) -> str:
        return f"{self.local}@example.com"

    @property
    def national(self) -> str:
        return self.phone[-10:]

    def spellings(self) -> list[tuple[str, re.Pattern[str]]]:
        """What must not appear: the email (plain or percent-encoded), its local part in any case, and
        the phone's ten digits with anything (up to 3 characters) between them."""
        between = r"[^0-9]{0,3}"
        return [
            ("email", re.compile(re.escape(self.email), re.IGNORECASE)),
            ("email%40", re.compile(re.escape(self.local) + r"%40", re.IGNORECASE)),
            ("local part", re.compile(re.escape(self.local), re.IGNORECASE)),
            ("phone digits", re.compile(between.join(self.national))),
        ]


def canaries(sources: Sequence[str]) -> dict[str, Canary]:
    """One canary per source, with a run-unique local part and a possible (fictional 555) US phone each."""
    import random

    run = uuid.uuid4().hex[:8]
    return {
        source: Canary(source, f"cnry{run}{source.replace('_', '')}", f"+1555{random.randint(2_000_000, 9_999_999)}")
        for source in sources
    }


_BASE64 = re.compile(r"[A-Za-z0-9+/]{24,}={0,2}")


def decoded_variants(text: str) -> Iterator[str]:
    """``text`` and every base64 run in it decoded (kombu's Redis messages carry their body in base64)."""
    import base64
    import binascii

    yield text
    for run in _BASE64.findall(text):
        with contextlib.suppress(binascii.Error, ValueError):
            yield base64.b64decode(run + "=" * (-len(run) % 4)).decode("utf-8", errors="replace")


def leaks(where: str, lines: Iterator[str] | Sequence[str], canaries: Sequence[Canary]) -> list[str]:
    """Each line (``where:n``) that holds a canary in one of its spellings, decoded base64 included."""
    found = []
    for n, line in enumerate(lines, 1):
        for variant in decoded_variants(line):
            for c in canaries:
                for name, pattern in c.spellings():
                    if pattern.search(variant):
                        found.append(f"{where}:{n}: {c.source} {name}: {variant.strip()[:300]}")
    return sorted(set(found))


def non_json_lines(path: Path) -> list[str]:
    """The lines of a log that are not one JSON object each."""
    bad = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            ok = isinstance(json.loads(line), dict)
        except ValueError:
            ok = False
        if not ok:
            bad.append(line)
    return bad
