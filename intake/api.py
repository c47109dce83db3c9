"""The FastAPI application."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

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

    @app.middleware("http")
    async def _bounded_body(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        length = request.headers.get("content-length")
        # CSV uploads and bulk jobs have their own, larger limits; every other body the intake one.
        limit = {"/v1/imports": settings.import_max_bytes, "/v1/leads/bulk": settings.bulk_max_bytes}.get(
            request.url.path, settings.intake_max_body_bytes
        )
        if length and length.isdigit() and int(length) > limit:
            return problems.problem_response(413, "Request too large", f"bodies are limited to {limit} bytes")
        return await call_next(request)

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
