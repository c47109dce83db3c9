"""The OpenAPI document the API serves at /openapi.json (docs/api.md is rendered from it)."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intake.api import create_app
from intake.schemas import HTTP_URL_PATTERN, RegistrationIn
from rules.ownership import host_of


def test_openapi_lists_the_intake_read_and_routing_endpoints() -> None:
    paths = create_app().openapi()["paths"]
    assert "post" in paths["/v1/intake/registrations"]
    assert "get" in paths["/v1/intake/{intake_id}"]
    assert "get" in paths["/v1/leads"]
    assert "get" in paths["/v1/leads/{lead_id}"]
    assert "get" in paths["/v1/leads/{lead_id}/timeline"]
    assert "post" in paths["/v1/routing/simulate"]


def test_registration_schema_requires_page_url() -> None:
    schema = create_app().openapi()["components"]["schemas"]["RegistrationIn"]
    assert schema["required"] == ["page_url"]


# --- The document is the contract: examples, references, formats --------------------------------------------


HTTP_METHODS = ("get", "put", "post", "delete", "patch")


def _document() -> dict[str, Any]:
    return create_app().openapi()


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A validator of ``schema`` whose ``#/components/...`` references resolve in the document."""
    root = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "components": document["components"]}
    return jsonschema_rs.validator_for(root, validate_formats=True)


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


def test_every_operation_has_an_example_and_every_example_is_valid_for_its_schema() -> None:
    """The copy-paste examples docs/api.md shows: one on every operation (its body, its required parameters,
    or for an operation that takes nothing its answer), each valid for the schema beside it."""
    document = _document()
    checked = 0
    for method, path, operation in _operations(document):
        examples = 0
        for media, content in operation.get("requestBody", {}).get("content", {}).items():
            assert "example" in content, f"{method} {path}: no example of its {media} body"
            errors = list(_validator(document, content["schema"]).iter_errors(content["example"]))
            assert not errors, f"{method} {path} {media}: {[e.message for e in errors]}"
            examples += 1
        for parameter in operation.get("parameters", []):
            if parameter.get("required"):
                assert "example" in parameter, f"{method} {path}: no example of {parameter['name']}"
            if "example" in parameter:
                errors = list(_validator(document, parameter["schema"]).iter_errors(parameter["example"]))
                assert not errors, f"{method} {path} {parameter['name']}: {[e.message for e in errors]}"
                examples += 1
        for code, response in operation["responses"].items():
            for media, content in response.get("content", {}).items():
                if "example" in content:
                    if content.get("schema"):
                        errors = list(_validator(document, content["schema"]).iter_errors(content["example"]))
                        assert not errors, f"{method} {path} {code} {media}: {[e.message for e in errors]}"
                    examples += 1
        assert examples, f"{method} {path} has no example"
        checked += 1
    assert checked >= 39


def test_every_reference_resolves_in_the_document() -> None:
    """Every ``$ref`` points into ``components`` and names something there (the provider route's body
    pointed at ``#/$defs/Contact``, which a generated client could not find)."""
    document = _document()
    refs = set(re.findall(r'"\$ref": "([^"]+)"', json.dumps(document)))
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/"), ref
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            assert part in node, f"{ref} does not resolve"
            node = node[part]


def test_every_status_an_operation_can_answer_is_documented_with_its_headers() -> None:
    """401 (with its challenge) wherever a credential is asked for, 404 wherever a path names a thing, 413 and
    422 with a body, 429 and 503 with Retry-After, and the rate limit's headers on every keyed answer."""
    document = _document()
    for method, path, operation in _operations(document):
        responses = operation["responses"]
        where = f"{method} {path}"
        if any(requirement for requirement in operation.get("security", [])):
            assert "WWW-Authenticate" in responses["401"]["headers"], where
        if "{" in path:
            assert "404" in responses, where
        if "requestBody" in operation:
            assert {"413", "422"} <= responses.keys(), where
        if path not in ("/healthz", "/readyz", "/metrics"):
            assert "Retry-After" in responses["429"]["headers"], where
        if path != "/healthz":
            assert "Retry-After" in responses["503"]["headers"], where
    timeline = document["paths"]["/v1/leads/{lead_id}/timeline"]["get"]["responses"]
    assert "404" in timeline
    assert "X-RateLimit-Remaining" in timeline["200"]["headers"]


def test_either_or_bodies_and_nullable_fields_say_what_the_server_takes() -> None:
    schemas = _document()["components"]["schemas"]
    assign = schemas["AssignIn"]
    assert len(assign["oneOf"]) == 2
    tags = schemas["LeadPatch"]["properties"]["tags"]
    assert {"type": "null"} in tags["anyOf"], "null is accepted (it clears the tags)"
    page_url = schemas["RegistrationIn"]["properties"]["page_url"]
    assert "format" not in page_url, "not format uri: a page URL with a space in its path is taken as sent"
    assert page_url["pattern"] == HTTP_URL_PATTERN


@pytest.mark.parametrize(
    ("url", "valid"),
    [
        ("https://kvcore-demo.com/listings/42?x=1#top", True),
        ("HTTP://a.b:8080/", True),
        ("https://a", True),
        ("https://a/price-%E2%82%AC", True),
        ("ftp://a.b/", False),
        ("https://", False),
        ("https:///path", False),
        ("https://a b/", False),
        ("https://a/b c", True),  # taken as sent: refusing it would lose the lead
        ("https://a/café", True),
        ("https://xn--mnchen-3ya.de/haus", True),
        ("https://münchen.de/haus", False),  # a browser sends the xn-- form
        ("https://a\u00a0b/", False),
        ("https://10.0.0.7:8443/x", True),
        ("https://[2001:db8::1]:8443/x", False),
        ("https://ann@a.b/", True),
        ("https://.../", False),
        ("https://a/b\x07", False),
        ("https://a:port/", False),
        ("kvcore-demo.com/x", False),
    ],
)
def test_the_page_url_pattern_is_what_the_server_checks(url: str, valid: bool) -> None:
    """The document's pattern is the server's own check: a page URL the one takes, the other takes."""
    assert bool(re.fullmatch(HTTP_URL_PATTERN, url)) == valid
    body = {"page_url": url, "email": "ann@example.com"}
    assert (RegistrationIn.__pydantic_validator__.validate_python(body) is not None) if valid else True
    if not valid:
        with pytest.raises(ValueError, match="page_url"):
            RegistrationIn.model_validate(body)


@given(st.from_regex(HTTP_URL_PATTERN, fullmatch=True))
@settings(max_examples=500, derandomize=True, database=None)
def test_every_page_url_the_pattern_takes_has_the_host_that_decides_its_owner(url: str) -> None:
    assert host_of(url)
    RegistrationIn.model_validate({"page_url": url, "email": "ann@example.com"})
