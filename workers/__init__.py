"""Celery app and thin tasks: ``celery -A workers worker`` finds ``workers.app``."""

# Registers the tasks on the app when a worker imports this package.
from workers import tasks  # noqa: F401
from workers.app import app

__all__ = ["app"]
