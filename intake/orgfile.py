"""Reading an org file (docs/org-file.md) from disk: the YAML, then the checks of
:func:`models.orgspec.parse_org`. Every problem is an :class:`~models.orgspec.OrgFileError`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from models.orgspec import OrgFileError, OrgSpec, parse_org


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a repeated key in an org file is a mistake to report."""


def _mapping_without_repeats(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            repeated = key in seen
        except TypeError:
            continue  # an unhashable key: construct_mapping reports it
        if repeated:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"key {key!r} is given twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_repeats)


def load_org_file(path: str | os.PathLike[str]) -> OrgSpec:
    """Read, parse and check an org file; raises :class:`OrgFileError` listing every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OrgFileError([f"{path}: cannot read the file: {exc}"]) from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        raise OrgFileError([f"{where}: {exc.problem or exc.context}"]) from exc
    except yaml.YAMLError as exc:
        raise OrgFileError([f"{path}: {exc}"]) from exc
    if not isinstance(data, dict):
        raise OrgFileError([f"{path}: expected a mapping with account, name, entities, ... at the top"])
    return parse_org(data)
