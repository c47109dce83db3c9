"""``POST /v1/events``: Follow Up Boss's Events API, so a lead provider that posts to Follow Up Boss
can post here unchanged. Accepted means kept, as for every intake: the raw request is committed
before the 202, and the task is sent only after the commit."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from intake.deps import UoW
from intake.fub import FubEvent
from intake.problems import Problem
from intake.routes_intake import ApiConnectionCaller, RawBody, store
from intake.schemas import Accepted
from models.security import hash_secret
from models.tables import IntakeSource
from rules.activity import SiteActivityEvent

router = APIRouter(prefix="/v1", tags=["events"])

REALM = "leadrelay"
_basic = HTTPBasic(
    realm=REALM,
    auto_error=False,
    scheme_name="ConnectionKeyBasic",
    description="Follow Up Boss's convention: the API connection key as the user name, an empty password "
    "(any password is ignored).",
)
BasicCredentials = Annotated[HTTPBasicCredentials | None, Depends(_basic)]

UNAUTHORIZED_BASIC = Problem(
    401,
    "Unauthorized",
    "HTTP Basic authentication with an API connection key as the user name is required",
    headers={"WWW-Authenticate": f'Basic realm="{REALM}"'},
)


def _basic_connection(uow: UoW, creds: BasicCredentials) -> ApiConnectionCaller:
    """The API connection whose key is the Basic user name; the password is ignored, as Follow Up Boss does.
    A malformed Basic header is refused by ``HTTPBasic`` itself, with the same 401 and challenge."""
    if creds is None or not creds.username:
        raise UNAUTHORIZED_BASIC
    connection = uow.orgs.api_connection_by_hash(hash_secret(creds.username))
    caller = ApiConnectionCaller(connection.account_id, connection.id, connection.provider) if connection else None
    uow.end_read()
    if caller is None:
        raise UNAUTHORIZED_BASIC
    return caller


BasicConnection = Annotated[ApiConnectionCaller, Depends(_basic_connection)]


@router.post(
    "/events",
    status_code=202,
    response_model=Accepted,
    responses={
        401: {"description": "Missing or malformed Basic credentials, or an unknown or revoked connection key"},
        422: {"description": "Invalid field, or a person with neither email nor phone (problem+json)"},
    },
)
def post_event(
    body: FubEvent,
    raw: RawBody,
    connection: BasicConnection,
    uow: UoW,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Accepted:
    """A lead or activity in Follow Up Boss's Events API shape, authenticated the Follow Up Boss way
    (HTTP Basic: the connection key as user name, password ignored).

    The connection alone decides the owner (O5 agent, O4 team), whatever the body says about agents.
    Registration, the inquiries, Visited Open House and unknown types make or join a lead like any
    signup (D1, D4); Viewed Property, Saved Property, Viewed Page and Visited Website are activity (D7):
    recorded on the connection owner's lead for that person, else kept anonymous, never a new lead.

    **Unlike Follow Up Boss**, which answers 200 with the person once processed, this answers
    **202 with the intake** (``intake_id``, ``status_url``, and a ``Location`` header) as soon as the
    request is stored: accepted means kept, and processing is asynchronous. Follow ``status_url``
    (``GET /v1/intake/{id}`` with the same key in ``X-Api-Key``) to learn the lead's id. The same
    ``Idempotency-Key`` answers with the first intake."""
    work = body.to_work()
    part = "activity" if isinstance(work, SiteActivityEvent) else "signup"
    payload = {"event_type": body.event_type().name, part: work.to_dict()}
    values = {
        "account_id": connection.account_id,
        "source": IntakeSource.EVENTS,
        "api_connection_id": connection.connection_id,
        # Scoped to the connection: two senders of one account may use the same keys.
        "idempotency_key": f"{connection.connection_id}:{idempotency_key}" if idempotency_key else None,
        "content_type": request.headers.get("content-type"),
        "raw_body": raw.decode("utf-8", errors="replace"),
        "payload": payload,
    }
    return store(uow, values, "events", request, response)
