"""Each component's args refuse what AWS would refuse, at construction, naming the argument:
a fork that takes one file keeps the rules (the stack config calls the same checks)."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal, Optional

import pytest
from pydantic_core import PydanticUndefined

from components.budget import BudgetArgs
from components.cache import CacheArgs
from components.edge import EdgeArgs
from components.image import ImageArgs
from components.load_balancer import LoadBalancerArgs
from components.monitoring import MonitoringArgs, Thresholds
from components.network import NetworkArgs
from components.registry import RegistryArgs
from components.secrets_store import SecretsArgs
from components.service import ServiceArgs
from infra.config import DELIBERATE_DEFAULTS, StackConfig
from infra.stack_files import ROOT
from offline import component_docs

CERT = "arn:aws:acm:eu-west-1:111122223333:certificate/5f0c2a3e-1b7d-4c9a-8e21-0a5b6c7d8e9f"
CACHE = dict(vpc_id="vpc-1", subnet_ids=["s-1", "s-2"], kms_key_arn="k", auth_token="t", replication_group_id="c")
SERVICE = dict(
    name="app",
    region="eu-west-1",
    vpc_id="vpc-1",
    subnet_ids=["s-1"],
    image="i",
    lb_security_group_id="sg",
    target_group_arn="tg",
    request_count_label="l",
    kms_key_arn="k",
)
LB = dict(vpc_id="vpc-1", subnet_ids=["s-1", "s-2"], container_port=8080)
MON = dict(
    name="app",
    region="eu-west-1",
    kms_key_arn="k",
    lb_arn_suffix="l",
    target_group_arn_suffix="t",
    cluster_name="c",
    service_name="s",
    cache_member_ids=[],
    web_acl_name="w",
)

BAD = [
    # (id, build, argument the message names, words)
    (
        "cache-multi-az-one-node",
        lambda: CacheArgs(**CACHE, multi_az=True, automatic_failover=True),
        "CacheArgs.nodes",
        "at least 2 nodes",
    ),
    ("cache-failover-one-node", lambda: CacheArgs(**CACHE, automatic_failover=True), "CacheArgs.nodes", "2 nodes"),
    (
        "cache-multi-az-without-failover",
        lambda: CacheArgs(**CACHE, nodes=2, multi_az=True),
        "CacheArgs.automatic_failover",
        "requires automatic failover",
    ),
    (
        "cache-node-type",
        lambda: CacheArgs(**CACHE, node_type="cache.t2.micro"),
        "CacheArgs.node_type",
        "current-generation",
    ),
    (
        "cache-version",
        lambda: CacheArgs(**CACHE, engine_version="6.0"),
        "CacheArgs.engine_version",
        "valkey versions",
    ),
    (
        "cache-windows-overlap",
        lambda: CacheArgs(**CACHE, maintenance_window="mon:03:30-mon:04:30"),
        "CacheArgs.snapshot_window",
        "overlaps",
    ),
    ("cache-seven-nodes", lambda: CacheArgs(**CACHE, nodes=7), "CacheArgs.nodes", "1 to 6"),
    (
        "service-fargate-pair",
        lambda: ServiceArgs(**SERVICE, cpu=256, memory=4096),
        "ServiceArgs.memory",
        "[512, 1024, 2048]",
    ),
    ("service-fargate-cpu", lambda: ServiceArgs(**SERVICE, cpu=300), "ServiceArgs.cpu", "Fargate accepts cpu"),
    (
        "service-min-over-max",
        lambda: ServiceArgs(**SERVICE, min_tasks=5, max_tasks=2),
        "ServiceArgs.min_tasks",
        "max_tasks",
    ),
    (
        "service-desired-outside",
        lambda: ServiceArgs(**SERVICE, desired_tasks=9),
        "ServiceArgs.desired_tasks",
        "lie between",
    ),
    (
        "service-no-capacity",
        lambda: ServiceArgs(**SERVICE, fargate_weight=0),
        "ServiceArgs.fargate_weight",
        "at least 1",
    ),
    ("service-root", lambda: ServiceArgs(**SERVICE, user="0:0"), "ServiceArgs.user", "never root"),
    (
        "service-flapping",
        lambda: ServiceArgs(**SERVICE, scale_in_cooldown=10),
        "ServiceArgs.scale_in_cooldown",
        "grace period",
    ),
    ("lb-no-certificate", lambda: LoadBalancerArgs(**LB), "LoadBalancerArgs.certificate_arn", "HTTPS needs"),
    (
        "lb-domain-without-zone",
        lambda: LoadBalancerArgs(**LB, domain_name="api.mycompany.com"),
        "LoadBalancerArgs.certificate_arn",
        "HTTPS needs",
    ),
    (
        "lb-zone-without-domain",
        lambda: LoadBalancerArgs(**LB, certificate_arn=CERT, hosted_zone_id="Z0123456789ABC"),
        "LoadBalancerArgs.hosted_zone_id",
        "without `domain_name`",
    ),
    (
        "lb-tls12-policy",
        lambda: LoadBalancerArgs(**LB, certificate_arn=CERT, ssl_policy="ELBSecurityPolicy-2016-08"),
        "LoadBalancerArgs.ssl_policy",
        "no TLS 1.3",
    ),
    (
        "lb-cidr",
        lambda: LoadBalancerArgs(**LB, certificate_arn=CERT, ingress_cidrs=["10.0.0.1/8"]),
        "LoadBalancerArgs.ingress_cidrs[0]",
        "host bits",
    ),
    (
        "lb-idle",
        lambda: LoadBalancerArgs(**LB, certificate_arn=CERT, idle_timeout_seconds=5000),
        "LoadBalancerArgs.idle_timeout_seconds",
        "1 to 4000",
    ),
    (
        "network-azs",
        lambda: NetworkArgs(cidr="10.0.0.0/16", az_count=5, region="eu-west-1"),
        "NetworkArgs.az_count",
        "1 to 4",
    ),
    (
        "network-too-small",
        lambda: NetworkArgs(cidr="10.0.0.0/22", az_count=2, region="eu-west-1"),
        "NetworkArgs.cidr",
        "needs room",
    ),
    (
        "network-not-a-cidr",
        lambda: NetworkArgs(cidr="10.0.0.0/33", az_count=2, region="eu-west-1"),
        "NetworkArgs.cidr",
        "not an IPv4 CIDR",
    ),
    (
        "secrets-pulumi-without-values",
        lambda: SecretsArgs(prefix="a/b", region="eu-west-1", source="pulumi"),
        "SecretsArgs.values",
        "needs a value",
    ),
    (
        "secrets-recovery",
        lambda: SecretsArgs(prefix="a/b", region="eu-west-1", recovery_window_days=3),
        "SecretsArgs.recovery_window_days",
        "7 to 30",
    ),
    (
        "secrets-names",
        lambda: SecretsArgs(prefix="a/b", region="eu-west-1", names=["x", "x"]),
        "SecretsArgs.names",
        "lower-case",
    ),
    (
        "edge-window",
        lambda: EdgeArgs(name="a", load_balancer_arn="l", rate_window_seconds=90),
        "EdgeArgs.rate_window_seconds",
        "60, 120, 300 or 600",
    ),
    ("edge-rate", lambda: EdgeArgs(name="a", load_balancer_arn="l", rate_limit=5), "EdgeArgs.rate_limit", "10 to"),
    (
        "budget-zero",
        lambda: BudgetArgs(name="a", environment="dev", monthly_limit_usd=0),
        "BudgetArgs.monthly_limit_usd",
        "positive",
    ),
    (
        "budget-threshold",
        lambda: BudgetArgs(name="a", environment="dev", monthly_limit_usd=5, actual_thresholds=[0]),
        "BudgetArgs.actual_thresholds",
        "1 to 1000",
    ),
    ("registry-name", lambda: RegistryArgs(name="My_App", kms_key_arn="k"), "RegistryArgs.name", "lower-case"),
    (
        "image-no-dockerfile",
        lambda: ImageArgs(context="/nonexistent", repository_url="r", registry_id="1"),
        "ImageArgs.context",
        "Dockerfile",
    ),
    (
        "monitoring-min-over-max",
        lambda: MonitoringArgs(**MON, min_tasks=3, max_tasks=1),
        "MonitoringArgs.min_tasks",
        "max_tasks",
    ),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_args_refuse_what_aws_would_naming_the_argument(case):
    _, build, arg, words = case
    with pytest.raises(ValueError) as err:
        build()
    assert str(err.value).startswith(f"{arg}: got "), str(err.value)
    assert words in str(err.value), str(err.value)


def test_the_defaults_and_plausible_args_pass():
    CacheArgs(**CACHE)
    CacheArgs(**CACHE, nodes=2, multi_az=True, automatic_failover=True, node_type="cache.m7g.large")
    ServiceArgs(**SERVICE)
    ServiceArgs(**SERVICE, cpu=1024, memory=8192, spot_weight=1, fargate_weight=0)
    LoadBalancerArgs(**LB, certificate_arn=CERT)
    LoadBalancerArgs(**LB, domain_name="api.mycompany.com", hosted_zone_id="Z0123456789ABC")
    NetworkArgs(cidr="10.0.0.0/16", az_count=3, region="eu-west-1", nat_strategy="per_az")
    SecretsArgs(prefix="a/b", region="eu-west-1", source="pulumi", values={"openai-api-key": "v"})
    EdgeArgs(name="a", load_balancer_arn="l")
    BudgetArgs(name="a", environment="dev", monthly_limit_usd=5)
    RegistryArgs(name="my-app", kms_key_arn="k")
    ImageArgs(context=str(ROOT / "gateway"), repository_url="r", registry_id="1")
    MonitoringArgs(**MON, min_tasks=1, max_tasks=4)


# Each config section and the component its settings come from (infra/config/sections.py settings_of;
# infra/program.py component_kwargs passes them back; monitoring's become MonitoringArgs.thresholds).
SECTIONS = {"network": NetworkArgs, "secrets": SecretsArgs, "service": ServiceArgs,
            "load_balancer": LoadBalancerArgs, "cache": CacheArgs, "edge": EdgeArgs, "budget": BudgetArgs,
            "monitoring": Thresholds}


def _default(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)"


def default_differences(sections: dict[str, tuple[type, type]]) -> dict[str, tuple[object, object]]:
    """section.field -> (the stack's default, the component's) wherever the two differ."""
    found = {}
    for section, (model, args) in sections.items():
        takes = {f.name: f for f in dataclasses.fields(args)}
        for name, info in model.model_fields.items():
            if name in takes:
                ours, theirs = info.get_default(call_default_factory=True), _default(takes[name])
                if ours != theirs:
                    found[f"{section}.{name}"] = (ours, theirs)
    return found


def test_a_setting_has_one_default_unless_the_difference_is_listed_with_its_reason():
    """Sections take their defaults from the components, so a difference exists only where a
    section passes its own `default=`: each must be listed, with its reason, and each listed one
    must be a difference."""
    sections = {name: (StackConfig.model_fields[name].annotation, args) for name, args in SECTIONS.items()}
    assert set(default_differences(sections)) == set(DELIBERATE_DEFAULTS)
    assert all(len(why) > 40 for why in DELIBERATE_DEFAULTS.values())


def test_a_section_default_of_its_own_is_found():
    from infra.config.sections import component_field, settings_of

    @dataclasses.dataclass
    class KnobArgs:
        turns: int = 3
        """How many turns."""
        label: str = "knob"
        """Its label."""

    class KnobConfig(settings_of(KnobArgs, not_settings=())):
        turns: int = component_field(KnobArgs, "turns", default=5, ge=0)

    assert default_differences({"knob": (KnobConfig, KnobArgs)}) == {"knob.turns": (5, 3)}
    assert KnobConfig().label == "knob"


def test_every_setting_of_a_section_reaches_its_component_or_is_the_programs_own():
    """A section's field the component does not take is read by the program itself or by an
    operator command, by name."""
    program = "".join(p.read_text() for p in [ROOT / "infra" / "program.py", *(ROOT / "ops").glob("*.py")])
    for section, args in SECTIONS.items():
        model = StackConfig.model_fields[section].annotation
        takes = {f.name for f in dataclasses.fields(args)}
        for name in set(model.model_fields) - takes:
            assert re.search(rf"\.{name}\b", program) or section == "monitoring" and name == "alert_emails", \
                f"{section}.{name} reaches nothing"


def test_a_section_takes_its_settings_default_and_description_from_the_component():
    """One declaration: ServiceConfig.cpu states only the stack's bounds; its default and its
    description are ServiceArgs.cpu's, and a snake_case argument named in it reads in camelCase."""
    from infra.config import ServiceConfig, component_field

    cpu = ServiceConfig.model_fields["cpu"]
    assert cpu.default == 512 == {f.name: f for f in dataclasses.fields(ServiceArgs)}["cpu"].default
    assert cpu.description == "Task CPU units (1024 = one vCPU). Fargate's task sizes."
    assert "healthCheckGraceSeconds" in ServiceConfig.model_fields["scale_in_cooldown"].description

    @dataclasses.dataclass
    class WidgetArgs:
        size_mb: int = 3
        """Bigger than min_size_mb, and never 0 (not_a_field stays)."""
        min_size_mb: int = 1
        """The least."""

    field = component_field(WidgetArgs, "size_mb", ge=1)
    assert (field.default, field.description) == (3, "Bigger than minSizeMb, and never 0 (not_a_field stays).")
    assert component_field(WidgetArgs, "size_mb", default=5).default == 5
    made = component_field(WidgetArgs, "size_mb", default_factory=lambda: 7)  # the stack's own, made fresh
    assert made.default_factory() == 7 and made.default is PydanticUndefined


def test_a_section_that_only_adds_a_rule_to_another_is_a_section_too():
    """A fork's section may declare no field of its own (a rule on the inherited ones)."""
    from pydantic import model_validator

    from infra.config import ServiceConfig

    class StrictService(ServiceConfig):
        @model_validator(mode="after")
        def _even(self):
            if self.cpu % 2:
                raise ValueError("even")
            return self

    assert StrictService().cpu == 512
    assert StrictService.model_fields["cpu"].description == ServiceConfig.model_fields["cpu"].description


def test_a_new_argument_of_a_component_is_a_stack_key_with_no_line_in_the_config():
    from infra.config.sections import settings_of

    @dataclasses.dataclass
    class GadgetArgs:
        vpc_id: str
        """Wired in by the program."""
        retries: int = 3
        """How often to try again."""
        mode: Literal["fast", "safe"] = "safe"
        """How it runs."""

    section = settings_of(GadgetArgs, not_settings={"vpc_id"})
    assert list(section.model_fields) == ["retries", "mode"]
    assert section.model_fields["mode"].description == "How it runs."
    assert section.model_validate({"retries": 5}).mode == "safe"
    with pytest.raises(ValueError, match="mode"):
        section.model_validate({"mode": "reckless"})
    with pytest.raises(ValueError, match="vpcId"):  # wiring is not a key
        section.model_validate({"vpcId": "vpc-1"})
    with pytest.raises(TypeError) as err:
        settings_of(GadgetArgs, not_settings={"vpc"})
    assert str(err.value) == "GadgetArgs has no argument ['vpc']: not_settings names only its arguments"


def test_an_argument_the_program_wires_in_is_named_when_it_is_not_listed():
    import pulumi

    from infra.config.sections import settings_of

    @dataclasses.dataclass
    class WiredArgs:
        bucket_arn: Optional[pulumi.Input[str]] = None
        """A bucket the program makes."""

    with pytest.raises(TypeError) as err:
        settings_of(WiredArgs, not_settings=())
    assert str(err.value) == WIRED.format(arg="WiredArgs.bucket_arn (Optional[pulumi.Input[str]])")
    assert list(settings_of(WiredArgs, not_settings={"bucket_arn"}).model_fields) == []


WIRED = ("{arg} cannot be a stack setting: a value the program wires in (a pulumi Input, Output or Resource) "
         "is listed in the section's *_NOT_SETTINGS")


@pytest.mark.parametrize("annotation", ["pulumi.Output[str]", "pulumi.Resource", "Optional[pulumi.Input[int]]"])
def test_a_wired_type_is_named_even_where_it_resolves(annotation):
    """Each of the three words, in a type the component's module can resolve (pulumi imported there)."""
    from infra.config.sections import settings_of

    fields = [("arg", annotation, dataclasses.field(default=None))]
    args = dataclasses.make_dataclass("ResolvedArgs", fields, namespace={"__module__": "components.service"})
    with pytest.raises(TypeError) as err:
        settings_of(args, not_settings=())
    assert str(err.value) == WIRED.format(arg=f"ResolvedArgs.arg ({annotation})")


def test_a_type_the_components_module_cannot_resolve_is_named_with_the_name_it_lacks():
    from infra.config.sections import settings_of

    args = dataclasses.make_dataclass("LostArgs", [("arg", "Widget", dataclasses.field(default=None))],
                                      namespace={"__module__": "components.service"})
    with pytest.raises(TypeError) as err:
        settings_of(args, not_settings=())
    assert str(err.value) == WIRED.format(arg="LostArgs.arg (Widget)") + " (name 'Widget' is not defined)"


def test_a_wired_value_never_silently_replaces_a_setting():
    from infra.config import load
    from infra.program import component_kwargs
    from tests.conftest import stack_config

    cfg = load(*stack_config("staging"))
    assert component_kwargs(cfg.edge, EdgeArgs, name="x")["rate_limit"] == cfg.edge.rate_limit
    with pytest.raises(TypeError, match=r"EdgeConfig has settings the program also wires in: \['rate_limit'\]"):
        component_kwargs(cfg.edge, EdgeArgs, rate_limit=1)


@pytest.mark.parametrize(("argument", "key"), [
    ("cache_evictions_per_5min", "cacheEvictionsPer5min"), ("target_5xx_per_minute", "target5xxPerMinute"),
    ("p95_latency_seconds", "p95LatencySeconds"), ("ingress_ipv6_cidrs", "ingressIpv6Cidrs"),
    ("health_check_grace_seconds", "healthCheckGraceSeconds"), ("cpu", "cpu"),
])
def test_a_stack_key_keeps_a_segment_that_starts_with_a_digit_as_written(argument, key):
    from infra.config.names import stack_name

    assert stack_name(argument) == key


def test_every_stack_note_is_about_an_argument_and_shows_in_the_reference():
    from infra.config.sections import STACK_NOTES

    components = {"ServiceArgs": ServiceArgs, "SecretsArgs": SecretsArgs, "LoadBalancerArgs": LoadBalancerArgs,
                  "BudgetArgs": BudgetArgs}
    reference = " ".join((ROOT / "docs" / "configuration.md").read_text().split())
    for (args, name), note in STACK_NOTES.items():
        assert name in {f.name for f in dataclasses.fields(components[args])}, (args, name)
        assert note.replace("|", "\\|") in reference, note


# Each component's type token: part of every child's URN, so changing one re-creates everything
# under it on the next `up` (a rename needs an alias). Reviewed here, one line each.
TOKENS = {
    "network": "llm-service:network:Network", "secrets_store": "llm-service:secrets:Secrets",
    "load_balancer": "llm-service:load_balancer:LoadBalancer", "registry": "llm-service:registry:Registry",
    "image": "llm-service:image:Image", "service": "llm-service:service:Service",
    "cache": "llm-service:cache:Cache", "edge": "llm-service:edge:Edge",
    "monitoring": "llm-service:monitoring:Monitoring", "budget": "llm-service:budget:Budget",
}


def test_each_component_has_its_token_and_registers_every_output_it_declares(staging, prod):
    """The engine keeps a component's registered outputs in state (`pulumi stack --show-urns`,
    a fork reads them there): every value it declares as an output, not the resources it exposes
    for others to depend on. The cache's final snapshot is None in staging (no snapshots), and the
    engine keeps no None."""
    assert set(TOKENS) == set(component_docs.COMPONENTS)
    components = {d.type: d for d in staging.resources if not d.custom}
    assert set(components) == set(TOKENS.values())
    for module, token in TOKENS.items():
        cls = component_docs.component_class(module)
        assert token.rsplit(":", 1)[1] == cls
        declared = {name for name, typ in component_docs.annotations(module, cls).items()
                    if "Resource" not in typ and not typ.startswith("aws.")}
        assert components[token].outputs == sorted(declared - {"final_snapshot"}), module
    assert "final_snapshot" in next(d for d in prod.resources if d.type == TOKENS["cache"]).outputs


def test_every_lookup_goes_through_the_stacks_provider(staging, prod):
    """A component's lookups (account, partition, zones, the registry's token) are its children's,
    so they use the stack's provider (its region). The program asks for the region's zones once
    before that provider exists (a config check), naming the region itself."""
    provider = "urn:pulumi:{}::llm-service::pulumi:pulumi:Stack$pulumi:providers:aws::aws::aws-id"
    for stack in (staging, prod):
        ours = provider.format(stack.stack)
        assert sorted(set(stack.invokes)) == [
            ("aws:ecr/getAuthorizationToken:getAuthorizationToken", ours),
            ("aws:index/getAvailabilityZones:getAvailabilityZones", ""),
            ("aws:index/getAvailabilityZones:getAvailabilityZones", ours),
            ("aws:index/getCallerIdentity:getCallerIdentity", ours),
            ("aws:index/getPartition:getPartition", ours)]
