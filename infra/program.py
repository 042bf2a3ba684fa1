"""The stack program: read and validate config, compose the components, export outputs.

Nothing is declared until the whole config has passed `infra.config.load`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pulumi
import pulumi_aws as aws
import pulumi_random as random
from pydantic import BaseModel

from components.budget import Budget, BudgetArgs
from components.cache import Cache, CacheArgs
from components.edge import Edge, EdgeArgs
from components.image import Image, ImageArgs
from components.load_balancer import (
    HEALTH_CHECK_INTERVAL,
    HEALTH_CHECK_TIMEOUT,
    OUT_OF_ROTATION_SECONDS,
    LoadBalancer,
    LoadBalancerArgs,
)
from components.monitoring import Monitoring, MonitoringArgs, Thresholds
from components.network import FARGATE_ZONE_IDS, Network, NetworkArgs, zone_filters
from components.registry import Registry, RegistryArgs
from components.secrets_store import Secrets, SecretsArgs, env_var_name
from components.service import CacheLink, Service, ServiceArgs
from infra import private_api
from infra.config import (
    BUILD,
    CACHE_AUTH_TOKEN,
    CLIENT_KEYS,
    GUARDDUTY_TAG,
    PROJECT,
    ConfigError,
    ConfigErrors,
    LlmConfig,
    StackConfig,
    certificate_account_error,
    drain_seconds,
    example_values,
    iam_path,
    load,
    physical_prefix,
    secret_prefix,
)


def read_config() -> tuple[dict[str, Any], set[str]]:
    """Every config key of this stack, objects parsed, and the keys that are secret.

    Pulumi hands config to the program as strings (objects as JSON), either through the
    runtime's config map or the PULUMI_CONFIG environment variable.
    """
    merged, secret_keys = private_api.stack_config()
    raw: dict[str, Any] = {}
    for key, value in merged.items():
        if isinstance(value, str) and value[:1] in "{[":
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        raw[key] = value
    return raw, secret_keys


ROOT = Path(__file__).resolve().parents[1]
GATEWAY_SOURCE = ROOT / "gateway"
GATEWAY_HEALTH_CHECK = ["python", "-m", "gateway.healthcheck"]
METRICS_NAMESPACE = "LLMService"


# The gateway keeps a client's idle connection this much longer than the load balancer does, so
# the ALB, not the target, closes it (a target closing first makes the ALB answer 502).
KEEPALIVE_OVER_IDLE_SECONDS = 20


def gateway_environment(cfg: StackConfig, prefix: str) -> dict[str, str]:
    """GATEWAY_* variables for the container, derived from config: the one place where a stack
    key takes the gateway's name for it (gateway/settings.py VARIABLES reads each). The ALB's idle
    timeout, for one, carries through as:

        loadBalancer.idleTimeoutSeconds (stack file)
        -> LoadBalancerArgs.idle_timeout_seconds (the ALB's idle_timeout attribute)
        -> GATEWAY_READ_TIMEOUT_SECONDS -> Settings.read_timeout_seconds (aiohttp's sock_read)
        -> GATEWAY_CLIENT_KEEPALIVE_SECONDS (+ KEEPALIVE_OVER_IDLE_SECONDS)
           -> Settings.client_keepalive_seconds (uvicorn's timeout_keep_alive)
    """
    g, lb, svc = cfg.gateway, cfg.load_balancer, cfg.service
    return {
        "GATEWAY_WORKERS": str(max(1, svc.cpu // 1024)),  # one process per whole vCPU
        "GATEWAY_SSE_KEEPALIVE_SECONDS": str(g.sse_keepalive_seconds),
        "GATEWAY_TCP_KEEPALIVE_SECONDS": str(g.upstream_tcp_keepalive_seconds),
        "GATEWAY_MAX_ATTEMPTS": str(g.max_attempts),
        "GATEWAY_RETRY_BUDGET_SECONDS": str(g.retry_budget_seconds),
        "GATEWAY_MAX_REQUEST_BYTES": str(g.max_request_megabytes * 1024 * 1024),
        "GATEWAY_LOG_PROMPTS": "true" if g.log_prompts else "false",
        # Past the ALB's idle timeout the client is gone anyway.
        "GATEWAY_READ_TIMEOUT_SECONDS": str(lb.idle_timeout_seconds),
        # Longer than the ALB's idle timeout, so the ALB, not the target, closes idle connections.
        "GATEWAY_CLIENT_KEEPALIVE_SECONDS": str(lb.idle_timeout_seconds + KEEPALIVE_OVER_IDLE_SECONDS),
        # Within the task's stop timeout, with time left to exit before SIGKILL.
        "GATEWAY_DRAIN_SECONDS": str(drain_seconds(svc.stop_timeout_seconds)),
        # A target the load balancer still holds is health-checked every interval: this long
        # without a request, nothing more will come (gateway/server.py).
        "GATEWAY_DRAIN_QUIET_SECONDS": str(HEALTH_CHECK_INTERVAL + HEALTH_CHECK_TIMEOUT),
        # ...and by then a target failing its checks is out of rotation (a Spot interruption).
        "GATEWAY_DRAIN_ACCEPT_SECONDS": str(OUT_OF_ROTATION_SECONDS),
        "GATEWAY_SERVICE": prefix,
        "GATEWAY_METRICS_NAMESPACE": METRICS_NAMESPACE,
        "GATEWAY_CACHE_TTL_SECONDS": str(g.cache_ttl_seconds),
        "GATEWAY_CACHE_MAX_ENTRY_BYTES": str(g.cache_max_entry_kilobytes * 1024),
        "GATEWAY_COALESCE_WAIT_SECONDS": str(g.coalesce_wait_seconds),
        "GATEWAY_OUTPUT_TOKENS_ESTIMATE": str(g.output_tokens_estimate),
        "GATEWAY_DEFAULT_LIMITS": json.dumps(g.default_limits.model_dump(by_alias=True), sort_keys=True),
        "GATEWAY_PRICES": json.dumps({m: p.model_dump(by_alias=True) for m, p in cfg.llm.prices.items()},
                                     sort_keys=True),
        **routing_environment(cfg.llm),
    }


def routing_environment(llm: LlmConfig) -> dict[str, str]:
    """The upstreams and routes (gateway/routing.py), only for a stack that declares them: a stack
    with one upstream keeps the task definition it had. Each upstream's key is its secret, injected
    under the secret's variable name (the task's `secrets`, by ARN), never a value here."""
    if not llm.routed:
        return {}
    upstreams = {name: {"baseUrl": u.base_url, "auth": u.auth, "orgId": u.org_id, "projectId": u.project_id,
                        "keyVariable": env_var_name(u.secret_name)} for name, u in llm.upstreams.items()}
    routes = {model: [t.model_dump(by_alias=True) for t in targets] for model, targets in llm.routes.items()}
    return {
        "GATEWAY_UPSTREAMS": json.dumps(upstreams, sort_keys=True) if upstreams else "",
        "GATEWAY_ROUTES": json.dumps(routes, sort_keys=True) if routes else "",
        "GATEWAY_UPSTREAM_COOLDOWN_SECONDS": str(llm.cooldown_seconds),
        "GATEWAY_UPSTREAM_COOLDOWN_AFTER": str(llm.cooldown_after_failures),
    }


def tags_for(cfg: StackConfig) -> dict[str, str]:
    return {"Project": PROJECT, "Environment": cfg.environment, "ManagedBy": "pulumi", **cfg.tags}


def refuse_examples(raw: dict[str, Any], cfg: StackConfig) -> None:
    """A real preview or up stops here, before anything is declared, on every example value
    of the shipped stack files and on a certificate of another account (one line each)."""
    errors = example_values(raw)
    # A synchronous invoke, not a resource: who is deploying, so the certificate can be checked.
    account = aws.get_caller_identity().account_id
    wrong_account = certificate_account_error(cfg, account)
    if wrong_account:
        errors.append(wrong_account)
    if errors:
        raise ConfigErrors(errors)


def check_zones(cfg: StackConfig) -> None:
    """How many AZs the region has is known only by asking it: a synchronous invoke before any
    resource, so that too many AZs fail here and not at the third subnet."""
    zones = aws.get_availability_zones(state="available", filters=zone_filters(cfg.region),
                                       region=cfg.region).names
    if len(zones) < cfg.network.az_count:
        need = " (prod needs 3: deploy prod to a region with 3 or more)" if cfg.is_prod and len(zones) < 3 else ""
        where = "standard AZs where Fargate runs" if cfg.region in FARGATE_ZONE_IDS else "standard AZs"
        raise ConfigError(f"{PROJECT}:network.azCount", cfg.network.az_count,
                          f"{cfg.region} has {len(zones)} {where} ({', '.join(zones)}): "
                          f"at most {len(zones)}{need}")


@dataclass
class Stack:
    """What every step needs: the checked config, names, and the provider's options."""

    cfg: StackConfig
    name: str
    prefix: str
    opts: pulumi.ResourceOptions

    @property
    def protect(self) -> bool:
        """Prod's stateful resources are protected (and its ALB has deletion protection), except
        in the one reviewed `up` that prepares a destroy (`teardown: true`)."""
        return self.cfg.is_prod and not self.cfg.teardown


def checked_config(offline: bool = False) -> Stack:
    """The config, checked whole before anything is declared; then the provider every resource
    uses. `offline` is the plan's mode (mocks, shipped example values accepted); `pulumi up`
    runs the default, which refuses example values."""
    raw, secret_keys = read_config()
    cfg = load(raw, secret_keys)  # raises ConfigError before anything is declared
    if not offline:
        refuse_examples(raw, cfg)
    check_zones(cfg)
    name = pulumi.get_stack()
    provider = aws.Provider(
        "aws", region=cfg.region,
        default_tags=aws.ProviderDefaultTagsArgs(tags=tags_for(cfg)),
    )
    return Stack(cfg, name, physical_prefix(name), pulumi.ResourceOptions(providers={"aws": provider}))


# Section keys of the stack's own that share a name with a component argument the program sets
# itself (`build` becomes the built image's digest; "" becomes the gateway's own health check).
OWN_MEANING = {"image", "health_check_command"}


def component_kwargs(section: BaseModel, args_type: type, **wiring: Any) -> dict[str, Any]:
    """A component's arguments: every setting of its config section that the component takes (by
    the one name both use; infra/config/stack.py DELIBERATE_DEFAULTS lists where their defaults
    differ), then what the program wires in. A wired value never silently replaces a setting the
    stack file may set: that is refused, but for the keys listed in OWN_MEANING."""
    takes = {f.name for f in dataclasses.fields(args_type)}
    settings = {name: copy.copy(getattr(section, name)) for name in type(section).model_fields if name in takes}
    both = set(settings) & set(wiring) - OWN_MEANING
    if both:
        raise TypeError(f"{type(section).__name__} has settings the program also wires in: {sorted(both)}; "
                        "list them in the section's *_NOT_SETTINGS")
    return {**settings, **wiring}


def secrets(st: Stack) -> Secrets:
    c = st.cfg.secrets
    return Secrets("secrets", SecretsArgs(**component_kwargs(
        c, SecretsArgs, prefix=secret_prefix(st.name), region=st.cfg.region,
        values={n: pulumi.Config().require_secret(n) for n in c.names} if c.source == "pulumi" else {},
        protect=st.protect,
        # Prod's key outlives a destroy: its secrets stay restorable and its final cache
        # snapshot readable; a re-create adopts it (python -m ops.teardown restore).
        retain_key=st.cfg.is_prod,
    )), opts=st.opts)


def network(st: Stack, keys: Secrets) -> Network:
    n = st.cfg.network
    return Network("network", NetworkArgs(**component_kwargs(
        n, NetworkArgs, region=st.cfg.region, kms_key_arn=keys.key_arn, iam_path=iam_path(st.name),
    )), opts=st.opts)


def load_balancer(st: Stack, net: Network) -> LoadBalancer:
    lbc = st.cfg.load_balancer
    return LoadBalancer("alb", LoadBalancerArgs(**component_kwargs(
        lbc, LoadBalancerArgs, vpc_id=net.vpc_id, subnet_ids=net.public_subnet_ids,
        container_port=st.cfg.service.container_port, deletion_protection=st.protect, region=st.cfg.region,
    )), opts=st.opts)


@dataclass
class CacheParts:
    cache: Cache
    auth_token: pulumi.Output[str]
    auth_secret_arn: pulumi.Output[str]


def cache(st: Stack, net: Network, keys: Secrets) -> CacheParts:
    c = st.cfg.cache
    # Generated once and kept in state (as a secret), so it is stable across runs.
    auth_token = random.RandomPassword(
        CACHE_AUTH_TOKEN, length=64, special=False,
        opts=pulumi.ResourceOptions(additional_secret_outputs=["result"]),
    )
    auth_secret_arn = keys.add_secret(CACHE_AUTH_TOKEN, auth_token.result)
    # Created and destroyed with the stack: each life of the cache names its final snapshot anew.
    snapshot_suffix = random.RandomId("cache-final-snapshot", byte_length=4)
    group = Cache("cache", CacheArgs(**component_kwargs(
        c, CacheArgs, vpc_id=net.vpc_id, subnet_ids=net.isolated_subnet_ids,
        kms_key_arn=keys.key_arn, auth_token=auth_token.result, replication_group_id=st.prefix,
        final_snapshot_suffix=snapshot_suffix.hex, protect=st.protect,
    )), opts=st.opts)
    return CacheParts(group, auth_token.result, auth_secret_arn)


@dataclass
class ImageParts:
    image: Any  # the built image's reference by digest, or service.image as given
    registry: Optional[Registry]


def image(st: Stack, keys: Secrets) -> ImageParts:
    svc = st.cfg.service
    registry = Registry("registry", RegistryArgs(
        name=st.prefix, kms_key_arn=keys.key_arn, protect=st.protect,
    ), opts=st.opts) if svc.ecr_repository else None
    ref: Any = svc.image
    if svc.image == BUILD:
        ref = Image("gateway", ImageArgs(
            context=str(GATEWAY_SOURCE), repository_url=registry.repository_url,
            registry_id=registry.registry_id, architecture=svc.architecture,
        ), opts=st.opts).ref
    return ImageParts(ref, registry)


def service(st: Stack, net: Network, keys: Secrets, alb: LoadBalancer, cached: CacheParts,
            img: ImageParts, client_keys_arn: pulumi.Output[str]) -> Service:
    cfg, svc, llm = st.cfg, st.cfg.service, st.cfg.llm
    group = cached.cache
    return Service("service", ServiceArgs(**component_kwargs(
        svc, ServiceArgs, name=st.prefix, region=cfg.region, vpc_id=net.vpc_id,
        subnet_ids=net.private_subnet_ids, image=img.image,
        lb_security_group_id=alb.security_group_id, target_group_arn=alb.target_group_arn,
        request_count_label=pulumi.Output.concat(alb.arn_suffix, "/", alb.target_group_arn_suffix),
        kms_key_arn=keys.key_arn, iam_path=iam_path(st.name),
        health_check_path=cfg.load_balancer.health_check_path,
        health_check_command=svc.health_check_command or (
            GATEWAY_HEALTH_CHECK if svc.image == BUILD else ""),
        environment={
            "APP_ENV": cfg.environment, "PORT": str(svc.container_port),
            "OPENAI_ORG_ID": llm.org_id, "OPENAI_PROJECT_ID": llm.project_id,  # "" sends none
            "OPENAI_BASE_URL": llm.base_url,
            "CACHE_HOST": group.primary_endpoint, "CACHE_READER_HOST": group.reader_endpoint,
            "CACHE_PORT": str(group.port), "CACHE_TLS": "true",
            **gateway_environment(cfg, st.prefix),
        },
        secrets={
            **{env_var_name(name): arn for name, arn in keys.secret_arns.items()},
            env_var_name(CLIENT_KEYS): client_keys_arn,
            "CACHE_AUTH_TOKEN": cached.auth_secret_arn,
        },
        cache=CacheLink(security_group_id=group.security_group_id, port=group.port),
        repository_arn=img.registry.arn if img.registry else None,
        wait_for=[alb.listener, *keys.values, *net.egress], protect=st.protect,
        # Before a destroy, GuardDuty (where it runs) must stop adding its agent and endpoint to
        # new tasks, or it could add the endpoint back between `ready` and the destroy.
        cluster_tags={GUARDDUTY_TAG: "false"} if cfg.teardown else {},
    )), opts=st.opts)


def edge(st: Stack, alb: LoadBalancer, keys: Secrets) -> Edge:
    e = st.cfg.edge
    return Edge("edge", EdgeArgs(**component_kwargs(
        e, EdgeArgs, name=st.prefix, load_balancer_arn=alb.arn, kms_key_arn=keys.key_arn,
    )), opts=st.opts)


def monitoring(st: Stack, keys: Secrets, alb: LoadBalancer, svc: Service, cached: CacheParts,
               waf: Edge) -> Monitoring:
    cfg, mon = st.cfg, st.cfg.monitoring
    return Monitoring("monitoring", MonitoringArgs(
        name=st.prefix, region=cfg.region, kms_key_arn=keys.key_arn,
        lb_arn_suffix=alb.arn_suffix, target_group_arn_suffix=alb.target_group_arn_suffix,
        cluster_name=svc.cluster_name, service_name=svc.service_name,
        cache_member_ids=cached.cache.member_ids,
        web_acl_name=waf.web_acl_name, min_tasks=cfg.service.min_tasks, max_tasks=cfg.service.max_tasks,
        alert_emails=[str(e) for e in mon.alert_emails], metrics_namespace=METRICS_NAMESPACE,
        gateway_service=st.prefix, upstreams=cfg.llm.upstream_names if cfg.llm.routed else [],
        thresholds=Thresholds(**mon.model_dump(exclude={"alert_emails"}),
                              ttft_p95_seconds=cfg.gateway.ttft_p95_alarm_seconds,
                              upstream_429_per_5min=cfg.gateway.upstream_429_per_5min,
                              cache_errors_per_5min=cfg.gateway.cache_errors_per_5min,
                              spend_per_hour_usd=cfg.gateway.spend_per_hour_alarm_usd),
    ), opts=st.opts)


def budget(st: Stack, alarms: Monitoring) -> Budget:
    b = st.cfg.budget
    return Budget("budget", BudgetArgs(**component_kwargs(
        b, BudgetArgs, name=st.prefix, environment=st.cfg.environment,
        emails=[str(e) for e in st.cfg.monitoring.alert_emails], topic_arn=alarms.topic_arn,
    )), opts=st.opts)


def outputs(st: Stack, net: Network, keys: Secrets, alb: LoadBalancer, cached: CacheParts,
            client_keys_arn: pulumi.Output[str], img: ImageParts, svc: Service, waf: Edge,
            alarms: Monitoring, spend: Budget) -> None:
    group, registry = cached.cache, img.registry
    pulumi.export("environment", st.cfg.environment)
    pulumi.export("teardown", st.cfg.teardown)  # ops.teardown ready: did this up lift protection?
    pulumi.export("region", st.cfg.region)
    pulumi.export("vpcId", net.vpc_id)
    pulumi.export("vpcCidr", net.cidr)
    pulumi.export("publicSubnetIds", net.public_subnet_ids)
    pulumi.export("privateSubnetIds", net.private_subnet_ids)
    pulumi.export("isolatedSubnetIds", net.isolated_subnet_ids)
    pulumi.export("kmsKeyArn", keys.key_arn)
    pulumi.export("secretArns", keys.secret_arns)
    pulumi.export("cacheAuthSecretArn", cached.auth_secret_arn)
    pulumi.export("clientKeysSecretArn", client_keys_arn)
    pulumi.export("cacheAuthToken", pulumi.Output.secret(cached.auth_token))
    pulumi.export("cachePrimaryEndpoint", group.primary_endpoint)
    pulumi.export("cacheReaderEndpoint", group.reader_endpoint)
    pulumi.export("cachePort", group.port)
    pulumi.export("cacheReplicationGroupId", group.replication_group_id)
    pulumi.export("cacheFinalSnapshot", group.final_snapshot)
    pulumi.export("serviceUrl", alb.url)
    pulumi.export("albDnsName", alb.dns_name)
    pulumi.export("albArn", alb.arn)
    pulumi.export("targetGroupArn", alb.target_group_arn)
    pulumi.export("clusterName", svc.cluster_name)
    pulumi.export("serviceName", svc.service_name)
    pulumi.export("logGroupName", svc.log_group_name)
    pulumi.export("repositoryUrl", registry.repository_url if registry else None)
    pulumi.export("image", img.image)
    pulumi.export("webAclArn", waf.web_acl_arn)
    pulumi.export("alarmTopicArn", alarms.topic_arn)
    pulumi.export("alarmNames", alarms.alarm_names)
    pulumi.export("dashboardUrl", alarms.dashboard_url)
    pulumi.export("budgetName", spend.budget_name)


def main(offline: bool = False) -> None:
    """The stack, in the order its parts depend on each other (infra/__main__.py reads the same)."""
    st = checked_config(offline)
    keys = secrets(st)
    net = network(st, keys)
    alb = load_balancer(st, net)
    cached = cache(st, net, keys)
    client_keys_arn = keys.add_secret(CLIENT_KEYS)  # its value: python -m ops.clientkeys
    img = image(st, keys)
    svc = service(st, net, keys, alb, cached, img, client_keys_arn)
    waf = edge(st, alb, keys)
    alarms = monitoring(st, keys, alb, svc, cached, waf)
    spend = budget(st, alarms)
    outputs(st, net, keys, alb, cached, client_keys_arn, img, svc, waf, alarms, spend)
