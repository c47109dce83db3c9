"""Twilio's webhooks: inbound texts to a smart number, and delivery reports of outbound texts.

Both are signed with ``X-Twilio-Signature`` (HMAC-SHA1 of the URL Twilio was given and the sorted
form fields, with the account's auth token), checked by the ``twilio`` package's ``RequestValidator``
over ``LEADRELAY_PUBLIC_BASE_URL`` plus the request's path, never over a URL rebuilt from the
``Host`` or ``X-Forwarded-*`` headers, which anyone can send. Every token of the account is tried, so
a token can be rotated without a gap: the org file's literal ``sms.auth_tokens``, stored encrypted and
decrypted with the process's keyring (``LEADRELAY_SECRET_KEY``), and the tokens of the environment
variables it names in ``sms.auth_tokens_env``.

Every refusal (a number no account has, an account with no usable token, a missing or wrong
signature) is the same 403 with the same body, so the answers do not tell which numbers are smart
numbers; the log says which it was, the number masked."""

from __future__ import annotations

import os
import urllib.parse
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Header, Request, Response
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

from intake.deps import UoW
from intake.problems import Problem, invalid
from intake.routes_intake import RawBody
from intake.schemas import unstorable
from leadrelay.settings import get_settings
from models.secrets import keyring
from models.tables import Account, IntakeSource
from models.uow import UnitOfWork
from rules.contact import InvalidPhone, mask_phone, normalize_phone
from rules.texts import InboundText
from workers import texts
from workers.gateway import decrypt_auth_tokens
from workers.relay import send_text

router = APIRouter(prefix="/v1/intake/sms", tags=["intake"])
log = structlog.get_logger(__name__)

# TwiML that asks Twilio to do nothing more (no auto-reply): the agent answers, later.
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
MAX_MEDIA = 10

_FIELD = {"type": "string"}
INBOUND_SCHEMA: dict[str, Any] = {
    "title": "TwilioInboundMessage",
    "description": "Twilio's inbound-message webhook, unchanged; fields Twilio adds later are accepted and kept.",
    "type": "object",
    "required": ["MessageSid", "From", "To"],
    "properties": {
        "MessageSid": {"type": "string", "minLength": 1, "maxLength": 64},
        "AccountSid": _FIELD,
        "MessagingServiceSid": _FIELD,
        "From": {"type": "string", "minLength": 1, "description": "The lead's phone"},
        "To": {"type": "string", "minLength": 1, "description": "The smart number: decides the account and the owner"},
        "Body": _FIELD,
        "NumMedia": _FIELD,
        "MediaUrl0": _FIELD,
        "MediaContentType0": _FIELD,
    },
    "additionalProperties": {"type": "string"},
}
STATUS_SCHEMA: dict[str, Any] = {
    "title": "TwilioMessageStatus",
    "description": "Twilio's status callback for an outbound text; other fields are accepted and kept.",
    "type": "object",
    "required": ["MessageSid", "MessageStatus"],
    "properties": {
        "MessageSid": {"type": "string", "minLength": 1, "maxLength": 64},
        "MessageStatus": {"type": "string", "minLength": 1, "maxLength": 20},
        "ErrorCode": {"type": "string", "maxLength": 20},
        "AccountSid": _FIELD,
        "From": {"type": "string", "description": "The smart number the text went out from"},
        "To": _FIELD,
    },
    "additionalProperties": {"type": "string"},
}
_TWIML_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Kept (or kept already): empty TwiML",
        "content": {"text/xml": {"schema": {"type": "string"}}},
    },
    403: {
        "description": "Missing or wrong X-Twilio-Signature, or a number no account has: one and the same "
        "answer for each (nothing is stored)"
    },
    422: {"description": "A signed request without a field it needs, or with text that cannot be stored"},
}
Signature = Annotated[
    str | None,
    Header(alias="X-Twilio-Signature", description="Twilio's HMAC-SHA1 signature of the public URL and the fields"),
]


class _Form(dict[str, list[str]]):
    """Form fields as ``RequestValidator`` reads them: every value of a repeated field (Django's getlist)."""

    def getlist(self, key: str) -> list[str]:
        return self[key]

    def first(self, key: str) -> str | None:
        values = self.get(key)
        return values[0] if values else None


def _form(raw: bytes) -> _Form:
    form = _Form()
    # Blank values too: Twilio signs every field it posts.
    for key, value in urllib.parse.parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True):
        form.setdefault(key, []).append(value)
    return form


def public_url(request: Request) -> str:
    """The URL Twilio was given for this webhook: the configured public base and the request's path
    (and query, which Twilio signs too). Not the Host header, not X-Forwarded-*."""
    url = get_settings().public_base_url.rstrip("/") + request.url.path
    return f"{url}?{request.url.query}" if request.url.query else url


# The one answer to every refused webhook: distinct texts would tell a caller without any token which
# numbers are smart numbers (an unknown number was refused with its own text before the signature).
REFUSED = "the request is not signed by the account of this number (X-Twilio-Signature)"


def _forbidden(reason: str, number: str | None = None, **fields: Any) -> Problem:
    """The 403 of a refused webhook; the real ``reason`` goes to the log only, with the number masked."""
    log.warning("sms.webhook_refused", reason=reason, number=mask_phone(number) if number else None, **fields)
    return Problem(403, "Forbidden", REFUSED)


def auth_tokens(account: Account) -> list[str]:
    """Every auth token of the account in clear: the literal ones of the org file, then those of the
    variables it names that are set in this process's environment."""
    tokens: list[str] = []
    if account.sms_auth_tokens_encrypted:
        tokens, unreadable = decrypt_auth_tokens(account.sms_auth_tokens_encrypted, keyring())
        if unreadable:
            # Counts only: the configuration is wrong (a key dropped too early), and the operator must see it.
            log.warning("sms.auth_token_undecryptable", account_id=account.id, unreadable=unreadable)
    tokens += [token for token in (os.environ.get(name, "").strip() for name in account.sms_auth_token_envs) if token]
    return tokens


def _check_signature(request: Request, form: _Form, account: Account, signature: str | None, number: str) -> None:
    if not signature:
        raise _forbidden("X-Twilio-Signature is missing", number)
    tokens = auth_tokens(account)
    if not tokens:
        # Names only, never values: the configuration is wrong, and the operator must see it.
        raise _forbidden(
            "no auth token is configured for this number's account",
            number,
            account_id=account.id,
            token_envs=list(account.sms_auth_token_envs),
        )
    url = public_url(request)
    if not any(RequestValidator(token).validate(url, form, signature) for token in tokens):
        raise _forbidden("X-Twilio-Signature does not match this request", number)


def _storable(form: _Form) -> None:
    """A percent-encoded NUL (``%00``) or unpaired surrogate in a field; a raw NUL byte was refused with the body
    (``RawBody``)."""
    found = unstorable({key: values[0] if len(values) == 1 else values for key, values in form.items()})
    if found is not None:
        raise invalid(found[0] or "body", found[1])


def _e164(number: str | None) -> str | None:
    if not number:
        return None
    try:
        return normalize_phone(number)
    except InvalidPhone:
        return None


def _twiml() -> Response:
    return Response(EMPTY_TWIML, media_type="text/xml")


@router.post(
    "/twilio",
    response_class=Response,
    responses=_TWIML_RESPONSE,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": INBOUND_SCHEMA}}}
    },
)
def post_twilio_inbound(raw: RawBody, uow: UoW, request: Request, signature: Signature = None) -> Response:
    """An inbound text to a smart number: Twilio's webhook, unchanged. ``To`` names the smart number,
    hence the account and the entity (O6). Signed with the account's auth token (any of them while one is
    rotated); a missing or wrong signature, or a number no account has, is 403 and stores nothing. The
    text is kept before the answer, ``200 text/xml <Response/>``; the same ``MessageSid`` again answers the
    same and is routed once. A worker then routes it to the lead and agent that texted that phone last
    (S1-S3) and applies STOP/START (S4, D8)."""
    form = _form(raw)
    to = _e164(form.first("To"))
    number = uow.orgs.smart_number_by_e164(to) if to else None
    if to is None or number is None:
        raise _forbidden("To is not a smart number of any account", to or form.first("To"))
    account_id = number.account_id
    _check_signature(request, form, uow.orgs.account(account_id), signature, to)
    _storable(form)
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
    media = tuple(url for i in range(min(num_media, MAX_MEDIA)) if (url := form.first(f"MediaUrl{i}")))
    text = InboundText(
        message_sid=sid,
        to=to,
        from_raw=sender,
        from_e164=_e164(sender),
        body=form.first("Body") or "",
        account_sid=form.first("AccountSid"),
        num_media=num_media,
        media_urls=media,
    )
    intake_id, new = uow.intakes.add_idempotent(
        {
            "account_id": account_id,
            "source": IntakeSource.SMS,
            "idempotency_key": sid,
            "content_type": request.headers.get("content-type"),
            "raw_body": raw.decode("utf-8", errors="replace"),
            "payload": text.to_dict(),
        }
    )
    uow.commit()
    structlog.contextvars.bind_contextvars(correlation_id=str(intake_id))
    if new:
        # On the texts queue, so a flood of registrations never delays a reply; one task for the texts that
        # come while a task of the account's texts is queued (a batch takes them all).
        send_text(intake_id, account_id)
    log.info("intake.accepted", intake_id=str(intake_id), source="sms", replay=not new, sender=mask_phone(sender))
    return _twiml()


@router.post(
    "/twilio/status",
    response_class=Response,
    responses=_TWIML_RESPONSE,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": STATUS_SCHEMA}}}
    },
)
def post_twilio_status(raw: RawBody, uow: UoW, request: Request, signature: Signature = None) -> Response:
    """A delivery status of an outbound text (Twilio's status callback: ``MessageSid``, ``MessageStatus``,
    ``ErrorCode``), signed as inbound texts are. Kept once per (sid, status) and applied to the text with
    that sid: statuses only move forward (queued, sending, sent, then delivered, undelivered or failed),
    so a late or repeated callback changes nothing; one that comes before the text has its sid is kept
    and applied when the sid is recorded. The account is the one of the sending smart number (``From``),
    else of the text with that sid; neither is 403."""
    form = _form(raw)
    sid = (form.first("MessageSid") or form.first("SmsSid") or "").strip()
    account_id = _status_account(uow, sid, form.first("From"))
    if account_id is None:
        raise _forbidden("neither From nor MessageSid belongs to an account", form.first("From"))
    _check_signature(request, form, uow.orgs.account(account_id), signature, form.first("From") or "")
    _storable(form)
    status = (form.first("MessageStatus") or form.first("SmsStatus") or "").strip().lower()
    if not sid or len(sid) > 64:
        raise invalid("MessageSid", "required, at most 64 characters")
    if not status or len(status) > 20:
        raise invalid("MessageStatus", "required, at most 20 characters")
    error_code = (form.first("ErrorCode") or "").strip()[:20] or None
    texts.record_status_callback(
        uow,
        account_id=account_id,
        provider_sid=sid,
        status=status,
        error_code=error_code,
        raw={key: values[0] if len(values) == 1 else values for key, values in form.items()},
    )
    return _twiml()


def _status_account(uow: UnitOfWork, sid: str, sender: str | None) -> int | None:
    e164 = _e164(sender)
    number = uow.orgs.smart_number_by_e164(e164) if e164 else None
    if number is not None:
        return number.account_id
    # A sid that cannot be stored (a NUL) is no text's, and the database would refuse to compare it.
    return uow.texts.account_of_text_sid(sid) if sid and unstorable(sid) is None else None
