"""What operators and orchestrators ask the API: is it alive, can it take work, and what has the
pipeline done (``/healthz``, ``/readyz``, ``/metrics``)."""

from __future__ import annotations

import datetime as dt
import functools
import hmac
import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import text
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from intake import problems
from leadrelay.settings import get_settings
from models.repositories import LATENCY_BUCKETS
from models.uow import UnitOfWork
from workers.app import app as celery_app

log = structlog.get_logger(__name__)
router = APIRouter(tags=["operations"])

BROKER_CHECK_SECONDS = 2.0
# The database figures are one aggregate query each; scrapes closer together than this share them.
DATABASE_FIGURES_TTL_SECONDS = 5.0

# This API process's own answers. With several API processes on a host, set PROMETHEUS_MULTIPROC_DIR (an
# empty directory shared by them) and every process's counts are summed (prometheus_client's multiprocess mode).
HTTP_REQUESTS = Counter(
    "leadrelay_http_requests", "HTTP requests answered, by route and status", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram("leadrelay_http_request_seconds", "Seconds to answer, by route", ["method", "route"])
RATE_LIMIT_UNCHECKED = Counter(
    "leadrelay_rate_limit_unchecked",
    "Requests let through without a rate-limit check because the limiter's storage did not answer",
)
# Every label takes its values from a known set: a method outside these is "other", a path no route
# matches is "unmatched" (the client chooses both, and each new value would be a new series for good).
KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
UNMATCHED = "unmatched"


class DatabaseFigures:
    """The pipeline's figures from the database (``MetricsRepository``): the same on every API process,
    whichever API, worker or relay process on whichever host did the work."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def describe(self) -> list[Metric]:
        # Registering asks a collector for its names; without this it would collect, querying the database.
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] > DATABASE_FIGURES_TTL_SECONDS:
                self._cached = (time.monotonic(), self._read())
            yield from self._cached[1]

    def _read(self) -> list[Metric]:
        with UnitOfWork() as uow:
            intakes = uow.metrics.intakes()
            latency = uow.metrics.intake_latency()
            resends = uow.metrics.relay_resends()
            dead = uow.metrics.dead_letters()
            assigned = uow.metrics.assigned_per_agent()
            webhooks = uow.metrics.webhook_deliveries()
            waiting = uow.relay.oldest_waiting(dt.datetime.now(dt.UTC))
        by_status = GaugeMetricFamily(
            "leadrelay_intakes", "Kept intakes by source and status", labels=["source", "status"]
        )
        for source, status, n in intakes:
            by_status.add_metric([source, status], n)
        histogram = HistogramMetricFamily(
            "leadrelay_intake_latency_seconds", "Seconds from an intake stored to its lead done"
        )
        histogram.add_metric(
            [],
            [(str(bound), n) for bound, n in zip(LATENCY_BUCKETS, latency.buckets, strict=True)]
            + [("+Inf", latency.count)],
            latency.total_seconds,
        )
        relay = CounterMetricFamily(
            "leadrelay_relay_resends", "Tasks the relay sent again, by kind of kept work", labels=["kind"]
        )
        for kind, n in resends.items():
            relay.add_metric([kind], n)
        letters = GaugeMetricFamily(
            "leadrelay_dead_letters", "Work failed past its retries (dead intakes, failed mail...)", labels=["kind"]
        )
        for kind, n in dead.items():
            letters.add_metric([kind], n)
        agents = GaugeMetricFamily(
            "leadrelay_leads_assigned", "Live leads assigned to each agent", labels=["account", "agent"]
        )
        for account, agent, n in assigned:
            agents.add_metric([account, agent], n)
        deliveries = GaugeMetricFamily(
            "leadrelay_webhook_deliveries",
            "Outbound webhook deliveries by event type and status (pending, delivered, failed)",
            labels=["type", "status"],
        )
        for event_type, status, n in webhooks:
            deliveries.add_metric([event_type, status], n)
        oldest = GaugeMetricFamily(
            "leadrelay_oldest_waiting_seconds",
            "Seconds the oldest kept work not done has waited, by kind: since it was stored (a webhook delivery: "
            "since its try was due); 0 when none waits. Growing means a stuck pipeline",
            labels=["kind"],
        )
        for kind, seconds in waiting.items():
            oldest.add_metric([kind], round(seconds, 3))
        return [by_status, histogram, relay, letters, agents, deliveries, oldest]


@functools.cache
def registry() -> CollectorRegistry:
    """This process's HTTP figures (or, in multiprocess mode, every API process's), and the database's."""
    reg = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(reg)  # type: ignore[no-untyped-call]
    else:
        reg.register(HTTP_REQUESTS)
        reg.register(HTTP_SECONDS)
        reg.register(RATE_LIMIT_UNCHECKED)
    reg.register(DatabaseFigures())
    return reg


def install(app: FastAPI) -> None:
    """The routes, and the middleware counting every answer by its route (the path template, so ids never
    make labels)."""

    app.add_middleware(CountAnswers)
    app.include_router(router)


class CountAnswers:
    """Counts every HTTP answer by method, route template and status, and times it. Plain ASGI: the
    status is read off the response's start message, and the route off the scope the router filled in."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = "500"  # an exception passing through here is answered 500 further out

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            route = route_template(scope)
            HTTP_REQUESTS.labels(method, route, status).inc()
            HTTP_SECONDS.labels(method, route).observe(time.perf_counter() - start)


def route_template(scope: Scope) -> str:
    """The template of the route the router chose; for an answer given before routing (a 413 or 429 of a
    middleware), the route whose path matches; else ``unmatched``."""
    route = scope.get("route")
    if route is None:
        route = _matching_route(getattr(getattr(scope.get("app"), "router", None), "routes", ()), scope)
    # The documented template (``/v1/leads/{lead_id}``), without a convertor (``{lead_id:lead}``).
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


def _matching_route(routes: Iterable[BaseRoute], scope: Scope) -> BaseRoute | None:
    for candidate in routes:
        # FastAPI keeps an included router as one entry over the router's own routes.
        included = getattr(getattr(candidate, "original_router", None), "routes", None)
        if included is not None:
            if (found := _matching_route(included, scope)) is not None:
                return found
        elif candidate.matches(scope)[0] != Match.NONE:
            return candidate
    return None


_metrics_bearer = HTTPBearer(
    auto_error=False, scheme_name="MetricsToken", description="`LEADRELAY_METRICS_TOKEN`, when it is set."
)


def _metrics_token(creds: HTTPAuthorizationCredentials | None = Depends(_metrics_bearer)) -> None:
    """With ``LEADRELAY_METRICS_TOKEN`` set, /metrics answers only that bearer token (compared in constant time)."""
    token = get_settings().metrics_token
    if token is None:
        return
    given = creds.credentials.encode() if creds is not None else b""
    if not hmac.compare_digest(given, token.get_secret_value().encode()):
        raise problems.Problem(
            401, "Unauthorized", "/metrics needs the metrics token", headers={"WWW-Authenticate": "Bearer"}
        )


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[Depends(_metrics_token)],
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 401: {"description": "Missing or wrong metrics token"}},
)
def metrics() -> Response:
    """Prometheus text format: HTTP answers by route and status; intakes by source and status; the
    latency from stored to done; the relay's re-sends; dead letters; live leads per agent; the age of the
    oldest kept work not done, by kind (``leadrelay_oldest_waiting_seconds``). With
    ``LEADRELAY_METRICS_TOKEN`` set, only for ``Authorization: Bearer <token>``."""
    # With the database down its query raises, and the API's handler answers 503.
    return Response(generate_latest(registry()), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers (liveness). It does not look at the database or the broker: see ``/readyz``."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "The database or the broker does not answer (problem+json, naming which)"}},
)
def readyz() -> dict[str, Any]:
    """Ready to take intake: the database answers a query and the broker accepts a connection. A load
    balancer sends no traffic to an API that answers 503 here. (With the broker down intake still answers
    202, since the relay sends the kept work later; readiness reports it so operators see it.) The answer
    also says how long the oldest kept work not done has waited, in seconds (``oldest_waiting_seconds``; by
    kind in ``oldest_waiting_by_kind``: since it was stored, a webhook delivery since its try was due; 0
    when nothing waits), so a stuck pipeline shows whoever runs the relay's pass. A long wait never makes
    this answer 503: the API still takes intake, and keeps it."""
    checks: dict[str, str] = {}
    failed: list[str] = []
    waiting: dict[str, float] = {}
    try:
        with UnitOfWork() as uow:
            uow.session.execute(text("SELECT 1"))
            waiting = uow.relay.oldest_waiting(dt.datetime.now(dt.UTC))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = type(exc).__name__
        failed.append("database")
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_CHECK_SECONDS)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = type(exc).__name__
        failed.append("broker")
    if failed:
        log.warning("readyz.not_ready", **checks)
        detail = "; ".join(f"{name}: {checks[name]}" for name in failed)
        raise problems.Problem(503, "Unavailable", f"not ready: {detail}", headers={"Retry-After": "5"})
    return {
        "status": "ok",
        **checks,
        "oldest_waiting_seconds": round(max(waiting.values(), default=0.0), 1),
        "oldest_waiting_by_kind": {kind: round(seconds, 1) for kind, seconds in waiting.items()},
    }
