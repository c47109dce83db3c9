"""CSV imports: a file streamed through the row rules and planned, chunk by chunk, by the one signup
planner (:mod:`rules.signups`), each row a signup owned by the import's owner; the plan staged, then
written set-wise, in one transaction, so an import is whole or not at all and a retry starts clean.

``leadrelay import`` runs it in-process with a progress bar; ``POST /v1/imports`` keeps the upload
in the database and the ``imports.run`` task runs the same function on the imports queue."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import gc
import hashlib
import io
import itertools
import secrets
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from models.imports import ImportStore, Shared, StageBatch, Staged
from models.repositories import Caller, set_at_once, to_ref
from models.tables import Import, ImportStatus
from models.uow import UnitOfWork
from rules.entities import EntityRef
from rules.events import LeadSignup
from rules.imports import FIELDS, ImportedBy, ImportRow, MappingError, RowParser, map_header, may_import, row_signup
from rules.ownership import Ownership, Unclaimed, decide_import_owner
from rules.routing import Rule
from rules.signups import (
    Facts,
    Needs,
    OrgView,
    SignupIn,
    SignupPlan,
    advance_routing,
    decide_owners,
    needs,
    plan_signups,
)
from rules.uniqueness import unique_key
from workers import webhooks
from workers.services import claimed_activity_events

log = structlog.get_logger(__name__)

Progress = Callable[[str, int, int | None], None]  # phase, done, total (None: unknown)

CHUNK_BYTES = 1 << 20
ROUTING_BATCH = 10_000
STAGE_CHUNK = 10_000  # first rows per plan: one read of their keys' leads, one COPY of the plan
SETTLE_TRIES = 3  # rounds of routing again while signups move the cursors; the last holds their lock
PROGRESS_EVERY = 20_000
LISTED_REJECTIONS = 10_000  # past this, rejections are counted but not each listed
_SOURCE_KEYS = uuid.UUID("6f1d1c1e-1e0b-4e53-9b39-5c7a1a6a0c11")


class ImportRefused(Exception):
    """A rule refuses the import (403, naming the rule)."""


class ImportInvalid(ValueError):
    """The request cannot be imported as given (422, naming the field)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass
class ImportSummary:
    import_id: uuid.UUID
    status: str
    rows: int = 0
    created: int = 0
    existing: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejections: list[tuple[int, str]] = field(default_factory=list)
    error: str | None = None
    ignored_columns: tuple[str, ...] = ()


def parse_map(pairs: Iterable[str]) -> dict[str, str]:
    """``--map 'Contact E=email'`` (repeatable): header -> field; ``'Fax='`` skips a column."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        header, sep, target = pair.partition("=")
        if not sep or not header.strip():
            raise ImportInvalid("map", f"{pair!r} is not 'Header=field'")
        target = target.strip()
        if target and target not in FIELDS:
            raise ImportInvalid("map", f"{target!r} is not a field; the fields are {', '.join(FIELDS)}")
        mapping[header.strip()] = target
    return mapping


def create_import(
    uow: UnitOfWork, *, caller: Caller, owner_slug: str, filename: str, mapping: dict[str, str]
) -> uuid.UUID:
    """The import row, once the caller may import for that owner (O1). The caller commits."""
    owner = uow.orgs.entity_by_slug(caller.account_id, owner_slug)
    if owner is None:
        raise ImportInvalid("owner", f"no entity {owner_slug!r} in this account")
    refusal = may_import(user=caller.slug, agent_id=caller.agent_id, admin_of=caller.admin_of, owner=to_ref(owner))
    if refusal is not None:
        raise ImportRefused(refusal)
    row = Import(
        account_id=caller.account_id,
        owner_entity_id=owner.id,
        by_user_id=caller.user_id,
        filename=filename[:255] or "import.csv",
        mapping=mapping,
        status=ImportStatus.QUEUED,
    )
    return uow.imports.add(row)


def store_upload(uow: UnitOfWork, import_id: uuid.UUID, chunks: Iterable[bytes]) -> int:
    """Keep an uploaded file in the database, piece by piece; its size."""
    size = 0
    for seq, data in enumerate(chunks):
        uow.imports.add_chunk(import_id, seq, data)
        size += len(data)
    return size


def check_header(first_bytes: bytes, mapping: dict[str, str]) -> None:
    """Refuse a file whose header cannot be imported before keeping it (422 naming ``file``)."""
    first_line = first_bytes.decode("utf-8-sig", errors="replace").splitlines()[:1]
    if not first_line or not first_line[0].strip():
        raise ImportInvalid("file", "empty: the first line must be the header")
    header = next(csv.reader(first_line, delimiter=_delimiter(first_line[0])))
    try:
        map_header(header, mapping)
    except MappingError as exc:
        raise ImportInvalid("file", str(exc)) from exc


def file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while data := f.read(CHUNK_BYTES):
            yield data


@contextlib.contextmanager
def spooled_upload(import_id: uuid.UUID) -> Iterator[str]:
    """An uploaded file, copied from the database to a temporary file before the import's transaction
    begins: the import then streams it without a second connection (PostgreSQL's is busy with COPY,
    and SQLite lets one transaction write at a time). The path; the file is removed afterwards."""
    with tempfile.NamedTemporaryFile(prefix="leadrelay-import-", suffix=".csv") as spool:
        with UnitOfWork() as uow:
            for data in uow.imports.chunks(import_id):
                spool.write(data)
        spool.flush()
        yield spool.name


def run_import(import_id: uuid.UUID, chunks: Iterable[bytes], *, progress: Progress | None = None) -> ImportSummary:
    """Import a stored import's file. A finished import is not run again (a redelivered task)."""
    report = progress or (lambda _phase, _done, _total: None)
    with UnitOfWork() as uow:
        uow.imports.lock_run(import_id)
        row = uow.imports.get(import_id)
        if row is None:
            raise ImportInvalid("import_id", "no such import")
        if row.status in (ImportStatus.DONE, ImportStatus.FAILED):
            return summary_of(uow, row)
        with _spooled(chunks) as (path, sha256), _no_cycle_collection():
            run = _Run(uow, row, report)
            try:
                summary = run.execute(path, sha256)
            except MappingError as exc:
                uow.rollback()
                return _fail(import_id, str(exc))
        uow.commit()
    log.info(
        "import.done",
        import_id=str(import_id),
        rows=summary.rows,
        created=summary.created,
        existing=summary.existing,
        duplicates=summary.duplicates,
        rejected=summary.rejected,
    )
    return summary


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Python's cycle collector off while the import runs: it makes millions of short-lived objects (rows,
    signups, plans), all freed by their reference counts, and the collector would walk the growing heap
    again and again for no garbage (a tenth of the import's time). On again afterwards, as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def _spooled(chunks: Iterable[bytes]) -> Iterator[tuple[str, str]]:
    """The file in a temporary file of its own, and its SHA-256, before it is read: the planner needs the
    file's key (:attr:`_Run.source_key`) from the first row on. The path and the digest; removed afterwards."""
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(prefix="leadrelay-import-", suffix=".csv") as spool:
        for data in chunks:
            digest.update(data)
            spool.write(data)
        spool.flush()
        yield spool.name, digest.hexdigest()


def _fail(import_id: uuid.UUID, error: str) -> ImportSummary:
    """An import that cannot succeed however often it is tried (its header, say) ends failed."""
    with UnitOfWork() as uow:
        uow.imports.set(
            import_id, status=ImportStatus.FAILED, error=error[:2000], phase=None, finished_at=dt.datetime.now(dt.UTC)
        )
        uow.imports.delete_chunks(import_id)
        row = uow.imports.get(import_id, fresh=True)
        assert row is not None
        summary = summary_of(uow, row)
        webhooks.record_import(uow, row.account_id, import_id, "failed", counts_of(summary), row.error)
        uow.commit()
        log.warning("import.failed", import_id=str(import_id), error=error)
        return summary


def mark_failed(import_id: uuid.UUID, error: str) -> None:
    """After its retries, an import that kept failing is failed, with the error."""
    _fail(import_id, error)


def summary_of(uow: UnitOfWork, row: Import, listed: int = 100) -> ImportSummary:
    return ImportSummary(
        import_id=row.id,
        status=row.status.value,
        rows=row.rows_read,
        created=row.created,
        existing=row.existing,
        duplicates=row.duplicates,
        rejected=row.rejected,
        rejections=uow.imports.rejections(row.id, listed),
        error=row.error,
    )


def counts_of(summary: ImportSummary) -> dict[str, int]:
    """What an import made of its rows, as its ``import.finished`` event says it."""
    return {
        "rows": summary.rows,
        "created": summary.created,
        "existing": summary.existing,
        "duplicates": summary.duplicates,
        "rejected": summary.rejected,
    }


class _ProgressRow:
    """Progress written to the import row on a connection of its own, so ``GET /v1/imports/{id}``
    sees it while the import's transaction is still open (PostgreSQL only: SQLite has one writer)."""

    def __init__(self, import_id: uuid.UUID, enabled: bool) -> None:
        self.import_id = import_id
        self.enabled = enabled

    def __call__(self, **values: Any) -> None:
        if not self.enabled:
            return
        set_at_once(self.import_id, **values)


class ImportRaced(RuntimeError):
    """Rows whose facts moved while the import ran (a lead they were to join was deleted since) would,
    planned again, make leads once the routing was settled: the import fails whole, and its retry plans
    them from the start."""


def lead_ids() -> Callable[[], uuid.UUID]:
    """New lead ids for one import, increasing in file order (the UUID version 7 layout: the import's start
    in milliseconds, then random bits, the last 32 a counter). A lead's index entries, and its events', then
    land next to the previous lead's rather than all over the indexes. Distinct from every random (version
    4) id by their version, and from another import's by their time and random bits."""
    millis = int(dt.datetime.now(dt.UTC).timestamp() * 1000) & ((1 << 48) - 1)
    rand_a = secrets.randbits(12)
    rand_b = secrets.randbits(30)
    base = (millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | (rand_b << 32)
    counter = itertools.count()
    return lambda: uuid.UUID(int=base | next(counter))


class _Run:
    def __init__(self, uow: UnitOfWork, row: Import, report: Progress) -> None:
        self.uow = uow
        self.import_id = row.id
        self.account_id = row.account_id
        self.filename = row.filename
        self.mapping = dict(row.mapping)
        self.owner: EntityRef = uow.orgs.entity_ref(row.owner_entity_id)
        self.actor = uow.imports.user_slug(row.by_user_id) or "import"
        self.duplication = uow.orgs.account(row.account_id).duplication
        self.ownership: Ownership = decide_import_owner(self.owner, self.filename)
        self.by = ImportedBy(row.id, self.filename, self.actor)
        # Imports do not mail per lead (an import can make 100,000): with no contacts the planner plans no mail.
        self.org = OrgView(row.account_id, self.duplication, domains={}, connections={}, contacts={})
        self.report = report
        self.at = dt.datetime.now(dt.UTC)
        self.new_id = lead_ids()
        self.progress_row = _ProgressRow(row.id, uow.imports.postgres)
        self.store = ImportStore(uow.session, account_id=row.account_id, import_id=row.id)
        self.progress_row(status=ImportStatus.RUNNING, phase="reading", started_at=self.at, rows_read=0)

    def execute(self, path: str, sha256: str) -> ImportSummary:
        store = self.store
        store.create_staging()
        store.defer_lead_checks()
        # The timeline's intake id of this file's events: the same file for the same owner gives the same
        # key, so importing it again adds no event, and a lead it made that was deleted since is not made
        # again (X4: the planner tells that replay from a new signup by this key).
        self.source_key = uuid.uuid5(_SOURCE_KEYS, f"{self.account_id}:{self.owner.id}:{sha256}")
        entity = self.ownership.routing_entity
        # Round robin is planned from the cursors as they are now, unlocked, and settled at the end.
        self.routed_from: dict[int, tuple[list[Rule], Rule]] = (
            {entity.id: self.uow.orgs.routing_rules(entity, lock=False)} if entity is not None else {}
        )
        self.routing = dict(self.routed_from)
        self.shared = shared = Shared(
            self.account_id, self.owner.id, self.import_id, self.source_key, "import", self.at
        )
        read = self._read(path)
        self._phase("saving")
        self._settle_routing(read.made)
        store.free_tombstones()
        raced = store.insert_leads(shared, read.made)
        stale = store.stale_joins() if read.joined else []
        if raced or stale:
            log.info("import.planned_again", import_id=str(self.import_id), rows=len(raced) + len(stale))
            store.drop_events(raced, self.source_key)  # written with their chunks, for leads not made
            read.made -= len(raced)
            read.joined -= len(stale)
            self._plan_again(sorted([*raced, *stale]), read)
        made, joined = read.made, read.joined
        self._phase("timeline")
        store.insert_events(shared)
        store.start_campaigns(self.at)
        rejections = sorted(read.rejections)
        store.save_rejections(rejections)
        summary = ImportSummary(
            import_id=self.import_id,
            status=ImportStatus.DONE.value,
            rows=read.rows,
            created=made,
            existing=joined,
            duplicates=read.duplicates,
            rejected=read.rejected,
            rejections=rejections[:100],
            ignored_columns=read.ignored,
        )
        self.uow.imports.set(
            self.import_id,
            status=ImportStatus.DONE,
            phase=None,
            file_sha256=sha256,
            rows_read=read.rows,
            created=made,
            existing=joined,
            duplicates=read.duplicates,
            rejected=read.rejected,
            started_at=self.at,
            finished_at=dt.datetime.now(dt.UTC),
            error=None,
        )
        self.uow.imports.delete_chunks(self.import_id)
        webhooks.record_import(self.uow, self.account_id, self.import_id, "done", counts_of(summary), None)
        # Last, the statements that hold the account's kept activity until the commit: live activity waits
        # only for these (the claim, its events, the last activity of the leads claimed and joined).
        claimed = store.claim_kept_activity()
        if claimed:
            # D7: the kept activity each new lead claimed joins its timeline, each at its own time.
            self.uow.signups.add_events(self.account_id, claimed_activity_events(self.account_id, claimed))
            latest: dict[uuid.UUID, dt.datetime] = {}
            for lead_id, activity in claimed:
                latest[lead_id] = max(activity.at, latest.get(lead_id, activity.at))
            self.uow.signups.touch(latest)
        store.touch_joined()
        store.drop_staging()
        self.report("done", read.rows, read.rows)
        return summary

    def _phase(self, phase: str, done: int = 0, total: int | None = None) -> None:
        self.report(phase, done, total)
        self.progress_row(phase=phase)

    # --- reading and planning ------------------------------------------------------------------

    def _read(self, path: str) -> _Read:
        """Stream the file through the row rules and plan it :data:`STAGE_CHUNK` first rows at a time: the
        first row of each unique key (later ones are duplicates inside the file) is a signup for the planner,
        which makes, joins or refuses its lead and routes it, from the facts of that chunk's keys."""
        with open(path, "rb") as raw:
            counted = _CountingReader(raw)
            text_stream = io.TextIOWrapper(
                io.BufferedReader(counted, CHUNK_BYTES), encoding="utf-8-sig", errors="replace", newline=""
            )
            first = text_stream.readline()
            if not first.strip():
                raise MappingError("the file is empty: the first line must be the header")
            delimiter = _delimiter(first)
            header = next(csv.reader([first], delimiter=delimiter))
            columns = map_header(header, self.mapping)
            parser = RowParser(columns, len(header))
            read = _Read(ignored=columns.ignored)
            rejections = read.rejections
            owner_id, duplication = self.owner.id, self.duplication
            # The first row of each unique key in this chunk, in file order; the staging table knows the
            # keys of the chunks before (a million rows would hold ~100 MB of keys here).
            chunk: dict[str, tuple[int, ImportRow]] = {}
            csv_rows = csv.reader(text_stream, delimiter=delimiter)
            line = 2  # the header was line 1
            rows = 0
            with self._chunks(read) as plan_chunk:
                for cells in csv_rows:
                    start, line = line, csv_rows.line_num + 2
                    if not cells or (len(cells) == 1 and not cells[0].strip()):
                        continue
                    rows += 1
                    parsed = parser.parse(cells)
                    if isinstance(parsed, str):
                        read.rejected += 1
                        if len(rejections) < LISTED_REJECTIONS:
                            rejections.append((start, parsed))
                    else:
                        key = unique_key(
                            duplication=duplication,
                            owner_id=owner_id,
                            email_normalized=parsed.email_normalized,
                            phone_e164=parsed.phone,
                        )
                        assert key is not None, "a parsed row has an email or a phone"
                        if key in chunk:
                            read.duplicates += 1
                        else:
                            chunk[key] = (start, parsed)
                            if len(chunk) >= STAGE_CHUNK:
                                plan_chunk(chunk)
                                chunk = {}
                    if rows % PROGRESS_EVERY == 0:
                        self.report("reading", counted.bytes_read, None)
                        self.progress_row(rows_read=rows)
                plan_chunk(chunk)
        read.rows = rows
        self.progress_row(rows_read=rows)
        return read

    @contextlib.contextmanager
    def _chunks(self, read: _Read) -> Iterator[Callable[[dict[str, tuple[int, ImportRow]]], None]]:
        """``plan_chunk(chunk)`` for each chunk of first rows (key -> line, row), in file order: a key an
        earlier chunk had makes a duplicate; the others are planned in file order and the plan staged.

        On PostgreSQL a thread of the import's own works its connection while this thread parses the file
        and plans a chunk, so the database and the planner work at once: the next chunk's reads (which of
        its keys are new to the file, the facts of its keys) and the chunk before's events (statements
        from its staged rows, no Python per row). The connection is used by one thread at a time: this
        thread stages a chunk's rows once everything queued on that thread has run (a failure there is
        raised here), and nothing is left running when this ends, however it ends."""
        if not self.store.postgres:

            def write_now(batch: StageBatch) -> None:
                self.store.write_rows(batch)
                self.store.write_events(batch)

            def in_turn(chunk: dict[str, tuple[int, ImportRow]]) -> None:
                if chunk:
                    asked = self._ask(chunk)
                    self._decide_and_stage(asked, self._reads(asked), read, write_now)

            yield in_turn
            return
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-db")
        ahead: list[tuple[_Asked, Future[_Found]]] = []
        queued: list[Future[Any]] = []  # run in this order

        def idle() -> None:
            """Once everything queued has run (raising what failed), the connection is this thread's."""
            for job in queued:
                job.result()
            queued.clear()

        def write(batch: StageBatch) -> None:
            idle()
            self.store.write_rows(batch)
            queued.append(worker.submit(self.store.write_events, batch.written()))

        def plan_chunk(chunk: dict[str, tuple[int, ImportRow]]) -> None:
            if not chunk:
                return
            asked = self._ask(chunk)
            found = worker.submit(self._reads, asked)
            queued.append(found)
            if ahead:
                before, before_found = ahead.pop()
                self._decide_and_stage(before, before_found.result(), read, write)
            ahead.append((asked, found))

        try:
            yield plan_chunk
            if ahead:
                before, before_found = ahead.pop()
                self._decide_and_stage(before, before_found.result(), read, write)
            idle()
        finally:
            worker.shutdown(wait=True)

    def _ask(self, chunk: dict[str, tuple[int, ImportRow]]) -> _Asked:
        """A chunk's rows as the planner takes them: signups owned as the import decides (O1), and what
        their plan needs read."""
        keys = list(chunk)
        rows = list(chunk.values())
        return self._asked(
            [line for line, _ in rows],
            [row_signup(row, self.filename) for _, row in rows],
            [row.notes for _, row in rows],
            keys,
        )

    def _asked(
        self, lines: list[int], signups: list[LeadSignup], notes: list[str | None], keys: list[str] | None
    ) -> _Asked:
        items = [SignupIn(self.source_key, signup, self.at, ownership=self.ownership) for signup in signups]
        owners = decide_owners(self.org, items)
        return _Asked(lines, signups, notes, items, owners, needs(self.org, items, owners), keys)

    def _reads(self, asked: _Asked) -> _Found:
        """What a chunk's plan reads: which of its keys the file has not had before (now had; ``None``: all
        of them), and the facts of its keys, read without locks (the routing is given when it is planned)."""
        first = self.store.first_keys(asked.keys) if asked.keys is not None else None
        return _Found(first, self.uow.signups.read_facts(self.account_id, asked.needs, {}, [self.source_key]))

    def _decide_and_stage(self, asked: _Asked, found: _Found, read: _Read, write: Callable[[StageBatch], None]) -> None:
        """Plan the chunk's rows new to the file, and have ``write`` stage the plan's rows."""
        if found.first is not None and asked.keys is not None and len(found.first) < len(asked.keys):
            read.duplicates += len(asked.keys) - len(found.first)
            asked = asked.only([key in found.first for key in asked.keys])
        plan = self._decide(asked, found.facts)
        staged, batch = self.store.prepare_plan(plan, asked.lines, asked.signups, asked.notes, self.by, self.shared)
        write(batch)
        read.count(staged)

    def _decide(self, asked: _Asked, facts: Facts) -> SignupPlan:
        """The signup planner's plan of the rows asked about, from their facts and the round robin as the
        rows before them left it (which it then carries on)."""
        facts = replace(facts, routing=self.routing)
        plan = plan_signups(self.org, asked.items, asked.owners, facts, new_id=self.new_id)
        self.routing = advance_routing(self.routing, plan.cursors)
        return plan

    def _plan_again(self, lines: Sequence[int], read: _Read) -> None:
        """The rows ``lines`` planned again from the facts as they are now: rows whose key a signup took
        since their chunk was read (their lead was not made) and rows whose joined lead was merged or
        deleted meanwhile. They now join a lead (or are refused): their routing turns are not given back,
        as the cursors were settled already."""
        staged = self.store.staged_signups(lines=lines)
        asked = self._asked([line for line, _ in staged], [signup for _, signup in staged], [None] * len(staged), None)
        plan = self._decide(asked, self._reads(asked).facts)
        if plan.leads:
            raise ImportRaced(f"{len(plan.leads)} rows would make leads once their routing was settled")
        self.store.unstage(lines)
        read.count(self.store.stage_plan(plan, asked.lines, asked.signups, asked.notes, self.by, self.shared))

    # --- routing -------------------------------------------------------------------------------

    def _settle_routing(self, made: int) -> None:
        """A1/A2, made final before any lead is written. The file's new leads were routed by the planner as
        it was read, in file order, from the cursors as they stood when the import began (read, not locked:
        signups to the same entity went on meanwhile). Here the cursors are locked in a short transaction
        of their own (PostgreSQL; its entity row first, then its rules, as a signup locks them) and:

        - if nothing moved them (nor changed the rules) since, they move on to where the import's leads
          leave them: by the turns those leads took, exactly as routing them one by one would;
        - if a signup was routed by the same entity meanwhile, the import's new leads are routed again by
          the planner from the cursors as they are now, in file order, outside the lock, and checked
          again; so the outcome is always that of routing the import's leads one by one, in file order,
          after every signup whose routing committed first. After :data:`SETTLE_TRIES` rounds of signups
          moving them again, the last round routes again under the lock (signups of that entity wait for it).

        The import never holds a cursor lock while it writes leads (nor longer than this), so signups do
        not wait for it. If the import then rolls back, the cursors have moved on: its leads' turns are
        skipped once, and the next leads start one round later (no agent is skipped twice in a row). A row
        whose key a signup took after it was routed keeps its turn taken. An agent owner is the assignee;
        nothing is routed."""
        entity = self.ownership.routing_entity
        if entity is None or made == 0:
            return
        routed_from = self.routed_from[entity.id]
        for attempt in range(1, SETTLE_TRIES + 1):
            with contextlib.ExitStack() as stack:
                cursors_uow = stack.enter_context(UnitOfWork()) if self.store.postgres else self.uow
                locked = cursors_uow.orgs.routing_rules(entity, lock=True)
                if _rules(locked) != _rules(routed_from) and attempt == SETTLE_TRIES:
                    self._route_again(entity.id, locked, made)  # the last round: under the lock
                    routed_from = locked
                if _rules(locked) == _rules(routed_from):
                    cursors_uow.orgs.move_cursors(entity.id, _rules(locked), _rules(self.routing[entity.id]))
                    if cursors_uow is not self.uow:
                        cursors_uow.commit()
                    return
            # Signups moved the cursors (or the rules changed): route again from them, unlocked, and check.
            self._route_again(entity.id, locked, made)
            routed_from = locked

    def _route_again(self, entity_id: int, start: tuple[list[Rule], Rule], total: int) -> None:
        """The made rows' routing planned again from ``start``, in file order, by the planner (each row as
        the new lead it makes; only its routing is taken: assignee, pond, campaign, ``routed`` event)."""
        log.info("import.rerouted", import_id=str(self.import_id), reason="cursors moved while reading")
        self.routing = {entity_id: start}
        after_line, done = 0, 0
        while batch := self.store.staged_signups(made_after=after_line, limit=ROUTING_BATCH):
            items = [SignupIn(self.source_key, signup, self.at, ownership=self.ownership) for _, signup in batch]
            owners = decide_owners(self.org, items)
            plan = plan_signups(self.org, items, owners, Facts({}, {}, self.routing), new_id=self.new_id)
            self.routing = advance_routing(self.routing, plan.cursors)
            self.store.stage_routing(plan, [line for line, _ in batch])
            after_line = batch[-1][0]
            done += len(batch)
            self.report("routing", done, total)
        self.store.apply_routing(self.source_key)


@dataclass(frozen=True)
class _Asked:
    """Rows to plan (their lines, signups and notes, their unique keys if they are a chunk's) as the
    planner takes them, and what their plan needs read."""

    lines: list[int]
    signups: list[LeadSignup]
    notes: list[str | None]
    items: list[SignupIn]
    owners: list[Ownership | Unclaimed]
    needs: Needs
    keys: list[str] | None

    def only(self, kept: list[bool]) -> _Asked:
        """The rows ``kept`` says (in order)."""

        def pick(values: list[Any]) -> list[Any]:
            return [value for value, keep in zip(values, kept, strict=True) if keep]

        keys = pick(self.keys) if self.keys is not None else None
        return _Asked(
            pick(self.lines),
            pick(self.signups),
            pick(self.notes),
            pick(self.items),
            pick(self.owners),
            self.needs,
            keys,
        )


@dataclass(frozen=True)
class _Found:
    """What a chunk's plan read: the keys new to the file (None: not asked), the facts of its keys."""

    first: set[str] | None
    facts: Facts


def _rules(routing: tuple[Sequence[Rule], Rule]) -> list[Rule]:
    """An entity's rules and its default rule, as one list (what the cursors are compared and moved by)."""
    rules, default = routing
    return [*rules, default]


@dataclass
class _Read:
    """What reading the file found."""

    ignored: tuple[str, ...]
    rows: int = 0
    rejected: int = 0  # rows refused: by the row rules, or by the planner (X4)
    rejections: list[tuple[int, str]] = field(default_factory=list)  # the first (line, reason) of those
    duplicates: int = 0

    made: int = 0  # first rows that make a lead
    joined: int = 0  # first rows that join one

    def count(self, staged: Staged) -> None:
        """A staged plan's rows: made, joined, or refused (listed while the list is short)."""
        self.made += staged.made
        self.joined += staged.joined
        self.rejected += len(staged.rejections)
        self.rejections += staged.rejections[: max(0, LISTED_REJECTIONS - len(self.rejections))]


def _delimiter(header_line: str) -> str:
    """Comma, unless the header plainly uses semicolons, tabs or pipes (spreadsheet exports do)."""
    counts = {d: header_line.count(d) for d in ",;\t|"}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


class _CountingReader(io.RawIOBase):
    """A file's bytes, counted as they are read (the progress of reading it)."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        n = int(self._raw.readinto(target))
        self.bytes_read += n
        return n


__all__ = [
    "ImportInvalid",
    "ImportRefused",
    "ImportSummary",
    "check_header",
    "create_import",
    "file_chunks",
    "mark_failed",
    "parse_map",
    "run_import",
    "spooled_upload",
    "store_upload",
]
