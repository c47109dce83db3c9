"""Who owns a lead, and whose routing assigns it, from where it came (O1-O5, O9)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from rules.entities import EntityRef, Kind

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(frozen=True)
class Ownership:
    owner: EntityRef
    # The entity whose routing rules choose the assignee; None when the owner is an agent (it is the assignee).
    routing_entity: EntityRef | None
    assignee: EntityRef | None
    rule: str
    reason: str

    def owner_assigned(self) -> tuple[str, dict[str, Any]]:
        """The ``routed`` timeline event (summary, data) when no rule runs: the owner agent is the
        assignee (O2, O5, an agent's import)."""
        assert self.assignee is not None, "only an agent owner is its own assignee"
        return (
            f"Assigned to {self.assignee.name} ({self.rule}: the owner is the assignee)",
            {"rule": None, "agent": self.assignee.slug, "skipped": [], "explanation": self.reason},
        )


@dataclass(frozen=True)
class Unclaimed:
    """O9: no entity claims the source. The intake is kept, rejected, and can be replayed later."""

    reason: str


def host_of(page_url: str) -> str:
    """The host a page URL was served from, lower-case, without port or trailing dot."""
    url = page_url.strip()
    if not _SCHEME.match(url) and not url.startswith("//"):
        url = "//" + url
    return (urlsplit(url).hostname or "").rstrip(".").lower()


def candidate_hosts(host: str) -> list[str]:
    """The host and every parent domain with at least two labels, most specific first:
    ``a.b.example.com`` -> ``a.b.example.com``, ``b.example.com``, ``example.com``."""
    labels = host.split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)] or ([host] if host else [])


def owner_for_entity(entity: EntityRef, rule_hint: str) -> Ownership:
    """O2-O4 given the entity that claims the source."""
    if entity.kind is Kind.AGENT:
        return Ownership(
            entity, None, entity, "O2", f"{rule_hint} belongs to agent {entity.slug}: the agent owns and is assigned"
        )
    if entity.kind is Kind.TEAM:
        return Ownership(
            entity,
            entity,
            None,
            "O4",
            f"{rule_hint} belongs to team {entity.slug}: the team owns, team routing assigns",
        )
    if entity.kind is Kind.OFFICE:
        company = entity.parent
        if company is None:
            # An office outside a company has nobody above it to own its site's leads; it owns them itself.
            return Ownership(
                entity, entity, None, "O3", f"{rule_hint} belongs to office {entity.slug} (no company): the office owns"
            )
        return Ownership(
            company,
            entity,
            None,
            "O3",
            f"{rule_hint} belongs to office {entity.slug}: company {company.slug} owns, the office's routing assigns",
        )
    return Ownership(
        entity,
        entity,
        None,
        "O3",
        f"{rule_hint} belongs to company {entity.slug}: the company owns, its routing assigns",
    )


def decide_site_owner(page_url: str, claims: Mapping[str, EntityRef]) -> Ownership | Unclaimed:
    """O1-O4, O9 for a registration: the most specific registered domain of the page's host decides.

    ``claims`` maps registered hosts (any of ``candidate_hosts``) to the entity that registered them.
    """
    host = host_of(page_url)
    if not host:
        return Unclaimed(f"O9: page_url {page_url!r} has no host")
    for candidate in candidate_hosts(host):
        entity = claims.get(candidate)
        if entity is not None:
            return owner_for_entity(entity, f"site {candidate}")
    return Unclaimed(
        f"O9: no entity of this account claims the host {host!r}; register the domain and replay the intake"
    )


def decide_connection_owner(entity: EntityRef, connection: str) -> Ownership:
    """O4, O5: the API connection alone decides the owner, whatever the payload claims.

    An agent connection: the agent owns and is assigned (O5). A team connection: the team owns, team
    routing assigns (O4). An office connection: the office owns (O3: an office owns leads by its
    own connections) and routes. A company connection: the company owns and routes."""
    return _owned_by_source(entity, f"API connection {connection} of {entity.kind.value} {entity.slug}", "O5")


def decide_import_owner(entity: EntityRef, filename: str) -> Ownership:
    """O1, O4: the import's entity owns every lead it makes. An agent is also the assignee; a team,
    an office or a company routes them by its own rules (O3: an office owns leads by its own imports)."""
    return _owned_by_source(entity, f"import {filename} for {entity.kind.value} {entity.slug}", "O1")


def _owned_by_source(entity: EntityRef, hint: str, agent_rule: str) -> Ownership:
    if entity.kind is Kind.AGENT:
        return Ownership(entity, None, entity, agent_rule, f"{hint}: the agent owns and is assigned")
    if entity.kind is Kind.TEAM:
        return Ownership(entity, entity, None, "O4", f"{hint}: the team owns, team routing assigns")
    return Ownership(entity, entity, None, "O1", f"{hint}: it owns the lead and its routing assigns")


def decide_number_owner(entity: EntityRef, number: str) -> Ownership:
    """O6: a text (or call) to a smart number from an unknown phone makes a lead owned by the number's
    entity: an agent's number, the agent owns and is assigned; a team's, an office's or a company's,
    it owns and its routing assigns (a company number: company-owned, routed round robin)."""
    decided = _owned_by_source(entity, f"smart number {number} of {entity.kind.value} {entity.slug}", "O6")
    return replace(decided, rule="O6")
