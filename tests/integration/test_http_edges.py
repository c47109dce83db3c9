"""The API's HTTP edges on a real uvicorn: body limits that hold for chunked bodies too, the rate limit per
credential shared by every API process, and the URLs an answer gives."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import func, select

from models.tables import Intake
from models.uow import UnitOfWork
from tests.integration.conftest import REDIS_URL
from tests.support.client import Brokerage
from tests.support.processes import api_server, free_port

CHUNK = 64 * 1024
SMALL_LIMIT = 64 * 1024  # the upload and bulk limits of the API process with small limits


def chunked(total: int, piece: bytes = b" ") -> Iterator[bytes]:
    """``total`` bytes in 64 KiB chunks: httpx sends a generator body with Transfer-Encoding: chunked."""
    sent = 0
    while sent < total:
        n = min(CHUNK, total - sent)
        yield piece * n
        sent += n


def assert_too_large(r: httpx.Response, limit: int) -> None:
    assert r.status_code == 413, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert str(limit) in r.json()["detail"]


def register(base: str, b: Brokerage, email: str, *, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"page_url": f"https://{b.host('downtown')}/", "email": email}
    return httpx.post(
        f"{base}/v1/intake/registrations",
        json=body,
        headers={"Authorization": f"Bearer key-{b.s}", **(headers or {})},
        timeout=30,
    )


@pytest.fixture(scope="module")
def small_limits_api(pipeline_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {**pipeline_env, "LEADRELAY_IMPORT_MAX_BYTES": str(SMALL_LIMIT), "LEADRELAY_BULK_MAX_BYTES": str(SMALL_LIMIT)}
    with api_server(env, tmp_path_factory.mktemp("small-limits") / "api.log") as base:
        yield base


# -- body limits --------------------------------------------------------------------------------------


def test_chunked_body_over_the_intake_limit_is_413_naming_the_limit(acme: Brokerage) -> None:
    limit = 256 * 1024
    r = acme.site.post(
        "/v1/intake/registrations",
        content=chunked(4 * 1024 * 1024),
        headers={"Content-Type": "application/json"},
    )
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in r.request.headers
    assert_too_large(r, limit)


def test_chunked_body_over_the_limit_is_413_before_any_credential_check(api: str) -> None:
    r = httpx.post(
        f"{api}/v1/intake/registrations",
        content=chunked(1024 * 1024),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert_too_large(r, 256 * 1024)


def test_chunked_body_under_the_limit_is_read_as_usual(acme: Brokerage) -> None:
    body = b'{"page_url": "https://%s/chunked", "email": "chunked@example.com"}' % acme.host("downtown").encode()
    r = acme.site.post(
        "/v1/intake/registrations", content=iter([body[:20], body[20:]]), headers={"Content-Type": "application/json"}
    )
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 202, r.text


def multipart(boundary: str, csv_bytes: int) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="owner"\r\n\r\nco\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n'
        "Content-Type: text/csv\r\n\r\nemail,first_name\r\n"
    ).encode()
    yield from chunked(csv_bytes, b"a")
    yield f"\r\n--{boundary}--\r\n".encode()


def test_chunked_upload_over_the_import_limit_is_413(small_limits_api: str, brokerage_factory: Any) -> None:
    b: Brokerage = brokerage_factory()
    boundary = uuid.uuid4().hex
    with httpx.Client(base_url=small_limits_api, timeout=30) as client:
        r = client.post(
            "/v1/imports",
            content=multipart(boundary, 4 * SMALL_LIMIT),
            headers={
                "Authorization": f"Bearer tok-olivia-{b.s}",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
        )
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert_too_large(r, SMALL_LIMIT)


def test_chunked_bulk_body_over_its_limit_is_413(small_limits_api: str, brokerage_factory: Any) -> None:
    b: Brokerage = brokerage_factory()
    with httpx.Client(base_url=small_limits_api, timeout=30) as client:
        r = client.post(
            "/v1/leads/bulk",
            content=chunked(4 * SMALL_LIMIT),
            headers={"Authorization": f"Bearer tok-olivia-{b.s}", "Content-Type": "application/json"},
        )
    assert_too_large(r, SMALL_LIMIT)


def test_chunked_upload_under_the_import_limit_is_accepted(small_limits_api: str, brokerage_factory: Any) -> None:
    b: Brokerage = brokerage_factory()
    boundary = uuid.uuid4().hex
    body = b"".join(multipart(boundary, 0)).replace(
        b"email,first_name\r\n", b"email,first_name\r\nan@example.com,An\r\n"
    )
    with httpx.Client(base_url=small_limits_api, timeout=30) as client:
        r = client.post(
            "/v1/imports",
            content=iter([body[:100], body[100:]]),
            headers={
                "Authorization": f"Bearer tok-olivia-{b.s}",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
        )
    assert r.status_code == 202, r.text


# -- the rate limit -----------------------------------------------------------------------------------

BURST = 3  # the limited API processes let a key (or an address's failed authentications) this many
LIMITED = {
    # ...over a window of BURST / rate = 300 s, so no request leaves the window during a test.
    "LEADRELAY_INTAKE_RATE_PER_KEY": "0.01",
    "LEADRELAY_INTAKE_BURST_PER_KEY": str(BURST),
    # Named here, so both processes share Redis even when the test broker is RabbitMQ.
    "LEADRELAY_RATE_LIMIT_STORAGE_URL": REDIS_URL,
}


@pytest.fixture(scope="module")
def limited_apis(pipeline_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Two API processes with a low rate limit, sharing the count in Redis."""
    env = {**pipeline_env, **LIMITED}
    logs = tmp_path_factory.mktemp("limited")
    with api_server(env, logs / "api-1.log") as one, api_server(env, logs / "api-2.log") as two:
        yield one, two


def intakes_of(b: Brokerage) -> int:
    with UnitOfWork() as uow:
        account = uow.orgs.account_by_slug(b.org["account"])
        assert account is not None
        return int(
            uow.session.execute(
                select(func.count()).select_from(Intake).where(Intake.account_id == account.id)
            ).scalar_one()
        )


def another_address() -> str:
    """A client address of this test's own (uvicorn takes X-Forwarded-For from a proxy on 127.0.0.1)."""
    return f"198.51.100.{next(_addresses)}"


_addresses = iter(range(1, 255))


def test_a_key_past_its_rate_is_429_with_retry_after_and_rate_limit_headers(
    limited_apis: tuple[str, str], brokerage_factory: Any
) -> None:
    one, _ = limited_apis
    b: Brokerage = brokerage_factory()
    for i in range(BURST):
        r = register(one, b, f"rated{i}@example.com")
        assert r.status_code == 202, r.text
        assert r.headers["X-RateLimit-Limit"] == str(BURST)
        assert r.headers["X-RateLimit-Remaining"] == str(BURST - 1 - i)
        assert int(r.headers["X-RateLimit-Reset"]) > 0
    r = register(one, b, "one-too-many@example.com")
    assert r.status_code == 429, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert int(r.headers["Retry-After"]) >= 1
    assert r.headers["X-RateLimit-Remaining"] == "0"
    assert f"{BURST} requests per 300 s" in r.json()["detail"]
    # Refused before anything was kept; another key of the account has a count of its own.
    assert intakes_of(b) == BURST
    other: Brokerage = brokerage_factory()
    assert register(one, other, "other-key@example.com").status_code == 202


def test_two_api_processes_share_the_count_of_a_key(limited_apis: tuple[str, str], brokerage_factory: Any) -> None:
    one, two = limited_apis
    b: Brokerage = brokerage_factory()
    answers = [register(base, b, f"shared{i}@example.com").status_code for i, base in enumerate([one, two, one])]
    assert answers == [202] * BURST
    r = register(two, b, "shared-last@example.com")
    assert r.status_code == 429, r.text
    assert intakes_of(b) == BURST


def test_failed_authentications_from_one_address_are_limited(
    limited_apis: tuple[str, str], brokerage_factory: Any
) -> None:
    one, two = limited_apis
    b: Brokerage = brokerage_factory()
    address = {"X-Forwarded-For": another_address()}
    wrong = {**address, "Authorization": f"Bearer not-a-key-{uuid.uuid4().hex}"}
    for base in (one, two, one):
        r = httpx.get(f"{base}/v1/leads", headers=wrong, timeout=30)
        assert r.status_code == 401, r.text
    r = httpx.get(f"{two}/v1/leads", headers=wrong, timeout=30)
    assert r.status_code == 429, r.text
    assert int(r.headers["Retry-After"]) >= 1
    assert "failed authentications" in r.json()["detail"]
    # The address is refused whatever it presents; another address is not.
    assert register(one, b, "blocked@example.com", headers=address).status_code == 429
    assert register(one, b, "elsewhere@example.com", headers={"X-Forwarded-For": another_address()}).status_code == 202


def test_with_the_limiters_redis_unreachable_requests_are_accepted_and_stored(
    pipeline_env: dict[str, str], brokerage_factory: Any, tmp_path: Path
) -> None:
    env = {**pipeline_env, **LIMITED, "LEADRELAY_RATE_LIMIT_STORAGE_URL": f"redis://127.0.0.1:{free_port()}/0"}
    b: Brokerage = brokerage_factory()
    with api_server(env, tmp_path / "api.log") as base:
        answers = [register(base, b, f"unlimited{i}@example.com") for i in range(BURST + 2)]
        assert [r.status_code for r in answers] == [202] * (BURST + 2), answers[-1].text
        assert all("X-RateLimit-Limit" not in r.headers for r in answers)
        for r in answers:
            assert b.wait_done(r.json()["intake_id"])["status"] == "done"
        unchecked = httpx.get(f"{base}/metrics", timeout=30).text
    assert f"leadrelay_rate_limit_unchecked_total {float(BURST + 2)}" in unchecked
    warnings = [line for line in (tmp_path / "api.log").read_text().splitlines() if "ratelimit.unavailable" in line]
    assert warnings


def test_leadrelay_api_serves_on_uvloop(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    """``leadrelay api`` leaves uvicorn's event loop on "auto", which takes uvloop when it is installed
    (``uvicorn[standard]``): the serving process has it loaded. HTTP stays on h11 (``leadrelay.cli``)."""
    port = free_port()
    with api_server(pipeline_env, tmp_path / "api.log", port=port):
        command = ["-m", "leadrelay", "api", "--port", str(port)]
        pids = [
            p.name
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and (p / "cmdline").exists() and _cmdline(p)[1:] == command
        ]
        assert len(pids) == 1, pids
        libraries = Path(f"/proc/{pids[0]}/maps").read_text()
    assert "/uvloop/" in libraries


def _cmdline(proc: Path) -> list[str]:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def limiter_commands(pipeline_env: dict[str, str], request: Any) -> list[str]:
    """The commands the API processes send Redis about the rate limit while ``request()`` is answered, as
    Redis's MONITOR shows them: one line per round trip (the commands a script runs inside Redis are shown
    apart, marked ``lua``, and left out here)."""
    marker = f"limiter-commands-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(REDIS_URL)
    with client.monitor() as monitor:
        client.ping()  # MONITOR streams from here on
        request()
        client.echo(marker)  # after the answer, so every command of the request is before it in the stream
        lines = []
        while marker not in (command := monitor.next_command())["command"]:
            if command["client_type"] != "lua":
                lines.append(str(command["command"]))
    client.close()
    prefix = f"{pipeline_env['LEADRELAY_QUEUE_PREFIX']}ratelimit"
    return [line for line in lines if prefix in line]


def test_a_keyed_request_costs_the_limiter_one_round_trip_to_redis(
    limited_apis: tuple[str, str], pipeline_env: dict[str, str], brokerage_factory: Any
) -> None:
    one, _ = limited_apis
    b: Brokerage = brokerage_factory()
    answers: list[httpx.Response] = []
    commands = limiter_commands(pipeline_env, lambda: answers.append(register(one, b, "one-trip@example.com")))
    assert answers[0].status_code == 202, answers[0].text
    assert answers[0].headers["X-RateLimit-Remaining"] == str(BURST - 1)
    # The credential's count, and the headers from what that one command answered; the address has had no
    # 401, so its failures are not read.
    assert len(commands) == 1, commands


# -- URLs in answers ----------------------------------------------------------------------------------


def test_status_urls_are_on_the_public_base_url_whatever_the_host_header(
    api: str, pipeline_env: dict[str, str], brokerage_factory: Any
) -> None:
    public = pipeline_env["LEADRELAY_PUBLIC_BASE_URL"]
    forged = {"Host": "attacker.example"}
    b: Brokerage = brokerage_factory()
    intake = register(api, b, "forged-host@example.com", headers=forged)
    assert intake.status_code == 202, intake.text
    assert intake.json()["status_url"] == f"{public}/v1/intake/{intake.json()['intake_id']}"
    assert intake.headers["Location"] == intake.json()["status_url"]

    olivia = {"Authorization": f"Bearer tok-olivia-{b.s}", **forged}
    files = {"file": ("one.csv", "email,first_name\nforged@example.com,Forged\n", "text/csv")}
    upload = httpx.post(f"{api}/v1/imports", data={"owner": "co"}, files=files, headers=olivia, timeout=30)
    assert upload.status_code == 202, upload.text
    assert upload.json()["status_url"] == f"{public}/v1/imports/{upload.json()['import_id']}"
    assert upload.headers["Location"] == upload.json()["status_url"]

    lead_id = b.wait_done(intake.json()["intake_id"])["lead_id"]
    body = {"action": "share", "lead_ids": [lead_id], "user_id": "bob", "permission": "view"}
    job = httpx.post(f"{api}/v1/leads/bulk", json=body, headers=olivia, timeout=30)
    assert job.status_code == 202, job.text
    assert job.json()["status_url"] == f"{public}/v1/jobs/{job.json()['job_id']}"
    assert job.headers["Location"] == job.json()["status_url"]
