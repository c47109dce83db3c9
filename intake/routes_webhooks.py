"""Outbound webhooks for a company admin: the account's endpoints (from its org file), each one's
deliveries with their tries, and replay. The events themselves are described in the OpenAPI document's
``webhooks`` section (:func:`describe_events`)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from intake.deps import CurrentUser, UoW
from intake.problems import Problem
from models.repositories import Caller
from models.tables import WebhookDelivery, WebhookEndpoint
from models.uow import UnitOfWork
from rules.webhooks import EVENT_TYPES, message_id
from workers import webhooks

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

ADMINS_ONLY: dict[int | str, dict[str, Any]] = {
    403: {"description": "Only an admin of the account's company sees and replays its webhooks"}
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No webhook of this id in the account"}}
# One request replays at most this many; ask again for the rest (the oldest go first).
REPLAY_PAGE = 1000


class WebhookOut(BaseModel):
    id: str = Field(description="The id the org file gives the endpoint")
    url: str
    events: list[str] = Field(description="The event types it receives (`*`: all)")
    active: bool = Field(description="As the org file says; false once the file no longer lists it")
    disabled_at: dt.datetime | None = Field(description="When a `410 Gone` answer disabled it (apply the file again)")
    disabled_reason: str | None
    secrets: int = Field(description="How many secrets sign each delivery (each gives a signature)")
    deliveries: dict[str, int] = Field(description="Its deliveries by status: pending, delivered, failed")


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]


class AttemptOut(BaseModel):
    at: str
    status: int | None = Field(description="The receiver's HTTP status; null when no answer came")
    error: str | None
    excerpt: str = Field(description="The start of the receiver's answer (at most 200 characters)")
    ms: int


class DeliveryOut(BaseModel):
    id: uuid.UUID
    webhook_id: str = Field(description="The `webhook-id` header it is sent with, the same on every try")
    type: str
    lead_id: uuid.UUID | None
    version: int = Field(description="The event's version (`data.version` of a lead event)")
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: dt.datetime | None = Field(description="When a pending delivery is tried next")
    last_error: str | None
    created_at: dt.datetime
    delivered_at: dt.datetime | None
    tries: list[AttemptOut] = Field(description="Its last tries, oldest first")


class DeliveryPage(BaseModel):
    deliveries: list[DeliveryOut]
    next_before: int | None = Field(description="Pass as `before` for the next (older) page; null at the end")


class WebhookReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: AwareDatetime | None = Field(default=None, description="only deliveries made since then")
    delivery_ids: list[uuid.UUID] = Field(
        default_factory=list,
        max_length=REPLAY_PAGE,
        description="these deliveries, whatever their status (default: every failed delivery)",
    )


class WebhookReplayOut(BaseModel):
    replayed: int
    delivery_ids: list[uuid.UUID]


def _admin(uow: UnitOfWork, caller: Caller) -> None:
    if not uow.orgs.is_company_admin(caller):
        raise Problem(403, "Forbidden", "only an admin of the account's company sees and replays its webhooks")


def _endpoint(uow: UnitOfWork, caller: Caller, slug: str) -> WebhookEndpoint:
    _admin(uow, caller)
    endpoint = uow.webhooks.endpoint_by_slug(caller.account_id, slug)
    if endpoint is None:
        raise Problem(404, "Not found", f"no webhook {slug!r} in this account")
    return endpoint


@router.get("", response_model=WebhookList, responses=ADMINS_ONLY)
def list_webhooks(caller: CurrentUser, uow: UoW) -> WebhookList:
    """The account's outbound webhooks as its org file gives them, with their deliveries counted by status.
    Secrets are never shown, only how many there are."""
    _admin(uow, caller)
    endpoints = uow.webhooks.endpoints(caller.account_id)
    counts = uow.webhooks.counts_by_status([e.id for e in endpoints])
    return WebhookList(
        webhooks=[
            WebhookOut(
                id=e.slug,
                url=e.url,
                events=list(e.events),
                active=e.active,
                disabled_at=e.disabled_at,
                disabled_reason=e.disabled_reason,
                secrets=len(e.secrets_encrypted) + len(e.secret_envs),
                deliveries={s: counts.get((e.id, s), 0) for s in ("pending", "delivered", "failed")},
            )
            for e in endpoints
        ]
    )


def _delivery(row: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=row.id,
        webhook_id=message_id(row.id),
        type=row.event_type,
        lead_id=row.lead_id,
        version=row.seq,
        status=row.status,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
        last_error=row.last_error,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
        tries=[AttemptOut(**attempt) for attempt in row.attempt_log],
    )


@router.get("/{webhook_id}/deliveries", response_model=DeliveryPage, responses={**ADMINS_ONLY, **NOT_FOUND})
def list_deliveries(
    webhook_id: str,
    caller: CurrentUser,
    uow: UoW,
    status: Literal["pending", "delivered", "failed"] | None = None,
    before: int | None = Query(default=None, description="`next_before` of the previous page"),
    limit: int = Query(default=50, ge=1, le=500),
) -> DeliveryPage:
    """The endpoint's deliveries, newest first, each with its tries (the receiver's status and the start
    of its answer). The payload itself is not shown: it holds the leads' contact details."""
    endpoint = _endpoint(uow, caller, webhook_id)
    rows = uow.webhooks.deliveries(endpoint.id, status=status, before=before, limit=limit)
    return DeliveryPage(
        deliveries=[_delivery(row) for row in rows],
        next_before=rows[-1].seq if len(rows) == limit else None,
    )


@router.post(
    "/{webhook_id}/replay", status_code=202, response_model=WebhookReplayOut, responses={**ADMINS_ONLY, **NOT_FOUND}
)
def replay_deliveries(webhook_id: str, body: WebhookReplayIn, caller: CurrentUser, uow: UoW) -> WebhookReplayOut:
    """Send the endpoint's ``failed`` deliveries again (or the ones named), oldest first, up to 1,000 a
    request: each goes back to ``pending`` with its tries counted from zero and keeps its ``webhook-id``,
    so a receiver that did get it once drops the repeat."""
    endpoint = _endpoint(uow, caller, webhook_id)
    ids = webhooks.replay(uow, endpoint, since=body.since, delivery_ids=body.delivery_ids, limit=REPLAY_PAGE)
    return WebhookReplayOut(replayed=len(ids), delivery_ids=ids)


# --- the events, for the OpenAPI document -----------------------------------------------------------


class LeadContact(BaseModel):
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = Field(default=None, description="E.164")


class LeadEventData(BaseModel):
    """``data`` of every ``lead.*`` and ``text.*`` event."""

    lead_id: uuid.UUID
    version: int = Field(description="Grows with every change of the lead: keep the highest one you saw")
    status: Literal["active", "archived", "merged", "deleted"]
    owner: str | None = Field(description="The owning entity's id (company, office, team or agent)")
    assignee: str | None = Field(description="The assigned agent's id; null when unassigned or in a pond")
    lead: LeadContact = Field(description="The contact details (empty for a deleted lead)")
    rule: str | None = Field(description="The rule that decided (e.g. A2, D4, T3), as on the timeline")
    explanation: str = Field(description="The timeline's sentence for this decision")
    details: dict[str, Any] = Field(description="The timeline entry's data (what the rule looked at)")
    actor: str = Field(description="`system`, or the id of the user who acted")
    intake_id: uuid.UUID | None = Field(description="The intake that caused it, if one did")


class IntakeEventData(BaseModel):
    """``data`` of ``intake.rejected`` and ``intake.dead``."""

    intake_id: uuid.UUID
    source: str
    rule: str | None
    explanation: str = Field(description="Why (the intake's reason)")


class ImportEventData(BaseModel):
    """``data`` of ``import.finished``."""

    import_id: uuid.UUID
    status: Literal["done", "failed"]
    rows: int = Field(description="Rows read")
    created: int = Field(description="New leads made")
    existing: int = Field(description="Rows that joined a lead that existed (a signup on it)")
    duplicates: int = Field(description="Rows repeating an earlier row of the file")
    rejected: int = Field(description="Rows refused, each with its reason in GET /v1/imports/{id}")
    error: str | None = Field(description="Why a failed import failed")


def describe_events(app: FastAPI) -> None:
    """One entry per event type in the OpenAPI document's ``webhooks`` section (OpenAPI 3.1)."""
    for event_type, what in EVENT_TYPES.items():
        data_model: type[BaseModel] = (
            IntakeEventData
            if event_type.startswith("intake.")
            else ImportEventData
            if event_type.startswith("import.")
            else LeadEventData
        )
        payload = type(
            "Event_" + event_type.replace(".", "_"),
            (BaseModel,),
            {
                "__annotations__": {"type": Literal[event_type], "timestamp": dt.datetime, "data": data_model},
                "__doc__": what,
            },
        )

        def receive(body: Any) -> None:
            """Described only: leadrelay sends it."""

        receive.__annotations__ = {"body": payload, "return": None}
        app.webhooks.post(
            event_type,
            summary=event_type,
            description=what + "\n\nSent with the Standard Webhooks headers `webhook-id`, `webhook-timestamp` and "
            "`webhook-signature`; answer 2xx to acknowledge, 410 to disable the endpoint.",
            operation_id=f"webhook_{event_type.replace('.', '_')}",
        )(receive)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        # What a receiver answers, not what leadrelay's API answers: FastAPI's validation error is no part of it.
        for item in schema.get("webhooks", {}).values():
            item["post"]["responses"] = RECEIVER_ANSWERS
        components = schema.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):  # in this order: the first refers to the second
            if f'"#/components/schemas/{unused}"' not in json.dumps(schema):
                components.pop(unused, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


RECEIVER_ANSWERS: dict[str, Any] = {
    "2XX": {"description": "Received: the delivery is done"},
    "410": {"description": "Gone: the endpoint is disabled until its org file is applied again"},
    "default": {"description": "Anything else (or no answer in 10 s): tried again later, with the same webhook-id"},
}
