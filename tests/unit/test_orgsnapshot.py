"""The per-process cache of organisations: one entry per account, valid for one org version, bounded."""

from __future__ import annotations

from models.orgsnapshot import OrgSnapshot, SnapshotCache


def snapshot(account_id: int, version: int) -> OrgSnapshot:
    return OrgSnapshot(account_id, version, {}, {}, {})


def test_an_account_is_loaded_once_per_version() -> None:
    cache, loads = SnapshotCache(), []

    def load(version: int) -> OrgSnapshot:
        loads.append(version)
        return snapshot(1, version)

    for version in (3, 3, 4, 4):
        assert cache.get(1, version, lambda v=version: load(v)).version == version  # type: ignore[misc]
    assert loads == [3, 4]


def test_the_least_recently_used_account_is_dropped_past_the_size() -> None:
    cache, loads = SnapshotCache(size=2), []

    def get(account_id: int) -> None:
        cache.get(account_id, 0, lambda: loads.append(account_id) or snapshot(account_id, 0))  # type: ignore[func-returns-value]

    for account_id in (1, 2, 1, 3, 1, 2):
        get(account_id)
    assert loads == [1, 2, 3, 2]  # 2 was the least recently used when 3 came


def test_a_task_that_read_an_older_version_does_not_replace_a_newer_snapshot() -> None:
    cache = SnapshotCache()
    cache.get(1, 5, lambda: snapshot(1, 5))
    assert cache.get(1, 4, lambda: snapshot(1, 4)).version == 4  # that task uses what it loaded
    assert cache.get(1, 5, lambda: snapshot(1, 99)).version == 5  # the newer one is still kept
