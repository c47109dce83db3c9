"""The registration pipeline end to end: real API server, real Celery workers, real PostgreSQL and Redis."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from models.tables import Intake, Lead, RoutingRule, TimelineEvent
from models.uow import UnitOfWork
from tests.integration.conftest import apply, broker_idle
from tests.support.client import Brokerage
from tests.support.orgs import brokerage
from tests.support.processes import ROOT, child_env, wait_for
from workers import intakes
from workers.tasks import process_intake

pytestmark = pytest.mark.integration


def leads_with_email(b: Brokerage, email: str) -> list[dict[str, Any]]:
    with b.user("olivia") as c:
        return list(c.get("/v1/leads", params={"email": email}).json()["items"])


def count_intakes(account_slug: str) -> int:
    with UnitOfWork() as uow:
        return uow.session.execute(
            select(func.count())
            .select_from(Intake)
            .where(Intake.account_id == uow.orgs.account_by_slug(account_slug).id)  # type: ignore[union-attr]
        ).scalar_one()


def test_O2_agent_site_registration_is_owned_and_assigned_by_the_agent(acme: Brokerage) -> None:
    intake = acme.register_and_wait("john", "ann@example.com", path="/squeeze/7", kind="squeeze_page")
    assert intake["status"] == "done"
    lead = acme.lead(intake["lead_id"], as_user="john")
    assert lead["owner"] == {"id": "john", "kind": "agent", "name": "John Smith"}
    assert lead["assigned_agent"] == {"id": "john", "name": "John Smith"}
    assert lead["source"] == {"kind": "squeeze_page", "detail": f"{acme.host('john')}/squeeze/7"}


def test_O3_company_site_is_company_owned_and_routed_by_the_company_rules(acme: Brokerage) -> None:
    intake = acme.register_and_wait("co", "ben@example.com", price_max=2_000_000)
    lead = acme.lead(intake["lead_id"])
    assert lead["owner"]["id"] == "co"
    assert lead["assigned_agent"]["id"] in {"john", "jill"}  # the Luxury rule's agents


def test_O3_office_site_is_company_owned_and_routed_by_the_office_rules(acme: Brokerage) -> None:
    intake = acme.register_and_wait("downtown", "cat@example.com")
    lead = acme.lead(intake["lead_id"], as_user="oscar")  # V1: the office admin sees leads routed through the office
    assert lead["owner"]["id"] == "co"
    assert lead["assigned_agent"]["id"] in {"john", "jill", "bob"}
    routed = [e for e in acme.timeline(intake["lead_id"]) if e["kind"] == "routed"]
    assert routed[0]["data"]["routing_entity"] == "downtown"
    assert routed[0]["data"]["rule"] == "Downtown round robin"


def test_O4_team_site_is_team_owned_and_goes_to_the_team_admin_without_team_rules(acme: Brokerage) -> None:
    intake = acme.register_and_wait("sunrise", "eve@example.com", kind="landing_page")
    lead = acme.lead(intake["lead_id"], as_user="tara")
    assert lead["owner"] == {"id": "sunrise", "kind": "team", "name": "Sunrise Team"}
    assert lead["assigned_agent"]["id"] == "tara"
    assert lead["in_pond"] is False


def test_O9_unknown_host_is_kept_and_rejected_with_a_reason_and_makes_no_lead(acme: Brokerage) -> None:
    intake = acme.register_and_wait(f"nobody-{acme.s}.example", "fay@example.com")
    assert intake["status"] == "rejected"
    assert intake["lead_id"] is None
    assert "O9" in intake["reason"]
    assert f"nobody-{acme.s}.example" in intake["reason"]
    assert leads_with_email(acme, "fay@example.com") == []


def test_D1_same_email_under_two_owners_is_two_leads(acme: Brokerage) -> None:
    a = acme.register_and_wait("co", "gus@example.com")
    b = acme.register_and_wait("john", "gus@example.com")
    assert a["lead_id"] != b["lead_id"]
    owners = sorted(lead["owner"]["id"] for lead in leads_with_email(acme, "gus@example.com"))
    assert owners == ["co", "john"]


def test_D2_company_page_and_agent_page_make_two_leads_even_when_both_go_to_the_same_agent(
    brokerage_factory: Any,
) -> None:
    org = brokerage()
    org["routing"][0]["rules"] = [{"name": "John takes all", "agents": ["john"]}]
    b = brokerage_factory(org=org)
    first = b.register_and_wait("co", "hal@example.com")
    second = b.register_and_wait("john", "hal@example.com")
    leads = leads_with_email(b, "hal@example.com")
    assert {first["lead_id"], second["lead_id"]} == {lead["id"] for lead in leads}
    assert [lead["assigned_agent"]["id"] for lead in leads] == ["john", "john"]


def test_D4_second_signup_for_the_same_unique_lead_adds_a_timeline_event_not_a_lead(acme: Brokerage) -> None:
    first = acme.register_and_wait("co", "ivy@example.com", path="/a")
    again = acme.register_and_wait("co", "  IVY@Example.com ", path="/b")
    assert again["status"] == "done"
    assert again["lead_id"] == first["lead_id"]
    assert len(leads_with_email(acme, "ivy@example.com")) == 1
    kinds = [e["kind"] for e in acme.timeline(first["lead_id"])]
    assert kinds == ["created", "routed", "signup"]


def test_D3_with_duplication_off_a_later_signup_joins_the_lead_and_keeps_its_owner(brokerage_factory: Any) -> None:
    b = brokerage_factory(duplication=False)
    first = b.register_and_wait("co", "jay@example.com")
    later = b.register_and_wait("john", "jay@example.com")
    assert later["lead_id"] == first["lead_id"]
    (lead,) = leads_with_email(b, "jay@example.com")
    assert lead["owner"]["id"] == "co"
    signup = [e for e in b.timeline(first["lead_id"]) if e["kind"] == "signup"]
    assert signup[0]["data"]["rule"] == "D3"


def test_D9_phone_only_leads_are_unique_on_phone_and_owner(acme: Brokerage) -> None:
    a = acme.register_and_wait("co", None, phone="(555) 010-2233")
    b = acme.register_and_wait("co", None, phone="+1 555 010 2233")
    assert a["lead_id"] == b["lead_id"]
    assert acme.lead(a["lead_id"])["phone"] == "+15550102233"


def test_A2_first_matching_rule_wins_and_unmatched_leads_fall_to_the_next_rule(acme: Brokerage) -> None:
    luxury = acme.register_and_wait("co", "kim@example.com", price_min=900_000, price_max=3_000_000)
    plain = acme.register_and_wait("co", "lou@example.com", price_max=200_000)
    luxury_routed = next(e for e in acme.timeline(luxury["lead_id"]) if e["kind"] == "routed")["data"]
    plain_routed = next(e for e in acme.timeline(plain["lead_id"]) if e["kind"] == "routed")["data"]
    assert luxury_routed["rule"] == "Luxury"
    assert plain_routed["rule"] == "Everyone"
    assert plain_routed["rules_not_matched"] == [{"rule": "Luxury", "failed": ["price_min"]}]


def test_A2_A7_paused_and_inactive_agents_are_skipped_and_the_timeline_says_why(brokerage_factory: Any) -> None:
    org = brokerage()
    for entity in org["entities"]:
        if entity["id"] == "john":
            entity["paused"] = True
        if entity["id"] == "jill":
            entity["active"] = False
    b = brokerage_factory(org=org)
    intake = b.register_and_wait("downtown", "max@example.com")
    assert b.lead(intake["lead_id"])["assigned_agent"]["id"] == "bob"
    routed = next(e for e in b.timeline(intake["lead_id"]) if e["kind"] == "routed")
    assert routed["data"]["rule"] == "Downtown round robin"
    assert {"agent": "john", "reason": "paused"} in routed["data"]["skipped"]
    assert {"agent": "jill", "reason": "inactive"} in routed["data"]["skipped"]
    assert "bob" in routed["summary"] or "Bob" in routed["summary"]


def test_A2_no_eligible_agent_leaves_the_lead_unassigned_with_the_reason(brokerage_factory: Any) -> None:
    org = brokerage()
    for entity in org["entities"]:
        if entity["kind"] == "agent":
            entity["active"] = False
    b = brokerage_factory(org=org)
    intake = b.register_and_wait("downtown", "ned@example.com")
    lead = b.lead(intake["lead_id"])
    assert lead["assigned_agent"] is None
    routed = next(e for e in b.timeline(intake["lead_id"]) if e["kind"] == "routed")
    assert routed["data"]["agent"] is None
    assert "no rule had an eligible agent" in routed["data"]["explanation"]


def test_idempotency_key_answers_with_the_first_intake_and_makes_one_lead(acme: Brokerage) -> None:
    key = {"Idempotency-Key": f"signup-{uuid.uuid4()}"}
    first = acme.register("co", "oli@example.com", headers=key)
    second = acme.register("co", "oli@example.com", headers=key)
    assert first.status_code == second.status_code == 202
    assert first.json()["intake_id"] == second.json()["intake_id"]
    acme.wait_done(first.json()["intake_id"])
    assert len(leads_with_email(acme, "oli@example.com")) == 1


def test_running_the_same_intake_twice_changes_nothing(acme: Brokerage, workers: Path) -> None:
    intake = acme.register_and_wait("co", "pat@example.com")
    lead_id = uuid.UUID(intake["lead_id"])

    def snapshot() -> tuple[int, int, int]:
        with UnitOfWork() as uow:
            account = uow.orgs.account_by_slug(acme.org["account"])
            assert account is not None
            events = uow.session.execute(
                select(func.count()).select_from(TimelineEvent).where(TimelineEvent.lead_id == lead_id)
            ).scalar_one()
            leads = uow.session.execute(
                select(func.count()).select_from(Lead).where(Lead.account_id == account.id)
            ).scalar_one()
            cursors = uow.session.execute(
                select(func.sum(RoutingRule.cursor)).where(RoutingRule.account_id == account.id)
            ).scalar_one()
            return events, leads, int(cursors)

    before = snapshot()
    with UnitOfWork() as uow:  # the service itself, as a redelivered task would run it
        outcome = intakes.process_intake(uow, uuid.UUID(intake["id"]))
    assert outcome.reason == "already processed"
    assert str(outcome.lead_id) == intake["lead_id"]
    sent = process_intake.apply_async(args=[intake["id"]])  # and a real redelivery through the broker
    logs = list(workers.glob("worker-*.log"))

    def consumed() -> bool:
        return broker_idle() and any(f"intake.process[{sent.id}] succeeded" in p.read_text() for p in logs)

    wait_for(consumed, timeout=30, what="the redelivered task to be consumed by a worker and acknowledged")
    assert snapshot() == before
    assert acme.site.get(f"/v1/intake/{intake['id']}").json()["lead_id"] == intake["lead_id"]


def test_an_unknown_intake_key_is_401_and_stores_nothing(acme: Brokerage) -> None:
    before = count_intakes(acme.org["account"])
    r = acme.site.post(
        "/v1/intake/registrations",
        json={"page_url": f"https://{acme.host('co')}/", "email": "q@example.com"},
        headers={"Authorization": "Bearer not-a-key"},
    )
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert count_intakes(acme.org["account"]) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "a@example.com"}, "page_url"),
        ({"page_url": "ftp://x.test/", "email": "a@example.com"}, "page_url"),
        ({"page_url": "https://x.test/", "email": "not-an-email"}, "email"),
        ({"page_url": "https://x.test/", "phone": "12"}, "phone"),
        ({"page_url": "https://x.test/"}, "body"),
        ({"page_url": "https://x.test/", "email": "a@example.com", "zip": "ABCDE"}, "zip"),
        ({"page_url": "https://x.test/", "email": "a@example.com", "kind": "billboard"}, "kind"),
    ],
)
def test_bad_input_is_422_naming_the_field_and_stores_nothing(
    acme: Brokerage, body: dict[str, Any], field: str
) -> None:
    before = count_intakes(acme.org["account"])
    r = acme.site.post("/v1/intake/registrations", json=body)
    assert r.status_code == 422
    problem = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in problem["errors"]], problem
    assert count_intakes(acme.org["account"]) == before


def test_V1_an_agent_cannot_see_a_lead_assigned_to_another_agent(brokerage_factory: Any) -> None:
    org = brokerage()
    org["routing"][0]["rules"] = [{"name": "Jill takes all", "agents": ["jill"]}]
    b = brokerage_factory(org=org)
    intake = b.register_and_wait("co", "rae@example.com")
    with b.user("john") as john:
        assert john.get(f"/v1/leads/{intake['lead_id']}").status_code == 404
        assert john.get(f"/v1/leads/{intake['lead_id']}/timeline").status_code == 404
        assert john.get("/v1/leads", params={"email": "rae@example.com"}).json()["items"] == []
    assert b.lead(intake["lead_id"], as_user="jill")["assigned_agent"]["id"] == "jill"
    assert b.lead(intake["lead_id"], as_user="olivia")["owner"]["id"] == "co"


def test_V4_another_account_sees_nothing(brokerage_factory: Any) -> None:
    a, other = brokerage_factory(), brokerage_factory()
    intake = a.register_and_wait("co", "sam@example.com")
    with other.user("olivia") as c:
        assert c.get(f"/v1/leads/{intake['lead_id']}").status_code == 404
    assert other.site.get(f"/v1/intake/{intake['id']}").status_code == 404


def test_simulate_explains_the_decision_and_writes_nothing(acme: Brokerage) -> None:
    sample = {"page_url": f"https://{acme.host('downtown')}/x", "email": "sim@example.com"}
    with acme.user("olivia") as c:
        first = c.post("/v1/routing/simulate", json=sample).json()
        second = c.post("/v1/routing/simulate", json=sample).json()
        assert c.get("/v1/leads", params={"email": "sim@example.com"}).json()["items"] == []
    assert first == second  # no cursor moved
    assert first["owner"]["id"] == "co"
    assert first["routing_entity"] == "downtown"
    assert first["rule"] == "Downtown round robin"
    real = acme.register_and_wait("downtown", "sim@example.com")
    assert acme.lead(real["lead_id"])["assigned_agent"]["id"] == first["agent"]["id"]
    with acme.user("john") as john:
        assert john.post("/v1/routing/simulate", json=sample).status_code == 403


def test_lead_list_is_paginated_with_a_cursor(acme: Brokerage) -> None:
    for i in range(5):
        acme.register_and_wait("co", f"page{i}@example.com")
    seen: list[str] = []
    with acme.user("olivia") as c:
        url_params: dict[str, Any] = {"limit": 2}
        while True:
            body = c.get("/v1/leads", params=url_params).json()
            seen += [lead["email"] for lead in body["items"]]
            if body["next"] is None:
                break
            url_params["cursor"] = body["next"]
    assert sorted(seen) == sorted(f"page{i}@example.com" for i in range(5))


def test_O9_a_rejected_intake_replays_into_a_lead_once_its_domain_is_registered(
    brokerage_factory: Any, pipeline_env: dict[str, str]
) -> None:
    org = brokerage()
    b = brokerage_factory(org=org)
    new_site = f"new-{b.s}.test"
    rejected = b.register_and_wait(new_site, "una@example.com")
    assert rejected["status"] == "rejected"
    org["entities"][0]["domains"].append(new_site)
    apply(org)
    replay = subprocess.run(
        [sys.executable, "-m", "leadrelay", "intake", "replay", "--status", "rejected"],
        env=child_env(pipeline_env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr
    replayed = b.wait_done(rejected["id"])
    assert replayed["status"] == "done"
    assert b.lead(replayed["lead_id"])["owner"]["id"] == "co"
