"""The permission matrix: one row per (operation, actor, owner kind, relation to the lead)
with the expected outcome and the rule that decides it. ``tests/integration/test_permission_matrix.py``
runs every row through the HTTP API on PostgreSQL; ``docs/permissions.md`` is this table printed by
``python -m tests.support.permission_matrix`` (a unit test checks the file matches), so the
documentation cannot drift from the tests."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.orgs import brokerage

DOC = Path(__file__).resolve().parents[2] / "docs" / "permissions.md"

# The leads a row can act on: (owner, assignee, routed via). Every agent but pat is connected to the
# team sunrise or the office downtown as tests/support/orgs.py says; pat is private and hidden from
# the team (V1, T5).
SHAPES: dict[str, tuple[str, str | None, str | None]] = {
    "agent": ("john", "john", None),
    "private agent": ("pat", "pat", None),
    "company via office": ("co", "jill", "downtown"),
    "company, john's": ("co", "john", "downtown"),
    "company via company": ("co", "bob", "co"),
    "company, bob's": ("co", "bob", "downtown"),
    "office": ("downtown", "jill", "downtown"),
    "team": ("sunrise", "john", "sunrise"),
}

ACTORS = {
    "john": "agent (john)",
    "jill": "agent (jill)",
    "bob": "agent (bob)",
    "pat": "private agent (pat)",
    "uma": "user (uma)",
    "olivia": "company admin",
    "oscar": "office admin",
    "tara": "team admin",
    "stranger": "admin of another account",
}


@dataclass(frozen=True)
class Case:
    op: str
    actor: str  # a user slug of ACTORS
    shape: str  # a key of SHAPES (merge: the primary)
    relation: str
    expect: str  # "200", "204", "403", "404", "409", "422", "in export", "not in export"
    rule: str  # the rule this row checks
    detail_rule: str | None = None  # the rule the API names, when another rule is the one refusing (T2 -> T1)
    other: str | None = None  # merge: the other lead's shape
    shares: tuple[tuple[str, str], ...] = ()  # (user, permission) on the lead before the call
    body: dict[str, Any] = field(default_factory=dict)
    duplication: bool = True
    before: str | None = None  # a step taken first: "john gives it to sunrise"

    @property
    def owner_kind(self) -> str:
        return _kind(self.shape)

    @property
    def id(self) -> str:
        return f"{self.rule}-{self.op}-{self.actor}-{self.shape}-{self.expect}".replace(" ", "_").replace(",", "")


def C(op: str, actor: str, shape: str, relation: str, expect: str, rule: str, **kw: Any) -> Case:
    return Case(op, actor, shape, relation, expect, rule, **kw)


CASES: tuple[Case, ...] = (
    # Visibility (V1, V2, V4; T5)
    C("view", "john", "agent", "owner and assignee", "200", "V1"),
    C("view", "jill", "company via office", "assignee", "200", "V1"),
    C("view", "bob", "agent", "no relation", "404", "V1"),
    C("view", "uma", "agent", "shared with view", "200", "SH2", shares=(("uma", "view"),)),
    C("view", "oscar", "company via office", "admin of the office it was routed through", "200", "V1"),
    C("view", "oscar", "company via company", "routed by the company, not the office", "404", "V1"),
    C("view", "olivia", "office", "admin of the office's company", "200", "V1"),
    C("view", "tara", "agent", "admin of a team the owner agent is connected to", "200", "V1"),
    C("view", "tara", "private agent", "owner agent private and hidden from the team", "404", "T5"),
    C("view", "olivia", "private agent", "owner agent private and hidden", "404", "V1"),
    C("view", "stranger", "company via office", "another account", "404", "V4"),
    # Editing the contact (SH2, V2)
    C("edit", "uma", "agent", "shared with view", "403", "SH2", shares=(("uma", "view"),)),
    C("edit", "uma", "agent", "shared with edit", "200", "SH2", shares=(("uma", "edit"),)),
    C("edit", "olivia", "company via office", "owner's admin", "200", "V2"),
    C("edit", "pat", "private agent", "owner, private", "200", "V2"),
    C("edit", "tara", "agent", "team admin who only sees it", "403", "SH2"),
    C("edit", "stranger", "agent", "another account", "404", "V4"),
    # Sharing (SH1, SH3, SH5, SH6)
    C("share", "uma", "agent", "shared with view, shares on", "200", "SH1", shares=(("uma", "view"),)),
    C("share", "jill", "company via office", "assignee, not the owner", "200", "SH1"),
    C("share", "john", "agent", "owner, with a user of another account", "422", "SH5", body={"user_id": "stranger"}),
    C("share", "bob", "agent", "no relation", "404", "V1"),
    C("share", "john", "agent", "owner shares; a note and a mail", "200", "SH3"),
    C("unshare", "uma", "agent", "shared, removes another", "204", "SH6", shares=(("uma", "view"), ("tara", "view"))),
    C("unshare", "jill", "company via office", "assignee, not shared", "403", "SH6", shares=(("tara", "view"),)),
    C("unshare", "olivia", "company via office", "owner's admin", "204", "SH6", shares=(("tara", "view"),)),
    # Assignment and the pond (A3, A4, A6)
    C("assign", "tara", "team", "team admin, to a team agent", "200", "A3", body={"agent_id": "tara"}),
    C("assign", "tara", "team", "team admin, to an agent not on the team", "422", "A3", body={"agent_id": "bob"}),
    C("pond", "tara", "team", "team admin, to the team pond", "200", "A3"),
    C("assign", "tara", "agent", "team admin, agent-owned lead", "403", "A6", body={"agent_id": "tara"}),
    C("assign", "olivia", "agent", "company admin, agent-owned lead", "403", "A6", body={"agent_id": "jill"}),
    C(
        "assign",
        "olivia",
        "company via office",
        "owner's admin; the owner stays",
        "200",
        "A4",
        body={"agent_id": "bob"},
    ),
    C("pond", "olivia", "company via office", "a company lead has no pond", "422", "A3"),
    C("assign", "jill", "company via office", "assignee", "403", "A3", body={"agent_id": "bob"}),
    C(
        "assign",
        "oscar",
        "company via office",
        "admin of the office it was routed through",
        "200",
        "A3",
        body={"agent_id": "bob"},
    ),
    # Transfer (T1, T2, T6, SH5)
    C("transfer", "john", "agent", "owner", "200", "T1", body={"to": "co"}),
    C("transfer", "olivia", "agent", "company admin, agent-owned lead", "403", "T1", body={"to": "co"}),
    C("transfer", "jill", "company via office", "assignee of a company lead", "403", "T1", body={"to": "jill"}),
    C(
        "transfer",
        "olivia",
        "company via office",
        "owner's admin, to an agent (assigned to it)",
        "200",
        "T6",
        body={"to": "bob"},
    ),
    C("transfer", "tara", "team", "team admin, to an agent", "200", "T1", body={"to": "john"}),
    C("transfer", "oscar", "company via office", "office admin, company lead", "403", "T1", body={"to": "jill"}),
    C("transfer", "olivia", "office", "company admin, office lead", "200", "T1", body={"to": "co"}),
    C("transfer", "john", "agent", "owner, to an entity of another account", "422", "SH5", body={"to": "stranger-co"}),
    C(
        "transfer",
        "john",
        "agent",
        "gave it to the team, tries to take it back",
        "403",
        "T2",
        detail_rule="T1",
        body={"to": "john"},
        before="john transfers it to sunrise",
    ),
    # Archive and delete (X1-X4)
    C("archive", "jill", "company via office", "assignee", "200", "X2"),
    C("archive", "uma", "agent", "shared with edit", "403", "X2", shares=(("uma", "edit"),)),
    C("delete", "john", "agent", "owner", "204", "X1"),
    C("delete", "olivia", "company via office", "owner's admin", "204", "X1"),
    C("delete", "oscar", "company via office", "admin of the office it was routed through", "204", "X1"),
    C("delete", "oscar", "company via company", "office admin, routed elsewhere", "404", "V1"),
    C("delete", "jill", "company via office", "assignee of a company lead", "403", "X2"),
    C("delete", "john", "team", "assignee of a team lead", "403", "X2"),
    C("delete", "tara", "team", "team admin", "204", "X1"),
    C("delete", "uma", "agent", "shared with edit", "403", "X1", shares=(("uma", "edit"),)),
    C("delete", "john", "agent", "owner, duplication off", "403", "X3", duplication=False),
    C("delete", "olivia", "company via office", "owner's admin, duplication off", "204", "X3", duplication=False),
    C("delete", "john", "agent", "owner; then 404 (a tombstone stays)", "204", "X4"),
    # Unsubscribe (D8)
    C("unsubscribe", "jill", "company via office", "assignee, this lead only", "200", "D8"),
    C("unsubscribe", "uma", "agent", "shared with view", "403", "SH2", shares=(("uma", "view"),)),
    # Texting (SH4): in the owner's name, and the reply goes to whoever texted last (S1): an edit
    C("text", "uma", "agent", "shared with view", "403", "SH4", shares=(("uma", "view"),)),
    C("text", "uma", "agent", "shared with edit; sent in the owner's name", "202", "SH4", shares=(("uma", "edit"),)),
    C("text", "tara", "agent", "team admin who only sees it", "403", "SH4"),
    C("text", "jill", "company via office", "assignee", "202", "SH4"),
    C("text", "oscar", "company via office", "admin of the office it was routed through", "202", "SH4"),
    C("text", "bob", "agent", "no relation", "404", "V1"),
    # Merge (M1-M7): the shape is the primary, ``other`` the lead merged into it
    C(
        "merge",
        "john",
        "company, john's",
        "owns the other (agent) lead; the company keeps ownership",
        "200",
        "M1",
        other="agent",
    ),
    C(
        "merge",
        "john",
        "agent",
        "picks its own lead as primary over the company's",
        "409",
        "M3",
        other="company, john's",
    ),
    C("merge", "olivia", "company via office", "a company lead and a team lead", "409", "M2", other="team"),
    C(
        "merge",
        "olivia",
        "company via office",
        "admin, its leads assigned to two agents, no choice",
        "422",
        "M6",
        other="company, bob's",
    ),
    C(
        "merge",
        "olivia",
        "company via office",
        "admin, its leads assigned to two agents, chooses bob",
        "200",
        "M6",
        other="company, bob's",
        body={"assigned_agent_id": "bob"},
    ),
    C(
        "merge",
        "olivia",
        "agent",
        "company admin gives its lead to the agent's",
        "200",
        "M1",
        other="company via office",
    ),
    C("merge", "olivia", "company via office", "company admin, the agent's lead as other", "409", "M3", other="agent"),
    C("merge", "bob", "agent", "sees neither lead", "404", "V1", other="company via office"),
    C(
        "merge",
        "jill",
        "company via office",
        "same owner, assignee of both; the primary keeps its data",
        "200",
        "M4",
        other="company via office",
    ),
    C("merge", "jill", "company via office", "a company lead and an office lead", "409", "M2", other="office"),
    C(
        "merge",
        "uma",
        "company via office",
        "shared with view on both (same owner)",
        "403",
        "SH2",
        other="company, bob's",
        shares=(("uma", "view"),),
    ),
    C(
        "merge",
        "uma",
        "agent",
        "owns neither lead (two owners)",
        "403",
        "M1",
        other="company via office",
        shares=(("uma", "edit"),),
    ),
    C("preview", "olivia", "agent", "a preview changes nothing", "200", "M7", other="company via office"),
    # Export (V3, V4)
    C("export", "john", "agent", "owner", "in export", "V3"),
    C("export", "john", "company, john's", "assignee of a company lead", "in export", "V3"),
    C("export", "john", "team", "assignee of a team lead", "not in export", "V3"),
    C("export", "olivia", "company via office", "owner's admin", "in export", "V3"),
    C("export", "olivia", "agent", "company admin, agent-owned lead", "not in export", "V3"),
    C("export", "stranger", "company via office", "another account", "not in export", "V4"),
    # Leaving a team (A5, T5)
    C("leave", "tara", "team", "team admin takes john off the team", "200", "A5", body={"agent": "john"}),
    C("leave", "john", "team", "john leaves himself", "200", "A5", body={"agent": "john"}),
    C("leave", "olivia", "team", "company admin, not the team's", "403", "A5", body={"agent": "john"}),
    C("leave", "bob", "team", "not on the team", "404", "A5", body={"agent": "bob"}),
)


def matrix_org(*, duplication: bool) -> dict[str, Any]:
    """The test brokerage plus a private agent hidden from the team (pat) and a user who is neither
    an agent nor an admin (uma)."""
    org = brokerage(duplication=duplication)
    s = str(org["account"]).removeprefix("acct-")
    org["entities"].append(
        {
            "id": "pat",
            "kind": "agent",
            "name": "Pat Private",
            "email": "pat@co.test",
            "office": "downtown",
            "teams": ["sunrise"],
            "private": True,
            "hide_from_team": True,
        }
    )
    org["users"] += [
        {"id": "pat", "token": f"tok-pat-{s}"},
        {"id": "uma", "name": "Uma User", "email": "uma@co.test", "token": f"tok-uma-{s}"},
    ]
    return org


def render_markdown() -> str:
    rules = sorted(
        {c.rule for c in CASES}, key=lambda r: (r.rstrip("0123456789"), int(r.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ")))
    )
    lines = [
        "# Who may do what to a lead",
        "",
        "Generated from `tests/support/permission_matrix.py` by `python -m tests.support.permission_matrix`;",
        "`tests/integration/test_permission_matrix.py` runs every row through the HTTP API on PostgreSQL, and",
        "`tests/unit/test_permission_doc.py` fails if this file differs from the table. Each refusal names its",
        "rule by area and number (V visibility, SH sharing, T transfers, M merges, A assignment, X archive and delete).",
        "A refusal answers 403 (or 409 for a merge conflict, 422 for a bad target) with",
        "the rule in `detail`; a lead the caller cannot see is 404 for every operation (V1, V4).",
        "",
        "Actors (from the test brokerage): " + "; ".join(f"`{k}` = {v}" for k, v in ACTORS.items()) + ".",
        "",
        "| operation | actor | owner | relation to the lead | outcome | rule |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in CASES:
        owner = c.owner_kind + (f" + {_kind(c.other)}" if c.other else "")
        relation = c.relation + ("" if c.duplication else " (duplication off)")
        outcome = c.expect + (f" ({c.detail_rule})" if c.detail_rule else "")
        lines.append(f"| {c.op} | {ACTORS[c.actor]} | {owner} | {relation} | {outcome} | {c.rule} |")
    lines += ["", f"{len(CASES)} rows; rules covered: {', '.join(rules)}.", ""]
    return "\n".join(lines)


def _kind(shape: str) -> str:
    owner = SHAPES[shape][0]
    return {"co": "company", "downtown": "office", "sunrise": "team"}.get(owner, "agent")


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render_markdown())
    sys.stdout.write(f"wrote {DOC} ({len(CASES)} rows)\n")
