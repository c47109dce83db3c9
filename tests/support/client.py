"""A test's view of one account: its intake key and its users, over real HTTP."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from tests.support.orgs import suffix_of
from tests.support.processes import wait_for


class Brokerage:
    """One test's account, with clients for its intake key and its users."""

    def __init__(self, base: str, org: dict[str, Any]) -> None:
        self.base, self.org, self.s = base, org, suffix_of(org)
        self.site = httpx.Client(base_url=base, headers={"Authorization": f"Bearer key-{self.s}"}, timeout=30)

    def host(self, name: str) -> str:
        return {
            "co": f"co-{self.s}.test",
            "downtown": f"dt.co-{self.s}.test",
            "sunrise": f"team-{self.s}.test",
            "john": f"john.co-{self.s}.test",
        }[name]

    def user(self, user: str) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer tok-{user}-{self.s}"}, timeout=30)

    def register(
        self,
        site: str,
        email: str | None = "ann@example.com",
        *,
        path: str = "/",
        headers: dict[str, str] | None = None,
        **fields: Any,
    ) -> httpx.Response:
        body = {
            "page_url": f"https://{self.host(site) if site in ('co', 'downtown', 'sunrise', 'john') else site}{path}",
            **fields,
        }
        if email is not None:
            body["email"] = email
        return self.site.post("/v1/intake/registrations", json=body, headers=headers or {})

    def wait_done(self, intake_id: str, timeout: float = 60) -> dict[str, Any]:
        result: dict[str, Any] = {}

        def final() -> bool:
            result.update(self.site.get(f"/v1/intake/{intake_id}").json())
            return result["status"] in ("done", "rejected", "dead")

        wait_for(final, timeout=timeout, interval=0.05, what=f"intake {intake_id}")
        return result

    def register_and_wait(self, site: str, email: str | None = "ann@example.com", **fields: Any) -> dict[str, Any]:
        r = self.register(site, email, **fields)
        assert r.status_code == 202, r.text
        return self.wait_done(r.json()["intake_id"])

    def lead(self, lead_id: str, as_user: str = "olivia") -> dict[str, Any]:
        with self.user(as_user) as c:
            r = c.get(f"/v1/leads/{lead_id}")
            assert r.status_code == 200, r.text
            return dict(r.json())

    def timeline(self, lead_id: str, as_user: str = "olivia") -> list[dict[str, Any]]:
        with self.user(as_user) as c:
            r = c.get(f"/v1/leads/{lead_id}/timeline")
            assert r.status_code == 200, r.text
            return list(r.json()["items"])


async def post_all(b: Brokerage, bodies: list[dict[str, Any]], *, parallel: int) -> list[str]:
    """Every body posted, ``parallel`` requests in flight at a time; the intake ids."""
    limits = httpx.Limits(max_connections=parallel)
    sem = asyncio.Semaphore(parallel)
    async with httpx.AsyncClient(base_url=b.base, headers=dict(b.site.headers), timeout=60, limits=limits) as client:

        async def post(body: dict[str, Any]) -> str:
            # As a careful client does: a key per signup, so resending after a dropped connection
            # (the server may have kept the first) answers with the first intake and adds nothing.
            headers = {"Idempotency-Key": str(uuid.uuid4())}
            async with sem:
                for attempt in range(3):
                    try:
                        r = await client.post("/v1/intake/registrations", json=body, headers=headers)
                        break
                    except httpx.TransportError:
                        if attempt == 2:
                            raise
                assert r.status_code == 202, r.text
                return str(r.json()["intake_id"])

        return await asyncio.gather(*(post(body) for body in bodies))
