"""The statement a worker runs for every signup, as PostgreSQL plans it (and as it plans it once psycopg has
prepared it: the generic plan, with no parameter values to look at): it reads its batch, not the table of
many finished intakes nor the backlog of other waiting work."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from models.db import make_engine
from models.migrate import upgrade
from models.signups import BATCHED_SOURCES, TEXT_SOURCES, _claim_statement
from models.tables import WAITING_SIGNUPS, WAITING_TEXTS
from tests.integration.conftest import PG_ADMIN

pytestmark = pytest.mark.integration

FINISHED = 100_000


@pytest.fixture(scope="module")
def crowded() -> Iterator[Engine]:
    """A database of its own: one account with FINISHED done intakes (texts and registrations) and a few
    waiting, analyzed."""
    name = f"leadrelay_plans_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    upgrade(url)
    engine = make_engine(url, pool_size=1)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO accounts (id, slug, name, duplication, org_version, sms_auth_token_envs, created_at) "
                "VALUES (1, 'plans', 'Plans', true, 1, '[]', now())"
            )
        )
        conn.execute(
            text(
                "INSERT INTO intakes (id, account_id, source, raw_body, payload, status, attempts, created_at, "
                "updated_at) SELECT gen_random_uuid(), 1, CASE WHEN i % 2 = 0 THEN 'sms' ELSE 'registration' END, "
                "'{}', '{}', CASE WHEN i <= :finished THEN 'done' ELSE 'accepted' END, "
                "CASE WHEN i <= :finished THEN 1 ELSE 0 END, now(), now() FROM generate_series(1, :finished + 25) i"
            ),
            {"finished": FINISHED},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # Statistics of every row, not of a random sample (300 rows per unit of the target): a sample that
        # happened to miss the few waiting rows gave another plan in one run of several.
        conn.execute(text("SET default_statistics_target = 1000"))
        conn.execute(text("ANALYZE intakes"))
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO intakes (id, account_id, source, raw_body, payload, status, attempts, created_at, "
                "updated_at) SELECT gen_random_uuid(), 1, 'sms', '{}', '{}', 'accepted', 0, now() - interval '1 hour', "
                "now() - interval '1 hour' FROM generate_series(1, :backlog)"
            ),
            {"backlog": BACKLOG},
        )
    yield engine
    engine.dispose()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


BACKLOG = 5_000  # texts waiting (added after ANALYZE: a backlog the statistics do not know of)


def rows_read(engine: Engine, statement: object, params: dict[str, object], *, generic: bool) -> int:
    """The rows of ``intakes`` the statement reads (returned, or read and filtered out), as it runs under
    its custom plan, or under the generic plan PostgreSQL keeps once psycopg has prepared it: its SQL as
    SQLAlchemy sends it, prepared, and run by ``EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE``."""
    sent: list[str] = []

    def capture(_c: object, _cur: object, sql: str, *_: object) -> None:
        sent.append(sql)

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with Session(engine) as session:
            session.execute(statement, params).all()  # type: ignore[call-overload]
            session.rollback()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    names: list[str] = []

    def numbered(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    sql = re.sub(r"%\((\w+)\)s", numbered, sent[-1])
    args = ", ".join(f"'{params[name]}'" for name in names)
    with engine.connect() as conn:
        conn.exec_driver_sql(f"SET plan_cache_mode = {'force_generic_plan' if generic else 'force_custom_plan'}")
        conn.exec_driver_sql(f"PREPARE claim AS {sql}")
        (plan,) = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim({args})").one()
        conn.exec_driver_sql("DEALLOCATE claim")
        conn.rollback()

    def read(node: dict[str, Any]) -> int:
        own = 0
        if node.get("Relation Name") == "intakes":
            kept = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
            own = (kept + node.get("Rows Removed by Index Recheck", 0)) * node.get("Actual Loops", 1)
        return own + sum(read(child) for child in node.get("Plans", []))

    return read(plan[0]["Plan"])


@pytest.mark.parametrize("generic", [False, True], ids=["custom plan", "generic plan"])
def test_a_signups_claim_reads_its_batch_not_the_backlog_of_other_waiting_work(crowded: Engine, generic: bool) -> None:
    with crowded.connect() as conn:
        waiting = (
            conn.execute(
                text("SELECT id FROM intakes WHERE status = 'accepted' AND source = 'registration' ORDER BY created_at")
            )
            .scalars()
            .all()
        )
    params = {"intake_id": waiting[0], "limit": 50, "twice": 100}
    read = rows_read(crowded, _claim_statement(True, True), params, generic=generic)
    assert read <= 4 * len(waiting), f"{read} rows of intakes read to claim {len(waiting)} waiting signups"


def test_the_waiting_signups_index_holds_the_sources_a_batch_takes() -> None:
    assert f"source IN ({', '.join(repr(s.value) for s in BATCHED_SOURCES)})" in WAITING_SIGNUPS


@pytest.mark.parametrize("generic", [False, True], ids=["custom plan", "generic plan"])
def test_a_texts_claim_reads_its_batch_not_every_waiting_text(crowded: Engine, generic: bool) -> None:
    with crowded.connect() as conn:
        waiting = (
            conn.execute(
                text("SELECT id FROM intakes WHERE status = 'accepted' AND source = 'sms' ORDER BY created_at")
            )
            .scalars()
            .all()
        )
    assert len(waiting) > BACKLOG
    limit = 50
    params = {"intake_id": waiting[0], "limit": limit, "twice": 2 * limit}
    read = rows_read(crowded, _claim_statement(True, True), params, generic=generic)
    assert read <= 4 * 2 * limit, f"{read} rows of intakes read to claim {limit} of {len(waiting)} waiting texts"


def test_the_waiting_texts_index_holds_the_sources_a_texts_batch_takes() -> None:
    assert f"source IN ({', '.join(repr(s.value) for s in TEXT_SOURCES)})" in WAITING_TEXTS
