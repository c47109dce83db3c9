"""Safe sending of outbound webhooks (workers/webhooks.py): https only, no private, loopback, link-local or
reserved target unless LEADRELAY_WEBHOOKS_ALLOW_PRIVATE; and the Standard Webhooks signature."""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from standardwebhooks import Webhook

from tests.support.receiver import Receiver
from workers.webhooks import Refused, close_clients, post, resolve_target, sign

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876543210").decode()


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://0.0.0.0/hook",
        "https://localhost/hook",
    ],
)
def test_a_private_loopback_or_link_local_target_is_refused(url: str) -> None:
    with pytest.raises(Refused):
        resolve_target(url, allow_private=False)


def test_a_hostname_resolving_to_a_private_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # No DNS server here answers with a 10.x address for a name: the resolver's answer is given instead.
    def resolver(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        assert host == "crm.internal.example"
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    with pytest.raises(Refused, match=r"10\.0\.0\.7"):
        resolve_target("https://crm.internal.example/hook", allow_private=False)


def test_plain_http_is_refused_unless_private_targets_are_allowed() -> None:
    with pytest.raises(Refused, match="https"):
        resolve_target("http://93.184.215.14/hook", allow_private=False)
    target = resolve_target("http://127.0.0.1:9/hook?x=1", allow_private=True)
    assert (target.url, target.host, target.host_header) == ("http://127.0.0.1:9/hook?x=1", "127.0.0.1", "127.0.0.1:9")


def test_a_public_address_is_pinned_and_the_name_kept_for_tls() -> None:
    target = resolve_target("https://93.184.215.14:8443/in", allow_private=False)
    assert target.url == "https://93.184.215.14:8443/in"
    assert target.scheme == "https"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def test_a_refused_target_gets_no_request(receiver: Receiver) -> None:
    sent = post(receiver.url("/ssrf"), b"{}", {}, allow_private=False)
    assert sent.outcome == "refused"
    assert receiver.got("/ssrf") == []


def test_several_secrets_give_one_signature_each_and_each_verifies() -> None:
    at = dt.datetime(2026, 12, 5, 9, 30, tzinfo=dt.UTC)
    payload = b'{"type":"lead.created"}'
    header = sign([SECRET, OTHER, "whsec_"], "msg_1", at, payload)
    assert header is not None
    assert len(header.split(" ")) == 2, "the unusable secret is skipped"
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": header}
    for secret in (SECRET, OTHER):
        webhook = Webhook(secret)
        # The receiver's clock is the message's time (verify refuses a timestamp five minutes off).
        assert webhook.sign("msg_1", at, payload) in header.split(" ")
    assert headers["webhook-signature"].startswith("v1,")


class KeepAliveReceiver(http.server.ThreadingHTTPServer):
    """A real HTTP/1.1 receiver that keeps connections open and notes the client port of every request."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                server.ports.append(self.client_address[1])
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_deliveries_to_one_receiver_share_a_kept_alive_connection() -> None:
    receiver = KeepAliveReceiver()
    try:
        url = f"http://127.0.0.1:{receiver.server_address[1]}/in"
        outcomes = [post(url, b"{}", {}, allow_private=True).outcome for _ in range(3)]
        assert outcomes == ["delivered"] * 3
        assert len(receiver.ports) == 3
        assert len(set(receiver.ports)) == 1, f"one TCP connection for the three, got ports {receiver.ports}"
    finally:
        close_clients()
        receiver.shutdown()
        receiver.server_close()
