"""Site activity (D7): what a page view, property view or save says, and which outside events are
activity rather than signups. Activity never makes a lead; it lands on the lead of the site's owner."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any, Literal

ActivityKind = Literal["page_view", "property_view", "property_save", "unsubscribed"]
# The kinds a website posts to /v1/intake/activity (D7); "unsubscribed" comes only from Follow Up Boss events.
SITE_ACTIVITY_KINDS: tuple[ActivityKind, ...] = ("page_view", "property_view", "property_save")

# Follow Up Boss event types that are activity on a lead, never a new lead (D7). Compared case-insensitively.
_ACTIVITY_EVENT_TYPES: dict[str, ActivityKind] = {
    "viewed property": "property_view",
    "saved property": "property_save",
    "viewed page": "page_view",
    "visited website": "page_view",
    # Making a lead out of an unsubscribe would be perverse; it is noted on the lead, if there is one.
    "unsubscribed": "unsubscribed",
}
# The lead-making types Follow Up Boss documents, spelled as it spells them.
LEAD_EVENT_TYPES = (
    "Registration",
    "Property Inquiry",
    "Seller Inquiry",
    "General Inquiry",
    "Visited Open House",
    "Property Search",
    "Saved Property Search",
    "Incoming Call",
)
_LEAD_EVENT_TYPES = {t.lower(): t for t in LEAD_EVENT_TYPES}


@dataclass(frozen=True)
class Listing:
    mls_id: str | None = None
    url: str | None = None
    address: str | None = None
    price: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class EventType:
    """What an outside event type means here: a signup (``activity`` None) or activity of a kind."""

    name: str  # the canonical type name, for the lead's source ("Zillow: Property Inquiry")
    activity: ActivityKind | None = None

    @property
    def is_signup(self) -> bool:
        return self.activity is None


def classify_event_type(event_type: str, *, has_property: bool) -> EventType:
    """D7 for Follow Up Boss events: views, saves and visits are activity; everything else is a
    signup. ``Inquiry`` is FUB's shorthand for a Property Inquiry (with a property) or a General
    Inquiry (without); an unknown type is taken as an inquiry rather than refused, keeping its name."""
    name = " ".join(event_type.split())
    key = name.lower()
    if key in _ACTIVITY_EVENT_TYPES:
        return EventType(name, _ACTIVITY_EVENT_TYPES[key])
    if key == "inquiry":
        return EventType("Property Inquiry" if has_property else "General Inquiry")
    return EventType(_LEAD_EVENT_TYPES.get(key, name or "General Inquiry"))


def lead_type_of_event(event: EventType, *, for_rent: bool | None) -> str:
    """A seller inquiry is a seller; a listing for rent makes a renter; anyone else is a buyer."""
    if event.name == "Seller Inquiry":
        return "seller"
    return "renter" if for_rent else "buyer"


@dataclass(frozen=True)
class SiteActivityEvent:
    """The canonical activity: from a website (owner by the page's host) or an event (owner by the connection).
    ``email_normalized`` or ``lead_id`` names the person; ``phone`` helps only a lead with no email (D9)."""

    kind: ActivityKind
    page_url: str = ""
    email_normalized: str | None = None
    phone: str | None = None
    lead_id: str | None = None
    listing: Listing | None = None
    occurred_at: dt.datetime | None = None
    source_detail: str | None = None  # "Zillow: Viewed Property" for events

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["listing"] = self.listing.to_dict() if self.listing else None
        data["occurred_at"] = self.occurred_at.isoformat() if self.occurred_at else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SiteActivityEvent:
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        listing = values.get("listing")
        values["listing"] = Listing(**listing) if listing else None
        occurred = values.get("occurred_at")
        values["occurred_at"] = dt.datetime.fromisoformat(occurred) if occurred else None
        return cls(**values)

    @property
    def listing_data(self) -> dict[str, Any]:
        return self.listing.to_dict() if self.listing else {}


_VERBS: dict[str, str] = {
    "page_view": "Viewed",
    "property_view": "Viewed",
    "property_save": "Saved",
    "unsubscribed": "Unsubscribed",
}


def describe_activity(kind: str, listing: dict[str, Any] | None, page_url: str) -> str:
    """The timeline summary: ``Viewed 12 Oak St (MLS 123)``, ``Saved MLS 123``, ``Viewed page co.test/buy``."""
    verb = _VERBS.get(kind, kind.replace("_", " ").capitalize())
    page = page_url.split("://", 1)[-1].split("?", 1)[0]
    if kind == "unsubscribed":
        return f"Unsubscribed on {page}" if page else "Unsubscribed"
    listing = listing or {}
    address, mls = listing.get("address"), listing.get("mls_id")
    if address and mls:
        return f"{verb} {address} (MLS {mls})"
    if address or mls:
        return f"{verb} {address}" if address else f"{verb} MLS {mls}"
    if kind == "page_view":
        return f"Viewed page {page}" if page else "Viewed a page"
    noun = "a property" + (f" on {page}" if page else "")
    return f"{verb} {noun}"
