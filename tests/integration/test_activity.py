"""POST /v1/intake/activity (D7): a view or save lands on the lead of the site's owner, whoever its
assignee; an unknown person's activity is kept anonymous and joins the lead a later signup makes."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from models.tables import IntakeStatus, Lead, SiteActivity, TimelineEvent
from models.uow import UnitOfWork
from tests.integration.test_pipeline import count_intakes, leads_with_email
from tests.support.client import Brokerage
from tests.support.orgs import brokerage
from workers import intakes, services

pytestmark = pytest.mark.integration

LISTING = {"mls_id": "123", "url": "https://listings.test/123", "address": "12 Oak St", "price": 450_000}


def post_activity(
    b: Brokerage,
    site: str,
    *,
    email: str | None = "ann@example.com",
    kind: str = "property_view",
    path: str = "/listing/123",
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> httpx.Response:
    host = b.host(site) if site in ("co", "downtown", "sunrise", "john") else site
    body: dict[str, Any] = {"page_url": f"https://{host}{path}", "kind": kind, **fields}
    if email is not None:
        body["email"] = email
    return b.site.post("/v1/intake/activity", json=body, headers=headers or {})


def activity_and_wait(b: Brokerage, site: str, **kwargs: Any) -> dict[str, Any]:
    r = post_activity(b, site, **kwargs)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "accepted"
    return b.wait_done(r.json()["intake_id"])


def events_of(b: Brokerage, lead_id: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in b.timeline(lead_id) if e["kind"] == kind]


def last_activity_at(lead_id: str) -> dt.datetime:
    with UnitOfWork() as uow:
        lead = uow.leads.get(uuid.UUID(lead_id))
        assert lead is not None
        return lead.last_activity_at


def site_activity(intake_id: str) -> SiteActivity | None:
    with UnitOfWork() as uow:
        row = uow.leads.site_activity_of(uuid.UUID(intake_id))
        if row is not None:
            uow.session.expunge(row)
        return row


def jill_takes_company_leads(b: Any) -> Brokerage:
    org = brokerage()
    org["routing"][0]["rules"] = [{"name": "Jill takes all", "agents": ["jill"]}]
    return b(org=org)  # type: ignore[no-any-return]


def test_D7_activity_on_the_company_site_lands_on_the_company_lead_whoever_is_assigned_not_the_agents_duplicate(
    brokerage_factory: Any,
) -> None:
    b = jill_takes_company_leads(brokerage_factory)
    company_lead = b.register_and_wait("co", "ann@example.com")["lead_id"]
    johns_lead = b.register_and_wait("john", "ann@example.com")["lead_id"]  # D1: a second lead, john's own
    assert b.lead(company_lead)["assigned_agent"]["id"] == "jill"
    before = last_activity_at(company_lead)

    at = "2030-01-02T03:04:05+00:00"
    intake = activity_and_wait(b, "co", email=" ANN@example.com", listing=LISTING, occurred_at=at)
    assert intake["status"] == "done"
    assert intake["lead_id"] == company_lead
    (view,) = events_of(b, company_lead, "property_view")
    assert view["summary"] == "Viewed 12 Oak St (MLS 123)"
    assert view["data"]["listing"] == LISTING
    assert view["data"]["page_url"] == f"https://{b.host('co')}/listing/123"
    assert view["data"]["rule"] == "D7"
    assert view["at"].startswith("2030-01-02T03:04:05")
    assert events_of(b, johns_lead, "property_view") == []
    assert last_activity_at(company_lead) > before
    assert last_activity_at(company_lead) == dt.datetime.fromisoformat(at)
    assert len(leads_with_email(b, "ann@example.com")) == 2  # activity made no lead

    # And the agent's own site: the agent's own lead, not the company's.
    saved = activity_and_wait(b, "john", email="ann@example.com", kind="property_save", listing=LISTING)
    assert saved["lead_id"] == johns_lead
    assert [e["summary"] for e in events_of(b, johns_lead, "property_save")] == ["Saved 12 Oak St (MLS 123)"]
    assert events_of(b, company_lead, "property_save") == []


def test_D7_an_office_page_is_the_company_site_and_old_activity_does_not_move_last_activity_back(
    acme: Brokerage,
) -> None:
    lead_id = acme.register_and_wait("co", "ola@example.com")["lead_id"]
    before = last_activity_at(lead_id)
    intake = activity_and_wait(
        acme, "downtown", email="ola@example.com", kind="page_view", path="/buy?x=1", occurred_at="2001-01-01T00:00:00Z"
    )
    assert intake["lead_id"] == lead_id  # O3: the office's site is the company's
    (page,) = events_of(acme, lead_id, "page_view")
    assert page["summary"] == f"Viewed page {acme.host('downtown')}/buy"
    assert last_activity_at(lead_id) == before


def test_D7_activity_by_lead_id_uses_that_leads_email_under_the_sites_owner(brokerage_factory: Any) -> None:
    b = jill_takes_company_leads(brokerage_factory)
    company_lead = b.register_and_wait("co", "bea@example.com")["lead_id"]
    johns_lead = b.register_and_wait("john", "bea@example.com")["lead_id"]
    # The site knows the person by john's lead; the page is the company's: the company's lead gets it.
    intake = activity_and_wait(b, "co", email=None, lead_id=johns_lead, listing=LISTING)
    assert intake["lead_id"] == company_lead
    assert len(events_of(b, company_lead, "property_view")) == 1
    assert events_of(b, johns_lead, "property_view") == []


def test_D7_a_lead_id_of_another_account_is_rejected_with_the_reason(brokerage_factory: Any) -> None:
    a, other = brokerage_factory(), brokerage_factory()
    foreign = other.register_and_wait("co", "cal@example.com")["lead_id"]
    intake = activity_and_wait(a, "co", email=None, lead_id=foreign)
    assert intake["status"] == "rejected"
    assert intake["lead_id"] is None
    assert f"lead_id {foreign} is not a lead of this account" in intake["reason"]
    assert events_of(other, foreign, "property_view") == []


def test_D7_activity_of_an_unknown_person_is_kept_anonymous_then_claimed_when_they_sign_up(acme: Brokerage) -> None:
    first = activity_and_wait(acme, "co", email="dee@example.com", listing=LISTING, occurred_at="2026-11-01T10:00:00Z")
    second = activity_and_wait(acme, "downtown", email="Dee@Example.com", kind="page_view", path="/about")
    elsewhere = activity_and_wait(acme, "john", email="dee@example.com", kind="property_save")
    for intake in (first, second, elsewhere):
        assert intake["status"] == "done"
        assert intake["lead_id"] is None
        assert "kept as anonymous activity" in intake["reason"]
    assert leads_with_email(acme, "dee@example.com") == []
    kept = site_activity(first["id"])
    assert kept is not None
    assert (kept.kind, kept.email_normalized, kept.lead_id, kept.listing) == (
        "property_view",
        "dee@example.com",
        None,
        LISTING,
    )

    lead_id = acme.register_and_wait("co", "dee@example.com")["lead_id"]
    timeline = acme.timeline(lead_id)
    claimed = [e for e in timeline if e["data"].get("recorded_before_signup")]
    assert [(e["kind"], e["summary"]) for e in claimed] == [
        ("property_view", "Viewed 12 Oak St (MLS 123) (before signup)"),
        ("page_view", f"Viewed page {acme.host('downtown')}/about (before signup)"),
    ]
    assert claimed[0]["at"].startswith("2026-11-01T10:00:00")  # the activity's own time
    assert claimed[0]["data"]["listing"] == LISTING
    assert str(lead_id) == str(site_activity(first["id"]).lead_id)  # type: ignore[union-attr]
    assert site_activity(elsewhere["id"]).lead_id is None  # type: ignore[union-attr]  # D1: john's, not the company's

    # John's own lead, made later, claims john's site activity.
    johns = acme.register_and_wait("john", "dee@example.com")["lead_id"]
    assert [e["kind"] for e in acme.timeline(johns, as_user="john") if e["data"].get("recorded_before_signup")] == [
        "property_save"
    ]
    # A second signup (D4) claims nothing more and repeats nothing.
    acme.register_and_wait("co", "dee@example.com")
    assert len([e for e in acme.timeline(lead_id) if e["data"].get("recorded_before_signup")]) == 2


def test_D3_with_duplication_off_the_accounts_lead_claims_every_owners_anonymous_activity(
    brokerage_factory: Any,
) -> None:
    b = brokerage_factory(duplication=False)
    on_john = activity_and_wait(b, "john", email="eli@example.com", kind="property_save", listing=LISTING)
    assert on_john["lead_id"] is None
    lead_id = b.register_and_wait("co", "eli@example.com")["lead_id"]
    claimed = [e for e in b.timeline(lead_id) if e["data"].get("recorded_before_signup")]
    assert [e["kind"] for e in claimed] == ["property_save"]
    # Later activity on john's site lands on the account's one lead for the email (D3).
    assert activity_and_wait(b, "john", email="eli@example.com")["lead_id"] == lead_id


def test_O9_activity_on_an_unknown_host_is_kept_and_rejected(acme: Brokerage) -> None:
    lead_id = acme.register_and_wait("co", "fay@example.com")["lead_id"]
    intake = activity_and_wait(acme, f"nobody-{acme.s}.example", email="fay@example.com")
    assert intake["status"] == "rejected"
    assert intake["lead_id"] is None
    assert "O9" in intake["reason"]
    assert f"nobody-{acme.s}.example" in intake["reason"]
    assert events_of(acme, lead_id, "property_view") == []
    assert site_activity(intake["id"]) is None


def count_events(lead_id: str, kind: str) -> int:
    with UnitOfWork() as uow:
        return uow.session.execute(
            select(func.count())
            .select_from(TimelineEvent)
            .where(TimelineEvent.lead_id == uuid.UUID(lead_id), TimelineEvent.kind == kind)
        ).scalar_one()


def run_again(intake_id: str) -> services.Outcome:
    """What a redelivered task does; then the same intake reopened (a replay), past the final-status check."""
    with UnitOfWork() as uow:
        assert intakes.process_intake(uow, uuid.UUID(intake_id)).reason == "already processed"
    with UnitOfWork() as uow:
        uow.intakes.reopen([uuid.UUID(intake_id)])
        uow.commit()
    with UnitOfWork() as uow:
        return intakes.process_intake(uow, uuid.UUID(intake_id))


def test_D7_the_same_activity_again_adds_one_event(acme: Brokerage) -> None:
    lead_id = acme.register_and_wait("co", "gil@example.com")["lead_id"]
    key = {"Idempotency-Key": f"act-{uuid.uuid4()}"}
    first = post_activity(acme, "co", email="gil@example.com", headers=key, listing=LISTING)
    second = post_activity(acme, "co", email="gil@example.com", headers=key, listing=LISTING)
    assert first.json()["intake_id"] == second.json()["intake_id"]
    intake = acme.wait_done(first.json()["intake_id"])
    assert intake["lead_id"] == lead_id
    assert count_events(lead_id, "property_view") == 1
    outcome = run_again(intake["id"])
    assert (outcome.status, str(outcome.lead_id)) == ("done", lead_id)
    assert count_events(lead_id, "property_view") == 1


def test_D7_the_same_anonymous_activity_again_is_kept_once(acme: Brokerage) -> None:
    intake = activity_and_wait(acme, "co", email="hal@example.com")
    assert intake["lead_id"] is None
    run_again(intake["id"])
    with UnitOfWork() as uow:
        rows = uow.session.execute(
            select(func.count()).select_from(SiteActivity).where(SiteActivity.intake_id == uuid.UUID(intake["id"]))
        ).scalar_one()
        status = uow.intakes.get(uuid.UUID(intake["id"])).status  # type: ignore[union-attr]
    assert rows == 1
    assert status is IntakeStatus.DONE


def test_D7_a_claimed_activity_replayed_adds_nothing_to_the_lead(acme: Brokerage) -> None:
    intake = activity_and_wait(acme, "co", email="ida@example.com", listing=LISTING)
    lead_id = acme.register_and_wait("co", "ida@example.com")["lead_id"]
    assert count_events(lead_id, "property_view") == 1
    outcome = run_again(intake["id"])  # now the lead exists: the replay finds the claimed event
    assert str(outcome.lead_id) == lead_id
    assert count_events(lead_id, "property_view") == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "page_view", "email": "a@example.com"}, "page_url"),
        ({"page_url": "ftp://x.test/", "kind": "page_view", "email": "a@example.com"}, "page_url"),
        ({"page_url": "https://x.test/", "kind": "page_view"}, "body"),
        ({"page_url": "https://x.test/", "kind": "page_view", "email": "nope"}, "email"),
        ({"page_url": "https://x.test/", "kind": "page_view", "lead_id": "not-a-uuid"}, "lead_id"),
        ({"page_url": "https://x.test/", "kind": "clicked", "email": "a@example.com"}, "kind"),
        ({"page_url": "https://x.test/", "email": "a@example.com"}, "kind"),
        (
            {
                "page_url": "https://x.test/",
                "kind": "property_view",
                "email": "a@example.com",
                "listing": {"price": -1},
            },
            "listing.price",
        ),
    ],
)
def test_bad_activity_is_422_naming_the_field_and_stores_nothing(
    acme: Brokerage, body: dict[str, Any], field: str
) -> None:
    before = count_intakes(acme.org["account"])
    r = acme.site.post("/v1/intake/activity", json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in r.json()["errors"]], r.json()
    assert count_intakes(acme.org["account"]) == before


def test_an_unknown_intake_key_is_401_and_stores_nothing(acme: Brokerage) -> None:
    before = count_intakes(acme.org["account"])
    r = acme.site.post(
        "/v1/intake/activity",
        json={"page_url": f"https://{acme.host('co')}/", "kind": "page_view", "email": "a@example.com"},
        headers={"Authorization": "Bearer not-a-key"},
    )
    assert r.status_code == 401
    assert count_intakes(acme.org["account"]) == before


def test_D7_activity_never_makes_a_lead(acme: Brokerage) -> None:
    for kind in ("page_view", "property_view", "property_save"):
        activity_and_wait(acme, "co", email="jo@example.com", kind=kind)
    with UnitOfWork() as uow:
        account = uow.orgs.account_by_slug(acme.org["account"])
        assert account is not None
        leads = uow.session.execute(
            select(func.count()).select_from(Lead).where(Lead.account_id == account.id)
        ).scalar_one()
    assert leads == 0


def test_D7_an_activity_waits_for_a_signup_creating_the_lead_at_the_same_moment(acme: Brokerage) -> None:
    """Without serialising the two, the activity would see no lead (not yet committed) and be kept
    anonymous while the signup's claim had already run: activity lost to the lead's timeline."""
    with UnitOfWork() as signup:  # a signup mid-transaction: person locked, lead inserted, not committed
        account = signup.orgs.account_by_slug(acme.org["account"])
        assert account is not None
        company = signup.orgs.entity_by_slug(account.id, "co")
        assert company is not None
        signup.leads.lock_person(account.id, "kay@example.com")
        now = dt.datetime.now(dt.UTC)
        lead_id = signup.leads.insert_if_absent(
            {
                "account_id": account.id,
                "owner_entity_id": company.id,
                "unique_key": f"e:{company.id}:kay@example.com",
                "email": "kay@example.com",
                "email_normalized": "kay@example.com",
                "source_kind": "site",
                "created_at": now,
                "updated_at": now,
                "last_activity_at": now,
            }
        )
        r = post_activity(acme, "co", email="kay@example.com")
        assert r.status_code == 202
        time.sleep(1.5)
        waiting = acme.site.get(f"/v1/intake/{r.json()['intake_id']}").json()
        assert waiting["status"] == "accepted", waiting  # blocked on the person, not decided without the lead
        signup.commit()
    intake = acme.wait_done(r.json()["intake_id"])
    assert intake["lead_id"] == str(lead_id)
    assert count_events(str(lead_id), "property_view") == 1
