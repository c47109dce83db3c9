"""RFC 9457 problem details: every error the API gives is ``application/problem+json``."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException
from starlette.routing import Match

PROBLEM = "application/problem+json"
log = structlog.get_logger(__name__)

# The body of every error, as /openapi.json documents it (components/schemas/Problem).
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details: every error the API gives, as application/problem+json.",
    "type": "object",
    "required": ["type", "status", "title", "detail"],
    "properties": {
        "type": {"type": "string", "description": "Always about:blank: the status and title say it all."},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "title": {"type": "string"},
        "detail": {"type": "string", "description": "What was wrong; a rule's refusal names the rule (T1: ...)."},
        "errors": {
            "type": "array",
            "description": "Each bad field (422).",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}
_HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


class Problem(Exception):
    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.errors, self.headers = status, title, detail, errors, headers


def invalid(field: str, message: str, *, detail: str | None = None) -> Problem:
    """422 naming one bad field; the detail is ``field: message`` unless given."""
    return Problem(
        422, "Invalid request", detail or f"{field}: {message}", errors=[{"field": field, "message": message}]
    )


# How soon a client may try again after a 503.
RETRY_AFTER_SECONDS = 5


def unavailable(what: str, exc: BaseException) -> Problem:
    """503: ``what`` does not answer. The request's transaction was rolled back, so nothing of it is kept."""
    return Problem(
        503,
        "Unavailable",
        f"{what} is unavailable ({type(exc).__name__}); nothing was stored, try again",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def problem_response(
    status: int,
    title: str,
    detail: str,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "status": status, "title": title, "detail": detail}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def field_path(loc: tuple[Any, ...]) -> str:
    """``("body", "contact", 0, "email")`` -> ``contact[0].email``; the ``body``/``query`` prefix is dropped."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def install(app: FastAPI) -> None:
    """Answer every error as problem+json: the API's own refusals, invalid requests, the router's 404 and
    405 (Starlette's ``HTTPException``, which FastAPI's subclass does not catch), and anything unexpected;
    and say so in /openapi.json."""

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.title, exc.detail, exc.errors, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": field_path(tuple(e["loc"])), "message": _message(e)} for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem_response(422, "Invalid request", detail, errors)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's and Starlette's own word for a body they cannot parse (JSON that is not UTF-8, a
            # multipart without its boundary): a malformed body, which the API answers with 422 (docs/api.md).
            message = f"could not be parsed ({exc.detail})"
            return problem_response(422, "Invalid request", f"body: {message}", [{"field": "body", "message": message}])
        if exc.status_code == 405:
            # Starlette's Allow names the methods of the first route matching the path only; a path several
            # routes serve (GET, PATCH and DELETE of a lead) allows all of theirs, as /openapi.json lists them.
            allow = allowed_methods(request)
            return problem_response(
                405, _title(405), f"{request.method} is not allowed here; allowed: {allow}", headers={"Allow": allow}
            )
        return problem_response(
            exc.status_code,
            _title(exc.status_code),
            str(exc.detail),
            headers=dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(PoolTimeoutError)
    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        # PostgreSQL down, restarting or unreachable (or every pooled connection busy): say so at once, with
        # Retry-After. The unit of work rolled the request back: a 503 stores nothing, not even half.
        log.warning("http.database_unavailable", path=request.url.path, error=type(exc).__name__)
        p = unavailable("the database", exc)
        return problem_response(p.status, p.title, p.detail, headers=p.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette still re-raises it after this answer, so uvicorn logs the traceback too.
        log.error("http.unexpected_error", path=request.url.path, error=type(exc).__name__)
        return problem_response(500, "Internal server error", "an unexpected error; it has been logged")

    _document_problems(app)


def allowed_methods(request: Request) -> str:
    """Every method the routes serving this path take (HEAD with GET), as an ``Allow`` header says them."""
    methods: set[str] = set()
    scope = {**request.scope, "method": "GET"}
    routes = list(request.app.router.routes)
    while routes:
        route = routes.pop()
        # FastAPI keeps an included router as one entry over the router's own routes.
        included = getattr(getattr(route, "original_router", None), "routes", None)
        if included is not None:
            routes += included
        elif getattr(route, "methods", None) and route.matches(scope)[0] != Match.NONE:
            methods |= set(route.methods)
    order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return ", ".join(sorted(methods, key=lambda m: (order.index(m) if m in order else len(order), m)))


def _document_problems(app: FastAPI) -> None:
    """/openapi.json as the handlers above answer: every 4xx and 5xx is a ``Problem`` in
    application/problem+json (not FastAPI's default ``HTTPValidationError`` JSON), an operation
    behind a credential documents its 401, and one with a body the 413 of the size limit."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for item in schema.get("paths", {}).values():
                for method, operation in item.items():
                    if method in _HTTP_METHODS:
                        _problem_responses(operation)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components["Problem"] = PROBLEM_SCHEMA
            for unused in ("HTTPValidationError", "ValidationError"):  # in this order: the first refers to the second
                if f'"#/components/schemas/{unused}"' not in json.dumps(schema):
                    components.pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _problem_responses(operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    responses.setdefault("503", {"description": "The database is unavailable; nothing was stored (Retry-After)"})
    if operation.get("security"):
        responses.setdefault("401", {"description": "Missing or unknown credential"})
        responses.setdefault("429", {"description": "The credential's rate limit is used up (Retry-After)"})
    if "requestBody" in operation:
        responses.setdefault("413", {"description": "Request too large"})
    for code, response in responses.items():
        if code[:1] in ("4", "5"):
            if response.get("description") == "Validation Error":
                response["description"] = "Invalid field"
            response["content"] = {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}


def _message(error: Any) -> str:
    msg = str(error.get("msg", "invalid"))
    # pydantic prefixes messages of ValueErrors raised in validators; the field name says enough.
    return msg.removeprefix("Value error, ")


def _title(status: int) -> str:
    if status not in _TITLES:
        try:
            return HTTPStatus(status).phrase
        except ValueError:
            return "Error"
    return _TITLES[status]


_TITLES = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request too large",
    422: "Invalid request",
    429: "Too many requests",
    503: "Unavailable",
}
