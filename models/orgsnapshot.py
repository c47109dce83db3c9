"""What a worker keeps of an account's organisation between intakes: domain claims, API connection
owners, each routing entity's rules (members, agent states, the team admins of its default), entities'
slugs, names and mail addresses, and smart numbers, as immutable values, read again only when the
account's ``org_version`` moved.

Routing cursors are no part of it: they move with every lead, and are read under their lock each time
(:meth:`models.repositories.OrgRepository.routing_rules`).

The cache is per process. A forked worker child starts with whatever its parent held; every entry is
keyed by (account, version), so an entry that went stale before or after the fork is never used: the
next intake of that account reads the newer version and loads the organisation again."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from rules.entities import EntityRef
from rules.routing import Rule
from rules.signups import Contact
from rules.webhooks import Subscriptions

# Accounts whose organisation one process keeps; the least recently used is dropped past this.
SNAPSHOT_ACCOUNTS = 256


@dataclass(frozen=True)
class RoutingSnapshot:
    """A routing entity's ordered rules and its default rule, every cursor 0 (the caller reads them)."""

    rules: tuple[Rule, ...]
    default: Rule


@dataclass(frozen=True)
class OrgSnapshot:
    account_id: int
    version: int
    domains: Mapping[str, EntityRef]
    # connection id -> (connection slug, the entity it belongs to); revoked connections too.
    connections: Mapping[int, tuple[str, EntityRef]]
    # routing entity id (every entity that is not an agent) -> its rules
    routing: Mapping[int, RoutingSnapshot]
    # entity id -> the name and mail address a new lead's mail uses (models.signups fills it)
    contacts: Mapping[int, Contact] = field(default_factory=dict)
    # entity id -> its slug (a text's timeline names its agent by it)
    slugs: Mapping[int, str] = field(default_factory=dict)
    # smart number (E.164) -> the entity it belongs to (an inbound text's number: O6's owner, O9 when absent)
    smart_numbers: Mapping[str, int] = field(default_factory=dict)
    # the account's active webhook endpoints by the events they want (a change bumps the org version)
    webhooks: Subscriptions = field(default_factory=Subscriptions)


class SnapshotCache:
    """A bounded LRU of :class:`OrgSnapshot` by account, each valid for one ``org_version``."""

    def __init__(self, size: int = SNAPSHOT_ACCOUNTS) -> None:
        self.size = size
        self._entries: OrderedDict[int, OrgSnapshot] = OrderedDict()
        # Celery's thread pools run tasks of one process at once.
        self._lock = threading.Lock()

    def get(self, account_id: int, version: int, load: Callable[[], OrgSnapshot]) -> OrgSnapshot:
        """The account's snapshot at ``version``, loaded with ``load`` when the one kept is of another version."""
        with self._lock:
            kept = self._entries.get(account_id)
            if kept is not None and kept.version == version:
                self._entries.move_to_end(account_id)
                return kept
        loaded = load()
        with self._lock:
            kept = self._entries.get(account_id)
            if kept is not None and kept.version > loaded.version:
                return loaded  # a task that read a newer version meanwhile keeps its snapshot
            self._entries[account_id] = loaded
            self._entries.move_to_end(account_id)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return loaded

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


# This process's snapshots (the workers read them through workers.intakes).
SNAPSHOTS = SnapshotCache()
