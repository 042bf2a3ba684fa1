"""The policy pack: each policy sees a bad resource and reports it, a good one and stays quiet;
both real stacks pass every policy; the plan fails on a mandatory violation."""

from __future__ import annotations

import copy
import json
import re

import pytest

from offline import plan
from offline.policy_check import check, levels_for
from offline.synth import Declared, Synthesis
from policy.policies import POLICIES

NAMES = {p.name for p in POLICIES}


def _one(typ: str, inputs: dict, stack: str = "staging") -> list:
    return check(Synthesis(stack, [Declared(typ, "r", True, inputs=inputs)], {}, set()))


def _hits(typ, inputs, stack="staging"):
    return {v.policy for v in _one(typ, inputs, stack)}


TD = "aws:ecs/taskDefinition:TaskDefinition"
SG = "aws:ec2/securityGroup:SecurityGroup"
ENCRYPTED_CACHE = {"atRestEncryptionEnabled": True, "kmsKeyId": "k", "transitEncryptionEnabled": True}
GOOD_CONTAINER = {"name": "app", "readonlyRootFilesystem": True, "privileged": False, "user": "1000",
                  "environment": [{"name": "CACHE_HOST", "value": "h"}],
                  "secrets": [{"name": "OPENAI_API_KEY", "valueFrom": "arn:..."}]}


def _td(**changes):
    c = {**GOOD_CONTAINER, **changes}
    return {"containerDefinitions": json.dumps([c])}


CASES = [
    # (policy, type, bad inputs, good inputs)
    ("cache-encrypted", "aws:elasticache/replicationGroup:ReplicationGroup",
     {"atRestEncryptionEnabled": True, "kmsKeyId": "k", "transitEncryptionEnabled": False},
     {"atRestEncryptionEnabled": True, "kmsKeyId": "k", "transitEncryptionEnabled": True}),
    ("secrets-customer-key", "aws:secretsmanager/secret:Secret", {"name": "s"}, {"kmsKeyId": "k"}),
    ("log-groups-encrypted-retained", "aws:cloudwatch/logGroup:LogGroup", {"kmsKeyId": "k"},
     {"kmsKeyId": "k", "retentionInDays": 30}),
    ("s3-default-encryption",
     "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
     {"rules": [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "none"}}]},
     {"rules": [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}}]}),
    ("sns-encrypted", "aws:sns/topic:Topic", {}, {"kmsMasterKeyId": "k"}),
    ("ecr-hardened", "aws:ecr/repository:Repository",
     {"imageTagMutability": "MUTABLE", "encryptionConfigurations": [{"encryptionType": "KMS"}],
      "imageScanningConfiguration": {"scanOnPush": True}},
     {"imageTagMutability": "IMMUTABLE", "encryptionConfigurations": [{"encryptionType": "KMS"}],
      "imageScanningConfiguration": {"scanOnPush": True}}),
    ("kms-rotation", "aws:kms/key:Key", {"enableKeyRotation": False}, {"enableKeyRotation": True}),
    ("https-tls13-and-http-redirect-only", "aws:lb/listener:Listener",
     {"protocol": "HTTPS", "sslPolicy": "ELBSecurityPolicy-2016-08"},
     {"protocol": "HTTPS", "sslPolicy": "ELBSecurityPolicy-TLS13-1-2-2021-06"}),
    ("https-tls13-and-http-redirect-only", "aws:lb/listener:Listener",
     {"protocol": "HTTP", "defaultActions": [{"type": "forward", "targetGroupArn": "tg"}]},
     {"protocol": "HTTP", "defaultActions": [{"type": "redirect", "redirect": {"protocol": "HTTPS"}}]}),
    ("no-world-ingress-rule", "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
     {"cidrIpv4": "0.0.0.0/0", "fromPort": 22, "toPort": 22},
     {"cidrIpv4": "0.0.0.0/0", "fromPort": 443, "toPort": 443}),
    ("no-world-ingress-rule", "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
     {"cidrIpv6": "::/0", "fromPort": 0, "toPort": 65535},
     {"referencedSecurityGroupId": "sg-1", "fromPort": 8080, "toPort": 8080}),
    ("no-world-ingress-inline", "aws:ec2/securityGroup:SecurityGroup",
     {"ingress": [{"cidrBlocks": ["0.0.0.0/0"], "fromPort": 6379, "toPort": 6379}]}, {"ingress": []}),
    ("tasks-without-public-ip", "aws:ecs/service:Service",
     {"networkConfiguration": {"assignPublicIp": True}},
     {"networkConfiguration": {"assignPublicIp": False}}),
    ("task-definition-hardened", TD, _td(privileged=True), _td()),
    ("task-definition-hardened", TD, _td(readonlyRootFilesystem=False), _td()),
    ("task-definition-hardened", TD, _td(user="root"), _td()),
    ("task-definition-hardened", TD, _td(environment=[{"name": "OPENAI_API_KEY", "value": "x"}]), _td()),
    ("task-definition-hardened", TD, _td(environment=[{"name": "CACHE_AUTH_TOKEN", "value": "x"}]),
     _td(environment=[{"name": "GATEWAY_OUTPUT_TOKENS_ESTIMATE", "value": "1000"}])),
    ("task-definition-hardened", TD,
     _td(environment=[{"name": "SETTING", "value": "sk-proj-abcdefghijklmnopqrstuv"}]), _td()),
    ("iam-no-admin-role-policy", "aws:iam/rolePolicy:RolePolicy",
     {"policy": json.dumps({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})},
     {"policy": json.dumps({"Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                                           "Resource": "arn:aws:s3:::b/*"}]})}),
    ("iam-no-admin-policy", "aws:iam/policy:Policy",
     {"policy": {"Statement": [{"Effect": "Allow", "Action": ["*"], "Resource": ["*"]}]}},
     {"policy": {"Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}]}}),
    # AWS's character sets and lengths: one bad case per kind of rule.
    ("aws-names-and-text", SG, {"description": "Cache: in from its clients' groups only"},
     {"description": "Cache: in from the client groups only (each client adds its rule)"}),
    ("aws-names-and-text", SG, {"description": "x" * 256}, {"description": "x" * 255}),
    ("aws-names-and-text", SG, {"name": "sg-tasks"}, {"name": "tasks-sg"}),
    ("aws-names-and-text", "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
     {"description": "the service's tasks"}, {"description": "from the service tasks"}),
    ("aws-names-and-text", "aws:lb/loadBalancer:LoadBalancer", {"name": "internal-api"}, {"name": "api-lb"}),
    ("aws-names-and-text", "aws:lb/targetGroup:TargetGroup", {"name": "t" * 33}, {"name": "t" * 32}),
    ("aws-names-and-text", "aws:elasticache/replicationGroup:ReplicationGroup",
     {"replicationGroupId": "llm--staging", **ENCRYPTED_CACHE},
     {"replicationGroupId": "llm-staging", **ENCRYPTED_CACHE}),
    ("aws-names-and-text", "aws:elasticache/replicationGroup:ReplicationGroup",
     {"replicationGroupId": "llm-service-staging-with-a-long-name-0123", **ENCRYPTED_CACHE},
     {"replicationGroupId": "llm-service-staging-with-a-long-name-012", **ENCRYPTED_CACHE}),
    ("aws-names-and-text", "aws:wafv2/webAcl:WebAcl",
     {"name": "acl", "rules": [{"name": "rate limit", "visibilityConfig": {"metricName": "rate"}}]},
     {"name": "acl", "rules": [{"name": "rate-limit", "visibilityConfig": {"metricName": "rate"}}]}),
    ("aws-names-and-text", "aws:kms/alias:Alias", {"name": "alias/aws/mine"}, {"name": "alias/llm/staging"}),
    ("aws-names-and-text", "aws:budgets/budget:Budget", {"name": "llm:staging"}, {"name": "llm-staging"}),
    ("aws-names-and-text", "aws:ec2/subnet:Subnet", {"tags": {"Owner": "team (ops)"}},
     {"tags": {"Owner": "team-ops"}}),
    ("aws-names-and-text", "aws:ec2/subnet:Subnet", {"tags": {"aws:owner": "ops"}}, {"tags": {"owner": "ops"}}),
    ("aws-names-and-text", "pulumi:providers:aws",
     {"defaultTags": json.dumps({"tags": {"CostCenter": "x" * 257}})},
     {"defaultTags": json.dumps({"tags": {"CostCenter": "x" * 256}})}),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_policy_flags_bad_and_passes_good(case):
    name, typ, bad, good = case
    assert name in NAMES
    assert name in _hits(typ, bad), f"{name} missed a bad {typ}"
    assert _hits(typ, good) == set(), f"{name} flagged a good {typ}"


def test_every_resource_policy_has_a_case():
    resource_policies = {p.name for p in POLICIES if not p.name.startswith("prod-")}
    assert resource_policies == {c[0] for c in CASES}


PROD = "prod-availability"
PROTECTION = "prod-alb-deletion-protection"


def test_prod_load_balancers_need_deletion_protection_unless_a_teardown_disables_the_policy():
    lb, bad, good = "aws:lb/loadBalancer:LoadBalancer", {"enableDeletionProtection": False}, {
        "enableDeletionProtection": True}
    assert PROTECTION in _hits(lb, bad, stack="prod")
    assert PROTECTION not in _hits(lb, good, stack="prod")
    assert PROTECTION not in _hits(lb, bad, stack="staging")
    # policy/teardown.json, as `make destroy-ready` passes it: that policy alone is off.
    assert levels_for(True) == {PROTECTION: "disabled"} and levels_for(False) == {}


def test_a_teardown_up_of_prod_passes_every_policy_with_the_teardown_config_only(synth):
    s = synth("prod", teardown=True)
    assert check(s, levels=levels_for(True)) == []
    assert {(v.policy, v.resource) for v in check(s)} == {(PROTECTION, "aws:lb/loadBalancer:LoadBalancer alb-lb")}


def test_a_policy_made_advisory_by_config_reports_without_failing(prod):
    broken = copy.deepcopy(prod)
    broken.one("aws:kms/key:Key").inputs["enableKeyRotation"] = False
    (v,) = check(broken, levels={"kms-rotation": "advisory"})
    assert (v.policy, v.mandatory) == ("kms-rotation", False)


@pytest.mark.parametrize("typ,bad,good", [
    ("aws:elasticache/replicationGroup:ReplicationGroup",
     {"multiAzEnabled": True, "automaticFailoverEnabled": False, "atRestEncryptionEnabled": True,
      "kmsKeyId": "k", "transitEncryptionEnabled": True},
     {"multiAzEnabled": True, "automaticFailoverEnabled": True, "atRestEncryptionEnabled": True,
      "kmsKeyId": "k", "transitEncryptionEnabled": True}),
    ("aws:ecs/service:Service", {"networkConfiguration": {"subnets": ["a", "b"]}},
     {"networkConfiguration": {"subnets": ["a", "b", "c"]}}),
])
def test_prod_policy_reads_the_stack_name(typ, bad, good):
    assert PROD in _hits(typ, bad, stack="prod")
    assert PROD not in _hits(typ, good, stack="prod")
    assert PROD not in _hits(typ, bad, stack="staging"), "staging may run without these"


def test_both_stacks_pass_every_policy(stack):
    assert check(stack) == []


def test_policies_see_a_real_regression(prod):
    broken = copy.deepcopy(prod)
    svc = broken.one("aws:ecs/service:Service")
    svc.inputs["networkConfiguration"]["assignPublicIp"] = True
    lb = broken.one("aws:lb/loadBalancer:LoadBalancer")
    lb.inputs["enableDeletionProtection"] = False
    found = {(v.policy, v.resource) for v in check(broken)}
    assert found == {("tasks-without-public-ip", "aws:ecs/service:Service service-service"),
                     (PROTECTION, "aws:lb/loadBalancer:LoadBalancer alb-lb")}


def test_plan_exits_3_on_a_mandatory_violation(mocker, prod, capsys):
    broken = copy.deepcopy(prod)
    broken.one("aws:kms/key:Key").inputs["enableKeyRotation"] = False
    mocker.patch("offline.plan.synthesize", return_value=broken)
    assert plan.main(["--stack", "prod"]) == 3
    err = capsys.readouterr().err
    assert "policy violation [mandatory] kms-rotation: aws:kms/key:Key secrets-key: KMS keys must rotate" in err


def test_plan_reports_policies_passed(capsys):
    assert plan.main(["--stack", "staging"]) == 0
    out = capsys.readouterr().out.rstrip().splitlines()
    assert re.fullmatch(r"policies: \d+ ran, all passed", out[-2]), out[-2]
