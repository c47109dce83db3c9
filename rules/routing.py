"""Lead routing (A1, A2, A7): ordered rules, first match wins, round robin or weighted, with the reasons.

The caller locks the cursors, calls :func:`route`, and writes back ``Decision.cursor`` in the same
transaction as the lead, so a rolled-back task rewinds the cursor and never skips an agent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rules.entities import AgentState
from rules.events import LeadSignup

STRATEGIES = ("round_robin", "weighted")
CONDITION_KEYS = ("price_min", "price_max", "zips", "lead_types", "source_kinds")


@dataclass(frozen=True)
class Member:
    agent: AgentState
    weight: int = 1


@dataclass(frozen=True)
class Rule:
    """A routing rule. ``id`` None is the routing entity's implicit default rule."""

    id: int | None
    name: str
    members: tuple[Member, ...]
    conditions: dict[str, Any] = field(default_factory=dict)
    strategy: str = "round_robin"
    cursor: int = 0
    campaign: str | None = None


@dataclass(frozen=True)
class Skip:
    agent: str
    reason: str


@dataclass(frozen=True)
class Tried:
    rule: str
    failed: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    agent: AgentState | None
    rule: Rule | None
    cursor: int | None  # the rule's cursor after this lead; None when no rule moved
    skipped: tuple[Skip, ...]
    tried: tuple[Tried, ...]
    explanation: str

    def summary(self, routing_entity: str, *, in_pond: bool = False) -> str:
        """The timeline line for this decision (A7); the details are in :meth:`as_data`."""
        if self.agent is not None and self.rule is not None:
            return f"Assigned to {self.agent.name} by {routing_entity}'s rule {self.rule.name!r}"
        return "Not assigned: " + self.explanation + (" (in the team pond)" if in_pond else "")

    def as_data(self) -> dict[str, Any]:
        """The decision as the timeline (A7) and the simulate endpoint show it."""
        return {
            "rule": self.rule.name if self.rule else None,
            "rule_id": self.rule.id if self.rule else None,
            "strategy": self.rule.strategy if self.rule else None,
            "agent": self.agent.slug if self.agent else None,
            "skipped": [{"agent": s.agent, "reason": s.reason} for s in self.skipped],
            "rules_not_matched": [{"rule": t.rule, "failed": list(t.failed)} for t in self.tried],
            "explanation": self.explanation,
        }


def failed_conditions(conditions: dict[str, Any], lead: LeadSignup) -> tuple[str, ...]:
    """The conditions of a rule that the lead does not meet (all must hold; an unknown value meets none)."""
    if not conditions:
        return ()
    failed: list[str] = []
    price = lead.price
    if "price_min" in conditions and (price is None or price < conditions["price_min"]):
        failed.append("price_min")
    if "price_max" in conditions and (price is None or price > conditions["price_max"]):
        failed.append("price_max")
    if "zips" in conditions and lead.zip not in conditions["zips"]:
        failed.append("zips")
    if "lead_types" in conditions and lead.lead_type not in conditions["lead_types"]:
        failed.append("lead_types")
    if "source_kinds" in conditions and lead.source_kind not in conditions["source_kinds"]:
        failed.append("source_kinds")
    return tuple(failed)


def weighted_sequence(members: Sequence[Member]) -> list[int]:
    """Smooth weighted round robin (as nginx does it): member indexes in an order where an agent of
    weight 3 among weights (3, 1) gets 3 of every 4 leads, spread out rather than in a run."""
    total = sum(m.weight for m in members)
    current = [0] * len(members)
    order: list[int] = []
    for _ in range(total):
        for i, m in enumerate(members):
            current[i] += m.weight
        best = max(range(len(members)), key=lambda i: current[i])
        current[best] -= total
        order.append(best)
    return order


def next_agent(rule: Rule) -> tuple[AgentState | None, int, tuple[Skip, ...]]:
    """The next eligible member at the rule's cursor, the cursor after it, and who was passed over.

    Ineligible agents (inactive, paused, disconnected) are skipped but keep their place in the
    order: the cursor counts positions, so they come round again once eligible."""
    if rule.strategy != "weighted" and rule.members:
        # Round robin, the agent at the cursor eligible: the usual case, without building the order.
        agent = rule.members[rule.cursor % len(rule.members)].agent
        if agent.ineligible_reason is None:
            return agent, rule.cursor + 1, ()
    if rule.strategy == "weighted":
        order = weighted_sequence([m for m in rule.members if m.weight > 0])
        members = [m for m in rule.members if m.weight > 0]
        slots = [members[i].agent for i in order]
    else:
        slots = [m.agent for m in rule.members]
    if not slots:
        return None, rule.cursor, ()
    skipped: dict[str, Skip] = {}
    for step in range(len(slots)):
        agent = slots[(rule.cursor + step) % len(slots)]
        reason = agent.ineligible_reason
        if reason is None:
            return agent, rule.cursor + step + 1, tuple(skipped.values())
        skipped.setdefault(agent.slug, Skip(agent.slug, reason))
    return None, rule.cursor, tuple(skipped.values())


def route(rules: Sequence[Rule], default: Rule, lead: LeadSignup) -> Decision:
    """A2: the first rule whose conditions hold and that has an eligible agent assigns the lead;
    a rule that matches but whose agents are all skipped passes the lead on (recorded), and the
    routing entity's default rule comes last. No eligible agent anywhere leaves the lead unassigned."""
    return _route([*rules, default], lead)


def _route(in_order: Sequence[Rule], lead: LeadSignup) -> Decision:
    """:func:`route` over the rules and the default rule, last, as one list."""
    tried: list[Tried] = []
    skipped: dict[str, Skip] = {}  # an agent skipped by two rules is reported once
    for rule in in_order:
        failed = failed_conditions(rule.conditions, lead)
        if failed:
            tried.append(Tried(rule.name, failed))
            continue
        agent, cursor, passed = next_agent(rule)
        for skip in passed:
            skipped.setdefault(skip.agent, skip)
        if agent is not None:
            why = f"rule {rule.name!r} matched; {rule.strategy} chose {agent.slug}"
            if passed:
                why += " after skipping " + ", ".join(f"{s.agent} ({s.reason})" for s in passed)
            return Decision(agent, rule, cursor, tuple(skipped.values()), tuple(tried), why)
        tried.append(Tried(rule.name, ("no eligible agent",)))
    return Decision(
        None, None, None, tuple(skipped.values()), tuple(tried), "no rule had an eligible agent: the lead is unassigned"
    )


def with_cursor(rule: Rule, cursor: int) -> Rule:
    """``rule`` with its cursor at ``cursor``: ``dataclasses.replace`` without its look at the fields on every
    call (a router makes one per lead it routes; an import, 100,000)."""
    return Rule(rule.id, rule.name, rule.members, rule.conditions, rule.strategy, cursor, rule.campaign)


class Router:
    """Routes one entity's leads in order, each seeing the cursors the ones before it moved: exactly what
    routing them one by one would give. Starts from the rules as read (cursors locked by the caller)."""

    def __init__(self, rules: Sequence[Rule], default: Rule) -> None:
        self.before: tuple[Rule, ...] = (*rules, default)
        self.current: list[Rule] = list(self.before)

    @property
    def rules(self) -> list[Rule]:
        return self.current[:-1]

    @property
    def default(self) -> Rule:
        return self.current[-1]

    def route(self, lead: LeadSignup) -> Decision:
        current = self.current
        decision = _route(current, lead)
        chosen = decision.rule
        if chosen is not None and decision.cursor is not None:
            for i, rule in enumerate(current):
                if rule is chosen:
                    current[i] = with_cursor(chosen, decision.cursor)
                    break
        return decision

    def moves(self) -> list[tuple[Rule, int]]:
        """The rules whose cursor moved (as read), each with its cursor now: what the caller writes back."""
        return [(b, a.cursor) for b, a in zip(self.before, self.current, strict=True) if a.cursor != b.cursor]


def route_many(
    rules: Sequence[Rule], default: Rule, leads: Sequence[LeadSignup]
) -> tuple[list[Decision], list[Rule], Rule]:
    """:func:`route` for each lead in order (a :class:`Router`): existing leads routed again (T6, A5).
    Returns the decisions and the rules with their cursors after the last lead, to write back."""
    router = Router(rules, default)
    decisions = [router.route(lead) for lead in leads]
    return decisions, router.rules, router.default
