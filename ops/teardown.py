"""Before `pulumi destroy` of a protected stack, and before re-creating it.

    pulumi stack output --stack prod --json > outputs.json
    python -m ops.teardown ready   --stack prod --outputs outputs.json [--remove-guardduty-endpoint]
    python -m ops.teardown restore --stack prod

`ready` runs after the one `up` with `llm-service:teardown: true` (`make destroy-ready`) and says,
one PASS/FAIL line each, whether `pulumi destroy` can run to the end: that up lifted protection,
the load balancer's deletion protection is off, and no endpoint GuardDuty added to the VPC (it
never deletes its own) would stop the VPC's deletion; `--remove-guardduty-endpoint` deletes those
once the teardown up has tagged the cluster GuardDutyManaged=false (so none comes back).
Then what the destroy keeps: the KMS key, the secrets (restorable for their recovery window),
the cache's final snapshot.

`restore` runs before the `pulumi up` that re-creates the stack: it restores the stack's secrets
(scheduled for deletion by the destroy, their names otherwise taken), makes their KMS key usable
again (cancels a scheduled deletion, enables it), and prints the `pulumi config set` lines that
make the program adopt them (`secrets.adopt`): each is imported with the program's own parent,
provider and protection, so the URNs are the program's and nothing is created twice. The API
key and the client keys come back with their values: clients keep working.

Exit codes: 0 done (ready: every check passed), 1 a check failed or AWS refused, 2 could not
start (bad config, a missing or unreadable outputs file, no credentials); one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from botocore.exceptions import ClientError, NoCredentialsError

from infra.config import (
    CACHE_AUTH_TOKEN,
    CLIENT_KEYS,
    GUARDDUTY_TAG,
    PROJECT,
    StackConfig,
    load,
    secret_prefix,
)
from infra.outputs import read_outputs
from infra.stack_files import ROOT, read_stack_file
from ops import rollout
from ops.boto import client as _client
from ops.verify import NO_CREDENTIALS, Result

REQUIRED_OUTPUTS = ["teardown", "albArn", "vpcId", "kmsKeyArn", "clusterName"]
# Every AWS action the two commands call.
IAM_ACTIONS = [
    "elasticloadbalancing:DescribeLoadBalancerAttributes", "ecs:DescribeClusters", "ec2:DescribeVpcEndpoints",
    "ec2:DescribeSecurityGroups", "ec2:DeleteVpcEndpoints", "ec2:DeleteSecurityGroup",
    "secretsmanager:ListSecrets", "secretsmanager:RestoreSecret", "kms:DescribeKey",
    "kms:CancelKeyDeletion", "kms:EnableKey",
]


# --- ready ---------------------------------------------------------------------------------------

def check_protection(out: dict, cfg: StackConfig) -> Result:
    if not cfg.is_prod:
        return Result("protection", True, f"nothing is protected in a {cfg.environment} stack")
    if out.get("teardown") is True:
        return Result("protection", True, "the last `up` ran with teardown: true (nothing protected)")
    return Result("protection", False, "the last `up` kept prod's protection: set llm-service:teardown "
                                       "to true and `pulumi up` first (make destroy-ready)")


def check_alb(out: dict, region: str) -> Result:
    attrs = _client("elbv2", region).describe_load_balancer_attributes(LoadBalancerArn=out["albArn"])
    on = {a["Key"]: a["Value"] for a in attrs["Attributes"]}.get("deletion_protection.enabled") == "true"
    if on:
        return Result("alb", False, "deletion protection is on: the teardown `up` has not run, or failed")
    return Result("alb", True, "deletion protection off")


def guardduty_leftovers(vpc: str, region: str) -> tuple[list[str], list[str]]:
    """The endpoints and security groups GuardDuty added to the VPC (tagged GuardDutyManaged)."""
    ec2 = _client("ec2", region)
    tagged = [{"Name": "vpc-id", "Values": [vpc]}, {"Name": f"tag:{GUARDDUTY_TAG}", "Values": ["true"]}]
    endpoints = [e["VpcEndpointId"] for e in ec2.describe_vpc_endpoints(Filters=tagged)["VpcEndpoints"]
                 if e.get("State", "").lower() not in ("deleted", "deleting")]
    groups = [g["GroupId"] for g in ec2.describe_security_groups(Filters=tagged)["SecurityGroups"]]
    return endpoints, groups


def check_guardduty(out: dict, region: str, remove: bool, sleep: Callable[[float], None]) -> Result:
    endpoints, groups = guardduty_leftovers(out["vpcId"], region)
    if not endpoints and not groups:
        return Result("guardduty", True, "no endpoint of GuardDuty's in the VPC")
    found = ", ".join(endpoints + groups)
    if remove and not excluded_from_guardduty(out["clusterName"], region):
        return Result("guardduty", False, f"GuardDuty added {found} to the VPC, and the cluster is not tagged "
                                          f"{GUARDDUTY_TAG}=false: removed now, GuardDuty would add them back "
                                          "for the next task; run the teardown `up` first (make destroy-ready)")
    if not remove:
        return Result("guardduty", False, f"GuardDuty added {found} to the VPC and never deletes them, so "
                                          "destroy would stop at the VPC: run again with "
                                          "--remove-guardduty-endpoint (and set network.guardDutyEndpoint: "
                                          "true before the stack's next life)")
    remove_guardduty(endpoints, groups, region, sleep)
    return Result("guardduty", True, f"removed {found}")


def excluded_from_guardduty(cluster: str, region: str) -> bool:
    """Is the cluster tagged so that GuardDuty adds nothing for its new tasks (the teardown up)?"""
    found = _client("ecs", region).describe_clusters(clusters=[cluster], include=["TAGS"])["clusters"]
    tags = {t["key"]: t["value"] for c in found for t in c.get("tags", [])}
    return tags.get(GUARDDUTY_TAG) == "false"


def remove_guardduty(endpoints: list[str], groups: list[str], region: str,
                     sleep: Callable[[float], None], attempts: int = 30) -> None:
    ec2 = _client("ec2", region)
    if endpoints:
        ec2.delete_vpc_endpoints(VpcEndpointIds=endpoints)
    for group in groups:
        # The endpoint's network interfaces go within a minute or two; until then the group is in use.
        for attempt in range(attempts):
            try:
                ec2.delete_security_group(GroupId=group)
                break
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") != "DependencyViolation" or attempt == attempts - 1:
                    raise
                sleep(10)


def what_destroy_keeps(out: dict, cfg: StackConfig) -> list[str]:
    days = cfg.secrets.recovery_window_days
    kept = [f"keeps the KMS key {out['kmsKeyArn']} (not scheduled for deletion: what it encrypted "
            "stays readable; `python -m ops.teardown restore` adopts it again)"] if cfg.is_prod else [
        f"schedules the KMS key {out['kmsKeyArn']} for deletion in {cfg.secrets.key_deletion_window_days} days"]
    kept.append(f"the secrets can be restored for {days} days" if days else
                "the secrets are deleted at once (recoveryWindowDays: 0)")
    if out.get("cacheFinalSnapshot"):
        kept.append(f"the cache leaves the final snapshot {out['cacheFinalSnapshot']}")
    return kept


def ready(stack: str, outputs: Path, remove_guardduty: bool = False, region: Optional[str] = None,
          root: Path = ROOT, sleep: Callable[[float], None] = time.sleep,
          log: Callable[[str], None] = print) -> int:
    cfg = load(*read_stack_file(stack, root))
    out = read_outputs(outputs, REQUIRED_OUTPUTS)
    region = region or out.get("region") or cfg.region
    results = [check_protection(out, cfg), check_alb(out, region),
               check_guardduty(out, region, remove_guardduty, sleep)]
    for r in results:
        log(r.line)
    failed = [r for r in results if not r.ok]
    if failed:
        log(f"not ready: {len(failed)} of {len(results)} checks failed; destroy would stop part-way")
        return 1
    log(f"ready: `pulumi destroy --stack {stack}` can run; it " + "; ".join(what_destroy_keeps(out, cfg)))
    return 0


# --- restore -------------------------------------------------------------------------------------

@dataclass
class Found:
    name: str
    arn: str
    key: str
    deleted: bool


def stack_secrets(stack: str, cfg: StackConfig, region: str) -> list[Found]:
    """The stack's secrets as AWS holds them, those scheduled for deletion included."""
    prefix = secret_prefix(stack)
    wanted = {f"{prefix}/{n}": n for n in [*cfg.secrets.names, CLIENT_KEYS, CACHE_AUTH_TOKEN]}
    found, token = [], None
    sm = _client("secretsmanager", region)
    while True:
        page = sm.list_secrets(IncludePlannedDeletion=True, Filters=[{"Key": "name", "Values": [f"{prefix}/"]}],
                               **({"NextToken": token} if token else {}))
        found += [Found(wanted[s["Name"]], s["ARN"], s.get("KmsKeyId", ""), "DeletedDate" in s)
                  for s in page["SecretList"] if s["Name"] in wanted]
        token = page.get("NextToken")
        if not token:
            return sorted(found, key=lambda f: list(wanted.values()).index(f.name))


def usable_key(key: str, region: str, log: Callable[[str], None]) -> str:
    """Make the key usable again (cancel a scheduled deletion, enable it); its key id."""
    kms = _client("kms", region)
    meta = kms.describe_key(KeyId=key)["KeyMetadata"]
    if meta["KeyState"] == "PendingDeletion":
        kms.cancel_key_deletion(KeyId=meta["KeyId"])
        log(f"cancelled the scheduled deletion of KMS key {meta['KeyId']}")
        meta["KeyState"] = "Disabled"  # what CancelKeyDeletion leaves
    if meta["KeyState"] == "Disabled":
        kms.enable_key(KeyId=meta["KeyId"])
        log(f"enabled KMS key {meta['KeyId']}")
    elif meta["KeyState"] != "Enabled":
        raise rollout.Failure(f"KMS key {meta['KeyId']} is {meta['KeyState']}: it cannot decrypt the secrets")
    return meta["KeyId"]


def restore(stack: str, region: Optional[str] = None, root: Path = ROOT,
            log: Callable[[str], None] = print) -> int:
    cfg = load(*read_stack_file(stack, root))
    region = region or cfg.region
    secrets = stack_secrets(stack, cfg, region)
    if not secrets:
        log(f"nothing to restore: no secret under {secret_prefix(stack)}/ exists; "
            f"`pulumi up --stack {stack}` creates everything anew")
        protect_again(stack, cfg, log)
        return 0
    keys = {s.key for s in secrets}
    if len(keys) != 1:
        raise rollout.Failure(f"the secrets are encrypted with different keys ({', '.join(sorted(keys))}); "
                              "adopt them by hand")
    sm = _client("secretsmanager", region)
    for s in secrets:
        if s.deleted:
            sm.restore_secret(SecretId=s.arn)
            log(f"restored {secret_prefix(stack)}/{s.name}: its value and versions are back")
    key_id = usable_key(keys.pop(), region, log)
    missing = sorted({*cfg.secrets.names, CLIENT_KEYS, CACHE_AUTH_TOKEN} - {s.name for s in secrets})
    if missing:
        log(f"not found (created anew by `pulumi up`, then set as on a first deploy): {', '.join(missing)}")
    log(f"next: adopt them (each `pulumi preview --stack {stack}` then shows an import), then `pulumi up`:")
    for what, ref in [("key", key_id), *((s.name, s.arn) for s in secrets)]:
        log(f"pulumi config set --stack {stack} --path '{PROJECT}:secrets.adopt.{what}' {ref}")
    protect_again(stack, cfg, log)
    return 0


def protect_again(stack: str, cfg: StackConfig, log: Callable[[str], None]) -> None:
    """Left on by the teardown, the new stack would be created unprotected (and its cluster
    outside GuardDuty's coverage)."""
    if cfg.teardown:
        log(f"pulumi config set --stack {stack} {PROJECT}:teardown false")


# --- command line ----------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ops.teardown", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("ready", help="can `pulumi destroy` run to the end? (after the teardown up)")
    r.add_argument("--stack", required=True)
    r.add_argument("--outputs", type=Path, required=True, help="`pulumi stack output --json` saved to a file")
    r.add_argument("--remove-guardduty-endpoint", action="store_true",
                   help="delete the endpoint and security group GuardDuty added to the VPC")
    r.add_argument("--region")
    s = sub.add_parser("restore", help="restore the secrets and key a re-created stack adopts")
    s.add_argument("--stack", required=True)
    s.add_argument("--region")
    return p


def _aws_error(e: Exception) -> str:
    if isinstance(e, NoCredentialsError):
        return NO_CREDENTIALS
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        return f"AWS refused {e.operation_name}: {err.get('Code')}: {err.get('Message')}"
    return str(e)


def main(argv: Optional[list[str]] = None, sleep: Callable[[float], None] = time.sleep) -> int:
    args = parser().parse_args(argv)

    def act() -> int:
        try:
            if args.command == "ready":
                return ready(args.stack, args.outputs, args.remove_guardduty_endpoint, args.region, sleep=sleep)
            return restore(args.stack, args.region)
        except (NoCredentialsError, ValueError, FileNotFoundError) as e:  # could not start
            print(f"error: {_aws_error(e)}", file=sys.stderr)
            return 2

    return rollout.run(act, _aws_error)


if __name__ == "__main__":
    sys.exit(main())
