"""A worker keeps each account's organisation between intakes (models.orgsnapshot): an org change made
while it runs reaches its next intake, a registration's or a text's. One worker process with one pool
child of its own, kept for the whole module, processes both intakes of every test, so the second one
meets what the first one left in that process's cache."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import apply, delete_broker_queues
from tests.integration.test_sms_inbound import Texting, fresh_number, outbox_for, texting_org
from tests.support.client import Brokerage
from tests.support.orgs import brokerage
from tests.support.processes import api_server, celery_workers

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lone_worker(pipeline_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An API and a single worker process (one child) on queues of their own; the API's base URL."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    env = {**pipeline_env, "LEADRELAY_QUEUE_PREFIX": prefix}
    logdir: Path = tmp_path_factory.mktemp("lone-worker")
    try:
        with celery_workers(env, logdir, count=1, concurrency=1), api_server(env, logdir / "api.log") as base:
            yield base
    finally:
        delete_broker_queues(prefix)


@pytest.fixture
def applied(lone_worker: str) -> Iterator[Any]:
    """Apply an org file and give its account, reached through the lone worker's API."""
    made: list[Brokerage] = []

    def make(org: dict[str, Any]) -> Brokerage:
        made.append(Brokerage(lone_worker, apply(org)))
        return made[-1]

    yield make
    for b in made:
        b.site.close()


def routed_org(**downtown_rule: Any) -> dict[str, Any]:
    """The test brokerage with one downtown rule (``agents: [jill]`` unless told otherwise) and one more
    domain, ``moved-S.test``, on the downtown office."""
    org = brokerage()
    s = str(org["account"]).removeprefix("acct-")
    downtown = next(e for e in org["entities"] if e["id"] == "downtown")
    downtown["domains"].append(f"moved-{s}.test")
    rule = {"name": "Jill only", "agents": ["jill"], **downtown_rule}
    org["routing"] = [r for r in org["routing"] if r["entity"] != "downtown"]
    org["routing"].append({"entity": "downtown", "rules": [rule]})
    return org


def entity(org: dict[str, Any], slug: str) -> dict[str, Any]:
    return next(e for e in org["entities"] if e["id"] == slug)  # type: ignore[no-any-return]


def assigned(b: Brokerage, site: str, email: str, as_user: str = "olivia") -> dict[str, Any]:
    intake = b.register_and_wait(site, email)
    assert intake["status"] == "done", intake
    return b.lead(intake["lead_id"], as_user=as_user)


def test_a_rule_changed_by_org_apply_routes_the_next_registration(applied: Any) -> None:
    org = routed_org()
    b = applied(org)
    assert assigned(b, "downtown", "first@example.com")["assigned_agent"]["id"] == "jill"
    org["routing"][-1]["rules"] = [{"name": "Bob only", "agents": ["bob"]}]  # the same rule row, updated
    apply(org)
    assert assigned(b, "downtown", "second@example.com")["assigned_agent"]["id"] == "bob"


def test_a_rule_added_by_org_apply_routes_the_next_registration(applied: Any) -> None:
    org = routed_org()
    b = applied(org)
    assert assigned(b, "downtown", "first@example.com")["assigned_agent"]["id"] == "jill"
    rules = org["routing"][-1]["rules"]
    org["routing"][-1]["rules"] = [{"name": "Bob first", "agents": ["bob"]}, *rules]
    apply(org)
    assert assigned(b, "downtown", "second@example.com")["assigned_agent"]["id"] == "bob"


def test_an_agent_deactivated_by_org_apply_gets_no_more_leads(applied: Any) -> None:
    org = routed_org()
    b = applied(org)
    assert assigned(b, "downtown", "first@example.com")["assigned_agent"]["id"] == "jill"
    entity(org, "jill")["active"] = False
    apply(org)
    lead = assigned(b, "downtown", "second@example.com")
    assert (lead["assigned_agent"] or {}).get("id") != "jill"
    routed = [e for e in b.timeline(lead["id"]) if e["kind"] == "routed"]
    assert {"agent": "jill", "reason": "inactive"} in routed[-1]["data"]["skipped"]


def test_a_domain_moved_by_org_apply_decides_the_next_owner(applied: Any) -> None:
    org = routed_org()
    b = applied(org)
    moved = f"moved-{b.s}.test"
    first = assigned(b, moved, "first@example.com")
    assert (first["owner"]["id"], first["assigned_agent"]["id"]) == ("co", "jill")  # O3: the office's rules
    entity(org, "downtown")["domains"].remove(moved)
    entity(org, "john")["domains"].append(moved)
    apply(org)
    second = assigned(b, moved, "second@example.com")
    assert (second["owner"]["id"], second["assigned_agent"]["id"]) == ("john", "john")  # O2: now john's site


def test_an_agent_who_left_the_team_gets_none_of_its_next_leads(applied: Any) -> None:
    org = brokerage()
    entity(org, "tara")["paused"] = True  # john is then the one eligible agent connected to the team
    org["routing"].append({"entity": "sunrise", "rules": [{"name": "Sunrise", "agents": "connected"}]})
    b = applied(org)
    assert assigned(b, "sunrise", "first@example.com", as_user="tara")["assigned_agent"]["id"] == "john"
    with b.user("john") as john:
        left = john.post("/v1/teams/sunrise/members/john/leave")
        assert left.status_code == 200, left.text
    lead = assigned(b, "sunrise", "second@example.com", as_user="tara")  # V1: the team's admin sees its pond
    assert lead["owner"]["id"] == "sunrise"
    assert (lead["assigned_agent"] or {}).get("id") != "john"


# --- texts: the smart numbers and the agents' names and addresses are kept too --------------------------------


@pytest.fixture
def texting(lone_worker: str) -> Iterator[Any]:
    """Apply a texting org file (``test_sms_inbound.texting_org``) and give its account, reached through the
    lone worker's API, with its file (its smart numbers under ``_numbers``) to change and apply again."""
    made: list[Texting] = []

    def make() -> tuple[Texting, dict[str, Any]]:
        org = texting_org()
        numbers = org.pop("_numbers")
        t = Texting(lone_worker, apply(org))
        t.numbers = numbers
        made.append(t)
        return t, org

    yield make
    for t in made:
        t.site.close()


def test_a_smart_number_added_by_org_apply_takes_the_next_text(texting: Any) -> None:
    """The worker reads an inbound text's number from the organisation it keeps: a number added since it was
    loaded is known to the next text (not rejected as O9), and makes a lead of its own entity (O6)."""
    t, org = texting()
    first = t.text_in(fresh_number(), "Hi", to="co")  # loads the organisation in the worker
    assert t.lead(first["lead_id"])["owner"]["id"] == "co"
    added = fresh_number()
    entity(org, "bob")["smart_numbers"] = [added]
    apply(org)
    second = t.text_in(fresh_number(), "Hi Bob", to=added)
    assert (second["status"], t.lead(second["lead_id"])["owner"]["id"]) == ("done", "bob")


def test_a_smart_number_moved_by_org_apply_makes_the_next_lead_its_new_entitys(texting: Any) -> None:
    t, org = texting()
    number = t.numbers["downtown"]
    first = t.text_in(fresh_number(), "Hi", to=number)
    assert t.lead(first["lead_id"])["owner"]["id"] != "john"
    entity(org, "downtown")["smart_numbers"] = []
    entity(org, "john")["smart_numbers"] = [t.numbers["john"], number]
    apply(org)
    second = t.text_in(fresh_number(), "Hi again", to=number)
    assert t.lead(second["lead_id"])["owner"]["id"] == "john"


def test_an_agent_renamed_by_org_apply_is_named_and_mailed_as_now_by_the_next_text(texting: Any) -> None:
    t, org = texting()
    phone = fresh_number()
    lead_id = t.signup("co", "ren@example.com", phone)  # the company's rules: Jill takes all
    first = t.text_in(phone, "Hi")
    assert outbox_for(t.account_id, first["sid"])[0].to_address == "jill@co.test"
    entity(org, "jill").update(name="Jill Smith", email="jill.smith@co.test")
    apply(org)
    second = t.text_in(phone, "Hi again")
    assert outbox_for(t.account_id, second["sid"])[0].to_address == "jill.smith@co.test"
    [event] = [e for e in t.events(lead_id, "text_received") if e["data"]["provider_sid"] == second["sid"]]
    assert "for Jill Smith" in event["summary"]
