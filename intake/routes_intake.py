"""Intake endpoints: accepted means kept. The raw request is committed before the 202, and the
task is sent only after the commit."""

from __future__ import annotations

import uuid
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Header, Request, Response

from intake.deps import AccountCredential, IntakeKeyCaller, UoW
from intake.problems import Problem
from intake.schemas import Accepted, IntakeOut, RegistrationIn
from models.tables import Intake, IntakeSource
from workers.tasks import process_intake

router = APIRouter(prefix="/v1/intake", tags=["intake"])
log = structlog.get_logger(__name__)


async def _raw_body(request: Request) -> bytes:
    # FastAPI has already read (and cached) the body to parse the model; this is the same bytes.
    return await request.body()


RawBody = Annotated[bytes, Depends(_raw_body)]


def enqueue(intake_id: uuid.UUID) -> None:
    """Hand an intake to the workers. A failed publish loses nothing: the row is committed, and
    ``leadrelay intake replay`` (and the relay) send it again."""
    try:
        process_intake.apply_async(args=[str(intake_id)])
    except Exception as exc:
        log.warning("intake.enqueue_failed", intake_id=str(intake_id), error=type(exc).__name__)


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
    if idempotency_key:
        intake_id, new = uow.intakes.add_idempotent(values)
    else:
        intake_id, new = uow.intakes.add(Intake(**values)).id, True
    uow.commit()
    structlog.contextvars.bind_contextvars(correlation_id=str(intake_id))
    if new:
        enqueue(intake_id)
    log.info("intake.accepted", intake_id=str(intake_id), source="registration", replay=not new)
    status_url = str(request.url_for("get_intake", intake_id=intake_id))
    response.headers["Location"] = status_url
    return Accepted(intake_id=intake_id, status_url=status_url)


@router.get("/{intake_id}", response_model=IntakeOut, name="get_intake")
def get_intake(intake_id: uuid.UUID, account_id: AccountCredential, uow: UoW) -> IntakeOut:
    """An intake's progress, to any credential of its account."""
    intake = uow.intakes.get(intake_id)
    if intake is None or intake.account_id != account_id:
        raise Problem(404, "Not found", "no such intake")
    return IntakeOut(id=intake.id, status=intake.status.value, lead_id=intake.lead_id, reason=intake.reason)
