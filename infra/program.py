"""The stack program: read and validate config, compose the components, export outputs.

Nothing is declared until the whole config has passed `infra.config.load`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_random as random
from pulumi.runtime.config import (
    _SECRET_KEYS,
    CONFIG,
    get_config_env,
    get_config_secret_keys_env,
)

from components.budget import Budget, BudgetArgs
from components.cache import Cache, CacheArgs
from components.edge import Edge, EdgeArgs
from components.image import Image, ImageArgs
from components.load_balancer import LoadBalancer, LoadBalancerArgs
from components.monitoring import Monitoring, MonitoringArgs, Thresholds
from components.network import STANDARD_AZS, Network, NetworkArgs
from components.registry import Registry, RegistryArgs
from components.secrets import Secrets, SecretsArgs, env_var_name
from components.service import CacheLink, Service, ServiceArgs
from infra.config import (
    BUILD,
    PROJECT,
    ConfigError,
    ConfigErrors,
    StackConfig,
    certificate_account_error,
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
    merged = {**get_config_env(), **CONFIG.get()}
    raw: dict[str, Any] = {}
    for key, value in merged.items():
        if isinstance(value, str) and value[:1] in "{[":
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        raw[key] = value
    return raw, set(get_config_secret_keys_env()) | set(_SECRET_KEYS.get())


ROOT = Path(__file__).resolve().parents[1]
GATEWAY_SOURCE = ROOT / "gateway"
GATEWAY_HEALTH_CHECK = ["python", "-m", "gateway.healthcheck"]
METRICS_NAMESPACE = "LLMService"
CLIENT_KEYS = "client-keys"  # the secret holding client-key hashes (python -m infra.clientkeys)


def gateway_environment(cfg: StackConfig, prefix: str) -> dict[str, str]:
    """GATEWAY_* variables for the container, derived from config (gateway/settings.py reads them)."""
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
        "GATEWAY_CLIENT_KEEPALIVE_SECONDS": str(lb.idle_timeout_seconds + 20),
        # Within the task's stop timeout, with time left to exit before SIGKILL.
        "GATEWAY_DRAIN_SECONDS": str(max(0, svc.stop_timeout_seconds - 5)),
        "GATEWAY_SERVICE": prefix,
        "GATEWAY_METRICS_NAMESPACE": METRICS_NAMESPACE,
        "GATEWAY_CACHE_TTL_SECONDS": str(g.cache_ttl_seconds),
        "GATEWAY_COALESCE_WAIT_SECONDS": str(g.coalesce_wait_seconds),
        "GATEWAY_OUTPUT_TOKENS_ESTIMATE": str(g.output_tokens_estimate),
        "GATEWAY_DEFAULT_LIMITS": json.dumps(g.default_limits.model_dump(by_alias=True), sort_keys=True),
        "GATEWAY_PRICES": json.dumps({m: p.model_dump(by_alias=True) for m, p in cfg.llm.prices.items()},
                                     sort_keys=True),
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
    zones = aws.get_availability_zones(state="available", filters=STANDARD_AZS, region=cfg.region).names
    if len(zones) < cfg.network.az_count:
        need = " (prod needs 3: deploy prod to a region with 3 or more)" if cfg.is_prod else ""
        raise ConfigError("llm-service:network.azCount", cfg.network.az_count,
                          f"{cfg.region} has {len(zones)} standard AZs ({', '.join(zones)}): "
                          f"at most {len(zones)}{need}")


def main(offline: bool = False) -> None:
    """`offline` is the plan's mode (mocks, shipped example values accepted); `pulumi up` runs
    the default, which refuses example values."""
    raw, secret_keys = read_config()
    cfg = load(raw, secret_keys)  # raises ConfigError before anything is declared
    if not offline:
        refuse_examples(raw, cfg)
    check_zones(cfg)
    stack = pulumi.get_stack()
    prefix = physical_prefix(stack)
    provider = aws.Provider(
        "aws", region=cfg.region,
        default_tags=aws.ProviderDefaultTagsArgs(tags=tags_for(cfg)),
    )
    opts = pulumi.ResourceOptions(providers={"aws": provider})
    protect = cfg.is_prod

    secrets = Secrets("secrets", SecretsArgs(
        prefix=secret_prefix(stack), region=cfg.region, names=list(cfg.secrets.names),
        source=cfg.secrets.source,
        values={n: pulumi.Config().require_secret(n) for n in cfg.secrets.names}
        if cfg.secrets.source == "pulumi" else {},
        recovery_window_days=cfg.secrets.recovery_window_days,
        key_deletion_window_days=cfg.secrets.key_deletion_window_days, protect=protect,
    ), opts=opts)

    n = cfg.network
    network = Network("network", NetworkArgs(
        cidr=n.cidr, az_count=n.az_count, region=cfg.region, nat_strategy=n.nat_strategy,
        subnet_prefix_length=n.subnet_prefix_length, interface_endpoints=n.interface_endpoints,
        flow_log_retention_days=n.flow_log_retention_days, kms_key_arn=secrets.key_arn,
        iam_path=iam_path(stack),
    ), opts=opts)

    lbc, svc = cfg.load_balancer, cfg.service
    alb = LoadBalancer("alb", LoadBalancerArgs(
        vpc_id=network.vpc_id, subnet_ids=network.public_subnet_ids,
        container_port=svc.container_port, certificate_arn=lbc.certificate_arn,
        domain_name=lbc.domain_name, hosted_zone_id=lbc.hosted_zone_id, http_mode=lbc.http_mode,
        ingress_cidrs=list(lbc.ingress_cidrs), ingress_ipv6_cidrs=list(lbc.ingress_ipv6_cidrs),
        idle_timeout_seconds=lbc.idle_timeout_seconds, health_check_path=lbc.health_check_path,
        deregistration_delay_seconds=lbc.deregistration_delay_seconds, ssl_policy=lbc.ssl_policy,
        deletion_protection=cfg.is_prod, access_log_retention_days=lbc.access_log_retention_days,
    ), opts=opts)

    c = cfg.cache
    # Generated once and kept in state (as a secret), so it is stable across runs.
    auth_token = random.RandomPassword(
        "cache-auth-token", length=64, special=False,
        opts=pulumi.ResourceOptions(additional_secret_outputs=["result"]),
    )
    auth_secret_arn = secrets.add_secret("cache-auth-token", auth_token.result)
    # Created and destroyed with the stack: each life of the cache names its final snapshot anew.
    snapshot_suffix = random.RandomId("cache-final-snapshot", byte_length=4)
    cache = Cache("cache", CacheArgs(
        vpc_id=network.vpc_id, subnet_ids=network.isolated_subnet_ids,
        kms_key_arn=secrets.key_arn, auth_token=auth_token.result, replication_group_id=prefix,
        engine=c.engine, engine_version=c.engine_version, node_type=c.node_type, nodes=c.nodes,
        multi_az=c.multi_az, automatic_failover=c.automatic_failover,
        snapshot_retention_days=c.snapshot_retention_days,
        maintenance_window=c.maintenance_window, snapshot_window=c.snapshot_window,
        apply_immediately=not cfg.is_prod, log_retention_days=c.log_retention_days, port=c.port,
        final_snapshot_suffix=snapshot_suffix.hex, protect=protect,
    ), opts=opts)

    client_keys_arn = secrets.add_secret(CLIENT_KEYS)  # its value: python -m infra.clientkeys

    registry = Registry("registry", RegistryArgs(
        name=prefix, kms_key_arn=secrets.key_arn, protect=protect,
    ), opts=opts) if svc.ecr_repository else None
    image: Any = svc.image
    if svc.image == BUILD:
        image = Image("gateway", ImageArgs(
            context=str(GATEWAY_SOURCE), repository_url=registry.repository_url,
            registry_id=registry.registry_id, architecture=svc.architecture,
        ), opts=opts).ref

    llm = cfg.llm
    service = Service("service", ServiceArgs(
        name=prefix, region=cfg.region, vpc_id=network.vpc_id,
        subnet_ids=network.private_subnet_ids, image=image,
        lb_security_group_id=alb.security_group_id, target_group_arn=alb.target_group_arn,
        request_count_label=pulumi.Output.concat(alb.arn_suffix, "/", alb.target_group_arn_suffix),
        kms_key_arn=secrets.key_arn, iam_path=iam_path(stack), cpu=svc.cpu, memory=svc.memory,
        architecture=svc.architecture, container_port=svc.container_port, user=svc.user,
        health_check_path=lbc.health_check_path,
        health_check_command=svc.health_check_command or (
            GATEWAY_HEALTH_CHECK if svc.image == BUILD else ""),
        environment={
            "APP_ENV": cfg.environment, "PORT": str(svc.container_port),
            "OPENAI_ORG_ID": llm.org_id, "OPENAI_PROJECT_ID": llm.project_id,
            "OPENAI_BASE_URL": llm.base_url,
            "CACHE_HOST": cache.primary_endpoint, "CACHE_READER_HOST": cache.reader_endpoint,
            "CACHE_PORT": str(cache.port), "CACHE_TLS": "true",
            **gateway_environment(cfg, prefix),
        },
        secrets={
            **{env_var_name(name): arn for name, arn in secrets.secret_arns.items()},
            env_var_name(CLIENT_KEYS): client_keys_arn,
            "CACHE_AUTH_TOKEN": auth_secret_arn,
        },
        cache=CacheLink(security_group_id=cache.security_group_id, port=cache.port),
        min_tasks=svc.min_tasks, max_tasks=svc.max_tasks, desired_tasks=svc.desired_tasks,
        autoscaling=svc.autoscaling, cpu_target=svc.cpu_target, memory_target=svc.memory_target,
        requests_per_target=svc.requests_per_target, scale_out_cooldown=svc.scale_out_cooldown,
        scale_in_cooldown=svc.scale_in_cooldown, fargate_base=svc.fargate_base,
        fargate_weight=svc.fargate_weight, spot_weight=svc.spot_weight,
        health_check_grace_seconds=svc.health_check_grace_seconds,
        stop_timeout_seconds=svc.stop_timeout_seconds, log_retention_days=svc.log_retention_days,
        execute_command=svc.execute_command,
        repository_arn=registry.arn if registry else None,
        wait_for=[alb.listener, *secrets.values], protect=protect,
    ), opts=opts)

    edge = Edge("edge", EdgeArgs(
        name=prefix, load_balancer_arn=alb.arn, rate_limit=cfg.edge.rate_limit,
        rate_window_seconds=cfg.edge.rate_window_seconds,
        log_retention_days=cfg.edge.log_retention_days, kms_key_arn=secrets.key_arn,
    ), opts=opts)

    mon = cfg.monitoring
    emails = [str(e) for e in mon.alert_emails]
    monitoring = Monitoring("monitoring", MonitoringArgs(
        name=prefix, region=cfg.region, kms_key_arn=secrets.key_arn,
        lb_arn_suffix=alb.arn_suffix, target_group_arn_suffix=alb.target_group_arn_suffix,
        cluster_name=service.cluster_name, service_name=service.service_name,
        cache_member_ids=cache.member_ids,
        web_acl_name=edge.web_acl_name, min_tasks=svc.min_tasks, max_tasks=svc.max_tasks,
        alert_emails=emails, metrics_namespace=METRICS_NAMESPACE, gateway_service=prefix,
        thresholds=Thresholds(**mon.model_dump(exclude={"alert_emails"}),
                              ttft_p95_seconds=cfg.gateway.ttft_p95_alarm_seconds,
                              upstream_429_per_5min=cfg.gateway.upstream_429_per_5min,
                              cache_errors_per_5min=cfg.gateway.cache_errors_per_5min,
                              spend_per_hour_usd=cfg.gateway.spend_per_hour_alarm_usd),
    ), opts=opts)

    budget = Budget("budget", BudgetArgs(
        name=prefix, environment=cfg.environment, monthly_limit_usd=cfg.budget.monthly_limit_usd,
        actual_thresholds=list(cfg.budget.actual_thresholds),
        forecast_thresholds=list(cfg.budget.forecast_thresholds), emails=emails,
        topic_arn=monitoring.topic_arn,
    ), opts=opts)

    pulumi.export("environment", cfg.environment)
    pulumi.export("region", cfg.region)
    pulumi.export("vpcId", network.vpc_id)
    pulumi.export("vpcCidr", network.cidr)
    pulumi.export("publicSubnetIds", network.public_subnet_ids)
    pulumi.export("privateSubnetIds", network.private_subnet_ids)
    pulumi.export("isolatedSubnetIds", network.isolated_subnet_ids)
    pulumi.export("kmsKeyArn", secrets.key_arn)
    pulumi.export("secretArns", secrets.secret_arns)
    pulumi.export("cacheAuthSecretArn", auth_secret_arn)
    pulumi.export("clientKeysSecretArn", client_keys_arn)
    pulumi.export("cacheAuthToken", pulumi.Output.secret(auth_token.result))
    pulumi.export("cachePrimaryEndpoint", cache.primary_endpoint)
    pulumi.export("cacheReaderEndpoint", cache.reader_endpoint)
    pulumi.export("cachePort", cache.port)
    pulumi.export("cacheReplicationGroupId", cache.replication_group_id)
    pulumi.export("serviceUrl", alb.url)
    pulumi.export("albDnsName", alb.dns_name)
    pulumi.export("albArn", alb.arn)
    pulumi.export("targetGroupArn", alb.target_group_arn)
    pulumi.export("clusterName", service.cluster_name)
    pulumi.export("serviceName", service.service_name)
    pulumi.export("logGroupName", service.log_group_name)
    pulumi.export("repositoryUrl", registry.repository_url if registry else None)
    pulumi.export("image", image)
    pulumi.export("webAclArn", edge.web_acl_arn)
    pulumi.export("alarmTopicArn", monitoring.topic_arn)
    pulumi.export("alarmNames", monitoring.alarm_names)
    pulumi.export("dashboardUrl", monitoring.dashboard_url)
    pulumi.export("budgetName", budget.budget_name)
