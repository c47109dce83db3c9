"""The API the benchmarks run: the product's app (``intake.api.create_app``), served by uvicorn exactly as
``leadrelay api`` serves it, plus the baselines' endpoints under ``/v1/bench``. Only the benchmark
starts it; the product never mounts these routes.

    python -m bench.app --port 8000
"""

from __future__ import annotations

import argparse
import uuid
from typing import Annotated

from fastapi import APIRouter, FastAPI, Header, Request, Response

from intake import routes_sms as sms
from intake.api import create_app as product_app
from intake.deps import UoW
from intake.problems import invalid
from intake.routes_intake import RawBody
from leadrelay.settings import get_settings
from models.tables import IntakeSource
from rules.texts import InboundText
from workers.app import app as celery_app
from workers.celeryconfig import queue_name

router = APIRouter(prefix="/v1/bench", tags=["bench"])


@router.post("/noop", status_code=202)
def post_noop(
    request: Request, idempotency_key: Annotated[str | None, Header(max_length=100)] = None
) -> dict[str, str]:
    """Scenario 1's baseline: the same server hands a Celery task that only records it ran to the same
    broker and queue as a registration's, and answers 202. No database work in the request."""
    key = idempotency_key or str(uuid.uuid4())
    celery_app.send_task("bench.noop", args=[key], queue=queue_name(get_settings(), "registrations"))
    return {"intake_id": key}


@router.post("/sms-store", response_class=Response)
def post_sms_store(raw: RawBody, uow: UoW, request: Request, signature: sms.Signature = None) -> Response:
    """Scenario 4's baseline: Twilio's inbound-text webhook checked and stored as ``POST /v1/intake/sms/twilio``
    checks and stores it (the smart number's account, the same ``X-Twilio-Signature`` check over
    ``LEADRELAY_PUBLIC_BASE_URL`` plus this path, the same intake row, committed), answered with the same
    empty TwiML; no task is published and nothing is logged. Its steps are the product route's own
    helpers, in the same order; only the publish and the log line are left out."""
    form = sms._form(raw)
    to = sms._e164(form.first("To"))
    number = uow.orgs.smart_number_by_e164(to) if to else None
    if to is None or number is None:
        raise sms._forbidden("To is not a smart number of any account", to or form.first("To"))
    sms._check_signature(request, form, uow.orgs.account(number.account_id), signature, to)
    sms._storable(form)
    sid = (form.first("MessageSid") or "").strip()
    sender = (form.first("From") or "").strip()
    if not sid or len(sid) > 64:
        raise invalid("MessageSid", "required, at most 64 characters")
    if not sender:
        raise invalid("From", "required")
    try:
        num_media = max(0, int(form.first("NumMedia") or 0))
    except ValueError:
        num_media = 0
    media = tuple(url for i in range(min(num_media, sms.MAX_MEDIA)) if (url := form.first(f"MediaUrl{i}")))
    inbound = InboundText(
        message_sid=sid,
        to=to,
        from_raw=sender,
        from_e164=sms._e164(sender),
        body=form.first("Body") or "",
        account_sid=form.first("AccountSid"),
        num_media=num_media,
        media_urls=media,
    )
    uow.intakes.add_idempotent(
        {
            "account_id": number.account_id,
            "source": IntakeSource.SMS,
            "idempotency_key": sid,
            "content_type": request.headers.get("content-type"),
            "raw_body": raw.decode("utf-8", errors="replace"),
            "payload": inbound.to_dict(),
        }
    )
    uow.commit()
    return sms._twiml()


def create_app() -> FastAPI:
    app = product_app()
    app.include_router(router)
    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    # As ``leadrelay api`` serves (uvloop when installed, h11); bench.api_cost compares the alternatives.
    parser.add_argument("--loop", default="auto", help="auto, asyncio or uvloop")
    parser.add_argument("--http", default="h11", help="h11 or httptools")
    args = parser.parse_args()
    uvicorn.run(
        "bench.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=1,
        log_config=None,
        loop=args.loop,
        http=args.http,
    )


if __name__ == "__main__":
    main()
