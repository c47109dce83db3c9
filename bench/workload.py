"""The requests of the registration scenarios, built inside locust (``bench/locustfile.py``).

``params``: ``suffix`` (the org's, ``tests.support.orgs.brokerage``), ``tag`` (new emails are unique
to a run), ``preloaded`` (how many leads ``bench.preload`` made) and ``repeat_every`` (every n-th
signup is a person who is already a lead of that site's owner: a repeat signup, D4).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from bench.load import Request

# The sites a signup lands on, and so its owner (O2-O4): the company, the office, an agent, a team.
SITES = ("co", "downtown", "john", "sunrise")
LUXURY_EVERY = 5  # one signup in five asks over 1,000,000, the company's "Luxury" rule


def host(site: str, suffix: str) -> str:
    return {"co": f"co-{suffix}.test", "downtown": f"dt.co-{suffix}.test", "sunrise": f"team-{suffix}.test"}.get(
        site, f"{site}.co-{suffix}.test"
    )


def signup(i: int, params: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The i-th signup's body and key."""
    preloaded, every = int(params.get("preloaded", 0)), int(params.get("repeat_every", 0))
    if preloaded and every and i % every == every - 1:
        j = (i * 7919) % preloaded  # a preloaded lead, on its owner's site (bench.preload deals them the same way)
        email, site = f"pre{j}@example.com", SITES[j % len(SITES)]
    else:
        email, site = f"{params['tag']}-{i}@example.com", SITES[i % len(SITES)]
    body = {
        "page_url": f"https://{host(site, params['suffix'])}/homes",
        "email": email,
        "first_name": "Bench",
        "last_name": f"Lead{i}",
        "kind": "site",
        "price_min": 1_200_000 if i % LUXURY_EVERY == 0 else 300_000,
    }
    return body, f"{params['tag']}-{i}"


def registration(i: int, params: Mapping[str, Any]) -> Request:
    body, key = signup(i, params)
    return Request(
        name="registration",
        path="/v1/intake/registrations",
        headers={
            "Authorization": f"Bearer key-{params['suffix']}",
            "Content-Type": "application/json",
            "Idempotency-Key": key,
        },
        body=json.dumps(body).encode(),
        key=key,
    )


def noop(i: int, params: Mapping[str, Any]) -> Request:
    """The baseline: the same body and headers to the no-op endpoint."""
    r = registration(i, params)
    return Request(name="noop", path="/v1/bench/noop", headers=r.headers, body=r.body, key=r.key)
