"""Follow Up Boss's Events API body (``POST /v1/events``), validated and mapped into the canonical
lead event or the canonical site activity.

The connection key, never the body, decides the owner (O5, O4): nothing here reads an owner or an
agent from the payload (``person.assignedTo`` and the like are kept in the raw body and ignored)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, EmailStr, Field, model_validator

from intake.schemas import Input, Phone
from rules.activity import EventType, Listing, SiteActivityEvent, classify_event_type, lead_type_of_event
from rules.contact import normalize_email
from rules.events import LeadSignup
from rules.ownership import host_of

Text = Annotated[str | None, Field(max_length=500)]
Url = Annotated[str | None, Field(max_length=2000)]
LongText = Annotated[str | None, Field(max_length=10_000)]


def _blank_is_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def _money(value: Any) -> Any:
    """FUB senders give prices as numbers or as text (``"$310,000"``); both are whole dollars here."""
    if isinstance(value, str):
        text = value.strip().replace("$", "").replace(",", "")
        return text or None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _aware(value: Any) -> Any:
    """``occurredAt`` without a zone is taken as UTC, as FUB does, rather than refused."""
    if isinstance(value, str) and value.strip():
        try:
            parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return value  # pydantic names the field
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return _blank_is_none(value)


# The bounds on the int itself: on the union, pydantic would apply them to a None too (a TypeError, not a 422).
Money = Annotated[Annotated[int, Field(ge=0, le=10**12)] | None, BeforeValidator(_money)]
# Rooms, area and lot come as numbers or text ("3", "0.5 acres"); kept as given, not used for decisions.
Measure = float | str | None


class _Fub(Input):
    # Unknown fields are accepted and kept (the raw body is stored verbatim too).
    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)


class FubEmail(_Fub):
    value: Annotated[EmailStr | None, BeforeValidator(_blank_is_none)] = None
    type: Text = None


class FubPhone(_Fub):
    value: Phone = None
    type: Text = None


def _one_reachable(*lists: str) -> dict[str, Any]:
    """JSON Schema for "an email or a phone is required": one of the lists holds a value that is not blank."""
    value = {"required": ["value"], "properties": {"value": {"type": "string", "pattern": r"\S"}}}
    return {"anyOf": [{"required": [name], "properties": {name: {"contains": value}}} for name in lists]}


class FubPerson(_Fub):
    model_config = ConfigDict(
        extra="allow", str_strip_whitespace=True, json_schema_extra=_one_reachable("emails", "phones")
    )

    id: int | str | None = Field(default=None, description="The sender's id for the person; kept, not used.")
    firstName: Annotated[str | None, Field(max_length=100)] = None
    lastName: Annotated[str | None, Field(max_length=100)] = None
    emails: list[FubEmail] = Field(default_factory=list, max_length=20)
    phones: list[FubPhone] = Field(default_factory=list, max_length=20)
    tags: list[Annotated[str, Field(max_length=100)]] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _reachable(self) -> FubPerson:
        if self.email is None and self.phone is None:
            raise ValueError("an email or a phone is required")
        return self

    @property
    def email(self) -> str | None:
        """The first email given: the one the person is known by."""
        return next((e.value for e in self.emails if e.value), None)

    @property
    def phone(self) -> str | None:
        return next((p.value for p in self.phones if p.value), None)


Zip = Annotated[str | None, Field(max_length=10)]


class FubProperty(_Fub):
    street: Text = None
    city: Text = None
    state: Text = None
    code: Annotated[Zip, Field(description="The ZIP or postal code, as Follow Up Boss documents it.")] = None
    # Real senders spell it otherwise (the follow-up-boss package on PyPI posts ``zip``); the first given wins.
    zip: Annotated[Zip, Field(description="Another spelling of ``code``.")] = None
    postalCode: Annotated[Zip, Field(description="Another spelling of ``code``.")] = None
    zipCode: Annotated[Zip, Field(description="Another spelling of ``code``.")] = None
    postal_code: Annotated[Zip, Field(description="Another spelling of ``code``.")] = None
    mlsNumber: Annotated[str | None, Field(max_length=100)] = None
    price: Money = None
    forRent: bool | None = None
    url: Url = None
    type: Text = None
    bedrooms: Measure = None
    bathrooms: Measure = None
    area: Measure = None
    lot: Measure = None

    def zip_code(self) -> str | None:
        """The postal code under whichever of its spellings the sender used (``code`` first)."""
        return next((z for z in (self.code, self.zip, self.postalCode, self.zipCode, self.postal_code) if z), None)

    @property
    def address(self) -> str | None:
        """``1234 Main St, Anytown, MA 12345``, from whatever parts were given."""
        region = " ".join(p for p in (self.state, self.zip_code()) if p)
        parts = [p for p in (self.street, self.city, region) if p]
        return ", ".join(parts) or None

    def listing(self) -> Listing:
        return Listing(mls_id=self.mlsNumber, url=self.url, address=self.address, price=self.price)


class FubEvent(_Fub):
    """An event as Follow Up Boss's ``POST /v1/events`` takes it: a lead (Registration, inquiries,
    Visited Open House, ...) or activity on one (Viewed/Saved Property, Viewed Page, Visited Website)."""

    source: Annotated[str | None, Field(max_length=200, description="The lead source's brand, e.g. Zillow.")] = None
    system: Annotated[str | None, Field(max_length=200, description="The sending system.")] = None
    type: Annotated[str, Field(min_length=1, max_length=100, description="Registration, Property Inquiry, ...")]
    message: LongText = None
    description: LongText = None
    occurredAt: Annotated[dt.datetime | None, BeforeValidator(_aware)] = None
    person: FubPerson
    property: FubProperty | None = None
    propertySearch: dict[str, Any] | None = None
    campaign: dict[str, Any] | None = None
    pageUrl: Url = None
    pageTitle: Text = None
    sourceUrl: Url = None

    # Methods, not properties: the field named ``property`` hides the builtin in this class body.
    def event_type(self) -> EventType:
        return classify_event_type(self.type, has_property=self.property is not None)

    def source_detail(self) -> str:
        """Where the lead came from, as the lead's source: ``Zillow: Property Inquiry``."""
        origin = self.source or self.system or "Follow Up Boss event"
        return f"{origin}: {self.event_type().name}"[:500]

    def page(self) -> str | None:
        return self.pageUrl or (self.property.url if self.property else None) or self.sourceUrl

    def to_work(self) -> LeadSignup | SiteActivityEvent:
        """The canonical signup for a lead-making type, the canonical activity for a view, save or visit (D7)."""
        kind = self.event_type()
        person = self.person
        email = person.email
        if kind.activity is not None:
            return SiteActivityEvent(
                kind=kind.activity,
                page_url=self.page() or "",
                email_normalized=normalize_email(email) if email else None,
                phone=person.phone,
                listing=self.property.listing() if self.property else None,
                occurred_at=self.occurredAt,
                source_detail=self.source_detail(),
            )
        prop = self.property or FubProperty()
        page = self.page()
        return LeadSignup(
            source_kind="provider",
            page_url=page,
            host=host_of(page) if page else None,
            email=email,
            email_normalized=normalize_email(email) if email else None,
            phone=person.phone,
            first_name=person.firstName,
            last_name=person.lastName,
            lead_type=lead_type_of_event(kind, for_rent=prop.forRent),
            price_max=prop.price,
            zip=prop.zip_code(),
            message=self.message or self.description,
            tags=tuple(dict.fromkeys(person.tags)),
            source_detail=self.source_detail(),
            occurred_at=self.occurredAt,
        )
