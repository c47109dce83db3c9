"""Agent notifications through an outbox: a mail is a row written in the transaction that decides
it, and a task sends it after the commit. A failed send keeps the row and retries; nothing is lost.

Backends: SMTP when ``LEADRELAY_SMTP_URL`` is set, else the log (the mail's masked recipient and subject)."""

from __future__ import annotations

import datetime as dt
import smtplib
import ssl
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from urllib.parse import parse_qs, unquote, urlsplit

import structlog
from sqlalchemy import select

from leadrelay.settings import get_settings
from models.repositories import dialect_insert
from models.tables import Lead, Outbox
from models.uow import UnitOfWork
from rules.contact import mask_email
from workers.app import publish

log = structlog.get_logger(__name__)


def queue_mail(uow: UnitOfWork, *, account_id: int, dedupe_key: str, to_address: str, subject: str, body: str) -> None:
    """Write one notification (once per ``dedupe_key``: a redelivered task writes nothing more) and
    publish its send task once the unit of work commits."""
    outbox_id = uuid.uuid4()
    inserted = uow.session.execute(
        dialect_insert(uow.session, Outbox)
        .values(
            id=outbox_id,
            account_id=account_id,
            kind="email",
            dedupe_key=dedupe_key[:200],
            to_address=to_address,
            subject=subject[:300],
            body=body,
        )
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(Outbox.id)
    ).scalar_one_or_none()
    if inserted is not None:
        uow.after_commit(lambda: publish("notifications.send", inserted))


def send(uow: UnitOfWork, outbox_id: uuid.UUID) -> str:
    """Send one pending notification through the configured backend and mark it sent.

    The default backend writes the mail to the log (masked), so the demo needs no mail server."""
    row = uow.session.execute(select(Outbox).where(Outbox.id == outbox_id).with_for_update()).scalar_one_or_none()
    if row is None or row.status == "sent":
        return "skipped"
    row.attempts += 1
    settings = get_settings()
    if settings.smtp_url:
        # The row stays locked while the server takes the mail: a redelivered task waits, then finds it sent.
        send_smtp(parse_smtp_url(settings.smtp_url), mail_message(row, settings.mail_from))
        backend = "smtp"
    else:
        backend = "log"
    log.info(
        "notification.mail", outbox_id=str(row.id), backend=backend, to=mask_email(row.to_address), subject=row.subject
    )
    row.status = "sent"
    row.sent_at = dt.datetime.now(dt.UTC)
    row.error = None
    uow.commit()
    return "sent"


def record_failure(uow: UnitOfWork, outbox_id: uuid.UUID, error: str, *, final: bool = False) -> None:
    """Keep the last error on the row. It stays pending (and is retried) until it is sent, or, after the
    last retry, ends ``failed``: a dead letter the relay leaves alone and ``GET /metrics`` counts."""
    row = uow.session.get(Outbox, outbox_id)
    if row is not None and row.status != "sent":
        row.error = error[:2000]
        if final:
            row.status = "failed"
        uow.commit()


@dataclass(frozen=True)
class SmtpServer:
    """Where mail goes, from ``LEADRELAY_SMTP_URL``: ``smtp://[user:password@]host[:port]`` (plain; add
    ``?starttls=true`` to require STARTTLS, port 587 by default then) or ``smtps://...`` (TLS from the
    first byte, port 465). User and password are percent-decoded."""

    host: str
    port: int
    tls: bool
    starttls: bool
    username: str | None
    password: str | None


SMTP_TIMEOUT_SECONDS = 30.0


def parse_smtp_url(url: str) -> SmtpServer:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("smtp", "smtps") or not parts.hostname:
        # Never echo the URL: it may hold a password.
        raise ValueError("LEADRELAY_SMTP_URL must be smtp://[user:password@]host[:port][?starttls=true] or smtps://...")
    flag = parse_qs(parts.query).get("starttls", ["false"])[-1].lower()
    starttls = scheme == "smtp" and flag in ("1", "true", "yes", "on")
    default_port = 465 if scheme == "smtps" else 587 if starttls else 25
    return SmtpServer(
        host=parts.hostname,
        port=parts.port or default_port,
        tls=scheme == "smtps",
        starttls=starttls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def mail_message(row: Outbox, mail_from: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = mail_from
    message["To"] = row.to_address
    message["Subject"] = row.subject
    message["Date"] = formatdate(localtime=False, usegmt=True)
    # One id per outbox row: a mail sent again after a lost answer can be recognised by the receiver.
    message["Message-ID"] = f"<{row.id}@leadrelay>"
    message.set_content(row.body)
    return message


def send_smtp(server: SmtpServer, message: EmailMessage) -> None:
    """One SMTP conversation; certificates are verified for TLS and STARTTLS."""
    context = ssl.create_default_context()
    client: smtplib.SMTP
    if server.tls:
        client = smtplib.SMTP_SSL(server.host, server.port, timeout=SMTP_TIMEOUT_SECONDS, context=context)
    else:
        client = smtplib.SMTP(server.host, server.port, timeout=SMTP_TIMEOUT_SECONDS)
    with client:
        if server.starttls:
            client.starttls(context=context)
        if server.username:
            client.login(server.username, server.password or "")
        client.send_message(message)


def notify_new_lead_assigned(uow: UnitOfWork, lead: Lead) -> None:
    """Tell the agent a new lead was assigned to it, by mail (once per lead and agent; only an agent
    with an email). Written in the caller's transaction; sent after its commit."""
    if lead.assigned_agent_id is None:
        return
    agent = uow.orgs.entity(lead.assigned_agent_id)
    if not agent.email:
        return
    owner = uow.orgs.entity(lead.owner_entity_id)
    name = " ".join(part for part in (lead.first_name, lead.last_name) if part)
    base = get_settings().public_base_url.rstrip("/")
    lines = [
        f"Hello {agent.name},",
        "",
        "A new lead was assigned to you.",
        "",
        f"Name:   {name or '(no name given)'}",
        f"Email:  {lead.email or '-'}",
        f"Phone:  {lead.phone_e164 or '-'}",
        f"Source: {lead.source_kind}" + (f" ({lead.source_detail})" if lead.source_detail else ""),
        f"Owner:  {owner.name}",
    ]
    if lead.lead_type:
        lines.append(f"Type:   {lead.lead_type}")
    if lead.price_min is not None or lead.price_max is not None:
        lines.append(f"Price:  {lead.price_min or '-'} to {lead.price_max or '-'}")
    lines += ["", f"Lead {lead.id}: {base}/v1/leads/{lead.id}", ""]
    queue_mail(
        uow,
        account_id=lead.account_id,
        dedupe_key=f"assigned:{lead.id}:{agent.id}",
        to_address=agent.email,
        # The subject is logged: a name at most, never the lead's email or phone.
        subject=f"New lead assigned to you: {name}" if name else f"New lead assigned to you ({lead.source_kind})",
        body="\n".join(lines),
    )
