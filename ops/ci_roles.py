"""The AWS roles the GitHub workflows assume by OIDC: one deploy role and one read-only role per stack.

    python -m ops.ci_roles show  --stack staging --repo OWNER/REPO --state-bucket BUCKET \\
        --secrets-key-arn arn:aws:kms:...:key/...      # the policies as JSON, nothing written
    python -m ops.ci_roles apply --stack staging --repo OWNER/REPO --state-bucket BUCKET \\
        --secrets-key-arn arn:aws:kms:...:key/...      # create or update them in this account

Each role trusts exactly one GitHub environment of one repository (the `sub` claim
`repo:OWNER/REPO:environment:NAME`), so only a job running in that environment, with its branch
rules and reviewers, can assume it:

| stack   | deploy role (environment)              | read-only role (environment)                  |
|---------|----------------------------------------|-----------------------------------------------|
| staging | llm-service-staging-deploy (staging)   | llm-service-staging-read (staging-read)       |
| prod    | llm-service-prod-deploy (production)   | llm-service-prod-read (production-read)       |

The deploy role may manage the AWS services the stack declares; IAM only under the stack's role
path (`/llm-service/<stack>/`), Secrets Manager only under `llm-service/<stack>/`, and it never
reads the LLM API key. The read-only role (preview, drift) gets AWS's ReadOnlyAccess plus what
`pulumi preview --refresh` needs: the state, the lock files, and the secrets Pulumi manages.
`apply` also creates the account's GitHub OIDC provider if it is missing. Exit 2 on bad input or
missing credentials, one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from typing import Any, Optional

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from infra.config import ConfigError, StackConfig, error_lines, iam_path, load, physical_prefix, secret_prefix
from infra.stack_files import ROOT, read_stack_file
from ops.boto import client as _client

OIDC_HOST = "token.actions.githubusercontent.com"
AUDIENCE = "sts.amazonaws.com"
ROLE_PATH = "/llm-service-ci/"  # outside every stack's role path, so no deploy role can edit these
READ_ONLY_POLICY = "arn:aws:iam::aws:policy/ReadOnlyAccess"
# The GitHub environment that deploys each stack (see .github/workflows/deploy.yml).
DEPLOY_ENVIRONMENTS = {"staging": "staging", "prod": "production"}
# IAM prefixes of the services the stack declares, by pulumi-aws module (or module/type).
SERVICES = {
    "appautoscaling": "application-autoscaling", "budgets": "budgets", "cloudwatch": "cloudwatch",
    "cloudwatch/logGroup": "logs", "ec2": "ec2", "vpc": "ec2", "ecr": "ecr", "ecs": "ecs",
    "elasticache": "elasticache", "kms": "kms", "lb": "elasticloadbalancing", "s3": "s3",
    "sns": "sns", "wafv2": "wafv2", "acm": "acm",
}
# Service-linked roles AWS creates on first use of these services in an account.
LINKED_SERVICES = ["ecs.amazonaws.com", "elasticache.amazonaws.com",
                   "elasticloadbalancing.amazonaws.com", "ecs.application-autoscaling.amazonaws.com",
                   "wafv2.amazonaws.com"]
# Secrets Manager, without GetSecretValue: the deploy role manages secrets, it does not read them.
SECRET_ACTIONS = [
    "secretsmanager:CreateSecret", "secretsmanager:DeleteSecret", "secretsmanager:DescribeSecret",
    "secretsmanager:UpdateSecret", "secretsmanager:PutSecretValue", "secretsmanager:RestoreSecret",
    "secretsmanager:TagResource", "secretsmanager:UntagResource", "secretsmanager:GetResourcePolicy",
    "secretsmanager:PutResourcePolicy", "secretsmanager:DeleteResourcePolicy",
    "secretsmanager:ListSecretVersionIds", "secretsmanager:UpdateSecretVersionStage",
]
ROLE_ACTIONS = [
    "iam:CreateRole", "iam:DeleteRole", "iam:GetRole", "iam:UpdateRole", "iam:UpdateAssumeRolePolicy",
    "iam:TagRole", "iam:UntagRole", "iam:ListRoleTags", "iam:PutRolePolicy", "iam:GetRolePolicy",
    "iam:DeleteRolePolicy", "iam:ListRolePolicies", "iam:ListAttachedRolePolicies",
    "iam:ListInstanceProfilesForRole", "iam:PassRole",
]
REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[0-9a-f-]{36}$")


class Invalid(Exception):
    """Bad input; exit code 2."""


@dataclass(frozen=True)
class Plan:
    """Everything needed to write one stack's two roles."""

    stack: str
    repo: str
    account: str
    region: str
    cfg: StackConfig
    state_bucket: Optional[str] = None
    secrets_key_arn: Optional[str] = None

    @property
    def deploy_environment(self) -> str:
        return DEPLOY_ENVIRONMENTS.get(self.stack, self.stack)

    @property
    def read_environment(self) -> str:
        return f"{self.deploy_environment}-read"

    def role_name(self, kind: str) -> str:
        return f"{physical_prefix(self.stack)}-{kind}"

    @property
    def provider_arn(self) -> str:
        return f"arn:aws:iam::{self.account}:oidc-provider/{OIDC_HOST}"

    @property
    def secret_arn(self) -> str:
        return f"arn:aws:secretsmanager:{self.region}:{self.account}:secret:{secret_prefix(self.stack)}/"


def trust_policy(plan: Plan, environment: str) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow",
        "Principal": {"Federated": plan.provider_arn},
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {"StringEquals": {
            f"{OIDC_HOST}:aud": AUDIENCE,
            f"{OIDC_HOST}:sub": f"repo:{plan.repo}:environment:{environment}",
        }},
    }]}


def _managed_secret_arns(plan: Plan) -> list[str]:
    """Secrets whose value Pulumi itself writes, and so reads back on refresh."""
    names = ["cache-auth-token"]
    if plan.cfg.secrets.source == "pulumi":
        names += plan.cfg.secrets.names
    return [f"{plan.secret_arn}{n}-*" for n in names]


def _pulumi_statements(plan: Plan, write: bool) -> list[dict[str, Any]]:
    """The state backend, its lock files, the secrets provider, and the Pulumi-managed secrets."""
    out: list[dict[str, Any]] = []
    if plan.state_bucket:
        bucket = f"arn:aws:s3:::{plan.state_bucket}"
        out.append({"Sid": "StateList", "Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
                    "Resource": bucket})
        out.append({"Sid": "StateRead", "Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectVersion"],
                    "Resource": f"{bucket}/*"})
        # A preview takes the stack's lock too; only a deploy writes the state itself.
        out.append({"Sid": "StateWrite" if write else "StateLocks", "Effect": "Allow",
                    "Action": ["s3:PutObject", "s3:DeleteObject"],
                    "Resource": f"{bucket}/*" if write else f"{bucket}/.pulumi/locks/*"})
    if plan.secrets_key_arn:
        out.append({"Sid": "SecretsProvider", "Effect": "Allow", "Action": ["kms:Decrypt"],
                    "Resource": plan.secrets_key_arn})
    managed = _managed_secret_arns(plan)
    out.append({"Sid": "ManagedSecretValues", "Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"],
                "Resource": managed})
    out.append({"Sid": "ManagedSecretDecrypt", "Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": "*",
                "Condition": {"StringEquals": {"kms:ViaService": f"secretsmanager.{plan.region}.amazonaws.com"},
                              "StringLike": {"kms:EncryptionContext:SecretARN": managed}}})
    return out


def deploy_policy(plan: Plan) -> dict[str, Any]:
    services = sorted({s for s in SERVICES.values() if s != "acm" or _creates_certificate(plan.cfg)})
    statements: list[dict[str, Any]] = [
        {"Sid": "StackServices", "Effect": "Allow", "Action": [f"{s}:*" for s in services], "Resource": "*"},
        {"Sid": "StackRoles", "Effect": "Allow", "Action": ROLE_ACTIONS,
         "Resource": f"arn:aws:iam::{plan.account}:role{iam_path(plan.stack)}*"},
        {"Sid": "ServiceLinkedRoles", "Effect": "Allow", "Action": "iam:CreateServiceLinkedRole",
         "Resource": "*", "Condition": {"StringEquals": {"iam:AWSServiceName": LINKED_SERVICES}}},
        {"Sid": "StackSecrets", "Effect": "Allow", "Action": SECRET_ACTIONS, "Resource": f"{plan.secret_arn}*"},
        {"Sid": "SecretsList", "Effect": "Allow",
         "Action": ["secretsmanager:ListSecrets", "secretsmanager:GetRandomPassword"], "Resource": "*"},
    ]
    if "acm" not in services:
        # ops.verify reads which names the listener's certificate covers.
        statements.append({"Sid": "ReadCertificates", "Effect": "Allow",
                           "Action": "acm:DescribeCertificate", "Resource": "*"})
    zone = plan.cfg.load_balancer.hosted_zone_id
    if zone:
        statements.append({"Sid": "DnsZone", "Effect": "Allow", "Resource": f"arn:aws:route53:::hostedzone/{zone}",
                           "Action": ["route53:GetHostedZone", "route53:ListResourceRecordSets",
                                      "route53:ChangeResourceRecordSets"]})
        statements.append({"Sid": "DnsChanges", "Effect": "Allow", "Action": "route53:GetChange",
                           "Resource": "arn:aws:route53:::change/*"})
    statements += _pulumi_statements(plan, write=True)
    if plan.state_bucket:
        # s3:* above covers the stack's log bucket; the state bucket itself is not the deploy's to change.
        statements.append({"Sid": "KeepStateBucket", "Effect": "Deny",
                           "Resource": f"arn:aws:s3:::{plan.state_bucket}",
                           "Action": ["s3:DeleteBucket", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy",
                                      "s3:PutBucketVersioning", "s3:PutEncryptionConfiguration",
                                      "s3:PutLifecycleConfiguration"]})
    if plan.secrets_key_arn:
        statements.append({"Sid": "KeepSecretsProviderKey", "Effect": "Deny", "Resource": plan.secrets_key_arn,
                           "Action": ["kms:ScheduleKeyDeletion", "kms:DisableKey", "kms:PutKeyPolicy",
                                      "kms:CreateGrant"]})
    return {"Version": "2012-10-17", "Statement": statements}


def read_policy(plan: Plan) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": _pulumi_statements(plan, write=False)}


def _creates_certificate(cfg: StackConfig) -> bool:
    lb = cfg.load_balancer
    return bool(lb.domain_name and lb.hosted_zone_id and not lb.certificate_arn)


@dataclass(frozen=True)
class Role:
    name: str
    environment: str
    trust: dict[str, Any]
    inline: dict[str, Any]
    managed: tuple[str, ...]
    max_session_seconds: int


def roles(plan: Plan) -> list[Role]:
    return [
        # A prod `pulumi up` that creates a multi-AZ cache can outlast the default hour.
        Role(plan.role_name("deploy"), plan.deploy_environment, trust_policy(plan, plan.deploy_environment),
             deploy_policy(plan), (), 7200),
        Role(plan.role_name("read"), plan.read_environment, trust_policy(plan, plan.read_environment),
             read_policy(plan), (READ_ONLY_POLICY,), 3600),
    ]


def ensure_provider(plan: Plan) -> str:
    iam = _client("iam", plan.region)
    existing = [p["Arn"] for p in iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]]
    if plan.provider_arn in existing:
        return f"GitHub OIDC provider present: {plan.provider_arn}"
    # IAM trusts GitHub's certificate authority itself; no thumbprint is needed.
    iam.create_open_id_connect_provider(Url=f"https://{OIDC_HOST}", ClientIDList=[AUDIENCE])
    return f"created the GitHub OIDC provider {plan.provider_arn}"


def apply_role(plan: Plan, role: Role) -> str:
    iam = _client("iam", plan.region)
    trust = json.dumps(role.trust)
    try:
        arn = iam.get_role(RoleName=role.name)["Role"]["Arn"]
        iam.update_assume_role_policy(RoleName=role.name, PolicyDocument=trust)
        iam.update_role(RoleName=role.name, MaxSessionDuration=role.max_session_seconds)
        verb = "updated"
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") != "NoSuchEntity":
            raise
        arn = iam.create_role(
            RoleName=role.name, Path=ROLE_PATH, AssumeRolePolicyDocument=trust,
            MaxSessionDuration=role.max_session_seconds,
            Description=f"GitHub Actions, environment {role.environment} of {plan.repo}",
        )["Role"]["Arn"]
        verb = "created"
    iam.put_role_policy(RoleName=role.name, PolicyName="llm-service", PolicyDocument=json.dumps(role.inline))
    for policy in role.managed:
        iam.attach_role_policy(RoleName=role.name, PolicyArn=policy)
    return f"{verb} {arn}; set AWS_ROLE_ARN={arn} in the GitHub environment {role.environment}"


def make_plan(stack: str, repo: str, account: str, state_bucket: Optional[str],
              secrets_key_arn: Optional[str], region: Optional[str] = None) -> Plan:
    if not REPO.match(repo):
        raise Invalid(f"--repo: got {repo!r}; expected OWNER/REPO as on GitHub")
    if secrets_key_arn and not KEY_ARN.match(secrets_key_arn):
        raise Invalid(f"--secrets-key-arn: got {secrets_key_arn!r}; expected a KMS key ARN "
                      "(arn:aws:kms:REGION:ACCOUNT:key/ID), not an alias")
    try:
        cfg = load(*read_stack_file(stack, ROOT))
    except FileNotFoundError as e:
        raise Invalid(str(e)) from None
    return Plan(stack=stack, repo=repo, account=account, region=region or cfg.region, cfg=cfg,
                state_bucket=state_bucket, secrets_key_arn=secrets_key_arn)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ops.ci_roles", description=__doc__.split("\n")[0])
    p.add_argument("action", choices=["show", "apply"])
    p.add_argument("--stack", required=True)
    p.add_argument("--repo", required=True, help="OWNER/REPO on GitHub")
    p.add_argument("--state-bucket", help="the S3 bucket of the Pulumi state (omit for Pulumi Cloud)")
    p.add_argument("--secrets-key-arn", help="the KMS key of the awskms:// secrets provider")
    p.add_argument("--account", help="show: the AWS account id (default: the caller's)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        account = args.account if args.action == "show" and args.account else \
            _client("sts", "us-east-1").get_caller_identity()["Account"]
        plan = make_plan(args.stack, args.repo, account, args.state_bucket, args.secrets_key_arn)
        if args.action == "show":
            print(json.dumps({r.name: {"environment": r.environment, "trust": r.trust, "policy": r.inline,
                                       "managed": list(r.managed)} for r in roles(plan)}, indent=2))
            return 0
        print(ensure_provider(plan))
        for role in roles(plan):
            print(apply_role(plan, role))
        return 0
    except ConfigError as e:
        print(error_lines(e), file=sys.stderr)
    except Invalid as e:
        print(f"error: {e}", file=sys.stderr)
    except NoCredentialsError:
        print("error: no AWS credentials found: run this as an administrator of the stack's account "
              "(or pass --account to `show`)", file=sys.stderr)
    except (ClientError, BotoCoreError) as e:
        print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
