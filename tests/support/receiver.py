"""A real HTTP receiver for outbound webhooks (pytest-httpserver, a werkzeug server in a thread of the
test process): every request it gets is kept with its headers, body and time, and each path answers as
the test says (200 by default; a status for the next few requests; 410)."""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jsonschema_rs
from pytest_httpserver import HTTPServer
from standardwebhooks import Webhook
from werkzeug import Request, Response

from intake.api import create_app
from tests.support.processes import wait_for


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() in the test process
    status: int  # what the receiver answered

    @property
    def payload(self) -> dict[str, Any]:
        """The body, checked against its event's schema in the OpenAPI document's ``webhooks`` section."""
        return documented(dict(json.loads(self.body)))

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def verified(self, secret: str) -> dict[str, Any]:
        """The body, verified with ``secret`` by the ``standardwebhooks`` package as a receiver does."""
        return documented(dict(Webhook(secret).verify(self.body, self.headers)))


@functools.cache
def _event_schemas() -> dict[str, Any]:
    """A validator per event type, of the body the OpenAPI document's ``webhooks`` section gives it."""
    document = create_app().openapi()
    validators = {}
    for event_type, item in document["webhooks"].items():
        schema = item["post"]["requestBody"]["content"]["application/json"]["schema"]
        root = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            **schema,
            "components": document["components"],
        }
        validators[event_type] = jsonschema_rs.validator_for(root, validate_formats=True)
    return validators


def documented(event: dict[str, Any]) -> dict[str, Any]:
    """``event``, once it is shown to be what the document says its type sends (a receiver generated from the
    document would parse it); a delivery the document does not describe fails the test that received it."""
    validator = _event_schemas().get(event.get("type", ""))
    assert validator is not None, f"{event.get('type')!r} is not an event type of the OpenAPI document"
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(event)]
    assert not errors, f"{event['type']} does not match its schema in the OpenAPI document: {errors}"
    return event


class Receiver:
    def __init__(self, port: int = 0) -> None:
        self.server = HTTPServer(host="127.0.0.1", port=port, threaded=True)
        self._lock = threading.Lock()
        self._got: list[Received] = []
        self._answers: dict[str, list[int]] = defaultdict(list)
        self._always: dict[str, int] = {}
        self._slow: dict[str, float] = {}
        self._arrived: dict[str, int] = defaultdict(int)
        self.server.expect_request(re.compile(".*")).respond_with_handler(self._handle)

    def start(self) -> Receiver:
        self.server.start()
        return self

    def stop(self) -> None:
        if self.server.is_running():
            self.server.stop()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"

    def answer(self, path: str, *statuses: int) -> None:
        """The next requests to ``path`` get these statuses, one each, then 200 again."""
        with self._lock:
            self._answers[path].extend(statuses)

    def always(self, path: str, status: int) -> None:
        with self._lock:
            self._always[path] = status

    def slow(self, path: str, seconds: float) -> None:
        """Requests to ``path`` are answered ``seconds`` after they came (a receiver under load)."""
        with self._lock:
            self._slow[path] = seconds

    def _handle(self, request: Request) -> Response:
        with self._lock:
            self._arrived[request.path] += 1
            delay = self._slow.get(request.path, 0.0)
        if delay:
            time.sleep(delay)
        with self._lock:
            queued = self._answers.get(request.path)
            status = queued.pop(0) if queued else self._always.get(request.path, 200)
            self._got.append(
                Received(
                    request.path,
                    {k.lower(): v for k, v in request.headers.items()},
                    request.get_data(),
                    time.monotonic(),
                    status,
                )
            )
        return Response("ok" if status < 300 else "not now", status=status)

    def arrived(self, path: str) -> int:
        """Requests to ``path`` that came, answered or not yet."""
        with self._lock:
            return self._arrived[path]

    def got(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self._got if r.path == path]

    def delivered(self, path: str) -> list[Received]:
        return [r for r in self.got(path) if r.status < 300]

    def wait(
        self, path: str, until: Callable[[list[Received]], bool], *, what: str, timeout: float = 60
    ) -> list[Received]:
        wait_for(lambda: until(self.delivered(path)), timeout=timeout, interval=0.05, what=what)
        return self.delivered(path)
