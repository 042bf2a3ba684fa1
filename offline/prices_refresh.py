"""Rebuild a region's price table (offline/prices/<region>.json) from the AWS Price List API.

    python -m offline.cost refresh --region us-east-1 [--node-type cache.m7g.xlarge ...]

Needs AWS credentials allowed `pricing:GetProducts` (the API answers in us-east-1). Each item of
the table is found by its service code, the region and a pattern on the product's usage type;
its first on-demand price tier is taken. An item the Price List does not return (Fargate Spot
prices move and are not always listed) keeps its old figure, and the command says which, then
exits 1 so that a reviewer looks. Node types of the stack files are always refreshed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from typing import Any, Optional

from offline.cost import HOURS, PRICES

# key -> (service code, usage type pattern, extra TERM_MATCH filters)
SPECS: dict[str, tuple[str, str, dict[str, str]]] = {
    "fargate.vcpu_hour.X86_64": ("AmazonECS", r"-Fargate-vCPU-Hours:perCPU$", {}),
    "fargate.gb_hour.X86_64": ("AmazonECS", r"-Fargate-GB-Hours$", {}),
    "fargate.vcpu_hour.ARM64": ("AmazonECS", r"-Fargate-ARM-vCPU-Hours:perCPU$", {}),
    "fargate.gb_hour.ARM64": ("AmazonECS", r"-Fargate-ARM-GB-Hours$", {}),
    "fargate_spot.vcpu_hour.X86_64": ("AmazonECS", r"-SpotUsage-Fargate-vCPU-Hours:perCPU$", {}),
    "fargate_spot.gb_hour.X86_64": ("AmazonECS", r"-SpotUsage-Fargate-GB-Hours$", {}),
    "fargate_spot.vcpu_hour.ARM64": ("AmazonECS", r"-SpotUsage-Fargate-ARM-vCPU-Hours:perCPU$", {}),
    "fargate_spot.gb_hour.ARM64": ("AmazonECS", r"-SpotUsage-Fargate-ARM-GB-Hours$", {}),
    "alb.hour": ("AWSELB", r"-LoadBalancerUsage$", {"productFamily": "Load Balancer-Application"}),
    "alb.lcu_hour": ("AWSELB", r"-LCUUsage$", {"productFamily": "Load Balancer-Application"}),
    "ipv4.hour": ("AmazonVPC", r"-PublicIPv4:InUseAddress$", {}),
    "nat.hour": ("AmazonEC2", r"-NatGateway-Hours$", {}),
    "nat.gb": ("AmazonEC2", r"-NatGateway-Bytes$", {}),
    "endpoint.hour": ("AmazonVPC", r"-VpcEndpoint-Hours$", {}),
    "endpoint.gb": ("AmazonVPC", r"-VpcEndpoint-Bytes$", {}),
    "transfer_out.gb": ("AWSDataTransfer", r"-DataTransfer-Out-Bytes$", {}),
    "elasticache.snapshot_gb": ("AmazonElastiCache", r"-TimedBackupStorage-ByteHrs$", {}),
    "waf.acl_month": ("awswaf", r"-WebACL$", {}),
    "waf.rule_month": ("awswaf", r"-Rule$", {}),
    "waf.million_requests": ("awswaf", r"-Request$", {}),
    "kms.key_month": ("awskms", r"-KMS-Keys$", {}),
    "secretsmanager.secret_month": ("AWSSecretsManager", r"-AWSSecretsManager-Secrets$", {}),
    "logs.ingest_gb": ("AmazonCloudWatch", r"-DataProcessing-Bytes$", {}),
    "logs.storage_gb_month": ("AmazonCloudWatch", r"-TimedStorage-ByteHrs$", {}),
    "cloudwatch.alarm_metric_month": ("AmazonCloudWatch", r"-CW:AlarmMonitorUsage$", {}),
    "cloudwatch.dashboard_month": ("AmazonCloudWatch", r"-DashboardsUsageHour(-Basic)?$", {}),
    "cloudwatch.metric_month": ("AmazonCloudWatch", r"-CW:MetricMonitorUsage$", {}),
    "ecr.storage_gb_month": ("AmazonECR", r"-TimedStorage-ByteHrs$", {}),
    "s3.storage_gb_month": ("AmazonS3", r"-TimedStorage-ByteHrs$", {"volumeType": "Standard"}),
}


def node_specs(node_types: list[str]) -> dict[str, tuple[str, str, dict[str, str]]]:
    return {f"elasticache.{engine.lower()}.{node}": ("AmazonElastiCache", r"NodeUsage:cache\.",
                                                     {"instanceType": node, "cacheEngine": engine})
            for node in node_types for engine in ("Valkey", "Redis")}


def first_tier(product: dict[str, Any]) -> Optional[tuple[float, str]]:
    """The first on-demand tier of a Price List product: (USD, unit)."""
    for term in (product.get("terms", {}).get("OnDemand") or {}).values():
        dims = sorted(term.get("priceDimensions", {}).values(), key=lambda d: float(d.get("beginRange", 0)))
        for dim in dims:
            usd = float(dim.get("pricePerUnit", {}).get("USD", "nan"))
            if usd == usd and (usd > 0 or dim.get("beginRange") not in ("0", None)):
                return usd, str(dim.get("unit", ""))
    return None


def fetch(client: Any, region: str, key: str, spec: tuple[str, str, dict[str, str]]) -> Optional[dict[str, Any]]:
    service, pattern, extra = spec
    filters = [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": region}]
    filters += [{"Type": "TERM_MATCH", "Field": f, "Value": v} for f, v in sorted(extra.items())]
    for page in client.get_paginator("get_products").paginate(
            ServiceCode=service, Filters=filters, FormatVersion="aws_v1"):
        for text in page.get("PriceList", []):
            product = json.loads(text)
            usage = product.get("product", {}).get("attributes", {}).get("usagetype", "")
            if not re.search(pattern, usage):
                continue
            found = first_tier(product)
            if found:
                usd, unit = found
                return {"usd": usd, "api_unit": unit, "product": f"{service} {usage}"}
    return None


def _monthly(key: str, usd: float, api_unit: str) -> float:
    """The table keeps some figures per month; the Price List gives those per hour."""
    hourly = re.search(r"hr|hour", api_unit, re.I)
    return usd * HOURS if key.endswith("_month") and hourly and "GB" not in api_unit.upper() else usd


def refresh(client: Any, region: str, node_types: list[str], today: str) -> tuple[dict[str, Any], list[str]]:
    path = PRICES / f"{region}.json"
    table = json.loads(path.read_text()) if path.exists() else {
        "region": region, "currency": "USD", "items": {}}
    kept = []
    for key, spec in {**SPECS, **node_specs(node_types)}.items():
        got = fetch(client, region, key, spec)
        old = table["items"].get(key, {})
        if got is None:
            if key.startswith("elasticache.redis.") and key not in table["items"]:
                continue  # a node type only priced for the engine in use
            kept.append(key)
            continue
        table["items"][key] = {**old, "usd": round(_monthly(key, got["usd"], got["api_unit"]), 6),
                               "unit": old.get("unit", got["api_unit"]), "product": got["product"],
                               "page": old.get("page", "AWS Price List API")}
    table["recorded"] = today
    table["basis"] = f"AWS Price List API (pricing:GetProducts), on-demand first tier, fetched {today}."
    return table, kept


def main(argv: Optional[list[str]] = None) -> int:
    import boto3

    from infra.stack_files import ROOT, list_stacks, read_stack_file

    parser = argparse.ArgumentParser(prog="python -m offline.cost refresh", description=__doc__.split("\n")[0])
    parser.add_argument("--region", required=True)
    parser.add_argument("--node-type", action="append", default=[], help="also price this cache node type")
    args = parser.parse_args(argv)
    nodes = set(args.node_type)
    for stack in list_stacks(ROOT):
        raw, _ = read_stack_file(stack, ROOT)
        nodes.add((raw.get("llm-service:cache") or {}).get("nodeType", "cache.t4g.micro"))
    client = boto3.client("pricing", region_name="us-east-1")
    table, kept = refresh(client, args.region, sorted(nodes), datetime.date.today().isoformat())
    (PRICES / f"{args.region}.json").write_text(json.dumps(table, indent=2) + "\n")
    print(f"wrote offline/prices/{args.region}.json ({len(table['items'])} items)")
    for key in kept:
        print(f"not in the Price List, kept the old figure: {key}", file=sys.stderr)
    return 1 if kept else 0
