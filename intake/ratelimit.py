"""The rate limit per credential (``LEADRELAY_INTAKE_RATE_PER_KEY``), and per client address for failed
authentications, counted in Redis so every API process shares one count.

It runs as plain ASGI middleware in front of the routes and reads only the credential headers, so it costs
no database query: an unknown key is counted like a known one (and its 401s count against its address). The
count is a fixed window of ``burst`` requests over ``burst / rate`` seconds from the window's first request:
a steady ``rate`` per second, or a burst of ``burst`` at once. In Redis a request costs one round trip (a
script that counts it and answers the count and the window's time left, which make the headers); the
failed authentications of an address are read only when this process has answered it a 401 within a window.
The limiter never loses a lead: while its storage does not answer, requests go through unchecked (a
warning, and ``leadrelay_rate_limit_unchecked_total``)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import FastAPI
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import Storage
from limits.storage import storage_from_string
from redis.asyncio import ConnectionPool, Redis
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from intake import problems
from intake.operations import RATE_LIMIT_UNCHECKED
from leadrelay.settings import Settings

log = structlog.get_logger(__name__)

# Probes and scrapes are never limited: a load balancer or Prometheus must always get its answer.
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# After the storage fails, this long without trying it again: each request would otherwise wait for it.
STORAGE_BACKOFF_SECONDS = 5.0
# A Redis that does not answer within this is taken as down (the request then goes through unchecked).
STORAGE_TIMEOUT_SECONDS = 0.5
# Addresses this process remembers answering a 401 (each for a window). Past this many, every address's
# failures are read from the storage again, as if each had had one: an attacker's spread of addresses can
# cost round trips, never a check.
RECENT_FAILURES_MAX = 10_000

# Counts a hit and answers [count, milliseconds the window has left]; the first hit of a window starts it.
_HIT = """
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if count == 1 or ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""
# The count of a window and its milliseconds left, without counting anything.
_PEEK = """
return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('PTTL', KEYS[1])}
"""


def install(app: FastAPI, settings: Settings) -> None:
    """The middleware, unless the limit is off (``LEADRELAY_INTAKE_RATE_PER_KEY=0``); its Redis connections
    are closed when the app shuts down."""
    item = limit_item(settings.intake_rate_per_key, settings.intake_burst_per_key)
    if item is None:
        return
    counter, pool = counter_for(settings)
    app.add_middleware(RateLimit, item=item, counter=counter)
    if pool is not None:
        running = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
            async with running(app) as state:
                yield state
            await pool.disconnect()

        app.router.lifespan_context = lifespan


def limit_item(rate: float, burst: int) -> RateLimitItem | None:
    """``burst`` requests per ``burst / rate`` seconds (at least one second); None when ``rate`` is 0 (off)."""
    if rate <= 0:
        return None
    window = max(1, round(burst / rate))
    return RateLimitItemPerSecond(max(burst, math.ceil(rate * window)), window)


def counter_for(settings: Settings) -> tuple[Counter, ConnectionPool | None]:
    """The count's storage, and the Redis connection pool it uses (ours, so shutting down can close it)."""
    url = settings.effective_rate_limit_storage_url
    scheme = url.split("://", 1)[0]
    if scheme in ("redis", "rediss"):
        pool = ConnectionPool.from_url(
            url, socket_connect_timeout=STORAGE_TIMEOUT_SECONDS, socket_timeout=STORAGE_TIMEOUT_SECONDS
        )
        # Under the queue prefix, so installations and test runs sharing one Redis count apart; "fixed:" keeps
        # these counters apart from the lists the moving window of earlier versions kept under "ratelimit:".
        return RedisCounter(pool, f"{settings.queue_prefix}ratelimit:fixed:"), pool
    storage = storage_from_string(url if scheme.startswith("async+") else f"async+{url}", wrap_exceptions=True)
    if not isinstance(storage, Storage):
        raise ValueError(f"LEADRELAY_RATE_LIMIT_STORAGE_URL: {scheme} is no storage the API can use")
    return StorageCounter(storage), None


def credential_of(headers: Headers) -> str | None:
    """The credential a request presents, as the routes read it: an ``X-Api-Key`` first, else the bearer
    token, else the Basic user name (Follow Up Boss's connection key; its password is ignored). A key counts
    the same however it is presented."""
    if api_key := headers.get("x-api-key"):
        return api_key
    authorization = headers.get("authorization")
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "basic":
        try:
            user = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            return f"raw:{authorization}"
        return user
    if scheme.lower() == "bearer":
        return value.strip()
    return f"raw:{authorization}"


def credential_hash(credential: str) -> str:
    """What the count is keyed by: never the secret itself, nor the digest the database looks keys up by."""
    return hashlib.sha256(b"leadrelay-rate-limit\0" + credential.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Window:
    allowed: bool
    remaining: int
    reset_seconds: int


class Counter:
    """A count per key over a fixed window that starts with the key's first hit: ``hit`` counts one and
    ``peek`` only reads; both answer (the count, seconds the window has left)."""

    async def hit(self, key: str, seconds: int) -> tuple[int, float]:
        raise NotImplementedError

    async def peek(self, key: str) -> tuple[int, float]:
        raise NotImplementedError


class RedisCounter(Counter):
    """In Redis, one round trip each (a script), so that the headers need no second one."""

    def __init__(self, pool: ConnectionPool, prefix: str) -> None:
        client = Redis(connection_pool=pool)
        self.prefix = prefix
        self._hit, self._peek = client.register_script(_HIT), client.register_script(_PEEK)

    async def hit(self, key: str, seconds: int) -> tuple[int, float]:
        count, ttl_ms = await self._hit(keys=[self.prefix + key], args=[seconds * 1000])
        return int(count), int(ttl_ms) / 1000

    async def peek(self, key: str) -> tuple[int, float]:
        count, ttl_ms = await self._peek(keys=[self.prefix + key])
        return int(count), max(0, int(ttl_ms)) / 1000


class StorageCounter(Counter):
    """Any other ``limits`` storage (each process's memory when the broker is not Redis)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def hit(self, key: str, seconds: int) -> tuple[int, float]:
        count = await self.storage.incr(key, seconds)
        return count, await self.storage.get_expiry(key) - time.time()

    async def peek(self, key: str) -> tuple[int, float]:
        count = await self.storage.get(key)
        return count, (await self.storage.get_expiry(key) - time.time()) if count else 0.0


class RateLimit:
    """429 past the limit of the request's credential, or of its address's failed authentications.
    Answers to keyed requests carry ``X-RateLimit-Limit``, ``-Remaining``, ``-Reset`` (seconds until a
    request leaves the window) and ``-Window`` (its length in seconds), as Follow Up Boss sends them."""

    def __init__(self, app: ASGIApp, *, item: RateLimitItem, counter: Counter) -> None:
        self.app, self.item, self.counter = app, item, counter
        self._skip_until = 0.0
        # Address -> when this process last answered it a 401 (monotonic). An address not in it has had no
        # 401 from this process within a window, so its failures are not read: one round trip less for
        # every request but those. Another process's 401s are still counted in the storage, and this
        # process reads them from the address's first 401 here on.
        self._recent_failures: dict[str, float] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        address = (scope.get("client") or ("unknown",))[0]
        failures = (
            await self._check(self._test, "auth-failures", address)
            if self._failed_lately(address)
            else Window(True, 0, 0)
        )
        if failures is not None and not failures.allowed:
            detail = f"too many failed authentications from this address ({self._rate()}); retry in {failures.reset_seconds} s"
            await self._refuse(scope, receive, send, detail, failures, keyed=False)
            return
        credential = credential_of(Headers(scope=scope))
        window = None
        if credential is not None:
            window = await self._check(self._hit, "credential", credential_hash(credential))
        if failures is None or (credential is not None and window is None):
            RATE_LIMIT_UNCHECKED.inc()
        if window is not None and not window.allowed:
            detail = f"the rate limit of this credential ({self._rate()}) is used up; retry in {window.reset_seconds} s"
            await self._refuse(scope, receive, send, detail, window, keyed=True)
            return
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if window is not None:
                    MutableHeaders(scope=message).update(self._headers(window))
            await send(message)

        await self.app(scope, receive, sending)
        if status == 401:
            self._remember_failure(address)
            await self._check(self._hit, "auth-failures", address)

    def _failed_lately(self, address: str) -> bool:
        at = self._recent_failures.get(address)
        if at is not None and time.monotonic() - at < self.item.get_expiry():
            return True
        # Past the bound, every address counts as failed lately: reading costs a round trip, skipping a check.
        return len(self._recent_failures) >= RECENT_FAILURES_MAX

    def _remember_failure(self, address: str) -> None:
        now = time.monotonic()
        if address not in self._recent_failures and len(self._recent_failures) >= RECENT_FAILURES_MAX:
            horizon = now - self.item.get_expiry()
            self._recent_failures = {a: t for a, t in self._recent_failures.items() if t > horizon}
        if address in self._recent_failures or len(self._recent_failures) < RECENT_FAILURES_MAX:
            self._recent_failures[address] = now

    def _rate(self) -> str:
        return f"{self.item.amount} requests per {self.item.multiples} s"

    def _headers(self, window: Window) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.item.amount),
            "X-RateLimit-Remaining": str(window.remaining),
            "X-RateLimit-Reset": str(window.reset_seconds),
            "X-RateLimit-Window": str(self.item.multiples),
        }

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, detail: str, window: Window, *, keyed: bool
    ) -> None:
        headers = {"Retry-After": str(max(1, window.reset_seconds))}
        if keyed:
            headers |= self._headers(window)
        response = problems.problem_response(429, "Too many requests", detail, headers=headers)
        await response(scope, receive, send)

    async def _hit(self, *identifiers: str) -> Window:
        count, left = await self.counter.hit(self.item.key_for(*identifiers), self.item.get_expiry())
        return Window(count <= self.item.amount, max(0, self.item.amount - count), max(1, math.ceil(left)))

    async def _test(self, *identifiers: str) -> Window:
        count, left = await self.counter.peek(self.item.key_for(*identifiers))
        return Window(count < self.item.amount, max(0, self.item.amount - count), max(1, math.ceil(left)))

    async def _check(self, how: Callable[..., Awaitable[Window]], *identifiers: str) -> Window | None:
        """``how(*identifiers)``, or None (let the request through) while the storage does not answer."""
        if time.monotonic() < self._skip_until:
            return None
        try:
            window = await how(*identifiers)
        except Exception as exc:
            # Any failure of the limiter lets the request through: refusing it could lose a lead.
            self._skip_until = time.monotonic() + STORAGE_BACKOFF_SECONDS
            log.warning(
                "ratelimit.unavailable",
                error=type(exc).__name__,
                unchecked_for_seconds=STORAGE_BACKOFF_SECONDS,
            )
            return None
        return window
