"""What a stack costs a month: its billable resources at list price, and its traffic's LLM tokens.

Every billable resource the stack declares, and the tokens its assumed traffic spends, with and
without the cache.

    python -m offline.cost --stack prod            # line items and totals (make cost STACK=prod)
    python -m offline.cost --stack prod --json
    python -m offline.cost refresh --region us-east-1   # rebuild offline/prices/<region>.json

Prices come from offline/prices/<region>.json, each figure with the AWS page and Price List
product it comes from; the traffic assumptions from the stack's `traffic` section; token prices
from `llm.prices`, the table the gateway's spend limits use. Every resource type the stack
declares is either priced here or named free with the reason (BILLING); a type in neither fails,
so a new billable resource cannot slip past the estimate.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from infra.config import StackConfig

PRICES = Path(__file__).resolve().parent / "prices"
HOURS = 730  # AWS pricing pages' month
DAYS = HOURS / 24
GB = 1024 ** 2  # kilobytes in a gigabyte (AWS bills GiB as "GB")

# Per-request log volume the estimate assumes (KB), by where it lands. The gateway's own line is
# about 0.7 KB; a WAF log record carries the request's headers (about 1.5 KB); VPC flow logs
# record each upstream connection's packets (about 0.3 KB a request on a keep-alive pool); ALB
# access logs about 0.5 KB a line, in S3.
LOG_KB = {"service": 0.7, "waf": 1.5, "flow": 0.3}
ACCESS_LOG_KB = 0.5
IMAGE_GB = 0.06  # the gateway's compressed image
CONTAINER_INSIGHTS_METRICS = 17  # per cluster and service (ECS Container Insights, standard)


@dataclass
class Line:
    group: str
    item: str
    quantity: str  # what is counted, as a reader checks it
    usd: float  # a month, at the minimum task count and the assumed traffic
    usd_max: float  # a month, at the maximum task count
    fixed: bool  # paid whatever the traffic (the floor a budget must clear)


class Unpriced(Exception):
    """A declared resource type, node type or region that the price table does not cover."""


def load_prices(region: str) -> dict[str, Any]:
    path = PRICES / f"{region}.json"
    if not path.exists():
        raise Unpriced(f"no price table for {region}: run `python -m offline.cost refresh --region {region}`")
    return json.loads(path.read_text())


class Estimate:
    """Line items from what a synthesis declares, priced from one region's table."""

    def __init__(self, resources: list[Any], cfg: StackConfig, table: dict[str, Any]):
        self.resources, self.cfg, self.table = resources, cfg, table
        self.lines: list[Line] = []
        t = cfg.traffic
        self.requests_month = t.requests_per_day * DAYS
        self.misses_month = self.requests_month * (1 - t.cache_hit_rate_percent / 100)

    def price(self, key: str) -> float:
        item = self.table["items"].get(key)
        if item is None:
            raise Unpriced(f"no price for {key} in offline/prices/{self.table['region']}.json: run "
                           f"`python -m offline.cost refresh --region {self.table['region']}`")
        return float(item["usd"])

    def add(self, group: str, item: str, quantity: str, usd: float, usd_max: Optional[float] = None,
            fixed: bool = True) -> None:
        self.lines.append(Line(group, item, quantity, round(usd, 2),
                               round(usd if usd_max is None else usd_max, 2), fixed))

    def of(self, typ: str) -> list[Any]:
        return [r for r in self.resources if r.type == typ]


# --- price lines per resource type --------------------------------------------------------------

def _tasks(e: Estimate, n: int) -> tuple[float, float]:
    """On-demand and Spot tasks out of n, by the service's capacity provider strategy."""
    (svc,) = e.of("aws:ecs/service:Service")
    strategy = {s["capacityProvider"]: s for s in svc.inputs.get("capacityProviderStrategies") or []}
    base = float(strategy.get("FARGATE", {}).get("base") or 0)
    fw = float(strategy.get("FARGATE", {}).get("weight") or 0)
    sw = float(strategy.get("FARGATE_SPOT", {}).get("weight") or 0)
    on_demand = min(n, base) + max(n - base, 0) * (fw / (fw + sw) if fw + sw else 1)
    return on_demand, n - on_demand


def fargate(e: Estimate, typ: str) -> None:
    (task,) = e.of("aws:ecs/taskDefinition:TaskDefinition")
    arch = (task.inputs.get("runtimePlatform") or {}).get("cpuArchitecture", "X86_64")
    vcpu, gb = int(task.inputs["cpu"]) / 1024, int(task.inputs["memory"]) / 1024
    targets = e.of("aws:appautoscaling/target:Target")
    (svc,) = e.of("aws:ecs/service:Service")
    low = int(targets[0].inputs["minCapacity"]) if targets else int(svc.inputs.get("desiredCount") or 1)
    high = int(targets[0].inputs["maxCapacity"]) if targets else low
    for kind, label in (("fargate", "on-demand"), ("fargate_spot", "Spot")):
        index = 0 if kind == "fargate" else 1
        n_low, n_high = _tasks(e, low)[index], _tasks(e, high)[index]
        if not n_high:
            continue
        for unit, size, key in (("vCPU", vcpu, "vcpu_hour"), ("GB", gb, "gb_hour")):
            price = e.price(f"{kind}.{key}.{arch}")
            e.add("compute", f"Fargate {arch} {label} {unit}",
                  f"{n_low:g} to {n_high:g} tasks x {size:g} {unit} x {HOURS} h x ${price}",
                  n_low * size * HOURS * price, n_high * size * HOURS * price)


def container_insights(e: Estimate, typ: str) -> None:
    for cluster in e.of(typ):
        settings = {s.get("name"): s.get("value") for s in cluster.inputs.get("settings") or []}
        if settings.get("containerInsights") in ("enabled", "enhanced"):
            price = e.price("cloudwatch.metric_month")
            e.add("monitoring", "Container Insights metrics",
                  f"about {CONTAINER_INSIGHTS_METRICS} metrics x ${price}", CONTAINER_INSIGHTS_METRICS * price)


def load_balancer(e: Estimate, typ: str) -> None:
    t = e.cfg.traffic
    for lb in e.of(typ):
        hour, lcu, ip = e.price("alb.hour"), e.price("alb.lcu_hour"), e.price("ipv4.hour")
        e.add("load balancer", "ALB hours", f"{HOURS} h x ${hour}", HOURS * hour)
        azs = len(lb.inputs.get("subnets") or [])
        e.add("load balancer", "ALB public IPv4 addresses", f"{azs} (one per AZ) x {HOURS} h x ${ip}",
              azs * HOURS * ip)
        # LCUs: the largest of new connections (25/s), active connections (3,000/min) and
        # processed bytes (1 GB/h) per LCU, each request counted as a new connection. At the shipped
        # stacks' loads new connections lead; large bodies make bytes lead. A thirtieth of an LCU at least.
        gb_hour = t.requests_per_day / 24 * (t.request_kilobytes + t.response_kilobytes) / GB
        new_per_s = t.requests_per_day / 86400
        lcus = max(gb_hour, new_per_s / 25, 1 / 30)
        e.add("load balancer", "ALB LCUs at the assumed traffic",
              f"{lcus:.3f} LCU x {HOURS} h x ${lcu}", lcus * HOURS * lcu, fixed=False)
        out_gb = e.requests_month * t.response_kilobytes / GB
        price = e.price("transfer_out.gb")
        e.add("load balancer", "data out to clients", f"{out_gb:.1f} GB x ${price}", out_gb * price, fixed=False)


def nat(e: Estimate, typ: str) -> None:
    gateways = e.of(typ)
    if not gateways:
        return
    t = e.cfg.traffic
    hour, per_gb = e.price("nat.hour"), e.price("nat.gb")
    e.add("network", "NAT gateway hours", f"{len(gateways)} x {HOURS} h x ${hour}", len(gateways) * HOURS * hour)
    # Cache misses go to the LLM API through the NAT (request out, answer back).
    gb = e.misses_month * (t.request_kilobytes + t.response_kilobytes) / GB
    e.add("network", "NAT data to the LLM API", f"{gb:.1f} GB x ${per_gb}", gb * per_gb, fixed=False)


def eips(e: Estimate, typ: str) -> None:
    ips = e.of(typ)
    if ips:
        price = e.price("ipv4.hour")
        e.add("network", "NAT public IPv4 addresses", f"{len(ips)} x {HOURS} h x ${price}",
              len(ips) * HOURS * price)


def endpoints(e: Estimate, typ: str) -> None:
    interface = [r for r in e.of(typ)
                 if r.inputs.get("vpcEndpointType") == "Interface"]
    if interface:
        azs = sum(len(r.inputs.get("subnetIds") or []) for r in interface)
        price = e.price("endpoint.hour")
        e.add("network", "interface endpoints",
              f"{len(interface)} endpoints, {azs} endpoint-AZs x {HOURS} h x ${price}", azs * HOURS * price)


def cache(e: Estimate, typ: str) -> None:
    for group in e.of(typ):
        node, n = group.inputs["nodeType"], int(group.inputs.get("numCacheClusters") or 1)
        engine = group.inputs.get("engine", "valkey")
        price = e.price(f"elasticache.{engine}.{node}")
        e.add("cache", f"ElastiCache {engine} {node}", f"{n} nodes x {HOURS} h x ${price}", n * HOURS * price)
        # Snapshot storage up to one node's size per day of retention is free; beyond, billed.


def waf(e: Estimate, typ: str) -> None:
    for acl in e.of(typ):
        rules = len(acl.inputs.get("rules") or [])
        a, r, m = e.price("waf.acl_month"), e.price("waf.rule_month"), e.price("waf.million_requests")
        e.add("edge", "WAF web ACL and rules", f"1 ACL x ${a} + {rules} rules x ${r}", a + rules * r)
        millions = e.requests_month / 1e6
        e.add("edge", "WAF requests", f"{millions:.2f} M x ${m}", millions * m, fixed=False)


@dataclass(frozen=True)
class Each:
    """A line for a resource priced per instance: how many the stack declares, times the price.
    (A class, not a closure made when the table is: a test of this module then reaches the code
    that prices, whenever it runs.)"""

    key: str
    group: str
    what: str

    def __call__(self, e: Estimate, typ: str) -> None:
        n = len(e.of(typ))
        price = e.price(self.key)
        e.add(self.group, self.what, f"{n} x ${price}", n * price)


def alarms(e: Estimate, typ: str) -> None:
    found = e.of(typ)
    # Metric-math alarms are billed per metric they read.
    metrics = sum(max(1, sum(1 for q in r.inputs.get("metricQueries") or [] if q.get("metric")))
                  for r in found)
    price = e.price("cloudwatch.alarm_metric_month")
    e.add("monitoring", "alarms", f"{len(found)} alarms reading {metrics} metrics x ${price}", metrics * price)


def gateway_metrics(e: Estimate, typ: str) -> None:
    """The gateway's EMF metrics; an image of your own emits what it emits."""
    from gateway.observe import METRICS

    if e.cfg.service.image != "build":
        return
    # Dimensions: Service, and Service with each client.
    count = len(METRICS) * (1 + e.cfg.traffic.clients)
    price = e.price("cloudwatch.metric_month")
    e.add("monitoring", "gateway metrics (EMF)",
          f"{len(METRICS)} metrics x (1 + {e.cfg.traffic.clients} clients) x ${price}", count * price)


def logs(e: Estimate, typ: str) -> None:
    groups = e.of(typ)
    kb = {name: LOG_KB[name] for name in LOG_KB
          if name != "flow" or e.of("aws:ec2/flowLog:FlowLog")}
    gb = e.requests_month * sum(kb.values()) / GB
    ingest, store = e.price("logs.ingest_gb"), e.price("logs.storage_gb_month")
    retention = max((float(g.inputs.get("retentionInDays") or 30) for g in groups), default=30)
    stored = gb * min(retention, 365) / 30.4
    e.add("logs", "log ingestion", f"{len(groups)} groups, {gb:.2f} GB x ${ingest}", gb * ingest, fixed=False)
    e.add("logs", "log storage", f"{stored:.2f} GB kept x ${store}", stored * store, fixed=False)


def access_logs(e: Estimate, typ: str) -> None:
    if e.of(typ):
        days = e.cfg.load_balancer.access_log_retention_days
        gb = e.requests_month * ACCESS_LOG_KB / GB * days / 30.4
        price = e.price("s3.storage_gb_month")
        e.add("logs", "ALB access logs in S3", f"{gb:.2f} GB kept x ${price}", gb * price, fixed=False)


def registry(e: Estimate, typ: str) -> None:
    if e.of(typ):
        price = e.price("ecr.storage_gb_month")
        kept = 50  # the repository's lifecycle policy keeps the newest 50 images
        e.add("registry", "ECR image storage", f"up to {kept} images x {IMAGE_GB} GB x ${price}",
              kept * IMAGE_GB * price)


GROUPS = ["compute", "load balancer", "network", "cache", "edge", "keys and secrets", "registry",
          "monitoring", "logs"]
FREE = "no charge of its own"
# Every resource type the stack declares: a pricer `(estimate, type)` that adds its lines, or why
# it costs nothing.
BILLING: dict[str, Any] = {
    "aws:ecs/service:Service": fargate,
    "aws:ecs/taskDefinition:TaskDefinition": gateway_metrics,
    "aws:ecs/cluster:Cluster": container_insights,
    "aws:ecs/clusterCapacityProviders:ClusterCapacityProviders": FREE,
    "aws:appautoscaling/target:Target": "priced with the service (min and max tasks)",
    "aws:appautoscaling/policy:Policy": "its alarms are created by AWS and not billed",
    "aws:lb/loadBalancer:LoadBalancer": load_balancer,
    "aws:lb/listener:Listener": FREE, "aws:lb/targetGroup:TargetGroup": FREE,
    "aws:ec2/natGateway:NatGateway": nat,
    "aws:ec2/eip:Eip": eips,
    "aws:ec2/vpcEndpoint:VpcEndpoint": endpoints,
    "aws:elasticache/replicationGroup:ReplicationGroup": cache,
    "aws:elasticache/parameterGroup:ParameterGroup": FREE, "aws:elasticache/subnetGroup:SubnetGroup": FREE,
    "aws:wafv2/webAcl:WebAcl": waf,
    "aws:wafv2/webAclAssociation:WebAclAssociation": FREE,
    "aws:wafv2/webAclLoggingConfiguration:WebAclLoggingConfiguration": "priced as log ingestion",
    "aws:kms/key:Key": Each("kms.key_month", "keys and secrets", "KMS keys"),
    "aws:kms/alias:Alias": FREE,
    "aws:secretsmanager/secret:Secret": Each("secretsmanager.secret_month", "keys and secrets", "secrets"),
    "aws:secretsmanager/secretVersion:SecretVersion": "priced with the secret",
    "aws:cloudwatch/logGroup:LogGroup": logs,
    "aws:ec2/flowLog:FlowLog": "priced as log ingestion",
    "aws:cloudwatch/metricAlarm:MetricAlarm": alarms,
    "aws:cloudwatch/dashboard:Dashboard": Each("cloudwatch.dashboard_month", "monitoring", "dashboards"),
    "aws:s3/bucket:Bucket": access_logs,
    "aws:ecr/repository:Repository": registry,
    "aws:ecr/lifecyclePolicy:LifecyclePolicy": FREE,
    "aws:budgets/budget:Budget": "the first two budgets of an account are free",
    "aws:sns/topic:Topic": "alarm e-mails are within SNS's free 1,000 a month",
    "aws:acm/certificate:Certificate": "public ACM certificates are free",
    "aws:acm/certificateValidation:CertificateValidation": FREE,
    "aws:route53/record:Record": "alias queries to an ALB are free; the zone is yours already",
    "docker-build:index:Image": "built where `pulumi up` runs; stored in ECR (priced there)",
    "random:index/randomId:RandomId": FREE, "random:index/randomPassword:RandomPassword": FREE,
    "pulumi:providers:aws": FREE,
}
# Networking, IAM and configuration resources that AWS does not bill.
for _t in ("ec2/vpc:Vpc", "ec2/subnet:Subnet", "ec2/routeTable:RouteTable", "ec2/route:Route",
           "ec2/routeTableAssociation:RouteTableAssociation", "ec2/internetGateway:InternetGateway",
           "ec2/securityGroup:SecurityGroup", "ec2/defaultSecurityGroup:DefaultSecurityGroup",
           "vpc/securityGroupIngressRule:SecurityGroupIngressRule",
           "vpc/securityGroupEgressRule:SecurityGroupEgressRule", "iam/role:Role", "iam/rolePolicy:RolePolicy",
           "sns/topicPolicy:TopicPolicy", "sns/topicSubscription:TopicSubscription",
           "s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
           "s3/bucketOwnershipControls:BucketOwnershipControls", "s3/bucketPolicy:BucketPolicy",
           "s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
           "s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
           "s3/bucketVersioning:BucketVersioning"):
    BILLING[f"aws:{_t}"] = FREE


@dataclass
class Tokens:
    model: str
    without_cache: float
    with_cache: float


@dataclass
class Report:
    stack: str
    region: str
    prices_recorded: str
    lines: list[Line]
    tokens: Tokens

    @property
    def fixed(self) -> float:
        return round(sum(line.usd for line in self.lines if line.fixed), 2)

    @property
    def total(self) -> float:
        return round(sum(line.usd for line in self.lines), 2)

    @property
    def total_max(self) -> float:
        return round(sum(line.usd_max for line in self.lines), 2)


@dataclass
class ModelRoute:
    """One row of the model table: a model clients call, one place it goes, and its price there."""

    model: str
    upstream: str
    upstream_model: str
    tier: int
    share_percent: float  # of its tier's requests, by weight (unrounded: the cost sums them)
    input_per_million: float
    output_per_million: float


def model_table(cfg: StackConfig) -> list[ModelRoute]:
    """Every model clients may call, by target: llm.routes' when set, else llm.prices' models, each
    to `default` under its own name. Prices as the gateway applies them."""
    from gateway.limits import Prices

    prices = Prices({m: p.model_dump(by_alias=True) for m, p in cfg.llm.prices.items()})
    rows = []
    for model, targets in cfg.llm.routes.items():
        for t in targets:
            tier_weight = sum(o.weight for o in targets if o.tier == t.tier)
            price = prices.of(t.model)
            rows.append(ModelRoute(model, t.upstream, t.model, t.tier, 100 * t.weight / tier_weight,
                                   price.input_per_million, price.output_per_million))
    for model, p in ({} if cfg.llm.routes else cfg.llm.prices).items():
        rows.append(ModelRoute(model, "default", model, 1, 100.0, p.input_per_million, p.output_per_million))
    return rows


def model_lines(rows: list[ModelRoute]) -> list[str]:
    out = ["models clients may call (USD per million tokens in / out):"]
    for r in rows:
        where = f"{r.upstream}:{r.upstream_model}"
        out.append(f"  {r.model:<24} tier {r.tier}  {r.share_percent:>5.1f}%  {where:<40} "
                   f"${r.input_per_million:g} / ${r.output_per_million:g}")
    return out


def token_spend(cfg: StackConfig) -> Tokens:
    """The LLM API's bill for the assumed traffic, priced by llm.prices like the gateway does; a routed
    model at its first tier's prices, weighted by the share each target takes."""
    from gateway.limits import Price

    t = cfg.traffic
    first = [r for r in model_table(cfg) if r.model == t.model and r.tier == 1]
    per_request = sum(r.share_percent / 100 * Price(r.input_per_million, r.output_per_million).nano(
        t.input_tokens_per_request, t.output_tokens_per_request) for r in first) / 1e9
    month = t.requests_per_day * DAYS * per_request
    return Tokens(t.model, round(month, 2), round(month * (1 - t.cache_hit_rate_percent / 100), 2))


def estimate(stack: str, resources: list[Any], cfg: StackConfig) -> Report:
    e = Estimate(resources, cfg, load_prices(cfg.region))
    for typ in sorted({r.type for r in resources if not r.type.startswith("llm-service:")}):
        how = BILLING.get(typ)
        if how is None:
            raise Unpriced(f"{typ} has no line in offline/cost.py BILLING: price it, or say why it is free")
        if callable(how):  # a pricer; a string says why the type is free
            how(e, typ)
    lines = sorted(e.lines, key=lambda line: GROUPS.index(line.group))
    return Report(stack, cfg.region, e.table["recorded"], lines, token_spend(cfg))


def to_text(r: Report) -> str:
    width = max(len(line.item) for line in r.lines)
    out = [f"monthly cost of {r.stack} ({r.region} list prices recorded {r.prices_recorded}; "
           "at the minimum task count, with the maximum after it where it differs)"]
    for line in r.lines:
        more = f"  (max ${line.usd_max:,.2f})" if line.usd_max != line.usd else ""
        out.append(f"  {line.item:<{width}}  ${line.usd:>9,.2f}{more}   {line.quantity}"
                   + ("" if line.fixed else "  [traffic]"))
    t = r.tokens
    out += [
        f"AWS: ${r.total:,.2f} a month (${r.fixed:,.2f} fixed, the rest from the assumed traffic); "
        f"${r.total_max:,.2f} at the maximum task count",
        f"LLM tokens ({t.model}): ${t.without_cache:,.2f} a month without the cache, "
        f"${t.with_cache:,.2f} with it: the cache saves ${t.without_cache - t.with_cache:,.2f}",
        f"monthly total: ${r.total + t.with_cache:,.2f} (AWS ${r.total:,.2f} + LLM ${t.with_cache:,.2f})",
    ]
    return "\n".join(out)


def to_json(r: Report) -> dict[str, Any]:
    return {"stack": r.stack, "region": r.region, "pricesRecorded": r.prices_recorded,
            "lines": [asdict(line) for line in r.lines], "awsFixed": r.fixed, "awsTotal": r.total,
            "awsTotalAtMaxTasks": r.total_max, "tokens": asdict(r.tokens),
            "monthlyTotal": round(r.total + r.tokens.with_cache, 2)}


def budget_warning(r: Report, cfg: StackConfig) -> Optional[str]:
    """A budget below the fixed cost alarms every month, and an alarm that always fires is ignored."""
    if cfg.budget.monthly_limit_usd < r.fixed:
        return (f"warning: llm-service:budget.monthlyLimitUsd is ${cfg.budget.monthly_limit_usd:,.2f}, below "
                f"the stack's fixed AWS cost of ${r.fixed:,.2f} a month: the budget alert would fire "
                "every month; raise it above the estimate")
    return None


def report_for(stack: str, root: Optional[Path] = None):
    from infra.config import load
    from infra.stack_files import ROOT, read_stack_file
    from offline.synth import synthesize

    raw, keys = read_stack_file(stack, root or ROOT)
    cfg = load(raw, keys)
    synthesis = synthesize(stack, raw=raw, secret_keys=keys)
    return estimate(stack, synthesis.resources, cfg), cfg


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["refresh"]:
        from offline.prices_refresh import main as refresh
        return refresh(argv[1:])
    from infra.config import ConfigError, error_lines

    parser = argparse.ArgumentParser(prog="python -m offline.cost", description=__doc__.split("\n")[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--dir", type=Path, default=None, help="where the stack files are")
    args = parser.parse_args(argv)
    try:
        report, cfg = report_for(args.stack, args.dir)
    except ConfigError as e:
        print(error_lines(e), file=sys.stderr)
        return 2
    except (Unpriced, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(to_json(report), indent=2) if args.json else to_text(report))
    warning = budget_warning(report, cfg)
    if warning:
        print(warning, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
