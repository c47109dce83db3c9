"""The manual in docs/ stays in step with the code: every rule ID the code, the tests or the docs name is
defined on the concepts page and every rule defined there is named by a test; the generated pages
(configuration, API reference) are what their generator writes; every endpoint, variable and command the
pages name exists."""

from __future__ import annotations

import ast
import json
import re
import tomllib
from collections import Counter
from pathlib import Path

from tests.support.permission_matrix import CASES

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONCEPTS = DOCS / "concepts.md"
# A rule ID: the area's letters and a number, standing alone or inside a test's name (test_M1_...). Ruff's
# codes (S105) have three digits and a time constant (T0) has none from 1, so neither matches.
RULE_ID = re.compile(r"(?<![A-Za-z0-9])(SH|[OADSXTMV])([1-9][0-9]?)(?![A-Za-z0-9])")
# A definition on the concepts page: a list item that starts with the ID in bold.
DEFINITION = re.compile(r"^- \*\*((?:SH|[OADSXTMV])[1-9][0-9]?)\*\* ", re.MULTILINE)
CODE_DIRS = ("rules", "models", "workers", "intake", "leadrelay", "tests")


def defined_rules() -> list[str]:
    return DEFINITION.findall(CONCEPTS.read_text(encoding="utf-8"))


def mentions(text: str) -> set[str]:
    return {area + number for area, number in RULE_ID.findall(text)}


def _sources() -> list[Path]:
    files = [p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py")]
    files += [p for p in DOCS.rglob("*.md") if "bench-results" not in p.parts]
    return [*files, ROOT / "README.md", ROOT / "CONTRIBUTING.md"]


def _test_names() -> set[str]:
    names = {case.id for case in CASES}
    for path in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name.startswith(
                ("test_", "Test")
            ):
                names.add(node.name)
    return names


def test_the_concepts_page_defines_each_rule_once() -> None:
    defined = defined_rules()
    assert len(defined) > 40, "the concepts page lost its definitions (- **O1** ...)"
    assert [rule for rule, n in Counter(defined).items() if n > 1] == []


def test_every_rule_id_the_code_tests_and_docs_name_is_defined_on_the_concepts_page() -> None:
    defined = set(defined_rules())
    undefined = {
        f"{path.relative_to(ROOT)}: {sorted(found - defined)}"
        for path in _sources()
        if (found := mentions(path.read_text(encoding="utf-8"))) - defined
    }
    assert not undefined, "rule IDs named but not defined in docs/concepts.md:\n" + "\n".join(sorted(undefined))


def test_every_rule_defined_on_the_concepts_page_is_named_by_a_test() -> None:
    names = _test_names()
    unnamed = [rule for rule in defined_rules() if not any(rule in mentions(name) for name in names)]
    assert not unnamed, f"no test (nor permission matrix row) names {unnamed}"


# --- Generated pages: configuration (settings class), API reference (OpenAPI) ------------------------------


def test_the_generated_pages_are_what_the_generator_writes_from_the_code() -> None:
    from leadrelay import docgen

    stale = [
        str(path.relative_to(ROOT))
        for path, text in docgen.pages().items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    assert not stale, f"{stale} differ from the code: run python -m leadrelay.docgen (make docs-generate)"


def test_every_setting_has_a_description_for_the_configuration_reference() -> None:
    from leadrelay.settings import Settings

    assert [name for name, field in Settings.model_fields.items() if not field.description] == []


# --- What the pages name exists: endpoints, variables, commands ---------------------------------------------

ENDPOINT = re.compile(r"\b(GET|POST|PATCH|PUT|DELETE)\s+(/[\w./{}-]*)")
VARIABLE = re.compile(r"\bLEADRELAY_[A-Z0-9_]*[A-Z0-9]\b")


def _prose() -> dict[str, str]:
    """The hand-written pages (generated ones are checked against the code above) and the README."""
    generated = {"configuration.md", "api.md", "permissions.md"}
    pages = {p: p.read_text(encoding="utf-8") for p in DOCS.rglob("*.md") if "bench-results" not in p.parts}
    texts = {str(p.relative_to(ROOT)): t for p, t in pages.items() if p.name not in generated}
    for name in ("README.md", "CONTRIBUTING.md", ".env.example"):
        texts[name] = (ROOT / name).read_text(encoding="utf-8")
    return texts


def _operations() -> set[tuple[str, str]]:
    document = json.loads((DOCS / "openapi.json").read_text(encoding="utf-8"))
    return {
        (method.upper(), re.sub(r"\{[^}]*\}", "{}", path))
        for path, operations in document["paths"].items()
        for method in operations
    }


def test_every_endpoint_the_docs_name_is_an_operation_of_the_api() -> None:
    operations = _operations()
    named = [
        (name, method, re.sub(r"\{[^}]*\}", "{}", path.split("?")[0].rstrip(".,;:)`")))
        for name, text in _prose().items()
        for method, path in ENDPOINT.findall(text)
    ]
    assert len(named) > 50  # not vacuous: the pages name endpoints in this form
    unknown = sorted(f"{name}: {method} {path}" for name, method, path in named if (method, path) not in operations)
    assert not unknown, "endpoints named in the docs that the API does not have:\n" + "\n".join(unknown)


def test_every_intake_endpoint_is_on_the_sources_page() -> None:
    sources = (DOCS / "sources.md").read_text(encoding="utf-8")
    named = {(m, re.sub(r"\{[^}]*\}", "{}", p)) for m, p in ENDPOINT.findall(sources)}
    intake = {(m, p) for m, p in _operations() if p.startswith(("/v1/intake", "/v1/events", "/v1/imports"))}
    assert sorted(intake - named) == []


def test_every_leadrelay_variable_the_docs_name_is_read_by_leadrelay() -> None:
    from leadrelay.docgen import OTHER_VARIABLES
    from leadrelay.settings import Settings

    known = {f"LEADRELAY_{name.upper()}" for name in Settings.model_fields} | {v[0] for v in OTHER_VARIABLES}
    unknown = sorted(
        f"{name}: {variable}"
        for name, text in _prose().items()
        for variable in VARIABLE.findall(text)
        # The test suite's own switches are documented in CONTRIBUTING.md.
        if variable not in known and not variable.startswith("LEADRELAY_TEST_")
    )
    assert not unknown, "variables named in the docs that no setting reads:\n" + "\n".join(unknown)


def test_every_command_is_on_the_commands_page() -> None:
    import typer.main

    from leadrelay.cli import app

    group = typer.main.get_command(app)
    assert isinstance(group, typer.main.TyperGroup)
    commands = []
    for name, command in group.commands.items():
        subcommands = getattr(command, "commands", None)
        commands += [f"leadrelay {name} {sub}" for sub in subcommands] if subcommands else [f"leadrelay {name}"]
    page = (DOCS / "commands.md").read_text(encoding="utf-8")
    assert [c for c in commands if f"`{c}" not in page] == []


# --- The version -------------------------------------------------------------------------------------------


def test_leadrelay_version_prints_the_packages_version_which_the_changelog_releases() -> None:
    from importlib import metadata

    from typer.testing import CliRunner

    from leadrelay.cli import app

    version = metadata.version("leadrelay")
    result = CliRunner().invoke(app, ["--version"])
    assert (result.exit_code, result.output.strip()) == (0, f"leadrelay {version}")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["version"] == version, "reinstall: make install"
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), re.MULTILINE)
    assert releases[:1] == [version], "CHANGELOG.md's latest release is not the package's version"


def test_every_key_of_the_org_file_is_on_its_page() -> None:
    from pydantic import BaseModel

    from models import orgspec

    page = (DOCS / "org-file.md").read_text(encoding="utf-8")
    specs = [v for v in vars(orgspec).values() if isinstance(v, type) and issubclass(v, BaseModel)]
    keys = {key for spec in specs if spec.__module__ == orgspec.__name__ for key in spec.model_fields}
    assert len(keys) > 20
    assert sorted(key for key in keys if f"`{key}`" not in page and f".{key}`" not in page) == []
