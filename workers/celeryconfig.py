"""Celery configuration from the typed settings (each choice says what it guards against)."""

from __future__ import annotations

from typing import Any

from kombu.entity import Queue

from leadrelay.settings import Settings

# Every time limit and countdown stays well under the visibility timeout, or Redis redelivers
# a task that is still running or waiting (kombu #337, celery #5935).
VISIBILITY_TIMEOUT = 3600
TASK_TIME_LIMIT = 300
MAX_RETRY_COUNTDOWN = 600

QUEUES = ("registrations", "texts", "imports", "notifications", "webhooks")
# Named queues, so a flood of one kind of work never starves another.
TASK_QUEUES = {
    "intake.process": "registrations",
    "imports.run": "imports",
    # Bulk work shares the imports queue: neither holds up signups or texts.
    "jobs.run": "imports",
    "texts.send": "texts",
    "notifications.flush": "notifications",
    # Published before notifications.flush replaced it; kept so those messages are still consumed.
    "notifications.send": "notifications",
    # The relay's pass, when run by celery beat (``leadrelay relay`` is the same loop without beat).
    "relay.sweep": "registrations",
    # Outbound webhooks on a queue of their own: a slow receiver never holds up intake.
    "webhooks.deliver": "webhooks",
}


def queue_name(settings: Settings, queue: str) -> str:
    return f"{settings.queue_prefix}{queue}"


def celery_config(settings: Settings) -> dict[str, Any]:
    embedded = settings.broker_is_embedded
    exchanges: dict[str, str] = {}
    if embedded:
        folder = settings.broker_folder
        (folder / "out").mkdir(parents=True, exist_ok=True)
        (folder / "processed").mkdir(parents=True, exist_ok=True)
        (folder / "control").mkdir(parents=True, exist_ok=True)
        transport_options: dict[str, Any] = {
            "data_folder_in": str(folder / "out"),
            "data_folder_out": str(folder / "out"),
            "processed_folder": str(folder / "processed"),
            # Exchange bindings; kombu's default is ./control, in whatever directory the worker runs.
            "control_folder": str(folder / "control"),
            "store_processed": False,
            # kombu polls the folder when its queues are empty (1 s by default): a signup then waited up to a
            # second for its worker. A tenth of a second costs an idle worker a directory listing per poll.
            "polling_interval": 0.1,
        }
    elif settings.effective_broker_url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp"):
        # RabbitMQ: a publish the broker refuses raises (and is logged by ``publish``) instead of vanishing.
        # The Redis-only options below mean nothing here: a dead worker's messages come back at once.
        transport_options = {"confirm_publish": True}
        if settings.queue_prefix:
            # Celery's control and event exchanges are shared by every app on a vhost; the prefix keeps
            # this installation's inspect, remote control and Flower to its own workers.
            exchanges = {
                "control_exchange": f"{settings.queue_prefix}celery",
                "event_exchange": f"{settings.queue_prefix}celeryev",
            }
    else:
        transport_options = {
            "visibility_timeout": VISIBILITY_TIMEOUT,
            # Bounded publish: a request must not hang when Redis is down (celery #4296, kombu #1221).
            "socket_timeout": 5,
            "socket_connect_timeout": 2,
            "retry_on_timeout": True,
        }
        if settings.queue_prefix:
            # Every key kombu writes (queues, the unacked hash, bindings) carries the prefix.
            transport_options["global_keyprefix"] = settings.queue_prefix
    return exchanges | {
        "task_queues": [Queue(queue_name(settings, q)) for q in QUEUES],  # type: ignore[no-untyped-call]
        "task_routes": {task: {"queue": queue_name(settings, q)} for task, q in TASK_QUEUES.items()},
        "broker_url": settings.effective_broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": TASK_TIME_LIMIT,
        "task_soft_time_limit": TASK_TIME_LIMIT - 30,
        "task_default_queue": queue_name(settings, "registrations"),
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.1,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        # Flower needs events; the filesystem transport has no fanout exchange to carry them.
        "worker_send_task_events": not embedded,
        "task_send_sent_event": not embedded,
        "task_track_started": True,
        "worker_enable_remote_control": not embedded,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "beat_schedule": {
            "relay": {"task": "relay.sweep", "schedule": settings.relay_every_seconds, "options": {"expires": 60}}
        },
    }
