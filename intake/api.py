"""The FastAPI application."""

from __future__ import annotations

from importlib import metadata

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from intake import (
    document,
    operations,
    problems,
    ratelimit,
    routes_admin,
    routes_events,
    routes_imports,
    routes_intake,
    routes_leads,
    routes_sms,
    routes_webhooks,
    routes_work,
)
from leadrelay.logging import configure_logging
from leadrelay.settings import get_settings


class BodyTooLarge(HTTPException):
    """Raised from the receive of a request whose body has grown past its limit. An HTTPException, so the
    route reading the body stops at once and the app's handler answers 413 (FastAPI passes an HTTPException
    raised while it reads a body through, where any other error would become a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"bodies are limited to {limit} bytes")


class BoundedBody:
    """413 for a body over the path's limit: at once when its Content-Length says so, before anything reads
    it; otherwise (a chunked body, which has no Content-Length) as soon as the bytes received pass the limit,
    so nothing ever holds more than the limit of a body. Plain ASGI (not ``@app.middleware``, whose
    BaseHTTPMiddleware costs every request a task and a stream)."""

    def __init__(self, app: ASGIApp, *, limits: dict[str, int], default: int) -> None:
        self.app, self.limits, self.default = app, limits, default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default)
        length = Headers(scope=scope).get("content-length")
        if length and length.isdigit() and int(length) > limit:
            await self._too_large(limit)(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            # Read outside the app's exception handlers (a background read, say): answer here while we
            # still can; once a response has started, all that is left is to drop the connection.
            if started:
                raise
            await self._too_large(limit)(scope, receive, send)

    @staticmethod
    def _too_large(limit: int) -> Response:
        return problems.problem_response(413, "Request too large", f"bodies are limited to {limit} bytes")


def create_app() -> FastAPI:
    settings = get_settings()
    # Here too, not only in the CLI: each process ``uvicorn --workers N`` starts builds its own app.
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    app = FastAPI(
        title="leadrelay",
        version=metadata.version("leadrelay"),
        description="Lead intake for real-estate brokerages: accepted means kept; owners, routing and de-duplication by rule.",
        # Off in production unless asked for (LEADRELAY_API_DOCS): the whole surface, for anyone to read.
        docs_url="/docs" if settings.api_docs_enabled else None,
        redoc_url="/redoc" if settings.api_docs_enabled else None,
        openapi_url="/openapi.json" if settings.api_docs_enabled else None,
        # The route's function name (post_registration, get_lead, transfer_lead...): what a generated client
        # names the operation's function, rather than FastAPI's default of the name, path and method.
        generate_unique_id_function=lambda route: route.name,
    )
    problems.install(app)

    # CSV uploads and bulk jobs have their own, larger limits; every other body the intake one.
    limits = {"/v1/imports": settings.import_max_bytes, "/v1/leads/bulk": settings.bulk_max_bytes}
    app.add_middleware(BoundedBody, limits=limits, default=settings.intake_max_body_bytes)
    # Outside the body limit: a request over its rate is refused before any of its body is read.
    ratelimit.install(app, settings)
    # Added last, so it is the outermost middleware and counts every answer, 413s included.
    operations.install(app)
    app.include_router(routes_intake.router)
    app.include_router(routes_leads.router)
    app.include_router(routes_work.router)
    app.include_router(routes_events.router)
    app.include_router(routes_imports.router)
    app.include_router(routes_sms.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_webhooks.router)
    routes_webhooks.describe_events(app)
    # Last: completes the document the steps above generate (statuses, headers, raw bodies, examples).
    document.install(app)
    return app
