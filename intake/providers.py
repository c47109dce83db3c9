"""Lead-provider adapters: each a small mapping of one payload shape into the canonical lead event.

The connection key, never the body, decides the owner (O5): nothing here reads an owner from a payload."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, model_validator

from intake.schemas import Phone, one_of_required
from rules.contact import normalize_email
from rules.events import LeadSignup
from rules.ownership import host_of

FORMATS = ("realtor_com", "zillow", "hotpads")
Text = Annotated[str | None, Field(max_length=500)]


class _Adapter(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class Contact(_Adapter):
    """The lead's contact details: an email or a phone is required."""

    model_config = ConfigDict(
        extra="ignore", str_strip_whitespace=True, json_schema_extra=one_of_required("email", "phone")
    )

    first_name: Annotated[str | None, Field(max_length=100)] = None
    last_name: Annotated[str | None, Field(max_length=100)] = None
    email: EmailStr | None = None
    phone: Phone = None


class Property(_Adapter):
    address: Text = None
    city: Text = None
    state: Text = None
    zip_code: Annotated[str | None, Field(max_length=10)] = None
    list_price: Annotated[int | None, Field(ge=0, le=10**12)] = None
    mls_id: Text = None
    listing_url: Annotated[str | None, Field(max_length=2000)] = None


class RealtorComLead(_Adapter):
    """The Realtor.com-style JSON that ``realtor_com`` and ``zillow`` connections post."""

    lead_id: Annotated[str, Field(min_length=1, max_length=255)]
    role: Literal["buyer", "seller", "renter"] | None = None
    contact: Contact
    property: Property | None = None
    message: Annotated[str | None, Field(max_length=5000)] = None
    timestamp: str | None = None

    @model_validator(mode="after")
    def _reachable(self) -> RealtorComLead:
        if self.contact.email is None and self.contact.phone is None:
            raise ValueError("contact.email or contact.phone is required")
        return self

    def to_signup(self) -> LeadSignup:
        prop = self.property or Property()
        url = prop.listing_url
        return LeadSignup(
            source_kind="provider",
            page_url=url,
            host=host_of(url) if url else None,
            email=self.contact.email,
            email_normalized=normalize_email(self.contact.email) if self.contact.email else None,
            phone=self.contact.phone,
            first_name=self.contact.first_name,
            last_name=self.contact.last_name,
            lead_type=self.role,
            price_max=prop.list_price,
            zip=prop.zip_code,
            message=self.message,
        )


class HotPadsLead(_Adapter):
    """The HotPads / Zillow rentals callback (form-encoded); only listingId and email are sure to be there."""

    listingId: Annotated[str, Field(min_length=1, max_length=255)]
    email: EmailStr
    name: Annotated[str | None, Field(max_length=200)] = None
    phone: Phone = None
    movingDate: Text = None
    message: Annotated[str | None, Field(max_length=5000)] = None
    listingStreet: Text = None
    listingCity: Text = None
    listingState: Text = None
    listingZip: Annotated[str | None, Field(max_length=10)] = None

    def to_signup(self) -> LeadSignup:
        first, _, last = (self.name or "").partition(" ")
        return LeadSignup(
            source_kind="provider",
            email=self.email,
            email_normalized=normalize_email(self.email),
            phone=self.phone,
            first_name=first or None,
            last_name=last or None,
            lead_type="renter",
            zip=self.listingZip,
            message=self.message,
        )

    @property
    def provider_lead_id(self) -> str:
        # HotPads sends no lead id of its own: one inquiry is one (listing, email).
        return f"{self.listingId}:{normalize_email(self.email)}"


def parse(fmt: str, body: dict[str, Any]) -> tuple[LeadSignup, str]:
    """The canonical event and the provider's own lead id (the idempotency key) for a payload.
    Raises pydantic's ValidationError naming the bad fields."""
    if fmt == "hotpads":
        lead = HotPadsLead.model_validate(body)
        return lead.to_signup(), lead.provider_lead_id
    realtor = RealtorComLead.model_validate(body)
    return realtor.to_signup(), realtor.lead_id
