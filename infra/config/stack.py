"""The whole stack's config: its sections, the rules across them, and what prod must say more."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from components.load_balancer import OUT_OF_ROTATION_SECONDS
from infra.aws_rules import (
    MAX_TAGS,
    RESERVED_TAG_KEYS,
    regions,
    tag_problem,
)
from infra.config.errors import ConfigError, ConfigErrors, stack_key
from infra.config.names import CERTIFICATE_ARN, PROJECT
from infra.config.sections import (
    BUILD,
    DRAIN_MARGIN_SECONDS,
    BudgetConfig,
    CacheConfig,
    EdgeConfig,
    GatewayConfig,
    LlmConfig,
    LoadBalancerConfig,
    MonitoringConfig,
    NetworkConfig,
    SecretsConfig,
    ServiceConfig,
    TrafficConfig,
    allow,
    docstring_descriptions,
    drain_seconds,
    spot_stream_seconds,
)

# Where a section's default differs from the default of the component argument of the same name
# (infra/program.py passes each section to its component whole), and why. Every other setting a
# section shares with a component has one default: tests/test_component_args.py fails on any
# difference not listed here.
DELIBERATE_DEFAULTS = {
    "network.cidr": "the component takes no default range; a stack uses 10.20.0.0/16",
    "network.az_count": "the component takes no default count; a stack uses 2 (prod requires 3)",
    "service.image": "the component takes an image reference; a stack builds gateway/ (`build`)",
    "budget.monthly_limit_usd": "the component takes no default limit; a stack starts at $100",
    "secrets.key_deletion_window_days": "7 in a stack, so a torn-down staging frees its key in a week "
                                        "(prod requires 30); 30, KMS's longest, in the component, for "
                                        "a fork that sets nothing",
}


class StackConfig(BaseModel):
    """The whole stack config. Build it with `load()`; use it read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, coerce_numbers_to_str=True)

    region: str = Field("us-east-1", alias="aws:region",
                        json_schema_extra=allow("a region in botocore's endpoint data"))
    """The stack's AWS region."""
    environment: Literal["staging", "prod"]
    """Which environment this is; prod turns on the stricter rules."""
    teardown: bool = False
    """true lifts prod's protection so that `pulumi destroy` can run (`make destroy-ready`):
    nothing `protect`ed, the load balancer's deletion protection off. false in normal operation."""
    tags: dict[str, str] = Field(default_factory=dict, json_schema_extra=allow(
        "AWS tags, not Project, Environment or ManagedBy"))
    """Tags on every resource, beside the stack's own Project, Environment and ManagedBy."""
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
    traffic: TrafficConfig = TrafficConfig()

    @property
    def is_prod(self) -> bool:
        return self.environment == "prod"

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if v not in regions():
            close = difflib.get_close_matches(v, sorted(regions()), n=1)
            raise ValueError("not an AWS region" + (f"; did you mean {close[0]}?" if close else
                                                    " (e.g. us-east-1, eu-west-1)"))
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        reserved = {k.lower(): k for k in RESERVED_TAG_KEYS}
        for key, value in v.items():
            if key.lower() in reserved:
                raise ConfigError(f"{PROJECT}:tags.{key}", value,
                                  f"{reserved[key.lower()]} is the stack's own tag (the budget "
                                  "filters on Environment); choose another key")
            problem = tag_problem(key, value)
            if problem:
                raise ConfigError(f"{PROJECT}:tags.{key}", value, problem)
        if len(v) > MAX_TAGS - len(RESERVED_TAG_KEYS):
            raise ValueError(f"at most {MAX_TAGS - len(RESERVED_TAG_KEYS)} tags: AWS takes "
                             f"{MAX_TAGS} a resource and the stack sets {len(RESERVED_TAG_KEYS)}")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> StackConfig:
        _certificate_in_region(self.load_balancer.certificate_arn, self.region)
        _streams_survive_the_idle_timeout(self.gateway, self.load_balancer)
        _streams_survive_a_stop(self)
        routes, prices = self.llm.routes, self.llm.prices
        where, callable_models = ("llm.routes", list(routes)) if routes else ("llm.prices", list(prices))
        if self.traffic.model not in callable_models:
            raise ConfigError(stack_key("traffic.model"), self.traffic.model,
                              f"one of the models in {where} ({', '.join(sorted(callable_models))}): the "
                              "models clients may call; the cost estimate prices it as the gateway would")
        for name, upstream in self.llm.upstreams.items():
            if upstream.secret_name not in self.secrets.names:
                raise ConfigError(stack_key(f"llm.upstreams.{name}.secretName"), upstream.secret_name,
                                  f"one of secrets.names ({', '.join(self.secrets.names)}): add it there, then "
                                  f"`python -m ops.apikey put --stack <stack> --name {upstream.secret_name}`")
        if self.service.image == BUILD and not self.service.ecr_repository:
            raise ConfigError(stack_key("service.ecrRepository"), False,
                              "service.image: build pushes to the stack's ECR repository; set true, "
                              "or set service.image to an image reference")
        if self.is_prod:
            _prod_rules(self)
        return self


docstring_descriptions(StackConfig)


def _streams_survive_the_idle_timeout(g: GatewayConfig, lb: LoadBalancerConfig) -> None:
    """The ALB closes a connection that carries no byte for idleTimeoutSeconds. While the model
    thinks, only the gateway's SSE comments cross it (at least three per timeout, so one lost to
    scheduling still leaves two); while it retries, nothing does."""
    idle = lb.idle_timeout_seconds
    if g.sse_keepalive_seconds * 3 > idle:
        raise ConfigError(stack_key("gateway.sseKeepaliveSeconds"), g.sse_keepalive_seconds,
                          f"at most a third of loadBalancer.idleTimeoutSeconds ({idle}): "
                          f"{idle // 3} or less, or the load balancer cuts streams whose model is thinking")
    if g.retry_budget_seconds * 2 > idle:
        raise ConfigError(stack_key("gateway.retryBudgetSeconds"), g.retry_budget_seconds,
                          f"at most half of loadBalancer.idleTimeoutSeconds ({idle}): the client "
                          "receives nothing while the gateway retries")
    if (g.retry_budget_seconds + g.coalesce_wait_seconds) * 2 > idle:
        raise ConfigError(stack_key("gateway.coalesceWaitSeconds"), g.coalesce_wait_seconds,
                          f"with retryBudgetSeconds ({g.retry_budget_seconds}) at most half of "
                          f"loadBalancer.idleTimeoutSeconds ({idle}): a request waiting for another's "
                          "answer, then retrying, receives nothing meanwhile")


def _streams_survive_a_stop(c: StackConfig) -> None:
    """One bound for every way a task stops: on Fargate Spot an interruption sends SIGTERM while
    the load balancer still routes to the task, and a stream started then has only the rest of
    the gateway's drain; a longer deregistration delay would promise a bound that breaks there."""
    delay, stop = c.load_balancer.deregistration_delay_seconds, c.service.stop_timeout_seconds
    spot = spot_stream_seconds(stop)
    if c.service.spot_weight and delay > spot:
        raise ConfigError(
            stack_key("loadBalancer.deregistrationDelaySeconds"), delay,
            f"at most {spot} while tasks run on Fargate Spot (service.spotWeight {c.service.spot_weight}): "
            f"an interruption sends SIGTERM while the load balancer still routes to the task for up to "
            f"{OUT_OF_ROTATION_SECONDS} s, and a stream started then has the rest of the gateway's drain "
            f"(service.stopTimeoutSeconds - {DRAIN_MARGIN_SECONDS} = {drain_seconds(stop)}); lower the delay, "
            "or raise stopTimeoutSeconds (Fargate: at most 120)")


def _certificate_in_region(arn: str, region: str) -> None:
    """An ALB listener can only use a certificate from ACM in its own region."""
    m = CERTIFICATE_ARN.fullmatch(arn)
    if m and m["region"] != region:
        raise ConfigError(
            stack_key("loadBalancer.certificateArn"), arn,
            f"the certificate is in {m['region']}, the stack in {region}: a load balancer uses "
            f"ACM certificates of its own region only; request or import one in {region}",
        )


# What production must have, and why; staging may go without. Checked after the values pass
# on their own, and used to word a prod stack's refusal of a value outside its general range.
PROD_RULES: dict[str, tuple[Callable[[StackConfig], Any], Callable[[Any], bool], str]] = {
    "network.azCount": (lambda c: c.network.az_count, lambda v: v >= 3,
                        "prod needs at least 3 AZs, so that losing one AZ leaves two serving"),
    "network.natStrategy": (lambda c: c.network.nat_strategy, lambda v: v == "per_az",
                            "prod needs per_az, so that one AZ outage does not cut every AZ's egress"),
    "cache.multiAz": (lambda c: c.cache.multi_az, bool,
                      "prod needs true: a replica in another AZ takes over when the primary's AZ fails"),
    "cache.automaticFailover": (lambda c: c.cache.automatic_failover, bool,
                                "prod needs true: ElastiCache promotes the replica without an operator"),
    "cache.nodes": (lambda c: c.cache.nodes, lambda v: v >= 2,
                    "prod needs at least 2 nodes: a primary and a replica to fail over to"),
    "cache.snapshotRetentionDays": (lambda c: c.cache.snapshot_retention_days, lambda v: v >= 7,
                                    "prod needs at least 7 days of snapshots, to restore after a bad week"),
    "service.executeCommand": (lambda c: c.service.execute_command, lambda v: not v,
                               "prod needs false: no shell into production tasks"),
    "service.minTasks": (lambda c: c.service.min_tasks, lambda v: v >= 2,
                         "prod needs at least 2 tasks, so one task failing does not take the service down"),
    "secrets.keyDeletionWindowDays": (lambda c: c.secrets.key_deletion_window_days, lambda v: v == 30,
                                      "prod needs 30 days: a KMS key deleted by mistake can be saved "
                                      "for a month, and every secret with it"),
    "monitoring.alertEmails": (lambda c: list(c.monitoring.alert_emails), bool,
                               "prod needs at least one address: alarms nobody receives change nothing"),
}


def _prod_rules(c: StackConfig) -> None:
    errors = []
    for path, (get, ok, allowed) in PROD_RULES.items():
        value = get(c)
        if not ok(value):
            errors.append(ConfigError(stack_key(path), value, allowed))
    if errors:
        raise ConfigErrors(errors)
