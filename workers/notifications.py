"""Agent notifications through an outbox: a mail is a row written in the transaction that decides
it, and after the commit one ``notifications.flush`` task, shared by every mail committed around the same
time, sends what is pending over one SMTP connection. A failed send keeps the row and retries; nothing is lost.

Backends: SMTP when ``LEADRELAY_SMTP_URL`` is set, else the log (the mail's masked recipient and subject)."""

from __future__ import annotations

import datetime as dt
import email.policy
import functools
import smtplib
import ssl
import threading
import time
import unicodedata
import uuid
from dataclasses import dataclass, replace
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from types import TracebackType
from urllib.parse import parse_qs, unquote, urlsplit

import structlog

from leadrelay.settings import get_settings
from models.repositories import ClaimedMail
from models.tables import Outbox
from models.uow import UnitOfWork
from rules.contact import mask_email
from workers.app import publish
from workers.celeryconfig import MAX_RETRY_COUNTDOWN
from workers.errors import error_kind, error_reason

log = structlog.get_logger(__name__)

FLUSH_TASK = "notifications.flush"
# A flush stops claiming mail after this long and hands the rest to the next flush, well inside the
# task's time limit (a mail cut by the limit would be rolled back after the server took it).
FLUSH_BUDGET_SECONDS = 120.0
# A first try and eight retries (notifications.send's max_retries), then the mail is a dead letter.
MAIL_ATTEMPTS = 9
# A flush claims this many mails at once, for this long (longer than FLUSH_BUDGET_SECONDS and one mail's
# SMTP timeouts: a flush gives back what it has not sent when its budget is spent).
CLAIM_BATCH = 50
CLAIM_LEASE = dt.timedelta(minutes=5)

# Until when (time.monotonic) the flush this process last published covers what it commits; see request_flush.
_flush_lock = threading.Lock()
_flush_covers_until = 0.0


def queue_mail(uow: UnitOfWork, *, account_id: int, dedupe_key: str, to_address: str, subject: str, body: str) -> None:
    """Write one notification (once per ``dedupe_key``: a redelivered task writes nothing more) and
    ask for a flush once the unit of work commits."""
    new = uow.outbox.add_mail_once(
        account_id=account_id,
        dedupe_key=dedupe_key[:200],
        to_address=to_address,
        subject=subject[:300],
        body=body,
        correlation_id=correlation_id(),
    )
    if new:
        uow.after_commit(request_flush)


def correlation_id() -> str | None:
    """The correlation id (an intake's id) of the work running now, which its mail keeps."""
    value = structlog.contextvars.get_contextvars().get("correlation_id")
    return str(value)[:64] if value else None


def request_flush() -> None:
    """After a commit that queued mail: publish ``notifications.flush`` ``LEADRELAY_MAIL_FLUSH_SECONDS``
    later, unless a flush this process published is still to run. Called once per commit however many
    mails it queued (one lead or a batch of them).

    Why no mail waits longer than the countdown plus one pass: a mail committed now is either covered
    by the flush published now, or this process published one less than half a countdown ago, whose
    ETA (the countdown after its publish) is still ahead. A flush reads the pending rows when it runs,
    at or after its ETA, so after this commit: it sends this mail too. Half a countdown, not a whole
    one, leaves the other half for a worker host whose clock runs ahead of this one (Celery compares the
    ETA with the worker's clock). The window is this process's (a timestamp in the module, not shared):
    another process's flush is not known here, so at worst each process publishes one flush per half
    countdown, never one per mail. A flush that is lost (a publish refused, a worker killed) leaves the
    mail pending: the relay publishes a flush for it after ``LEADRELAY_RELAY_AFTER_SECONDS``."""
    global _flush_covers_until
    countdown = get_settings().mail_flush_seconds
    now = time.monotonic()
    with _flush_lock:
        if now < _flush_covers_until:
            return
        _flush_covers_until = now + countdown / 2
    if not publish(FLUSH_TASK, None, countdown=countdown):
        with _flush_lock:
            # Not published: the next commit tries again rather than counting on a flush that will not come.
            _flush_covers_until = 0.0


def retry_schedule() -> list[dt.timedelta]:
    """How long after it was stored a mail tried ``n`` times is tried again (index ``n``): at once the
    first time, then ``LEADRELAY_RETRY_BACKOFF_SECONDS`` doubled after each failed try, as a retried task
    waited. Counted from the row's creation, as the outbox keeps no time of the last try."""
    base = get_settings().retry_backoff_seconds
    waits = [0.0]
    for n in range(MAIL_ATTEMPTS - 1):
        waits.append(waits[-1] + min(base * 2**n, MAX_RETRY_COUNTDOWN))
    return [dt.timedelta(seconds=w) for w in waits]


@dataclass
class Flushed:
    """What one flush did: mails sent, mails given up (``failed``), whether pending mail was left for
    another flush (``more``), and in how many seconds the earliest mail that failed may be tried again."""

    sent: int = 0
    failed: int = 0
    more: bool = False
    retry_in: float | None = None


class Mailer:
    """One SMTP connection for many mails (or the log, without ``LEADRELAY_SMTP_URL``), opened at the
    first mail. A mail the server refuses leaves the connection usable; a dropped connection is opened
    again for the next mail, and a connection that cannot be opened fails the rest of the pass."""

    def __init__(self, server: SmtpServer | None) -> None:
        self.server = server
        self.client: smtplib.SMTP | None = None

    @property
    def backend(self) -> str:
        return "smtp" if self.server else "log"

    def __enter__(self) -> Mailer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()

    def connect(self) -> None:
        """Open the connection if it is not; raises when the server cannot be reached."""
        if self.server is not None and self.client is None:
            self.client = open_smtp(self.server)

    def send(self, message: EmailMessage) -> None:
        if self.server is None:
            return
        if self.client is not None and self.client.sock is None:
            self.client = None  # the server hung up after refusing the last mail
        self.connect()
        assert self.client is not None
        try:
            self.client.send_message(message)
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused, smtplib.SMTPDataError):
            raise  # this mail refused; smtplib reset the transaction and the connection goes on
        except Exception:
            self.close()  # the connection's state is unknown: the next mail opens a new one
            raise


def flush(*, budget: float = FLUSH_BUDGET_SECONDS) -> Flushed:
    """Send the pending mail that is due, oldest first, over one SMTP connection, until none is left (or
    ``budget`` seconds are spent: ``more`` then).

    Mail is claimed :data:`CLAIM_BATCH` at a time, for :data:`CLAIM_LEASE`, in one committed UPDATE: no
    other flush takes a claimed mail meanwhile, so none is sent twice. Each mail is then marked ``sent`` in
    one statement that commits as the server has taken it, so a worker killed mid-batch sends at most the
    one mail in hand again; the rest of its batch is sent by the first flush after the lease (the relay
    publishes one for pending mail). A flush whose ``budget`` is spent gives the rest of its batch back;
    the lease outlasts the budget and one mail's SMTP timeouts, so no mail a flush still sends is taken by
    another. A mail that fails stays pending with the error and one more attempt (``failed`` after the
    last), and the others are still sent; it is not tried again by this flush. Should the flush itself
    fail mid-batch (the database gone), the rest of its batch waits for the lease to end."""
    settings = get_settings()
    server = parse_smtp_url(settings.smtp_url) if settings.smtp_url else None
    schedule = retry_schedule()
    result = Flushed()
    tried: set[uuid.UUID] = set()
    started = time.monotonic()
    with Mailer(server) as mailer, UnitOfWork() as uow:
        while True:
            now = dt.datetime.now(dt.UTC)
            uow.each_statement_commits()
            mails = uow.outbox.claim(
                now=now, retry_after=schedule, until=now + CLAIM_LEASE, exclude=tried, limit=CLAIM_BATCH
            )
            uow.commit()
            if not mails:
                return result
            for index, mail in enumerate(mails):
                if time.monotonic() - started > budget:
                    # Its time is up: the rest is given back for the next flush, well before the lease ends.
                    uow.each_statement_commits()
                    uow.outbox.release([m.id for m in mails[index:]])
                    uow.commit()
                    result.more = True
                    return result
                with structlog.contextvars.bound_contextvars(**_correlation_of(mail)):
                    outcome = try_mail(mailer, mail, settings.mail_from, schedule)
                _settle(uow, mail, outcome, result)
                if outcome.status == "pending":
                    tried.add(mail.id)
                if not outcome.reachable:
                    # The server is down: the rest of the batch is given back untried; the retry is scheduled.
                    uow.each_statement_commits()
                    uow.outbox.release([m.id for m in mails[index + 1 :]])
                    uow.commit()
                    return result
            if time.monotonic() - started > budget:
                result.more = True
                return result


def _correlation_of(mail: ClaimedMail) -> dict[str, str]:
    return {"correlation_id": mail.correlation_id} if mail.correlation_id else {}


@dataclass(frozen=True)
class Tried:
    """How one try of a mail went, as its row is to say it: ``sent``, ``pending`` (with the error, for a later
    try ``retry_in`` seconds from now) or ``failed``; ``reachable``: whether the server could be reached."""

    status: str
    attempts: int
    error: str | None = None
    retry_in: float | None = None
    reachable: bool = True


def _settle(uow: UnitOfWork, mail: ClaimedMail, tried: Tried, result: Flushed) -> None:
    """Write a try's outcome on the mail's row, committed at once, and count it."""
    uow.each_statement_commits()
    sent_at = dt.datetime.now(dt.UTC) if tried.status == "sent" else None
    uow.outbox.settle(mail.id, attempts=tried.attempts, status=tried.status, error=tried.error, sent_at=sent_at)
    uow.commit()
    if tried.status == "sent":
        result.sent += 1
    elif tried.status == "failed":
        result.failed += 1
    elif tried.retry_in is not None:
        result.retry_in = tried.retry_in if result.retry_in is None else min(result.retry_in, tried.retry_in)


def try_mail(mailer: Mailer, mail: Outbox | ClaimedMail, mail_from: str, schedule: list[dt.timedelta]) -> Tried:
    """Send one mail over ``mailer``; how it went (nothing is written here)."""
    attempts = mail.attempts + 1
    try:
        mailer.connect()
    except Exception as exc:
        return replace(_failure(mail, attempts, exc, schedule), reachable=False)
    try:
        message = mail_message(mail, mail_from)
    except (ValueError, TypeError) as exc:
        # The mail itself cannot be written (an address no header may hold): no later try would differ.
        return _failure(mail, attempts, exc, schedule, final=True)
    try:
        mailer.send(message)
    except Exception as exc:
        return _failure(mail, attempts, exc, schedule)
    log.info(
        "notification.mail",
        outbox_id=str(mail.id),
        backend=mailer.backend,
        to=mask_email(mail.to_address),
        subject=mail.subject,
    )
    return Tried("sent", attempts)


def _failure(
    mail: Outbox | ClaimedMail, attempts: int, exc: Exception, schedule: list[dt.timedelta], *, final: bool = False
) -> Tried:
    """A failed try: pending for a later one, or ``failed`` after the last one (or at once, ``final``)."""
    error = error_reason(exc)[:2000]
    if final or attempts >= MAIL_ATTEMPTS:
        log.error("notification.failed", outbox_id=str(mail.id), error=error_kind(exc))
        return Tried("failed", attempts, error)
    due = mail.created_at + schedule[min(attempts, len(schedule) - 1)]
    wait = max((due - dt.datetime.now(dt.UTC)).total_seconds(), 0.0)
    log.warning("notification.retry", outbox_id=str(mail.id), attempts=attempts, error=error_kind(exc))
    return Tried("pending", attempts, error, wait)


def send(uow: UnitOfWork, outbox_id: uuid.UUID) -> str:
    """Send one pending notification through the configured backend and mark it sent: the
    ``notifications.send`` task of messages published before :func:`flush` replaced it.

    The default backend writes the mail to the log (masked), so the demo needs no mail server."""
    row = uow.outbox.get_for_update(outbox_id)
    if row is None or row.status == "sent":
        return "skipped"
    if row.claimed_until is not None and row.claimed_until > dt.datetime.now(dt.UTC):
        return "skipped"  # a flush holds it and sends it
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
    row = uow.outbox.get(outbox_id)
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


def header_text(text: str) -> str:
    """``text`` as one header line: every control, format or line-separating character (a lead's name may
    carry any: form feed, escape, CR LF) becomes a space, runs of spaces one. Without it such a subject
    either fails every try or, worse, writes header lines of its own."""
    cleaned = "".join(" " if unicodedata.category(c)[0] in "CZ" and c != " " else c for c in text)
    return " ".join(cleaned.split())


class _HeaderClasses(HeaderRegistry):
    """The standard library's header registry, each header's class made once: its own makes a new class for
    every header it parses (a tenth of a mail's cost, nine headers a mail). The classes are the same."""

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one registry for the process, never freed
    def __getitem__(self, name: str) -> type[BaseHeader]:
        return super().__getitem__(name)


MAIL_POLICY = email.policy.default.clone(header_factory=_HeaderClasses())


@functools.lru_cache(maxsize=8)
def _from_header(mail_from: str) -> BaseHeader:
    """The sender's header, parsed once: every mail has the same (a header object is used as it is)."""
    header: BaseHeader = MAIL_POLICY.header_factory("From", mail_from)
    return header


def mail_message(row: Outbox | ClaimedMail, mail_from: str) -> EmailMessage:
    message = EmailMessage(policy=MAIL_POLICY)
    message["From"] = _from_header(mail_from)
    message["To"] = row.to_address
    message["Subject"] = header_text(row.subject)
    message["Date"] = dt.datetime.now(dt.UTC)  # rendered as RFC 5322 wants it, "+0000"; no string to parse back
    # One id per outbox row: a mail sent again after a lost answer can be recognised by the receiver.
    message["Message-ID"] = f"<{row.id}@leadrelay>"
    message.set_content(row.body)
    return message


def open_smtp(server: SmtpServer) -> smtplib.SMTP:
    """A connection ready to take mail (STARTTLS and login done); certificates are verified for TLS and STARTTLS."""
    context = ssl.create_default_context()
    client: smtplib.SMTP
    if server.tls:
        client = smtplib.SMTP_SSL(server.host, server.port, timeout=SMTP_TIMEOUT_SECONDS, context=context)
    else:
        client = smtplib.SMTP(server.host, server.port, timeout=SMTP_TIMEOUT_SECONDS)
    try:
        if server.starttls:
            client.starttls(context=context)
        if server.username:
            client.login(server.username, server.password or "")
    except BaseException:
        client.close()
        raise
    return client


def send_smtp(server: SmtpServer, message: EmailMessage) -> None:
    """One SMTP conversation for one mail."""
    with open_smtp(server) as client:
        client.send_message(message)
