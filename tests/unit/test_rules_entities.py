"""A2, A7: which agents routing may choose, and the reason it gives for skipping the others."""

from __future__ import annotations

import dataclasses

import pytest

from rules.entities import AgentState, EntityRef, Kind


def agent(**flags: bool) -> AgentState:
    return AgentState(7, "john", "John Smith", **flags)


def test_A2_active_unpaused_connected_agent_is_eligible() -> None:
    assert agent().ineligible_reason is None


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        ({"active": False}, "inactive"),
        ({"paused": True}, "paused"),
        ({"connected": False}, "not connected to the routing entity"),
    ],
)
def test_A7_ineligible_agent_says_why(flags: dict[str, bool], reason: str) -> None:
    assert agent(**flags).ineligible_reason == reason


def test_A7_an_inactive_agent_is_reported_inactive_before_paused_or_disconnected() -> None:
    assert agent(active=False, paused=True, connected=False).ineligible_reason == "inactive"


def test_A7_a_paused_agent_is_reported_paused_before_disconnected() -> None:
    assert agent(paused=True, connected=False).ineligible_reason == "paused"


def test_O3_office_knows_its_company() -> None:
    company = EntityRef(1, "kv-realty", Kind.COMPANY, "KV Realty")
    office = EntityRef(2, "downtown", Kind.OFFICE, "Downtown", parent=company)
    assert office.parent is company
    assert Kind("office") is Kind.OFFICE
    assert office.kind == "office"


def test_O1_entities_are_immutable_values() -> None:
    company = EntityRef(1, "kv-realty", Kind.COMPANY, "KV Realty")
    assert company == EntityRef(1, "kv-realty", Kind.COMPANY, "KV Realty")
    assert {company: "owner"}[EntityRef(1, "kv-realty", Kind.COMPANY, "KV Realty")] == "owner"
    with pytest.raises(dataclasses.FrozenInstanceError):
        company.slug = "other"  # type: ignore[misc]
