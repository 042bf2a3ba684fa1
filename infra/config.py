"""The stack's config contract: one pydantic model, validated before any resource is declared.

Keys are written in the stack files as `llm-service:<section>` objects with camelCase fields
(`llm-service:service.maxTasks` in `pulumi config set --path` terms). Every failure becomes one
`ConfigError` whose message names the key as the user writes it, the value given, and what is
allowed. Defaults suit a small staging environment; prod must say more (see `_prod_rules`).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal, Optional

from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from components.cache import FAMILIES, parameter_group_family
from components.network import AZ_SLOTS, TIERS, subnet_cidrs

PROJECT = "llm-service"

# Fargate accepts only these task sizes (cpu units -> memory MiB). Source: the ECS developer guide,
# "Task CPU and memory" for Fargate on Linux.
FARGATE_SIZES: dict[int, list[int]] = {
    256: [512, 1024, 2048],
    512: list(range(1024, 4096 + 1, 1024)),
    1024: list(range(2048, 8192 + 1, 1024)),
    2048: list(range(4096, 16384 + 1, 1024)),
    4096: list(range(8192, 30720 + 1, 1024)),
    8192: list(range(16384, 61440 + 1, 4096)),
    16384: list(range(32768, 122880 + 1, 8192)),
}


# Shapes of LLM API keys that must never sit in a plain-text config value.
KEY_PATTERN = re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}")
# ACM certificate ARNs: arn:<partition>:acm:<region>:<account>:certificate/<uuid>.
CERTIFICATE_ARN = re.compile(
    r"arn:(?P<partition>aws|aws-cn|aws-us-gov):acm:(?P<region>[a-z]{2}(-[a-z]+)+-\d):"
    r"(?P<account>\d{12}):certificate/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)


def physical_prefix(stack: str) -> str:
    """Names AWS shows: cluster, service, cache, WAF ACL, alarms, dashboard, budget."""
    return f"{PROJECT}-{stack}"


def iam_path(stack: str) -> str:
    """The path of every IAM role the stack creates, so a deploy role's IAM rights can be scoped to it."""
    return f"/{PROJECT}/{stack}/"


def secret_prefix(stack: str) -> str:
    """Secrets Manager names (`<prefix>/<name>`) and the KMS alias."""
    return f"{PROJECT}/{stack}"


class ConfigError(Exception):
    """Bad stack config: one message naming the key, the value given and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"{key}: got {value!r}; {allowed}")


def _key(path: str) -> str:
    return path if ":" in path else f"{PROJECT}:{path}"


class _Section(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class NetworkConfig(_Section):
    cidr: str = "10.20.0.0/16"
    subnet_prefix_length: int = Field(20, ge=16, le=28)
    az_count: int = Field(2, ge=2, le=AZ_SLOTS)
    nat_strategy: Literal["single", "per_az"] = "single"
    interface_endpoints: bool = False
    flow_log_retention_days: int = 30

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        net = ipaddress.ip_network(v, strict=True)  # ValueError names the problem
        if net.version != 4 or not net.is_private:
            raise ValueError("must be a private IPv4 CIDR such as 10.20.0.0/16")
        if not 16 <= net.prefixlen <= 24:
            raise ValueError("VPC prefix length must be between /16 and /24")
        return v


class PriceConfig(_Section):
    input_per_million: float = Field(ge=0)  # USD per million input tokens
    output_per_million: float = Field(ge=0)


DEFAULT_PRICES = {
    # USD per million tokens, from openai.com/api/pricing (standard tier); check yours.
    "gpt-4o-mini": PriceConfig(input_per_million=0.15, output_per_million=0.60),
    "gpt-4o": PriceConfig(input_per_million=2.50, output_per_million=10.00),
    "text-embedding-3-small": PriceConfig(input_per_million=0.02, output_per_million=0.0),
    "default": PriceConfig(input_per_million=2.50, output_per_million=10.00),
}


class LlmConfig(_Section):
    """Non-secret LLM API settings; they become plain environment variables."""

    org_id: str = ""
    project_id: str = ""
    base_url: str = "https://api.openai.com/v1"
    # What the gateway's spend limits and the cost estimate price tokens at. A model not listed
    # (dated snapshots count as their family) is priced as `default`.
    prices: dict[str, PriceConfig] = Field(default_factory=lambda: dict(DEFAULT_PRICES))

    @field_validator("prices")
    @classmethod
    def _has_default(cls, v: dict[str, PriceConfig]) -> dict[str, PriceConfig]:
        if "default" not in v:
            raise ValueError("needs a `default` entry: what a model not listed is priced at")
        return v


class SecretsConfig(_Section):
    source: Literal["external", "pulumi"] = "external"
    names: list[str] = Field(default_factory=lambda: ["openai-api-key"], min_length=1)
    recovery_window_days: int = 7
    rotation_age_days: int = Field(90, ge=1)
    key_deletion_window_days: int = Field(7, ge=7, le=30)

    @field_validator("names")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for n in v:
            if not re.fullmatch(r"[a-z][a-z0-9-]{1,62}", n):
                raise ValueError(f"{n!r} must be lower-case letters, digits and hyphens")
        if len(set(v)) != len(v):
            raise ValueError("names must be unique")
        return v

    @field_validator("recovery_window_days")
    @classmethod
    def _recovery(cls, v: int) -> int:
        if v != 0 and not 7 <= v <= 30:
            raise ValueError("must be 0 (delete at once) or 7 to 30 days")
        return v


BUILD = "build"  # service.image: build gateway/ and deploy it by digest


class ServiceConfig(_Section):
    # "build": the stack builds gateway/ (Docker with buildx needed where `pulumi up` runs) and
    # deploys it by digest; anything else is an image reference used as given.
    image: str = BUILD
    cpu: int = 512
    memory: int = 1024
    architecture: Literal["ARM64", "X86_64"] = "ARM64"
    container_port: int = Field(8080, ge=1024, le=65535)
    user: str = "1000:1000"
    # Run inside the container; "" means the gateway's own check (`python -m gateway.healthcheck`)
    # for the built image, `curl -fsS http://localhost:<port><healthCheckPath>` for any other.
    health_check_command: str = ""
    min_tasks: int = Field(1, ge=0)
    max_tasks: int = Field(4, ge=1)
    desired_tasks: int = Field(1, ge=0)
    autoscaling: bool = True
    cpu_target: int = Field(60, ge=10, le=90)
    memory_target: int = Field(70, ge=10, le=90)
    requests_per_target: int = Field(50, ge=1)
    scale_out_cooldown: int = Field(60, ge=0)
    scale_in_cooldown: int = Field(300, ge=0)
    fargate_base: int = Field(0, ge=0)
    fargate_weight: int = Field(1, ge=0)
    spot_weight: int = Field(0, ge=0)
    health_check_grace_seconds: int = Field(60, ge=0)
    stop_timeout_seconds: int = Field(120, ge=2, le=120)
    log_retention_days: int = 30
    execute_command: bool = False
    ecr_repository: bool = True

    @model_validator(mode="after")
    def _size_and_bounds(self) -> ServiceConfig:
        if self.cpu not in FARGATE_SIZES:
            raise ConfigError(
                _key("service.cpu"), self.cpu,
                f"Fargate accepts cpu {sorted(FARGATE_SIZES)}",
            )
        allowed = FARGATE_SIZES[self.cpu]
        if self.memory not in allowed:
            raise ConfigError(
                _key("service.memory"), self.memory,
                f"with cpu {self.cpu} Fargate accepts memory {allowed[0]}..{allowed[-1]} "
                f"MiB in steps of {allowed[1] - allowed[0]}: {allowed}",
            )
        if self.min_tasks > self.max_tasks:
            raise ConfigError(
                _key("service.minTasks"), self.min_tasks,
                f"must be <= service.maxTasks ({self.max_tasks})",
            )
        if not self.min_tasks <= self.desired_tasks <= self.max_tasks:
            raise ConfigError(
                _key("service.desiredTasks"), self.desired_tasks,
                f"must lie between service.minTasks ({self.min_tasks}) "
                f"and service.maxTasks ({self.max_tasks})",
            )
        # No Spot/architecture rule: the ECS API reference (CapacityProviderStrategyItem, as
        # carried in botocore 1.44's ECS model) says FARGATE_SPOT runs ARM64 Linux tasks on
        # platform version 1.4.0 or later, and the service asks for LATEST. (The developer
        # guide's "Fargate capacity providers" page still says X86_64 only; the API reference
        # is the newer text.) tests/test_service.py pins that sentence in botocore's model.
        if self.fargate_weight + self.spot_weight == 0:
            raise ConfigError(
                _key("service.fargateWeight"), 0,
                "fargateWeight + spotWeight must be at least 1",
            )
        return self


class LoadBalancerConfig(_Section):
    certificate_arn: str = ""
    domain_name: str = ""
    hosted_zone_id: str = ""
    # No plain-HTTP mode: API clients send a bearer key with every request, and the policy
    # pack refuses a listener that forwards HTTP, so config never offers one.
    http_mode: Literal["none", "redirect"] = "none"
    ingress_cidrs: list[str] = Field(default_factory=lambda: ["0.0.0.0/0"])
    ingress_ipv6_cidrs: list[str] = Field(default_factory=lambda: ["::/0"])
    idle_timeout_seconds: int = Field(600, ge=1, le=4000)
    health_check_path: str = Field("/healthz", pattern=r"^/")
    deregistration_delay_seconds: int = Field(60, ge=0, le=3600)
    ssl_policy: str = "ELBSecurityPolicy-TLS13-1-2-2021-06"
    access_log_retention_days: int = Field(90, ge=1)

    @field_validator("certificate_arn")
    @classmethod
    def _certificate_shape(cls, v: str) -> str:
        if v and not CERTIFICATE_ARN.fullmatch(v):
            raise ValueError(
                "an ACM certificate ARN is arn:<partition>:acm:<region>:<12-digit account>:"
                "certificate/<uuid>; copy it from `aws acm list-certificates`")
        return v

    @model_validator(mode="after")
    def _tls_source(self) -> LoadBalancerConfig:
        has_dns = bool(self.domain_name and self.hosted_zone_id)
        if not (self.certificate_arn or has_dns):
            raise ConfigError(
                _key("loadBalancer.certificateArn"), self.certificate_arn,
                "HTTPS needs certificateArn, or domainName with hostedZoneId "
                "(the stack issues and validates the certificate in that Route 53 zone)",
            )
        return self


# AWS NAT gateways drop a flow after 350 s without a packet (VPC user guide, "NAT gateway
# basics"); a keepalive probe must leave before that, with room for one probe interval (15 s).
NAT_IDLE_TIMEOUT_SECONDS = 350


class LimitsConfig(_Section):
    """Per-client limits (0: none); each client's own, in the client-keys secret, override these."""

    requests_per_minute: int = Field(0, ge=0)
    tokens_per_minute: int = Field(0, ge=0)
    usd_per_day: float = Field(0.0, ge=0)


class GatewayConfig(_Section):
    """The gateway's request path (gateway/). Become GATEWAY_* environment variables."""

    sse_keepalive_seconds: int = Field(15, ge=1)
    upstream_tcp_keepalive_seconds: int = Field(60, ge=10)
    max_attempts: int = Field(3, ge=1, le=10)
    retry_budget_seconds: int = Field(20, ge=0)
    max_request_megabytes: int = Field(8, ge=1, le=64)
    log_prompts: bool = False
    ttft_p95_alarm_seconds: float = Field(10.0, gt=0)
    upstream_429_per_5min: int = Field(20, ge=1, alias="upstream429Per5min")
    cache_ttl_seconds: int = Field(3600, ge=1, le=30 * 86400)
    coalesce_wait_seconds: int = Field(30, ge=0, le=300)
    output_tokens_estimate: int = Field(1000, ge=1)  # reserved when a request sets no max tokens
    default_limits: LimitsConfig = LimitsConfig()
    spend_per_hour_alarm_usd: float = Field(10.0, gt=0)  # estimated spend, all clients
    cache_errors_per_5min: int = Field(10, ge=1, alias="cacheErrorsPer5min")  # served without the cache

    @field_validator("upstream_tcp_keepalive_seconds")
    @classmethod
    def _under_nat_timeout(cls, v: int) -> int:
        if v + 15 >= NAT_IDLE_TIMEOUT_SECONDS:
            raise ValueError(f"the first keepalive probe (after {v} s, then every 15 s) must leave "
                             f"before a NAT gateway drops the idle flow at {NAT_IDLE_TIMEOUT_SECONDS} s: "
                             f"at most {NAT_IDLE_TIMEOUT_SECONDS - 16}")
        return v


class CacheConfig(_Section):
    engine: Literal["valkey", "redis"] = "valkey"
    engine_version: str = "8.0"
    node_type: str = Field("cache.t4g.micro", pattern=r"^cache\.[a-z0-9]+\.[a-z0-9]+$")
    nodes: int = Field(1, ge=1, le=6)
    multi_az: bool = False
    automatic_failover: bool = False
    snapshot_retention_days: int = Field(0, ge=0, le=35)
    maintenance_window: str = "sun:05:00-sun:06:00"
    snapshot_window: str = "03:00-04:00"
    log_retention_days: int = 14
    port: int = 6379

    @model_validator(mode="after")
    def _engine_and_ha(self) -> CacheConfig:
        family = parameter_group_family(self.engine, self.engine_version)
        if family is None:
            raise ConfigError(
                _key("cache.engineVersion"), self.engine_version,
                f"{self.engine} versions with a parameter group family: "
                f"{', '.join(sorted(FAMILIES[self.engine]))}",
            )
        if (self.multi_az or self.automatic_failover) and self.nodes < 2:
            raise ConfigError(
                _key("cache.nodes"), self.nodes,
                "multiAz and automaticFailover need at least 2 nodes",
            )
        if self.multi_az and not self.automatic_failover:
            raise ConfigError(
                _key("cache.automaticFailover"), False,
                "ElastiCache requires automaticFailover when multiAz is on",
            )
        return self


class EdgeConfig(_Section):
    rate_limit: int = Field(300, ge=10, le=2_000_000_000)
    rate_window_seconds: Literal[60, 120, 300, 600] = 300
    log_retention_days: int = 30


class MonitoringConfig(_Section):
    alert_emails: list[EmailStr] = Field(default_factory=list)
    target_5xx_per_minute: int = Field(5, ge=1, alias="target5xxPerMinute")
    alb_5xx_per_minute: int = Field(5, ge=1, alias="alb5xxPerMinute")
    p95_latency_seconds: float = Field(20.0, gt=0, alias="p95LatencySeconds")
    p99_latency_seconds: float = Field(60.0, gt=0, alias="p99LatencySeconds")
    cpu_high_percent: int = Field(85, ge=1, le=100)
    memory_high_percent: int = Field(85, ge=1, le=100)
    cache_cpu_percent: int = Field(80, ge=1, le=100)
    cache_memory_percent: int = Field(85, ge=1, le=100)
    cache_evictions_per_5min: int = Field(100, ge=1, alias="cacheEvictionsPer5min")
    cache_hit_rate_min_percent: int = Field(20, ge=0, le=100)
    waf_blocked_per_5min: int = Field(500, ge=1, alias="wafBlockedPer5min")


class BudgetConfig(_Section):
    monthly_limit_usd: float = 100.0
    actual_thresholds: list[int] = Field(default_factory=lambda: [50, 80, 100])
    forecast_thresholds: list[int] = Field(default_factory=lambda: [100])

    @field_validator("monthly_limit_usd")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be a positive amount in USD")
        return v

    @field_validator("actual_thresholds", "forecast_thresholds")
    @classmethod
    def _percentages(cls, v: list[int]) -> list[int]:
        if any(not 1 <= p <= 1000 for p in v):
            raise ValueError("each threshold is a percentage of the limit, 1 to 1000")
        return sorted(set(v))


class StackConfig(BaseModel):
    """The whole stack config. Build it with `load()`; use it read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    region: str = Field("us-east-1", alias="aws:region", pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    environment: Literal["staging", "prod"]
    tags: dict[str, str] = Field(default_factory=dict)
    network: NetworkConfig = NetworkConfig()
    llm: LlmConfig = LlmConfig()
    secrets: SecretsConfig = SecretsConfig()
    service: ServiceConfig = ServiceConfig()
    # No default: an omitted section must still say where the certificate comes from.
    load_balancer: LoadBalancerConfig = Field(alias="loadBalancer")
    cache: CacheConfig = CacheConfig()
    gateway: GatewayConfig = GatewayConfig()
    edge: EdgeConfig = EdgeConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    budget: BudgetConfig = BudgetConfig()

    @property
    def is_prod(self) -> bool:
        return self.environment == "prod"

    @model_validator(mode="after")
    def _cross_checks(self) -> StackConfig:
        _network_fits(self.network)
        _certificate_in_region(self.load_balancer.certificate_arn, self.region)
        _streams_survive_the_idle_timeout(self.gateway, self.load_balancer)
        if self.service.image == BUILD and not self.service.ecr_repository:
            raise ConfigError(_key("service.ecrRepository"), False,
                              "service.image: build pushes to the stack's ECR repository; set true, "
                              "or set service.image to an image reference")
        if self.is_prod:
            _prod_rules(self)
        return self


def _network_fits(n: NetworkConfig) -> None:
    try:
        subnet_cidrs(n.cidr, n.subnet_prefix_length, n.az_count)
    except ValueError:
        needed = len(TIERS) * AZ_SLOTS
        raise ConfigError(
            _key("network.cidr"), n.cidr,
            f"needs room for {len(TIERS)} tiers x {AZ_SLOTS} AZ slots = {needed} subnets of "
            f"/{n.subnet_prefix_length}; use a /{n.subnet_prefix_length - 4} or larger VPC, "
            f"or a longer network.subnetPrefixLength",
        ) from None


def _streams_survive_the_idle_timeout(g: GatewayConfig, lb: LoadBalancerConfig) -> None:
    """The ALB closes a connection that carries no byte for idleTimeoutSeconds. While the model
    thinks, only the gateway's SSE comments cross it (at least three per timeout, so one lost to
    scheduling still leaves two); while it retries, nothing does."""
    idle = lb.idle_timeout_seconds
    if g.sse_keepalive_seconds * 3 > idle:
        raise ConfigError(_key("gateway.sseKeepaliveSeconds"), g.sse_keepalive_seconds,
                          f"at most a third of loadBalancer.idleTimeoutSeconds ({idle}): "
                          f"{idle // 3} or less, or the load balancer cuts streams whose model is thinking")
    if g.retry_budget_seconds * 2 > idle:
        raise ConfigError(_key("gateway.retryBudgetSeconds"), g.retry_budget_seconds,
                          f"at most half of loadBalancer.idleTimeoutSeconds ({idle}): the client "
                          "receives nothing while the gateway retries")
    if (g.retry_budget_seconds + g.coalesce_wait_seconds) * 2 > idle:
        raise ConfigError(_key("gateway.coalesceWaitSeconds"), g.coalesce_wait_seconds,
                          f"with retryBudgetSeconds ({g.retry_budget_seconds}) at most half of "
                          f"loadBalancer.idleTimeoutSeconds ({idle}): a request waiting for another's "
                          "answer, then retrying, receives nothing meanwhile")


def _certificate_in_region(arn: str, region: str) -> None:
    """An ALB listener can only use a certificate from ACM in its own region."""
    m = CERTIFICATE_ARN.fullmatch(arn)
    if m and m["region"] != region:
        raise ConfigError(
            _key("loadBalancer.certificateArn"), arn,
            f"the certificate is in {m['region']}, the stack in {region}: a load balancer uses "
            f"ACM certificates of its own region only; request or import one in {region}",
        )


def _prod_rules(c: StackConfig) -> None:
    """What production must have; staging may go without."""
    rules = [
        ("network.azCount", c.network.az_count, c.network.az_count >= 3, "prod needs at least 3 AZs"),
        ("network.natStrategy", c.network.nat_strategy, c.network.nat_strategy == "per_az",
         "prod needs per_az, so that one AZ outage does not cut egress"),
        ("cache.multiAz", c.cache.multi_az, c.cache.multi_az, "prod needs true (a replica in another AZ)"),
        ("cache.automaticFailover", c.cache.automatic_failover, c.cache.automatic_failover,
         "prod needs true"),
        ("cache.nodes", c.cache.nodes, c.cache.nodes >= 2, "prod needs at least 2 nodes"),
        ("cache.snapshotRetentionDays", c.cache.snapshot_retention_days,
         c.cache.snapshot_retention_days >= 7, "prod needs at least 7 days"),
        ("service.executeCommand", c.service.execute_command, not c.service.execute_command,
         "prod needs false (no shell into production tasks)"),
        ("service.minTasks", c.service.min_tasks, c.service.min_tasks >= 2,
         "prod needs at least 2 tasks, so one task failing does not take the service down"),
        ("secrets.keyDeletionWindowDays", c.secrets.key_deletion_window_days,
         c.secrets.key_deletion_window_days == 30, "prod needs 30 days"),
        ("monitoring.alertEmails", list(c.monitoring.alert_emails), bool(c.monitoring.alert_emails),
         "prod needs at least one address"),
    ]
    for path, value, ok, allowed in rules:
        if not ok:
            raise ConfigError(_key(path), value, allowed)


REQUIRED_HINTS = {
    f"{PROJECT}:loadBalancer": "required: say where the HTTPS certificate comes from "
                               "(certificateArn, or domainName with hostedZoneId)",
}


def _loc_to_key(loc: tuple) -> str:
    parts = [str(p) for p in loc if not isinstance(p, int)]
    if not parts:
        return PROJECT
    return _key(".".join(parts))


def load(raw: dict[str, Any], secret_keys: set[str] = frozenset()) -> StackConfig:
    """Validate a stack's raw config.

    `raw` maps config keys as Pulumi gives them (`aws:region`, `llm-service:service`, ...) to values,
    with objects already parsed. `secret_keys` names the keys that are stored encrypted.
    """
    _refuse_plain_secrets(raw, secret_keys)
    data: dict[str, Any] = {}
    for full, value in raw.items():
        ns, _, name = full.partition(":")
        if full == "aws:region":
            data[full] = value
        elif ns == PROJECT and name not in _secret_value_names(raw):
            data[name] = value
    try:
        cfg = StackConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            raise ConfigError(_loc_to_key(err["loc"]), None, REQUIRED_HINTS.get(
                _loc_to_key(err["loc"]), "required")) from None
        if err["type"] == "extra_forbidden":
            msg = "unknown key; check the spelling against infra/config.py"
        elif err["type"] == "literal_error" and "ctx" in err:
            msg = f"allowed: {err['ctx'].get('expected')}"
        raise ConfigError(_loc_to_key(err["loc"]), err.get("input"), msg) from None
    _check_secret_values(cfg, raw, secret_keys)
    return cfg


def _secret_value_names(raw: dict[str, Any]) -> set[str]:
    """Secret values live in top-level keys named after the secret (`llm-service:openai-api-key`)."""
    names = (raw.get(f"{PROJECT}:secrets") or {}).get("names") or SecretsConfig().names
    return set(names)


def _refuse_plain_secrets(raw: dict[str, Any], secret_keys: set[str]) -> None:
    for key, value in raw.items():
        if key in secret_keys:
            continue
        for path, leaf in _leaves(key, value):
            if isinstance(leaf, str) and KEY_PATTERN.search(leaf):
                raise ConfigError(
                    path, "sk-…(redacted)",
                    "an API key may not be stored in plain text; use "
                    "`python -m infra.apikey put` (external) or `pulumi config set --secret`",
                )


def _check_secret_values(cfg: StackConfig, raw: dict[str, Any], secret_keys: set[str]) -> None:
    for name in cfg.secrets.names:
        key = f"{PROJECT}:{name}"
        if key not in raw:
            if cfg.secrets.source == "pulumi":
                raise ConfigError(
                    key, None,
                    f"secrets.source is pulumi: run `pulumi config set --secret {name} <value>`",
                )
            continue
        if key not in secret_keys:
            raise ConfigError(
                key, "(redacted)",
                f"stored in plain text; run `pulumi config set --secret {name}` to encrypt it",
            )
        if cfg.secrets.source == "external":
            raise ConfigError(
                key, "(secret)",
                "secrets.source is external, so the value must not be in Pulumi config; "
                "remove it or set secrets.source to pulumi",
            )


def _leaves(path: str, value: Any):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(f"{path}.{k}", v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(f"{path}[{i}]", v)
    else:
        yield path, value


# --- example values ------------------------------------------------------------------------------
# The shipped stack files carry example values so that the offline plan runs as they are. A real
# preview or up refuses them before anything is declared: each would fail minutes into a deploy
# (a certificate in a placeholder account) or fail silently (alerts to a domain nobody reads).

# Account ids AWS documentation uses in examples (never a real account).
EXAMPLE_ACCOUNTS = {"123456789012", "111122223333", "444455556666", "000000000000"}
# RFC 2606 / RFC 6761 names reserved for documentation and testing.
EXAMPLE_DOMAIN = re.compile(
    r"(^|[.@/])(example\.(com|net|org)|[a-z0-9-]+\.(example|test|invalid|localhost))(\b|$)", re.I)
EXAMPLE_WORD = re.compile(r"(^|[-_])example($|[-_])", re.I)
_SET_INSTEAD = {
    "loadBalancer.certificateArn": "set the ARN of your ACM certificate in this region "
                                   "(`aws acm list-certificates`), or domainName with hostedZoneId",
    "loadBalancer.domainName": "set a domain you own, in the Route 53 zone hostedZoneId",
    "monitoring.alertEmails": "set addresses someone reads: alarms and budget alerts go there",
    "llm.orgId": "set your organization id from the LLM provider's settings, or \"\" to send none",
    "llm.projectId": "set the project id of this stack's LLM-API project, or \"\" to send none",
    "llm.baseUrl": "set the LLM API's base URL",
}


def example_values(raw: dict[str, Any]) -> list[ConfigError]:
    """Every example value in a stack's raw config, one error each, keyed as written."""
    found = []
    for key, value in raw.items():
        for path, leaf in _leaves(key, value):
            if isinstance(leaf, str) and _is_example(leaf):
                short = re.sub(r"\[\d+\]$", "", path.partition(":")[2])
                found.append(ConfigError(path, leaf, "an example value from the shipped stack file; "
                                         + _SET_INSTEAD.get(short, "replace it with your own")))
    return found


def _is_example(text: str) -> bool:
    accounts = re.findall(r"(?<!\d)\d{12}(?!\d)", text)
    return (any(a in EXAMPLE_ACCOUNTS for a in accounts) or bool(EXAMPLE_DOMAIN.search(text))
            or bool(EXAMPLE_WORD.search(text)))


def certificate_account_error(cfg: StackConfig, account: str) -> Optional[ConfigError]:
    """A listener can only use a certificate of the load balancer's own account."""
    m = CERTIFICATE_ARN.fullmatch(cfg.load_balancer.certificate_arn)
    if m and m["account"] != account and m["account"] not in EXAMPLE_ACCOUNTS:
        return ConfigError(
            _key("loadBalancer.certificateArn"), cfg.load_balancer.certificate_arn,
            f"the certificate is in account {m['account']}, the stack deploys to {account}: "
            "a load balancer uses certificates of its own account only",
        )
    return None


class ConfigErrors(ConfigError):
    """Several config errors at once, one line each."""

    def __init__(self, errors: list[ConfigError]):
        self.errors = errors
        first = errors[0]
        Exception.__init__(self, "\n".join(str(e) for e in errors))
        self.key, self.value, self.allowed = first.key, first.value, first.allowed
