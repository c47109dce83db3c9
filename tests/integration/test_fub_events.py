"""POST /v1/events, Follow Up Boss's Events API: Basic auth with the connection key, the connection
decides the owner (O4, O5), views and saves are activity (D7), accepted means kept (202 + status_url)."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from models.tables import Intake, IntakeSource, SiteActivity
from models.uow import UnitOfWork
from tests.integration.conftest import apply
from tests.integration.test_pipeline import count_intakes, leads_with_email
from tests.support.client import Brokerage
from tests.support.orgs import brokerage
from tests.support.processes import wait_for

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REGISTRATION = json.loads((FIXTURES / "fub_event_registration.json").read_text())
VIEWED = json.loads((FIXTURES / "fub_event_viewed_property.json").read_text())


def basic(key: str, password: str = "") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:{password}".encode()).decode()}


def post_event(
    b: Brokerage, body: dict[str, Any], *, key: str | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    auth = basic(key if key is not None else f"conn-john-{b.s}")
    return httpx.post(f"{b.base}/v1/events", json=body, headers={**auth, **(headers or {})}, timeout=30)


def follow(r: httpx.Response, key: str) -> dict[str, Any]:
    """Follow the 202's status_url with the connection key, as a Follow Up Boss sender would, until final."""
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["status"] == "accepted"
    assert r.headers["Location"] == accepted["status_url"]
    result: dict[str, Any] = {}

    def final() -> bool:
        got = httpx.get(accepted["status_url"], headers={"X-Api-Key": key}, timeout=30)
        assert got.status_code == 200, got.text
        result.update(got.json())
        return result["status"] in ("done", "rejected", "dead")

    wait_for(final, timeout=60, interval=0.05, what=f"intake {accepted['intake_id']}")
    return result


def fub(base: dict[str, Any], email: str | None = None, **changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(base)
    body.update(changes)
    if email is not None:
        body["person"]["emails"] = [{"value": email, "type": "home"}]
    return body


def test_O5_a_registration_through_an_agent_connection_is_owned_and_assigned_by_the_agent(acme: Brokerage) -> None:
    key = f"conn-john-{acme.s}"
    intake = follow(post_event(acme, REGISTRATION, key=key), key)
    assert intake["status"] == "done"
    lead = acme.lead(intake["lead_id"], as_user="john")
    assert lead["owner"] == {"id": "john", "kind": "agent", "name": "John Smith"}
    assert lead["assigned_agent"] == {"id": "john", "name": "John Smith"}
    assert (lead["email"], lead["phone"]) == ("Rosa.Delgado@example.com", "+15550103344")
    assert (lead["first_name"], lead["last_name"]) == ("Rosa", "Delgado")
    assert lead["tags"] == ["Buyer", "Springfield"]
    assert lead["source"] == {"kind": "provider", "detail": "Zillow: Registration"}
    created, routed = acme.timeline(intake["lead_id"], as_user="john")[:2]
    assert created["data"]["rule"] == "O5"
    assert created["at"].startswith("2026-11-21T18:02:11")  # occurredAt
    assert routed["data"]["agent"] == "john"


def test_O4_a_team_connection_makes_a_team_lead_routed_by_the_team(acme: Brokerage) -> None:
    key = f"conn-sunrise-{acme.s}"
    intake = follow(post_event(acme, fub(REGISTRATION, "tess@example.com", type="Property Inquiry"), key=key), key)
    lead = acme.lead(intake["lead_id"], as_user="tara")
    assert lead["owner"] == {"id": "sunrise", "kind": "team", "name": "Sunrise Team"}
    assert lead["assigned_agent"]["id"] == "tara"  # no team rule: the team's admin (O4)
    assert lead["source"]["detail"] == "Zillow: Property Inquiry"
    assert acme.timeline(intake["lead_id"], as_user="tara")[0]["data"]["rule"] == "O4"


def test_O5_a_body_naming_another_agent_changes_nothing(acme: Brokerage) -> None:
    body = fub(REGISTRATION, "named@example.com")
    body["person"] |= {"assignedTo": "Jill Jones", "assignedUserId": 2, "assignedLenderName": "Bob Brown"}
    body["agent"] = {"id": "jill", "email": "jill@co.test"}
    key = f"conn-john-{acme.s}"
    intake = follow(post_event(acme, body, key=key), key)
    lead = acme.lead(intake["lead_id"], as_user="john")
    assert lead["owner"]["id"] == "john"
    assert lead["assigned_agent"]["id"] == "john"
    with acme.user("jill") as jill:
        assert jill.get(f"/v1/leads/{intake['lead_id']}").status_code == 404


def test_the_password_is_ignored_as_follow_up_boss_does(acme: Brokerage) -> None:
    r = httpx.post(
        f"{acme.base}/v1/events",
        json=fub(REGISTRATION, "pw@example.com"),
        headers=basic(f"conn-john-{acme.s}", "whatever-the-client-sends"),
        timeout=30,
    )
    assert follow(r, f"conn-john-{acme.s}")["status"] == "done"


def test_D4_a_second_event_for_the_same_person_joins_the_lead(acme: Brokerage) -> None:
    key = f"conn-john-{acme.s}"
    first = follow(post_event(acme, fub(REGISTRATION, "again@example.com"), key=key), key)
    second = follow(post_event(acme, fub(REGISTRATION, "AGAIN@example.com", type="Property Inquiry"), key=key), key)
    assert second["lead_id"] == first["lead_id"]
    assert len(leads_with_email(acme, "again@example.com")) == 1
    signup = [e for e in acme.timeline(first["lead_id"]) if e["kind"] == "signup"]
    assert signup[0]["data"]["rule"] == "D4"
    assert signup[0]["summary"] == "Registered again on Zillow: Property Inquiry"


def count_event_intakes(account_slug: str) -> int:
    with UnitOfWork() as uow:
        account = uow.orgs.account_by_slug(account_slug)
        assert account is not None
        return len(
            uow.session.execute(
                select(Intake.id).where(Intake.account_id == account.id, Intake.source == IntakeSource.EVENTS)
            ).all()
        )


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param({"Authorization": "Bearer conn-john-{s}"}, id="wrong-scheme"),
        pytest.param({"X-Api-Key": "conn-john-{s}"}, id="x-api-key-is-not-basic"),
        pytest.param({"Authorization": "Basic not base64!"}, id="malformed"),
        pytest.param({"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}, id="no-colon"),
        pytest.param(basic(""), id="empty-user"),
        pytest.param(basic("no-such-key"), id="unknown-key"),
        pytest.param(basic("key-{s}"), id="intake-key-is-not-a-connection"),
    ],
)
def test_basic_auth_failures_are_401_with_a_challenge_and_store_nothing(
    acme: Brokerage, headers: dict[str, str]
) -> None:
    before = count_intakes(acme.org["account"])
    sent = {k: v.replace("{s}", acme.s) for k, v in headers.items()}
    r = httpx.post(f"{acme.base}/v1/events", json=REGISTRATION, headers=sent, timeout=30)
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["WWW-Authenticate"] == 'Basic realm="leadrelay"'
    assert count_intakes(acme.org["account"]) == before


def test_a_revoked_connection_key_is_401_and_stores_nothing(brokerage_factory: Any) -> None:
    org = brokerage()
    b = brokerage_factory(org=org)
    key = f"conn-john-{b.s}"
    follow(post_event(b, fub(REGISTRATION, "before@example.com"), key=key), key)  # the key worked
    org["api_connections"] = [c for c in org["api_connections"] if c["id"] != "zillow-john"]
    apply(org)  # revoked
    before = count_intakes(org["account"])
    r = post_event(b, fub(REGISTRATION, "after@example.com"), key=key)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Basic realm="leadrelay"'
    assert count_intakes(org["account"]) == before


def test_D7_viewed_and_saved_property_are_activity_on_the_existing_lead_not_new_leads(acme: Brokerage) -> None:
    key = f"conn-john-{acme.s}"
    lead_id = follow(post_event(acme, REGISTRATION, key=key), key)["lead_id"]
    viewed = follow(post_event(acme, VIEWED, key=key), key)
    saved = follow(post_event(acme, fub(VIEWED, "ROSA.delgado@example.com ", type="Saved Property"), key=key), key)
    assert viewed["status"] == saved["status"] == "done"
    assert viewed["lead_id"] == saved["lead_id"] == lead_id
    assert len(leads_with_email(acme, "rosa.delgado@example.com")) == 1
    events = {e["kind"]: e for e in acme.timeline(lead_id, as_user="john")}
    view = events["property_view"]
    assert view["summary"] == "Viewed 12 Oak St, Springfield, IL 62704 (MLS MLS-88031)"
    assert view["at"].startswith("2026-11-22T09:15:40")
    assert view["data"]["rule"] == "D7"
    assert view["data"]["listing"]["mls_id"] == "MLS-88031"
    assert view["data"]["page_url"] == VIEWED["pageUrl"]
    assert view["data"]["source"] == "Zillow: Viewed Property"
    assert events["property_save"]["summary"].startswith("Saved 12 Oak St")


def test_D7_activity_of_an_unknown_person_makes_no_lead_and_joins_the_lead_made_later(acme: Brokerage) -> None:
    key = f"conn-john-{acme.s}"
    viewed = follow(post_event(acme, fub(VIEWED, "later@example.com"), key=key), key)
    assert viewed["status"] == "done"
    assert viewed["lead_id"] is None
    assert "anonymous activity" in viewed["reason"]
    assert leads_with_email(acme, "later@example.com") == []
    lead_id = follow(post_event(acme, fub(REGISTRATION, "later@example.com"), key=key), key)["lead_id"]
    before_signup = [e for e in acme.timeline(lead_id, as_user="john") if e["kind"] == "property_view"]
    assert len(before_signup) == 1
    assert before_signup[0]["data"]["recorded_before_signup"] is True
    assert before_signup[0]["at"].startswith("2026-11-22T09:15:40")


def test_D7_activity_through_another_owners_connection_does_not_land_on_the_agents_lead(acme: Brokerage) -> None:
    john, team = f"conn-john-{acme.s}", f"conn-sunrise-{acme.s}"
    johns_lead = follow(post_event(acme, REGISTRATION, key=john), john)["lead_id"]
    viewed = follow(post_event(acme, VIEWED, key=team), team)
    assert viewed["lead_id"] is None  # the team has no lead for Rosa: kept anonymous under the team
    assert [e for e in acme.timeline(johns_lead) if e["kind"] == "property_view"] == []
    with UnitOfWork() as uow:
        row = uow.leads.site_activity_of(uuid.UUID(viewed["id"]))
        assert row is not None
        assert uow.orgs.entity(row.owner_entity_id).slug == "sunrise"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"person": {"emails": [{"value": "not-an-email"}]}}, "person.emails[0].value"),
        ({"person": {"emails": [{"value": "ok@example.com"}], "phones": [{"value": "12"}]}}, "person.phones[0].value"),
        ({"person": {"firstName": "Nobody"}}, "person"),
        ({"type": None}, "type"),
        ({"property": {"price": -1}}, "property.price"),
    ],
)
def test_a_bad_event_is_422_naming_the_field_and_stores_nothing(
    acme: Brokerage, change: dict[str, Any], field: str
) -> None:
    before = count_intakes(acme.org["account"])
    r = post_event(acme, fub(REGISTRATION, **change))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in r.json()["errors"]], r.json()
    assert count_intakes(acme.org["account"]) == before


def test_the_same_idempotency_key_answers_with_the_first_intake_and_makes_one_lead(acme: Brokerage) -> None:
    headers = {"Idempotency-Key": f"fub-{uuid.uuid4()}"}
    first = post_event(acme, fub(REGISTRATION, "idem@example.com"), headers=headers)
    second = post_event(acme, fub(REGISTRATION, "idem@example.com"), headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["intake_id"] == second.json()["intake_id"]
    assert count_event_intakes(acme.org["account"]) == 1
    follow(first, f"conn-john-{acme.s}")
    assert len(leads_with_email(acme, "idem@example.com")) == 1
    # Without the header, the same body is a second event (FUB sends no key of its own): it joins the lead (D4).
    follow(post_event(acme, fub(REGISTRATION, "idem@example.com")), f"conn-john-{acme.s}")
    assert len(leads_with_email(acme, "idem@example.com")) == 1
    assert count_event_intakes(acme.org["account"]) == 2


def test_the_raw_body_is_kept_verbatim_with_unknown_fields(acme: Brokerage) -> None:
    body = fub(VIEWED, "raw@example.com", customField={"nested": [1, 2]})
    r = post_event(acme, body)
    follow(r, f"conn-john-{acme.s}")
    with UnitOfWork() as uow:
        intake = uow.intakes.get(uuid.UUID(r.json()["intake_id"]))
        assert intake is not None
        assert json.loads(intake.raw_body) == body
        assert intake.payload["event_type"] == "Viewed Property"
        assert intake.api_connection_id is not None
        rows = uow.session.execute(select(SiteActivity).where(SiteActivity.intake_id == intake.id)).scalars().all()
        assert [row.kind for row in rows] == ["property_view"]


def test_a_zip_rule_routes_an_event_whose_sender_spells_the_zip_property_zip(brokerage_factory: Any) -> None:
    org = brokerage()
    org["routing"].append(
        {
            "entity": "sunrise",
            "rules": [
                {"name": "Springfield 62711", "when": {"zips": ["62711"]}, "agents": ["john"]},
                {"name": "Everyone else", "agents": ["tara"]},
            ],
        }
    )
    b = brokerage_factory(org=org)
    key = f"conn-sunrise-{b.s}"
    body = fub(REGISTRATION, "zip-spelling@example.com")
    del body["property"]["code"]
    body["property"]["zip"] = "62711"  # as the follow-up-boss package on PyPI sends it
    r = post_event(b, body, key=key)
    intake = follow(r, key)
    assert intake["status"] == "done", intake
    lead = b.lead(intake["lead_id"], as_user="tara")
    assert lead["assigned_agent"]["id"] == "john"
    routed = [e for e in b.timeline(intake["lead_id"], as_user="tara") if e["kind"] == "routed"]
    assert routed[0]["data"]["rule"] == "Springfield 62711", routed
    with UnitOfWork() as uow:
        kept = uow.intakes.get(uuid.UUID(r.json()["intake_id"]))
        assert kept is not None
        assert json.loads(kept.raw_body)["property"]["zip"] == "62711"  # the body stays as it was sent
