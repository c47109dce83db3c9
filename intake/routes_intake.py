"""Intake endpoints: accepted means kept. The raw request is committed before the 202, and the
task is sent only after the commit."""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import ValidationError

from intake import providers
from intake.deps import UNAUTHORIZED, AccountCredential, ConnectionKeyHeader, IntakeKeyCaller, UoW
from intake.links import public_url_for, register_id_convertor
from intake.problems import Problem, field_path, invalid
from intake.providers import HotPadsLead, RealtorComLead
from intake.schemas import (
    Accepted,
    ActivityIn,
    AgentOut,
    CandidateOut,
    CandidatePage,
    CandidatesQuery,
    EntityOut,
    IntakeOut,
    RegistrationIn,
    unstorable,
)
from models.security import hash_secret
from models.signups import BATCHED_SOURCES
from models.tables import Intake, IntakeSource
from rules.contact import normalize_email
from rules.ownership import Unclaimed
from workers.app import publish, publish_signup
from workers.services import decide_page_owner

router = APIRouter(prefix="/v1/intake", tags=["intake"])
# ``{intake_id:intake}``: not one of the fixed paths beside it (``GET /v1/intake/registrations`` is their 405).
register_id_convertor("intake", "registrations", "activity", "replay", "providers", "sms")
log = structlog.get_logger(__name__)


async def _raw_body(request: Request) -> bytes:
    """The body as it is kept in ``raw_body``. FastAPI has already read (and cached) it to parse the model;
    this is the same bytes. A NUL byte is refused here for every intake: PostgreSQL's text refuses it, so it
    would fail the INSERT with a 500, and form fields the parser drops (``%00=``'s literal twin) would
    otherwise carry it past the field checks."""
    raw = await request.body()
    if b"\x00" in raw:
        raise invalid("body", "contains a NUL character")
    return raw


RawBody = Annotated[bytes, Depends(_raw_body)]


@dataclass(frozen=True)
class ApiConnectionCaller:
    account_id: int
    connection_id: int
    provider: str


@router.post(
    "/registrations",
    status_code=202,
    response_model=Accepted,
    responses={
        401: {"description": "Unknown or revoked intake key"},
        422: {"description": "Invalid field (problem+json)"},
    },
)
def post_registration(
    body: RegistrationIn,
    raw: RawBody,
    caller: IntakeKeyCaller,
    uow: UoW,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Accepted:
    """A signup on a website, squeeze page or landing page. The page's host decides the owner (O2-O4);
    an unknown host is kept and ends ``rejected`` (O9). The same ``Idempotency-Key`` answers with the first intake."""
    values = {
        "account_id": caller.account_id,
        "source": IntakeSource.REGISTRATION,
        "intake_key_id": caller.intake_key_id,
        "idempotency_key": idempotency_key,
        "content_type": request.headers.get("content-type"),
        "raw_body": raw.decode("utf-8", errors="replace"),
        "payload": body.to_signup().to_dict(),
    }
    return store(uow, values, "registration", request, response)


def store(uow: UoW, values: dict[str, Any], source: str, request: Request, response: Response) -> Accepted:
    """Insert the intake (once per idempotency key, when there is one), committed by its own statement,
    then publish and answer."""
    uow.each_statement_commits()
    if values.get("idempotency_key"):
        intake_id, new = uow.intakes.add_idempotent(values)
    else:
        # An empty Idempotency-Key header is no key: stored as "", it would be one key for every such request.
        intake_id, new = uow.intakes.add(Intake(**{**values, "idempotency_key": None})).id, True
    uow.commit()
    signup = values["source"] in BATCHED_SOURCES
    return accepted(intake_id, new, source, request, response, signup_of=values["account_id"] if signup else None)


@router.post(
    "/activity",
    status_code=202,
    response_model=Accepted,
    responses={
        401: {"description": "Unknown or revoked intake key"},
        422: {"description": "Invalid field (problem+json)"},
    },
)
def post_activity(
    body: ActivityIn,
    raw: RawBody,
    caller: IntakeKeyCaller,
    uow: UoW,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Accepted:
    """A page view, property view or property save on a site (D7). The page's host decides whose lead
    it lands on: the lead of the site's owner for that person, whoever is assigned to it (an unknown
    host ends ``rejected``, O9). With no such lead the activity is kept anonymous (the intake ends
    ``done`` with ``lead_id`` null) and joins the lead's timeline when a signup creates that lead.
    Never makes a lead. The same ``Idempotency-Key`` answers with the first intake."""
    values = {
        "account_id": caller.account_id,
        "source": IntakeSource.ACTIVITY,
        "intake_key_id": caller.intake_key_id,
        "idempotency_key": idempotency_key,
        "content_type": request.headers.get("content-type"),
        "raw_body": raw.decode("utf-8", errors="replace"),
        "payload": body.to_activity().to_dict(),
    }
    return store(uow, values, "activity", request, response)


@router.get(
    "/registrations/candidates",
    response_model=CandidatePage,
    responses={
        401: {"description": "Unknown or revoked intake key"},
        422: {"description": "Invalid email, or a page whose host no entity claims (O9) (problem+json)"},
    },
)
def get_candidates(
    query: Annotated[CandidatesQuery, Query()],
    caller: IntakeKeyCaller,
    uow: UoW,
) -> CandidatePage:
    """The duplicate prompt (D5): the agents this email already works with under owners other than the
    page's owner (an active lead with an assigned agent), most recently active first. The page owner's
    own lead is not listed: answering "none of these" records the signup on it anyway. Names only,
    never the lead's email or phone. With duplication off the list is empty: the signup joins the
    account's lead whatever is chosen (D3). Send the chosen ``lead_id`` as ``existing_lead_id`` in the
    registration."""
    ownership = decide_page_owner(uow.orgs, caller.account_id, query.page_url)
    if isinstance(ownership, Unclaimed):
        raise invalid("page_url", ownership.reason)
    if not uow.orgs.account(caller.account_id).duplication:
        return CandidatePage(items=[])
    candidates = uow.leads.duplicate_candidates(
        account_id=caller.account_id,
        email_normalized=normalize_email(query.email),
        other_than_owner_id=ownership.owner.id,
    )
    return CandidatePage(
        items=[
            CandidateOut(
                lead_id=c.lead_id,
                agent=AgentOut(id=c.agent.slug, name=c.agent.name),
                owner=EntityOut(id=c.owner.slug, kind=c.owner.kind.value, name=c.owner.name),
            )
            for c in candidates
        ]
    )


def accepted(
    intake_id: uuid.UUID,
    new: bool,
    source: str,
    request: Request,
    response: Response,
    *,
    signup_of: int | None = None,
) -> Accepted:
    """After the commit: publish (a new intake only) and answer 202 with where to follow it. A signup of
    account ``signup_of`` shares a task of its account that is queued and not started, if there is one."""
    structlog.contextvars.bind_contextvars(correlation_id=str(intake_id))
    if new and signup_of is not None:
        publish_signup(intake_id, signup_of)
    elif new:
        publish("intake.process", intake_id)
    log.info("intake.accepted", intake_id=str(intake_id), source=source, replay=not new)
    status_url = public_url_for(request, "get_intake", intake_id=intake_id)
    response.headers["Location"] = status_url
    return Accepted(intake_id=intake_id, status_url=status_url)


@router.get(
    "/{intake_id:intake}",
    response_model=IntakeOut,
    name="get_intake",
    responses={
        401: {"description": "No credential of any account (intake key, connection key or admin's user token)"},
        404: {"description": "No such intake in the caller's account"},
    },
)
def get_intake(intake_id: uuid.UUID, account_id: AccountCredential, uow: UoW) -> IntakeOut:
    """An intake's progress, to any credential of its account."""
    intake = uow.intakes.get(intake_id)
    if intake is None or intake.account_id != account_id:
        raise Problem(404, "Not found", "no such intake")
    return IntakeOut(id=intake.id, status=intake.status.value, lead_id=intake.lead_id, reason=intake.reason)


def _connection(uow: UoW, x_api_key: ConnectionKeyHeader) -> ApiConnectionCaller:
    if not x_api_key:
        raise UNAUTHORIZED
    connection = uow.orgs.api_connection_by_hash(hash_secret(x_api_key))
    caller = ApiConnectionCaller(connection.account_id, connection.id, connection.provider) if connection else None
    uow.end_read()
    if caller is None:
        raise UNAUTHORIZED
    return caller


ConnectionCaller = Annotated[ApiConnectionCaller, Depends(_connection)]


def _decode(fmt: str, raw: bytes) -> dict[str, Any]:
    """The payload as a dict: JSON for the Realtor.com shape, form fields for HotPads; text that cannot
    be stored (a NUL character, an unpaired surrogate) is refused here, naming the field."""
    try:
        body = _parse(fmt, raw)
        found = unstorable(body)
    except RecursionError as exc:  # json.loads and the walk over the value recurse once per level
        raise invalid("body", "nested too deeply") from exc
    if found is not None:
        field, message = found[0] or "body", found[1]
        raise invalid(field, message)
    return body


def _parse(fmt: str, raw: bytes) -> dict[str, Any]:
    text = raw.decode("utf-8", errors="replace")
    if fmt == "hotpads":
        return dict(urllib.parse.parse_qsl(text, keep_blank_values=False))
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid("body", "not JSON", detail=f"body: not JSON ({exc.msg})") from exc
    if not isinstance(body, dict):
        raise invalid("body", "must be an object", detail="body: must be a JSON object")
    return body


@router.post(
    "/providers/{format}",
    status_code=202,
    response_model=Accepted,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": RealtorComLead.model_json_schema()},
                "application/x-www-form-urlencoded": {"schema": HotPadsLead.model_json_schema()},
            }
        }
    },
    responses={
        401: {"description": "Unknown or revoked connection key"},
        422: {"description": "Invalid field (problem+json)"},
    },
)
def post_provider_lead(
    format: Literal["realtor_com", "zillow", "hotpads"],  # the documented path parameter's name
    raw: RawBody,
    connection: ConnectionCaller,
    uow: UoW,
    request: Request,
    response: Response,
) -> Accepted:
    """A lead from a provider. ``realtor_com`` and ``zillow`` take the Realtor.com-style JSON, ``hotpads``
    the HotPads callback form. The connection key alone decides the owner (O5, O4); the provider's lead id
    is the idempotency key, so the same lead posted again answers with the first intake."""
    try:
        signup, provider_lead_id = providers.parse(format, _decode(format, raw))
    except ValidationError as exc:
        errors = [
            {"field": field_path(("body", *e["loc"])), "message": e["msg"].removeprefix("Value error, ")}
            for e in exc.errors()
        ]
        raise Problem(
            422, "Invalid request", "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors
        ) from exc
    signup = dataclasses.replace(signup, source_detail=f"{format} lead {provider_lead_id}")
    intake_id, new = uow.intakes.add_idempotent(
        {
            "account_id": connection.account_id,
            "source": IntakeSource.PROVIDER,
            "api_connection_id": connection.connection_id,
            "idempotency_key": f"{connection.connection_id}:{provider_lead_id}"[:255],
            "content_type": request.headers.get("content-type"),
            "raw_body": raw.decode("utf-8", errors="replace"),
            "payload": signup.to_dict(),
        }
    )
    uow.commit()
    return accepted(intake_id, new, "provider", request, response, signup_of=connection.account_id)
