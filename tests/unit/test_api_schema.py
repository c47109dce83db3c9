"""The OpenAPI document the API serves at /openapi.json (docs/api.md is rendered from it)."""

from __future__ import annotations

from intake.api import create_app


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
