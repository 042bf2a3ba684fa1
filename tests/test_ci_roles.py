"""`python -m ops.ci_roles`: the roles the workflows assume, checked against what the stacks
declare and what the workflows expect, and applied to moto's IAM."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from fnmatch import fnmatchcase

import boto3
import pytest

from infra.config import iam_path, load, secret_prefix
from infra.stack_files import ROOT
from ops import ci_roles, verify
from tests.conftest import with_changes
from tests.test_workflows import load as load_workflow

ACCOUNT = "123456789012"
REPO = "acme/llm-service"
BUCKET = "acme-pulumi-state"
KEY = "arn:aws:kms:us-east-1:123456789012:key/0b8a1f6e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


def plan(stack: str, cfg=None) -> ci_roles.Plan:
    p = ci_roles.make_plan(stack, REPO, ACCOUNT, BUCKET, KEY)
    return p if cfg is None else replace(p, cfg=cfg)


def allowed(policy: dict, action: str, resource: str) -> bool:
    """A small IAM evaluator: unconditional Allows, any matching Deny wins."""
    allow = False
    for st in policy["Statement"]:
        actions = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
        resources = [st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"]
        if not (any(fnmatchcase(action.lower(), a.lower()) for a in actions)
                and any(fnmatchcase(resource, r) for r in resources)):
            continue
        if st["Effect"] == "Deny":
            return False
        allow = allow or "Condition" not in st
    return allow


def secret(stack: str, name: str) -> str:
    return f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:{secret_prefix(stack)}/{name}-AbCdEf"


@pytest.fixture(scope="module", params=["staging", "prod"])
def pair(request):
    p = plan(request.param)
    return p, ci_roles.deploy_policy(p), ci_roles.read_policy(p)


# --- the deploy role can deploy what the stack declares, and no more ------------------------

def test_the_deploy_role_manages_every_service_the_stack_declares(stack):
    policy = ci_roles.deploy_policy(plan(stack.stack))
    for r in stack.resources:
        if not r.type.startswith("aws:"):
            continue
        module, kind = r.type.split(":")[1].split("/")
        if module in ("iam", "secretsmanager"):
            continue  # scoped; see the next tests
        prefix = ci_roles.SERVICES.get(f"{module}/{kind}") or ci_roles.SERVICES[module]
        assert allowed(policy, f"{prefix}:Create{kind}", f"arn:aws:{prefix}:us-east-1:{ACCOUNT}:x"), r.type


def test_iam_is_limited_to_the_stack_role_path(stack):
    policy = ci_roles.deploy_policy(plan(stack.stack))
    other = "prod" if stack.stack == "staging" else "staging"
    mine = f"arn:aws:iam::{ACCOUNT}:role{iam_path(stack.stack)}service-execution-0a1b2c3"
    assert allowed(policy, "iam:CreateRole", mine) and allowed(policy, "iam:PassRole", mine)
    assert not allowed(policy, "iam:PutRolePolicy", f"arn:aws:iam::{ACCOUNT}:role/admin")
    assert not allowed(policy, "iam:PutRolePolicy", f"arn:aws:iam::{ACCOUNT}:role{iam_path(other)}x")
    ci_role = f"arn:aws:iam::{ACCOUNT}:role{ci_roles.ROLE_PATH}llm-service-{stack.stack}-deploy"
    assert not allowed(policy, "iam:PutRolePolicy", ci_role)  # it cannot widen itself
    assert not allowed(policy, "iam:AttachRolePolicy", mine)  # managed policies are never attached
    # Every role the stack declares lives under that path.
    paths = {r.inputs.get("path") for r in stack.resources if r.type == "aws:iam/role:Role"}
    assert paths == {iam_path(stack.stack)}


def test_the_deploy_role_manages_secrets_but_never_reads_the_api_key(pair):
    p, deploy, _ = pair
    assert allowed(deploy, "secretsmanager:CreateSecret", secret(p.stack, "openai-api-key"))
    assert allowed(deploy, "secretsmanager:DescribeSecret", secret(p.stack, "openai-api-key"))
    assert not allowed(deploy, "secretsmanager:GetSecretValue", secret(p.stack, "openai-api-key"))
    # Pulumi writes the cache token itself and reads it back on refresh.
    assert allowed(deploy, "secretsmanager:GetSecretValue", secret(p.stack, "cache-auth-token"))
    other = "prod" if p.stack == "staging" else "staging"
    assert not allowed(deploy, "secretsmanager:DeleteSecret", secret(other, "openai-api-key"))


def test_with_pulumi_managed_keys_both_roles_may_read_them_back():
    raw, keys = with_changes("staging", secrets__source="pulumi")
    raw["llm-service:openai-api-key"] = "sk-proj-" + "x" * 40
    cfg = load(raw, keys | {"llm-service:openai-api-key"})
    p = plan("staging", cfg)
    for policy in (ci_roles.deploy_policy(p), ci_roles.read_policy(p)):
        assert allowed(policy, "secretsmanager:GetSecretValue", secret("staging", "openai-api-key"))
        # The cache's token is still Pulumi's too, whatever writes the key.
        assert allowed(policy, "secretsmanager:GetSecretValue", secret("staging", "cache-auth-token"))


def test_the_deploy_role_may_run_every_verify_call(pair):
    p, deploy, _ = pair
    for action in verify.IAM_ACTIONS:
        if action == "sts:GetCallerIdentity":
            continue  # needs no permission
        resource = secret(p.stack, "openai-api-key") if action.startswith("secretsmanager:") else \
            f"arn:aws:{action.split(':')[0]}:us-east-1:{ACCOUNT}:x"
        assert allowed(deploy, action, resource), action


def test_the_state_bucket_and_secrets_provider_key_are_used_not_changed(pair):
    _, deploy, read = pair
    state = f"arn:aws:s3:::{BUCKET}/.pulumi/stacks/llm-service/staging.json"
    assert allowed(deploy, "s3:PutObject", state) and allowed(deploy, "kms:Decrypt", KEY)
    assert not allowed(deploy, "s3:DeleteBucket", f"arn:aws:s3:::{BUCKET}")
    assert not allowed(deploy, "s3:PutBucketPolicy", f"arn:aws:s3:::{BUCKET}")
    assert not allowed(deploy, "kms:ScheduleKeyDeletion", KEY)
    # The read-only role reads the state and may only write lock files.
    assert allowed(read, "s3:GetObject", state) and allowed(read, "kms:Decrypt", KEY)
    assert not allowed(read, "s3:PutObject", state)
    assert allowed(read, "s3:PutObject", f"arn:aws:s3:::{BUCKET}/.pulumi/locks/llm-service/staging/x.json")


def test_route53_only_for_the_configured_zone():
    cfg = load(*with_changes("staging", loadBalancer__domainName="api.example.com",
                             loadBalancer__hostedZoneId="Z0123456789ABC"))
    policy = ci_roles.deploy_policy(plan("staging", cfg))
    assert allowed(policy, "route53:ChangeResourceRecordSets", "arn:aws:route53:::hostedzone/Z0123456789ABC")
    assert not allowed(policy, "route53:ChangeResourceRecordSets", "arn:aws:route53:::hostedzone/ZOTHER")
    assert not any(s["Sid"] == "DnsZone" for s in ci_roles.deploy_policy(plan("staging"))["Statement"])
    _valid_grammar(policy)


STATEMENT_KEYS = {"Sid", "Effect", "Action", "Resource", "Condition"}  # all these policies use


def _valid_grammar(policy: dict) -> None:
    """What IAM's parser refuses (MalformedPolicyDocument): another version, an unknown or
    mis-cased key, a Sid of other than letters and digits, two statements with one Sid."""
    assert set(policy) == {"Version", "Statement"} and policy["Version"] == "2012-10-17"
    sids = [s["Sid"] for s in policy["Statement"]]
    assert len(set(sids)) == len(sids) and all(sid.isalnum() for sid in sids)
    for statement in policy["Statement"]:
        assert set(statement) <= STATEMENT_KEYS and {"Effect", "Action", "Resource"} <= set(statement), statement
        assert statement["Effect"] in ("Allow", "Deny")


def test_inline_policies_fit_iam_limits(pair):
    _, deploy, read = pair
    _valid_grammar(deploy)
    _valid_grammar(read)
    # IAM counts a role's inline policies without whitespace, up to 10,240 characters.
    assert len(json.dumps(deploy, separators=(",", ":"))) + len(json.dumps(read, separators=(",", ":"))) < 10240


# --- each role trusts exactly the environment the workflows run it in -----------------------

def test_trust_names_the_environments_the_workflows_use():
    deploy = load_workflow("deploy.yml")["jobs"]
    drift = {m["stack"]: m["environment"] for m in
             load_workflow("drift.yml")["jobs"]["drift"]["strategy"]["matrix"]["include"]}
    preview = load_workflow("pull-request.yml")["jobs"]["preview"]["environment"]["name"]
    for stack in ("staging", "prod"):
        p = plan(stack)
        assert deploy[stack]["with"]["environment"] == p.deploy_environment
        assert deploy[stack]["with"]["read-environment"] == p.read_environment
        assert drift[stack] == p.read_environment
        subjects = {r.environment: r.trust["Statement"][0]["Condition"]["StringEquals"]
                    for r in ci_roles.roles(p)}
        assert subjects[p.deploy_environment]["token.actions.githubusercontent.com:sub"] == \
            f"repo:{REPO}:environment:{p.deploy_environment}"
        assert subjects[p.read_environment]["token.actions.githubusercontent.com:aud"] == "sts.amazonaws.com"
    assert preview == plan("staging").read_environment


def test_the_deploy_job_asks_for_the_session_the_deploy_role_allows():
    job = load_workflow("deploy-stack.yml")["jobs"]["deploy"]
    [aws] = [s for s in job["steps"] if s.get("uses", "").startswith("aws-actions/configure-aws-credentials@")]
    [deploy_role] = [r for r in ci_roles.roles(plan("prod")) if r.name.endswith("-deploy")]
    assert aws["with"]["role-duration-seconds"] == deploy_role.max_session_seconds
    assert job["timeout-minutes"] * 60 <= deploy_role.max_session_seconds


# --- apply, against moto's IAM ----------------------------------------------------------------

def test_apply_creates_the_provider_and_both_roles_then_updates_them(aws, capsys, monkeypatch):
    # moto knows AWS's managed policies (ReadOnlyAccess) only when asked; its IAM reads this on first use.
    monkeypatch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
    argv = ["apply", "--stack", "prod", "--repo", REPO, "--state-bucket", BUCKET, "--secrets-key-arn", KEY]
    assert ci_roles.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    provider = f"arn:aws:iam::{ACCOUNT}:oidc-provider/token.actions.githubusercontent.com"
    deploy_arn = f"arn:aws:iam::{ACCOUNT}:role/llm-service-ci/llm-service-prod-deploy"
    read_arn = f"arn:aws:iam::{ACCOUNT}:role/llm-service-ci/llm-service-prod-read"
    assert lines == [
        f"created the GitHub OIDC provider {provider}",
        f"created {deploy_arn}; set AWS_ROLE_ARN={deploy_arn} in the GitHub environment production",
        f"created {read_arn}; set AWS_ROLE_ARN={read_arn} in the GitHub environment production-read",
    ]
    iam = boto3.client("iam", region_name="us-east-1")
    oidc = iam.get_open_id_connect_provider(OpenIDConnectProviderArn=provider)
    assert oidc["ClientIDList"] == ["sts.amazonaws.com"]
    role = iam.get_role(RoleName="llm-service-prod-deploy")["Role"]
    assert role["MaxSessionDuration"] == 7200
    assert role["Description"] == f"GitHub Actions, environment production of {REPO}", "what the console shows"
    p = plan("prod")
    assert role["AssumeRolePolicyDocument"] == ci_roles.trust_policy(p, "production")
    inline = iam.get_role_policy(RoleName="llm-service-prod-deploy", PolicyName="llm-service")["PolicyDocument"]
    assert inline == ci_roles.deploy_policy(p)
    attached = iam.list_attached_role_policies(RoleName="llm-service-prod-read")["AttachedPolicies"]
    assert [a["PolicyArn"] for a in attached] == [ci_roles.READ_ONLY_POLICY]
    assert iam.list_attached_role_policies(RoleName="llm-service-prod-deploy")["AttachedPolicies"] == []

    # Again, for a renamed repository: nothing duplicated, the trust follows.
    assert ci_roles.main([*argv[:4], "acme/llm-platform", *argv[5:]]) == 0
    again = capsys.readouterr().out.splitlines()
    assert again[0] == f"GitHub OIDC provider present: {provider}"
    assert again[1].startswith(f"updated {deploy_arn}")
    trust = iam.get_role(RoleName="llm-service-prod-read")["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Condition"]["StringEquals"]["token.actions.githubusercontent.com:sub"] == \
        "repo:acme/llm-platform:environment:production-read"
    assert len(iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]) == 1


@pytest.mark.parametrize("argv, message", [
    (["--repo", "not a repo"], "error: --repo: got 'not a repo'; expected OWNER/REPO as on GitHub"),
    (["--repo", REPO, "--secrets-key-arn", "alias/pulumi"],
     "error: --secrets-key-arn: got 'alias/pulumi'; expected a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID), "
     "not an alias"),
])
def test_bad_input_is_one_line(argv, message, capsys):
    assert ci_roles.main(["show", "--stack", "staging", "--account", ACCOUNT, *argv]) == 2
    assert capsys.readouterr().err.splitlines() == [message]


def test_show_writes_nothing_and_needs_no_credentials(capsys, monkeypatch):
    monkeypatch.setattr(ci_roles, "_client", lambda *a: pytest.fail("show called AWS"))
    assert ci_roles.main(["show", "--stack", "staging", "--repo", REPO, "--account", ACCOUNT]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert sorted(shown) == ["llm-service-staging-deploy", "llm-service-staging-read"]
    assert shown["llm-service-staging-read"]["managed"] == [ci_roles.READ_ONLY_POLICY]


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_the_roles_shown_are_the_reviewed_ones(stack, capsys):
    """Every action, resource and condition of both roles, as `show` prints them for review, line for
    line: a grant added, dropped or widened shows in the golden file's diff (UPDATE_GOLDEN=1
    rewrites it after a deliberate change)."""
    assert ci_roles.main(["show", "--stack", stack, "--repo", REPO, "--account", ACCOUNT,
                          "--state-bucket", BUCKET, "--secrets-key-arn", KEY]) == 0
    shown = capsys.readouterr().out
    golden = ROOT / "tests" / "golden" / f"ci-roles-{stack}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(shown)
    assert shown == golden.read_text()


def test_every_conditional_grant_carries_exactly_its_condition(pair):
    """The evaluator above counts a conditional Allow as no grant, so each condition is asserted
    here, one key at a time: without it the statement grants its actions on every resource."""
    p, deploy, read = pair
    by_sid = {s["Sid"]: s for s in deploy["Statement"]}
    linked = by_sid["ServiceLinkedRoles"]
    assert linked["Action"] == "iam:CreateServiceLinkedRole" and linked["Resource"] == "*"
    assert linked["Condition"] == {"StringEquals": {"iam:AWSServiceName": [
        "ecs.amazonaws.com", "elasticache.amazonaws.com", "elasticloadbalancing.amazonaws.com",
        "ecs.application-autoscaling.amazonaws.com", "wafv2.amazonaws.com"]}}
    for policy in (deploy, read):
        decrypt = {s["Sid"]: s for s in policy["Statement"]}["ManagedSecretDecrypt"]
        assert decrypt["Action"] == ["kms:Decrypt"] and decrypt["Resource"] == "*"
        assert decrypt["Condition"]["StringEquals"] == {"kms:ViaService": "secretsmanager.us-east-1.amazonaws.com"}
        assert decrypt["Condition"]["StringLike"] == {
            "kms:EncryptionContext:SecretARN": [f"{p.secret_arn}cache-auth-token-*"]}
    conditional = {s["Sid"] for policy in (deploy, read) for s in policy["Statement"] if "Condition" in s}
    assert conditional == {"ServiceLinkedRoles", "ManagedSecretDecrypt"}


def test_each_role_is_assumable_only_by_its_own_environment_of_this_repository(pair):
    p, _, _ = pair
    for role in ci_roles.roles(p):
        (statement,) = role.trust["Statement"]
        assert statement["Principal"] == {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/"
                                                       "token.actions.githubusercontent.com"}
        assert statement["Action"] == "sts:AssumeRoleWithWebIdentity" and statement["Effect"] == "Allow"
        assert statement["Condition"] == {"StringEquals": {
            "token.actions.githubusercontent.com:aud": "sts.amazonaws.com",
            "token.actions.githubusercontent.com:sub": f"repo:{REPO}:environment:{role.environment}"}}
    assert {r.environment for r in ci_roles.roles(p)} == {p.deploy_environment, p.read_environment}
