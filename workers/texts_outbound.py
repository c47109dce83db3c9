"""Outbound texts: recorded by the API at once, sent by the ``texts.send`` task through the
gateway, in the owner's name and from the owner's smart number (SH4).

A text's ``status``: ``queued`` (recorded, waiting for its task; also between retries), ``sending`` (a
gateway call is in flight), ``sent`` (the gateway took it and gave its sid), ``failed`` (past the
retries, or refused for good; ``error`` says why), ``canceled`` (the lead unsubscribed or went away
before it was sent). Status callbacks move a sent text on (``delivered``, ``undelivered``, ...).

Sent at most once: the task locks the row, moves it from ``queued`` to ``sending`` and commits before
calling the gateway, so a redelivered or duplicated task finds it ``sending`` or ``sent`` and sends
nothing. A worker lost in the middle of a call leaves ``sending``; once that is older than
:data:`STALE_AFTER` the next copy of the task marks it ``failed`` rather than risk a second text."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import structlog

from leadrelay.settings import get_settings
from models.repositories import Caller
from models.tables import Lead, LeadStatus, Message
from models.uow import UnitOfWork
from rules.permissions import NOT_VISIBLE, may_text
from rules.permissions import Refused as RuleRefused
from workers.app import publish
from workers.errors import error_reason
from workers.gateway import GATEWAY_TIMEOUT_SECONDS, GatewayError, TextToSend, gateway_for
from workers.texts import apply_pending_statuses

log = structlog.get_logger(__name__)

# Twilio's limit for one message body (it splits longer ones into segments up to this).
MAX_BODY_CHARS = 1600
# A text still ``sending`` this long after its gateway call began was interrupted (the call is bounded).
STALE_AFTER = dt.timedelta(seconds=3 * GATEWAY_TIMEOUT_SECONDS)
SENDABLE = "queued"
IN_FLIGHT = "sending"


@dataclass(frozen=True)
class Refused:
    """The API's answer when a text cannot be recorded: an HTTP status and a reason naming the rule."""

    status: int
    detail: str
    field: str | None = None


class InFlight(Exception):
    """Another copy of the task is calling the gateway for this text right now: look again later (by
    ``stale_in`` seconds it is either done or known to be interrupted)."""

    def __init__(self, message_id: uuid.UUID, stale_in: float) -> None:
        super().__init__(str(message_id))
        self.stale_in = stale_in


class SendFailed(Exception):
    """The gateway did not take the text; the row keeps the error (and is ``failed`` if this was the last try)."""

    def __init__(self, error: str, *, final: bool) -> None:
        super().__init__(error)
        self.error, self.final = error, final


def record_outbound_text(uow: UnitOfWork, caller: Caller, lead: Lead, body: str) -> uuid.UUID | Refused:
    """Record a text from ``caller`` to a lead it can see (V1), at once, and publish its send task after the
    commit. The text goes out from the owner's smart number in the owner's name (SH4); the row keeps who
    really sent it and the assignee it counts for (S1). Texting is an edit (SH4): a view-only share is
    refused with 403. The caller commits."""
    facts = uow.leads.facts([lead.id]).get(lead.id)
    refusal = NOT_VISIBLE if facts is None else may_text(caller, facts)
    if refusal is not None:
        return Refused(404 if refusal.kind is RuleRefused.NOT_FOUND else 403, refusal.detail)
    if lead.status is LeadStatus.MERGED:
        return Refused(409, f"this lead was merged into {lead.merged_into_id}; text that lead instead")
    if not lead.phone_e164:
        return Refused(422, "lead_id: this lead has no phone number to text", field="lead_id")
    if lead.sms_unsubscribed:
        return Refused(
            409,
            "S4: this lead unsubscribed from texts (it replied STOP; START subscribes it again). "
            "D8: only this lead is unsubscribed; its duplicates under other owners are not.",
        )
    owner = uow.orgs.entity(lead.owner_entity_id)
    found = uow.orgs.smart_number_for(owner)
    if found is None:
        return Refused(
            409,
            f"SH4: no smart number to send from: the owner {owner.slug!r} has none, nor has its company "
            "(give one in smart_numbers in the org file)",
        )
    number, number_of = found
    sender = uow.orgs.user(caller.user_id)
    assignee = uow.orgs.entity(lead.assigned_agent_id) if lead.assigned_agent_id else None
    message_id = uow.texts.add_outbound_text(
        {
            "account_id": lead.account_id,
            "lead_id": lead.id,
            "lead_phone": lead.phone_e164,
            "smart_number": number,
            "body": body,
            "agent_id": lead.assigned_agent_id,
            "sent_by_user_id": sender.id,
            "sent_as": owner.name[:200],
            "created_at": dt.datetime.now(dt.UTC),
        }
    )
    on_behalf = caller.agent_id != owner.id
    summary = (
        f"Text as {owner.name}, sent by {sender.name} (SH4): {_preview(body)}"
        if on_behalf
        else f"Text from {owner.name}: {_preview(body)}"
    )
    uow.leads.add_event(
        account_id=lead.account_id,
        lead_id=lead.id,
        kind="text_sent",
        actor=caller.slug,
        summary=summary,
        data={
            "message_id": str(message_id),
            "sent_as": owner.name,
            "sent_by": caller.slug,
            "agent": assignee.slug if assignee else None,
            "smart_number": number,
            "smart_number_of": number_of.slug,
            "rule": "SH4" if on_behalf else None,
        },
    )
    uow.after_commit(lambda: publish("texts.send", message_id))
    return message_id


def _preview(body: str, limit: int = 160) -> str:
    text = " ".join(body.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def send_text(message_id: uuid.UUID, *, last_try: bool) -> str:
    """Send one recorded text through the configured gateway, at most once; the outcome (``sent``, or the
    state a previous run left: ``skipped``...). Raises :class:`InFlight` when another run is calling the
    gateway for it, and :class:`SendFailed` when the gateway did not take it (``final`` on ``last_try`` or
    a permanent refusal: the row is then ``failed``; else it is ``queued`` again, for the retry)."""
    with UnitOfWork() as uow:
        claim = _claim(uow, message_id)
    if isinstance(claim, str):
        return claim
    try:
        sid = gateway_for(get_settings()).send(claim)
    except Exception as exc:
        permanent = isinstance(exc, GatewayError) and exc.permanent
        error = str(exc) if isinstance(exc, GatewayError) else error_reason(exc)
        final = last_try or permanent
        with UnitOfWork() as uow:
            _record_failure(uow, message_id, error, final=final)
        raise SendFailed(error, final=final) from exc
    with UnitOfWork() as uow:
        record_sent(uow, message_id, sid)
    return "sent"


def _claim(uow: UnitOfWork, message_id: uuid.UUID) -> TextToSend | str:
    """Lock the text; if it is to be sent, mark it ``sending`` and commit, and say what to send."""
    message = uow.texts.message_for_update(message_id)
    if message is None:
        return "missing"
    if message.direction != "outbound" or message.provider_sid is not None:
        return _skip(message)
    if message.status == IN_FLIGHT:
        age = dt.datetime.now(dt.UTC) - message.updated_at
        if age < STALE_AFTER:
            raise InFlight(message_id, (STALE_AFTER - age).total_seconds())
        _finish_failed(
            uow,
            message,
            "interrupted during the gateway call (worker lost); not sent again, so the lead never gets it twice",
        )
        uow.commit()
        return "failed"
    if message.status != SENDABLE:
        return _skip(message)
    lead = uow.leads.get(message.lead_id) if message.lead_id else None
    if lead is None or lead.status is LeadStatus.DELETED:
        return _cancel(uow, message, "the lead was deleted before the text was sent")
    if lead.sms_unsubscribed:
        return _cancel(uow, message, "S4: the lead unsubscribed from texts before it was sent (D8: this lead only)")
    account = uow.orgs.account(message.account_id)
    assert message.smart_number is not None, "outbound texts are recorded with their smart number"
    message.status = IN_FLIGHT
    message.attempts += 1
    message.updated_at = dt.datetime.now(dt.UTC)
    text = TextToSend(
        message_id=message.id,
        account_id=message.account_id,
        to=message.lead_phone,
        from_=message.smart_number,
        body=message.body,
        sms_provider=account.sms_provider,
        sms_account_sid=account.sms_account_sid,
        sms_auth_token_envs=tuple(account.sms_auth_token_envs),
        sms_auth_tokens_encrypted=tuple(account.sms_auth_tokens_encrypted),
    )
    uow.commit()
    return text


def _skip(message: Message) -> str:
    # A redelivered or duplicated task: the text was sent (or settled) by another run.
    log.info("text.send_skipped", message_id=str(message.id), status=message.status)
    return "skipped"


def _cancel(uow: UnitOfWork, message: Message, reason: str) -> str:
    message.status = "canceled"
    message.error = reason
    uow.commit()
    log.info("text.canceled", message_id=str(message.id), reason=reason)
    return "canceled"


def record_sent(uow: UnitOfWork, message_id: uuid.UUID, sid: str) -> None:
    """The gateway took the text: keep its sid, mark it sent, apply the delivery reports already kept; commit."""
    message = uow.texts.message_for_update(message_id)
    assert message is not None
    message.provider_sid = sid
    message.status = "sent"
    message.error = None
    # Delivery reports can reach the webhook before the gateway call returns the sid: apply those kept.
    apply_pending_statuses(uow, message)
    uow.commit()


def _record_failure(uow: UnitOfWork, message_id: uuid.UUID, error: str, *, final: bool) -> None:
    message = uow.texts.message_for_update(message_id)
    if message is None or message.status != IN_FLIGHT:
        return
    if final:
        _finish_failed(uow, message, error)
    else:
        message.status = SENDABLE
        message.error = error[:2000]
    uow.commit()


def _finish_failed(uow: UnitOfWork, message: Message, error: str) -> None:
    message.status = "failed"
    message.error = error[:2000]
    if message.lead_id is not None:
        uow.leads.add_event(
            account_id=message.account_id,
            lead_id=message.lead_id,
            kind="text_failed",
            summary=f"Text not sent after {message.attempts} attempt(s): {error[:300]}",
            data={"message_id": str(message.id), "error": error[:2000], "attempts": message.attempts},
        )
    log.warning("text.failed", message_id=str(message.id), attempts=message.attempts)
