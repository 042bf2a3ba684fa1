"""The stack's config contract: one pydantic model, validated before any resource is declared.

Keys are written in the stack files as `llm-service:<section>` objects with camelCase fields
(`llm-service:service.maxTasks` in `pulumi config set --path` terms). Every failure becomes one
`ConfigError` whose message names the key as the user writes it, the value given, and what is
allowed. Defaults suit a small staging environment; prod must say more (see `_prod_rules`).
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import typing
import urllib.parse
from collections.abc import Callable
from typing import Annotated, Any, Literal, Optional

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from components.budget import problems as budget_problems
from components.cache import FAMILIES, MAX_NODES
from components.cache import problems as cache_problems
from components.edge import problems as edge_problems
from components.load_balancer import problems as load_balancer_problems
from components.network import AZ_SLOTS
from components.network import problems as network_problems
from components.secrets import problems as secrets_problems
from components.service import FARGATE_SIZES
from components.service import problems as service_problems
from infra.aws_rules import (
    LOG_RETENTION_DAYS,
    MAX_TAGS,
    RESERVED_TAG_KEYS,
    regions,
    tag_problem,
)

PROJECT = "llm-service"



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


class ConfigError(ValueError):
    """Bad stack config: one line naming the key as written, the value given and what is allowed.

    A ValueError, so that raised inside a validator pydantic carries it to `load` whole."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"{key}: got {shown(key, value)}; {allowed}")

    @property
    def errors(self) -> list[ConfigError]:
        return [self]


class StackFileError(ConfigError):
    """A stack file that is not readable YAML: the file, line and column, then what is wrong."""

    def __init__(self, where: str, problem: str):
        self.key, self.value, self.allowed = where, None, problem
        Exception.__init__(self, f"{where}: {problem}")


# Keys whose values are never echoed: authToken, password, openai-api-key (not tokensPerMinute).
SECRET_WORDS = re.compile(r"(token|password|secret|api[-_]?key)$", re.I)


def shown(key: str, value: Any) -> str:
    """A value as a message shows it: redacted where it looks secret, sections never dumped."""
    if isinstance(value, str) and (KEY_PATTERN.search(value) or SECRET_WORDS.search(key.rsplit(".", 1)[-1])):
        return "'(redacted)'"
    if isinstance(value, dict):
        return "a section {…}" if value else "{}"
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "…"


def _key(path: str) -> str:
    return path if ":" in path else f"{PROJECT}:{path}"


def _refuse(section: str, values: Any, found: list[tuple[str, str]]) -> None:
    """A component's own refusals (argument, why), as config errors keyed as the stack file
    writes them: the rule lives once, with the component, and a fork of it has it too."""
    errors = []
    for arg, why in found:
        name, _, index = arg.partition("[")
        value = getattr(values, name)
        if index:
            value = value[int(index.rstrip("]"))]
        why = re.sub(r"`([a-z0-9_]+)`", lambda m: f"{section}.{to_camel(m[1])}", why)
        errors.append(ConfigError(_key(f"{section}.{to_camel(name)}{'[' + index if index else ''}"), value, why))
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)


def allow(text: str) -> dict[str, str]:
    """What a validator allows, for the generated config reference (offline/config_doc.py)."""
    return {"allowed": text}


class _Section(BaseModel):
    # Field docstrings are the config reference's descriptions. Numbers are taken where a string
    # is expected (an unquoted `engineVersion: 8.0` or `user: 1000` in YAML).
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True,
        use_attribute_docstrings=True, coerce_numbers_to_str=True,
    )


def _retention(v: int) -> int:
    if v not in LOG_RETENTION_DAYS:
        raise ValueError("CloudWatch Logs keeps log events for one of "
                         f"{', '.join(map(str, LOG_RETENTION_DAYS))} days (PutRetentionPolicy)")
    return v


RETENTION = allow("one of " + ", ".join(map(str, LOG_RETENTION_DAYS)))
Retention = Annotated[int, AfterValidator(_retention)]


class NetworkConfig(_Section):
    cidr: str = Field("10.20.0.0/16", json_schema_extra=allow("a private IPv4 CIDR, /16 to /24"))
    """The VPC's address range. AWS: a VPC is /16 to /28; this stack carves 12 subnets from it."""
    subnet_prefix_length: int = Field(20, ge=16, le=28)
    """Prefix length of every subnet (AWS: /16 to /28), longer than the VPC's."""
    az_count: int = Field(2, ge=2, le=AZ_SLOTS)
    """Availability zones used; the region must have this many standard AZs (asked at preview)."""
    nat_strategy: Literal["single", "per_az"] = "single"
    """One NAT gateway for the VPC, or one per AZ (an AZ outage then cuts no other AZ's egress)."""
    interface_endpoints: bool = False
    """Interface endpoints (ECR, Logs, Secrets Manager, KMS, ECS) in each AZ instead of the NAT."""
    flow_log_retention_days: Retention = Field(30, json_schema_extra=RETENTION)
    """Days VPC flow logs are kept in CloudWatch Logs."""

    @model_validator(mode="after")
    def _what_the_layout_holds(self) -> NetworkConfig:
        _refuse("network", self, network_problems(self))  # what AWS refuses, and room for the subnets
        # This stack's own rules on top: a private range, and /24 at most (12 subnets of /28).
        net = ipaddress.ip_network(self.cidr)
        if not net.is_private or net.prefixlen > 24:
            raise ConfigError(_key("network.cidr"), self.cidr,
                              "a private IPv4 CIDR of /16 to /24, such as 10.20.0.0/16")
        return self


class PriceConfig(_Section):
    input_per_million: float = Field(ge=0)
    """USD per million input tokens."""
    output_per_million: float = Field(ge=0)
    """USD per million output tokens."""


DEFAULT_PRICES = {
    # USD per million tokens, from openai.com/api/pricing (standard tier); check yours.
    "gpt-4o-mini": PriceConfig(input_per_million=0.15, output_per_million=0.60),
    "gpt-4o": PriceConfig(input_per_million=2.50, output_per_million=10.00),
    "text-embedding-3-small": PriceConfig(input_per_million=0.02, output_per_million=0.0),
    "default": PriceConfig(input_per_million=2.50, output_per_million=10.00),
}
# An HTTP header value: visible ASCII, no spaces (OpenAI-Organization, OpenAI-Project).
HEADER_VALUE = r"^[\x21-\x7e]*$"


class LlmConfig(_Section):
    """Non-secret LLM API settings; they become plain environment variables."""

    org_id: str = Field("", pattern=HEADER_VALUE, json_schema_extra=allow(
        "visible ASCII without spaces (an HTTP header value)"))
    """Sent as the OpenAI-Organization header; "" sends none."""
    project_id: str = Field("", pattern=HEADER_VALUE, json_schema_extra=allow(
        "visible ASCII without spaces (an HTTP header value)"))
    """Sent as the OpenAI-Project header; "" sends none."""
    base_url: str = Field("https://api.openai.com/v1", json_schema_extra=allow("an https:// URL"))
    """The LLM API the gateway calls (any OpenAI-compatible API)."""
    prices: dict[str, PriceConfig] = Field(default_factory=lambda: dict(DEFAULT_PRICES),
                                           json_schema_extra=allow("model: {inputPerMillion, "
                                                                   "outputPerMillion}; needs `default`"))
    """USD per million tokens by model, for spend limits and the cost estimate. A model not
    listed (dated snapshots count as their family) is priced as `default`."""

    @field_validator("base_url")
    @classmethod
    def _https(cls, v: str) -> str:
        url = urllib.parse.urlsplit(v)
        if url.scheme != "https" or not url.hostname:
            raise ValueError("must be an https:// URL such as https://api.openai.com/v1: the "
                             "API key travels with every request")
        return v

    @field_validator("prices")
    @classmethod
    def _has_default(cls, v: dict[str, PriceConfig]) -> dict[str, PriceConfig]:
        if "default" not in v:
            raise ValueError("needs a `default` entry: what a model not listed is priced at")
        return v


class SecretsConfig(_Section):
    source: Literal["external", "pulumi"] = "external"
    """external: the stack creates empty secrets and `python -m ops.apikey put` fills them;
    pulumi: the values come from `pulumi config set --secret <name>`."""
    names: list[str] = Field(default_factory=lambda: ["openai-api-key"], min_length=1,
                             json_schema_extra=allow("unique names of 2 to 63 lower-case "
                                                     "letters, digits and hyphens"))
    """The secrets injected into the container (NAME_IN_CAPS), the LLM API key first."""
    recovery_window_days: int = Field(7, json_schema_extra=allow("0, or 7 to 30"))
    """Days a deleted secret can be restored. Secrets Manager: 0 (at once) or 7 to 30."""
    rotation_age_days: int = Field(90, ge=1)
    """The age at which the key-age alarm fires."""
    key_deletion_window_days: int = Field(7, json_schema_extra=allow("7 to 30"))
    """Days before a deleted KMS key is gone. KMS: 7 to 30."""

    @model_validator(mode="after")
    def _what_aws_refuses(self) -> SecretsConfig:
        _refuse("secrets", self, secrets_problems(self))
        return self


BUILD = "build"  # service.image: build gateway/ and deploy it by digest
# An image reference (the distribution/reference grammar, simplified): [registry[:port]/]path
# [:tag][@sha256:digest], path components lower-case.
IMAGE_REFERENCE = re.compile(
    r"(?:[A-Za-z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?")
# A user ECS can run as: uid, uid:gid, user or user:group (ContainerDefinition.user).
CONTAINER_USER = re.compile(r"([0-9]+|[a-z_][a-z0-9_-]*)(:([0-9]+|[a-z_][a-z0-9_-]*))?")


class ServiceConfig(_Section):
    image: str = Field(BUILD, json_schema_extra=allow("build, or an image reference "
                                                      "(registry/repository:tag or @sha256:digest)"))
    """build: the stack builds gateway/ (Docker with buildx where `pulumi up` runs) and deploys
    it by digest; anything else is an image used as given."""
    cpu: int = Field(512, json_schema_extra=allow(", ".join(map(str, FARGATE_SIZES))))
    """Task CPU units (1024 = one vCPU). Fargate's task sizes."""
    memory: int = Field(1024, json_schema_extra=allow("what Fargate pairs with cpu"))
    """Task memory in MiB; Fargate accepts fixed steps per cpu size."""
    architecture: Literal["ARM64", "X86_64"] = "ARM64"
    """CPU architecture of the tasks (and of the image the stack builds)."""
    container_port: int = Field(8080, ge=1024, le=65535)
    """The port the container listens on; above 1023, since it runs as a non-root user."""
    user: str = Field("1000:1000", json_schema_extra=allow("uid[:gid] or name[:group], not root"))
    """The user the container runs as. Never root (uid 0): the policy pack refuses it too."""
    health_check_command: str = ""
    """Run inside the container; "" means the gateway's own check for the built image, and
    `curl -fsS http://localhost:<port><healthCheckPath>` for any other."""
    min_tasks: int = Field(1, ge=0)
    """Fewest tasks autoscaling keeps."""
    max_tasks: int = Field(4, ge=1, le=5000)
    """Most tasks autoscaling starts (ECS: 5,000 tasks a service)."""
    desired_tasks: int = Field(1, ge=0)
    """Tasks at the first deploy (autoscaling owns the count afterwards)."""
    autoscaling: bool = True
    """Target tracking on CPU, memory and requests per target."""
    cpu_target: int = Field(60, ge=10, le=90)
    """Average CPU % that target tracking holds."""
    memory_target: int = Field(70, ge=10, le=90)
    """Average memory % that target tracking holds."""
    requests_per_target: int = Field(50, ge=1)
    """Requests a minute per task that target tracking holds (ALBRequestCountPerTarget)."""
    scale_out_cooldown: int = Field(60, ge=0)
    """Seconds after a scale-out before the next."""
    scale_in_cooldown: int = Field(300, ge=0)
    """Seconds after a scale-in before the next; at least healthCheckGraceSeconds."""
    fargate_base: int = Field(0, ge=0, le=100000)
    """Tasks that always run on on-demand Fargate (ECS: base 0 to 100,000)."""
    fargate_weight: int = Field(1, ge=0, le=1000)
    """Share of tasks beyond the base on on-demand Fargate (ECS: weight 0 to 1,000)."""
    spot_weight: int = Field(0, ge=0, le=1000)
    """Share of tasks beyond the base on Fargate Spot (ECS: weight 0 to 1,000)."""
    health_check_grace_seconds: int = Field(60, ge=0, le=2147483647)
    """Seconds ECS ignores failing load balancer health checks of a new task."""
    stop_timeout_seconds: int = Field(120, json_schema_extra=allow("2 to 120"))
    """Seconds between SIGTERM and SIGKILL (Fargate: at most 120): streams finish meanwhile."""
    log_retention_days: Retention = Field(30, json_schema_extra=RETENTION)
    """Days the container's logs are kept."""
    execute_command: bool = False
    """ECS Exec into tasks (staging only: prod refuses it)."""
    ecr_repository: bool = True
    """Create an ECR repository (needed by image: build)."""

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if v != BUILD and not IMAGE_REFERENCE.fullmatch(v):
            raise ValueError("build, or an image reference such as "
                             "public.ecr.aws/acme/app:1.4.2 or <registry>/<repository>@sha256:<digest>")
        return v

    @field_validator("user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not CONTAINER_USER.fullmatch(v):
            raise ValueError("uid, uid:gid, user or user:group, e.g. 1000:1000")
        return v  # never root: components/service.py refuses it (and the policy pack)

    @model_validator(mode="after")
    def _what_ecs_refuses(self) -> ServiceConfig:
        # No Spot/architecture rule: the ECS API reference (CapacityProviderStrategyItem, as
        # carried in botocore 1.44's ECS model) says FARGATE_SPOT runs ARM64 Linux tasks on
        # platform version 1.4.0 or later, and the service asks for LATEST. (The developer
        # guide's "Fargate capacity providers" page still says X86_64 only; the API reference
        # is the newer text.) tests/test_service.py pins that sentence in botocore's model.
        _refuse("service", self, service_problems(self))
        return self


HOSTNAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
# Route 53 hosted zone ids: Z followed by upper-case letters and digits.
HOSTED_ZONE_ID = re.compile(r"(Z[A-Z0-9]{4,32})?")
# ALB health check paths: at most 1024 characters of these (ModifyTargetGroup, HealthCheckPath).
HEALTH_CHECK_PATH = re.compile(r"/[A-Za-z0-9_.~$/'@:+&()!,;=%-]{0,1023}")


class LoadBalancerConfig(_Section):
    certificate_arn: str = Field("", json_schema_extra=allow(
        "arn:<partition>:acm:<the stack's region>:<account>:certificate/<uuid>, or \"\""))
    """The ACM certificate the HTTPS listener serves; "" when domainName and hostedZoneId let
    the stack issue one."""
    domain_name: str = Field("", json_schema_extra=allow("a DNS name, or \"\""))
    """The service's name; with hostedZoneId the stack issues its certificate and DNS record."""
    hosted_zone_id: str = Field("", json_schema_extra=allow("a Route 53 zone id (Z...), or \"\""))
    """The Route 53 public zone of domainName."""
    # No plain-HTTP mode: API clients send a bearer key with every request, and the policy
    # pack refuses a listener that forwards HTTP, so config never offers one.
    http_mode: Literal["none", "redirect"] = "none"
    """Port 80: closed, or a 301 to HTTPS. Never forwarded: clients send keys."""
    ingress_cidrs: list[str] = Field(default_factory=lambda: ["0.0.0.0/0"],
                                     json_schema_extra=allow("IPv4 CIDRs (network addresses)"))
    """Who may reach the listeners over IPv4."""
    ingress_ipv6_cidrs: list[str] = Field(default_factory=lambda: ["::/0"],
                                          json_schema_extra=allow("IPv6 CIDRs (network addresses)"))
    """Who may reach the listeners over IPv6."""
    idle_timeout_seconds: int = Field(600, json_schema_extra=allow("1 to 4000"))
    """Seconds a connection may carry no byte (ALB: 1 to 4,000); streams need minutes."""
    health_check_path: str = Field("/healthz", json_schema_extra=allow(
        "/ and up to 1,023 of A-Z a-z 0-9 _ . ~ $ / ' @ : + & ( ) ! , ; = % -"))
    """The target group's health check path (ALB: up to 1,024 characters, starting with /)."""
    deregistration_delay_seconds: int = Field(60, json_schema_extra=allow("0 to 3600"))
    """Seconds a stopping task keeps its connections (ALB: 0 to 3,600)."""
    ssl_policy: str = Field("ELBSecurityPolicy-TLS13-1-2-2021-06",
                            json_schema_extra=allow("an ALB security policy with TLS 1.3"))
    """The HTTPS listener's predefined security policy."""
    access_log_retention_days: int = Field(90, ge=1)
    """Days ALB access logs stay in their S3 bucket."""

    @field_validator("certificate_arn")
    @classmethod
    def _certificate_shape(cls, v: str) -> str:
        if v and not CERTIFICATE_ARN.fullmatch(v):
            raise ValueError(
                "an ACM certificate ARN is arn:<partition>:acm:<region>:<12-digit account>:"
                "certificate/<uuid>; copy it from `aws acm list-certificates`")
        return v

    @field_validator("hosted_zone_id")
    @classmethod
    def _zone(cls, v: str) -> str:
        if not HOSTED_ZONE_ID.fullmatch(v):
            raise ValueError("a Route 53 hosted zone id such as Z0123456789ABCDEFGHIJ "
                             "(`aws route53 list-hosted-zones`), without /hostedzone/")
        return v

    @field_validator("health_check_path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not HEALTH_CHECK_PATH.fullmatch(v):
            raise ValueError("a path starting with / of at most 1,024 characters, without spaces "
                             "or a query string, e.g. /healthz")
        return v

    @field_validator("domain_name")
    @classmethod
    def _domain(cls, v: str) -> str:
        if v and not HOSTNAME.fullmatch(v):
            raise ValueError("a DNS name in lower case such as api.mycompany.com, without a "
                             "scheme, port or trailing dot")
        return v

    @model_validator(mode="after")
    def _what_elb_refuses(self) -> LoadBalancerConfig:
        _refuse("loadBalancer", self, load_balancer_problems(self))
        return self


# AWS NAT gateways drop a flow after 350 s without a packet (VPC user guide, "NAT gateway
# basics"); a keepalive probe must leave before that, with room for one probe interval (15 s).
NAT_IDLE_TIMEOUT_SECONDS = 350


class LimitsConfig(_Section):
    """Per-client limits (0: none); each client's own, in the client-keys secret, override these."""

    requests_per_minute: int = Field(0, ge=0)
    """Requests a client may send per UTC minute, cache hits included; 0 for no limit."""
    tokens_per_minute: int = Field(0, ge=0)
    """Tokens a client may send to the LLM API per UTC minute; 0 for no limit."""
    usd_per_day: float = Field(0.0, ge=0)
    """Estimated USD a client may spend per UTC day; 0 for no limit."""


class GatewayConfig(_Section):
    """The gateway's request path (gateway/). Become GATEWAY_* environment variables."""

    sse_keepalive_seconds: int = Field(15, ge=1)
    """Seconds between SSE comments while the model has sent nothing; at most a third of
    loadBalancer.idleTimeoutSeconds."""
    upstream_tcp_keepalive_seconds: int = Field(60, ge=10, json_schema_extra=allow(
        f"10 to {NAT_IDLE_TIMEOUT_SECONDS - 16}"))
    """Idle seconds before the first TCP keepalive to the LLM API: under the NAT gateway's
    350 s idle timeout."""
    max_attempts: int = Field(3, ge=1, le=10)
    """Attempts on an upstream 429, 5xx or connection error, before the first byte."""
    retry_budget_seconds: int = Field(20, ge=0)
    """Seconds all retries of one request may take; at most half the idle timeout."""
    max_request_megabytes: int = Field(8, ge=1, le=64)
    """Largest request body accepted."""
    log_prompts: bool = False
    """Log request bodies (never, unless you must)."""
    ttft_p95_alarm_seconds: float = Field(10.0, gt=0)
    """The time-to-first-token p95 that raises an alarm."""
    upstream_429_per_5min: int = Field(20, ge=1, alias="upstream429Per5min")
    """Upstream 429s per 5 minutes that raise an alarm."""
    cache_ttl_seconds: int = Field(3600, ge=1, le=30 * 86400)
    """How long a cached answer is served."""
    coalesce_wait_seconds: int = Field(30, ge=0, le=300)
    """How long identical requests wait for the first one's answer."""
    output_tokens_estimate: int = Field(1000, ge=1)
    """Output tokens reserved against the limits when a request sets no max tokens."""
    default_limits: LimitsConfig = LimitsConfig()
    """Per-client limits for clients whose entry in client-keys sets none."""
    spend_per_hour_alarm_usd: float = Field(10.0, gt=0)
    """Estimated LLM spend per hour, all clients, that raises an alarm."""
    cache_errors_per_5min: int = Field(10, ge=1, alias="cacheErrorsPer5min")
    """Requests served without the cache (Valkey not answering) per 5 minutes that raise an alarm."""

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
    """The ElastiCache engine."""
    engine_version: str = Field("8.0", json_schema_extra=allow(
        "; ".join(f"{e}: {', '.join(v)}" for e, v in FAMILIES.items())))
    """The engine version (a parameter group family must exist for it)."""
    node_type: str = Field("cache.t4g.micro", json_schema_extra=allow(
        "a current-generation node type: cache.t4g/t3 micro to medium, m5/m6g/m7g/r5/r6g/r7g "
        "large and up"))
    """Every node's type."""
    nodes: int = Field(1, json_schema_extra=allow(f"1 to {MAX_NODES}"))
    """Nodes: a primary and up to 5 replicas (cluster mode disabled)."""
    multi_az: bool = False
    """Replicas in other AZs; needs automaticFailover and 2 nodes."""
    automatic_failover: bool = False
    """Promote a replica when the primary fails; needs 2 nodes."""
    snapshot_retention_days: int = Field(0, json_schema_extra=allow("0 to 35"))
    """Days of daily snapshots kept (ElastiCache: 0 to 35; 0 takes none)."""
    maintenance_window: str = Field("sun:05:00-sun:06:00",
                                    json_schema_extra=allow("ddd:hh24:mi-ddd:hh24:mi, UTC, 60 minutes "
                                                            "or more"))
    """The weekly maintenance window."""
    snapshot_window: str = Field("03:00-04:00", json_schema_extra=allow(
        "hh24:mi-hh24:mi, UTC, not overlapping the maintenance window"))
    """The daily snapshot window."""
    log_retention_days: Retention = Field(14, json_schema_extra=RETENTION)
    """Days the slow and engine logs are kept."""
    port: int = Field(6379, json_schema_extra=allow("1 to 65535"))
    """The port the cache listens on."""

    @field_validator("engine_version", mode="before")
    @classmethod
    def _version_number(cls, v: Any) -> Any:
        # YAML reads an unquoted 8.0 as a float (and Pulumi's JSON may hand it over as 8).
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return f"{v:.1f}" if float(v).is_integer() else str(v)
        return v

    @model_validator(mode="after")
    def _what_elasticache_refuses(self) -> CacheConfig:
        # The rules live with the component (components/cache.py), so that a fork has them too.
        # Not refused: more nodes than the stack has AZs. ElastiCache spreads a replication
        # group's nodes over its subnet group's AZs and puts two in one AZ when it must; the
        # API accepts it, and one AZ's loss still leaves a replica elsewhere.
        _refuse("cache", self, cache_problems(self))
        return self


class EdgeConfig(_Section):
    rate_limit: int = Field(300, json_schema_extra=allow("10 to 2,000,000,000"))
    """Requests per client IP per window before WAF blocks it."""
    rate_window_seconds: int = Field(300, json_schema_extra=allow("60, 120, 300 or 600"))
    """The rate-based rule's window in seconds."""
    log_retention_days: Retention = Field(30, json_schema_extra=RETENTION)
    """Days WAF logs are kept."""

    @model_validator(mode="after")
    def _what_waf_refuses(self) -> EdgeConfig:
        _refuse("edge", self, edge_problems(self))
        return self


class MonitoringConfig(_Section):
    alert_emails: list[EmailStr] = Field(default_factory=list)
    """Who gets alarms and budget alerts (each confirms an SNS subscription)."""
    target_5xx_per_minute: int = Field(5, ge=1, alias="target5xxPerMinute")
    """5xx answers from tasks per minute that raise an alarm."""
    alb_5xx_per_minute: int = Field(5, ge=1, alias="alb5xxPerMinute")
    """5xx answers from the load balancer itself per minute that raise an alarm."""
    p95_latency_seconds: float = Field(20.0, gt=0, alias="p95LatencySeconds")
    """Target response time p95 that raises an alarm."""
    p99_latency_seconds: float = Field(60.0, gt=0, alias="p99LatencySeconds")
    """Target response time p99 that raises an alarm."""
    cpu_high_percent: int = Field(85, ge=1, le=100)
    """Service CPU % (after scaling) that raises an alarm."""
    memory_high_percent: int = Field(85, ge=1, le=100)
    """Service memory % that raises an alarm."""
    cache_cpu_percent: int = Field(80, ge=1, le=100)
    """The busiest cache node's engine CPU % that raises an alarm."""
    cache_memory_percent: int = Field(85, ge=1, le=100)
    """The busiest cache node's memory % that raises an alarm."""
    cache_evictions_per_5min: int = Field(100, ge=1, alias="cacheEvictionsPer5min")
    """Cache evictions per 5 minutes that raise an alarm."""
    cache_hit_rate_min_percent: int = Field(20, ge=0, le=100)
    """The gateway's hit ratio of cacheable requests under which an alarm fires."""
    waf_blocked_per_5min: int = Field(500, ge=1, alias="wafBlockedPer5min")
    """Requests WAF blocks per 5 minutes that raise an alarm."""


class BudgetConfig(_Section):
    monthly_limit_usd: float = Field(100.0, json_schema_extra=allow("a positive amount"))
    """The monthly AWS budget of the stack's resources (by the Environment tag)."""
    actual_thresholds: list[int] = Field(default_factory=lambda: [50, 80, 100],
                                         json_schema_extra=allow("percentages, 1 to 1000"))
    """Alerts at these percentages of actual spend."""
    forecast_thresholds: list[int] = Field(default_factory=lambda: [100],
                                           json_schema_extra=allow("percentages, 1 to 1000"))
    """Alerts at these percentages of forecast spend."""

    @field_validator("actual_thresholds", "forecast_thresholds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        return sorted(set(v))

    @model_validator(mode="after")
    def _what_budgets_refuse(self) -> BudgetConfig:
        _refuse("budget", self, budget_problems(self))
        return self


class TrafficConfig(_Section):
    """Assumed load, for the cost estimate alone (offline/cost.py): nothing deployed reads it."""

    requests_per_day: int = Field(10_000, ge=0)
    """Requests a day the stack is sized and priced for."""
    input_tokens_per_request: int = Field(800, ge=0)
    """Prompt tokens per request."""
    output_tokens_per_request: int = Field(300, ge=0)
    """Completion tokens per request."""
    model: str = Field("gpt-4o-mini", min_length=1)
    """The model most requests use, priced by llm.prices."""
    cache_hit_rate_percent: int = Field(20, ge=0, le=100)
    """Share of requests the gateway's cache answers."""
    request_kilobytes: float = Field(4.0, ge=0)
    """Bytes on the wire per request body (for ALB LCUs and NAT data)."""
    response_kilobytes: float = Field(2.0, ge=0)
    """Bytes on the wire per answer."""
    clients: int = Field(5, ge=1)
    """Client keys in use (the gateway's metrics are per client)."""


class StackConfig(BaseModel):
    """The whole stack config. Build it with `load()`; use it read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              use_attribute_docstrings=True, coerce_numbers_to_str=True)

    region: str = Field("us-east-1", alias="aws:region",
                        json_schema_extra=allow("a region in botocore's endpoint data"))
    """The stack's AWS region."""
    environment: Literal["staging", "prod"]
    """Which environment this is; prod turns on the stricter rules."""
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
        if self.service.image == BUILD and not self.service.ecr_repository:
            raise ConfigError(_key("service.ecrRepository"), False,
                              "service.image: build pushes to the stack's ECR repository; set true, "
                              "or set service.image to an image reference")
        if self.is_prod:
            _prod_rules(self)
        return self


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
            errors.append(ConfigError(_key(path), value, allowed))
    if errors:
        raise ConfigErrors(errors)


REQUIRED_HINTS = {
    f"{PROJECT}:loadBalancer": "required: say where the HTTPS certificate comes from "
                               "(certificateArn, or domainName with hostedZoneId)",
    f"{PROJECT}:environment": "required: staging or prod",
}


def _loc_to_key(loc: tuple) -> str:
    """A pydantic location as the key is written: section.field, list items as [i]."""
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return _key(key) if key else PROJECT


def _fields_at(loc: tuple) -> list[str]:
    """The keys a model accepts at a location (aliases as written in the stack file)."""
    model: Any = StackConfig
    for part in loc[:-1]:
        if typing.get_origin(model) is dict:  # `part` is a key of the mapping
            model = typing.get_args(model)[1]
            continue
        if isinstance(part, int) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return []
        model = field.annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [f.alias or n for n, f in model.model_fields.items()]
    return []


def _from_pydantic(err: dict, environment: Any) -> ConfigError:
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):
        return cause
    key = _loc_to_key(err["loc"])
    value = err.get("input")
    short = key.partition(":")[2]
    if environment == "prod" and short in PROD_RULES and not _passes(PROD_RULES[short][1], value):
        return ConfigError(key, value, PROD_RULES[short][2])
    if err["type"] == "missing":
        return ConfigError(key, None, REQUIRED_HINTS.get(key, "required"))
    if err["type"] == "extra_forbidden":
        name = str(err["loc"][-1])
        known = _fields_at(err["loc"])
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = (f"did you mean `{close[0]}`?" if close
                else "the keys here are " + ", ".join(known) if known else "not a key of this stack")
        return ConfigError(key, value, f"unknown key; {hint}")
    return ConfigError(key, value, _reworded(err))


# Pydantic's messages for the common cases, in the words of the rest of this module.
_WORDS = {
    "greater_than": "must be more than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "int_type": "must be a whole number",
    "float_parsing": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string (quote it)",
    "list_type": "must be a list, e.g. [a, b]",
    "dict_type": "must be a mapping of keys to values",
    "model_type": "must be a section of keys (a mapping)",
    "too_short": "must have at least {min_length} item(s)",
    "string_pattern_mismatch": "does not match {pattern} (visible ASCII, no spaces)",
    "literal_error": "allowed: {expected}",
}


def _reworded(err: dict) -> str:
    words = _WORDS.get(err["type"])
    if words:
        try:
            return words.format(**(err.get("ctx") or {}))
        except KeyError:
            pass
    return err["msg"].removeprefix("Value error, ")


def _passes(rule: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(rule(value))
    except TypeError:  # not even the right type: the generic message says what is
        return True


def _merge_misspelt(errors: list[ConfigError]) -> list[ConfigError]:
    """A misspelt required key shows as unknown and missing: keep the one that names both."""
    meant = {e.allowed.split("`")[1] for e in errors
             if e.allowed.startswith("unknown key; did you mean `")}
    return [e for e in errors if not (e.value is None and e.key.rsplit(".", 1)[-1].rsplit(":", 1)[-1]
                                      in meant and e.allowed.startswith("required"))]


def load(raw: dict[str, Any], secret_keys: set[str] = frozenset()) -> StackConfig:
    """Validate a stack's raw config.

    `raw` maps config keys as Pulumi gives them (`aws:region`, `llm-service:service`, ...) to values,
    with objects already parsed. `secret_keys` names the keys that are stored encrypted.
    Raises ConfigError (one problem) or ConfigErrors (several, one line each).
    """
    _refuse_plain_secrets(raw, secret_keys)
    _refuse_misspelt_namespaces(raw)
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
        errors: list[ConfigError] = []
        for err in e.errors():
            for found in _from_pydantic(err, data.get("environment")).errors:
                if str(found) not in map(str, errors):
                    errors.append(found)
        errors = _merge_misspelt(errors)
        raise (errors[0] if len(errors) == 1 else ConfigErrors(errors)) from None
    _check_secret_values(cfg, raw, secret_keys)
    return cfg


def _refuse_misspelt_namespaces(raw: dict[str, Any]) -> None:
    """Keys of other namespaces belong to other plugins (aws:profile, pulumi:...) and are passed
    by; one that is nearly this project's name is a typo whose whole section would be ignored."""
    for key in raw:
        ns, _, name = key.partition(":")
        if ns != PROJECT and difflib.SequenceMatcher(None, ns, PROJECT).ratio() >= 0.8:
            raise ConfigError(key, raw[key], f"unknown namespace {ns!r}; did you mean `{PROJECT}:{name}`?")


def _secret_value_names(raw: dict[str, Any]) -> set[str]:
    """Secret values live in top-level keys named after the secret (`llm-service:openai-api-key`)."""
    section = raw.get(f"{PROJECT}:secrets")
    names = (section.get("names") if isinstance(section, dict) else None) or SecretsConfig().names
    return {n for n in names if isinstance(n, str)}


def _refuse_plain_secrets(raw: dict[str, Any], secret_keys: set[str]) -> None:
    for key, value in raw.items():
        if key in secret_keys:
            continue
        for path, leaf in _leaves(key, value):
            if isinstance(leaf, str) and KEY_PATTERN.search(leaf):
                raise ConfigError(
                    path, "sk-…(redacted)",
                    "an API key may not be stored in plain text; use "
                    "`python -m ops.apikey put` (external) or `pulumi config set --secret`",
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


def error_lines(e: ConfigError) -> str:
    """What every command prints for a config error (and exits 2): one line per problem."""
    return "\n".join(f"config error: {one}" for one in e.errors)


class ConfigErrors(ConfigError):
    """Several config errors at once, one line each."""

    def __init__(self, errors: list[ConfigError]):
        self._errors = [one for e in errors for one in e.errors]
        first = self._errors[0]
        Exception.__init__(self, "\n".join(str(e) for e in self._errors))
        self.key, self.value, self.allowed = first.key, first.value, first.allowed

    @property
    def errors(self) -> list[ConfigError]:
        return self._errors
