"""Follow Up Boss events: the body as FUB documents it, mapped into the canonical signup or activity (O5, D7)."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from intake.api import create_app
from intake.fub import FubEvent
from intake.problems import field_path
from rules.activity import SiteActivityEvent
from rules.events import LeadSignup

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REGISTRATION = json.loads((FIXTURES / "fub_event_registration.json").read_text())
VIEWED = json.loads((FIXTURES / "fub_event_viewed_property.json").read_text())


def event(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(base)
    body.update(changes)
    return body


def signup_of(body: dict[str, Any]) -> LeadSignup:
    work = FubEvent.model_validate(body).to_work()
    assert isinstance(work, LeadSignup)
    return work


def error_fields(body: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        FubEvent.model_validate(body)
    return [field_path(("body", *e["loc"])) for e in caught.value.errors()]


def test_the_documented_registration_maps_into_a_provider_signup() -> None:
    signup = signup_of(REGISTRATION)
    assert signup.source_kind == "provider"
    assert signup.source_detail == "Zillow: Registration"
    assert (signup.email, signup.email_normalized) == ("Rosa.Delgado@example.com", "rosa.delgado@example.com")
    assert signup.phone == "+15550103344"
    assert (signup.first_name, signup.last_name) == ("Rosa", "Delgado")
    assert signup.lead_type == "buyer"
    assert signup.price == 435_000
    assert signup.zip == "62704"
    assert signup.tags == ("Buyer", "Springfield")
    assert signup.message == "Please send me new listings in Springfield under $450,000."
    assert signup.occurred_at == dt.datetime(2026, 11, 21, 18, 2, 11, tzinfo=dt.UTC)
    assert LeadSignup.from_dict(signup.to_dict()) == signup


@pytest.mark.parametrize("spelling", ["zip", "postalCode", "zipCode", "postal_code"])
def test_the_zip_is_read_under_the_spellings_real_senders_use(spelling: str) -> None:
    body = event(REGISTRATION)
    prop = body["property"]
    del prop["code"]
    prop[spelling] = "62711"  # the follow-up-boss package on PyPI posts property.zip
    parsed = FubEvent.model_validate(body)
    assert signup_of(body).zip == "62711"
    assert parsed.property is not None
    assert parsed.property.address == "48 Birch Ln, Springfield, IL 62711"


def test_the_documented_code_wins_over_another_spelling() -> None:
    body = event(REGISTRATION)
    body["property"] |= {"zip": "99999", "postalCode": "88888"}
    assert signup_of(body).zip == "62704"
    del body["property"]["code"]
    assert signup_of(body).zip == "99999"


def test_O5_nothing_in_the_body_names_an_owner_or_an_agent() -> None:
    body = event(REGISTRATION)
    body["person"] |= {"assignedTo": "Jill Jones", "assignedUserId": 7}
    body["agent"] = {"id": "jill"}
    # The mapping has no field that could carry an owner or an assignee: the connection decides.
    assert signup_of(body) == signup_of(REGISTRATION)


def test_unknown_fields_are_accepted_and_kept() -> None:
    parsed = FubEvent.model_validate(event(VIEWED, customLeadScore=7))
    assert parsed.model_extra == {"pageDuration": 95, "customLeadScore": 7}


def test_D7_viewed_property_maps_into_activity_with_the_listing() -> None:
    work = FubEvent.model_validate(VIEWED).to_work()
    assert isinstance(work, SiteActivityEvent)
    assert work.kind == "property_view"
    assert work.email_normalized == "rosa.delgado@example.com"
    assert work.page_url == VIEWED["pageUrl"]
    assert work.listing_data == {
        "mls_id": "MLS-88031",
        "url": VIEWED["property"]["url"],
        "address": "12 Oak St, Springfield, IL 62704",
        "price": 389_000,
    }
    assert work.source_detail == "Zillow: Viewed Property"


def test_D7_saved_property_is_activity_too_and_needs_no_page_url() -> None:
    body = event(VIEWED, type="Saved Property")
    del body["pageUrl"]
    work = FubEvent.model_validate(body).to_work()
    assert isinstance(work, SiteActivityEvent)
    assert work.kind == "property_save"
    assert work.page_url == VIEWED["property"]["url"]


@pytest.mark.parametrize(
    ("type_", "prop", "lead_type", "detail"),
    [
        ("Seller Inquiry", {"street": "9 Elm St"}, "seller", "Zillow: Seller Inquiry"),
        ("Property Inquiry", {"street": "9 Elm St", "forRent": True}, "renter", "Zillow: Property Inquiry"),
        ("Inquiry", None, "buyer", "Zillow: General Inquiry"),
        ("Tour Request", None, "buyer", "Zillow: Tour Request"),
    ],
)
def test_lead_types_and_sources_of_inquiries(
    type_: str, prop: dict[str, Any] | None, lead_type: str, detail: str
) -> None:
    body = event(REGISTRATION, type=type_, property=prop)
    signup = signup_of(body)
    assert (signup.lead_type, signup.source_detail) == (lead_type, detail)


def test_source_falls_back_to_the_system_and_prices_may_be_text() -> None:
    body = event(REGISTRATION, source=None)
    body["property"]["price"] = "$310,000"
    signup = signup_of(body)
    assert signup.source_detail == "ZillowPremierAgent: Registration"
    assert signup.price == 310_000


def test_an_occurred_at_without_a_zone_is_utc() -> None:
    signup = signup_of(event(REGISTRATION, occurredAt="2026-11-21T18:02:11"))
    assert signup.occurred_at == dt.datetime(2026, 11, 21, 18, 2, 11, tzinfo=dt.UTC)


def test_the_first_usable_email_and_phone_are_the_persons() -> None:
    body = event(REGISTRATION)
    body["person"]["emails"] = [{"value": ""}, {"value": "second@example.com"}]
    body["person"]["phones"] = [{"value": " "}, {"value": "+1 555 010 9999"}]
    signup = signup_of(body)
    assert (signup.email, signup.phone) == ("second@example.com", "+15550109999")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"person": {"emails": [{"value": "not-an-email"}]}}, "person.emails[0].value"),
        ({"person": {"phones": [{"value": "12"}]}}, "person.phones[0].value"),
        ({"person": {"firstName": "Nobody", "emails": [], "phones": []}}, "person"),
        ({"person": None}, "person"),
        ({"type": ""}, "type"),
        ({"property": {"price": -5}}, "property.price"),
    ],
)
def test_invalid_fields_are_named(change: dict[str, Any], field: str) -> None:
    assert field in error_fields(event(REGISTRATION, **change))


def test_type_and_person_are_required() -> None:
    body = event(REGISTRATION)
    del body["type"], body["person"]
    assert sorted(error_fields(body)) == ["person", "type"]


def test_openapi_shows_the_events_endpoint_with_basic_auth_and_the_202_promise() -> None:
    openapi = create_app().openapi()
    post = openapi["paths"]["/v1/events"]["post"]
    assert post["security"] == [{"ConnectionKeyBasic": []}]
    assert openapi["components"]["securitySchemes"]["ConnectionKeyBasic"]["scheme"] == "basic"
    assert "202" in post["responses"]
    assert "Unlike Follow Up Boss" in post["description"]
    assert "status_url" in post["description"]
    assert "get" in openapi["paths"]["/v1/intake/registrations/candidates"]
    assert "post" in openapi["paths"]["/v1/intake/activity"]
