"""What a stack's later life depends on, as each stack declares it: the service created after its
subnets can reach out, prod's protection and its lifting for a teardown, what a destroy leaves
behind (prod's key) and empties (the repository, the log bucket), and a re-create adopting the
restored key and secrets."""

from __future__ import annotations

import json

import pytest

from infra.config import ConfigError, load
from tests.conftest import policy, with_changes

SVC = "aws:ecs/service:Service"
# tests/test_normal_form.py synthesizes the same variant: one synthesis for both.
GUARDDUTY_VARIANT = {"llm__orgId": "org-0123456789abcdef", "llm__projectId": "proj_0123456789abcdef",
                     "network__guardDutyEndpoint": True}
ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"
KEY_ID = "0a1b2c3d-4e5f-4789-abcd-ef0123456789"
ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:llm-service/prod/{}-AbC123"
ADOPT = {"key": KEY_ID, **{n: ARN.format(n) for n in ("openai-api-key", "client-keys", "cache-auth-token")}}


def test_the_service_is_created_after_every_way_out_of_its_subnets(stack):
    """A new AZ's first tasks pull the image and read secrets through the NAT route (or the
    endpoints): ECS must not start them before those exist."""
    deps = set(stack.one(SVC).depends_on)
    egress = {r.name for r in stack.of_type("aws:ec2/route:Route") if r.name.startswith("network-private-")}
    egress |= {r.name for r in stack.of_type("aws:ec2/routeTableAssociation:RouteTableAssociation")
               if r.name.startswith("network-private-")}
    egress |= {r.name for r in stack.of_type(ENDPOINT)}
    assert len(egress) >= 2 * 2 + 1 and egress <= deps
    nat_routes = [r for r in stack.of_type("aws:ec2/route:Route") if r.inputs.get("natGatewayId")]
    assert {r.name for r in nat_routes} <= deps, "each private route names its NAT: created after it"


def test_prod_protects_what_cannot_come_back_and_staging_nothing(staging, prod):
    protected = lambda s: {r.type for r in s.resources if r.protect}  # noqa: E731
    assert protected(staging) == set()
    assert protected(prod) == {
        "aws:kms/key:Key", "aws:secretsmanager/secret:Secret",
        "aws:elasticache/replicationGroup:ReplicationGroup", "aws:ecr/repository:Repository",
        "aws:ecs/cluster:Cluster", "aws:ecs/service:Service"}
    assert not prod.one("aws:ecs/taskDefinition:TaskDefinition").protect, "replaced on every image change"
    assert prod.one("aws:lb/loadBalancer:LoadBalancer").inputs["enableDeletionProtection"] is True


def test_teardown_lifts_every_protection_in_one_up(synth, prod):
    s = synth("prod", teardown=True)
    assert [r.name for r in s.resources if r.protect] == []
    # ...and keeps GuardDuty from adding its agent (and endpoint) for new tasks meanwhile.
    assert s.one("aws:ecs/cluster:Cluster").inputs["tags"] == {"GuardDutyManaged": "false"}
    assert "tags" not in prod.one("aws:ecs/cluster:Cluster").inputs
    assert s.one("aws:lb/loadBalancer:LoadBalancer").inputs["enableDeletionProtection"] is False
    assert s.one("aws:kms/key:Key").retain_on_delete, "the key still outlives the destroy"


def test_a_destroy_empties_the_repository_and_the_log_bucket_once_protection_is_lifted(staging, prod, synth):
    """DeleteRepository refuses a repository with images, DeleteBucket a bucket with objects
    (every version, in a versioned one). Staging's are emptied on destroy; prod's only in the
    teardown `up`, so that in its normal life no replacement can delete its logs or images."""
    def forced(s):
        return (s.one("aws:ecr/repository:Repository").inputs["forceDelete"],
                s.one("aws:s3/bucket:Bucket").inputs["forceDestroy"])
    assert forced(staging) == (True, True)
    assert forced(prod) == (False, False)
    assert forced(synth("prod", teardown=True)) == (True, True)


def test_prods_key_outlives_a_destroy_and_stagings_does_not(staging, prod):
    """Prod's secrets stay restorable for 30 days and its final cache snapshot readable only
    while the key that encrypts them is not deleted."""
    assert prod.one("aws:kms/key:Key").retain_on_delete is True
    assert staging.one("aws:kms/key:Key").retain_on_delete is False
    assert [r.name for r in prod.resources if r.retain_on_delete] == ["secrets-key"]


def test_a_recreated_stack_imports_the_restored_key_and_secrets_under_its_own_parents(synth, prod):
    s = synth("prod", secrets__adopt=ADOPT)
    imported = {r.name: r.import_id for r in s.resources if r.import_id}
    assert imported == {"secrets-key": KEY_ID, "secrets-openai-api-key": ARN.format("openai-api-key"),
                        "secrets-client-keys": ARN.format("client-keys"),
                        "secrets-cache-auth-token": ARN.format("cache-auth-token")}
    # The same resources, parents and provider as a first up: the URNs the program declares.
    for name in imported:
        (adopted,) = [r for r in s.resources if r.name == name]
        first = prod.one(adopted.type, name)
        assert (adopted.parent, adopted.provider, adopted.protect) == (first.parent, first.provider, True)
    assert not [r for r in prod.resources if r.import_id]


@pytest.mark.parametrize("adopt,key,words", [
    ({"keys": KEY_ID}, "llm-service:secrets.adopt.keys", "not the key or a secret of this stack"),
    ({"key": "alias/llm-service/prod"}, "llm-service:secrets.adopt.key", "a KMS key id"),
    ({"client-keys": "llm-service/prod/client-keys"}, "llm-service:secrets.adopt.client-keys",
     "the secret's full ARN"),
])
def test_what_cannot_be_adopted_is_refused_naming_the_key(adopt, key, words):
    with pytest.raises(ConfigError) as e:
        load(*with_changes("prod", secrets__adopt=adopt))
    assert str(e.value).startswith(f"{key}: got ") and words in str(e.value)


def test_guardduty_endpoint_when_asked_in_the_private_subnets_before_the_service(synth, staging):
    assert "guardduty" not in json.dumps([r.inputs for r in staging.of_type(ENDPOINT)])
    s = synth("staging", **GUARDDUTY_VARIANT)
    (gd,) = [r for r in s.of_type(ENDPOINT) if r.inputs["serviceName"].endswith(".guardduty-data")]
    assert gd.inputs["serviceName"] == "com.amazonaws.us-east-1.guardduty-data"
    assert gd.inputs["vpcEndpointType"] == "Interface" and gd.inputs["privateDnsEnabled"] is True
    assert gd.inputs["subnetIds"] == s.outputs["privateSubnetIds"]
    assert gd.name in s.one(SVC).depends_on


def test_the_execution_role_may_pull_guarddutys_agent_and_nothing_else_of_it(stack):
    """Where Runtime Monitoring is on, ECS adds GuardDuty's sidecar to every task and pulls it
    with the execution role; without the right the task runs unmonitored, silently."""
    statements = {s["Sid"]: s for s in policy(stack.one("aws:iam/rolePolicy:RolePolicy",
                                                        "service-execution-runtime"))["Statement"]}
    agent = statements["PullGuardDutyAgent"]
    assert agent["Resource"] == "arn:aws:ecr:us-east-1:593207742271:repository/aws-guardduty-agent-fargate"
    assert agent["Action"] == ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer",
                               "ecr:BatchGetImage"]
    assert statements["EcrLogin"]["Action"] == "ecr:GetAuthorizationToken"
