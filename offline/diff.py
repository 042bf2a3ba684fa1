"""What differs between two stacks, grouped as a reviewer reads it.

    python -m offline.diff                      # staging against prod (make diff)
    python -m offline.diff --from prod --to staging

First the config, key by key; then resources only one stack declares; then the settings that
differ on resources both declare (sizes, counts, AZs, protection, retention); then the cost.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from offline import cost

# Settings a reviewer compares, by resource type (input paths; `len:` counts a list).
SETTINGS: dict[str, list[str]] = {
    "aws:ecs/taskDefinition:TaskDefinition": ["cpu", "memory", "runtimePlatform.cpuArchitecture"],
    "aws:ecs/service:Service": ["desiredCount", "capacityProviderStrategies", "enableExecuteCommand",
                                "len:networkConfiguration.subnets"],
    "aws:appautoscaling/target:Target": ["minCapacity", "maxCapacity"],
    "aws:elasticache/replicationGroup:ReplicationGroup": [
        "nodeType", "numCacheClusters", "multiAzEnabled", "automaticFailoverEnabled",
        "snapshotRetentionLimit", "engineVersion"],
    "aws:cloudwatch/logGroup:LogGroup": ["retentionInDays"],
    "aws:kms/key:Key": ["deletionWindowInDays"],
    "aws:secretsmanager/secret:Secret": ["recoveryWindowInDays"],
    "aws:lb/loadBalancer:LoadBalancer": ["enableDeletionProtection", "len:subnets", "idleTimeout"],
    "aws:ec2/vpc:Vpc": ["cidrBlock"],
    "aws:wafv2/webAcl:WebAcl": ["len:rules"],
    "aws:budgets/budget:Budget": ["limitAmount"],
}


def _whole(value: Any) -> Any:
    """Integral floats as ints, all the way down: the mocks hand numbers back as floats."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    return value


def _show(value: Any) -> str:
    value = _whole(value)
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, (list, dict)) else repr(value)

def leaves(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(leaves(v, f"{path}.{k}" if path else str(k)))
        return out
    return {path: value}


def _at(inputs: dict[str, Any], path: str) -> Any:
    count = path.startswith("len:")
    node: Any = inputs
    for part in path.removeprefix("len:").split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return (len(node) if isinstance(node, list) else 0) if count else node


def config_lines(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    la, lb = leaves(a), leaves(b)
    lines = []
    for key in sorted(set(la) | set(lb)):
        va, vb = la.get(key, "(not set)"), lb.get(key, "(not set)")
        if va != vb:
            lines.append(f"  {key}: {_show(va)} -> {_show(vb)}")
    return lines


def resource_lines(a: Any, b: Any) -> tuple[list[str], list[str]]:
    ka = {(r.type, r.name): r for r in a.resources}
    kb = {(r.type, r.name): r for r in b.resources}
    only = [f"  only in {a.stack}: {t}  {n}" for t, n in sorted(set(ka) - set(kb))]
    only += [f"  only in {b.stack}: {t}  {n}" for t, n in sorted(set(kb) - set(ka))]
    ca, cb = Counter(r.type for r in a.resources), Counter(r.type for r in b.resources)
    settings = [f"  count of {t}: {ca[t]} -> {cb[t]}" for t in sorted(set(ca) | set(cb)) if ca[t] != cb[t]]
    for key in sorted(set(ka) & set(kb)):
        ra, rb = ka[key], kb[key]
        if ra.protect != rb.protect:
            settings.append(f"  {key[0]}  {key[1]}: protect {ra.protect} -> {rb.protect}")
        for path in SETTINGS.get(key[0], []):
            va, vb = _at(ra.inputs, path), _at(rb.inputs, path)
            if va != vb:
                settings.append(f"  {key[0]}  {key[1]}: {path.removeprefix('len:')} "
                                + ("count " if path.startswith("len:") else "") + f"{_show(va)} -> {_show(vb)}")
    return only, settings


def cost_lines(ra: cost.Report, rb: cost.Report) -> list[str]:
    a = {line.item: line.usd for line in ra.lines}
    b = {line.item: line.usd for line in rb.lines}
    lines = [f"  {item}: ${a.get(item, 0):,.2f} -> ${b.get(item, 0):,.2f}"
             # Largest change first; ties by name, so the order is the same in every process.
             for item in sorted(set(a) | set(b), key=lambda i: (-abs(b.get(i, 0) - a.get(i, 0)), i))
             if round(a.get(item, 0) - b.get(item, 0), 2)]
    lines.append(f"  AWS a month: ${ra.total:,.2f} -> ${rb.total:,.2f} "
                 f"({rb.total - ra.total:+,.2f}); LLM tokens: ${ra.tokens.with_cache:,.2f} -> "
                 f"${rb.tokens.with_cache:,.2f}")
    return lines


def diff(first: str, second: str, root: Optional[Path] = None, syntheses: Optional[dict[str, Any]] = None) -> str:
    """`syntheses` may hand in stacks already synthesized from the same files (the tests do)."""
    from infra.config import load
    from infra.stack_files import ROOT, read_stack_file
    from offline.synth import synthesize

    parts = []
    for stack in (first, second):
        raw, keys = read_stack_file(stack, root or ROOT)
        cfg = load(raw, keys)
        s = (syntheses or {}).get(stack) or synthesize(stack, raw=raw, secret_keys=keys)
        parts.append((raw, s, cost.estimate(stack, s.resources, cfg)))
    (raw_a, syn_a, cost_a), (raw_b, syn_b, cost_b) = parts
    only, settings = resource_lines(syn_a, syn_b)
    out = [f"{first} -> {second}", "", "config:", *(config_lines(raw_a, raw_b) or ["  (the same)"]),
           "", "resources in one stack only:", *(only or ["  (none)"]),
           "", "settings that differ:", *(settings or ["  (none)"]),
           "", "cost:", *cost_lines(cost_a, cost_b)]
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    from infra.config import ConfigError, error_lines

    parser = argparse.ArgumentParser(prog="python -m offline.diff", description=__doc__.split("\n")[0])
    parser.add_argument("--from", dest="first", default="staging")
    parser.add_argument("--to", dest="second", default="prod")
    parser.add_argument("--dir", type=Path, default=None, help="where the stack files are")
    args = parser.parse_args(argv)
    try:
        print(diff(args.first, args.second, args.dir))
    except ConfigError as e:
        print(error_lines(e), file=sys.stderr)
        return 2
    except (cost.Unpriced, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
