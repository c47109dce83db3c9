"""The API's HTTP edges on a real uvicorn: body limits that hold for chunked bodies too, the rate limit per
credential shared by every API process, and the URLs an answer gives."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.client import Brokerage
from tests.support.processes import api_server

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
