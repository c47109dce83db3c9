"""The fault-free baseline every scenario is measured against: the workers' capacity fed through the
broker, then registrations posted through the API at the scenarios' pace. It must drain with one lead per
person, round robin within 1, and no task retried: a deadlock between two signups of one company is a
retry (two with this suite's settings, then the intake is dead) and makes every concurrent signup of the
company wait out PostgreSQL's deadlock_timeout."""

from __future__ import annotations

import pytest

from tests.chaos.conftest import Baseline

pytestmark = pytest.mark.chaos


def test_fault_free_registrations_drain_once_each_with_no_retries(baseline: Baseline) -> None:
    f = baseline.figures
    assert not baseline.problems, baseline.problems
    assert f["lost"] == 0
    assert f["leads"] == f["accepted"] == f["posted"]
    assert f["duplicates"] == 0
    assert f["rr_spread"] <= 1, f["agents"]
    assert f["deadlock_retries"] == 0, f"{f['deadlock_retries']} intake tasks retried after a deadlock"
    assert f["intake_retries"] == 0
