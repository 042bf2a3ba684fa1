"""Offline plan: what a stack declares, without the Pulumi CLI, AWS credentials or network.

    python -m offline.plan --stack staging          # resource tree and counts per type
    python -m offline.plan --stack prod --json      # machine-readable, secret values redacted

Runs the real stack program under Pulumi's mocks with the stack file's config, then the policy
pack (policy/) over what it declares. Exits 2 with the config message when the config is bad,
3 when a mandatory policy is violated (each violation on stderr: policy, resource, why).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from infra.config import ConfigError, error_lines
from infra.stack_files import ROOT, list_stacks, read_stack_file
from offline.policy_check import check
from offline.synth import Declared, Synthesis, synthesize

REDACTED = "[secret]"


def _redact(d: Declared) -> dict[str, Any]:
    return {k: REDACTED if k in d.secret_inputs else v for k, v in sorted(d.inputs.items())}


def to_json(s: Synthesis) -> dict[str, Any]:
    return {
        "stack": s.stack,
        "counts": dict(sorted(Counter(r.type for r in s.resources).items())),
        "resources": [
            {
                "type": r.type, "name": r.name,
                "parent": None if r.parent is None else {"type": r.parent[0], "name": r.parent[1]},
                "protect": r.protect, "ignoreChanges": r.ignore_changes,
                "inputs": _redact(r),
            }
            for r in s.resources
        ],
        "outputs": {k: REDACTED if k in s.secret_outputs else v for k, v in s.outputs.items()},
    }


def to_text(s: Synthesis) -> str:
    by_parent: dict[Any, list[Declared]] = {}
    for r in s.resources:
        by_parent.setdefault(r.parent, []).append(r)
    lines = [f"stack {s.stack}: {len(s.resources)} resources"]

    def walk(parent: Any, depth: int) -> None:
        for r in by_parent.get(parent, []):
            flags = "".join([" [protected]" if r.protect else "",
                             f" [ignores {', '.join(r.ignore_changes)}]" if r.ignore_changes else ""])
            lines.append(f"{'  ' * depth}{r.type}  {r.name}{flags}")
            walk((r.type, r.name), depth + 1)

    walk(None, 1)
    lines.append("")
    lines.append("counts per type:")
    for typ, count in sorted(Counter(r.type for r in s.resources).items()):
        lines.append(f"  {count:4d}  {typ}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offline.plan", description=__doc__.split("\n")[0])
    parser.add_argument("--stack", required=True, help=f"one of {list_stacks()}")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--dir", type=Path, default=ROOT, help="where the stack files are")
    args = parser.parse_args(argv)
    try:
        raw, secret_keys = read_stack_file(args.stack, args.dir)
        synthesis = synthesize(args.stack, raw=raw, secret_keys=secret_keys)
    except ConfigError as e:
        print(error_lines(e), file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(to_json(synthesis), indent=2, default=str))
    else:
        print(to_text(synthesis))
    violations = check(synthesis)
    for v in violations:
        print(f"policy violation {v}", file=sys.stderr)
    if any(v.mandatory for v in violations):
        return 3
    if not args.json:
        print("policies: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
