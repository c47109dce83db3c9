"""/openapi.json as the server answers, exactly: what FastAPI generates from the routes, completed with what
it cannot see. Every status an operation can answer (the credential's 401, the rules' 403/404/409, the body
limit's 413, the rate limit's 429, the database's 503), the headers that come with them (``Retry-After``,
``X-RateLimit-*``, ``WWW-Authenticate``, ``Location``), the provider bodies' schemas in ``components``, and a
copy-paste example of every operation (``EXAMPLES``, which docs/api.md shows and a test checks against the
schema)."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from intake.examples import EXAMPLES
from intake.problems import PROBLEM
from intake.providers import HotPadsLead, RealtorComLead
from intake.ratelimit import EXEMPT_PATHS

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Answered without the database: nothing there can be unavailable.
NO_DATABASE = frozenset({"/healthz"})
# Read from the request body by the route itself (no FastAPI body parameter), so FastAPI documents none.
RAW_BODIES: dict[str, dict[str, type[BaseModel]]] = {
    "/v1/intake/providers/{format}": {
        "application/json": RealtorComLead,
        "application/x-www-form-urlencoded": HotPadsLead,
    },
}

_INTEGER = {"type": "integer", "minimum": 0}
HEADERS: dict[str, dict[str, Any]] = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    },
    "X-RateLimit-Limit": {"description": "Requests the credential may make in a window.", "schema": _INTEGER},
    "X-RateLimit-Remaining": {"description": "Requests left in the current window.", "schema": _INTEGER},
    "X-RateLimit-Reset": {"description": "Seconds until the current window ends.", "schema": _INTEGER},
    "X-RateLimit-Window": {"description": "The window's length in seconds.", "schema": _INTEGER},
    "WWW-Authenticate": {
        "description": "The challenge: `Bearer`, or `Basic` for the Follow Up Boss events.",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
    },
    "Location": {
        "description": "Where to follow what was accepted (the same as `status_url`).",
        "required": True,
        "schema": {"type": "string", "format": "uri"},
    },
}
RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-RateLimit-Window")
# Statuses added where they apply, with what they mean when the route says nothing more precise.
DESCRIPTIONS = {
    "401": "Missing, unknown or revoked credential (with a `WWW-Authenticate` challenge)",
    "404": "No such thing in the caller's account (or none the caller may see)",
    "413": "Request too large: the body is over the path's limit",
    "422": "Invalid request: each bad field is named in `errors`",
    "429": "Too many requests: the credential's rate limit, or the address's failed authentications (Retry-After)",
    "503": "The database is unavailable; nothing was stored, try again (Retry-After)",
}


def install(app: FastAPI) -> None:
    """Complete the app's /openapi.json (once, then cached)."""
    generate = app.openapi
    done: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if "document" not in done:
            done["document"] = complete(copy.deepcopy(generate()))
        document: dict[str, Any] = done["document"]
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def complete(document: dict[str, Any]) -> dict[str, Any]:
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    components["headers"] = HEADERS
    _raw_bodies(document, schemas)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                if path == "/metrics":
                    # The token is asked for only when LEADRELAY_METRICS_TOKEN is set: an optional requirement.
                    operation["security"] = [*operation.get("security", []), {}]
                _statuses(path, operation)
                _headers(path, operation)
                _examples(method, path, operation)
    return document


def _raw_bodies(document: dict[str, Any], schemas: dict[str, Any]) -> None:
    """The bodies routes parse themselves, as components (their nested models too), so every $ref resolves."""
    models = {model for bodies in RAW_BODIES.values() for model in bodies.values()}
    refs, defs = models_json_schema(
        [(model, "validation") for model in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    schemas.update(defs.get("$defs", {}))
    for path, bodies in RAW_BODIES.items():
        operation = document["paths"][path]["post"]
        operation["requestBody"] = {
            "required": True,
            "content": {media: {"schema": refs[(model, "validation")]} for media, model in bodies.items()},
        }


def _statuses(path: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    parameters = operation.get("parameters", [])
    wanted = []
    if operation.get("security"):
        wanted.append("401")
    if any(p["in"] == "path" for p in parameters):
        wanted.append("404")
    if "requestBody" in operation:
        wanted += ["413", "422"]
    elif parameters:
        wanted.append("422")
    if path not in EXEMPT_PATHS:
        wanted.append("429")
    if path not in NO_DATABASE:
        wanted.append("503")
    else:
        responses.pop("503", None)
    if path in EXEMPT_PATHS:
        responses.pop("429", None)
    for code in wanted:
        responses.setdefault(code, {"description": DESCRIPTIONS[code]})
    for code, response in responses.items():
        if code[:1] in ("4", "5"):
            response["content"] = {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    operation["responses"] = dict(sorted(responses.items()))


def _headers(path: str, operation: dict[str, Any]) -> None:
    keyed = bool(operation.get("security")) and path not in EXEMPT_PATHS
    for code, response in operation["responses"].items():
        headers: dict[str, Any] = {}
        if code in ("429", "503"):
            headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
        if code == "401":
            headers["WWW-Authenticate"] = {"$ref": "#/components/headers/WWW-Authenticate"}
        if code == "202" and "status_url" in str(response.get("content", {})) + _schema_name(response):
            headers["Location"] = {"$ref": "#/components/headers/Location"}
        if keyed:
            headers |= {name: {"$ref": f"#/components/headers/{name}"} for name in RATE_LIMIT_HEADERS}
        if headers:
            response["headers"] = headers


def _schema_name(response: dict[str, Any]) -> str:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    ref = str(schema.get("$ref", ""))
    return "status_url" if ref.rsplit("/", 1)[-1] in ("Accepted", "ImportAccepted", "JobAccepted") else ""


def _examples(method: str, path: str, operation: dict[str, Any]) -> None:
    example = EXAMPLES.get((method.upper(), path), {})
    for media, body in example.get("body", {}).items():
        operation["requestBody"]["content"][media]["example"] = body
    for parameter in operation.get("parameters", []):
        if parameter["name"] in example.get("parameters", {}):
            parameter["example"] = example["parameters"][parameter["name"]]
    if "response" in example:
        code = next(code for code in operation["responses"] if code.startswith("2"))
        content = operation["responses"][code].setdefault("content", {})
        media = next(iter(content), "application/json")
        content.setdefault(media, {})["example"] = example["response"]
