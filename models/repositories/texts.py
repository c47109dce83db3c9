"""The texts' queries: outbound texts recorded and locked for their send, inbound texts put on the lead
that texted that phone last (reply routing S1-S3, O6), and the gateway's delivery reports."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import BigInteger, Integer, Table, Uuid, and_, bindparam, case, func, literal, select, update
from sqlalchemy import cast as sa_cast
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from models.repositories.common import AT, EVENTS, INTAKES, LEADS, OUTBOX, dialect_insert, insert_once
from models.tables import (
    Entity,
    Intake,
    IntakeStatus,
    LeadStatus,
    Message,
    MessageStatusCallback,
)
from rules.texts import CandidateLead, TextLead, TextPlan

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


def _binds(prefix: str, table: Table, names: Iterable[str]) -> dict[str, Any]:
    """A bind parameter per column, named ``prefix`` + the column, typed as the column."""
    return {name: bindparam(prefix + name, type_=table.c[name].type) for name in names}


MESSAGE_COLUMNS = (
    "id",
    "account_id",
    "lead_id",
    "direction",
    "lead_phone",
    "smart_number",
    "body",
    "agent_id",
    "provider_sid",
    "status",
    "intake_id",
    "created_at",
    "updated_at",
)
EVENT_COLUMNS = ("account_id", "lead_id", "kind", "intake_id", "at", "summary", "data", "actor")
MAIL_COLUMNS = (
    "id",
    "account_id",
    "kind",
    "dedupe_key",
    "to_address",
    "subject",
    "body",
    "correlation_id",
    "status",
    "attempts",
    "created_at",
)


def _last_outbound() -> Any:
    """S1: the outbound texts to the phone ``:phone`` of the account ``:account_id``, each numbered by recency
    within its lead (``n`` = 1 its lead's last): one range of the (account, phone, direction, created_at)
    index, whatever the size of the table."""
    return (
        select(
            MESSAGES.c.id,
            MESSAGES.c.lead_id,
            MESSAGES.c.agent_id,
            MESSAGES.c.created_at,
            func.row_number()
            .over(partition_by=MESSAGES.c.lead_id, order_by=(MESSAGES.c.created_at.desc(), MESSAGES.c.id.desc()))
            .label("n"),
        )
        .where(
            MESSAGES.c.account_id == bindparam("account_id"),
            MESSAGES.c.lead_phone == bindparam("phone"),
            MESSAGES.c.direction == "outbound",
            MESSAGES.c.lead_id.is_not(None),
        )
        .subquery("last_texts")
    )


def _reply_facts() -> Any:
    """:meth:`TextRepository.reply_facts`'s statement (``:account_id``, ``:phone``)."""
    last = _last_outbound()
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
        .select_from(LEADS.outerjoin(last, and_(last.c.lead_id == LEADS.c.id, last.c.n == 1)))
        .where(
            LEADS.c.account_id == bindparam("account_id"),
            LEADS.c.phone_e164 == bindparam("phone"),
            LEADS.c.status.in_([LeadStatus.ACTIVE, LeadStatus.ARCHIVED]),
        )
        .order_by(LEADS.c.created_at, LEADS.c.id)
    )


# Built once: SQLAlchemy then neither builds nor keys these statements again for each text.
REPLY_FACTS = _reply_facts()
XACT_LOCK = select(func.pg_advisory_xact_lock(bindparam("lock_key", type_=BigInteger())))


@functools.cache
def _write_statement(events: int, moved: bool, subscription: bool, mail: bool) -> Any:
    """PostgreSQL: :meth:`TextRepository.write_inbound`'s one statement for a plan of this shape (its events,
    whether it moves the lead's activity or subscription, whether it mails), each step a data-modifying CTE,
    its values bind parameters (``m_*`` the message, ``e<n>_*`` the events, ``o_*`` the mail, ``l_*`` the
    lead's change, ``i_*`` the intake's end, ``t_now``). No parameter is named as a column: SQLAlchemy would
    take it for a column to set in the UPDATEs. Built once per shape and kept, as SQLAlchemy keeps its
    compiled form. Each row is inserted once, under the intake's
    lock (a replay skips what its first run wrote); the statement returns whether the mail is new."""
    now = bindparam("t_now", type_=AT)
    ctes: list[Any] = [
        insert_once(MESSAGES, _binds("m_", MESSAGES, MESSAGE_COLUMNS), ["provider_sid"]).cte("inbound"),
        *(
            insert_once(EVENTS, _binds(f"e{n}_", EVENTS, EVENT_COLUMNS), ["lead_id", "intake_id", "kind"]).cte(
                f"text_event_{n}"
            )
            for n in range(events)
        ),
    ]
    if moved or subscription:
        # updated_at is set here: a column's onupdate default is not evaluated inside a CTE.
        lead: dict[str, Any] = {"updated_at": now}
        if moved:
            # At least: other work on the lead (its site activity) moves it too, without this phone's lock.
            lead["last_activity_at"] = func.greatest(
                LEADS.c.last_activity_at, sa_cast(bindparam("l_activity_at", type_=AT), AT)
            )
        if subscription:
            lead["sms_unsubscribed"] = bindparam("l_sms_unsubscribed", type_=LEADS.c.sms_unsubscribed.type)
        ctes.append(update(LEADS).where(LEADS.c.id == bindparam("l_id", type_=Uuid())).values(**lead).cte("text_lead"))
    ctes.append(
        update(INTAKES)
        .where(INTAKES.c.id == bindparam("i_id", type_=Uuid()))
        .values(
            status=IntakeStatus.DONE,
            lead_id=bindparam("i_lead_id", type_=Uuid()),
            reason=None,
            processed_at=now,
            updated_at=now,
            attempts=bindparam("i_attempts", type_=Integer()),
        )
        .cte("text_intake")
    )
    if not mail:
        return select(literal(0)).add_cte(*ctes)
    mails = insert_once(OUTBOX, _binds("o_", OUTBOX, MAIL_COLUMNS), ["dedupe_key"]).returning(OUTBOX.c.id)
    new_mail = mails.cte("text_mail")
    return select(select(func.count()).select_from(new_mail).scalar_subquery()).add_cte(*ctes, new_mail)


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
        self.session.execute(XACT_LOCK, {"lock_key": int.from_bytes(digest[:8], "big", signed=True)})

    def lock_phone(self, account_id: int, phone_e164: str) -> None:
        """Serialise the texts of one phone to one account: two first texts at once make one lead (O6)."""
        self._xact_lock(f"phone:{account_id}:{phone_e164}")

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
        """What reply routing decides over (S1, S2), in one statement: the account's leads with this phone
        that are neither merged nor deleted, oldest first, each with its last outbound text there (one
        range of the messages' (account, phone, direction, created_at) index). Take the phone's lock
        (:meth:`lock_phone`) first. Sends nothing pending of the session first (no autoflush): the caller
        writes it with the text (:meth:`write_inbound`)."""
        with self.session.no_autoflush:
            rows = self.session.execute(REPLY_FACTS, {"account_id": account_id, "phone": phone_e164}).all()
        candidates, leads, texts = [], {}, []
        for lead_id, owner, agent, active, created, unsubscribed, first, last_name, phone, text, by, at in rows:
            candidates.append(CandidateLead(lead_id, owner, agent, active, created))
            leads[lead_id] = TextLead(lead_id, agent, active, unsubscribed, first, last_name, phone)
            if text is not None:
                texts.append(LastText(text, lead_id, by, at))
        return ReplyFacts(candidates, leads, texts)

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

    def write_inbound(self, account_id: int, plan: TextPlan, intake: Intake) -> bool:
        """Write what a text decided and end its intake ``done`` on the plan's lead: the inbound message (once
        per gateway sid), its timeline events (once per lead, intake and kind), the lead's change, the agent's
        mail (once per dedupe key), the intake's status, lead, time and tries. One statement on PostgreSQL
        (each step a data-modifying CTE), one per step on SQLite. Whether the mail is new (a flush is then
        due once this commits)."""
        now = dt.datetime.now(dt.UTC)
        message = {"id": uuid.uuid4(), **plan.message}
        events = [
            {
                "account_id": account_id,
                "lead_id": e.lead_id,
                "kind": e.kind,
                "intake_id": e.intake_id,
                "at": e.at,
                "summary": e.summary,
                "data": e.data,
                "actor": e.actor,
            }
            for e in plan.events
        ]
        mail = (
            {
                "id": uuid.uuid4(),
                "account_id": account_id,
                "kind": "email",
                "dedupe_key": plan.mail.dedupe_key[:200],
                "to_address": plan.mail.to_address,
                "subject": plan.mail.subject[:300],
                "body": plan.mail.body,
                "correlation_id": plan.mail.correlation_id,
                "status": "pending",
                "attempts": 0,
                "created_at": now,
            }
            if plan.mail is not None
            else None
        )
        finished = {
            "status": IntakeStatus.DONE,
            "lead_id": plan.lead_id,
            "reason": None,
            "processed_at": now,
            "attempts": intake.attempts,
        }
        if self.session.get_bind().dialect.name != "postgresql":
            return self._write_inbound_by_steps(plan, message, events, mail, intake, finished, now)
        change = plan.lead_change
        moved = change is not None and change.activity_at is not None
        subscription = change is not None and change.sms_unsubscribed is not None
        params: dict[str, Any] = {
            **{f"m_{name}": message[name] for name in MESSAGE_COLUMNS},
            **{f"e{n}_{name}": event[name] for n, event in enumerate(events) for name in EVENT_COLUMNS},
            **({f"o_{name}": mail[name] for name in MAIL_COLUMNS} if mail is not None else {}),
            "i_id": intake.id,
            "i_lead_id": plan.lead_id,
            "i_attempts": intake.attempts,
            "t_now": now,
        }
        if change is not None:
            params["l_id"] = plan.lead_id
            if change.activity_at is not None:
                params["l_activity_at"] = change.activity_at
            if change.sms_unsubscribed is not None:
                params["l_sms_unsubscribed"] = change.sms_unsubscribed
        stmt = _write_statement(len(events), moved, subscription, mail is not None)
        with self.session.no_autoflush:
            mailed = bool(self.session.execute(stmt, params).scalar_one())
        # The intake row now holds these: the session has nothing more to send for it.
        for name, value in {**finished, "updated_at": now}.items():
            set_committed_value(intake, name, value)
        return mailed

    def _write_inbound_by_steps(
        self,
        plan: TextPlan,
        message: dict[str, Any],
        events: list[dict[str, Any]],
        mail: dict[str, Any] | None,
        intake: Intake,
        finished: dict[str, Any],
        now: dt.datetime,
    ) -> bool:
        """SQLite (the embedded mode): :meth:`write_inbound` one statement per step."""
        session = self.session
        session.execute(
            dialect_insert(session, MESSAGES).values(message).on_conflict_do_nothing(index_elements=["provider_sid"])
        )
        session.execute(
            dialect_insert(session, EVENTS).on_conflict_do_nothing(index_elements=["lead_id", "intake_id", "kind"]),
            events,
        )
        change = plan.lead_change
        if change is not None:
            lead: dict[str, Any] = {"updated_at": now}
            if change.activity_at is not None:
                # A bind of the column's type, not a CAST: SQLite would cast the text to a number.
                at = literal(change.activity_at, LEADS.c.last_activity_at.type)
                lead["last_activity_at"] = case((LEADS.c.last_activity_at < at, at), else_=LEADS.c.last_activity_at)
            if change.sms_unsubscribed is not None:
                lead["sms_unsubscribed"] = change.sms_unsubscribed
            session.execute(update(LEADS).where(LEADS.c.id == plan.lead_id).values(**lead))
        mailed = False
        if mail is not None:
            mailed = (
                session.execute(
                    dialect_insert(session, OUTBOX)
                    .values(mail)
                    .on_conflict_do_nothing(index_elements=["dedupe_key"])
                    .returning(OUTBOX.c.id)
                ).scalar_one_or_none()
                is not None
            )
        for name, value in finished.items():
            setattr(intake, name, value)
        return mailed

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
