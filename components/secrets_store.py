"""The stack's KMS key and its Secrets Manager secrets (the LLM API key and friends).

Creates: one customer-managed KMS key with rotation and an alias; one secret per name, under
`<prefix>/<name>`, encrypted with that key; in `pulumi` mode, a secret version from a Pulumi
secret. In `external` mode (the default) no value is declared, so it never enters Pulumi state:
`python -m ops.apikey put` writes it.

Cost: $1/month for the key (plus $0.03 per 10k requests), $0.40/month per secret.

Args (`SecretsArgs`, each described where it is declared below):
    prefix: str, required
    region: str, required
    names: list[str] = ['openai-api-key']
    source: Literal['external', 'pulumi'] = 'external'
    values: Mapping[str, pulumi.Input[str]] = {}
    recovery_window_days: int = 7
    key_deletion_window_days: int = 30
    protect: bool = False
    retain_key: bool = False
    adopt: Mapping[str, str] = {}

Outputs: key_arn, secret_arns, values.

Example (examples/secrets_store/, runs as written beside a copy of this file):

    import pulumi
    from secrets_store import Secrets, SecretsArgs

    keys = Secrets("secrets", SecretsArgs(prefix="my-app/dev", region="eu-west-1"))
    pulumi.export("secretArns", keys.secret_arns)
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Optional

import pulumi
import pulumi_aws as aws

# Services that encrypt with the key on a caller's behalf (checked with kms:ViaService).
VIA_SERVICES = ("secretsmanager", "elasticache", "sns", "logs", "ecr")
# Services that publish to the encrypted alarm topic; without these grants their
# notifications are dropped without an error.
PUBLISHERS = ("cloudwatch.amazonaws.com", "budgets.amazonaws.com")


# What an adopted key or secret is imported by: a KMS key id (a UUID, or mrk- and 32 hex digits
# for a multi-Region key), a secret's full ARN (CreateSecret appends "-" and six characters).
KEY_ID = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}|mrk-[0-9a-f]{32}")
SECRET_ARN = re.compile(
    r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+-[A-Za-z0-9]{6}")


def problems(a: SecretsArgs) -> list[tuple[str, str]]:
    """What Secrets Manager or KMS would refuse in these arguments, as (argument, why)."""
    found = []
    bad = [n for n in a.names if not re.fullmatch(r"[a-z][a-z0-9-]{1,62}", n)]
    if bad:
        found.append(("names", f"{bad[0]!r}: lower-case letters, digits and hyphens, 2 to 63"))
    elif len(set(a.names)) != len(a.names):
        found.append(("names", "names must be unique"))
    if a.recovery_window_days != 0 and not 7 <= a.recovery_window_days <= 30:
        found.append(("recovery_window_days", "0 (delete at once) or 7 to 30 days"))
    if not 7 <= a.key_deletion_window_days <= 30:
        found.append(("key_deletion_window_days", "KMS waits 7 to 30 days"))
    for what, ref in (getattr(a, "adopt", None) or {}).items():
        if what == "key" and not KEY_ID.fullmatch(ref):
            found.append((f"adopt[{what}]", "a KMS key id: a UUID, or mrk- and 32 hex digits"))
        elif what != "key" and not SECRET_ARN.fullmatch(ref):
            found.append((f"adopt[{what}]", "the secret's full ARN (arn:aws:secretsmanager:<region>:<account>:"
                                            "secret:<name>-<6 characters>)"))
    values = getattr(a, "values", None)
    if a.source == "pulumi" and values is not None and set(a.names) - set(values):
        found.append(("values", f"source pulumi needs a value for {sorted(set(a.names) - set(values))}"))
    return found


@dataclass
class SecretsArgs:
    prefix: str
    """Secrets are named <prefix>/<name>, e.g. llm-service/staging."""
    region: str
    """The region, for the key policy's service principals."""
    names: list[str] = field(default_factory=lambda: ["openai-api-key"])
    """The secrets to create, each named <prefix>/<name>."""
    source: Literal["external", "pulumi"] = "external"
    """Where the values come from. external: the secrets are created empty, for values written out of band;
    pulumi: from values."""
    values: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    """The secrets' values, name -> value, when source is pulumi; {} otherwise."""
    recovery_window_days: int = 7
    """Days a deleted secret can be restored. Secrets Manager: 0 (at once) or 7 to 30."""
    key_deletion_window_days: int = 30
    """Days before a deleted KMS key is gone. KMS: 7 to 30."""
    protect: bool = False
    """The key and the secrets cannot be deleted by an `up`."""
    retain_key: bool = False
    """Destroy leaves the key (not scheduled for deletion), so what it encrypted and outlives the stack
    (secrets in their recovery window, a final cache snapshot) stays readable."""
    adopt: Mapping[str, str] = field(default_factory=dict)
    """Existing resources to adopt instead of creating (a re-created stack taking back its restored key and
    secrets): "key" -> a KMS key id, <secret name> -> the secret's ARN."""

    def __post_init__(self) -> None:
        for arg, why in problems(self):
            raise ValueError(f"SecretsArgs.{arg}: got {getattr(self, arg.split('[')[0])!r}; {why}")


def env_var_name(secret_name: str) -> str:
    """`openai-api-key` -> `OPENAI_API_KEY`: the container sees each secret under this name."""
    return secret_name.upper().replace("-", "_")


class Secrets(pulumi.ComponentResource):
    key_arn: pulumi.Output[str]
    """The stack's KMS key."""
    secret_arns: dict[str, pulumi.Output[str]]
    """Each secret's ARN, by its name."""
    values: list[pulumi.Resource]
    """The secret values the stack itself writes (source pulumi, and add_secret's): whoever reads them at
    start-up (the service) depends on these, so its first tasks never find a secret without a value."""

    def __init__(self, name: str, args: SecretsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-service:secrets:Secrets", name, None, opts)
        self._args = args
        self._prefix = name  # of the children's names (add_secret's too)
        ident = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self))
        part = aws.get_partition_output(opts=pulumi.InvokeOutputOptions(parent=self))

        self.key = aws.kms.Key(
            f"{name}-key",
            description=f"{args.prefix}: secrets, logs, cache and alarm topic",
            enable_key_rotation=True,
            deletion_window_in_days=args.key_deletion_window_days,
            policy=pulumi.Output.all(ident.account_id, part.partition).apply(
                lambda a: key_policy(a[0], a[1], args.region)
            ),
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect, retain_on_delete=args.retain_key,
                                        import_=args.adopt.get("key")),
        )
        aws.kms.Alias(
            f"{name}-alias",
            name=f"alias/{args.prefix}",
            target_key_id=self.key.key_id,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.key_arn = self.key.arn
        self.values = []
        self.secret_arns = {}
        for secret_name in args.names:
            secret = aws.secretsmanager.Secret(
                f"{name}-{secret_name}",
                name=f"{args.prefix}/{secret_name}",
                description=f"{secret_name} for {args.prefix}; value set out of band"
                if args.source == "external" else f"{secret_name} for {args.prefix}",
                kms_key_id=self.key.arn,
                recovery_window_in_days=args.recovery_window_days,
                opts=self._secret_options(secret_name),
            )
            if args.source == "pulumi":
                self.values.append(aws.secretsmanager.SecretVersion(
                    f"{name}-{secret_name}-value",
                    secret_id=secret.id,
                    secret_string=pulumi.Output.secret(args.values[secret_name]),
                    opts=pulumi.ResourceOptions(parent=self),
                ))
            self.secret_arns[secret_name] = secret.arn
        self.register_outputs({
            "key_arn": self.key_arn,
            "secret_arns": self.secret_arns,
        })

    def _secret_options(self, secret_name: str) -> pulumi.ResourceOptions:
        a = self._args
        return pulumi.ResourceOptions(parent=self, protect=a.protect, import_=a.adopt.get(secret_name))

    def add_secret(self, secret_name: str, value: Optional[pulumi.Input[str]] = None) -> pulumi.Output[str]:
        """A further secret under the same key: with a value the stack generates (the cache AUTH
        token), or without one, for an operator command to write (the client keys). Its ARN."""
        a = self._args
        secret = aws.secretsmanager.Secret(
            f"{self._prefix}-{secret_name}",
            name=f"{a.prefix}/{secret_name}",
            description=f"{secret_name} for {a.prefix}; "
                        + ("generated by the stack" if value is not None else "value set out of band"),
            kms_key_id=self.key.arn,
            recovery_window_in_days=a.recovery_window_days,
            opts=self._secret_options(secret_name),
        )
        if value is None:
            return secret.arn
        self.values.append(aws.secretsmanager.SecretVersion(
            f"{self._prefix}-{secret_name}-value",
            secret_id=secret.id,
            secret_string=pulumi.Output.secret(value),
            opts=pulumi.ResourceOptions(parent=self),
        ))
        return secret.arn


def key_policy(account: str, partition: str, region: str) -> str:
    root = f"arn:{partition}:iam::{account}:root"
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AccountAdministers",
                "Effect": "Allow",
                "Principal": {"AWS": root},
                "Action": "kms:*",
                "Resource": "*",
            },
            {
                "Sid": "ServicesInThisAccountAndRegion",
                "Effect": "Allow",
                "Principal": {"AWS": "*"},
                "Action": [
                    "kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*",
                    "kms:GenerateDataKey*", "kms:CreateGrant", "kms:DescribeKey",
                ],
                "Resource": "*",
                "Condition": {
                    "StringEquals": {
                        "kms:CallerAccount": account,
                        "kms:ViaService": [f"{s}.{region}.amazonaws.com" for s in VIA_SERVICES],
                    }
                },
            },
            {
                "Sid": "CloudWatchLogsEncryptsThisAccountsGroups",
                "Effect": "Allow",
                "Principal": {"Service": f"logs.{region}.amazonaws.com"},
                "Action": [
                    "kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                ],
                "Resource": "*",
                "Condition": {
                    "ArnLike": {
                        "kms:EncryptionContext:aws:logs:arn":
                            f"arn:{partition}:logs:{region}:{account}:log-group:*"
                    }
                },
            },
            {
                # DescribeKey carries no encryption context, so under the condition above it
                # would never be allowed. It reveals key metadata only; AWS's own policies for
                # CloudTrail and CloudWatch Logs grant it in a statement of its own like this.
                "Sid": "CloudWatchLogsDescribesTheKey",
                "Effect": "Allow",
                "Principal": {"Service": f"logs.{region}.amazonaws.com"},
                "Action": "kms:DescribeKey",
                "Resource": "*",
            },
            {
                "Sid": "AlarmAndBudgetPublishersUseTheTopicKey",
                "Effect": "Allow",
                "Principal": {"Service": list(PUBLISHERS)},
                "Action": ["kms:GenerateDataKey*", "kms:Decrypt"],
                "Resource": "*",
                "Condition": {"StringEquals": {"aws:SourceAccount": account}},
            },
        ],
    })
