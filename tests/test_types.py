"""The type checker over what a fork copies and what serves requests: mypy, strict, on components/
and gateway/ (pyproject.toml [tool.mypy]). Run inside the suite so it overlaps the other tests."""

from __future__ import annotations

import subprocess
import sys

from infra.stack_files import ROOT


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", *args], cwd=ROOT, capture_output=True, text=True)


def test_components_and_gateway_are_clean_under_strict_mypy():
    done = _mypy()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout


def test_mypy_would_catch_a_wrong_type(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def port() -> int:\n    return '8080'\n")
    done = _mypy("--strict", "--no-incremental", str(bad))
    assert done.returncode == 1 and "Incompatible return value type" in done.stdout
