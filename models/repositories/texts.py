"""The texts' queries: outbound texts recorded and locked for their send, inbound texts put on the lead
that texted that phone last (reply routing S1-S3, O6), and the gateway's delivery reports."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from models.repositories.common import dialect_insert
from models.tables import Entity, Lead, LeadStatus, Message, MessageStatusCallback


class TextRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    # --- Outbound texts (SH4; sent by the texts.send task) ---

    def add_outbound_text(self, values: dict[str, Any]) -> uuid.UUID:
        """Record an outbound text (S1 reads these rows from the moment they are written)."""
        message = Message(id=uuid.uuid4(), direction="outbound", status="queued", attempts=0, **values)
        self.session.add(message)
        self.session.flush()
        return message.id

    def message_for_update(self, message_id: uuid.UUID) -> Message | None:
        """A text, locked until the transaction ends: a redelivered send task waits, then sees what the first did."""
        return self.session.execute(
            select(Message).where(Message.id == message_id).with_for_update()
        ).scalar_one_or_none()

    # --- Inbound texts and delivery reports (reply routing S1-S3, Twilio status callbacks) ---

    def _xact_lock(self, key: str) -> None:
        """A PostgreSQL advisory lock on ``key`` until the transaction ends; nothing on SQLite, which
        takes one writer at a time."""
        if self.session.get_bind().dialect.name != "postgresql":
            return
        digest = hashlib.sha256(key.encode()).digest()
        self.session.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest[:8], "big", signed=True))))

    def lock_phone(self, account_id: int, phone_e164: str) -> None:
        """Serialise the texts of one phone to one account: two first texts at once make one lead (O6)."""
        self._xact_lock(f"phone:{account_id}:{phone_e164}")

    def lock_text_sid(self, provider_sid: str) -> None:
        """Serialise a status callback and the send that records the gateway's sid for the same text,
        so a callback that arrives before the sid is recorded is seen by one of the two."""
        self._xact_lock(f"sms-sid:{provider_sid}")

    def live_leads_with_phone(self, account_id: int, phone_e164: str) -> list[Lead]:
        """S1/S2 candidates: the account's leads with this phone that are neither merged nor deleted."""
        return list(
            self.session.execute(
                select(Lead)
                .where(
                    Lead.account_id == account_id,
                    Lead.phone_e164 == phone_e164,
                    Lead.status.in_([LeadStatus.ACTIVE, LeadStatus.ARCHIVED]),
                )
                .order_by(Lead.created_at, Lead.id)
            ).scalars()
        )

    def last_outbound_texts(self, account_id: int, phone_e164: str) -> list[tuple[Message, str | None]]:
        """S1: for each lead that was texted at this phone, its most recent outbound text there, with the
        name of the agent it counts for. One range of the (account, phone, direction, created_at) index,
        whatever the size of the table; the rule skips the leads that are no candidates any more."""
        ranked = (
            select(
                Message.id,
                func.row_number()
                .over(partition_by=Message.lead_id, order_by=(Message.created_at.desc(), Message.id.desc()))
                .label("n"),
            )
            .where(
                Message.account_id == account_id,
                Message.lead_phone == phone_e164,
                Message.direction == "outbound",
                Message.lead_id.is_not(None),
            )
            .subquery()
        )
        rows = self.session.execute(
            select(Message, Entity.name)
            .join(ranked, and_(ranked.c.id == Message.id, ranked.c.n == 1))
            .outerjoin(Entity, Entity.id == Message.agent_id)
        ).all()
        return [(message, name) for message, name in rows]

    def add_inbound_text(self, values: dict[str, Any]) -> uuid.UUID | None:
        """Record an inbound text once per gateway sid; the new row's id, or None when it is there already."""
        return self.session.execute(
            dialect_insert(self.session, Message)
            .values(id=uuid.uuid4(), direction="inbound", **values)
            .on_conflict_do_nothing(index_elements=["provider_sid"])
            .returning(Message.id)
        ).scalar_one_or_none()

    def outbound_text_by_sid(self, provider_sid: str) -> Message | None:
        """The outbound text the gateway knows by ``provider_sid``, locked until the transaction ends."""
        return self.session.execute(
            select(Message)
            .where(Message.provider_sid == provider_sid, Message.direction == "outbound")
            .with_for_update()
        ).scalar_one_or_none()

    def account_of_text_sid(self, provider_sid: str) -> int | None:
        """The account of the text the gateway knows by ``provider_sid``, if any."""
        return self.session.execute(
            select(Message.account_id).where(Message.provider_sid == provider_sid)
        ).scalar_one_or_none()

    def add_status_callback(self, values: dict[str, Any]) -> bool:
        """Keep a delivery report once per (sid, status); whether it is new."""
        inserted = self.session.execute(
            dialect_insert(self.session, MessageStatusCallback)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["provider_sid", "status"])
            .returning(MessageStatusCallback.id)
        ).scalar_one_or_none()
        return inserted is not None

    def status_callbacks_of(self, provider_sid: str) -> list[MessageStatusCallback]:
        """The delivery reports kept for a text, in the order they arrived."""
        return list(
            self.session.execute(
                select(MessageStatusCallback)
                .where(MessageStatusCallback.provider_sid == provider_sid)
                .order_by(MessageStatusCallback.received_at, MessageStatusCallback.id)
            ).scalars()
        )
