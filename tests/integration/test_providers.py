"""Lead providers (O4, O5): the connection key decides the owner, the provider's lead id the idempotency."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import apply
from tests.integration.test_pipeline import count_intakes
from tests.support.client import Brokerage
from tests.support.orgs import brokerage

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REALTOR = json.loads((FIXTURES / "realtor_com_lead.json").read_text())
HOTPADS_FORM = (FIXTURES / "hotpads_lead.form").read_text()


def post(
    b: Brokerage, fmt: str, key: str, *, json_body: dict[str, Any] | None = None, form: str | None = None
) -> httpx.Response:
    headers = {"X-Api-Key": key}
    if form is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        return httpx.post(f"{b.base}/v1/intake/providers/{fmt}", content=form, headers=headers, timeout=30)
    return httpx.post(f"{b.base}/v1/intake/providers/{fmt}", json=json_body, headers=headers, timeout=30)


def realtor_lead(lead_id: str, **contact: str) -> dict[str, Any]:
    body = copy.deepcopy(REALTOR)
    body["lead_id"] = lead_id
    body["contact"].update(contact)
    return body


def test_O5_an_agent_connection_owns_and_assigns_whatever_the_body_claims(acme: Brokerage) -> None:
    # The captured payload names agent jill; the connection is john's.
    r = post(acme, "zillow", f"conn-john-{acme.s}", json_body=realtor_lead(f"z-{acme.s}-1"))
    assert r.status_code == 202, r.text
    intake = acme.wait_done(r.json()["intake_id"])
    lead = acme.lead(intake["lead_id"], as_user="john")
    assert lead["owner"] == {"id": "john", "kind": "agent", "name": "John Smith"}
    assert lead["assigned_agent"]["id"] == "john"
    assert lead["email"] == "Rita.Moreno@example.com"
    assert lead["phone"] == "+15550104477"
    assert lead["source"] == {"kind": "provider", "detail": f"zillow lead z-{acme.s}-1"}
    created = acme.timeline(intake["lead_id"], as_user="john")[0]
    assert created["data"]["rule"] == "O5"


def test_O4_a_team_connection_makes_a_team_lead_routed_by_the_team(acme: Brokerage) -> None:
    r = post(
        acme, "realtor_com", f"conn-sunrise-{acme.s}", json_body=realtor_lead(f"r-{acme.s}-1", email="tess@example.com")
    )
    intake = acme.wait_done(r.json()["intake_id"])
    lead = acme.lead(intake["lead_id"], as_user="tara")
    assert lead["owner"]["id"] == "sunrise"
    assert lead["assigned_agent"]["id"] == "tara"  # no team rule: the team's admin (O4)


def test_hotpads_form_callback_maps_into_a_lead(acme: Brokerage) -> None:
    r = post(acme, "hotpads", f"conn-john-{acme.s}", form=HOTPADS_FORM)
    assert r.status_code == 202, r.text
    intake = acme.wait_done(r.json()["intake_id"])
    lead = acme.lead(intake["lead_id"], as_user="john")
    assert (lead["first_name"], lead["last_name"], lead["email"]) == ("Hank", "Price", "hank@example.com")
    assert lead["owner"]["id"] == "john"


def test_hotpads_needs_only_listing_id_and_email(acme: Brokerage) -> None:
    r = post(acme, "hotpads", f"conn-john-{acme.s}", form="listingId=HP-1&email=min%40example.com")
    assert acme.wait_done(r.json()["intake_id"])["status"] == "done"


def test_the_same_provider_lead_posted_again_answers_with_the_first_intake(acme: Brokerage) -> None:
    body = realtor_lead(f"z-{acme.s}-dup", email="dup@example.com")
    first = post(acme, "zillow", f"conn-john-{acme.s}", json_body=body)
    second = post(acme, "zillow", f"conn-john-{acme.s}", json_body=body)
    assert first.json()["intake_id"] == second.json()["intake_id"]
    acme.wait_done(first.json()["intake_id"])
    with acme.user("john") as c:
        assert len(c.get("/v1/leads", params={"email": "dup@example.com"}).json()["items"]) == 1


def test_an_unknown_or_revoked_connection_key_is_401_and_stores_nothing(brokerage_factory: Any) -> None:
    org = brokerage()
    b = brokerage_factory(org=org)
    before = count_intakes(org["account"])
    assert post(b, "zillow", "no-such-key", json_body=realtor_lead("x")).status_code == 401
    org["api_connections"] = [c for c in org["api_connections"] if c["id"] != "zillow-john"]
    apply(org)  # the connection is revoked
    r = post(b, "zillow", f"conn-john-{b.s}", json_body=realtor_lead("y"))
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert count_intakes(org["account"]) == before


@pytest.mark.parametrize(
    ("fmt", "body", "field"),
    [
        ("zillow", {"role": "buyer"}, "lead_id"),
        ("zillow", {"lead_id": "1", "contact": {"first_name": "No Way"}}, "body"),
        ("zillow", {"lead_id": "1", "contact": {"email": "nope"}}, "contact.email"),
        (
            "realtor_com",
            {"lead_id": "1", "contact": {"email": "a@example.com"}, "property": {"list_price": -5}},
            "property.list_price",
        ),
    ],
)
def test_a_bad_provider_payload_is_422_naming_the_field(
    acme: Brokerage, fmt: str, body: dict[str, Any], field: str
) -> None:
    before = count_intakes(acme.org["account"])
    r = post(acme, fmt, f"conn-john-{acme.s}", json_body=body)
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["errors"]], r.json()
    assert count_intakes(acme.org["account"]) == before


def test_hotpads_without_email_is_422_naming_email(acme: Brokerage) -> None:
    r = post(acme, "hotpads", f"conn-john-{acme.s}", form="listingId=HP-2")
    assert r.status_code == 422
    assert "email" in [e["field"] for e in r.json()["errors"]]


@pytest.mark.parametrize("nesting", ['{"a":' * 5000 + "1" + "}" * 5000, "[" * 5000 + "]" * 5000])
def test_a_deeply_nested_provider_body_is_422_not_a_server_error(acme: Brokerage, nesting: str) -> None:
    before = count_intakes(acme.org["account"])
    r = httpx.post(
        f"{acme.base}/v1/intake/providers/realtor_com",
        content=nesting,
        headers={"X-Api-Key": f"conn-john-{acme.s}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 422, r.text
    assert r.json()["errors"] == [{"field": "body", "message": "nested too deeply"}]
    assert count_intakes(acme.org["account"]) == before


@pytest.mark.parametrize(
    "form", ["listingId=HP-9&email=nul%40example.com&\x00=", "listingId=HP-9&email=nul%40example.com&x\x00y"]
)
def test_a_nul_byte_in_a_hotpads_form_is_422_even_where_the_parser_drops_it(acme: Brokerage, form: str) -> None:
    before = count_intakes(acme.org["account"])
    r = post(acme, "hotpads", f"conn-john-{acme.s}", form=form)
    assert r.status_code == 422, r.text
    assert r.json()["errors"] == [{"field": "body", "message": "contains a NUL character"}]
    assert count_intakes(acme.org["account"]) == before
