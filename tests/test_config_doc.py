"""The configuration reference (docs/configuration.md) is generated from the contract and must match it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from infra.config import StackConfig
from infra.stack_files import ROOT
from offline import config_doc


def _keys(model, prefix=""):
    for name, field in model.model_fields.items():
        written = field.alias or name
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            yield from _keys(annotation, f"{prefix}{written}.")
        else:
            yield f"{prefix}{written}"


@pytest.mark.fresh_process
def test_the_docs_hold_the_reference_a_fresh_process_generates():
    """In a new process, as `make docs` runs: the models are built when infra.config is imported
    (from the components' arguments), so a test process that imported them before cannot see a
    change to how they are built (make mutate's mutants of it take effect only in a new one)."""
    check = ("import difflib, sys\n"
             "from offline import config_doc\n"
             "docs = config_doc.REFERENCE.read_text().splitlines(True)\n"
             "made = config_doc.updated(''.join(docs)).splitlines(True)\n"
             "sys.stdout.writelines(difflib.unified_diff(docs, made))\n")
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "", "run `python -m offline.config_doc --write`:\n" + done.stdout[:3000]


def test_every_key_of_the_contract_has_a_described_row():
    reference = config_doc.reference()
    rows = {line.split("`")[1]: line for line in reference.splitlines()[2:]}
    keys = list(_keys(StackConfig))
    assert len(keys) > 90
    for key in keys:
        full = key if ":" in key else f"llm-service:{key}"
        assert full in rows, full
        assert not rows[full].endswith("|  |"), f"{full} has no description"


def test_a_readme_that_drifted_is_caught():
    readme = config_doc.REFERENCE.read_text().replace("| `llm-service:cache.nodeType` |", "| `cache.type` |")
    assert config_doc.updated(readme) != readme
