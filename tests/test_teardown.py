"""`python -m ops.teardown` against moto: is prod ready for `pulumi destroy`, and what a
re-created prod adopts. The destroy's own effects (secrets scheduled for deletion, the key kept
or scheduled) are made through the same API calls the provider makes."""

from __future__ import annotations

import json
import shlex

import pytest
from botocore.exceptions import ClientError

from infra.config import load
from ops import teardown
from tests.conftest import with_changes
from tests.moto_server import at_boundary, own_client

STACK = "prod"
PREFIX = "llm-service/prod"
NAMES = ["openai-api-key", "client-keys", "cache-auth-token"]


def _deploy() -> dict:
    """What a prod up leaves that the commands look at: the VPC, the ALB, the key, the secrets."""
    ec2, elb, kms, sm = (own_client(s) for s in ("ec2", "elbv2", "kms", "secretsmanager"))
    vpc = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.30.{i * 16}.0/20", AvailabilityZone=f"us-east-1{c}")[
        "Subnet"]["SubnetId"] for i, c in enumerate("abc")]
    alb = elb.create_load_balancer(Name="alb-lb-1234567", Subnets=subnets)["LoadBalancers"][0]["LoadBalancerArn"]
    own_client("ecs").create_cluster(clusterName="llm-service-prod")
    key = kms.create_key(Description=f"{PREFIX}: secrets, logs, cache and alarm topic")["KeyMetadata"]
    arns = {n: sm.create_secret(Name=f"{PREFIX}/{n}", KmsKeyId=key["Arn"], SecretString=f"value of {n}")["ARN"]
            for n in NAMES}
    return {"vpc": vpc, "alb": alb, "key": key, "arns": arns}


@pytest.fixture
def deployed(account):
    return account("teardown", _deploy)


def _outputs(tmp_path, deployed, **changes):
    out = {"teardown": True, "albArn": deployed["alb"], "vpcId": deployed["vpc"],
           "clusterName": "llm-service-prod", "kmsKeyArn": deployed["key"]["Arn"], "region": "us-east-1",
           "cacheFinalSnapshot": "llm-service-prod-final-1a2b3c4d", **changes}
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(out))
    return path


def _deletion_protection(deployed, on: bool) -> None:
    own_client("elbv2").modify_load_balancer_attributes(
        LoadBalancerArn=deployed["alb"],
        Attributes=[{"Key": "deletion_protection.enabled", "Value": "true" if on else "false"}])


def _excluded_from_guardduty() -> None:
    """What the teardown `up` does to the cluster (cluster_tags in infra/program.py)."""
    ecs = own_client("ecs")
    arn = ecs.describe_clusters(clusters=["llm-service-prod"])["clusters"][0]["clusterArn"]
    ecs.tag_resource(resourceArn=arn, tags=[{"key": "GuardDutyManaged", "value": "false"}])


def _guardduty_endpoint(deployed) -> tuple[str, str]:
    """What GuardDuty's automated agent configuration adds to a VPC of monitored tasks."""
    ec2, vpc = own_client("ec2"), deployed["vpc"]
    tags = [{"Key": "GuardDutyManaged", "Value": "true"}]
    sg = ec2.create_security_group(GroupName=f"GuardDutyManagedSecurityGroup-{vpc}", Description="GuardDuty",
                                   VpcId=vpc, TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}])
    endpoint = ec2.create_vpc_endpoint(
        VpcId=vpc, ServiceName="com.amazonaws.us-east-1.guardduty-data", VpcEndpointType="Interface",
        SecurityGroupIds=[sg["GroupId"]], TagSpecifications=[{"ResourceType": "vpc-endpoint", "Tags": tags}])
    return endpoint["VpcEndpoint"]["VpcEndpointId"], sg["GroupId"]


def run(capsys, *argv, sleep=lambda s: None):
    code = teardown.main(list(argv), sleep=sleep)
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err


# --- ready ---------------------------------------------------------------------------------------

def test_ready_after_the_teardown_up_says_what_the_destroy_keeps(deployed, tmp_path, capsys):
    code, lines, err = run(capsys, "ready", "--stack", STACK, "--outputs", str(_outputs(tmp_path, deployed)))
    assert code == 0, err
    assert lines[:3] == ["PASS protection: the last `up` ran with teardown: true (nothing protected)",
                         "PASS alb: deletion protection off",
                         "PASS guardduty: no endpoint of GuardDuty's in the VPC"]
    assert lines[3].startswith("ready: `pulumi destroy --stack prod` can run; it keeps the KMS key "
                               f"{deployed['key']['Arn']} (not scheduled for deletion")
    assert "the secrets can be restored for 30 days" in lines[3]
    assert "the cache leaves the final snapshot llm-service-prod-final-1a2b3c4d" in lines[3]


def test_not_ready_while_the_last_up_kept_protection(deployed, tmp_path, capsys):
    code, lines, _ = run(capsys, "ready", "--stack", STACK, "--outputs",
                         str(_outputs(tmp_path, deployed, teardown=False)))
    assert code == 1
    assert lines[0].startswith("FAIL protection: the last `up` kept prod's protection: set llm-service:teardown")
    assert lines[-1] == "not ready: 1 of 3 checks failed; destroy would stop part-way"


def test_staging_needs_no_teardown_up(deployed, tmp_path, capsys):
    code, lines, _ = run(capsys, "ready", "--stack", "staging", "--outputs",
                         str(_outputs(tmp_path, deployed, teardown=False)))
    assert code == 0 and lines[0] == "PASS protection: nothing is protected in a staging stack"
    assert "schedules the KMS key" in lines[-1] and "the secrets are deleted at once" in lines[-1]


def test_not_ready_while_the_load_balancer_has_deletion_protection(deployed, tmp_path, capsys):
    _deletion_protection(deployed, True)
    code, lines, _ = run(capsys, "ready", "--stack", STACK, "--outputs", str(_outputs(tmp_path, deployed)))
    assert code == 1
    assert lines[1] == "FAIL alb: deletion protection is on: the teardown `up` has not run, or failed"


def test_guarddutys_own_endpoint_is_found_and_removed_only_when_asked(deployed, tmp_path, capsys):
    endpoint, sg = _guardduty_endpoint(deployed)
    outputs = str(_outputs(tmp_path, deployed))
    code, lines, _ = run(capsys, "ready", "--stack", STACK, "--outputs", outputs)
    assert code == 1
    assert lines[2].startswith(f"FAIL guardduty: GuardDuty added {endpoint}, {sg} to the VPC and never deletes")
    assert teardown.guardduty_leftovers(deployed["vpc"], "us-east-1") == ([endpoint], [sg]), "only asked"

    # Asked, but the cluster's tasks would still get GuardDuty's agent: it would add them back.
    code, lines, _ = run(capsys, "ready", "--stack", STACK, "--outputs", outputs, "--remove-guardduty-endpoint")
    assert code == 1 and "the cluster is not tagged GuardDutyManaged=false" in lines[2]
    assert teardown.guardduty_leftovers(deployed["vpc"], "us-east-1") == ([endpoint], [sg])

    _excluded_from_guardduty()
    code, lines, _ = run(capsys, "ready", "--stack", STACK, "--outputs", outputs, "--remove-guardduty-endpoint")
    assert code == 0 and lines[2] == f"PASS guardduty: removed {endpoint}, {sg}"
    assert teardown.guardduty_leftovers(deployed["vpc"], "us-east-1") == ([], [])


def test_the_guardduty_group_is_retried_while_the_endpoint_still_holds_it(deployed, tmp_path, capsys, mocker):
    """Injected (moto deletes an endpoint at once): EC2 refuses the group with DependencyViolation
    until the endpoint's network interfaces are gone."""
    endpoint, sg = _guardduty_endpoint(deployed)
    _excluded_from_guardduty()
    refusals = iter([True, True, False])

    def delete_group(real, **kw):
        if next(refusals):
            raise ClientError({"Error": {"Code": "DependencyViolation", "Message": "in use"}},
                              "DeleteSecurityGroup")
        return real(**kw)

    at_boundary(mocker, teardown, "ec2", "delete_security_group", delete_group)
    slept = []
    code, lines, _ = run(capsys, "ready", "--stack", STACK, "--outputs", str(_outputs(tmp_path, deployed)),
                         "--remove-guardduty-endpoint", sleep=slept.append)
    assert code == 0 and slept == [10, 10]
    assert teardown.guardduty_leftovers(deployed["vpc"], "us-east-1") == ([], [])


def test_an_outputs_file_without_what_ready_reads_cannot_start(deployed, tmp_path, capsys):
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({"albArn": deployed["alb"]}))
    code, lines, err = run(capsys, "ready", "--stack", STACK, "--outputs", str(path))
    assert code == 2 and lines == []
    assert err.strip() == (f"error: {path} has no output 'teardown'; run `pulumi stack output --json > "
                           f"{path}` after `pulumi up`")


# --- restore -------------------------------------------------------------------------------------

def _destroyed(deployed, key_kept: bool = True) -> None:
    """What `pulumi destroy` of prod does to these: DeleteSecret with the 30-day recovery window;
    the key kept (retain_on_delete) or, for a stack destroyed before it was, scheduled."""
    sm, kms = own_client("secretsmanager"), own_client("kms")
    for arn in deployed["arns"].values():
        sm.delete_secret(SecretId=arn, RecoveryWindowInDays=30)
    if not key_kept:
        kms.schedule_key_deletion(KeyId=deployed["key"]["KeyId"], PendingWindowInDays=30)


def _adopt_lines(lines):
    """The printed `pulumi config set --path` lines, as the config they set."""
    adopt = {}
    for line in lines:
        if line.startswith("pulumi config set") and "--path" in line:
            words = shlex.split(line)
            assert words[:6] == ["pulumi", "config", "set", "--stack", STACK, "--path"]
            adopt[words[6].removeprefix("llm-service:secrets.adopt.")] = words[7]
    return adopt


def test_restore_brings_back_the_secrets_with_their_values_and_prints_the_adoption(deployed, capsys):
    _destroyed(deployed)
    code, lines, err = run(capsys, "restore", "--stack", STACK)
    assert code == 0, err
    sm = own_client("secretsmanager")
    for name, arn in deployed["arns"].items():
        assert sm.get_secret_value(SecretId=arn)["SecretString"] == f"value of {name}"
    assert [x for x in lines if x.startswith("restored")] == [
        f"restored {PREFIX}/{n}: its value and versions are back" for n in NAMES]
    adopt = _adopt_lines(lines)
    assert adopt == {"key": deployed["key"]["KeyId"], **deployed["arns"]}
    # What the lines set is a config the contract accepts (tests/test_lifecycle.py shows the
    # program imports each id under its own parent, provider and protection).
    raw, keys = with_changes(STACK, secrets__adopt=adopt)
    assert dict(load(raw, keys).secrets.adopt) == adopt


def test_restore_turns_protection_back_on_when_the_stack_file_still_says_teardown(deployed, capsys, tmp_path):
    """`make destroy-ready` set teardown: true; a re-create with it would be unprotected."""
    from infra.stack_files import ROOT
    text = (ROOT / "Pulumi.prod.yaml").read_text()
    assert "llm-service:teardown: false" in text
    torn = text.replace("llm-service:teardown: false", "llm-service:teardown: true")
    (tmp_path / "Pulumi.prod.yaml").write_text(torn)
    _destroyed(deployed)
    assert teardown.restore(STACK, root=tmp_path, log=print) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "pulumi config set --stack prod llm-service:teardown false"
    _destroyed(deployed)  # and with the shipped file, no such line
    assert teardown.restore(STACK, log=print) == 0
    assert "teardown" not in capsys.readouterr().out


def test_restore_turns_protection_back_on_even_with_nothing_to_restore(aws, capsys, tmp_path):
    from infra.stack_files import ROOT
    text = (ROOT / "Pulumi.prod.yaml").read_text()
    torn = text.replace("llm-service:teardown: false", "llm-service:teardown: true")
    (tmp_path / "Pulumi.prod.yaml").write_text(torn)
    assert teardown.restore(STACK, root=tmp_path, log=print) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "pulumi config set --stack prod llm-service:teardown false"


def test_a_key_scheduled_for_deletion_is_saved_and_enabled(deployed, capsys):
    _destroyed(deployed, key_kept=False)
    code, lines, err = run(capsys, "restore", "--stack", STACK)
    assert code == 0, err
    key_id = deployed["key"]["KeyId"]
    assert f"cancelled the scheduled deletion of KMS key {key_id}" in lines
    assert f"enabled KMS key {key_id}" in lines
    assert own_client("kms").describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"


def test_a_secret_deleted_for_good_is_named_and_left_to_be_created(deployed, capsys):
    _destroyed(deployed)
    own_client("secretsmanager").delete_secret(SecretId=deployed["arns"]["openai-api-key"],
                                               ForceDeleteWithoutRecovery=True)
    code, lines, _ = run(capsys, "restore", "--stack", STACK)
    assert code == 0
    assert ("not found (created anew by `pulumi up`, then set as on a first deploy): openai-api-key") in lines
    assert set(_adopt_lines(lines)) == {"key", "client-keys", "cache-auth-token"}


def test_nothing_left_means_nothing_to_adopt(aws, capsys):
    code, lines, _ = run(capsys, "restore", "--stack", STACK)
    assert code == 0
    assert lines == ["nothing to restore: no secret under llm-service/prod/ exists; "
                     "`pulumi up --stack prod` creates everything anew"]


def test_secrets_under_different_keys_are_not_adopted_blindly(deployed, capsys):
    other = own_client("kms").create_key(Description="another")["KeyMetadata"]["Arn"]
    own_client("secretsmanager").update_secret(SecretId=deployed["arns"]["client-keys"], KmsKeyId=other)
    _destroyed(deployed)
    code, lines, err = run(capsys, "restore", "--stack", STACK)
    assert code == 1 and not [x for x in lines if x.startswith("pulumi config set")]
    assert err.startswith("error: the secrets are encrypted with different keys")


def test_the_stacks_secrets_are_found_across_pages_and_asked_for_by_name(deployed, mocker):
    """ListSecrets answers in pages (and, filtered, may answer a page short): every page is read.
    Asked one secret a page, with other stacks' secrets in the account, the three stack secrets
    take three pages (four calls: the last page says there is no more) and no other stack's page."""
    sm = own_client("secretsmanager")
    for other in ("llm-service/staging/openai-api-key", "another-app/prod/db-password"):
        sm.create_secret(Name=other, SecretString="not this stack's")
    calls = []

    def one_a_page(params, **_):
        params["MaxResults"] = 1
        calls.append(params.get("NextToken"))
    client = teardown._client("secretsmanager", "us-east-1")
    client.meta.events.register("provide-client-params.secrets-manager.ListSecrets", one_a_page)
    try:
        found = teardown.stack_secrets(STACK, load(*with_changes(STACK)), "us-east-1")
    finally:
        client.meta.events.unregister("provide-client-params.secrets-manager.ListSecrets", one_a_page)
    assert [(f.name, f.arn) for f in found] == [(n, deployed["arns"][n]) for n in NAMES]
    assert len(calls) <= len(NAMES) + 1 and calls[0] is None and all(calls[1:])
