"""The local receiver ``leadrelay dev`` starts: an HTTP server in a thread of its own process that verifies
every outbound webhook delivery of the demo org with the ``standardwebhooks`` package, as a brokerage's
own system would, and keeps what it got for the demo to show."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

PATH = "/demo-receiver"


@dataclass(frozen=True)
class Got:
    webhook_id: str
    type: str
    lead_id: str | None
    explanation: str
    verified: bool


class DevReceiver:
    """A receiver on 127.0.0.1 (a free port): ``url`` to give the org file, ``got`` what came."""

    def __init__(self, secret: str, on_delivery: Callable[[Got], None] | None = None) -> None:
        self.hook = Webhook(secret)
        self.got: list[Got] = []
        self.on_delivery = on_delivery
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    event: dict[str, Any] = receiver.hook.verify(body, headers)
                    verified = True
                except WebhookVerificationError:
                    event, verified = json.loads(body or b"{}"), False
                data = event.get("data") or {}
                got = Got(
                    headers.get("webhook-id", ""),
                    str(event.get("type")),
                    data.get("lead_id"),
                    str(data.get("explanation", "")),
                    verified,
                )
                with receiver._lock:
                    receiver.got.append(got)
                if receiver.on_delivery is not None:
                    receiver.on_delivery(got)
                self.send_response(200 if verified else 400)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return  # the demo prints what came; no access log on the terminal

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="dev-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{PATH}"

    def start(self) -> DevReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def received(self) -> list[Got]:
        with self._lock:
            return list(self.got)
