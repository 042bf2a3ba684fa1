"""The private Pulumi and boto3 APIs the repository calls, all through infra/private_api.py: an SDK
upgrade that drops one fails here, by name."""

from __future__ import annotations

import ast
from pathlib import Path

import boto3
import pulumi

from infra import private_api
from infra.stack_files import ROOT


def test_every_private_name_used_still_exists():
    assert private_api.missing() == []


def test_a_dropped_name_is_reported_by_name(monkeypatch):
    monkeypatch.setitem(private_api.USED, "pulumi.runtime.stack", ("run_pulumi_func", "no_such_function"))
    monkeypatch.setitem(private_api.USED, "pulumi.resource", ("Resource._type", "Resource._gone"))
    assert private_api.missing() == ["pulumi.runtime.stack.no_such_function", "pulumi.resource.Resource._gone"]


def test_the_wrappers_do_what_the_private_names_did():
    async def seven() -> int:
        return 7

    assert private_api.wait(seven()) == 7
    wrapped = private_api.wrap_secret("s3cret")
    assert private_api.is_secret(wrapped) and not private_api.is_secret("s3cret")
    assert private_api.unwrap_secret(wrapped) == "s3cret"
    assert private_api.default_boto3_session() is boto3._get_default_session()  # noqa: SLF001


PRIVATE_ATTRIBUTES = {"_name", "_type", "_get_default_session"}
RUNTIME_MODULES = {"rpc", "settings", "stack", "config", "sync_await"}


def _private_uses(path: Path) -> list[str]:
    """Imports from pulumi.runtime or boto3 internals, private names imported from pulumi or boto3,
    and attributes such as r._name or pulumi.runtime.settings."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith(("pulumi.runtime", "boto3.")):
                found.append(f"from {node.module} import ...")
            elif node.module in ("pulumi", "boto3"):
                found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and (node.attr in PRIVATE_ATTRIBUTES or _runtime_module(node)):
            found.append(ast.unparse(node))
    return found


def _runtime_module(node: ast.Attribute) -> bool:
    """pulumi.runtime.<one of its internal modules>"""
    return node.attr in RUNTIME_MODULES and ast.unparse(node.value) == "pulumi.runtime"


def test_nothing_else_touches_a_private_api():
    allowed = {ROOT / "infra" / "private_api.py", Path(__file__)}
    offenders = {}
    for folder in ("infra", "components", "gateway", "offline", "ops", "policy", "tests", "bench", "mutation"):
        for path in (ROOT / folder).rglob("*.py"):
            if path not in allowed and ".venv" not in path.parts and (uses := _private_uses(path)):
                offenders[str(path.relative_to(ROOT))] = uses
    assert offenders == {}


def test_the_scan_finds_a_private_use(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("from pulumi.runtime.sync_await import _sync_await\nimport pulumi\n"
                      "x = pulumi.runtime.settings\ndef f(r):\n    return r._name\n")
    assert _private_uses(sneaky) == ["from pulumi.runtime.sync_await import ...", "pulumi.runtime.settings",
                                     "r._name"]
    assert pulumi.runtime.set_mocks  # the public runtime API (set_mocks, set_all_config) is not private
