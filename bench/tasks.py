"""The baseline's Celery task: it records that it ran, and does nothing else.

A worker imports it with ``leadrelay worker --include bench.tasks``; the product's workers never do.
It is sent on the registrations queue, so it meets the same broker, queue and worker pool as the
pipeline's ``intake.process``, with the same reliability options (late ack, requeue on a lost worker).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import Engine, create_engine, text

from models.db import get_engine
from workers.app import app

TABLE = "bench_noop"


def create_table(url: str) -> None:
    """The baseline's record, in the run's own database: the key and when the task ran (epoch seconds)."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS {TABLE} (id varchar(100) PRIMARY KEY, ran_at double precision)"))
    engine.dispose()


@app.task(name="bench.noop", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)  # type: ignore[untyped-decorator]
def noop(self: object, key: str) -> None:
    """Record that the task ran (one committed row), nothing more."""
    with get_engine().begin() as conn:
        conn.execute(
            text(f"INSERT INTO {TABLE} (id, ran_at) VALUES (:id, :at) ON CONFLICT DO NOTHING"),
            {"id": key, "at": time.time()},
        )


def ran(engine: Engine, keys: Sequence[str]) -> dict[str, float]:
    """Of ``keys``, those whose task ran, and when (the table holds only this run's keys)."""
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT id, ran_at FROM {TABLE}")).all()
    wanted = set(keys)
    return {k: float(at) for k, at in rows if k in wanted}
