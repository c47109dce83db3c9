"""Outbound webhooks, run: deliveries written in the transaction of the change they report, then sent by
the ``webhooks.deliver`` task on the ``webhooks`` queue, signed as the Standard Webhooks specification says.

Delivery is at least once: a delivery keeps its ``webhook-id`` on every try, so a receiver drops a
repeat by it. A try that fails waits as ``LEADRELAY_WEBHOOKS_RETRY_SECONDS`` says (jittered); a wait
longer than a task's countdown may be is kept on the row (``next_attempt_at``) and the relay sends the
task when it is due, as it does for a task that was lost. Past the last wait the delivery is ``failed``
(``GET /metrics``; ``POST /v1/webhooks/{id}/replay`` or ``leadrelay webhooks replay`` send it again).

Safe sending: only ``https://`` to hosts whose every address is public, connected to the address that
was checked (a second DNS answer cannot swap in a private one), 10 s timeout, redirects not followed;
``LEADRELAY_WEBHOOKS_ALLOW_PRIVATE`` lifts the address and scheme checks for development and tests. A
receiver's answer is kept as a short excerpt only. Signing secrets and a lead's email and phone are
in no log line and no task argument."""

from __future__ import annotations

import binascii
import collections
import datetime as dt
import functools
import ipaddress
import json
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import structlog
from standardwebhooks import Webhook
from standardwebhooks.webhooks import EmptyWebhookSecretError

from leadrelay.settings import get_settings
from models.orgsnapshot import OrgSnapshot
from models.secrets import UndecryptableSecret, keyring
from models.tables import Intake, Message, WebhookEndpoint
from models.uow import UnitOfWork
from rules.signups import Facts, SignupIn, SignupPlan
from rules.webhooks import (
    TIMELINE_EVENTS,
    Delivery,
    Event,
    LeadView,
    Subscriptions,
    address,
    body,
    excerpt,
    import_event,
    intake_event,
    lead_data,
    message_id,
    outcome_of,
    retry_wait,
    timeline_event,
    timeline_events,
)
from workers.app import publish
from workers.celeryconfig import MAX_RETRY_COUNTDOWN

log = structlog.get_logger(__name__)

DELIVER_TASK = "webhooks.deliver"
TIMEOUT_SECONDS = 10.0
# A try holds its delivery this long (the timeout, with room to record the answer): a second copy of the
# task finds it not due meanwhile, and the relay takes it again once this is over (a killed worker).
LEASE = dt.timedelta(seconds=3 * TIMEOUT_SECONDS)
USER_AGENT = "leadrelay-webhooks/1"
# Of a receiver's answer, at most this much is read (the excerpt kept is shorter still).
ANSWER_BYTES = 1024


# --- written with a change --------------------------------------------------------------------------


def subscriptions_of(uow: UnitOfWork, account_id: int) -> Subscriptions:
    """The account's subscriptions: from the organisation a worker keeps when it is this account's, else read."""
    snapshot = uow.orgs.snapshot
    if snapshot is not None and snapshot.account_id == account_id:
        return snapshot.webhooks
    return uow.orgs.webhook_subscriptions(account_id)


def record_timeline(uow: UnitOfWork, account_id: int, rows: Sequence[Mapping[str, Any]]) -> None:
    """The events that timeline rows (as ``LeadRepository.add_events`` takes them) are, written as deliveries
    in the caller's transaction and sent after it commits. Nothing is read when no endpoint listens."""
    subs = subscriptions_of(uow, account_id)
    if not subs or not rows:
        return
    wanted = [row for row in rows if _wanted(subs, row["kind"])]
    if not wanted:
        return
    leads = uow.webhooks.lead_views(row["lead_id"] for row in wanted)
    events: list[Event] = []
    for row in wanted:
        event = timeline_event(
            row["kind"],
            at=row.get("at") or dt.datetime.now(dt.UTC),
            summary=row.get("summary", ""),
            details=row.get("data") or {},
            lead=leads.get(row["lead_id"]),
            actor=row.get("actor", "system"),
            intake_id=row.get("intake_id"),
        )
        if event is not None:
            events.append(event)
    add(uow, account_id, address(events, subs))


def _wanted(subs: Subscriptions, kind: str) -> bool:
    event_type = TIMELINE_EVENTS.get(kind)
    return event_type is not None and bool(subs.wants(event_type))


def record_intake(uow: UnitOfWork, intake: Intake, event_type: str, reason: str) -> None:
    """``intake.rejected`` or ``intake.dead`` for a kept intake, in the caller's transaction."""
    subs = subscriptions_of(uow, intake.account_id)
    if not subs.wants(event_type):
        return
    event = intake_event(
        event_type,
        intake_id=intake.id,
        source=str(getattr(intake.source, "value", intake.source)),
        reason=reason,
        at=dt.datetime.now(dt.UTC),
    )
    add(uow, intake.account_id, address([event], subs))


def record_import(
    uow: UnitOfWork, account_id: int, import_id: uuid.UUID, status: str, counts: Mapping[str, int], error: str | None
) -> None:
    """``import.finished`` for an import that ends (done or failed), in the caller's transaction."""
    subs = subscriptions_of(uow, account_id)
    if not subs.wants("import.finished"):
        return
    event = import_event(import_id=import_id, status=status, counts=counts, error=error, at=dt.datetime.now(dt.UTC))
    add(uow, account_id, address([event], subs))


def record_text_status(uow: UnitOfWork, message: Message) -> None:
    """``text.status``: an outbound text moved to the status a gateway's report gave, in the caller's transaction."""
    subs = subscriptions_of(uow, message.account_id)
    if not subs.wants("text.status"):
        return
    lead = uow.webhooks.lead_views([message.lead_id]).get(message.lead_id) if message.lead_id else None
    data = {
        **lead_data(lead),
        "rule": None,
        "explanation": f"Text {message.status}" + (f": {message.error}" if message.error else ""),
        "details": {
            "message_id": str(message.id),
            "status": message.status,
            "error": message.error,
            "provider_sid": message.provider_sid,
        },
        "actor": "system",
        "intake_id": None,
    }
    event = Event("text.status", dt.datetime.now(dt.UTC), data, message.lead_id)
    add(uow, message.account_id, address([event], subs))


def add(uow: UnitOfWork, account_id: int, deliveries: Sequence[Delivery]) -> None:
    """Insert deliveries in the caller's transaction; their tasks are published once it commits."""
    if not deliveries:
        return
    uow.webhooks.add(account_id, deliveries)
    after_commit_send(uow, [d.id for d in deliveries])


def after_commit_send(uow: UnitOfWork, ids: Sequence[uuid.UUID]) -> None:
    if ids:
        kept = list(ids)
        uow.after_commit(lambda: send_all(kept))


def send_all(ids: Iterable[uuid.UUID]) -> None:
    """Publish each delivery's task (a publish that fails is the relay's to send again)."""
    for key in ids:
        publish(DELIVER_TASK, key)


def signup_lead_view(values: Mapping[str, Any], lead_id: uuid.UUID, slugs: Mapping[int, str]) -> LeadView:
    """A lead a signup plan makes, as its events describe it (from the plan's values: nothing is read)."""
    owner, assignee = values.get("owner_entity_id"), values.get("assigned_agent_id")
    return LeadView(
        lead_id,
        "active",
        slugs.get(owner) if owner is not None else None,
        slugs.get(assignee) if assignee is not None else None,
        values.get("first_name"),
        values.get("last_name"),
        values.get("email"),
        values.get("phone_e164"),
    )


def signup_deliveries(
    snapshot: OrgSnapshot,
    plan: SignupPlan,
    facts: Facts,
    items: Sequence[SignupIn],
    intakes: Mapping[uuid.UUID, Intake],
    *,
    finish: bool,
) -> list[Delivery]:
    """The deliveries of a signup plan, from the plan and its facts (nothing is read): ``lead.created``,
    ``lead.assigned`` and ``lead.signup`` with the lead as the plan leaves it, ``intake.rejected`` for
    each intake it refuses (when it finishes them)."""
    slugs = snapshot.slugs
    views: dict[uuid.UUID, LeadView] = {lead.id: signup_lead_view(lead.values, lead.id, slugs) for lead in plan.leads}
    signups = {item.intake_id: item.signup for item in items}
    for event in plan.events:
        if event.lead_id in views or event.kind != "signup":
            continue
        known = facts.by_id.get(event.lead_id)
        signup = signups.get(event.intake_id) if event.intake_id else None
        views[event.lead_id] = LeadView(
            event.lead_id,
            known.status if known else "active",
            slugs.get(known.owner_entity_id) if known else None,
            slugs.get(known.assigned_agent_id) if known and known.assigned_agent_id else None,
            signup.first_name if signup else None,
            signup.last_name if signup else None,
            signup.email if signup else None,
            signup.phone if signup else None,
        )
    events = timeline_events(plan.events, views)
    if finish:
        now = dt.datetime.now(dt.UTC)
        for done in plan.finished:
            if done.status == "rejected" and done.intake_id in intakes:
                intake = intakes[done.intake_id]
                source = str(getattr(intake.source, "value", intake.source))
                reason = done.reason or "rejected"
                events.append(
                    intake_event("intake.rejected", intake_id=intake.id, source=source, reason=reason, at=now)
                )
    return address(events, snapshot.webhooks)


# --- sending ------------------------------------------------------------------------------------------


class Refused(Exception):
    """A target the safe-sending rules refuse (scheme, address); the delivery fails without a request."""


@dataclass(frozen=True)
class Target:
    url: str  # with the checked address in place of the host name
    host: str  # the name, for the TLS certificate check (SNI)
    host_header: str  # the name and port as the URL gives them, for the Host header
    scheme: str


def _forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
        or not ip.is_global
    )


def resolve_target(url: str, *, allow_private: bool) -> Target:
    """Check ``url`` and pin it to an address: https only, and every address the host resolves to public,
    unless ``allow_private``. Raises :class:`Refused`."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or (scheme == "http" and not allow_private):
        raise Refused("only https:// URLs are sent to (LEADRELAY_WEBHOOKS_ALLOW_PRIVATE allows http for development)")
    host = parts.hostname
    if not host:
        raise Refused("the URL has no host")
    port = parts.port or (443 if scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused(f"the host does not resolve ({type(exc).__name__})") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise Refused("the host does not resolve")
    if not allow_private:
        bad = [str(ip) for ip in addresses if _forbidden(ip)]
        if bad:
            raise Refused(f"the host resolves to a private, loopback, link-local or reserved address ({bad[0]})")
    ip = addresses[0]
    pinned = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = f"{pinned}:{parts.port}" if parts.port else pinned
    named = f"[{host}]" if ":" in host else host
    host_header = f"{named}:{parts.port}" if parts.port else named
    return Target(urlunsplit((scheme, netloc, parts.path or "/", parts.query, "")), host, host_header, scheme)


def signing_secrets(endpoint: WebhookEndpoint) -> list[str]:
    """The endpoint's secrets in clear: the literal ones decrypted, then those of ``secrets_env`` that are set."""
    ring = keyring()
    out: list[str] = []
    for stored in endpoint.secrets_encrypted:
        try:
            out.append(ring.decrypt(stored))
        except UndecryptableSecret:
            log.error("webhook.secret_unreadable", endpoint=endpoint.slug)
    for name in endpoint.secret_envs:
        value = os.environ.get(name, "").strip()
        if value:
            out.append(value)
    return out


def sign(secrets: Sequence[str], msg_id: str, at: dt.datetime, payload: bytes) -> str | None:
    """The ``webhook-signature`` header: one ``v1,<base64>`` per secret, space-separated (rotation); a
    secret that is not a Standard Webhooks secret (an environment variable changed since the org file was
    applied) is skipped. None when no secret signs."""
    signatures: list[str] = []
    for secret in secrets:
        try:
            signatures.append(Webhook(secret).sign(msg_id, at, payload))
        except (ValueError, binascii.Error, EmptyWebhookSecretError):
            log.error("webhook.secret_unusable")
    return " ".join(signatures) or None


@dataclass(frozen=True)
class Sent:
    outcome: str  # delivered | gone | retry | refused
    status_code: int | None
    excerpt: str
    error: str | None
    ms: int


@functools.cache
def tls_context() -> ssl.SSLContext:
    """This process's TLS settings for receivers (the system's CAs, certificates checked), made once: making
    one reads the CA bundle, which cost a try more than its request to a receiver nearby."""
    return ssl.create_default_context()


# Kept-alive connections, one client per pinned address and host name, so that a burst of deliveries to
# one receiver pays its TCP and TLS handshakes once. Keyed by the name too: a connection opened for one
# name (its certificate, its SNI) never carries another name's request, even at the same address.
_CLIENTS_KEPT = 32
_clients: collections.OrderedDict[tuple[str, str, str], httpx.Client] = collections.OrderedDict()
_clients_pid = 0
_clients_lock = threading.Lock()


def client_for(target: Target) -> httpx.Client:
    """The kept client for ``target`` (made on first use in this process: a forked pool child makes its own)."""
    global _clients_pid
    origin = urlsplit(target.url)
    key = (target.scheme, origin.netloc, target.host)
    with _clients_lock:
        if _clients_pid != os.getpid():
            _clients.clear()  # the parent's connections are not this child's to use
            _clients_pid = os.getpid()
        client = _clients.get(key)
        if client is not None:
            _clients.move_to_end(key)
            return client
        client = httpx.Client(
            timeout=TIMEOUT_SECONDS,
            follow_redirects=False,
            trust_env=False,
            verify=tls_context(),
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=4, keepalive_expiry=30),
        )
        _clients[key] = client
        while len(_clients) > _CLIENTS_KEPT:
            _, oldest = _clients.popitem(last=False)
            oldest.close()
        return client


def close_clients() -> None:
    """Close this process's kept connections (a worker shutting down, a test's end)."""
    with _clients_lock:
        while _clients:
            _, client = _clients.popitem()
            client.close()


def post(url: str, payload: bytes, headers: Mapping[str, str], *, allow_private: bool) -> Sent:
    """One try: the checks, then one POST (10 s, no redirects), on a kept-alive connection to the checked address."""
    started = time.monotonic()
    try:
        target = resolve_target(url, allow_private=allow_private)
    except Refused as exc:
        return Sent("refused", None, "", str(exc), 0)
    sent_headers = {**headers, "Host": target.host_header}
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        with client_for(target).stream(
            "POST", target.url, content=payload, headers=sent_headers, extensions=extensions
        ) as response:
            status_code = response.status_code
            # Only the start of the answer is read: a receiver's body is not trusted, nor kept beyond an excerpt.
            # An answer left unread closes its connection rather than going back to the pool.
            start = b""
            for part in response.iter_bytes():
                start += part
                if len(start) >= ANSWER_BYTES:
                    break
    except httpx.HTTPError as exc:
        ms = int((time.monotonic() - started) * 1000)
        return Sent("retry", None, "", type(exc).__name__, ms)
    ms = int((time.monotonic() - started) * 1000)
    outcome = outcome_of(status_code)
    error = None if outcome == "delivered" else f"HTTP {status_code}"
    return Sent(outcome, status_code, excerpt(start[:ANSWER_BYTES].decode("utf-8", errors="replace")), error, ms)


def deliver(delivery_id: uuid.UUID) -> str:
    """One try of one delivery (``webhooks.deliver``): claim it if it is pending and due, send it, record
    the answer and, when it failed, when it is due again. Returns what happened."""
    settings = get_settings()
    now = dt.datetime.now(dt.UTC)
    with UnitOfWork() as uow:
        row = uow.webhooks.claim(delivery_id, now=now, lease=LEASE)
        if row is None:
            return "not due"
        endpoint = uow.webhooks.endpoint(row.endpoint_id)
        event_type, occurred_at, data, version = row.event_type, row.occurred_at, dict(row.data), row.seq
        attempts, url, endpoint_id, account_id = row.attempts, endpoint.url, endpoint.id, endpoint.account_id
        endpoint_slug = endpoint.slug
        if not endpoint.active or endpoint.disabled_at is not None:
            why = endpoint.disabled_reason or "the endpoint is not active in the org file"
            uow.webhooks.settle(delivery_id, status="failed", attempt=None, next_attempt_at=None, error=why, now=now)
            uow.commit()
            return "failed"
        secrets = signing_secrets(endpoint)
        uow.commit()
    payload = json.dumps(body(event_type, occurred_at, data, version), separators=(",", ":")).encode()
    msg = message_id(delivery_id)
    at = dt.datetime.now(dt.UTC)
    signature = sign(secrets, msg, at, payload) if secrets else None
    if signature is None:
        sent = Sent("refused", None, "", "no usable signing secret (a secrets_env variable unset or not whsec_?)", 0)
    else:
        headers = {
            "webhook-id": msg,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": signature,
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
        sent = post(url, payload, headers, allow_private=settings.webhooks_allow_private)
    return _record(delivery_id, endpoint_id, account_id, endpoint_slug, event_type, attempts, sent)


def _record(
    delivery_id: uuid.UUID,
    endpoint_id: int,
    account_id: int,
    endpoint_slug: str,
    event_type: str,
    attempts: int,
    sent: Sent,
) -> str:
    now = dt.datetime.now(dt.UTC)
    attempt = {
        "at": now.isoformat(),
        "status": sent.status_code,
        "error": sent.error,
        "excerpt": sent.excerpt,
        "ms": sent.ms,
    }
    retry_in: float | None = None
    with UnitOfWork() as uow:
        if sent.outcome == "delivered":
            status = "delivered"
            next_at = None
        elif sent.outcome == "gone":
            status = "failed"
            next_at = None
            uow.webhooks.disable_endpoint(endpoint_id, f"410 Gone at {now.isoformat()}", now=now)
            uow.orgs.bump_org_version(account_id)
        else:
            retry_in = retry_wait(attempts + 1, get_settings().webhook_retry_waits)
            status = "pending" if retry_in is not None else "failed"
            next_at = now + dt.timedelta(seconds=retry_in) if retry_in is not None else None
        uow.webhooks.settle(
            delivery_id, status=status, attempt=attempt, next_attempt_at=next_at, error=sent.error, now=now
        )
        uow.commit()
    fields = {"delivery_id": str(delivery_id), "endpoint": endpoint_slug, "type": event_type, "attempt": attempts + 1}
    if status == "delivered":
        log.info("webhook.delivered", status=sent.status_code, ms=sent.ms, **fields)
    elif sent.outcome == "gone":
        log.warning("webhook.endpoint_disabled", status=410, **fields)
    elif status == "failed":
        log.error("webhook.failed", error=sent.error, **fields)
    else:
        log.warning("webhook.retry", error=sent.error, retry_in=round(retry_in or 0, 1), **fields)
        if retry_in is not None and retry_in <= MAX_RETRY_COUNTDOWN:
            publish(DELIVER_TASK, delivery_id, countdown=retry_in)
    return status


# --- replay -------------------------------------------------------------------------------------------


def replay(
    uow: UnitOfWork,
    endpoint: WebhookEndpoint,
    *,
    since: dt.datetime | None = None,
    delivery_ids: Sequence[uuid.UUID] = (),
    limit: int = 10_000,
) -> list[uuid.UUID]:
    """Send an endpoint's failed deliveries again (or those named), each with its own ``webhook-id``;
    commits, then publishes their tasks. The ids put back."""
    ids = uow.webhooks.reopen(endpoint.id, since=since, delivery_ids=delivery_ids, limit=limit)
    uow.commit()
    send_all(ids)
    return ids
