"""The type checker over what a fork copies and what serves requests: mypy, strict, on components/
and gateway/ (pyproject.toml [tool.mypy]). Run inside the suite, first (tests/conftest.py), so
that it overlaps the other tests.

pulumi_aws's `__init__` imports its 240 subpackages for type checkers, so mypy's first run reads
all 271 MB of it: two minutes on a clean checkout, every CI run. The suite's run sees pulumi_aws
through a view (`pulumi_aws_view`): the installed package file for file, except an `__init__`
that imports only the subpackages the components use, each of whose `__init__` imports only the
modules that define what they use from it. What the components call is checked against
pulumi_aws's own code all the same, in a quarter of the time.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from infra.stack_files import ROOT

VIEW = ROOT / ".mypy_cache" / "pulumi_aws_view"  # a fixed place: mypy's cache stays valid in place
SUBPACKAGE = re.compile(r"^    import pulumi_aws\.(\w+) as __\1\n    \1 = __\1\n", re.M)
MODULE = re.compile(r"^from \.(\w+) import \*\n", re.M)


def used_names() -> dict[str, set[str]]:
    """Every `aws.<name>` the components use (`aws` being how they import pulumi_aws), with the
    names they use in it (`aws.ec2.Vpc`: "ec2" -> {"Vpc"})."""
    used: dict[str, set[str]] = {}
    for path in (ROOT / "components").glob("*.py"):
        tree = ast.parse(path.read_text())
        aliases = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                   for a in node.names if a.name == "pulumi_aws"}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                used.setdefault(node.attr, set())
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                    and isinstance(node.value.value, ast.Name) and node.value.value.id in aliases:
                used.setdefault(node.value.attr, set()).add(node.attr)
    return used


def _link_all_but_init(real: Path, folder: Path, skip: set[str] = frozenset()) -> None:
    folder.mkdir(parents=True)
    for entry in real.iterdir():
        if entry.name not in ("__init__.py", "__pycache__", *skip):
            (folder / entry.name).symlink_to(entry)


def _trimmed(real: Path, pattern: re.Pattern[str], wanted: Callable[[str], bool]) -> tuple[str, set[str]]:
    kept: set[str] = set()

    def keep(m: re.Match[str]) -> str:
        if wanted(m[1]):
            kept.add(m[1])
            return m[0]
        return ""

    return pattern.sub(keep, (real / "__init__.py").read_text()), kept


def pulumi_aws_view(used: dict[str, set[str]], at: Path = VIEW) -> tuple[Path, set[str]]:
    """The view (a folder for MYPYPATH), and the subpackages its `__init__` imports. Each of
    those is trimmed likewise to the modules that define the names used from it (its inputs,
    outputs and enums stay whole)."""
    spec = importlib.util.find_spec("pulumi_aws")
    assert spec and spec.origin
    real = Path(spec.origin).parent
    shutil.rmtree(at, ignore_errors=True)
    subpackages = {name for name in used if (real / name / "__init__.py").exists()}
    _link_all_but_init(real, at / "pulumi_aws", skip=subpackages)
    text, kept = _trimmed(real, SUBPACKAGE, lambda name: name in subpackages)
    (at / "pulumi_aws" / "__init__.py").write_text(text)
    for sub in subpackages:
        names = used[sub]

        def defines(module: str, sub: str = sub, names: set[str] = names) -> bool:
            source = (real / sub / f"{module}.py").read_text()
            return module.startswith("_") or any(f"class {n}(" in source or f"def {n}(" in source
                                                 for n in names)

        _link_all_but_init(real / sub, at / "pulumi_aws" / sub)
        (at / "pulumi_aws" / sub / "__init__.py").write_text(_trimmed(real / sub, MODULE, defines)[0])
    return at, kept


def _mypy(*args: str, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"MYPYPATH": str(path)} if path else {})}
    return subprocess.run([sys.executable, "-m", "mypy", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env)


@pytest.mark.first
def test_components_and_gateway_are_clean_under_strict_mypy_and_the_view_still_finds_errors(tmp_path):
    used = used_names()
    view, kept = pulumi_aws_view(used)
    subpackages = {name for name in used if (view / "pulumi_aws" / name / "__init__.py").exists()}
    assert kept == subpackages and {"acm", "ec2", "ecs", "wafv2"} <= kept, \
        "the view lost a subpackage the components use"
    done = _mypy(path=view)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout

    # A misspelt argument and a wrong type in a pulumi_aws call are found through the same view
    # (and mypy's cache, warm by now).
    bad = tmp_path / "bad.py"
    bad.write_text('import pulumi_aws as aws\n\naws.acm.Certificate("x", domain_nam="example.com")\n'
                   'aws.acm.Certificate("y", domain_name=443)\n')
    done = _mypy("--strict", str(bad), path=view)
    assert done.returncode == 1, done.stdout
    errors = [line for line in done.stdout.splitlines() if ": error: " in line]
    assert {line.split(": error: ")[0] for line in errors} == {f"{bad}:3", f"{bad}:4"}, done.stdout
    assert f'{bad}:3: error: Unexpected keyword argument "domain_nam"' in done.stdout


def test_mypy_would_catch_a_wrong_type(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def port() -> int:\n    return '8080'\n")
    done = _mypy("--strict", "--no-incremental", str(bad))
    assert done.returncode == 1 and "Incompatible return value type" in done.stdout
