"""The attribute docstrings of a class: the string right under each annotated field, where a
component describes each of its arguments and outputs (read with `ast`, never by pattern)."""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from functools import cache


@cache
def _module_tree(path: str) -> ast.Module:
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read())


def _class_node(cls: type) -> ast.ClassDef:
    """The class's definition, from its module's tree parsed once: inspect.getsource parses the
    whole module again for each class (a third of a second over the config's sections)."""
    if "<locals>" not in cls.__qualname__:
        scope: list[ast.stmt] = _module_tree(sys.modules[cls.__module__].__file__ or "").body
        for name in cls.__qualname__.split("."):
            found = [n for n in scope if isinstance(n, ast.ClassDef) and n.name == name]
            if len(found) != 1:
                break
            scope = found[0].body
        else:
            return found[0]
    (node,) = ast.parse(textwrap.dedent(inspect.getsource(cls))).body  # defined in a function
    assert isinstance(node, ast.ClassDef)
    return node


@cache
def attribute_docs(cls: type) -> dict[str, str]:
    """field -> its description, whitespace folded ("" where it has none)."""
    node = _class_node(cls)
    found = {}
    for st, after in zip(node.body, [*node.body[1:], None], strict=True):
        if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
            doc = after.value.value if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) \
                and isinstance(after.value.value, str) else ""
            found[st.target.id] = " ".join(doc.split())
    return found
