"""Who may act on a lead, through the real API and workers: an agent the org file sets inactive (or
leaves out) loses its token at once and gets it back when set active again; a bulk job is read by
the user who asked for it and the company admins, nobody else of the account."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import httpx
import pytest

from tests.integration.conftest import apply
from tests.support.client import Brokerage
from tests.support.leads import lead_row, make_lead
from tests.support.processes import wait_for

pytestmark = pytest.mark.integration


def with_agent(org: dict[str, Any], agent: str, **changes: Any) -> dict[str, Any]:
    """The org file with one agent's entry changed (``active: false``, say)."""
    changed = copy.deepcopy(org)
    for entity in changed["entities"]:
        if entity["id"] == agent:
            entity.update(changes)
    return changed


def user_token_requests(lead: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    """One request of every kind a user token makes on a lead: read, list, export, text, transfer, bulk."""
    return [
        ("GET", "/v1/leads", None),
        ("GET", f"/v1/leads/{lead}", None),
        ("GET", f"/v1/leads/{lead}/timeline", None),
        ("GET", "/v1/export.csv", None),
        ("POST", f"/v1/leads/{lead}/messages", {"body": "Still here"}),
        ("PATCH", f"/v1/leads/{lead}", {"first_name": "Gone"}),
        ("POST", f"/v1/leads/{lead}/transfer", {"to": "jill"}),
        ("POST", f"/v1/leads/{lead}/shares", {"user_id": "bob", "permission": "edit"}),
        ("POST", "/v1/leads/bulk", {"action": "archive", "lead_ids": [lead]}),
    ]


def test_an_agent_set_inactive_is_refused_at_once_and_set_active_again_works_again(
    brokerage_factory: Any,
) -> None:
    b: Brokerage = brokerage_factory()
    own = make_lead(b.org["account"], owner="john", assignee="john", first_name="Own")
    company = make_lead(b.org["account"], owner="co", assignee="john", routed_via="downtown")
    placed = {lead: (lead_row(lead).owner_entity_id, lead_row(lead).assigned_agent_id) for lead in (own, company)}
    with b.user("john") as john:
        assert john.get(f"/v1/leads/{own}").status_code == 200

        apply(with_agent(b.org, "john", active=False))
        for method, path, body in user_token_requests(own):
            r = john.request(method, path, json=body)
            assert r.status_code == 401, (method, path, r.text)
            assert r.headers["content-type"] == "application/problem+json"
        # Its leads stay where they were: deactivating reassigns nothing, and the refused edit changed nothing.
        assert {lead: (lead_row(lead).owner_entity_id, lead_row(lead).assigned_agent_id) for lead in placed} == placed
        assert lead_row(own).first_name == "Own"
        # Routing skips it: the downtown round robin (john, jill, bob) goes to the others.
        for i in range(3):
            intake = b.register_and_wait("downtown", f"inactive-{i}-{uuid.uuid4().hex[:6]}@example.com")
            assert b.lead(intake["lead_id"])["assigned_agent"]["id"] in ("jill", "bob")

        apply(b.org)  # active again, with the same token
        assert john.get(f"/v1/leads/{own}").status_code == 200
        assert own in john.get("/v1/export.csv").text


def test_an_agent_left_out_of_the_file_loses_its_token(brokerage_factory: Any) -> None:
    b: Brokerage = brokerage_factory()
    own = make_lead(b.org["account"], owner="jill", assignee="jill")
    without = copy.deepcopy(b.org)
    without["entities"] = [e for e in without["entities"] if e["id"] != "jill"]
    without["users"] = [u for u in without["users"] if u["id"] != "jill"]
    for rules in without["routing"]:
        for rule in rules["rules"]:
            if isinstance(rule.get("agents"), list):
                rule["agents"] = [a for a in rule["agents"] if a != "jill"]
    with b.user("jill") as jill:
        assert jill.get(f"/v1/leads/{own}").status_code == 200
        apply(without)
        for method, path, body in user_token_requests(own):
            assert jill.request(method, path, json=body).status_code == 401, (method, path)
        apply(b.org)
        assert jill.get(f"/v1/leads/{own}").status_code == 200


def _job(client: httpx.Client, lead_ids: list[str]) -> str:
    r = client.post("/v1/leads/bulk", json={"action": "archive", "lead_ids": lead_ids})
    assert r.status_code == 202, r.text
    job_id = str(r.json()["job_id"])

    def done() -> bool:
        return bool(client.get(f"/v1/jobs/{job_id}").json()["status"] in ("done", "failed"))

    wait_for(done, timeout=30, interval=0.1, what=f"job {job_id}")
    return job_id


def test_a_bulk_job_is_read_by_its_creator_and_the_company_admins_only(acme: Brokerage) -> None:
    mine = [make_lead(acme.org["account"], owner="john", assignee="john") for _ in range(2)]
    hidden = make_lead(acme.org["account"], owner="jill", assignee="jill")
    with acme.user("john") as john:
        job = _job(john, [*mine, hidden])
        assert john.get(f"/v1/jobs/{job}").status_code == 200
    with acme.user("olivia") as olivia:  # the company's admin: the owner side of the whole account
        r = olivia.get(f"/v1/jobs/{job}")
        assert r.status_code == 200, r.text
        assert [f["lead_id"] for f in r.json()["failed"]] == [hidden]
    # An office admin (john's office), a team admin (john's team) and another agent: no such job.
    for other in ("oscar", "tara", "jill", "bob"):
        with acme.user(other) as c:
            r = c.get(f"/v1/jobs/{job}")
            assert r.status_code == 404, (other, r.text)
            assert hidden not in r.text
    # A team admin's own job is its own to read.
    team_lead = make_lead(acme.org["account"], owner="sunrise", assignee="john", routed_via="sunrise")
    with acme.user("tara") as tara:
        own_job = _job(tara, [team_lead])
        assert tara.get(f"/v1/jobs/{own_job}").status_code == 200
    with acme.user("john") as john:
        assert john.get(f"/v1/jobs/{own_job}").status_code == 404
