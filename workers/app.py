"""The Celery application. Configuration is read from the settings when first needed, not at import."""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from celery import Celery
from celery.signals import worker_process_init

from leadrelay.settings import get_settings
from models.db import dispose_engine
from workers.celeryconfig import celery_config

app = Celery("leadrelay", set_as_current=True)
# A callable is a promise: Celery reads it when the configuration is first needed.
app.add_defaults(lambda: celery_config(get_settings()))
log = structlog.get_logger(__name__)


def publish(task_name: str, key: uuid.UUID, *, queue: str | None = None) -> None:
    """Send a task whose one argument is the id of a committed row, routed by its name
    (``celeryconfig.TASK_QUEUES``) unless ``queue`` is given. A failed publish loses nothing (the
    row is kept, and a replay or the relay sends it again), so it is logged, never raised: the
    caller has already committed, and often answered."""
    options = {"queue": queue} if queue else {}
    try:
        app.send_task(task_name, args=[str(key)], **options)
    except Exception as exc:
        log.warning("task.enqueue_failed", task=task_name, id=str(key), error=type(exc).__name__)


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _fresh_engine_per_child(**_: Any) -> None:
    # Prefork children must not share the parent's database sockets.
    dispose_engine(close=False)
