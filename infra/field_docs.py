"""The attribute docstrings of a class: the string right under each annotated field, where a
component describes each of its arguments and outputs (read with `ast`, never by pattern)."""

from __future__ import annotations

import ast
import inspect
import textwrap
from functools import cache


@cache
def attribute_docs(cls: type) -> dict[str, str]:
    """field -> its description, whitespace folded ("" where it has none)."""
    (node,) = ast.parse(textwrap.dedent(inspect.getsource(cls))).body
    assert isinstance(node, ast.ClassDef)
    found = {}
    for st, after in zip(node.body, [*node.body[1:], None], strict=True):
        if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
            doc = after.value.value if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) \
                and isinstance(after.value.value, str) else ""
            found[st.target.id] = " ".join(doc.split())
    return found
