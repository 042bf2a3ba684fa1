"""Every argument and output of every component is described where it is declared (the attribute
docstring under the field), and docs/components.md's reference carries each description."""

from __future__ import annotations

import ast
import textwrap

import pytest

from infra.stack_files import ROOT
from offline import component_docs

COMPONENTS = component_docs.COMPONENTS


def undescribed(source: str) -> list[str]:
    """Class.field for every annotated field of a public class with no string right under it."""
    missing = []
    for cls in ast.parse(source).body:
        if not isinstance(cls, ast.ClassDef) or cls.name.startswith("_"):
            continue
        for st, after in zip(cls.body, [*cls.body[1:], None], strict=True):
            if isinstance(st, ast.AnnAssign):
                doc = after.value.value if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) \
                    else None
                if not isinstance(doc, str) or not doc.strip():
                    missing.append(f"{cls.name}.{ast.unparse(st.target)}")
    return missing


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_arg_and_output_is_described_where_it_is_declared(component):
    assert undescribed((ROOT / "components" / f"{component}.py").read_text()) == []


def test_a_field_without_a_description_is_found():
    source = textwrap.dedent('''
        class WidgetArgs:
            size: int = 1
            """How big."""
            colour: str = "red"  # a comment is not a description

        class Widget:
            url: str
            """Where it is."""
            arn: str
        ''')
    assert undescribed(source) == ["WidgetArgs.colour", "Widget.arn"]


def test_the_reference_carries_every_description_and_is_as_generated():
    reference = (ROOT / "docs" / "components.md").read_text()
    assert component_docs.updated_reference() == reference, "run `make docs`"
    folded = " ".join(reference.split())
    for component in COMPONENTS:
        tree = ast.parse((ROOT / "components" / f"{component}.py").read_text())
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and not n.name.startswith("_")):
            for st, after in zip(cls.body, [*cls.body[1:], None], strict=True):
                if isinstance(st, ast.AnnAssign) and isinstance(after, ast.Expr):
                    text = " ".join(after.value.value.split()).replace("|", "\\|")
                    assert text in folded, f"{component}: {text[:60]}..."


def test_a_reference_that_drifted_is_brought_back():
    reference = (ROOT / "docs" / "components.md").read_text()
    drifted = reference.replace("The ECS cluster's name.", "The cluster.")
    assert drifted != reference
    assert component_docs.updated_reference(drifted) == reference
