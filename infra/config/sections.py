"""The config's sections, one pydantic model each. A setting that is a component's argument is
declared with the component (`component_field`); a section adds the stack's own bounds and rules."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import typing
import urllib.parse
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    create_model,
    field_validator,
    model_validator,
)

from components.budget import BudgetArgs
from components.budget import problems as budget_problems
from components.cache import FAMILIES, MAX_NODES, CacheArgs
from components.cache import problems as cache_problems
from components.edge import EdgeArgs
from components.edge import problems as edge_problems
from components.load_balancer import OUT_OF_ROTATION_SECONDS, LoadBalancerArgs
from components.load_balancer import problems as load_balancer_problems
from components.monitoring import Thresholds
from components.network import AZ_SLOTS, NetworkArgs
from components.network import problems as network_problems
from components.secrets_store import SecretsArgs
from components.secrets_store import problems as secrets_problems
from components.service import FARGATE_SIZES, ServiceArgs
from components.service import problems as service_problems
from infra.aws_rules import (
    LOG_RETENTION_DAYS,
)
from infra.config.errors import ConfigError, ConfigErrors, refuse, stack_key
from infra.config.names import CACHE_AUTH_TOKEN, CERTIFICATE_ARN, CLIENT_KEYS, stack_name
from infra.field_docs import attribute_docs

if TYPE_CHECKING:
    from infra.config.stack import StackConfig


def allow(text: str) -> dict[str, str]:
    """What a validator allows, for the generated config reference (offline/config_doc.py)."""
    return {"allowed": text}


def component_field(args: type, name: str, note: str = "", **kw: Any) -> Any:
    """A setting that is one of a component's arguments, declared once, with the component: its
    default and description are the argument's (an argument a section names in camelCase there,
    as the stack file does), then `note`, what this stack adds to its meaning (STACK_NOTES). `kw`
    adds the stack's own bounds and the reference's allowed text; a stack default that differs is
    passed as `default` and listed in DELIBERATE_DEFAULTS."""
    note = note or STACK_NOTES.get((args.__name__, name), "")
    arg = {f.name: f for f in dataclasses.fields(args)}[name]
    names = {f.name for f in dataclasses.fields(args)}
    description = re.sub(r"\b[a-z0-9]+(?:_[a-z0-9]+)+\b",
                         lambda m: stack_name(m[0]) if m[0] in names else m[0], attribute_docs(args)[name])
    if "default" not in kw and "default_factory" not in kw:
        if arg.default is not dataclasses.MISSING:
            kw["default"] = arg.default
        elif arg.default_factory is not dataclasses.MISSING:
            kw["default_factory"] = arg.default_factory
    return Field(description=f"{description} {note}".strip(), **kw)


# What the stack adds to a component argument's meaning, where it decides something the component
# leaves open (the config reference shows it after the argument's own description).
STACK_NOTES = {
    ("ServiceArgs", "stop_timeout_seconds"): "The gateway drains for this less 5.",
    ("ServiceArgs", "execute_command"): "Staging only: prod refuses it.",
    ("ServiceArgs", "architecture"): "The stack builds its image for it.",
    ("SecretsArgs", "names"): "Injected into the container as NAME_IN_CAPS, the LLM API key first.",
    ("SecretsArgs", "source"): "Here, `python -m ops.apikey put` writes external values; pulumi's come from "
                               "`pulumi config set --secret <name>`.",
    ("LoadBalancerArgs", "deregistration_delay_seconds"):
        "On Fargate Spot at most service.stopTimeoutSeconds - 55.",
    ("BudgetArgs", "monthly_limit_usd"): "The stack tags its resources Environment = its environment.",
}


def docstring_descriptions(model: type[BaseModel]) -> None:
    """Each field declared in `model`'s own body without a description takes its attribute
    docstring, the config reference's text (read with ast: infra/field_docs.py). pydantic's
    use_attribute_docstrings does the same by asking inspect.getmodule of each caller's frame,
    which scans every loaded module (pulumi_aws's hundreds) at each miss: half a second of the
    start of every command that reads a stack file."""
    fields = model.__pydantic_fields__
    missing = [n for n in model.__dict__.get("__annotations__", {})
               if n in fields and fields[n].description is None]
    if missing:
        docs = attribute_docs(model)
        for name in missing:
            fields[name].description = docs.get(name) or None


class _Section(BaseModel):
    # Field docstrings are the config reference's descriptions. Numbers are taken where a string
    # is expected (an unquoted `engineVersion: 8.0` or `user: 1000` in YAML).
    model_config = ConfigDict(
        alias_generator=stack_name, populate_by_name=True, extra="forbid", frozen=True,
        coerce_numbers_to_str=True,
    )

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        docstring_descriptions(cls)


def settings_of(args: type, *, not_settings: Iterable[str]) -> type[_Section]:
    """A section's base model: every argument of the component is a setting of the section, with
    the argument's type, default and description (component_field), except `not_settings` (what
    the program wires in or decides itself). A new argument of the component is therefore a new
    stack key without a line here; the section declares a field again only to add the stack's
    bounds, and adds its own keys and rules."""
    skip = set(not_settings)
    unknown = skip - {f.name for f in dataclasses.fields(args)}
    if unknown:
        raise TypeError(f"{args.__name__} has no argument {sorted(unknown)}: "
                        "not_settings names only its arguments")
    chosen = [f for f in dataclasses.fields(args) if f.name not in skip]
    # The arguments' annotations are strings (postponed evaluation): resolve the chosen ones in
    # the component's module, where the names they use are defined.
    fields: dict[str, Any] = {}
    for f in chosen:
        wired = f"{args.__name__}.{f.name} ({f.type}) cannot be a stack setting: a value the program wires in " \
                f"(a pulumi Input, Output or Resource) is listed in the section's *_NOT_SETTINGS"
        if isinstance(f.type, str) and re.search(r"\b(Input|Output|Resource)\b", f.type):
            raise TypeError(wired)
        holder = type("Annotation", (), {"__annotations__": {f.name: f.type}, "__module__": args.__module__})
        try:
            fields[f.name] = (typing.get_type_hints(holder)[f.name], component_field(args, f.name))
        except NameError as e:
            raise TypeError(f"{wired} ({e})") from None
    return create_model(f"{args.__name__}Settings", __base__=_Section, **fields)


def _retention(v: int) -> int:
    if v not in LOG_RETENTION_DAYS:
        raise ValueError("CloudWatch Logs keeps log events for one of "
                         f"{', '.join(map(str, LOG_RETENTION_DAYS))} days (PutRetentionPolicy)")
    return v


RETENTION = allow("one of " + ", ".join(map(str, LOG_RETENTION_DAYS)))
Retention = Annotated[int, AfterValidator(_retention)]


# What NetworkArgs takes that is not a stack setting: the program wires it in or decides it.
NETWORK_NOT_SETTINGS = {"region", "kms_key_arn", "iam_path"}


class NetworkConfig(settings_of(NetworkArgs, not_settings=NETWORK_NOT_SETTINGS)):
    cidr: str = component_field(
        NetworkArgs, "cidr", default="10.20.0.0/16", json_schema_extra=allow("a private IPv4 CIDR, /16 to /24"))
    subnet_prefix_length: int = component_field(NetworkArgs, "subnet_prefix_length", ge=16, le=28)
    az_count: int = component_field(NetworkArgs, "az_count", default=2, ge=2, le=AZ_SLOTS)
    flow_log_retention_days: Retention = component_field(
        NetworkArgs, "flow_log_retention_days", json_schema_extra=RETENTION)

    @model_validator(mode="after")
    def _what_the_layout_holds(self) -> NetworkConfig:
        refuse("network", self, network_problems(self))  # what AWS refuses, and room for the subnets
        # This stack's own rules on top: a private range, and /24 at most (12 subnets of /28).
        net = ipaddress.ip_network(self.cidr)
        if not net.is_private or net.prefixlen > 24:
            raise ConfigError(stack_key("network.cidr"), self.cidr,
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
}
# A model name as the gateway accepts one (gateway/limits.py MODEL_NAME).
MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
# An HTTP header value: visible ASCII, no spaces (OpenAI-Organization, OpenAI-Project).
HEADER_VALUE = r"^[\x21-\x7e]*$"


UPSTREAM_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")  # gateway/settings.py UPSTREAM_NAME
DEFAULT_UPSTREAM = "default"  # llm.baseUrl, orgId and projectId, with the first of secrets.names
AZURE_V1_PATH = "/openai/v1"  # Azure OpenAI's v1 API: https://<resource>.openai.azure.com/openai/v1


def _https_url(v: str) -> str:
    url = urllib.parse.urlsplit(v)
    if url.scheme != "https" or not url.hostname:
        raise ValueError("must be an https:// URL such as https://api.openai.com/v1: the "
                         "API key travels with every request")
    if "@" in url.netloc:
        raise ValueError("must not carry credentials (user:password@): the key is a secret "
                         "(secrets.names), never part of a URL")
    return v


class UpstreamConfig(_Section):
    """Another OpenAI-compatible API the gateway may call, with its own key."""

    base_url: str = Field(json_schema_extra=allow("an https:// URL"))
    """Its base URL, ending where the SDKs' does (…/v1)."""
    auth: typing.Literal["bearer", "api-key"] = "bearer"
    """How the key is sent: `bearer` (Authorization: Bearer, OpenAI and most others) or
    `api-key` (the api-key header of Azure OpenAI's v1 API)."""
    org_id: str = Field("", pattern=HEADER_VALUE, json_schema_extra=allow(
        "visible ASCII without spaces (an HTTP header value)"))
    """Sent as the OpenAI-Organization header; "" sends none."""
    project_id: str = Field("", pattern=HEADER_VALUE, json_schema_extra=allow(
        "visible ASCII without spaces (an HTTP header value)"))
    """Sent as the OpenAI-Project header; "" sends none."""
    secret_name: str = Field(json_schema_extra=allow("one of secrets.names"))
    """The secret that holds its key (one of secrets.names; written with
    `python -m ops.apikey put --name <it>`), injected into the task by ARN."""

    _url = field_validator("base_url")(_https_url)


class TargetConfig(_Section):
    """Where a routed model goes: an upstream, the model's name there, its share and its tier."""

    upstream: str = DEFAULT_UPSTREAM
    """`default` (llm.baseUrl) or a name under llm.upstreams."""
    model: str = Field(json_schema_extra=allow("a model name listed in llm.prices"))
    """The model as this upstream names it (a dated snapshot, an Azure deployment), priced in llm.prices."""
    weight: int = Field(1, ge=0, le=1000)
    """Its share of its tier's requests; 0 takes it out of rotation (its tier needs another)."""
    tier: int = Field(1, ge=1, le=5)
    """1 first; a higher tier gets requests only when every target of the lower tiers fails or cools down."""


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
                                                                   "outputPerMillion}; at least one"))
    """The models clients may call, with their USD per million tokens (spend limits and the cost
    estimate). A dated snapshot of a listed model (gpt-4o-mini-2024-07-18) is allowed at that
    model's price unless listed itself (list a snapshot that costs more); any other model is
    refused (400, model_not_found)."""
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict, json_schema_extra=allow(
        "name (a-z, 0-9 and -, up to 32; not `default`): {baseUrl, auth, orgId, projectId, secretName}"))
    """More OpenAI-compatible APIs than baseUrl's (which routes call `default`): a second project
    for rate-limit headroom, another region or provider. Each key lives in its own secret."""
    routes: dict[str, list[TargetConfig]] = Field(default_factory=dict, json_schema_extra=allow(
        "model clients call: [{upstream, model, weight, tier}, ...]"))
    """The models clients may call, when set (instead of llm.prices' names: a target's model may be
    one provider's deployment), each to its targets: by weight within the lowest tier whose targets
    answer, failing over on 429, 5xx and connection errors before the response's headers. Keep a
    model callable under its own name with a route of that name (gpt-4o: [{model: gpt-4o}])."""
    cooldown_seconds: int = Field(30, ge=1, le=3600)
    """How long an upstream that keeps failing gets no requests while another target can take them."""
    cooldown_after_failures: int = Field(3, ge=1, le=100)
    """Failures in a row that cool an upstream down (a 429's Retry-After cools it at once)."""

    _url = field_validator("base_url")(_https_url)

    @field_validator("prices")
    @classmethod
    def _models(cls, v: dict[str, PriceConfig]) -> dict[str, PriceConfig]:
        if not v:
            raise ValueError("list at least one model clients may call, with its prices")
        if "default" in v:
            raise ValueError("there is no `default` price any more: the table lists the models clients may "
                             "call, and any other is refused; list each model instead")
        bad = [m for m in v if not MODEL.fullmatch(m)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a model name (letters, digits and . _ : / -, up to 128)")
        return v

    @property
    def routed(self) -> bool:
        """More than one upstream, or routes: the gateway routes (and reports per upstream)."""
        return bool(self.upstreams or self.routes)

    @property
    def upstream_names(self) -> list[str]:
        return [DEFAULT_UPSTREAM, *self.upstreams]

    def priced(self, model: str) -> bool:
        """Listed in prices, itself or as a dated snapshot of a listed model (the gateway's rule)."""
        return model in self.prices or re.sub(r"-\d{4}-\d{2}-\d{2}$", "", model) in self.prices

    @model_validator(mode="after")
    def _routes_lead_somewhere(self) -> LlmConfig:
        errors = [*_upstream_problems(self.upstreams), *_route_problems(self)]
        if errors:
            raise ConfigErrors(errors)
        return self


def _upstream_problems(upstreams: dict[str, UpstreamConfig]) -> list[ConfigError]:
    errors = []
    for name, u in upstreams.items():
        key = stack_key(f"llm.upstreams.{name}")
        if not UPSTREAM_NAME.fullmatch(name) or name == DEFAULT_UPSTREAM:
            errors.append(ConfigError(key, name, "a name of a-z, 0-9 and -, up to 32, other than `default` "
                                                 "(llm.baseUrl's)"))
        if u.auth == "api-key":
            path = urllib.parse.urlsplit(u.base_url).path.rstrip("/")
            if not path.endswith(AZURE_V1_PATH):
                errors.append(ConfigError(f"{key}.baseUrl", u.base_url,
                                          f"auth api-key is Azure OpenAI's v1 API: https://<resource>.openai."
                                          f"azure.com{AZURE_V1_PATH} (no api-version, no deployment in the path)"))
            for field, value in (("orgId", u.org_id), ("projectId", u.project_id)):
                if value:
                    errors.append(ConfigError(f"{key}.{field}", value, "\"\" with auth api-key: OpenAI's "
                                                                       "headers mean nothing to Azure"))
    return errors


def _route_problems(llm: LlmConfig) -> list[ConfigError]:
    errors = []
    names = [DEFAULT_UPSTREAM, *llm.upstreams]
    for model, targets in llm.routes.items():
        key = stack_key(f"llm.routes.{model}")
        if not MODEL.fullmatch(model):
            errors.append(ConfigError(key, model, "a model name (letters, digits and . _ : / -, up to 128)"))
        if not targets:
            errors.append(ConfigError(key, [], "at least one target {upstream, model}"))
        for i, t in enumerate(targets):
            if t.upstream not in names:
                errors.append(ConfigError(f"{key}[{i}].upstream", t.upstream,
                                          f"one of {', '.join(names)} (declare others under llm.upstreams)"))
            if not llm.priced(t.model):
                errors.append(ConfigError(f"{key}[{i}].model", t.model,
                                          "a model listed in llm.prices (itself, or a dated snapshot of one): "
                                          "spend limits and the cost estimate price what it serves"))
        for tier in sorted({t.tier for t in targets}):
            if not any(t.weight for t in targets if t.tier == tier):
                errors.append(ConfigError(f"{key}", f"tier {tier}",
                                          "a weight above 0 on at least one target of each tier"))
    return errors


# What SecretsArgs takes that is not a stack setting: the program wires it in or decides it.
SECRETS_NOT_SETTINGS = {"prefix", "region", "values", "protect", "retain_key"}


class SecretsConfig(settings_of(SecretsArgs, not_settings=SECRETS_NOT_SETTINGS)):
    names: list[str] = component_field(
        SecretsArgs, "names",
        min_length=1,
        json_schema_extra=allow("unique names of 2 to 63 lower-case "
                                                             "letters, digits and hyphens"))
    recovery_window_days: int = component_field(
        SecretsArgs, "recovery_window_days", json_schema_extra=allow("0, or 7 to 30"))
    rotation_age_days: int = Field(90, ge=1)
    """The age in days past which `python -m ops.apikey check` fails, asking for `rotate`."""
    key_deletion_window_days: int = component_field(
        SecretsArgs, "key_deletion_window_days", default=7, json_schema_extra=allow("7 to 30"))
    adopt: dict[str, str] = component_field(SecretsArgs, "adopt", json_schema_extra=allow(
        "key: a KMS key id; each secret's name: its ARN (as `python -m ops.teardown restore` prints them)"))

    @model_validator(mode="after")
    def _what_aws_refuses(self) -> SecretsConfig:
        known = ["key", *self.names, CLIENT_KEYS, CACHE_AUTH_TOKEN]
        for what in self.adopt:
            if what not in known:
                raise ConfigError(stack_key(f"secrets.adopt.{what}"), self.adopt[what],
                                  f"not the key or a secret of this stack: one of {', '.join(known)}")
        refuse("secrets", self, secrets_problems(self))
        return self


BUILD = "build"  # service.image: build gateway/ and deploy it by digest
# An image reference (the distribution/reference grammar, simplified): [registry[:port]/]path
# [:tag][@sha256:digest], path components lower-case.
IMAGE_REFERENCE = re.compile(
    r"(?:[A-Za-z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?")
# A user ECS can run as: uid, uid:gid, user or user:group (ContainerDefinition.user).
CONTAINER_USER = re.compile(r"([0-9]+|[a-z_][a-z0-9_-]*)(:([0-9]+|[a-z_][a-z0-9_-]*))?")


# What ServiceArgs takes that is not a stack setting: the program wires it in or decides it.
# `image` and `healthCheckCommand` are stack keys of the section's own, with their own meaning
# (`build`, and the gateway's own check for the image it builds).
SERVICE_NOT_SETTINGS = {
    "image", "health_check_command", "name", "region", "vpc_id", "subnet_ids", "lb_security_group_id",
    "target_group_arn",
    "request_count_label", "kms_key_arn", "health_check_path", "environment", "secrets", "cache",
    "repository_arn", "task_role_statements", "iam_path", "wait_for", "protect", "cluster_tags"}


class ServiceConfig(settings_of(ServiceArgs, not_settings=SERVICE_NOT_SETTINGS)):
    image: str = Field(BUILD, json_schema_extra=allow("build, or an image reference "
                                                      "(registry/repository:tag or @sha256:digest)"))
    """build: the stack builds gateway/ (Docker with buildx where `pulumi up` runs) and deploys
    it by digest; anything else is an image used as given."""
    cpu: int = component_field(ServiceArgs, "cpu", json_schema_extra=allow(", ".join(map(str, FARGATE_SIZES))))
    memory: int = component_field(ServiceArgs, "memory", json_schema_extra=allow("what Fargate pairs with cpu"))
    container_port: int = component_field(ServiceArgs, "container_port", ge=1024, le=65535)
    user: str = component_field(
        ServiceArgs, "user", json_schema_extra=allow("uid[:gid] or name[:group], not root"))
    health_check_command: str = ""
    """Run inside the container; "" means the gateway's own check for the built image, and
    `curl -fsS http://localhost:<port><healthCheckPath>` for any other."""
    min_tasks: int = component_field(ServiceArgs, "min_tasks", ge=0)
    max_tasks: int = component_field(ServiceArgs, "max_tasks", ge=1, le=5000)
    desired_tasks: int = component_field(ServiceArgs, "desired_tasks", ge=0)
    cpu_target: int = component_field(ServiceArgs, "cpu_target", ge=10, le=90)
    memory_target: int = component_field(ServiceArgs, "memory_target", ge=10, le=90)
    requests_per_target: int = component_field(ServiceArgs, "requests_per_target", ge=1)
    scale_out_cooldown: int = component_field(ServiceArgs, "scale_out_cooldown", ge=0)
    scale_in_cooldown: int = component_field(ServiceArgs, "scale_in_cooldown", ge=0)
    fargate_base: int = component_field(ServiceArgs, "fargate_base", ge=0, le=100000)
    fargate_weight: int = component_field(ServiceArgs, "fargate_weight", ge=0, le=1000)
    spot_weight: int = component_field(ServiceArgs, "spot_weight", ge=0, le=1000)
    health_check_grace_seconds: int = component_field(
        ServiceArgs, "health_check_grace_seconds", ge=0, le=2147483647)
    stop_timeout_seconds: int = component_field(
        ServiceArgs, "stop_timeout_seconds", json_schema_extra=allow("2 to 120"))
    log_retention_days: Retention = component_field(ServiceArgs, "log_retention_days", json_schema_extra=RETENTION)
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
        refuse("service", self, service_problems(self))
        return self


HOSTNAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
# Route 53 hosted zone ids: Z followed by upper-case letters and digits.
HOSTED_ZONE_ID = re.compile(r"(Z[A-Z0-9]{4,32})?")
# ALB health check paths: at most 1024 characters of these (ModifyTargetGroup, HealthCheckPath).
HEALTH_CHECK_PATH = re.compile(r"/[A-Za-z0-9_.~$/'@:+&()!,;=%-]{0,1023}")


# What LoadBalancerArgs takes that is not a stack setting: the program wires it in or decides it.
LOAD_BALANCER_NOT_SETTINGS = {"vpc_id", "subnet_ids", "container_port", "deletion_protection", "region"}


class LoadBalancerConfig(settings_of(LoadBalancerArgs, not_settings=LOAD_BALANCER_NOT_SETTINGS)):
    certificate_arn: str = component_field(LoadBalancerArgs, "certificate_arn", json_schema_extra=allow(
        "arn:<partition>:acm:<the stack's region>:<account>:certificate/<uuid>, or \"\""))
    domain_name: str = component_field(
        LoadBalancerArgs, "domain_name", json_schema_extra=allow("a DNS name, or \"\""))
    hosted_zone_id: str = component_field(
        LoadBalancerArgs, "hosted_zone_id", json_schema_extra=allow("a Route 53 zone id (Z...), or \"\""))
    # No plain-HTTP mode: API clients send a bearer key with every request, and the policy
    # pack refuses a listener that forwards HTTP, so config never offers one.
    ingress_cidrs: list[str] = component_field(
        LoadBalancerArgs, "ingress_cidrs", json_schema_extra=allow("IPv4 CIDRs (network addresses)"))
    ingress_ipv6_cidrs: list[str] = component_field(
        LoadBalancerArgs, "ingress_ipv6_cidrs", json_schema_extra=allow("IPv6 CIDRs (network addresses)"))
    idle_timeout_seconds: int = component_field(
        LoadBalancerArgs, "idle_timeout_seconds", json_schema_extra=allow("1 to 4000"))
    health_check_path: str = component_field(LoadBalancerArgs, "health_check_path", json_schema_extra=allow(
        "/ and up to 1,023 of A-Z a-z 0-9 _ . ~ $ / ' @ : + & ( ) ! , ; = % -"))
    deregistration_delay_seconds: int = component_field(
        LoadBalancerArgs, "deregistration_delay_seconds", json_schema_extra=allow("0 to 3600"))
    ssl_policy: str = component_field(
        LoadBalancerArgs, "ssl_policy", json_schema_extra=allow("an ALB security policy with TLS 1.3"))
    access_log_retention_days: int = component_field(LoadBalancerArgs, "access_log_retention_days", ge=1)

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
        refuse("loadBalancer", self, load_balancer_problems(self))
        return self


# After SIGTERM the gateway drains for the task's stop timeout less this margin, so it exits
# (0, its streams finished) before ECS sends SIGKILL.
DRAIN_MARGIN_SECONDS = 5


def drain_seconds(stop_timeout_seconds: int) -> int:
    """How long the gateway lets requests and streams in flight run on after SIGTERM."""
    return max(0, stop_timeout_seconds - DRAIN_MARGIN_SECONDS)


def spot_stream_seconds(stop_timeout_seconds: int) -> int:
    """On a Fargate Spot interruption SIGTERM comes while the load balancer still routes to the
    task, for up to OUT_OF_ROTATION_SECONDS (its failing health checks); a stream it starts in
    that time has the rest of the drain."""
    return max(0, drain_seconds(stop_timeout_seconds) - OUT_OF_ROTATION_SECONDS)


def stream_bound_seconds(c: StackConfig) -> int:
    """The longest stream a deploy or scale-in never cuts: ECS deregisters the task first and
    waits for the load balancer's deregistration delay (the in-flight requests finish, or the
    delay ends) before it sends SIGTERM. On Fargate Spot, an interruption's bound too."""
    bound = c.load_balancer.deregistration_delay_seconds
    if c.service.spot_weight:
        bound = min(bound, spot_stream_seconds(c.service.stop_timeout_seconds))
    return bound


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
    concurrent_requests: int = Field(0, ge=0)
    """Requests a client may have in flight at once, across every task; 0 for no limit."""


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
    upstream_429_per_5min: int = Field(20, ge=1)
    """Upstream 429s per 5 minutes that raise an alarm."""
    cache_ttl_seconds: int = Field(3600, ge=1, le=30 * 86400)
    """How long a cached answer is served."""
    cache_max_entry_kilobytes: int = Field(1024, ge=1, le=100 * 1024)
    """Answers larger than this are not cached (one huge write would hold the store, and every
    client's limits, past its timeout)."""
    coalesce_wait_seconds: int = Field(30, ge=0, le=300)
    """How long identical requests wait for the first one's answer."""
    output_tokens_estimate: int = Field(1000, ge=1)
    """Output tokens reserved against the limits when a request sets no max tokens."""
    default_limits: LimitsConfig = LimitsConfig()
    """Per-client limits for clients whose entry in client-keys sets none."""
    spend_per_hour_alarm_usd: float = Field(10.0, gt=0)
    """Estimated LLM spend per hour, all clients, that raises an alarm."""
    cache_errors_per_5min: int = Field(10, ge=1)
    """Requests served without the cache (Valkey not answering) per 5 minutes that raise an alarm."""

    @field_validator("upstream_tcp_keepalive_seconds")
    @classmethod
    def _under_nat_timeout(cls, v: int) -> int:
        if v + 15 >= NAT_IDLE_TIMEOUT_SECONDS:
            raise ValueError(f"the first keepalive probe (after {v} s, then every 15 s) must leave "
                             f"before a NAT gateway drops the idle flow at {NAT_IDLE_TIMEOUT_SECONDS} s: "
                             f"at most {NAT_IDLE_TIMEOUT_SECONDS - 16}")
        return v


# What CacheArgs takes that is not a stack setting: the program wires it in or decides it.
CACHE_NOT_SETTINGS = {
    "vpc_id", "subnet_ids", "kms_key_arn", "auth_token", "replication_group_id", "apply_immediately",
    "final_snapshot_suffix", "protect"}


class CacheConfig(settings_of(CacheArgs, not_settings=CACHE_NOT_SETTINGS)):
    engine_version: str = component_field(CacheArgs, "engine_version", json_schema_extra=allow(
        "; ".join(f"{e}: {', '.join(v)}" for e, v in FAMILIES.items())))
    node_type: str = component_field(CacheArgs, "node_type", json_schema_extra=allow(
        "a current-generation node type: cache.t4g/t3 micro to medium, m5/m6g/m7g/r5/r6g/r7g "
        "large and up"))
    nodes: int = component_field(CacheArgs, "nodes", json_schema_extra=allow(f"1 to {MAX_NODES}"))
    snapshot_retention_days: int = component_field(
        CacheArgs, "snapshot_retention_days", json_schema_extra=allow("0 to 35"))
    maintenance_window: str = component_field(
        CacheArgs, "maintenance_window",
        json_schema_extra=allow("ddd:hh24:mi-ddd:hh24:mi, UTC, 60 minutes "
                                                                    "or more"))
    snapshot_window: str = component_field(CacheArgs, "snapshot_window", json_schema_extra=allow(
        "hh24:mi-hh24:mi, UTC, not overlapping the maintenance window"))
    log_retention_days: Retention = component_field(CacheArgs, "log_retention_days", json_schema_extra=RETENTION)
    port: int = component_field(CacheArgs, "port", json_schema_extra=allow("1 to 65535"))

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
        refuse("cache", self, cache_problems(self))
        return self


# What EdgeArgs takes that is not a stack setting: the program wires it in or decides it.
EDGE_NOT_SETTINGS = {"name", "load_balancer_arn", "kms_key_arn"}


class EdgeConfig(settings_of(EdgeArgs, not_settings=EDGE_NOT_SETTINGS)):
    rate_limit: int = component_field(EdgeArgs, "rate_limit", json_schema_extra=allow("10 to 2,000,000,000"))
    rate_window_seconds: int = component_field(
        EdgeArgs, "rate_window_seconds", json_schema_extra=allow("60, 120, 300 or 600"))
    log_retention_days: Retention = component_field(EdgeArgs, "log_retention_days", json_schema_extra=RETENTION)

    @model_validator(mode="after")
    def _what_waf_refuses(self) -> EdgeConfig:
        refuse("edge", self, edge_problems(self))
        return self


# What Thresholds takes that is not a stack setting: the program wires it in or decides it.
MONITORING_NOT_SETTINGS = {
    # The gateway's alarms: set in the gateway section, next to what they watch.
    "ttft_p95_seconds", "upstream_429_per_5min", "cache_errors_per_5min", "spend_per_hour_usd"}


class MonitoringConfig(settings_of(Thresholds, not_settings=MONITORING_NOT_SETTINGS)):
    alert_emails: list[EmailStr] = Field(default_factory=list)
    """Who gets alarms and budget alerts (each confirms an SNS subscription)."""
    target_5xx_per_minute: int = component_field(
        Thresholds, "target_5xx_per_minute", ge=1)
    alb_5xx_per_minute: int = component_field(Thresholds, "alb_5xx_per_minute", ge=1)
    p95_latency_seconds: float = component_field(
        Thresholds, "p95_latency_seconds", gt=0)
    p99_latency_seconds: float = component_field(
        Thresholds, "p99_latency_seconds", gt=0)
    cpu_high_percent: int = component_field(Thresholds, "cpu_high_percent", ge=1, le=100)
    memory_high_percent: int = component_field(Thresholds, "memory_high_percent", ge=1, le=100)
    cache_cpu_percent: int = component_field(Thresholds, "cache_cpu_percent", ge=1, le=100)
    cache_memory_percent: int = component_field(Thresholds, "cache_memory_percent", ge=1, le=100)
    cache_evictions_per_5min: int = component_field(
        Thresholds, "cache_evictions_per_5min", ge=1)
    cache_hit_rate_min_percent: int = component_field(Thresholds, "cache_hit_rate_min_percent", ge=0, le=100)
    waf_blocked_per_5min: int = component_field(
        Thresholds, "waf_blocked_per_5min", ge=1)


# What BudgetArgs takes that is not a stack setting: the program wires it in or decides it.
BUDGET_NOT_SETTINGS = {"name", "environment", "emails", "topic_arn", "tag_key"}


class BudgetConfig(settings_of(BudgetArgs, not_settings=BUDGET_NOT_SETTINGS)):
    monthly_limit_usd: float = component_field(
        BudgetArgs, "monthly_limit_usd", default=100.0, json_schema_extra=allow("a positive amount"))
    actual_thresholds: list[int] = component_field(
        BudgetArgs, "actual_thresholds", json_schema_extra=allow("percentages, 1 to 1000"))
    forecast_thresholds: list[int] = component_field(
        BudgetArgs, "forecast_thresholds", json_schema_extra=allow("percentages, 1 to 1000"))

    @field_validator("actual_thresholds", "forecast_thresholds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        return sorted(set(v))

    @model_validator(mode="after")
    def _what_budgets_refuse(self) -> BudgetConfig:
        refuse("budget", self, budget_problems(self))
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
