"""D7: which outside events are site activity rather than signups, and what activity says on a timeline."""

from __future__ import annotations

import datetime as dt

import pytest

from rules.activity import (
    EventType,
    Listing,
    SiteActivityEvent,
    classify_event_type,
    describe_activity,
    lead_type_of_event,
)


@pytest.mark.parametrize(
    ("event_type", "kind"),
    [
        ("Viewed Property", "property_view"),
        ("Saved Property", "property_save"),
        ("Viewed Page", "page_view"),
        ("Visited Website", "page_view"),
        ("  viewed   PROPERTY ", "property_view"),
        ("Unsubscribed", "unsubscribed"),
    ],
)
def test_D7_views_saves_and_visits_are_activity_not_signups(event_type: str, kind: str) -> None:
    classified = classify_event_type(event_type, has_property=True)
    assert classified.activity == kind
    assert not classified.is_signup


@pytest.mark.parametrize(
    "event_type",
    [
        "Registration",
        "Property Inquiry",
        "Seller Inquiry",
        "General Inquiry",
        "Visited Open House",
        "Property Search",
        "Saved Property Search",
        "Incoming Call",
    ],
)
def test_lead_making_event_types_are_signups_keeping_their_name(event_type: str) -> None:
    assert classify_event_type(event_type.upper(), has_property=False) == EventType(event_type)


def test_inquiry_is_shorthand_for_a_property_or_a_general_inquiry() -> None:
    assert classify_event_type("Inquiry", has_property=True) == EventType("Property Inquiry")
    assert classify_event_type("inquiry", has_property=False) == EventType("General Inquiry")


def test_an_unknown_event_type_is_taken_as_an_inquiry_not_refused() -> None:
    classified = classify_event_type("Tour Request", has_property=True)
    assert classified.is_signup
    assert classified.name == "Tour Request"


@pytest.mark.parametrize(
    ("event_type", "for_rent", "lead_type"),
    [
        ("Seller Inquiry", None, "seller"),
        ("Seller Inquiry", True, "seller"),
        ("Property Inquiry", True, "renter"),
        ("Property Inquiry", False, "buyer"),
        ("Registration", None, "buyer"),
    ],
)
def test_lead_type_of_an_event(event_type: str, for_rent: bool | None, lead_type: str) -> None:
    assert lead_type_of_event(EventType(event_type), for_rent=for_rent) == lead_type


@pytest.mark.parametrize(
    ("kind", "listing", "page_url", "summary"),
    [
        (
            "property_view",
            {"address": "12 Oak St", "mls_id": "123"},
            "https://co.test/l/1",
            "Viewed 12 Oak St (MLS 123)",
        ),
        (
            "property_save",
            {"address": "12 Oak St", "mls_id": "123"},
            "https://co.test/l/1",
            "Saved 12 Oak St (MLS 123)",
        ),
        ("property_view", {"mls_id": "123"}, "https://co.test/l/1", "Viewed MLS 123"),
        ("property_save", {"address": "12 Oak St"}, "https://co.test/l/1", "Saved 12 Oak St"),
        ("property_view", None, "https://co.test/l/1?utm=x", "Viewed a property on co.test/l/1"),
        ("page_view", None, "https://co.test/buy?utm=x", "Viewed page co.test/buy"),
        ("page_view", {}, "", "Viewed a page"),
        ("unsubscribed", None, "", "Unsubscribed"),
    ],
)
def test_D7_activity_summary(kind: str, listing: dict[str, str] | None, page_url: str, summary: str) -> None:
    assert describe_activity(kind, listing, page_url) == summary


def test_activity_round_trips_through_the_stored_payload() -> None:
    activity = SiteActivityEvent(
        kind="property_save",
        page_url="https://co.test/l/1",
        email_normalized="ann@example.com",
        listing=Listing(mls_id="123", address="12 Oak St", price=400_000),
        occurred_at=dt.datetime(2026, 11, 22, 9, 15, tzinfo=dt.UTC),
        source_detail="Zillow: Saved Property",
    )
    assert SiteActivityEvent.from_dict(activity.to_dict()) == activity
    assert activity.listing_data == {"mls_id": "123", "address": "12 Oak St", "price": 400_000}
    assert SiteActivityEvent.from_dict(SiteActivityEvent(kind="page_view").to_dict()).listing_data == {}
