"""Outbound webhooks' rules (rules/webhooks.py) and the org file's ``webhooks`` section."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from typing import Any

import pytest

from models.orgspec import OrgFileError, parse_org
from rules.webhooks import (
    EVENT_TYPES,
    RETRY_SECONDS,
    TIMELINE_EVENTS,
    LeadView,
    address,
    body,
    excerpt,
    message_id,
    outcome_of,
    retry_wait,
    subscriptions,
    timeline_event,
)

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
AT = dt.datetime(2026, 12, 5, 9, 30, tzinfo=dt.UTC)
LEAD = LeadView(uuid.uuid4(), "active", "co", "jill", "Ann", "Lee", "ann@example.com", "+15555550100")


def test_every_timeline_kind_maps_to_a_documented_event() -> None:
    assert set(TIMELINE_EVENTS.values()) <= set(EVENT_TYPES)


def test_the_retry_schedule_is_about_a_day_jittered_upwards_then_spent() -> None:
    assert 20 * 3600 <= sum(RETRY_SECONDS) <= 30 * 3600
    assert retry_wait(1, rand=lambda: 0.0) == 5
    assert retry_wait(1, rand=lambda: 1.0) == pytest.approx(6.0)
    assert retry_wait(2, rand=lambda: 0.5) == pytest.approx(330.0)
    assert retry_wait(len(RETRY_SECONDS), rand=lambda: 0.0) == RETRY_SECONDS[-1]
    assert retry_wait(len(RETRY_SECONDS) + 1) is None


def test_receivers_answers_2xx_delivers_410_disables_anything_else_retries() -> None:
    assert [outcome_of(s) for s in (200, 204, 301, 404, 410, 500)] == [
        "delivered",
        "delivered",
        "retry",
        "retry",
        "gone",
        "retry",
    ]


def test_subscriptions_star_means_every_type_and_events_are_addressed_to_each_endpoint_once() -> None:
    subs = subscriptions([(1, ["*"]), (2, ["lead.created"]), (3, ["text.received"])])
    assert subs.wants("lead.created") == (1, 2)
    assert subs.wants("intake.dead") == (1,)
    event = timeline_event("created", at=AT, summary="Registered", details={"rule": "O1"}, lead=LEAD)
    assert event is not None
    ids = iter([uuid.UUID(int=1), uuid.UUID(int=2)])
    deliveries = address([event], subs, new_id=lambda: next(ids))
    assert [(d.endpoint_id, d.event.type) for d in deliveries] == [(1, "lead.created"), (2, "lead.created")]
    assert not subscriptions([])


def test_a_timeline_entry_becomes_an_event_naming_the_lead_its_owner_assignee_and_the_rule() -> None:
    event = timeline_event(
        "routed", at=AT, summary="Routed by Everyone to jill", details={"rule": "Everyone"}, lead=LEAD
    )
    assert event is not None
    assert event.type == "lead.assigned"
    assert event.data["lead_id"] == str(LEAD.id)
    assert (event.data["owner"], event.data["assignee"]) == ("co", "jill")
    assert event.data["explanation"] == "Routed by Everyone to jill"
    assert event.data["lead"]["email"] == "ann@example.com"
    assert timeline_event("note", at=AT, summary="", details={}, lead=LEAD) is None


def test_a_deleted_leads_event_carries_no_contact_details() -> None:
    gone = LeadView(LEAD.id, "deleted", "co", None, "Ann", "Lee", "ann@example.com", "+15555550100")
    event = timeline_event("deleted", at=AT, summary="Deleted", details={"rule": "X1"}, lead=gone)
    assert event is not None
    assert event.data["lead"] == {}


def test_the_body_is_type_timestamp_data_with_the_version_and_the_id_is_stable() -> None:
    out = body("lead.created", AT, {"lead_id": "x"}, 42)
    assert out == {
        "type": "lead.created",
        "timestamp": "2026-12-05T09:30:00+00:00",
        "data": {"lead_id": "x", "version": 42},
    }
    assert "version" not in body("intake.dead", AT, {"intake_id": "x"}, 42)["data"]
    key = uuid.uuid4()
    assert message_id(key) == message_id(key) == f"msg_{key.hex}"


def test_only_a_short_printable_excerpt_of_an_answer_is_kept() -> None:
    assert excerpt("ok\x00\x1b[31m" + "x" * 1000) == ("ok  [31m" + "x" * 1000)[:200]


def webhook_org(**webhook: Any) -> dict[str, Any]:
    return {
        "account": "demo",
        "name": "Demo",
        "entities": [{"id": "co", "kind": "company", "name": "Co"}],
        "webhooks": [{"id": "crm", "url": "https://crm.example.com/in", "events": ["lead.created"], **webhook}],
    }


def test_an_org_file_webhook_with_a_secret_parses() -> None:
    spec = parse_org(webhook_org(secrets=[SECRET]))
    assert spec.webhooks[0].secrets[0].get_secret_value() == SECRET
    assert SECRET not in repr(spec)


@pytest.mark.parametrize(
    ("webhook", "error"),
    [
        ({"secrets": ["hunter2"]}, "webhooks[0].secrets[0]: a webhook secret starts with 'whsec_'"),
        ({"secrets": ["whsec_c2hvcnQ="]}, "webhooks[0].secrets[0]: a webhook secret holds 24 to 64 bytes"),
        ({}, "webhooks[0]: give secrets or secrets_env: every delivery is signed"),
        ({"secrets": [SECRET], "events": ["lead.create"]}, "did you mean 'lead.created'?"),
        ({"secrets": [SECRET], "url": "ftp://crm.example.com"}, "is not an https:// URL"),
        ({"secrets": [SECRET], "url": "https://user:pw@crm.example.com"}, "put no user or password in the URL"),
        (
            {"secrets_env": ["LEADRELAY_TEST_UNSET_WEBHOOK_SECRET"]},
            "environment variable 'LEADRELAY_TEST_UNSET_WEBHOOK_SECRET' is not set",
        ),
        ({"secrets": [SECRET], "retries": 3}, "webhooks[0].retries: unknown key"),
    ],
)
def test_an_org_file_webhook_mistake_is_reported_where_it_is(webhook: dict[str, Any], error: str) -> None:
    with pytest.raises(OrgFileError) as caught:
        parse_org(webhook_org(**webhook))
    assert any(error in line for line in caught.value.errors), caught.value.errors
    assert all("hunter2" not in line for line in caught.value.errors)


def test_two_webhooks_with_one_id_are_refused() -> None:
    data = webhook_org(secrets=[SECRET])
    data["webhooks"].append(dict(data["webhooks"][0]))
    with pytest.raises(OrgFileError) as caught:
        parse_org(data)
    assert "webhooks[1].id: duplicate id 'crm', first used at webhooks[0]" in caught.value.errors
