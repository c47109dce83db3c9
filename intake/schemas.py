"""Request and response bodies of the HTTP API, and their mapping into the canonical lead event."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    field_validator,
    model_validator,
)

from rules.activity import Listing, SiteActivityEvent
from rules.contact import InvalidPhone, normalize_email, normalize_phone
from rules.events import LeadSignup
from rules.ownership import host_of

Name = Annotated[str, Field(min_length=1, max_length=100)]
Price = Annotated[int, Field(ge=0, le=10**12)]


def _phone(value: str | None) -> str | None:
    """D9: E.164 and possible; an empty string is no phone."""
    if value is None or not value.strip():
        return None
    try:
        return normalize_phone(value)
    except InvalidPhone as exc:
        raise ValueError(str(exc)) from exc


Phone = Annotated[
    str | None, Field(max_length=40, description="Any format; stored in E.164 (D9)."), AfterValidator(_phone)
]


def _http_url_with_host(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    if not re.fullmatch(HTTP_URL_PATTERN, value):
        if not value.lower().startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        if not host_of(value):
            raise ValueError("has no host")
        raise ValueError("must be an http(s) URL with a host name and no control characters")
    return value


# An http(s) URL with a host: what a page URL must be for its host to decide the owner. The host (a name or
# an IPv4 address) and any user part as RFC 3986 spells them, in ASCII (a browser sends an international
# name in its xn-- form); the path, query and fragment are taken as sent, spaces and non-ASCII text
# included (a browser encodes them, a form builder may not: refusing them would lose the lead), control
# characters excepted. The server checks this very pattern, so a client, the document and the server agree
# on which page URLs are valid, and every URL it matches has a host (host_of).
_HOST_CHAR = r"[A-Za-z0-9\-._~!$&'()*+,;=%]"
_HOST_LETTER = r"[A-Za-z0-9\-_~!$&'()*+,;=%]"  # a host is not dots alone
HTTP_URL_PATTERN = (
    rf"^[Hh][Tt][Tt][Pp][Ss]?://(?:(?:{_HOST_CHAR}|:)*@)?"
    rf"\.*{_HOST_LETTER}{_HOST_CHAR}*(?::[0-9]*)?"
    r"(?:[/?#][^\x00-\x1f\x7f]*)?$"
)
PageUrl = Annotated[
    str,
    Field(
        min_length=1,
        max_length=2000,
        # Checked by ``_http_url_with_host``, which says what is wrong in words rather than the pattern. Not
        # ``format: uri``: a URL with a space in its path is a page URL here, though RFC 3986 would refuse it.
        json_schema_extra={"pattern": HTTP_URL_PATTERN},
        description="The page (an http(s) URL with a host); its host decides the owner (O2-O4).",
    ),
    AfterValidator(_http_url_with_host),
]


def unstorable(value: Any, path: str = "") -> tuple[str, str] | None:
    """The first text in a request value that cannot be stored, as (field path, what is wrong): a NUL
    character (PostgreSQL's text and JSONB refuse it) or an unpaired surrogate (JSON's ``"\\ud800"``; not UTF-8).
    Refused with a 422 at the edge, it would otherwise fail the INSERT with a 500."""
    if isinstance(value, str):
        if "\x00" in value:
            return path, "contains a NUL character"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path, "contains an unpaired surrogate (not UTF-8)"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = unstorable(key, path) or unstorable(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if found := unstorable(item, f"{path}[{i}]"):
                return found
    return None


class Input(BaseModel):
    """A request body or query: every text in its fields can be stored (``unstorable``). A nested model
    checks its own fields; unknown fields (``extra="allow"``) are kept only in the raw body, as sent."""

    @field_validator("*")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return storable(value)


def storable(value: Any) -> Any:
    """A validator (``AfterValidator`` of a form field, say): the value, if its text can be stored."""
    found = unstorable(value)
    if found is not None:
        where, what = found
        raise ValueError(f"{what} ({where})" if where else what)
    return value


def one_of_required(*fields: str) -> dict[str, Any]:
    """JSON Schema for a model's "this or that is required" rule: one of the fields is given and not null.
    /openapi.json then says what the validator refuses, for clients and for schema-driven tests alike."""
    # "Not all of them null or absent": the same rule as anyOf over each one required, but a schema that
    # client generators read as one model (with anyOf, openapi-python-client makes a union of two models).
    return {"not": {"properties": {f: {"type": "null"} for f in fields}}}


class RegistrationIn(Input):
    """A signup on a site, squeeze page or landing page. Unknown fields are ignored (kept in the raw request)."""

    model_config = ConfigDict(
        extra="ignore", str_strip_whitespace=True, json_schema_extra=one_of_required("email", "phone")
    )

    page_url: Annotated[
        PageUrl, Field(description="The page signed up on (an http(s) URL); its host decides the owner (O2-O4).")
    ]
    email: EmailStr | None = None
    phone: Phone = None
    first_name: Name | None = None
    last_name: Name | None = None
    kind: Literal["site", "squeeze_page", "landing_page"] = "site"
    lead_type: Literal["buyer", "seller", "renter"] | None = None
    price_min: Price | None = None
    price_max: Price | None = None
    zip: Annotated[str | None, Field(pattern=r"^\d{5}(-\d{4})?$")] = None
    message: Annotated[str | None, Field(max_length=5000)] = None
    existing_lead_id: uuid.UUID | None = Field(default=None, description="The duplicate prompt's answer (D5).")
    occurred_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _reachable_and_consistent(self) -> RegistrationIn:
        if self.email is None and self.phone is None:
            raise ValueError("email or phone is required")
        if self.price_min is not None and self.price_max is not None and self.price_min > self.price_max:
            raise ValueError("price_min is above price_max")
        return self

    def to_signup(self) -> LeadSignup:
        return LeadSignup(
            source_kind=self.kind,
            page_url=self.page_url,
            host=host_of(self.page_url),
            email=self.email,
            email_normalized=normalize_email(self.email) if self.email else None,
            phone=self.phone,
            first_name=self.first_name,
            last_name=self.last_name,
            lead_type=self.lead_type,
            price_min=self.price_min,
            price_max=self.price_max,
            zip=self.zip,
            message=self.message,
            existing_lead_id=str(self.existing_lead_id) if self.existing_lead_id else None,
            occurred_at=self.occurred_at,
        )


class ListingIn(Input):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    mls_id: Annotated[str | None, Field(max_length=100)] = None
    url: Annotated[str | None, Field(max_length=2000)] = None
    address: Annotated[str | None, Field(max_length=500)] = None
    price: Price | None = None


class ActivityIn(Input):
    """A page view, property view or property save on a site (D7). Recorded on the lead of the site's
    owner for that person, whoever its assignee; never makes a lead. Unknown fields are ignored."""

    model_config = ConfigDict(
        extra="ignore", str_strip_whitespace=True, json_schema_extra=one_of_required("email", "lead_id")
    )

    page_url: PageUrl
    email: EmailStr | None = Field(default=None, description="The person; this or ``lead_id`` is required.")
    lead_id: uuid.UUID | None = Field(
        default=None, description="A lead of the account naming the person (its email is used); wins over email."
    )
    kind: Literal["page_view", "property_view", "property_save"]
    listing: ListingIn | None = None
    occurred_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _names_a_person(self) -> ActivityIn:
        if self.email is None and self.lead_id is None:
            raise ValueError("email or lead_id is required")
        return self

    def to_activity(self) -> SiteActivityEvent:
        listing = self.listing
        return SiteActivityEvent(
            kind=self.kind,
            page_url=self.page_url,
            email_normalized=normalize_email(self.email) if self.email else None,
            lead_id=str(self.lead_id) if self.lead_id else None,
            listing=Listing(listing.mls_id, listing.url, listing.address, listing.price) if listing else None,
            occurred_at=self.occurred_at,
        )


class CandidatesQuery(Input):
    """The duplicate prompt's question (D5): who already works with this email, seen from this page."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    email: EmailStr
    page_url: PageUrl


class Accepted(BaseModel):
    intake_id: uuid.UUID
    status: Literal["accepted"] = "accepted"
    status_url: str


class IntakeOut(BaseModel):
    id: uuid.UUID
    status: Literal["accepted", "processing", "done", "rejected", "dead"]
    lead_id: uuid.UUID | None
    reason: str | None


class ReplayIn(BaseModel):
    """Which kept intakes of the caller's account to send through the pipeline again."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["dead", "rejected"] = Field(
        default="dead", description="dead (failed past its retries) or rejected (e.g. an unclaimed page, O9)"
    )
    since: AwareDatetime | None = Field(default=None, description="only intakes stored since then (with its offset)")

    @field_validator("since", mode="before")
    @classmethod
    def _since_is_a_string(cls, value: object) -> object:
        """An RFC 3339 string, as the schema says: a number is not read as a Unix time. (Not ``Strict()``,
        which FastAPI's validation of the parsed body applies as Python's strictness: it refused every
        string too.)"""
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError("an RFC 3339 date and time with its offset, e.g. 2026-11-01T00:00:00Z")
        return value


class ReplayOut(BaseModel):
    replayed: int
    intake_ids: list[uuid.UUID] = Field(description="The intakes sent again (follow each at /v1/intake/{id})")


class EntityOut(BaseModel):
    id: str
    kind: str
    name: str


class AgentOut(BaseModel):
    id: str
    name: str


class CandidateOut(BaseModel):
    """A lead the person already has under another owner (D5), named by its agent and owner only:
    never its email or phone."""

    lead_id: uuid.UUID
    agent: AgentOut
    owner: EntityOut


class CandidatePage(BaseModel):
    items: list[CandidateOut]
    next: str | None = None


class SourceOut(BaseModel):
    kind: str
    detail: str | None


class ShareOut(BaseModel):
    user_id: str
    permission: str


class LeadOut(BaseModel):
    id: uuid.UUID
    account: str
    email: str | None
    phone: str | None
    first_name: str | None
    last_name: str | None
    status: str
    in_pond: bool
    tags: list[str]
    campaigns: list[str]
    owner: EntityOut
    assigned_agent: AgentOut | None
    source: SourceOut
    shares: list[ShareOut]
    lead_type: str | None = Field(description="buyer, seller or renter, as the lead said")
    price_min: int | None
    price_max: int | None
    zip: str | None
    message: str | None = Field(description="The last message the lead sent with a signup or an inquiry")
    last_activity_at: dt.datetime
    merged_into: uuid.UUID | None
    created_at: dt.datetime


class LeadPage(BaseModel):
    items: list[LeadOut]
    next: str | None


class TimelineEventOut(BaseModel):
    id: int
    at: dt.datetime
    kind: str
    actor: str
    summary: str
    data: dict[str, Any]


class TimelinePage(BaseModel):
    items: list[TimelineEventOut]
    next: str | None


class SimulateIn(RegistrationIn):
    """A sample lead: the same fields as a registration; only ``page_url`` is required."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, json_schema_extra={})

    @model_validator(mode="after")
    def _reachable_and_consistent(self) -> SimulateIn:
        if self.price_min is not None and self.price_max is not None and self.price_min > self.price_max:
            raise ValueError("price_min is above price_max")
        return self


class SkipOut(BaseModel):
    agent: str
    reason: str


class NotMatchedOut(BaseModel):
    rule: str
    failed: list[str]


class SimulateOut(BaseModel):
    outcome: Literal["assigned", "unassigned", "rejected"]
    ownership_rule: str | None
    owner: EntityOut | None
    routing_entity: str | None
    rule: str | None
    agent: AgentOut | None
    skipped: list[SkipOut]
    rules_not_matched: list[NotMatchedOut]
    explanation: str


class MessageIn(Input):
    """An outbound text to a lead (SH4: it goes out from the owner's smart number in the owner's name)."""

    model_config = ConfigDict(extra="ignore")

    body: Annotated[str, Field(min_length=1, max_length=1600, description="The text; at most 1,600 characters.")]

    @field_validator("body")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


class MessageAccepted(BaseModel):
    message_id: uuid.UUID
    status: Literal["queued"] = "queued"


# --- Working the leads: share, transfer, merge, assign, archive, delete, export ---

Slug = Annotated[str, Field(min_length=1, max_length=64)]


class LeadPatch(Input):
    """SH2/V2: the contact's details. Only the fields sent change; ``null`` clears a name, the phone or the
    tags (as ``[]`` does)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    first_name: Name | None = None
    last_name: Name | None = None
    phone: Phone = None
    tags: list[Annotated[str, Field(min_length=1, max_length=50)]] | None = Field(
        default=None, max_length=50, description="The lead's tags, all of them; ``[]`` or ``null`` clears them."
    )

    @model_validator(mode="after")
    def _something(self) -> LeadPatch:
        if not self.model_fields_set:
            raise ValueError("send at least one of first_name, last_name, phone, tags")
        if "tags" in self.model_fields_set and self.tags is None:
            self.tags = []  # null clears, as it does a name or the phone
        return self

    def changes(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in sorted(self.model_fields_set)}


def _assign_one_of(schema: dict[str, Any]) -> None:
    """Either ``agent_id`` (and no ``pond: true``) or ``pond: true`` (and no agent): what ``_one`` accepts."""
    schema["oneOf"] = [
        {
            "required": ["agent_id"],
            "properties": {"agent_id": {"type": "string"}, "pond": {"anyOf": [{"const": False}, {"type": "null"}]}},
        },
        {"required": ["pond"], "properties": {"pond": {"const": True}, "agent_id": {"type": "null"}}},
    ]


class AssignIn(Input):
    """A3: ``{"agent_id": ...}`` to an agent, or ``{"pond": true}`` to the team's pond."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_assign_one_of)

    agent_id: Slug | None = None
    pond: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> AssignIn:
        if (self.agent_id is None) == (not self.pond):
            raise ValueError("send either agent_id or pond: true")
        return self


class ShareIn(Input):
    model_config = ConfigDict(extra="forbid")

    user_id: Slug
    permission: Literal["view", "edit"] = "view"


class TransferIn(Input):
    model_config = ConfigDict(extra="forbid")

    to: Slug = Field(description="The entity (agent, team, office or company id) that will own the lead.")


class MergeIn(Input):
    model_config = ConfigDict(extra="forbid")

    primary_id: uuid.UUID
    other_id: uuid.UUID
    assigned_agent_id: Slug | None = Field(default=None, description="M6: the assignee an admin chooses.")


class MergeMoves(BaseModel):
    timeline_events: int
    messages: int
    site_activity: int


class MergePreviewOut(BaseModel):
    """M7: what the merge would do; nothing has changed."""

    primary_id: uuid.UUID
    other_id: uuid.UUID
    owner: EntityOut
    assigned_agent: AgentOut | None
    moves: MergeMoves
    stops: list[str] = Field(description="The other lead's active campaigns, stopped with a note each (M5).")
    merged_note: str
    merged_note_data: dict[str, Any]
    rules: list[str]


class UnsubscribeIn(Input):
    model_config = ConfigDict(extra="forbid")

    channel: Literal["email", "sms"]


class CampaignIn(Input):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200)]


class CampaignPage(BaseModel):
    items: list[str]
    next: str | None = None


MAX_BULK_LEADS = 50_000


class BulkIn(Input):
    """SH7/T4: one action on many leads, each decided by the same rule as one at a time."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["share", "transfer", "assign", "archive"]
    lead_ids: list[uuid.UUID] = Field(min_length=1, max_length=MAX_BULK_LEADS)
    user_id: Slug | None = Field(default=None, description="share: the user")
    permission: Literal["view", "edit"] = "view"
    to: Slug | None = Field(default=None, description="transfer: the new owner")
    agent_id: Slug | None = Field(default=None, description="assign: the agent")
    pond: bool | None = Field(default=None, description="assign: to the team's pond")

    @model_validator(mode="after")
    def _params(self) -> BulkIn:
        needed = {"share": "user_id", "transfer": "to"}.get(self.action)
        if needed and getattr(self, needed) is None:
            raise ValueError(f"{needed}: required for {self.action}")
        if self.action == "assign" and (self.agent_id is None) == (not self.pond):
            raise ValueError("agent_id: send either agent_id or pond: true for assign")
        return self


class JobAccepted(BaseModel):
    job_id: uuid.UUID
    status_url: str


class JobFailureOut(BaseModel):
    lead_id: uuid.UUID
    reason: str


class JobOut(BaseModel):
    id: uuid.UUID
    action: str
    status: Literal["queued", "running", "done", "failed"]
    total: int
    done: int
    failed: list[JobFailureOut]
    error: str | None = None


class LeaveOut(BaseModel):
    rerouted: int = Field(description="Team-owned leads it was assigned, routed again by the team's rules (A5).")
    unshared: int = Field(description="Team-owned leads shared with it, no longer (A5).")
    kept: int = Field(description="Leads it owns, which stay with it (T5).")
