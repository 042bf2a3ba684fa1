"""Each component's docstring lists its args (type, default, note), its outputs and its example,
generated from the code and examples/<component>/__main__.py so that they cannot drift.

    python -m offline.component_docs --write    # rewrite the generated part of each docstring

tests/test_examples.py fails when a docstring and its component or example disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ["network", "secrets_store", "load_balancer", "registry", "image", "service", "cache", "edge",
              "monitoring", "budget"]
MARK = "Args ("  # where the generated part of a docstring begins


def _comments(source: str, cls: str) -> dict[str, str]:
    """Trailing comments of a dataclass's fields: `name: type = default  # note`."""
    body = source.split(f"class {cls}:", 1)[1].split("\n\n\n", 1)[0]
    return {m[1]: m[2].strip() for m in re.finditer(r"^    ([a-z_0-9]+): [^#\n]*#\s*(.+)$", body, re.M)}


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return f"{type(value).__name__}()" if dataclasses.is_dataclass(value) else repr(value)
    return "required"


def args_section(name: str) -> str:
    module = importlib.import_module(f"components.{name}")
    source = (ROOT / "components" / f"{name}.py").read_text()
    classes = sorted(re.findall(r"^class (\w*(?:Args|Thresholds|Link)):", source, re.M),
                     key=lambda c: not c.endswith("Args"))  # the component's own args first
    out = []
    for cls in classes:
        notes = _comments(source, cls)
        out.append(f"{MARK}`{cls}`):" if cls.endswith("Args") else f"`{cls}`:")
        for f in dataclasses.fields(getattr(module, cls)):
            note = f" — {notes[f.name]}" if f.name in notes else ""
            out.append(f"    {f.name}: {f.type} = {_default(f)}{note}".replace(" = required", ", required"))
        out.append("")
    component = next(c for c in re.findall(r"^class (\w+)\(pulumi.ComponentResource\):", source, re.M))
    # The class's annotations, comment lines between them allowed.
    outputs = re.findall(rf"class {component}\(pulumi.ComponentResource\):\n((?:    (?:#.*|\w+: .+)\n)+)", source)
    names = [line.split(":")[0].strip() for line in outputs[0].splitlines()
             if not line.strip().startswith("#")] if outputs else []
    out += textwrap.wrap(f"Outputs: {', '.join(names)}.", width=100, break_on_hyphens=False)
    out.append("")
    example = (ROOT / "examples" / name / "__main__.py").read_text()
    call = example.split('"""', 2)[2].strip()  # the imports and the call, without the docstring
    out.append(f"Example (examples/{name}/, runs as written beside a copy of this file):")
    out.append("")
    out += [f"    {line}" if line else "" for line in call.splitlines()]
    return "\n".join(out)


def updated(name: str, text: str | None = None) -> str:
    """The component's file (or `text` in its place) with the generated part of its docstring
    made from the code and the example."""
    if text is None:
        text = (ROOT / "components" / f"{name}.py").read_text()
    doc_end = text.index('"""', 3)
    doc = text[3:doc_end]
    # Keep the hand-written part (what it creates and costs); replace the generated one, and any
    # hand-written example, which the generated example supersedes.
    head = re.split(r"\n\n`\w+`:\n", doc.split(MARK, 1)[0])[0].rstrip()
    head = re.split(r"\n\n    [a-z_]+ = [A-Z]\w*\(", head, maxsplit=1)[0].rstrip()
    return '"""' + head + "\n\n" + args_section(name) + '\n"""' + text[doc_end + 3:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offline.component_docs", description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    stale = [n for n in COMPONENTS if updated(n) != (ROOT / "components" / f"{n}.py").read_text()]
    if args.write:
        for name in stale:
            (ROOT / "components" / f"{name}.py").write_text(updated(name))
    for name in stale:
        print(f"{'rewrote' if args.write else 'stale'}: components/{name}.py", file=sys.stderr)
    return 1 if stale and not args.write else 0


if __name__ == "__main__":
    sys.exit(main())
