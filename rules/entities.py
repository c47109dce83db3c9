"""Plain values describing the organisation, built by the repositories for the rules to decide over."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    COMPANY = "company"
    OFFICE = "office"
    TEAM = "team"
    AGENT = "agent"


@dataclass(frozen=True)
class EntityRef:
    id: int
    slug: str
    kind: Kind
    name: str
    parent: EntityRef | None = None  # an office's company


@dataclass(frozen=True)
class AgentState:
    """An agent as routing sees it, relative to one routing entity."""

    id: int
    slug: str
    name: str
    active: bool = True
    paused: bool = False
    connected: bool = True

    @property
    def ineligible_reason(self) -> str | None:
        if not self.active:
            return "inactive"
        if self.paused:
            return "paused"
        if not self.connected:
            return "not connected to the routing entity"
        return None
