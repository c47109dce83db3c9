"""GET /v1/intake/registrations/candidates, the duplicate prompt (D5): the agents a person already
works with under other owners; choosing one logs the signup into that lead, not choosing makes a new one.

Decision: the page owner's own lead is not listed. Answering "none of these" records the signup on
it anyway (D4), so offering it would offer nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.integration.test_pipeline import leads_with_email
from tests.support.client import Brokerage
from tests.support.orgs import brokerage

pytestmark = pytest.mark.integration


def candidates(b: Brokerage, email: str, site: str, path: str = "/signup") -> httpx.Response:
    host = b.host(site) if site in ("co", "downtown", "sunrise", "john") else site
    return b.site.get(
        "/v1/intake/registrations/candidates", params={"email": email, "page_url": f"https://{host}{path}"}
    )


def items(b: Brokerage, email: str, site: str) -> list[dict[str, Any]]:
    r = candidates(b, email, site)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["next"] is None
    return list(body["items"])


@pytest.fixture
def three_leads(brokerage_factory: Any) -> tuple[Brokerage, dict[str, str]]:
    """Kim has a lead under john (his site), under the sunrise team (tara) and under the company (jill),
    made in that order, so the company's is the most recently active."""
    org = brokerage()
    org["routing"][0]["rules"] = [{"name": "Jill takes all", "agents": ["jill"]}]
    b = brokerage_factory(org=org)
    leads = {
        "john": b.register_and_wait("john", "kim@example.com", phone="+15550107788")["lead_id"],
        "sunrise": b.register_and_wait("sunrise", "kim@example.com")["lead_id"],
        "co": b.register_and_wait("co", "kim@example.com")["lead_id"],
    }
    return b, leads


def test_D5_candidates_are_the_agents_under_other_owners_newest_activity_first(
    three_leads: tuple[Brokerage, dict[str, str]],
) -> None:
    b, leads = three_leads
    assert items(b, " KIM@example.com", "co") == [
        {
            "lead_id": leads["sunrise"],
            "agent": {"id": "tara", "name": "Tara Team"},
            "owner": {"id": "sunrise", "kind": "team", "name": "Sunrise Team"},
        },
        {
            "lead_id": leads["john"],
            "agent": {"id": "john", "name": "John Smith"},
            "owner": {"id": "john", "kind": "agent", "name": "John Smith"},
        },
    ]
    # From john's site, the company's lead (assigned to jill) is the most recently active.
    assert [(c["owner"]["id"], c["agent"]["id"]) for c in items(b, "kim@example.com", "john")] == [
        ("co", "jill"),
        ("sunrise", "tara"),
    ]
    # New activity on john's lead moves it to the front.
    b.register_and_wait("john", "kim@example.com")
    assert [c["owner"]["id"] for c in items(b, "kim@example.com", "co")] == ["john", "sunrise"]


def test_D5_candidates_never_show_the_leads_email_or_phone(three_leads: tuple[Brokerage, dict[str, str]]) -> None:
    b, _ = three_leads
    text = candidates(b, "kim@example.com", "co").text
    assert "kim@" not in text.lower()
    assert "5550107788" not in text
    assert {key for c in items(b, "kim@example.com", "co") for key in c} == {"lead_id", "agent", "owner"}


def test_D5_an_office_page_is_the_company_site(three_leads: tuple[Brokerage, dict[str, str]]) -> None:
    b, _ = three_leads
    assert "co" not in [c["owner"]["id"] for c in items(b, "kim@example.com", "downtown")]


def test_D5_an_email_with_no_lead_elsewhere_has_no_candidates(three_leads: tuple[Brokerage, dict[str, str]]) -> None:
    b, _ = three_leads
    assert items(b, "nobody@example.com", "co") == []


def test_D5_choosing_a_candidate_records_the_signup_on_that_lead_and_makes_no_new_lead(
    three_leads: tuple[Brokerage, dict[str, str]],
) -> None:
    b, leads = three_leads
    before = len(leads_with_email(b, "kim@example.com"))
    chosen = items(b, "kim@example.com", "co")[1]["lead_id"]  # john's
    intake = b.register_and_wait("co", "kim@example.com", path="/signup", existing_lead_id=chosen)
    assert intake["status"] == "done"
    assert intake["lead_id"] == leads["john"]
    assert len(leads_with_email(b, "kim@example.com")) == before
    signup = [e for e in b.timeline(leads["john"], as_user="john") if e["kind"] == "signup"]
    assert signup[-1]["data"]["rule"] == "D5"
    assert "duplicate prompt" in signup[-1]["data"]["reason"]
    assert b.lead(leads["john"], as_user="john")["owner"]["id"] == "john"  # O7: the owner does not change


def test_D5_not_choosing_makes_a_new_lead_owned_by_the_sites_owner(brokerage_factory: Any) -> None:
    b = brokerage_factory()
    johns = b.register_and_wait("john", "lee@example.com")["lead_id"]
    offered = items(b, "lee@example.com", "co")
    assert [c["lead_id"] for c in offered] == [johns]
    intake = b.register_and_wait("co", "lee@example.com")  # "none of these"
    assert intake["lead_id"] != johns
    assert b.lead(intake["lead_id"])["owner"]["id"] == "co"
    assert sorted(lead["owner"]["id"] for lead in leads_with_email(b, "lee@example.com")) == ["co", "john"]
    # The company now has its own lead; the prompt from its site still offers john (the person may choose).
    assert [c["lead_id"] for c in items(b, "lee@example.com", "co")] == [johns]


def test_D5_an_existing_lead_id_of_another_person_is_not_a_choice(brokerage_factory: Any) -> None:
    b = brokerage_factory()
    someone_else = b.register_and_wait("john", "max@example.com")["lead_id"]
    intake = b.register_and_wait("co", "ned@example.com", existing_lead_id=someone_else)
    assert intake["lead_id"] != someone_else
    assert b.lead(intake["lead_id"])["owner"]["id"] == "co"


def test_D5_a_lead_with_no_assigned_agent_is_not_a_candidate(brokerage_factory: Any) -> None:
    org = brokerage()
    for entity in org["entities"]:
        if entity["kind"] == "agent":
            entity["active"] = False
    b = brokerage_factory(org=org)
    unassigned = b.register_and_wait("co", "ora@example.com")["lead_id"]
    assert b.lead(unassigned)["assigned_agent"] is None
    assert items(b, "ora@example.com", "john") == []


def test_D3_with_duplication_off_there_are_no_candidates(brokerage_factory: Any) -> None:
    b = brokerage_factory(duplication=False)
    b.register_and_wait("john", "pam@example.com")
    assert items(b, "pam@example.com", "co") == []


def test_O9_an_unknown_page_host_is_422_naming_page_url(acme: Brokerage) -> None:
    r = candidates(acme, "kim@example.com", f"nobody-{acme.s}.example")
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    (error,) = r.json()["errors"]
    assert error["field"] == "page_url"
    assert error["message"].startswith("O9")
    assert f"nobody-{acme.s}.example" in error["message"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"page_url": "https://x.test/"}, "email"),
        ({"page_url": "https://x.test/", "email": "not-an-email"}, "email"),
        ({"email": "a@example.com"}, "page_url"),
        ({"email": "a@example.com", "page_url": "mailto:x"}, "page_url"),
    ],
)
def test_a_bad_query_is_422_naming_the_field(acme: Brokerage, params: dict[str, str], field: str) -> None:
    r = acme.site.get("/v1/intake/registrations/candidates", params=params)
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["errors"]], r.json()


def test_an_unknown_intake_key_is_401(acme: Brokerage) -> None:
    r = httpx.get(
        f"{acme.base}/v1/intake/registrations/candidates",
        params={"email": "a@example.com", "page_url": f"https://{acme.host('co')}/"},
        headers={"Authorization": "Bearer not-a-key"},
        timeout=30,
    )
    assert r.status_code == 401
