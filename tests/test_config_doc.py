"""The configuration reference (docs/configuration.md) is generated from the contract and must match it."""

from __future__ import annotations

from infra.config import StackConfig
from offline import config_doc


def _keys(model, prefix=""):
    for name, field in model.model_fields.items():
        written = field.alias or name
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            yield from _keys(annotation, f"{prefix}{written}.")
        else:
            yield f"{prefix}{written}"


def test_readme_holds_the_reference_the_contract_generates():
    readme = config_doc.REFERENCE.read_text()
    assert config_doc.updated(readme) == readme, "run `python -m offline.config_doc --write`"


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
