"""The FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from intake import (
    operations,
    problems,
    routes_admin,
    routes_events,
    routes_imports,
    routes_intake,
    routes_leads,
    routes_sms,
    routes_work,
)
from leadrelay.logging import configure_logging
from leadrelay.settings import get_settings


class BoundedBody:
    """413 for a body whose Content-Length is over the path's limit, before anything reads it. Plain ASGI
    (not ``@app.middleware``, whose BaseHTTPMiddleware costs every request a task and a stream)."""

    def __init__(self, app: ASGIApp, *, limits: dict[str, int], default: int) -> None:
        self.app, self.limits, self.default = app, limits, default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = Headers(scope=scope).get("content-length")
            limit = self.limits.get(scope["path"], self.default)
            if length and length.isdigit() and int(length) > limit:
                response = problems.problem_response(413, "Request too large", f"bodies are limited to {limit} bytes")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app() -> FastAPI:
    settings = get_settings()
    # Here too, not only in the CLI: each process ``uvicorn --workers N`` starts builds its own app.
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    app = FastAPI(
        title="leadrelay",
        version="0.1.0",
        description="Lead intake for real-estate brokerages: accepted means kept; owners, routing and de-duplication by rule.",
    )
    problems.install(app)

    # CSV uploads and bulk jobs have their own, larger limits; every other body the intake one.
    limits = {"/v1/imports": settings.import_max_bytes, "/v1/leads/bulk": settings.bulk_max_bytes}
    app.add_middleware(BoundedBody, limits=limits, default=settings.intake_max_body_bytes)
    # Added last, so it is the outermost middleware and counts every answer, 413s included.
    operations.install(app)
    app.include_router(routes_intake.router)
    app.include_router(routes_leads.router)
    app.include_router(routes_work.router)
    app.include_router(routes_events.router)
    app.include_router(routes_imports.router)
    app.include_router(routes_sms.router)
    app.include_router(routes_admin.router)
    return app
