"""The permission matrix (tests/support/permission_matrix.py), row by row, through the HTTP API on
PostgreSQL: each row gets a fresh account with leads of the row's shape, makes its call as its
actor, and checks the status, the rule named in the refusal, and the effect."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from models.tables import Message, User
from models.uow import UnitOfWork
from tests.integration.conftest import apply
from tests.support.client import Brokerage
from tests.support.leads import lead_row, make_lead
from tests.support.orgs import brokerage
from tests.support.permission_matrix import CASES, SHAPES, Case, matrix_org


@pytest.fixture(scope="module")
def stranger(api: str) -> Iterator[Brokerage]:
    """Another account; its company admin is the row's "stranger"."""
    other = Brokerage(api, apply(brokerage()))
    yield other
    other.site.close()


def _lead(b: Brokerage, shape: str, case: Case, **extra: Any) -> str:
    owner, assignee, routed_via = SHAPES[shape]
    return make_lead(
        b.org["account"], owner=owner, assignee=assignee, routed_via=routed_via, shares=dict(case.shares), **extra
    )


def _call(case: Case, client: httpx.Client, lead: str, other: str | None) -> httpx.Response:
    body = dict(case.body)
    match case.op:
        case "view":
            return client.get(f"/v1/leads/{lead}")
        case "edit":
            return client.patch(f"/v1/leads/{lead}", json={"first_name": "Zed"})
        case "share":
            target = "tara" if case.actor == "bob" else "bob"
            return client.post(f"/v1/leads/{lead}/shares", json={"user_id": target, "permission": "view", **body})
        case "unshare":
            return client.delete(f"/v1/leads/{lead}/shares/tara")
        case "assign":
            return client.post(f"/v1/leads/{lead}/assign", json=body)
        case "pond":
            return client.post(f"/v1/leads/{lead}/assign", json={"pond": True})
        case "transfer":
            return client.post(f"/v1/leads/{lead}/transfer", json=body)
        case "archive":
            return client.post(f"/v1/leads/{lead}/archive")
        case "delete":
            return client.delete(f"/v1/leads/{lead}")
        case "unsubscribe":
            return client.post(f"/v1/leads/{lead}/unsubscribe", json={"channel": "email"})
        case "merge" | "preview":
            path = "/v1/leads/merge/preview" if case.op == "preview" else "/v1/leads/merge"
            return client.post(path, json={"primary_id": lead, "other_id": other, **body})
        case "text":
            return client.post(f"/v1/leads/{lead}/messages", json={"body": "Hello from the matrix"})
        case "export":
            return client.get("/v1/export.csv")
        case "leave":
            return client.post(f"/v1/teams/sunrise/members/{body['agent']}/leave")
    raise AssertionError(f"unknown operation {case.op}")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_permission_matrix(case: Case, api: str, stranger: Brokerage) -> None:
    org = matrix_org(duplication=case.duplication)
    texting: dict[str, Any] = {}
    if case.op == "text":
        # A number to send from (the company's serves every owner) and a phone to text.
        (company,) = [e for e in org["entities"] if e["id"] == "co"]
        company["smart_numbers"] = [_fictional_number()]
        texting["phone"] = _fictional_number()
    b = Brokerage(api, apply(org))
    try:
        lead = _lead(b, case.shape, case, **texting)
        other = _lead(b, case.other, case, first_name="Otto") if case.other else None
        if case.before == "john transfers it to sunrise":
            with b.user("john") as john:
                assert john.post(f"/v1/leads/{lead}/transfer", json={"to": "sunrise"}).status_code == 200
        before = lead_row(lead)
        with stranger.user("olivia") if case.actor == "stranger" else b.user(case.actor) as client:
            r = _call(case, client, lead, other)
            _check(case, r, b, lead, other, before)
    finally:
        b.site.close()


def _check(case: Case, r: httpx.Response, b: Brokerage, lead: str, other: str | None, before: Any) -> None:
    if case.op == "export":
        assert r.status_code == 200, r.text
        assert (lead in r.text) is (case.expect == "in export"), r.text
        return
    assert r.status_code == int(case.expect), r.text
    if r.status_code in (403, 409, 422):
        assert f"{case.detail_rule or case.rule}:" in r.json()["detail"], r.json()
        if case.op == "text":
            assert _texts_of(lead) == [], "a refused text was recorded"
        after = lead_row(lead)
        assert (after.owner_entity_id, after.assigned_agent_id, after.status) == (
            before.owner_entity_id,
            before.assigned_agent_id,
            before.status,
        ), "a refused operation changed the lead"
        return
    if r.status_code == 404:
        assert lead_row(lead).status == before.status
        return
    after = lead_row(lead)
    match case.rule, case.op:
        case "A4" | "A3", "assign" | "pond":
            assert after.owner_entity_id == before.owner_entity_id  # A4
            assert r.json()["in_pond"] is (case.op == "pond")
            if case.op == "assign":
                assert r.json()["assigned_agent"]["id"] == case.body["agent_id"]
        case "T6", _:
            assert r.json()["owner"]["id"] == case.body["to"]
            assert r.json()["assigned_agent"]["id"] == case.body["to"]
        case _, "transfer":
            assert r.json()["owner"]["id"] == case.body["to"]
        case _, "delete":
            assert after.status.value == "deleted"
            assert after.deleted_at is not None
            assert after.deleted_by_user_id is not None  # X4: the tombstone says who
            with b.user("olivia") as olivia:
                assert olivia.get(f"/v1/leads/{lead}").status_code == 404
        case _, "archive":
            assert after.status.value == "archived"
        case _, "unsubscribe":
            assert after.email_unsubscribed
            assert not after.sms_unsubscribed
        case _, "edit":
            assert after.first_name == "Zed"
        case _, "text":
            ((sent_as, sent_by),) = _texts_of(lead)
            assert sent_as == {"co": "Demo Realty", "john": "John Smith"}[SHAPES[case.shape][0]]  # the owner's name
            assert sent_by == case.actor  # the row keeps who really sent it
        case _, "share":
            assert any(s["user_id"] in ("bob", "tara") for s in r.json()["shares"])
        case _, "unshare":
            with b.user("olivia") as olivia:
                shares = olivia.get(f"/v1/leads/{lead}").json()["shares"]
            assert all(s["user_id"] != "tara" for s in shares)
        case _, "merge":
            assert other is not None
            merged = lead_row(other)
            assert merged.status.value == "merged"
            assert merged.merged_into_id == uuid.UUID(lead)
            assert r.json()["owner"]["id"] == SHAPES[case.shape][0]  # M1: the primary's owner keeps it
            assert r.json()["first_name"] == "Ann"  # M4: the primary keeps its data
            if "assigned_agent_id" in case.body:
                assert r.json()["assigned_agent"]["id"] == case.body["assigned_agent_id"]
        case _, "preview":
            assert other is not None
            assert lead_row(other).status.value == "active"  # M7: nothing changed
            assert r.json()["owner"]["id"] == SHAPES[case.shape][0]
        case _, "leave":
            assert r.json()["rerouted"] == 1  # the team lead john worked went back through the team's rules
            assert lead_row(lead).assigned_agent_id != before.assigned_agent_id


def _fictional_number() -> str:
    """A fictional North American number no other test uses (smart numbers are unique across accounts)."""
    return f"+1555{random.randint(2_000_000, 9_999_999)}"


def _texts_of(lead: str) -> list[tuple[str | None, str]]:
    """The outbound texts recorded for the lead: (sent as, the slug of who really sent it)."""
    with UnitOfWork() as uow:
        rows = uow.session.execute(
            select(Message.sent_as, User.slug)
            .join(User, User.id == Message.sent_by_user_id)
            .where(Message.lead_id == uuid.UUID(lead), Message.direction == "outbound")
        ).all()
        return [(sent_as, slug) for sent_as, slug in rows]
