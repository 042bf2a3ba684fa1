"""The stack files (Pulumi.<stack>.yaml) read as Pulumi hands their config to the program."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from infra.config import PROJECT

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER_SECRET = "plan-placeholder-secret-value"  # noqa: S105 - stands in for `secure:` values


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser: 8x faster
    """Safe YAML that refuses a key written twice in one mapping: PyYAML would keep the last one
    silently, and a section pasted twice would lose every value of the first."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.MarkedYAMLError(problem=f"the key {key!r} is written twice in one mapping "
                                               f"(first on line {seen[key].line + 1})",
                                       problem_mark=mark)
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def parse_stack_file(path: Path) -> dict[str, Any]:
    """A stack file's document; StackFileError (one line: file, line, column) if it is not YAML
    of the shape Pulumi reads."""
    from infra.config import StackFileError

    try:
        doc = yaml.load(path.read_text(), Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path.name}:{mark.line + 1}:{mark.column + 1}" if mark else path.name
        problem = " ".join(p for p in (e.context, e.problem) if p)
        raise StackFileError(where, f"YAML syntax error: {problem}") from None
    except yaml.YAMLError as e:
        raise StackFileError(path.name, f"YAML syntax error: {e}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict) or not isinstance(doc.get("config") or {}, dict):
        raise StackFileError(path.name, "a stack file is a mapping with a `config:` mapping of "
                                        "keys such as llm-service:network")
    return doc


def read_stack_file(stack: str, root: Path = ROOT) -> tuple[dict[str, Any], set[str]]:
    """A stack file's config as Pulumi would hand it to the program, and its secret keys.

    `secure:` values cannot be decrypted offline; they become a placeholder marked secret.
    """
    path = root / f"Pulumi.{stack}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no stack file {path.name}; stacks: {list_stacks(root)}")
    doc = parse_stack_file(path)
    raw: dict[str, Any] = {}
    secret_keys: set[str] = set()
    for key, value in (doc.get("config") or {}).items():
        key = str(key)
        if ":" not in key:
            key = f"{PROJECT}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
            raw[key] = PLACEHOLDER_SECRET
            secret_keys.add(key)
        else:
            raw[key] = value
    return raw, secret_keys


def list_stacks(root: Path = ROOT) -> list[str]:
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in root.glob("Pulumi.*.yaml"))
