"""Org files for tests: each test gets its own account, domains and keys, so tests share the
database and the workers without seeing each other's data."""

from __future__ import annotations

import itertools
import os
from typing import Any

_counter = itertools.count(1)


def unique_suffix() -> str:
    return f"{os.getpid()}x{next(_counter)}"


def brokerage(*, duplication: bool = True, suffix: str | None = None) -> dict[str, Any]:
    """A company with an office, a team and four agents, and a user token for each person.

    Domains: ``co-S.test`` (company), ``dt.co-S.test`` (office downtown), ``team-S.test`` (team
    sunrise), ``john.co-S.test`` (agent john). Keys: intake ``key-S``; connections ``conn-john-S`` (agent) and
    ``conn-sunrise-S`` (team); tokens ``tok-<user>-S``."""
    s = suffix or unique_suffix()
    return {
        "account": f"acct-{s}",
        "name": f"Brokerage {s}",
        "duplication": duplication,
        "intake_keys": [f"key-{s}"],
        "entities": [
            {"id": "co", "kind": "company", "name": "Demo Realty", "domains": [f"co-{s}.test"]},
            {"id": "downtown", "kind": "office", "parent": "co", "name": "Downtown", "domains": [f"dt.co-{s}.test"]},
            {
                "id": "sunrise",
                "kind": "team",
                "name": "Sunrise Team",
                "domains": [f"team-{s}.test"],
                "admins": ["tara"],
            },
            {
                "id": "john",
                "kind": "agent",
                "name": "John Smith",
                "email": "john@co.test",
                "office": "downtown",
                "teams": ["sunrise"],
                "domains": [f"john.co-{s}.test"],
            },
            {"id": "jill", "kind": "agent", "name": "Jill Jones", "email": "jill@co.test", "office": "downtown"},
            {"id": "bob", "kind": "agent", "name": "Bob Brown", "email": "bob@co.test", "office": "downtown"},
            {"id": "tara", "kind": "agent", "name": "Tara Team", "email": "tara@co.test", "teams": ["sunrise"]},
        ],
        "users": [
            {
                "id": "olivia",
                "name": "Olivia Owner",
                "email": "olivia@co.test",
                "admin_of": ["co"],
                "token": f"tok-olivia-{s}",
            },
            {
                "id": "oscar",
                "name": "Oscar Office",
                "email": "oscar@co.test",
                "admin_of": ["downtown"],
                "token": f"tok-oscar-{s}",
            },
            {"id": "john", "token": f"tok-john-{s}"},
            {"id": "jill", "token": f"tok-jill-{s}"},
            {"id": "bob", "token": f"tok-bob-{s}"},
            {"id": "tara", "token": f"tok-tara-{s}"},
        ],
        "api_connections": [
            {"id": "zillow-john", "provider": "zillow", "entity": "john", "key": f"conn-john-{s}"},
            {"id": "rdc-sunrise", "provider": "realtor_com", "entity": "sunrise", "key": f"conn-sunrise-{s}"},
        ],
        "routing": [
            {
                "entity": "co",
                "rules": [
                    {"name": "Luxury", "when": {"price_min": 1_000_000}, "agents": ["john", "jill"]},
                    {"name": "Everyone", "agents": "connected"},
                ],
            },
            {"entity": "downtown", "rules": [{"name": "Downtown round robin", "agents": ["john", "jill", "bob"]}]},
        ],
    }


def suffix_of(org: dict[str, Any]) -> str:
    return str(org["account"]).removeprefix("acct-")
