"""What AWS stores for what a stack declares, and what the provider then compares.

A second `pulumi up` (and the drift job's `preview --refresh --expect-no-changes`) is a no-op only
if every declared value is one AWS stores as given, or one the provider normalises the same way
on both sides. Mocks and moto store anything as given; these functions are the normal form the
real services and pulumi-aws 7 (terraform-provider-aws 6) apply, each rule with its source.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

# --- ECS container definitions -------------------------------------------------------------------

# What DescribeTaskDefinition fills in for a container that did not say (the provider's own
# "apiRepresentation" test fixtures, internal/service/ecs/container_definitions_test.go).
ECS_DEFAULTS = {"cpu": 0, "essential": True, "environment": [], "mountPoints": [], "volumesFrom": [],
                "portMappings": [], "systemControls": []}
HEALTH_CHECK_DEFAULTS = {"interval": 30, "retries": 3, "timeout": 5}
# Top-level lists the provider's reduce() treats as absent when empty.
EMPTY_LISTS_AS_ABSENT = ("command", "credentialSpecs", "dependsOn", "dnsSearchDomains", "dnsServers",
                         "dockerSecurityOptions", "entryPoint", "environment", "environmentFiles",
                         "extraHosts", "links", "mountPoints", "portMappings", "resourceRequirements",
                         "secrets", "systemControls", "ulimits", "volumesFrom")


def _without_empties(value: Any) -> Any:
    """Nested nulls and empty maps or lists dropped: ECS does not keep them, and the provider
    does not normalise them (pulumi-aws#5256; terraform-provider-aws PR #46132, unmerged)."""
    if isinstance(value, dict):
        kept = {k: _without_empties(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not None and v != {} and v != []}
    if isinstance(value, list):
        return [_without_empties(v) for v in value]
    return value


def ecs_stores(definitions: list[dict], awsvpc: bool = True) -> list[dict]:
    """The containerDefinitions DescribeTaskDefinition answers for what was registered."""
    stored = []
    for d in copy.deepcopy(definitions):
        # terraform-provider-aws#39533 / pulumi-aws#4576: a variable whose value is "" or null, or
        # that has no value, is not kept.
        d["environment"] = [e for e in d.get("environment", []) if e.get("value") not in ("", None)]
        d = {**ECS_DEFAULTS, **{k: _without_empties(v) if isinstance(v, (dict, list)) else v
                                for k, v in d.items() if v is not None}}
        for pm in d["portMappings"]:
            pm.setdefault("protocol", "tcp")
            if awsvpc:
                pm.setdefault("hostPort", pm["containerPort"])
        if "healthCheck" in d:
            d["healthCheck"] = {**HEALTH_CHECK_DEFAULTS, **d["healthCheck"]}
        stored.append(d)
    return stored


def provider_reduces(definitions: list[dict], awsvpc: bool = True) -> list[dict]:
    """containerDefinitionsAreEquivalent's normal form (internal/service/ecs/container_definitions.go,
    reduce()): containers, variables and secrets sorted by name; essential, health check and port
    mapping defaults; empty top-level lists as absent. Nothing else is normalised."""
    reduced = []
    for d in sorted(copy.deepcopy(definitions), key=lambda c: c.get("name", "")):
        d.setdefault("essential", True)
        if d.get("cpu") == 0:
            del d["cpu"]
        for name in ("environment", "secrets"):
            if name in d:
                d[name] = sorted(d[name], key=lambda e: e.get("name", ""))
        if "healthCheck" in d:
            d["healthCheck"] = {**HEALTH_CHECK_DEFAULTS, **d["healthCheck"]}
        for pm in d.get("portMappings", []):
            if pm.get("protocol") == "tcp":
                del pm["protocol"]
            if not pm.get("hostPort"):
                pm.pop("hostPort", None)
            if awsvpc:
                pm.setdefault("hostPort", pm.get("containerPort"))
        for name in EMPTY_LISTS_AS_ABSENT:
            if d.get(name) == []:
                del d[name]
        reduced.append(d)
    return reduced


def container_drift(definitions: list[dict], awsvpc: bool = True) -> list[str]:
    """What a refresh would report as changed in these container definitions ([] for nothing)."""
    declared = provider_reduces(definitions, awsvpc)
    stored = provider_reduces(ecs_stores(definitions, awsvpc), awsvpc)
    found = []
    for mine, theirs in zip(declared, stored, strict=True):
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                found.append(f"container {mine.get('name')}: {key}: declared {mine.get(key)!r}, "
                             f"ECS stores {theirs.get(key)!r}")
    return found


# --- other resources: inputs AWS rewrites, or the provider cannot read back as given ------------

ARN = re.compile(r"arn:aws[a-z-]*:")
Rule = tuple[str, Callable[[dict], bool]]

RULES: dict[str, list[Rule]] = {
    "aws:elasticache/replicationGroup:ReplicationGroup": [
        # A change held for the maintenance window reads back as the running value until then
        # (terraform-provider-aws #24733, #41638): every preview shows it, the drift job fails.
        ("applyImmediately is true", lambda i: i.get("applyImmediately") is True),
        # ElastiCache lower-cases the window (the provider's StateFunc says so).
        ("maintenanceWindow is lower case", lambda i: i["maintenanceWindow"] == i["maintenanceWindow"].lower()),
        # Read rewrites a Valkey version as major.minor.
        ("engineVersion is major.minor", lambda i: re.fullmatch(r"\d+\.\d+", i["engineVersion"]) is not None),
        ("kmsKeyId is an ARN (ElastiCache stores the ARN)", lambda i: bool(ARN.match(i["kmsKeyId"]))),
        # Both given: left out, failover reads back true with multi-AZ (terraform-provider-aws#42643).
        ("automaticFailoverEnabled is set", lambda i: "automaticFailoverEnabled" in i),
    ],
    "aws:cloudwatch/metricAlarm:MetricAlarm": [
        # Validated case-insensitively, stored in CloudWatch's case: "NotBreaching" diffs forever.
        ("treatMissingData in CloudWatch's case",
         lambda i: i.get("treatMissingData", "missing") in ("breaching", "notBreaching", "ignore", "missing")),
        ("statistic in CloudWatch's case", lambda i: i.get("statistic") in (
            None, "SampleCount", "Average", "Sum", "Minimum", "Maximum")),
        ("extendedStatistic as CloudWatch writes it (p95, not P95)",
         lambda i: i.get("extendedStatistic") is None or re.fullmatch(r"p\d+(\.\d+)?", i["extendedStatistic"])),
    ],
    "aws:wafv2/webAcl:WebAcl": [
        # WAF fills in a 300 s window when none is given (terraform-provider-aws#33124).
        ("every rate-based statement names its window", lambda i: all(
            "evaluationWindowSec" in r["statement"]["rateBasedStatement"]
            for r in i["rules"] if "rateBasedStatement" in r["statement"])),
    ],
    "aws:ecs/service:Service": [
        # ECS's create default moved to ENABLED; providers that default it DISABLED then diff.
        ("availabilityZoneRebalancing is set",
         lambda i: i.get("availabilityZoneRebalancing") in ("ENABLED", "DISABLED")),
    ],
    "aws:lb/loadBalancer:LoadBalancer": [
        # Attribute values ELB stores in its own case; another would read back as a change.
        ("desyncMitigationMode in ELB's case",
         lambda i: i.get("desyncMitigationMode", "defensive") in ("monitor", "defensive", "strictest")),
        ("ipAddressType in ELB's case", lambda i: i.get("ipAddressType", "ipv4") in (
            "ipv4", "dualstack", "dualstack-without-public-ipv4")),
        ("idleTimeout a whole number of seconds", lambda i: float(i["idleTimeout"]).is_integer()),
    ],
    "aws:lb/targetGroup:TargetGroup": [
        ("protocols in ELB's case", lambda i: i["protocol"] in ("HTTP", "HTTPS")
         and i["healthCheck"]["protocol"] in ("HTTP", "HTTPS")),
        ("the algorithm in ELB's case", lambda i: i.get("loadBalancingAlgorithmType", "round_robin") in (
            "round_robin", "least_outstanding_requests", "weighted_random")),
    ],
    "aws:ecs/taskDefinition:TaskDefinition": [
        # ECS stores task sizes as CPU units and MiB: "0.5 vCPU" or "1 GB" would read back as 512, 1024.
        ("cpu and memory as plain numbers", lambda i: i["cpu"].isdigit() and i["memory"].isdigit()),
    ],
    "aws:cloudwatch/logGroup:LogGroup": [
        ("kmsKeyId is an ARN (CloudWatch Logs stores the ARN)",
         lambda i: ARN.match(i.get("kmsKeyId") or "arn:") is not None),
    ],
    "aws:ecr/repository:Repository": [
        ("the KMS key is an ARN (ECR stores the ARN)",
         lambda i: all(ARN.match(c["kmsKey"]) for c in i["encryptionConfigurations"])),
    ],
}


def resource_drift(typ: str, inputs: dict) -> list[str]:
    """The rules of RULES this resource's inputs break ([] for none)."""
    return [what for what, ok in RULES.get(typ, []) if not ok(inputs)]
