"""The Celery application. Configuration is read from the settings when first needed, not at import."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from leadrelay.settings import get_settings
from models.db import dispose_engine
from workers.celeryconfig import celery_config

app = Celery("leadrelay", set_as_current=True)
# A callable is a promise: Celery reads it when the configuration is first needed.
app.add_defaults(lambda: celery_config(get_settings()))


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _fresh_engine_per_child(**_: Any) -> None:
    # Prefork children must not share the parent's database sockets.
    dispose_engine(close=False)
