"""A worker keeps each account's organisation between intakes (models.orgsnapshot): an org change made
while it runs reaches its next intake. One worker process with one pool child of its own, kept for the
whole module, processes both registrations of every test, so the second one meets what the first one
left in that process's cache."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import apply, delete_broker_queues
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
