"""The texts' queries: outbound texts recorded and locked for their send, inbound texts put on the lead
that texted that phone last (reply routing S1-S3, O6), and the gateway's delivery reports."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import BigInteger, String, Table, and_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from models.repositories.common import LEADS, dialect_insert
from models.tables import (
    Entity,
    LeadStatus,
    Message,
    MessageStatusCallback,
)
from rules.texts import CandidateLead, TextLead

MESSAGES = cast(Table, Message.__table__)


@dataclass(frozen=True)
class LastText:
    """A lead's last outbound text to the phone: what S1 compares (the agent it counts for, SH4)."""

    message_id: uuid.UUID
    lead_id: uuid.UUID
    agent_id: int | None
    created_at: dt.datetime


@dataclass(frozen=True)
class ReplyFacts:
    """What an inbound text from a phone is routed over (S1, S2): the live leads with that phone, as
    the rule compares them and as a text's plan writes on them, and each one's last outbound text there."""

    candidates: list[CandidateLead]
    leads: dict[uuid.UUID, TextLead]
    last_texts: list[LastText]


def _last_outbound(phones: Any = None) -> Any:
    """S1: the outbound texts to the phone ``:phone`` (or to any of ``phones``) of the account ``:account_id``,
    each numbered by recency within its lead and phone (``n`` = 1 its lead's last there): one range of the
    (account, phone, direction, created_at) index a phone, whatever the size of the table."""
    phone = MESSAGES.c.lead_phone == bindparam("phone") if phones is None else MESSAGES.c.lead_phone.in_(phones)
    return (
        select(
            MESSAGES.c.id,
            MESSAGES.c.lead_id,
            MESSAGES.c.lead_phone,
            MESSAGES.c.agent_id,
            MESSAGES.c.created_at,
            func.row_number()
            .over(
                partition_by=(MESSAGES.c.lead_id, MESSAGES.c.lead_phone),
                order_by=(MESSAGES.c.created_at.desc(), MESSAGES.c.id.desc()),
            )
            .label("n"),
        )
        .where(
            MESSAGES.c.account_id == bindparam("account_id"),
            phone,
            MESSAGES.c.direction == "outbound",
            MESSAGES.c.lead_id.is_not(None),
        )
        .subquery("last_texts")
    )


def _reply_facts() -> Any:
    """:meth:`TextRepository.reply_facts_of`'s statement (``:account_id``, ``:phones``: the phones, an expanding IN)."""
    phones = bindparam("phones", expanding=True, type_=String())
    last = _last_outbound(phones)
    return (
        select(
            LEADS.c.id,
            LEADS.c.owner_entity_id,
            LEADS.c.assigned_agent_id,
            LEADS.c.last_activity_at,
            LEADS.c.created_at,
            LEADS.c.sms_unsubscribed,
            LEADS.c.first_name,
            LEADS.c.last_name,
            LEADS.c.phone_e164,
            last.c.id,
            last.c.agent_id,
            last.c.created_at,
        )
        .select_from(
            LEADS.outerjoin(
                last, and_(last.c.lead_id == LEADS.c.id, last.c.lead_phone == LEADS.c.phone_e164, last.c.n == 1)
            )
        )
        .where(
            LEADS.c.account_id == bindparam("account_id"),
            LEADS.c.phone_e164.in_(phones),
            LEADS.c.status.in_([LeadStatus.ACTIVE, LeadStatus.ARCHIVED]),
        )
        .order_by(LEADS.c.created_at, LEADS.c.id)
    )


# Built once: SQLAlchemy then neither builds nor keys these statements again for each text.
REPLY_FACTS = _reply_facts()
XACT_LOCK = select(func.pg_advisory_xact_lock(bindparam("lock_key", type_=BigInteger())))
# Several advisory locks in one statement, in key order (the subquery's order; OFFSET 0 keeps it from being
# flattened), as ``SignupStore.lock_people`` takes the people's.
_ORDERED_KEYS = (
    select(func.unnest(bindparam("lock_keys", type_=ARRAY(BigInteger))).label("k")).order_by("k").offset(0).subquery()
)
XACT_LOCKS = select(func.pg_advisory_xact_lock(_ORDERED_KEYS.c.k))


def _lock_key(key: str) -> int:
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


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
        self.session.execute(XACT_LOCK, {"lock_key": _lock_key(key)})

    def lock_phones(self, account_id: int, phones: Iterable[str]) -> None:
        """Serialise the texts of each phone to one account: two first texts at once make one lead (O6). The
        locks are taken in key order in one statement, so two batches never wait for each other in a cycle.
        Nothing on SQLite, which takes one writer at a time."""
        keys = sorted({_lock_key(f"phone:{account_id}:{phone}") for phone in phones})
        if not keys or self.session.get_bind().dialect.name != "postgresql":
            return
        self.session.execute(XACT_LOCKS, {"lock_keys": keys}).all()

    def lock_text_sid(self, provider_sid: str) -> None:
        """Serialise a status callback and the send that records the gateway's sid for the same text,
        so a callback that arrives before the sid is recorded is seen by one of the two."""
        self._xact_lock(f"sms-sid:{provider_sid}")

    def last_outbound_texts(self, account_id: int, phone_e164: str) -> list[tuple[Message, str | None]]:
        """S1: for each lead that was texted at this phone, its most recent outbound text there, with the
        name of the agent it counts for (:meth:`reply_facts` reads the same for the live leads)."""
        ranked = _last_outbound()
        rows = self.session.execute(
            select(Message, Entity.name)
            .join(ranked, and_(ranked.c.id == Message.id, ranked.c.n == 1))
            .outerjoin(Entity, Entity.id == Message.agent_id),
            {"account_id": account_id, "phone": phone_e164},
        ).all()
        return [(message, name) for message, name in rows]

    def reply_facts(self, account_id: int, phone_e164: str) -> ReplyFacts:
        """:meth:`reply_facts_of` one phone."""
        return self.reply_facts_of(account_id, [phone_e164])[phone_e164]

    def reply_facts_of(self, account_id: int, phones: Iterable[str]) -> dict[str, ReplyFacts]:
        """What reply routing decides over (S1, S2), for each of ``phones``, in one statement: the account's
        leads with that phone that are neither merged nor deleted, oldest first, each with its last outbound
        text there (one range of the messages' (account, phone, direction, created_at) index a phone). Take
        the phones' locks (:meth:`lock_phones`) first. Sends nothing pending of the session first (no
        autoflush): the caller writes it with the texts."""
        wanted = sorted(set(phones))
        with self.session.no_autoflush:
            rows = self.session.execute(REPLY_FACTS, {"account_id": account_id, "phones": wanted}).all()
        facts = {phone: ReplyFacts([], {}, []) for phone in wanted}
        for lead_id, owner, agent, active, created, unsubscribed, first, last_name, phone, text, by, at in rows:
            got = facts[phone]
            got.candidates.append(CandidateLead(lead_id, owner, agent, active, created))
            got.leads[lead_id] = TextLead(lead_id, agent, active, unsubscribed, first, last_name, phone)
            if text is not None:
                got.last_texts.append(LastText(text, lead_id, by, at))
        return facts

    def text_lead(self, lead_id: uuid.UUID) -> TextLead:
        """The lead a text lands on, as :meth:`reply_facts` reads it (a lead the text just made, O6)."""
        with self.session.no_autoflush:
            row = self.session.execute(
                select(
                    LEADS.c.id,
                    LEADS.c.assigned_agent_id,
                    LEADS.c.last_activity_at,
                    LEADS.c.sms_unsubscribed,
                    LEADS.c.first_name,
                    LEADS.c.last_name,
                    LEADS.c.phone_e164,
                ).where(LEADS.c.id == lead_id)
            ).one()
        return TextLead(*row)

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
