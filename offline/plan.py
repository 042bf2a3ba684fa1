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
from dataclasses import asdict
from pathlib import Path
from typing import Any

from infra.config import BUILD, ConfigError, StackConfig, error_lines, load, stream_bound_seconds
from infra.stack_files import ROOT, list_stacks, read_stack_file
from offline import cost
from offline.policy_check import POLICIES, check, levels_for
from offline.synth import Declared, Synthesis, synthesize

REDACTED = "[secret]"


def _redact(d: Declared) -> dict[str, Any]:
    return {k: REDACTED if k in d.secret_inputs else v for k, v in sorted(d.inputs.items())}


# Inputs that hold JSON documents as strings: parsed, so that the JSON plan can be queried and
# diffed as objects (`jq '.resources[] | .inputs.containerDefinitions[0].environment'`).
JSON_INPUTS = {"containerDefinitions", "policy", "assumeRolePolicy", "dashboardBody", "accessPolicy"}


def _parsed(inputs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in inputs.items():
        if k in JSON_INPUTS and isinstance(v, str) and v[:1] in "[{":
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                pass
        out[k] = v
    return out


def summary(s: Synthesis, cfg: StackConfig) -> dict[str, Any]:
    """What a reviewer decides on, in one place: what runs, how big, where."""
    task = s.one("aws:ecs/taskDefinition:TaskDefinition")
    group = s.one("aws:elasticache/replicationGroup:ReplicationGroup")
    image = cfg.service.image
    return {
        "image": "the gateway, built from gateway/ and deployed by digest" if image == BUILD else image,
        "task": f"{int(task.inputs['cpu']) / 1024:g} vCPU, {int(task.inputs['memory']) / 1024:g} GB, "
                f"{cfg.service.architecture}, {cfg.service.min_tasks} to {cfg.service.max_tasks} tasks",
        "cache": f"{group.inputs['nodeType']} x {int(group.inputs.get('numCacheClusters') or 1)}",
        "azs": cfg.network.az_count, "region": cfg.region,
        "nat": f"{len(s.of_type('aws:ec2/natGateway:NatGateway'))} NAT gateway(s)",
        "streams": f"up to {stream_bound_seconds(cfg)} s survive a deploy or scale-in"
                   + (" (and a Spot interruption)" if cfg.service.spot_weight else ""),
    }


def to_json(s: Synthesis, cfg: StackConfig | None = None, violations: list | None = None,
            report: Any = None) -> dict[str, Any]:
    doc = {
        "stack": s.stack,
        "counts": dict(sorted(Counter(r.type for r in s.resources).items())),
        "resources": [
            {
                "type": r.type, "name": r.name,
                "parent": None if r.parent is None else {"type": r.parent[0], "name": r.parent[1]},
                "protect": r.protect, "ignoreChanges": r.ignore_changes,
                "retainOnDelete": r.retain_on_delete, "import": r.import_id,
                "inputs": _parsed(_redact(r)),
            }
            for r in s.resources
        ],
        "outputs": {k: REDACTED if k in s.secret_outputs else v for k, v in s.outputs.items()},
    }
    if cfg is not None:
        doc["summary"] = summary(s, cfg)
        doc["models"] = [asdict(r) for r in cost.model_table(cfg)]
    if violations is not None:
        doc["policies"] = {"ran": len(POLICIES), "violations": [
            {"policy": v.policy, "resource": v.resource, "message": v.message, "mandatory": v.mandatory}
            for v in violations]}
    if report is not None:
        doc["cost"] = cost.to_json(report)
    return doc


def to_text(s: Synthesis, cfg: StackConfig | None = None) -> str:
    by_parent: dict[Any, list[Declared]] = {}
    for r in s.resources:
        by_parent.setdefault(r.parent, []).append(r)
    lines = [f"stack {s.stack}: {len(s.resources)} resources"]
    if cfg is not None:
        lines += [f"  {k:6s} {v}" for k, v in summary(s, cfg).items()] + [""]
        lines += cost.model_lines(cost.model_table(cfg)) + [""]

    def walk(parent: Any, depth: int) -> None:
        for r in by_parent.get(parent, []):
            flags = "".join([" [protected]" if r.protect else "",
                             " [kept on destroy]" if r.retain_on_delete else "",
                             f" [imports {r.import_id}]" if r.import_id else "",
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
        cfg = load(raw, secret_keys)
        synthesis = synthesize(args.stack, raw=raw, secret_keys=secret_keys)
    except ConfigError as e:
        print(error_lines(e), file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    violations = check(synthesis, levels=levels_for(cfg.teardown))
    try:
        report = cost.estimate(args.stack, synthesis.resources, cfg)
    except cost.Unpriced as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(to_json(synthesis, cfg, violations, report), indent=2, default=str))
    else:
        print(to_text(synthesis, cfg))
        failed = sum(1 for v in violations if v.mandatory)
        print(f"\npolicies: {len(POLICIES)} ran, "
              + ("all passed" if not violations else f"{failed} mandatory and "
                 f"{len(violations) - failed} advisory violations (on stderr)"))
        t = report.tokens
        print(f"monthly cost: ${report.total + t.with_cache:,.2f} (AWS ${report.total:,.2f}, LLM tokens "
              f"${t.with_cache:,.2f} at the assumed traffic; `make cost STACK={args.stack}` for the lines)")
    for v in violations:
        print(f"policy violation {v}", file=sys.stderr)
    warning = cost.budget_warning(report, cfg)
    if warning:
        print(warning, file=sys.stderr)
    return 3 if any(v.mandatory for v in violations) else 0


if __name__ == "__main__":
    sys.exit(main())
