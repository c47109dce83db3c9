"""Agent notifications through an outbox: a mail is a row written in the transaction that decides
it, and a task sends it after the commit. A failed send keeps the row and retries; nothing is lost."""

from __future__ import annotations

import datetime as dt
import uuid

import structlog
from sqlalchemy import select

from models.repositories import dialect_insert
from models.tables import Outbox
from models.uow import UnitOfWork
from rules.contact import mask_email

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
        uow.after_commit(lambda: publish(inserted))


def publish(outbox_id: uuid.UUID) -> None:
    """Hand a kept notification to the notifications queue; a failed publish loses nothing (the row stays pending)."""
    from workers.tasks import send_notification  # the tasks module imports the services, not the reverse

    try:
        send_notification.apply_async(args=[str(outbox_id)])
    except Exception as exc:
        log.warning("notification.enqueue_failed", outbox_id=str(outbox_id), error=type(exc).__name__)


def send(uow: UnitOfWork, outbox_id: uuid.UUID) -> str:
    """Send one pending notification through the configured backend and mark it sent.

    The default backend writes the mail to the log (masked), so the demo needs no mail server."""
    row = uow.session.execute(select(Outbox).where(Outbox.id == outbox_id).with_for_update()).scalar_one_or_none()
    if row is None or row.status == "sent":
        return "skipped"
    row.attempts += 1
    log.info("notification.mail", outbox_id=str(row.id), to=mask_email(row.to_address), subject=row.subject)
    row.status = "sent"
    row.sent_at = dt.datetime.now(dt.UTC)
    row.error = None
    uow.commit()
    return "sent"


def record_failure(uow: UnitOfWork, outbox_id: uuid.UUID, error: str) -> None:
    """Keep the last error on the row; it stays pending (and is retried) until it is sent."""
    row = uow.session.get(Outbox, outbox_id)
    if row is not None and row.status != "sent":
        row.error = error[:2000]
        uow.commit()
