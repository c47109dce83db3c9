"""CSV imports, the database part: the import's plan, chunk by chunk, staged in a temporary table (PostgreSQL
``COPY``; batched INSERTs on SQLite), then written set-wise in the import's one transaction: the new leads'
events from each chunk's staged rows as the file is read, the leads and the rest at the end.

The plan is the signup planner's (:mod:`rules.signups`), worded as an import (:class:`rules.imports.ImportedBy`):
one staged row per first row of a unique key, which either makes its lead (with its routing, its campaign, its
kept activity to claim and its events) or joins one (with its event). Nothing here decides: the statements copy
what the plan says, the columns every lead of an import shares (the account, the owner, the times) bound once.
Nothing here loops over rows in SQL."""

from __future__ import annotations

import datetime as dt
import functools
import json
import operator
import uuid
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    case,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models.base import UTCDateTime
from models.repositories import CLAIMED_COLUMNS, ClaimedActivity
from models.repositories.common import activity_lock_key
from models.tables import ImportRejection, Lead, LeadCampaign, LeadStatus, SiteActivity, TimelineEvent
from rules.events import LeadSignup
from rules.imports import ImportedBy
from rules.signups import NewLead, SignupPlan

_TEMP = MetaData()

# One row per first row of a unique key in the file that the plan made or joined a lead with (a refused row
# is a rejection, not staged). A made row holds its lead's columns as the plan set them; a joined row, its
# signup's (to plan it again if the lead it joined went meanwhile). Each holds its events: ``kind`` (created,
# or import for a joined row), and for a made row ``routed`` and its ``note``. Event data are ids into DATA.
STAGE = Table(
    "import_stage",
    _TEMP,
    Column("line", BigInteger, primary_key=True),
    Column("made", Boolean, nullable=False),
    Column("lead_id", Uuid, nullable=False),
    Column("unique_key", String(400)),
    Column("replaces", Uuid),  # X4: the deleted lead whose key the made lead takes
    Column("email", String(320)),
    Column("email_normalized", String(320)),
    Column("phone_e164", String(20)),
    Column("first_name", String(100)),
    Column("last_name", String(100)),
    Column("tags", Text, nullable=False),  # JSON text, cast where it lands
    Column("lead_type", String(20)),
    Column("price_min", BigInteger),
    Column("price_max", BigInteger),
    Column("zip", String(10)),
    Column("source_detail", String(500)),
    Column("assigned_agent_id", Integer),
    Column("routed_via_entity_id", Integer),
    Column("in_pond", Boolean),
    Column("campaign", String(200)),
    Column("claim_email", String(320)),  # D7: the kept activity of this person joins the made lead
    Column("claim_owner", Integer),  # ... kept under this owner; under any owner when NULL
    Column("kind", String(40), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("summary", Text, nullable=False),
    Column("data", Integer, nullable=False),
    Column("routed_actor", String(64)),
    Column("routed_summary", Text),
    Column("routed_data", Integer),
    Column("note", Text),  # a made row's note event (its notes), if any
    Column("note_actor", String(64)),
    Column("note_data", Integer),
    Column("touched_at", UTCDateTime()),  # a joined lead's last activity is at least this
    Column("touch", Boolean),  # set at the end: the joined row whose event is written
    prefixes=["TEMPORARY"],
)
# The columns a staged row is written with, in this order (the last, ``touch``, is set at the end).
STAGE_ROW = tuple(c.name for c in STAGE.columns)[:-1]
_NOTE = STAGE_ROW.index("note")

# The events' data, each distinct value once (a routing decision, the created event's reasons): most rows
# share a few, so they are sent and parsed once rather than per row.
DATA = Table(
    "import_data",
    _TEMP,
    Column("id", Integer, primary_key=True),
    Column("data", Text().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
    prefixes=["TEMPORARY"],
)

# Every unique key the file has had so far: a later row with one is a duplicate inside the file.
# Kept here rather than in the worker's memory, which then stays the same whatever the file's size.
KEYS = Table(
    "import_keys",
    _TEMP,
    Column("unique_key", String(400), primary_key=True),
    prefixes=["TEMPORARY"],
)

# The made rows' routing planned again from cursors that moved while the file was read: line -> routing.
ROUTED = Table(
    "import_routed",
    _TEMP,
    Column("line", BigInteger, primary_key=True),
    Column("assigned_agent_id", Integer),
    Column("in_pond", Boolean),
    Column("campaign", String(200)),
    Column("routed_actor", String(64)),
    Column("routed_summary", Text),
    Column("routed_data", Integer),
    prefixes=["TEMPORARY"],
)
ROUTED_ROW = tuple(c.name for c in ROUTED.columns)
_TABLES = (STAGE, DATA, KEYS, ROUTED)
_FIRST_KEYS = text(
    "INSERT INTO import_keys (unique_key) SELECT jsonb_array_elements_text(CAST(:keys AS jsonb))"
    " ON CONFLICT DO NOTHING RETURNING unique_key"
)
_EVENT_COLUMNS = [
    TimelineEvent.account_id,
    TimelineEvent.lead_id,
    TimelineEvent.at,
    TimelineEvent.kind,
    TimelineEvent.actor,
    TimelineEvent.summary,
    TimelineEvent.data,
    TimelineEvent.intake_id,
]
_LEAD_COLUMNS = (
    "email",
    "email_normalized",
    "phone_e164",
    "first_name",
    "last_name",
    "lead_type",
    "price_min",
    "price_max",
    "zip",
    "source_detail",
    "assigned_agent_id",
    "routed_via_entity_id",
    "in_pond",
    "unique_key",
)
# A made row's lead columns as the plan set them, either side of its tags.
_CONTACT = operator.itemgetter(*_LEAD_COLUMNS[:5])
_DETAILS = operator.itemgetter(*_LEAD_COLUMNS[5:13])
SQLITE_BATCH = 5_000
SQLITE_IN = 500  # keys per IN (...) on SQLite, well under its bound-parameter limit
DATA_KEPT = 10_000  # distinct data values remembered; past this a value may be sent twice (memory stays bounded)
_encode = json.JSONEncoder(separators=(",", ":")).encode


@dataclass
class Staged:
    """What a plan staged: rows that make a lead, rows that join one, and the refused (line, reason)."""

    made: int = 0
    joined: int = 0
    rejections: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Shared:
    """What every lead an import makes shares, bound once: the plan sets the same for each."""

    account_id: int
    owner_id: int
    import_id: uuid.UUID  # the leads' ``created_by_intake_id``
    source_key: uuid.UUID  # the events' ``intake_id`` (the same file for the same owner: the same key)
    source_kind: str
    at: dt.datetime


class ImportStore:
    """The staging tables and the set-based statements of one import, on the unit of work's session."""

    def __init__(self, session: Session, *, account_id: int, import_id: uuid.UUID) -> None:
        self.session = session
        self.account_id = account_id
        self.import_id = import_id
        self.postgres = session.get_bind().dialect.name == "postgresql"
        self._data: dict[str, int] = {}  # a data value's JSON -> its id in DATA
        self._data_seen: dict[Hashable, tuple[dict[str, Any], int]] = {}  # see _data_id
        self._data_next = 1
        self._pending: list[tuple[int, str]] = []  # data ids given out, not yet written
        # What any staged row has (a tombstone to free, a campaign, a note, a joined lead, one to touch):
        # the end's statements for what none has are not run (each reads the whole staging table).
        self._staged: set[str] = set()

    # --- staging -------------------------------------------------------------------------------

    def create_staging(self) -> None:
        conn = self.session.connection()
        for table in _TABLES:
            table.drop(conn, checkfirst=True)
            table.create(conn)

    def drop_staging(self) -> None:
        conn = self.session.connection()
        for table in _TABLES:
            table.drop(conn, checkfirst=True)

    @contextmanager
    def writer(self, table: Table, columns: Sequence[str] | None = None) -> Iterator[Callable[[Sequence[Any]], None]]:
        """``write(row)`` for a tuple of ``columns`` (by default the table's, in order): COPY on
        PostgreSQL, INSERTs in batches on SQLite. Rows are never all held in memory."""
        names = list(columns) if columns is not None else [c.name for c in table.columns]
        if self.postgres:
            driver = self.session.connection().connection.driver_connection
            assert driver is not None
            with driver.cursor() as cur, cur.copy(f"COPY {table.name} ({', '.join(names)}) FROM STDIN") as copy:
                yield copy.write_row
            return
        conn = self.session.connection()
        batch: list[dict[str, Any]] = []

        def write(row: Sequence[Any]) -> None:
            batch.append(dict(zip(names, row, strict=True)))
            if len(batch) >= SQLITE_BATCH:
                conn.execute(insert(table), batch)
                batch.clear()

        yield write
        if batch:
            conn.execute(insert(table), batch)

    def first_keys(self, keys: Sequence[str]) -> set[str]:
        """Of ``keys`` (distinct, in file order), those the file has not had before; they are now had."""
        if not keys:
            return set()
        if self.postgres:
            found = self.session.execute(_FIRST_KEYS, {"keys": json.dumps(keys)})
            return {str(k) for k in found.scalars()}
        first: set[str] = set()
        for i in range(0, len(keys), SQLITE_IN):
            values = [{"unique_key": k} for k in keys[i : i + SQLITE_IN]]
            stmt = sqlite.insert(KEYS).values(values).on_conflict_do_nothing().returning(KEYS.c.unique_key)
            first.update(str(k) for k in self.session.execute(stmt).scalars())
        return first

    def stage_plan(
        self,
        plan: SignupPlan,
        lines: Sequence[int],
        signups: Sequence[LeadSignup],
        notes: Sequence[str | None],
        by: ImportedBy,
        shared: Shared,
    ) -> Staged:
        """:meth:`prepare_plan`, then :meth:`write_rows` and :meth:`write_events` at once."""
        staged, batch = self.prepare_plan(plan, lines, signups, notes, by, shared)
        self.write_rows(batch)
        self.write_events(batch)
        return staged

    def prepare_plan(
        self,
        plan: SignupPlan,
        lines: Sequence[int],
        signups: Sequence[LeadSignup],
        notes: Sequence[str | None],
        by: ImportedBy,
        shared: Shared,
    ) -> tuple[Staged, StageBatch]:
        """A plan of rows (``lines``, with their signups and notes, in the order planned) as the rows to stage
        (:meth:`write_rows`, then :meth:`write_events`, which may run on another thread): each row that makes
        or joins a lead,
        its events worded as the import's (``by``); a refused row is returned with its reason. A made lead's
        events are written with its staged row, before the lead itself (see :meth:`defer_lead_checks`).

        The plan's lists follow its signups' order (each signup is decided in turn): its new leads, and
        their campaigns and claims, in the order of the rows that made them; its events, row by row (a made
        lead's ``created`` and ``routed``, a joined lead's repeat). They are walked along the rows rather
        than looked up by lead (a tenth of this method's time), each checked to be the row's lead's."""
        leads = iter(plan.leads)
        events = iter(plan.events)
        campaigns = _Along(plan.campaigns)
        claims = _Along([(claim.lead_id, claim) for claim in plan.claims])
        staged = Staged()
        rows: list[tuple[Any, ...]] = []
        data_id = self._data_id
        for line, signup, note, done in zip(lines, signups, notes, plan.finished, strict=True):
            lead_id = done.lead_id
            if done.status == "rejected" or lead_id is None:
                staged.rejections.append((line, done.reason or done.status))
                continue
            if done.created:
                lead = _of(next(leads), lead_id)
                v = lead.values
                created, routed = by.event(_of(next(events), lead_id), line), by.event(_of(next(events), lead_id), line)
                assert (created.kind, routed.kind) == ("created", "routed"), "a new lead's events"
                claim = claims.get(lead_id)
                noted = by.note(lead_id, note, created.intake_id, created.at) if note else None
                campaign = campaigns.get(lead_id)
                if lead.replaces is not None or campaign is not None or noted is not None:
                    self._staged.update(
                        name
                        for name, there in (("replaces", lead.replaces), ("campaign", campaign), ("note", noted))
                        if there is not None
                    )
                rows.append(
                    (
                        line,
                        True,
                        lead_id,
                        v["unique_key"],
                        lead.replaces,
                        *_CONTACT(v),
                        _tags_json(tuple(v["tags"])),
                        *_DETAILS(v),
                        campaign,
                        claim.email if claim else None,
                        claim.owner_id if claim else None,
                        created.kind,
                        created.actor,
                        created.summary,
                        data_id(created.data),
                        routed.actor,
                        routed.summary,
                        data_id(routed.data, routed.summary),
                        noted.summary if noted else None,
                        noted.actor if noted else None,
                        data_id(noted.data) if noted else None,
                        None,
                    )
                )
                staged.made += 1
            else:
                joined = by.event(_of(next(events), lead_id), line)
                self._staged.add("joined")
                rows.append(
                    (
                        line,
                        False,
                        lead_id,
                        None,
                        None,
                        signup.email,
                        signup.email_normalized,
                        signup.phone,
                        signup.first_name,
                        signup.last_name,
                        _tags_json(signup.tags),
                        signup.lead_type,
                        signup.price_min,
                        signup.price_max,
                        signup.zip,
                        signup.source_detail,
                        None,
                        None,
                        None,
                        None,
                        None,
                        None,
                        joined.kind,
                        joined.actor,
                        joined.summary,
                        data_id(joined.data),
                        None,
                        None,
                        None,
                        None,
                        None,
                        None,
                        plan.touched.get(lead_id),
                    )
                )
                staged.joined += 1
        pending, self._pending = self._pending, []
        if len(self._data) + len(self._data_seen) > DATA_KEPT:
            self._data.clear()
            self._data_seen.clear()
        notes_there = any(row[1] and row[_NOTE] is not None for row in rows)
        span = (rows[0][0], rows[-1][0]) if rows else (0, 0)
        return staged, StageBatch(shared, pending, rows, span, made=staged.made > 0, notes=notes_there)

    def write_rows(self, batch: StageBatch) -> None:
        """A prepared plan's rows: the new data values and the staged rows."""
        for table, columns, rows in ((DATA, None, batch.data), (STAGE, STAGE_ROW, batch.rows)):
            if rows:
                with self.writer(table, columns) as write:
                    for row in rows:
                        write(row)

    def write_events(self, batch: StageBatch) -> None:
        """The made leads' ``created``, ``routed`` and ``note`` events of a plan's rows once they are staged,
        one statement each (a lead's events are in that order): no Python per row."""
        if not batch.made:
            return
        shared = batch.shared
        at = literal(shared.at, UTCDateTime())
        source = literal(shared.source_key, Uuid())
        account = literal(shared.account_id)
        lines = STAGE.c.line.between(*batch.lines)
        # Per made lead, in this order: (its data, kind, actor, summary) of each event.
        events = [
            (STAGE.c.data, STAGE.c.kind, STAGE.c.actor, STAGE.c.summary),
            (STAGE.c.routed_data, literal("routed"), STAGE.c.routed_actor, STAGE.c.routed_summary),
        ]
        if batch.notes:
            events.append((STAGE.c.note_data, literal("note"), STAGE.c.note_actor, STAGE.c.note))
        for data_id, kind, actor, summary in events:
            self.session.execute(
                self._insert(TimelineEvent).from_select(
                    _EVENT_COLUMNS,
                    select(account, STAGE.c.lead_id, at, kind, actor, summary, DATA.c.data, source)
                    .select_from(STAGE.join(DATA, DATA.c.id == data_id))
                    .where(lines, STAGE.c.made),
                )
            )

    def defer_lead_checks(self) -> None:
        """The made leads' events are written chunk by chunk as the file is read, their leads at the end (once
        their routing is settled): the events' foreign key to their lead is checked when the import commits
        (it is deferrable, migration 0012), by then every event's lead is there."""
        if self.postgres:
            self.session.execute(text("SET CONSTRAINTS fk_timeline_events_lead_id_leads DEFERRED"))
        else:
            self.session.execute(text("PRAGMA defer_foreign_keys = ON"))

    def drop_events(self, lines: Sequence[int], source_key: uuid.UUID) -> None:
        """The events written for the made rows ``lines`` whose lead was not made after all."""
        for i in range(0, len(lines), SQLITE_IN):
            leads = select(STAGE.c.lead_id).where(STAGE.c.line.in_(list(lines[i : i + SQLITE_IN])))
            self.session.execute(
                delete(TimelineEvent)
                .where(TimelineEvent.lead_id.in_(leads), TimelineEvent.intake_id == source_key)
                .execution_options(synchronize_session=False)
            )

    def _data_id(self, data: dict[str, Any], like: Hashable | None = None) -> int:
        """The id in :data:`DATA` of an event's data, given out (and the value sent) once per distinct value.
        Data known again before they are encoded: by their items when those are scalars (the created and
        repeat events' reasons), or by ``like`` (a routing decision's summary) and then compared whole."""
        key: Hashable | None = like
        if key is None:
            try:
                key = tuple(data.items())
                hash(key)
            except TypeError:  # a value that is not a scalar after all
                key = None
        if key is not None:
            seen = self._data_seen.get(key)
            if seen is not None and (like is None or seen[0] == data):
                return seen[1]
        value = _encode(data)
        found = self._data.get(value)
        if found is None:
            found = self._data[value] = self._data_next
            self._data_next += 1
            self._pending.append((found, value))
        if key is not None:
            self._data_seen[key] = (data, found)
        return found

    def _write_data(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            with self.writer(DATA) as write:
                for row in pending:
                    write(row)
        if len(self._data) + len(self._data_seen) > DATA_KEPT:
            self._data.clear()
            self._data_seen.clear()

    # --- reading rows back, to plan them again ---------------------------------------------------

    def staged_signups(
        self, *, lines: Sequence[int] | None = None, made_after: int | None = None, limit: int | None = None
    ) -> list[tuple[int, LeadSignup]]:
        """Staged rows as their signups, in file order: the rows ``lines``, or the made rows after the line
        ``made_after`` (at most ``limit``)."""
        stmt = select(
            STAGE.c.line,
            STAGE.c.email,
            STAGE.c.email_normalized,
            STAGE.c.phone_e164,
            STAGE.c.first_name,
            STAGE.c.last_name,
            STAGE.c.tags,
            STAGE.c.lead_type,
            STAGE.c.price_min,
            STAGE.c.price_max,
            STAGE.c.zip,
            STAGE.c.source_detail,
        ).order_by(STAGE.c.line)
        if lines is not None and len(lines) > SQLITE_IN:
            return [
                row
                for i in range(0, len(lines), SQLITE_IN)
                for row in self.staged_signups(lines=lines[i : i + SQLITE_IN])
            ]
        if lines is not None:
            stmt = stmt.where(STAGE.c.line.in_(list(lines)))
        if made_after is not None:
            stmt = stmt.where(STAGE.c.made, STAGE.c.line > made_after)
        if limit is not None:
            stmt = stmt.limit(limit)
        return [
            (
                int(r.line),
                LeadSignup(
                    source_kind="import",
                    email=r.email,
                    email_normalized=r.email_normalized,
                    phone=r.phone_e164,
                    first_name=r.first_name,
                    last_name=r.last_name,
                    tags=tuple(json.loads(r.tags)),
                    lead_type=r.lead_type,
                    price_min=r.price_min,
                    price_max=r.price_max,
                    zip=r.zip,
                    source_detail=r.source_detail,
                ),
            )
            for r in self.session.execute(stmt).all()
        ]

    def unstage(self, lines: Sequence[int]) -> None:
        """Forget the staged rows ``lines`` (to stage them again as planned anew)."""
        for i in range(0, len(lines), SQLITE_IN):
            self.session.execute(delete(STAGE).where(STAGE.c.line.in_(list(lines[i : i + SQLITE_IN]))))

    # --- routing again, when the cursors moved while the file was read ---------------------------

    def stage_routing(self, plan: SignupPlan, lines: Sequence[int]) -> None:
        """The routing of the made rows ``lines`` as ``plan`` (of the same rows, each making a lead, in
        order) decides it again: assignee, pond, campaign and the ``routed`` event."""
        campaigns = dict(plan.campaigns)
        routed = {e.lead_id: e for e in plan.events if e.kind == "routed"}
        rows = []
        if campaigns:
            self._staged.add("campaign")
        for line, lead in zip(lines, plan.leads, strict=True):
            event = routed[lead.id]
            rows.append(
                (
                    line,
                    lead.values["assigned_agent_id"],
                    lead.values["in_pond"],
                    campaigns.get(lead.id),
                    event.actor,
                    event.summary,
                    self._data_id(event.data, event.summary),
                )
            )
        self._write_data()
        with self.writer(ROUTED, ROUTED_ROW) as write:
            for row in rows:
                write(row)

    def apply_routing(self, source_key: uuid.UUID) -> None:
        """Each made row's routing as staged in :data:`ROUTED`, and its ``routed`` event, written already
        (then emptied, for a later round)."""
        self.session.execute(
            update(TimelineEvent)
            .where(
                TimelineEvent.lead_id == STAGE.c.lead_id,
                TimelineEvent.intake_id == source_key,
                TimelineEvent.kind == "routed",
                STAGE.c.line == ROUTED.c.line,
                DATA.c.id == ROUTED.c.routed_data,
            )
            .values(actor=ROUTED.c.routed_actor, summary=ROUTED.c.routed_summary, data=DATA.c.data)
            .execution_options(synchronize_session=False)
        )
        values = {
            name: select(ROUTED.c[name]).where(ROUTED.c.line == STAGE.c.line).scalar_subquery()
            for name in ROUTED_ROW[1:]
        }
        self.session.execute(
            update(STAGE).where(STAGE.c.made, STAGE.c.line.in_(select(ROUTED.c.line))).values(**values)
        )
        self.session.execute(delete(ROUTED))

    # --- the set-based steps ---------------------------------------------------------------------

    def _json(self, expr: ColumnElement[Any]) -> ColumnElement[Any]:
        return cast(expr, postgresql.JSONB) if self.postgres else expr

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self.postgres else sqlite.insert)(table)

    def free_tombstones(self) -> None:
        """X4: the deleted leads whose keys made rows take let them go, before the leads are inserted."""
        if "replaces" not in self._staged:
            return
        tombstones = select(STAGE.c.replaces).where(STAGE.c.made, STAGE.c.replaces.is_not(None))
        self.session.execute(
            update(Lead)
            .where(Lead.id.in_(tombstones))
            .values(unique_key=None)
            .execution_options(synchronize_session=False)
        )

    def insert_leads(self, shared: Shared, made: int) -> list[int]:
        """The ``made`` rows' leads, in one INSERT ... SELECT ... ON CONFLICT DO NOTHING on (account, unique
        key). Returns the lines whose lead was not made: a signup took the key since their chunk was read."""
        at = literal(shared.at, UTCDateTime())
        columns = [
            Lead.id,
            Lead.account_id,
            Lead.owner_entity_id,
            *(Lead.__table__.c[name] for name in _LEAD_COLUMNS),
            Lead.tags,
            Lead.source_kind,
            Lead.created_by_intake_id,
            Lead.status,
            Lead.email_unsubscribed,
            Lead.sms_unsubscribed,
            Lead.created_at,
            Lead.updated_at,
            Lead.last_activity_at,
        ]
        rows = select(
            STAGE.c.lead_id,
            literal(shared.account_id),
            literal(shared.owner_id),
            *(STAGE.c[name] for name in _LEAD_COLUMNS),
            self._json(STAGE.c.tags),
            literal(shared.source_kind),
            literal(shared.import_id, Uuid()),
            literal("active"),
            literal(False),
            literal(False),
            at,
            at,
            at,
        ).where(STAGE.c.made)
        stmt = self._insert(Lead).from_select(columns, rows)
        stmt = stmt.on_conflict_do_nothing(index_elements=["account_id", "unique_key"])
        result = self.session.execute(stmt.execution_options(preserve_rowcount=True))
        if result.rowcount == made:  # type: ignore[attr-defined]
            return []
        missing = ~exists().where(Lead.id == STAGE.c.lead_id)
        return [int(line) for line in self.session.execute(select(STAGE.c.line).where(STAGE.c.made, missing)).scalars()]

    def stale_joins(self) -> list[int]:
        """The joined rows whose lead is no longer live (merged or deleted since their chunk was read)."""
        live = exists().where(Lead.id == STAGE.c.lead_id, Lead.status.not_in([LeadStatus.MERGED, LeadStatus.DELETED]))
        return [int(line) for line in self.session.execute(select(STAGE.c.line).where(~STAGE.c.made, ~live)).scalars()]

    def insert_events(self, shared: Shared) -> None:
        """The rest of the timeline (the made leads' events are written already, with their chunks): one
        ``import`` event on each joined lead (the first row of the file that joined it), unless this same
        file already put any event there (importing a file again adds nothing), its row marked to move the
        lead's last activity (:meth:`touch_joined`)."""
        at = literal(shared.at, UTCDateTime())
        source = literal(shared.source_key, Uuid())
        account = literal(shared.account_id)
        made = STAGE.join(DATA, DATA.c.id == STAGE.c.data)
        if "joined" not in self._staged:
            return
        first = select(func.min(STAGE.c.line)).where(~STAGE.c.made).group_by(STAGE.c.lead_id)
        already = exists().where(TimelineEvent.lead_id == STAGE.c.lead_id, TimelineEvent.intake_id == source)
        marked = self.session.execute(
            update(STAGE).where(~STAGE.c.made, STAGE.c.line.in_(first), ~already).values(touch=True)
        )
        if not marked.rowcount:  # type: ignore[attr-defined]
            return
        self._staged.add("touch")
        self.session.execute(
            self._insert(TimelineEvent)
            .from_select(
                _EVENT_COLUMNS,
                select(account, STAGE.c.lead_id, at, STAGE.c.kind, STAGE.c.actor, STAGE.c.summary, DATA.c.data, source)
                .select_from(made)
                .where(STAGE.c.touch),
            )
            .on_conflict_do_nothing(index_elements=["lead_id", "intake_id", "kind"])
        )

    def start_campaigns(self, at: dt.datetime) -> None:
        """The campaigns the made leads' routing rules start."""
        if "campaign" not in self._staged:
            return
        rows = select(STAGE.c.lead_id, STAGE.c.campaign, literal(at, UTCDateTime())).where(
            STAGE.c.made, STAGE.c.campaign.is_not(None)
        )
        self.session.execute(
            self._insert(LeadCampaign)
            .from_select([LeadCampaign.lead_id, LeadCampaign.name, LeadCampaign.started_at], rows)
            .on_conflict_do_nothing()
        )

    def claim_kept_activity(self) -> list[tuple[uuid.UUID, ClaimedActivity]]:
        """D7: the kept anonymous activity of the made leads' people (under the owner each claim names, under
        any with none) joins those leads, in one UPDATE ... RETURNING; the rows claimed.

        First the account's kept activity is locked exclusively (PostgreSQL), until the import commits: an
        activity that is deciding right now to keep itself (it holds the lock shared, see
        ``LeadRepository.lock_kept_activity``) is waited for and then claimed here; one that comes after
        waits for the commit and then finds the import's lead. Taken at the very end, so live activity waits
        only for the import's last statements, and the import holds no lock per person."""
        if self.postgres:
            self.session.execute(select(func.pg_advisory_xact_lock(activity_lock_key(self.account_id))))
        stmt = (
            update(SiteActivity)
            .where(
                SiteActivity.account_id == self.account_id,
                SiteActivity.lead_id.is_(None),
                STAGE.c.made,
                SiteActivity.email_normalized == STAGE.c.claim_email,
                (STAGE.c.claim_owner.is_(None)) | (SiteActivity.owner_entity_id == STAGE.c.claim_owner),
            )
            .values(lead_id=STAGE.c.lead_id)
            .returning(SiteActivity.lead_id, *CLAIMED_COLUMNS)
            .execution_options(synchronize_session=False)
        )
        return [(row[0], ClaimedActivity(*row[1:])) for row in self.session.execute(stmt).all()]

    def touch_joined(self) -> None:
        """The joined leads an ``import`` event was written on: their last activity is at least the row's."""
        if "touch" not in self._staged:
            return
        at = STAGE.c.touched_at
        self.session.execute(
            update(Lead)
            .where(Lead.id == STAGE.c.lead_id, STAGE.c.touch, at.is_not(None))
            .values(
                last_activity_at=case((Lead.last_activity_at < at, at), else_=Lead.last_activity_at),
                updated_at=literal(dt.datetime.now(dt.UTC), UTCDateTime()),
            )
            .execution_options(synchronize_session=False)
        )

    # --- the import row ------------------------------------------------------------------------

    def save_rejections(self, rejections: Sequence[tuple[int, str]]) -> None:
        if rejections:
            self.session.execute(
                insert(ImportRejection),
                [{"import_id": self.import_id, "line": line, "reason": reason} for line, reason in rejections],
            )


@dataclass
class StageBatch:
    """A prepared plan's rows to write (in file order): new data values, staged rows, the first and last of
    their lines; whether any makes a lead, and any of those has a note."""

    shared: Shared
    data: list[tuple[int, str]]
    rows: list[tuple[Any, ...]]
    lines: tuple[int, int]
    made: bool
    notes: bool

    def written(self) -> StageBatch:
        """What :meth:`ImportStore.write_events` needs once the rows are written (not the rows)."""
        return replace(self, data=[], rows=[])


class _Along:
    """(lead id, value) pairs in the order of the rows of their leads: the value of each row's lead, if it has
    one, taken as the rows go by."""

    def __init__(self, pairs: Sequence[tuple[uuid.UUID, Any]]) -> None:
        self._pairs = pairs
        self._next = 0

    def get(self, lead_id: uuid.UUID) -> Any:
        if self._next < len(self._pairs):
            lead, value = self._pairs[self._next]
            if lead is lead_id or lead == lead_id:
                self._next += 1
                return value
        return None


def _of(item: Any, lead_id: uuid.UUID) -> Any:
    """``item`` (a new lead or an event of the plan), checked to be of the row's lead."""
    found = item.id if isinstance(item, NewLead) else item.lead_id
    if found is not lead_id and found != lead_id:
        raise ValueError(f"the plan's lists are not in its signups' order: {found} where {lead_id} was due")
    return item


@functools.lru_cache(maxsize=4096)
def _tags_json(tags: tuple[str, ...]) -> str:
    """Most rows of a file share their tags; encode each set once."""
    return _encode(list(tags))


__all__ = [
    "DATA",
    "KEYS",
    "ROUTED",
    "STAGE",
    "STAGE_ROW",
    "ImportStore",
    "Shared",
    "StageBatch",
    "Staged",
]
