"""A change-free second `up` is a no-op: everything each stack declares is already in the normal
form AWS stores and the provider compares (tests/aws_normal_form.py), so nothing reads back as
changed and no task definition is registered again."""

from __future__ import annotations

import copy
import json

import pytest

from tests.aws_normal_form import RULES, container_drift, ecs_stores, resource_drift
from tests.conftest import container

TASK = "aws:ecs/taskDefinition:TaskDefinition"


def _definitions(stack) -> list[dict]:
    return json.loads(stack.one(TASK).inputs["containerDefinitions"])


VARIANTS = {
    # The same variant tests/test_lifecycle.py synthesizes (one synthesis for both).
    "org-and-project-set": {"llm__orgId": "org-0123456789abcdef", "llm__projectId": "proj_0123456789abcdef",
                            "network__guardDutyEndpoint": True},
    "own-image": {"service__image": "public.ecr.aws/acme/llm-app:1.4.2"},
    "exec-on": {"service__executeCommand": True},
}


def test_each_stacks_container_definition_is_what_ecs_stores(stack):
    assert stack.one(TASK).inputs["networkMode"] == "awsvpc"
    assert container_drift(_definitions(stack)) == []


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_container_definition_stays_stored_as_declared_whatever_the_config(synth, variant):
    assert container_drift(_definitions(synth("staging", **VARIANTS[variant]))) == []


def test_empty_optional_headers_are_left_out_rather_than_dropped_by_ecs(staging):
    """The shipped files send no organization or project: the variables are absent, not "",
    which ECS would drop and the provider would then re-register on every up (#39533)."""
    names = {e["name"] for e in container(staging)["environment"]}
    assert "OPENAI_ORG_ID" not in names and "OPENAI_PROJECT_ID" not in names
    assert all(e["value"] != "" for e in container(staging)["environment"])


def test_every_resource_is_declared_in_the_form_aws_stores(stack):
    found = {f"{r.type} {r.name}: {why}" for r in stack.resources for why in resource_drift(r.type, r.inputs)}
    assert found == set()
    assert {r.type for r in stack.resources} >= set(RULES), "every rule meets a resource it governs"


# --- the model itself: each way a definition drifts is caught, what the provider normalises is not

def test_the_model_catches_each_container_value_ecs_would_not_keep(staging):
    base = _definitions(staging)
    cases = {
        "an empty variable": lambda d: d["environment"].append({"name": "OPENAI_ORG_ID", "value": ""}),
        "a null variable": lambda d: d["environment"].append({"name": "X", "value": None}),
        "a variable without a value": lambda d: d["environment"].append({"name": "X"}),
        "an empty nested map": lambda d: d["logConfiguration"].update(secretOptions=[]),
        "a null nested value": lambda d: d["linuxParameters"].update(capabilities=None),
    }
    for what, change in cases.items():
        defs = copy.deepcopy(base)
        change(defs[0])
        assert container_drift(defs), f"{what} was not caught"


def test_the_model_accepts_what_the_provider_normalises(staging):
    defs = copy.deepcopy(_definitions(staging))
    app = defs[0]
    app["environment"].reverse()                               # order: sorted on both sides
    del app["portMappings"][0]["protocol"]                     # tcp is the default
    for k in ("interval", "timeout", "retries"):               # health check defaults
        app["healthCheck"].pop(k)
    app.pop("essential")                                       # essential defaults to true
    assert container_drift(defs) == []
    assert ecs_stores(defs)[0]["cpu"] == 0, "ECS fills in what the provider ignores"


BAD = [
    ("aws:elasticache/replicationGroup:ReplicationGroup", {"applyImmediately": False}, "applyImmediately is true"),
    ("aws:elasticache/replicationGroup:ReplicationGroup", {"maintenanceWindow": "Sun:05:00-Sun:06:00"},
     "maintenanceWindow is lower case"),
    ("aws:elasticache/replicationGroup:ReplicationGroup", {"engineVersion": "8.0.1"},
     "engineVersion is major.minor"),
    ("aws:elasticache/replicationGroup:ReplicationGroup", {"kmsKeyId": "mrk-0123"}, "kmsKeyId is an ARN"),
    ("aws:elasticache/replicationGroup:ReplicationGroup", {"automaticFailoverEnabled": None},
     "automaticFailoverEnabled is set"),
    ("aws:cloudwatch/metricAlarm:MetricAlarm", {"treatMissingData": "NotBreaching"}, "treatMissingData"),
    ("aws:cloudwatch/metricAlarm:MetricAlarm", {"statistic": "average"}, "statistic"),
    ("aws:cloudwatch/metricAlarm:MetricAlarm", {"statistic": None, "extendedStatistic": "P95"},
     "extendedStatistic"),
    ("aws:ecs/service:Service", {"availabilityZoneRebalancing": None}, "availabilityZoneRebalancing"),
    ("aws:ecs/taskDefinition:TaskDefinition", {"cpu": "0.5 vCPU"}, "cpu and memory"),
    ("aws:lb/loadBalancer:LoadBalancer", {"desyncMitigationMode": "Defensive"}, "desyncMitigationMode"),
    ("aws:lb/loadBalancer:LoadBalancer", {"ipAddressType": "IPv4"}, "ipAddressType"),
    ("aws:lb/loadBalancer:LoadBalancer", {"idleTimeout": 600.5}, "idleTimeout"),
    ("aws:lb/targetGroup:TargetGroup", {"protocol": "http"}, "protocols"),
    ("aws:lb/targetGroup:TargetGroup", {"loadBalancingAlgorithmType": "least-outstanding-requests"},
     "the algorithm"),
    ("aws:cloudwatch/logGroup:LogGroup", {"kmsKeyId": "alias/llm-service/staging"}, "kmsKeyId is an ARN"),
]


@pytest.mark.parametrize("typ,change,rule", BAD, ids=[f"{t.split(':')[-1]}-{r[:24]}" for t, _, r in BAD])
def test_each_rule_catches_the_value_aws_would_rewrite(staging, typ, change, rule):
    inputs = copy.deepcopy(staging.of_type(typ)[0].inputs)
    inputs.update(change)
    inputs = {k: v for k, v in inputs.items() if v is not None}
    assert any(why.startswith(rule) for why in resource_drift(typ, inputs))


def test_a_rate_rule_without_its_window_is_caught(staging):
    acl = copy.deepcopy(staging.one("aws:wafv2/webAcl:WebAcl").inputs)
    for r in acl["rules"]:
        r["statement"].get("rateBasedStatement", {}).pop("evaluationWindowSec", None)
    assert resource_drift("aws:wafv2/webAcl:WebAcl", acl) == ["every rate-based statement names its window"]


def test_the_ecr_key_rule_is_caught(staging):
    repo = copy.deepcopy(staging.one("aws:ecr/repository:Repository").inputs)
    repo["encryptionConfigurations"][0]["kmsKey"] = "mrk-0123"
    assert resource_drift("aws:ecr/repository:Repository", repo) == ["the KMS key is an ARN (ECR stores the ARN)"]
