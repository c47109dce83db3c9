"""Scenario 4: reply routing. Inbound texts per second with ``messages`` stored texts, end to end (Twilio's
signed webhook accepted, the worker routed the reply to the lead and agent that texted that phone last,
S1, and committed), against a baseline that stores the same signed webhook as the same intake row and
does nothing else (``POST /v1/bench/sms-store``, ``bench.app``).

The database holds ``messages`` texts before the load: ``messages / 10`` lead phones, ten texts each
(five outbound, each answered by an inbound one, an hour apart), every other phone shared by two leads
of two owners (duplicates, D1) that were texted in turn by their agents, so S1 has to pick the duplicate
whose agent texted last; each inbound text has the intake it came from. The load's texts come from
those phones, so the reply-routing query meets every stored row.

Rates are sustained rates (``bench.registrations.sustained``): what finishes per second once settled,
counted from the database, when offered at least what it takes; the pipeline's are the best of up to
three attempts in the time budget (``pipeline_rate`` says why). The pipeline's texts are over at
``intakes.processed_at`` (set in the worker's transaction), the baseline's at ``intakes.created_at`` (set
in the API's), both just before the commit. The whole scenario keeps to ``BUDGET_SECONDS``.

    PYTHONPATH=. python -m bench.replies [--messages N] [--profile] [--folder DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import itertools
import json
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import create_engine, text
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

from bench.load import Request, run_load
from bench.registrations import FINAL, LATENCY_SECONDS, PROFILE_SECONDS, Profiler, drain, latency, sustained
from bench.registrations import meter as registrations_meter
from bench.stack import CpuMeter, Stack

SUFFIX = "replies"
ACCOUNT = f"acct-{SUFFIX}"
PER_PHONE = 10  # texts per lead phone: outbound and inbound in turn, the last outbound at PER_PHONE - 2
PHONE0 = 2_000_000  # phone j is +1555 and 2,000,000 + j: a possible (fictional) US number
STRIDE = 7919  # the i-th text of a run comes from phone (offset + i * STRIDE) % phones: spread, few repeats
SITES = ("co", "downtown", "john", "sunrise")  # the owner of lead (j, d) is SITES[(j + d) % 4], as bench.preload
NUMBERS = {"co": "+15550100001", "downtown": "+15550100002", "john": "+15550100003"}  # smart numbers
TOKEN_ENV = "LEADRELAY_BENCH_TWILIO_TOKEN"  # noqa: S105 - the name of the variable that holds it
TOKEN = "bench-twilio-auth-token"  # noqa: S105 - the run's own account, in its own database
PUBLIC_BASE = "https://sms.bench.test"  # LEADRELAY_PUBLIC_BASE_URL: what Twilio signs
INBOUND, STORE = "/v1/intake/sms/twilio", "/v1/bench/sms-store"
REQUESTS = {"pipeline": "bench.replies:inbound", "baseline": "bench.replies:inbound_store"}
BUDGET_SECONDS = 150.0  # make bench runs five scenarios in 15 minutes: this one's share
# The baseline's offered rate: its bottleneck is the API (one process, about one core, whatever the offered
# rate: 152, 163 and 155/s offered 150, 300 and 1000/s), so locust's users wait on it and send about what
# it takes plus the requests in flight (users = rate / 2, over SECONDS): 1000/s is taken by ``sustained``
# (sent 1.1 to 1.6 times what was finished) for a baseline between about 60 and 350/s, in one attempt.
BASELINE_GUESS = 1000.0
# The pipeline's first offered rate, as a share of the baseline's: its knee was 0.22 to 0.37 of it, as
# busy as the other users of the machine left it (29/s finished offered 40/s and 22/s offered 60/s in
# one run, 52/s offered 54/s in another). What it is offered beyond what it finishes is a backlog to
# drain after each attempt.
PIPELINE_GUESS = 0.3
ATTEMPT_SECONDS = 25.0  # one attempt of a sustained rate: 14 s of load, locust's stop and the drain


# --- The account ----------------------------------------------------------------------------------


def org() -> dict[str, Any]:
    """The test brokerage (``tests.support.orgs.brokerage``) with smart numbers and Twilio's token."""
    from tests.support.orgs import brokerage

    spec = brokerage(suffix=SUFFIX)
    for entity in spec["entities"]:
        if entity["id"] in NUMBERS:
            entity["smart_numbers"] = [NUMBERS[entity["id"]]]
    spec["sms"] = {"provider": "twilio", "account_sid": "ACbench", "auth_tokens_env": [TOKEN_ENV]}
    return spec


def apply_org() -> int:
    """The account in the run's database (the stack's settings); its id."""
    from models.org import apply_org as apply
    from models.orgspec import parse_org
    from models.uow import UnitOfWork

    with UnitOfWork() as uow:
        apply(uow.session, parse_org(org()))
        uow.commit()
        account = uow.orgs.account_by_slug(ACCOUNT)
        assert account is not None
        return int(account.id)


def phone(j: int) -> str:
    return f"+1555{PHONE0 + j}"


def last_lead(j: int) -> int:
    """Which lead of phone j (0, or 1 the duplicate made an hour later) got the last outbound text."""
    return (j // 2) % 2 if j % 2 == 0 else 0


def number_of(j: int) -> str:
    """The smart number the last outbound text to phone j went out from: its lead's owner's, else the company's."""
    return NUMBERS.get(SITES[(j + last_lead(j)) % 4], NUMBERS["co"])


# --- The preload ----------------------------------------------------------------------------------

# Lead (j, d) of phone j, d = 1 the duplicate. The ids of preloaded rows are counters in uuid form ('1'...
# leads, '2'... texts, '3'... intakes), not uuid4: each batch appends to every index instead of writing
# pages all over it (1,000,000 texts in 26 s instead of 58 s on one connection here); the load's own rows
# get the product's uuid4.
LEADS = """
WITH e AS (SELECT slug, id FROM entities WHERE account_id = %(account)s)
INSERT INTO leads (
    id, account_id, owner_entity_id, assigned_agent_id, routed_via_entity_id, unique_key, status, in_pond,
    email, email_normalized, phone_e164, first_name, last_name, tags, source_kind, source_detail,
    email_unsubscribed, sms_unsubscribed, created_at, updated_at, last_activity_at
)
SELECT CAST('1' || lpad(to_hex(2 * j + d), 31, '0') AS uuid), %(account)s, o.id, agent.id, CASE WHEN (j + d) %% 4 < 2 THEN o.id END,
       'e:' || o.id || ':sms' || j || '@example.com', 'active', false,
       'sms' || j || '@example.com', 'sms' || j || '@example.com', '+1555' || (%(phone0)s + j), 'Sms', 'Lead' || j,
       '["bench"]', 'site', 'bench.replies', false, false, t.created, t.created, t.last
FROM generate_series(%(start)s, %(stop)s - 1) AS j
CROSS JOIN generate_series(0, 1) AS d
CROSS JOIN LATERAL (
    SELECT %(t0)s + j * %(step)s - interval '1 day' + d * interval '1 hour' AS created,
           %(t0)s + j * %(step)s + (%(per_phone)s - 1) * interval '1 hour' AS last
) AS t
JOIN e AS o ON o.slug = (ARRAY['co', 'downtown', 'john', 'sunrise'])[(j + d) %% 4 + 1]
JOIN e AS agent ON agent.slug = CASE (j + d) %% 4 WHEN 2 THEN 'john' WHEN 3 THEN 'tara'
                                 ELSE (ARRAY['john', 'jill', 'bob'])[(j + d) %% 3 + 1] END
-- Every other phone is shared by two leads of two owners (D1): the duplicate d = 1.
WHERE d = 0 OR j %% 2 = 0
ORDER BY j, d
"""

# Text t of phone j: outbound when t is even, from the lead's assignee (the agent it counts for, S1) in the
# owner's name from the owner's smart number (SH4), then the lead's answer, with the intake that kept it.
# A shared phone's outbound texts go to its two leads in turn; the last one to lead last_lead(j).
MESSAGES = """
WITH e AS (
    SELECT e.slug, e.id, e.name, COALESCE(sn.e164, %(co_number)s) AS number, u.id AS user_id
    FROM entities e
    LEFT JOIN smart_numbers sn ON sn.entity_id = e.id
    LEFT JOIN users u ON u.agent_id = e.id
    WHERE e.account_id = %(account)s
),
new AS (
    INSERT INTO messages (
        id, account_id, lead_id, direction, lead_phone, smart_number, body, agent_id, sent_by_user_id,
        provider_sid, status, sent_as, intake_id, attempts, created_at, updated_at, relays
    )
    SELECT CAST('2' || lpad(to_hex(%(per_phone)s * j + t), 31, '0') AS uuid), %(account)s,
           CAST('1' || lpad(to_hex(2 * j + x.d), 31, '0') AS uuid),
           CASE WHEN t %% 2 = 0 THEN 'outbound' ELSE 'inbound' END, '+1555' || (%(phone0)s + j), o.number,
           CASE WHEN t %% 2 = 0 THEN 'Hi, 12 Oak St just listed: https://listings.test/' || j || '/' || t
                ELSE 'Thanks! Is it still available? Can we see it Saturday?' END,
           agent.id, CASE WHEN t %% 2 = 0 THEN agent.user_id END, 'SM' || lpad(to_hex(%(per_phone)s * j + t), 32, '0'),
           CASE WHEN t %% 2 = 0 THEN 'delivered' ELSE 'received' END, CASE WHEN t %% 2 = 0 THEN o.name END,
           CASE WHEN t %% 2 = 1 THEN CAST('3' || lpad(to_hex(%(per_phone)s * j + t), 31, '0') AS uuid) END,
           (t + 1) %% 2, x.at, x.at, 0
    FROM generate_series(%(start)s, %(stop)s - 1) AS j
    CROSS JOIN generate_series(0, %(per_phone)s - 1) AS t
    -- The lead (j, d) as LEADS made it: its owner and its assignee, computed, not looked up.
    CROSS JOIN LATERAL (
        SELECT CASE WHEN j %% 2 = 0 THEN (t / 2 + j / 2) %% 2 ELSE 0 END AS d,
               %(t0)s + j * %(step)s + t * interval '1 hour' AS at
    ) AS x
    JOIN e AS o ON o.slug = (ARRAY['co', 'downtown', 'john', 'sunrise'])[(j + x.d) %% 4 + 1]
    JOIN e AS agent ON agent.slug = CASE (j + x.d) %% 4 WHEN 2 THEN 'john' WHEN 3 THEN 'tara'
                                     ELSE (ARRAY['john', 'jill', 'bob'])[(j + x.d) %% 3 + 1] END
    -- In the order of the reply-routing index: each batch walks it once.
    ORDER BY j, t %% 2, t
    RETURNING id, account_id, lead_id, direction, lead_phone, smart_number, body, provider_sid, intake_id, created_at
)
INSERT INTO intakes (
    id, account_id, source, idempotency_key, content_type, raw_body, payload, status, lead_id, attempts,
    created_at, updated_at, processed_at, relays
)
SELECT intake_id, account_id, 'sms', provider_sid, 'application/x-www-form-urlencoded',
       'MessageSid=' || provider_sid || '&AccountSid=ACbench&From=%%2B' || substr(lead_phone, 2)
       || '&To=%%2B' || substr(smart_number, 2) || '&Body=' || replace(body, ' ', '+') || '&NumMedia=0',
       jsonb_build_object('message_sid', provider_sid, 'to', smart_number, 'from_raw', lead_phone,
                          'from_e164', lead_phone, 'body', body, 'account_sid', 'ACbench', 'num_media', 0,
                          'media_urls', '[]'::jsonb),
       'done', lead_id, 1, created_at, created_at, created_at, 0
FROM new WHERE direction = 'inbound'
"""


def preload_messages(
    dsn: str, account: int, phones: int, *, per_phone: int = PER_PHONE, connections: int = 2
) -> dict[str, Any]:
    """``phones * per_phone`` texts with their leads (one or two a phone) and the intakes of the inbound
    ones, set-wise in batches on ``connections`` connections at once (each a range of phones: one
    backend is CPU-bound on one core), then VACUUM ANALYZE: the rows' counts and the seconds it took."""
    began = time.perf_counter()
    batch = max(1, 100_000 // per_phone)
    # The texts end an hour or more ago, spread over 30 days: everything the load sends is later.
    t0 = dt.datetime.now(dt.UTC) - dt.timedelta(days=31)
    step = dt.timedelta(days=30) / max(phones, 1)
    common = {
        "account": account,
        "phone0": PHONE0,
        "per_phone": per_phone,
        "t0": t0,
        "step": step,
        "co_number": NUMBERS["co"],
    }

    def load(low: int, high: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            # Bench rows only: a crash loses the preload, never a lead.
            conn.execute("SET synchronous_commit = off")
            # The rows refer to the account's own entities, leads and users by construction: skip the
            # per-row foreign-key triggers that would make the preload, not the scenario, the long part.
            conn.execute("SET session_replication_role = replica")
            conn.execute("SET work_mem = '64MB'")  # each batch's sort in memory
            for statement in (LEADS, MESSAGES):
                for start in range(low, high, batch):
                    conn.execute(statement, {**common, "start": start, "stop": min(start + batch, high)})

    share = -(-phones // connections)
    with ThreadPoolExecutor(connections) as pool:
        for done in [pool.submit(load, low, min(low + share, phones)) for low in range(0, phones, share)]:
            done.result()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in ("leads", "messages", "intakes"):
            conn.execute(f"VACUUM ANALYZE {table}")
        counts = {}
        for table in ("leads", "messages", "intakes"):
            row = conn.execute(f"SELECT count(*) FROM {table} WHERE account_id = %s", (account,)).fetchone()
            counts[table] = int(row[0]) if row else 0
    return {"seconds": time.perf_counter() - began, "phones": phones, **counts}


# --- The S1 query's plan --------------------------------------------------------------------------


def explain_s1(account: int, lead_phone: str) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the reply-routing query (``texts.reply_facts``) exactly as the worker
    sends it, for one preloaded phone: the plan's nodes, the index it walks, its time."""
    from sqlalchemy import event

    from models.uow import UnitOfWork

    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if "row_number" in statement:
            captured.append((statement, parameters))

    with UnitOfWork() as uow:
        engine = uow.session.get_bind()
        event.listen(engine, "before_cursor_execute", capture)
        try:
            found = uow.texts.reply_facts(account, lead_phone).last_texts
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        [(statement, parameters)] = captured
        connection = uow.session.connection()
        plan = connection.exec_driver_sql(
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", parameters
        ).scalar_one()
        text_plan = [
            row[0] for row in connection.exec_driver_sql(f"EXPLAIN (ANALYZE, COSTS OFF) {statement}", parameters)
        ]
    nodes: list[dict[str, Any]] = []

    def walk(node: Mapping[str, Any]) -> None:
        nodes.append({k: node[k] for k in ("Node Type", "Relation Name", "Index Name") if k in node})
        for child in node.get("Plans", ()):
            walk(child)

    top = plan[0] if isinstance(plan, list) else json.loads(plan)[0]
    walk(top["Plan"])
    scans = [n for n in nodes if n.get("Relation Name") == "messages"]
    return {
        "phone": lead_phone,
        "leads_found": len(found),
        "messages_scan": scans[0]["Node Type"] if scans else None,
        "index": scans[0].get("Index Name") if scans else None,
        "seq_scan": any(n["Node Type"] == "Seq Scan" for n in nodes),
        "nodes": nodes,
        "execution_ms": top.get("Execution Time"),
        "plan": text_plan,
    }


def statements_per_text(account: int, phones: int, n: int = 40) -> dict[str, Any]:
    """A diagnostic, not a rate: the SQL statements one inbound text costs the worker, counted with
    SQLAlchemy's ``before_cursor_execute`` over ``n`` texts from preloaded phones processed in this
    process by the task's own code (``intakes.process_intake``, then one ``notifications.flush`` for the
    mail to the agents, counted per mail; tasks are not published). Run before the worker starts."""
    from sqlalchemy import event

    from models.db import get_engine
    from models.tables import Intake, IntakeSource
    from models.uow import UnitOfWork
    from rules.texts import InboundText
    from workers import intakes, notifications
    from workers.app import app as celery_app

    made = []
    with UnitOfWork() as uow:
        for i in range(n):
            j = (i * STRIDE) % phones
            sid = f"SMdiagnostic{i:022x}"
            body = "Is it still available?"
            fields = {"MessageSid": sid, "From": phone(j), "To": number_of(j), "Body": body}
            intake = Intake(
                account_id=account,
                source=IntakeSource.SMS,
                idempotency_key=sid,
                raw_body=urllib.parse.urlencode(fields),
                payload=InboundText(sid, number_of(j), phone(j), phone(j), body).to_dict(),
                content_type="application/x-www-form-urlencoded",
            )
            made.append(uow.intakes.add(intake).id)
        uow.commit()
    counted: list[str] = []
    flushes: list[str] = []

    def count(*args: Any) -> None:
        counted.append(str(args[2]).split(None, 1)[0].upper())

    def publish(name: str, args: Sequence[str] = (), **_: Any) -> None:
        if name == notifications.FLUSH_TASK:
            flushes.append(name)

    engine = get_engine()
    send_task = celery_app.send_task
    celery_app.send_task = publish
    event.listen(engine, "before_cursor_execute", count)
    per_task: dict[str, list[float]] = {"intake.process": [], "notifications.flush (per mail)": []}
    kinds: Counter[str] = Counter()
    try:
        # The project's log lines go to stdout in this process, which is the result's JSON when run alone.
        with contextlib.redirect_stdout(sys.stderr):
            for intake_id in made:
                counted.clear()
                with UnitOfWork() as uow:
                    intakes.process_intake(uow, intake_id)
                per_task["intake.process"].append(len(counted))
                kinds.update(counted)
            if flushes:
                counted.clear()
                flushed = notifications.flush()
                if flushed.sent:
                    per_task["notifications.flush (per mail)"].append(len(counted) / flushed.sent)
                kinds.update(counted)
    finally:
        event.remove(engine, "before_cursor_execute", count)
        celery_app.send_task = send_task
    return {
        "texts": n,
        "per_task": {task: sum(c) / len(c) if c else None for task, c in per_task.items()},
        "by_verb": {k: round(v / n, 1) for k, v in kinds.most_common()},
        # The baseline has no worker: its API request makes three (the number, the account, the INSERT).
    }


# --- The requests (built inside locust) -----------------------------------------------------------


@functools.cache
def _validator(token: str) -> Any:
    return RequestValidator(token)


def _signed(i: int, params: Mapping[str, Any], path: str, name: str) -> Request:
    """The i-th inbound text of a run as Twilio posts it: all of its form fields, signed over the public URL."""
    tag, phones = str(params["tag"]), int(params["phones"])
    j = (int(tag, 16) + i * STRIDE) % phones
    sid = f"SM{tag}{i:024x}"
    sender, to = phone(j), number_of(j)
    fields = {
        "ToCountry": "US",
        "ToState": "CA",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "ToCity": "",
        "FromZip": "",
        "SmsSid": sid,
        "FromState": "CA",
        "SmsStatus": "received",
        "FromCity": "",
        "Body": "Yes! Is 12 Oak St still available? Can we see it Saturday morning?",
        "FromCountry": "US",
        "To": to,
        "ToZip": "",
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": "ACbench",
        "From": sender,
        "ApiVersion": "2010-04-01",
    }
    signature = _validator(str(params["token"])).compute_signature(str(params["public"]) + path, fields)
    return Request(
        name=name,
        path=path,
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature},
        body=urllib.parse.urlencode(fields).encode(),
        key=sid,
    )


def inbound(i: int, params: Mapping[str, Any]) -> Request:
    """The pipeline: Twilio's inbound-text webhook."""
    return _signed(i, params, INBOUND, "sms")


def inbound_store(i: int, params: Mapping[str, Any]) -> Request:
    """The baseline: the same text, signed the same way, to the store-only endpoint."""
    return _signed(i, params, STORE, "sms-store")


def params_for(phones: int) -> dict[str, Any]:
    return {"tag": uuid.uuid4().hex[:8], "phones": phones, "token": TOKEN, "public": PUBLIC_BASE}


# --- What finished, and when ----------------------------------------------------------------------


def finished(stack: Stack, kind: str, keys: Sequence[str]) -> dict[str, tuple[str, float]]:
    """Of ``keys`` (message sids), those that are over, their status and when (epoch seconds): the
    pipeline's when the worker finished the intake, the baseline's when the API stored it."""
    if not keys:
        return {}
    over = "'done', created_at" if kind == "baseline" else "status, processed_at"
    done = "" if kind == "baseline" else f"AND processed_at IS NOT NULL AND status IN {FINAL}"
    engine = create_engine(stack.url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    f"SELECT idempotency_key, {over} FROM intakes WHERE account_id = "
                    f"(SELECT id FROM accounts WHERE slug = :slug) AND source = 'sms' "
                    f"AND idempotency_key = ANY(:keys) {done}"
                ),
                {"slug": ACCOUNT, "keys": list(keys)},
            ).all()
    finally:
        engine.dispose()
    return {str(k): (str(status), float(at.timestamp())) for k, status, at in rows}


def set_apart(stack: Stack, keys: Sequence[str]) -> None:
    """The baseline's stored texts wait for no task, but a batch of the pipeline's texts takes the texts of
    the account waiting their first try: counted as tried once (still ``accepted``, never processed), they
    are left out of every batch, as they were out of the one-text tasks before."""
    engine = create_engine(stack.url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE intakes SET attempts = 1 WHERE account_id = (SELECT id FROM accounts WHERE slug = :slug) "
                    "AND source = 'sms' AND idempotency_key = ANY(:keys)"
                ),
                {"slug": ACCOUNT, "keys": list(keys)},
            )
    finally:
        engine.dispose()


# --- Where the CPU went ---------------------------------------------------------------------------


def backends(dsn: str) -> list[int]:
    """The PostgreSQL backends connected to the run's database (the API's and the worker's connections)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return [int(pid) for (pid,) in rows]


def meter(stack: Stack) -> CpuMeter:
    """``bench.registrations.meter``'s parts, with PostgreSQL split in two: ``postgresql`` is the backends of
    this run's database, ``postgresql_machine`` every PostgreSQL process of the machine (its WAL writer and
    checkpointer, and whatever another benchmark on the same server makes it do)."""
    parts = dict(registrations_meter(stack).parts)
    parts["postgresql_machine"] = parts.pop("postgresql")
    parts["postgresql"] = lambda: backends(stack.dsn)
    return CpuMeter(parts)


# --- What the runs left ---------------------------------------------------------------------------


def verify(stack: Stack, account: int, pipeline: Sequence[str], baseline: Sequence[str]) -> dict[str, Any]:
    """Every accepted text processed once, on the lead whose agent texted that phone last (S1), checked
    for every one of them against the preloaded outbound texts; the baseline's texts stored, never routed.
    Every lookup goes through an index (an inbound text is found by its sid: ``messages.intake_id`` has none)."""
    engine = create_engine(stack.url)
    checks: dict[str, Any] = {"accepted": len(pipeline)}
    with engine.connect() as conn:

        def one(sql: str) -> Any:
            return conn.execute(text(sql), {"a": account}).one()

        for table, keys in (("bench_pipeline", pipeline), ("bench_baseline", baseline)):
            conn.execute(text(f"CREATE TEMPORARY TABLE {table} (k varchar(64) PRIMARY KEY)"))
            for i in range(0, len(keys), 5000):
                conn.execute(text(f"INSERT INTO {table} (k) VALUES (:k)"), [{"k": k} for k in keys[i : i + 5000]])
            conn.execute(text(f"ANALYZE {table}"))
        # The pipeline's intakes, then the last outbound text to each of their phones, from the stored rows
        # alone (one backward range of the reply-routing index a phone): its lead and its agent.
        conn.execute(
            text(
                "CREATE TEMPORARY TABLE bench_texts AS "
                "SELECT i.id, i.lead_id, i.status, i.payload->>'from_e164' AS phone, i.idempotency_key AS sid "
                "FROM bench_pipeline b JOIN intakes i ON i.account_id = :a AND i.source = 'sms' AND i.idempotency_key = b.k"
            ),
            {"a": account},
        )
        conn.execute(
            text(
                "CREATE TEMPORARY TABLE bench_last AS SELECT p.phone, m.id, m.lead_id, m.agent_id "
                "FROM (SELECT DISTINCT phone FROM bench_texts) p CROSS JOIN LATERAL ("
                "  SELECT id, lead_id, agent_id FROM messages m WHERE m.account_id = :a AND m.lead_phone = p.phone "
                "  AND m.direction = 'outbound' ORDER BY m.created_at DESC, m.id DESC LIMIT 1) m"
            ),
            {"a": account},
        )
        conn.execute(text("ANALYZE bench_texts"))
        conn.execute(text("ANALYZE bench_last"))
        done, rejected, dead = one(
            "SELECT count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status = 'rejected'), "
            "count(*) FILTER (WHERE status = 'dead') FROM bench_texts"
        )
        checks |= {"done": done, "rejected": rejected, "dead": dead}
        (checks["new_leads"],) = one(
            "SELECT count(*) FROM bench_texts x JOIN leads l ON l.account_id = :a AND l.phone_e164 = x.phone "
            "AND l.created_by_intake_id = x.id"
        )
        s1 = """
            SELECT count(*),
                   count(r.id),
                   count(*) FILTER (WHERE x.lead_id = last.lead_id AND r.lead_id = last.lead_id
                                      AND r.agent_id = last.agent_id AND l.assigned_agent_id = last.agent_id),
                   count(*) FILTER (WHERE ev.data->>'rule' = 'S1'
                                      AND ev.data->'deciding_text'->>'message_id' = CAST(last.id AS text)),
                   count(*) FILTER (WHERE dup.n > 1),
                   count(*) FILTER (WHERE dup.n > 1 AND l.created_at > dup.first),
                   count(o.id)
            FROM bench_texts x
            JOIN bench_last last ON last.phone = x.phone
            LEFT JOIN messages r ON r.provider_sid = x.sid AND r.direction = 'inbound' AND r.intake_id = x.id
            LEFT JOIN leads l ON l.id = r.lead_id
            LEFT JOIN timeline_events ev ON ev.lead_id = r.lead_id AND ev.intake_id = x.id AND ev.kind = 'text_received'
            LEFT JOIN outbox o ON o.dedupe_key = 'text:' || :a || ':' || x.sid
            CROSS JOIN LATERAL (
                SELECT count(*) AS n, min(created_at) AS first FROM leads d
                WHERE d.account_id = :a AND d.phone_e164 = x.phone AND d.status = 'active'
            ) AS dup
        """
        total, recorded, right, s1_events, shared, later, mailed = one(s1)
        checks["inbound_texts_recorded"] = recorded
        checks["s1"] = {
            "checked": total,
            "on_the_last_texted_lead_and_agent": right,
            "timeline_names_S1_and_that_text": s1_events,
            "from_phones_with_two_leads": shared,
            "of_which_on_the_later_made_duplicate": later,
            "agent_notified": mailed,
        }
        example = conn.execute(
            text(
                "SELECT x.phone, a.slug, ev.summary FROM bench_texts x "
                "JOIN messages r ON r.provider_sid = x.sid AND r.direction = 'inbound' "
                "JOIN entities a ON a.id = r.agent_id "
                "JOIN timeline_events ev ON ev.lead_id = r.lead_id AND ev.intake_id = x.id AND ev.kind = 'text_received' "
                "WHERE (SELECT count(*) FROM leads d WHERE d.account_id = :a AND d.phone_e164 = x.phone) > 1 LIMIT 1"
            ),
            {"a": account},
        ).first()
        if example is not None:
            checks["s1"]["example"] = {"phone": example[0], "routed_to": example[1], "timeline": example[2]}
        stored, routed = one(
            "SELECT count(*), count(*) FILTER (WHERE i.processed_at IS NOT NULL OR i.status <> 'accepted' "
            "OR EXISTS (SELECT 1 FROM messages m WHERE m.provider_sid = i.idempotency_key)) "
            "FROM bench_baseline b JOIN intakes i ON i.account_id = :a AND i.source = 'sms' AND i.idempotency_key = b.k"
        )
        checks["baseline"] = {"accepted": len(baseline), "stored": stored, "routed_or_processed": routed}
    engine.dispose()
    checks["ok"] = (
        done == len(pipeline)
        and recorded == len(pipeline)
        and mailed == len(pipeline)
        and checks["new_leads"] == 0
        and total == len(pipeline)
        and right == len(pipeline)
        and s1_events == len(pipeline)
        and 0 < later < shared
        and stored == len(baseline)
        and routed == 0
    )
    return checks


# --- The scenario ---------------------------------------------------------------------------------


def _cpu_ms_per_text(figures: Mapping[str, Any]) -> dict[str, float]:
    """CPU milliseconds per text by part, roughly: the API's per accepted request, the others' per text
    finished (over the load's window, warm-up included)."""
    cores = figures["cpu"]["cores_used"]
    accepted = figures["load"]["accepted"] / max(figures["cpu"]["wall_seconds"], 1e-9)
    rate = max(figures["sustained_per_s"], 1e-9)
    return {part: round(1000 * c / (accepted if part == "api" else rate), 2) for part, c in cores.items()}


def say(line: str) -> None:
    """Progress, on stderr: stdout is the result's JSON when run on its own."""
    print(line, file=sys.stderr, flush=True)


def _attempt(figures: Mapping[str, Any]) -> dict[str, Any]:
    sent, rate = figures["load"]["sent_per_s"], figures["sustained_per_s"]
    return {
        "offered_per_s": round(figures["load"]["offered_per_s"], 1),
        "sent_per_s": round(sent, 1),
        "finished_per_s": round(rate, 1),
        "cpu_cores_used": {k: round(v, 2) for k, v in figures["cpu"]["cores_used"].items()},
    }


def arrivals(path: Path, gap: float = 0.005) -> dict[str, Any]:
    """How locust's requests arrived (its sent log): runs of requests less than ``gap`` apart, their
    largest size and the median time between their starts. locust starts every user at once and each
    keeps its own constant pace, so they stay in step: a latency includes waiting behind the burst."""
    times = sorted(float(line.split(",", 1)[0]) for line in path.read_text().splitlines() if line)
    starts, sizes = [], []
    for i, t in enumerate(times):
        if i == 0 or t - times[i - 1] >= gap:
            starts.append(t)
            sizes.append(0)
        sizes[-1] += 1
    periods = sorted(b - a for a, b in itertools.pairwise(starts))
    return {
        "requests": len(times),
        "bursts": len(starts),
        "largest_burst": max(sizes, default=0),
        "median_seconds_between_bursts": periods[len(periods) // 2] if periods else None,
    }


def pipeline_rate(
    stack: Stack, phones: int, guess: float, *, folder: Path, deadline: float, keys: list[str]
) -> dict[str, Any]:
    """The pipeline's sustained rate: ``sustained`` one attempt at a time, until one is offered 1.1 to 1.6
    times what it finished (its own test) or the time is up, each next one offered 1.35 times the most
    finished so far (what a run finished whether it kept up or not is a rate the stack sustained); the
    attempt that finished the most is the figure, with every attempt's offer and result beside it.

    Why not ``sustained``'s own retries: accepting a text costs the API about a third of what routing it
    costs the worker, on the same two cores, so past the knee the rate falls fast (29/s finished offered
    40/s, 22/s offered 60/s); a retry at 1.4 times a collapsed rate can land under the knee, and its last
    attempt is taken whatever it shows."""
    tried: list[dict[str, Any]] = []
    offered = guess
    while True:
        figures = sustained(
            stack,
            "pipeline",
            lambda: params_for(phones),
            guess=offered,
            folder=folder,
            name=f"replies-pipeline-{len(tried)}",
            requests=REQUESTS,
            finished=finished,
            attempts=1,
            meter=meter,
        )
        keys.extend(figures.pop("keys"))
        tried.append(figures)
        sent, rate = figures["load"]["sent_per_s"], figures["sustained_per_s"]
        say(f"  pipeline offered {offered:.1f}/s: sent {sent:.1f}/s, finished {rate:.1f}/s")
        if 1.1 * rate <= sent <= 1.6 * rate or time.monotonic() + ATTEMPT_SECONDS > deadline:
            break
        offered = 1.35 * max(t["sustained_per_s"] for t in tried)
    best = dict(max(tried, key=lambda t: t["sustained_per_s"]))
    best["attempts"] = len(tried)
    best["tried"] = [_attempt(t) for t in tried]
    # Kept up with what it was offered: the stack sustains at least this rate (a lower bound).
    best["overloaded"] = best["load"]["sent_per_s"] >= 1.1 * best["sustained_per_s"]
    return best


def profile_pipeline(stack: Stack, phones: int, offered: float, *, folder: Path, keys: list[str]) -> dict[str, Any]:
    """py-spy over the API and every worker process, in a run of its own at ``offered`` (the sampler's cost
    is in no measured figure), as ``sustained`` does it."""
    profiler = Profiler(stack, folder, "replies-pipeline", PROFILE_SECONDS - 3)
    run = run_load(
        stack.base,
        REQUESTS["pipeline"],
        params_for(phones),
        rate=offered,
        seconds=PROFILE_SECONDS,
        folder=folder,
        name="replies-pipeline-profile",
    )
    summary = profiler.summary()
    accepted = [s.key for s in run.accepted]
    keys.extend(accepted)
    drain(stack, "pipeline", accepted, finished=finished)
    return summary


def run(folder: Path, *, messages: int = 1_000_000, profile: bool = False) -> dict[str, Any]:
    """Scenario 4 on a stack of its own: preload, EXPLAIN, the baseline's and the pipeline's sustained
    rates, the pipeline's latency at half its rate if the time budget allows, and the checks."""
    from bench.stack import stack
    from bench.tasks import create_table

    began = time.monotonic()
    phones = max(1, messages // PER_PHONE)
    out: dict[str, Any] = {"per_phone": PER_PHONE}
    pipeline_keys: list[str] = []
    baseline_keys: list[str] = []
    env = {TOKEN_ENV: TOKEN, "LEADRELAY_PUBLIC_BASE_URL": PUBLIC_BASE}
    with stack(folder, extra_env=env) as s:
        create_table(s.url)  # the worker's readiness check runs the no-op task, which records itself there
        account = apply_org()
        preload = preload_messages(s.dsn, account, phones)
        out["messages_preloaded"] = preload["messages"]
        out["preload_seconds"] = preload["seconds"]
        out["preloaded"] = {k: preload[k] for k in ("phones", "leads", "messages", "intakes")}
        say(f"  preloaded {preload['messages']:,} messages in {preload['seconds']:.1f} s")
        out["explain"] = explain_s1(account, phone(0))
        out["statements_per_text"] = statements_per_text(account, phones)
        s.start_api()
        s.start_worker(2)
        out["startup_seconds"] = time.monotonic() - began - preload["seconds"]

        baseline = sustained(
            s,
            "baseline",
            lambda: params_for(phones),
            guess=BASELINE_GUESS,
            folder=folder,
            name="replies-baseline",
            requests=REQUESTS,
            finished=finished,
            attempts=1,
            meter=meter,
        )
        baseline_keys.extend(baseline.pop("keys"))
        set_apart(s, baseline_keys)
        baseline["cpu_ms_per_text"] = _cpu_ms_per_text(baseline)
        out["baseline"] = baseline
        say(f"  baseline: {baseline['sustained_per_s']:.1f}/s")

        # The pipeline's attempts get what the budget leaves once the latency run, the checks and the
        # teardown are kept aside.
        deadline = began + BUDGET_SECONDS - (LATENCY_SECONDS + 10) - 10
        guess = max(10.0, PIPELINE_GUESS * baseline["sustained_per_s"])
        pipeline = pipeline_rate(s, phones, guess, folder=folder, deadline=deadline, keys=pipeline_keys)
        pipeline["cpu_ms_per_text"] = _cpu_ms_per_text(pipeline)
        out["pipeline"] = pipeline
        rate = pipeline["sustained_per_s"]
        out["ratio"] = rate / baseline["sustained_per_s"] if baseline["sustained_per_s"] else None
        say(f"  pipeline: {rate:.1f}/s, {out['ratio'] or 0:.2f}x the baseline")
        if profile:
            pipeline["profile"] = profile_pipeline(
                s, phones, pipeline["load"]["offered_per_s"], folder=folder, keys=pipeline_keys
            )
        # The latency run and its drain must fit in what is left of the budget.
        if time.monotonic() - began + LATENCY_SECONDS + 20 <= BUDGET_SECONDS and rate > 0:
            lat = latency(
                s,
                "pipeline",
                params_for(phones),
                rate=rate / 2,
                folder=folder,
                name="replies-latency",
                requests=REQUESTS,
                finished=finished,
            )
            pipeline_keys.extend(lat.pop("keys"))
            lat["arrivals"] = arrivals(folder / "sent-replies-latency.csv")
            pipeline["latency"] = lat
            say(f"  latency at {rate / 2:.1f}/s: {lat['ms']}")
        else:
            pipeline["latency"] = {"skipped": f"over the {BUDGET_SECONDS:.0f} s budget"}
        out["checks"] = verify(s, account, pipeline_keys, baseline_keys)
        out["scenario_seconds"] = time.monotonic() - began
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--profile", action="store_true", help="py-spy the API and the worker during the pipeline run")
    parser.add_argument("--folder", type=Path, help="keep the logs and profiles there (default: a temporary folder)")
    args = parser.parse_args()
    if args.folder is not None:
        result = run(args.folder, messages=args.messages, profile=args.profile)
    else:
        with tempfile.TemporaryDirectory(prefix="leadrelay-replies-") as tmp:
            result = run(Path(tmp), messages=args.messages, profile=args.profile)
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
