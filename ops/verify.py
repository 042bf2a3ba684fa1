"""Check a deployed stack against AWS: did the deploy really work?

    pulumi stack output --stack staging --json > outputs.json
    python -m ops.verify --stack staging --outputs outputs.json [--wait 600]

One line per check, PASS or FAIL and why: the load balancer and its listeners, healthy targets,
a steady ECS service, every secret (metadata only, never the value), the cache, the alarms, the
budget, the WAF association, and an HTTPS request to the health path. Expectations (listeners,
minimum tasks, cache failover, budget limit, health path) come from the stack's config file.
`--wait` re-runs the checks until all pass or the time is up, for the minutes after `pulumi up`.

Exit codes: 0 all passed, 1 a check failed, 2 could not check (bad config, a missing output, no
AWS credentials): one line on stderr.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from infra.config import ConfigError, StackConfig, error_lines, load
from infra.outputs import read_outputs
from infra.stack_files import ROOT, read_stack_file
from ops.boto import client as _client

REQUIRED_OUTPUTS = [
    "albArn", "targetGroupArn", "clusterName", "serviceName", "kmsKeyArn", "secretArns",
    "cacheAuthSecretArn", "clientKeysSecretArn", "cacheReplicationGroupId", "alarmNames", "budgetName",
    "webAclArn", "serviceUrl",
]
POLL_SECONDS = 15
# Every AWS action the checks call (the deploy role runs them after `pulumi up`); all read-only.
IAM_ACTIONS = [
    "elasticloadbalancing:DescribeLoadBalancers", "elasticloadbalancing:DescribeListeners",
    "elasticloadbalancing:DescribeTargetHealth", "ecs:DescribeServices",
    "secretsmanager:DescribeSecret", "kms:DescribeKey", "elasticache:DescribeReplicationGroups",
    "cloudwatch:DescribeAlarms", "budgets:ViewBudget", "wafv2:GetWebACLForResource", "sts:GetCallerIdentity",
    "acm:DescribeCertificate",
]
NO_CREDENTIALS = "no AWS credentials found: set AWS_PROFILE or assume the stack's deploy role"


class CannotCheck(Exception):
    """The checks could not run at all; exit code 2."""


@dataclass(frozen=True)
class Result:
    check: str
    ok: bool
    detail: str

    @property
    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.check}: {self.detail}"


@dataclass(frozen=True)
class Expect:
    """What the stack's config says the live environment should look like."""

    stack: str
    min_tasks: int
    listeners: frozenset[tuple[str, int]]
    health_path: str
    failover: bool
    multi_az: bool
    budget_usd: float

    @classmethod
    def from_config(cls, stack: str, cfg: StackConfig) -> Expect:
        listeners = {("HTTPS", 443)}
        if cfg.load_balancer.http_mode == "redirect":
            listeners.add(("HTTP", 80))
        return cls(stack=stack, min_tasks=cfg.service.min_tasks, listeners=frozenset(listeners),
                   health_path=cfg.load_balancer.health_check_path,
                   failover=cfg.cache.automatic_failover, multi_az=cfg.cache.multi_az,
                   budget_usd=float(cfg.budget.monthly_limit_usd))


def _listeners(items: Iterable[tuple[str, int]]) -> str:
    return ", ".join(f"{p}:{n}" for p, n in sorted(items, key=lambda x: (x[1], x[0]))) or "none"


def check_alb(out: dict, exp: Expect, region: str) -> Result:
    elb = _client("elbv2", region)
    lb = elb.describe_load_balancers(LoadBalancerArns=[out["albArn"]])["LoadBalancers"][0]
    state = lb.get("State", {}).get("Code")
    found = {(x["Protocol"], x["Port"]) for x in
             elb.describe_listeners(LoadBalancerArn=out["albArn"])["Listeners"]}
    if state != "active":
        return Result("alb", False, f"{lb['LoadBalancerName']} is {state}, not active")
    if found != exp.listeners:
        return Result("alb", False, f"listeners {_listeners(found)}; expected {_listeners(exp.listeners)}")
    return Result("alb", True, f"{lb['LoadBalancerName']} active, listeners {_listeners(found)}")


def check_targets(out: dict, exp: Expect, region: str) -> Result:
    elb = _client("elbv2", region)
    health = elb.describe_target_health(TargetGroupArn=out["targetGroupArn"])["TargetHealthDescriptions"]
    healthy = sum(1 for t in health if t["TargetHealth"]["State"] == "healthy")
    ok = healthy >= exp.min_tasks
    detail = f"{healthy} healthy (minimum {exp.min_tasks})"
    others = [t for t in health if t["TargetHealth"]["State"] != "healthy"]
    if not health:
        detail += "; no targets registered"
    elif others:
        detail += "; " + ", ".join(
            f"{t['Target']['Id']} {t['TargetHealth']['State']}"
            + (f" ({t['TargetHealth']['Reason']})" if t["TargetHealth"].get("Reason") else "")
            for t in others)
    return Result("targets", ok, detail)


def check_ecs(out: dict, exp: Expect, region: str) -> Result:
    ecs = _client("ecs", region)
    found = ecs.describe_services(cluster=out["clusterName"], services=[out["serviceName"]])
    services = [s for s in found.get("services", []) if s.get("status") == "ACTIVE"]
    if not services:
        return Result("ecs", False, f"service {out['clusterName']}/{out['serviceName']} not found")
    svc = services[0]
    deployments = svc.get("deployments", [])
    running, desired = svc.get("runningCount"), svc.get("desiredCount")
    breaker = (svc.get("deploymentConfiguration") or {}).get("deploymentCircuitBreaker") or {}
    if len(deployments) != 1:
        states = ", ".join(f"{d.get('status')} {d.get('rolloutState')}" for d in deployments)
        return Result("ecs", False, f"{len(deployments)} deployments ({states}); a rollout is not finished")
    d = deployments[0]
    if d.get("status") != "PRIMARY" or d.get("rolloutState") != "COMPLETED":
        reason = d.get("rolloutStateReason", "")
        return Result("ecs", False, f"deployment {d.get('status')} {d.get('rolloutState')}"
                      + (f": {reason}" if reason else ""))
    if running != desired:
        return Result("ecs", False, f"running {running} of {desired} tasks")
    if not (breaker.get("enable") and breaker.get("rollback")):
        return Result("ecs", False, "deployment circuit breaker with rollback is off; "
                      "a failed rollout would not roll back")
    return Result("ecs", True, f"running {running} of {desired} tasks, one PRIMARY deployment "
                  "COMPLETED, circuit breaker with rollback")


def _same_key(sm_key: str, key_arn: str, kms) -> bool:
    if sm_key in (key_arn, key_arn.rsplit("/", 1)[-1]):
        return True
    # An alias or another spelling: ask KMS which key it is.
    return kms.describe_key(KeyId=sm_key)["KeyMetadata"]["Arn"] == key_arn


def check_secrets(out: dict, exp: Expect, region: str) -> list[Result]:
    sm, kms = _client("secretsmanager", region), _client("kms", region)
    arns = dict(out["secretArns"])
    arns["cache-auth-token"] = out["cacheAuthSecretArn"]
    arns["client-keys"] = out["clientKeysSecretArn"]
    hints = {name: f"python -m ops.apikey put --stack {exp.stack} --name {name}" for name in out["secretArns"]}
    hints["client-keys"] = f"python -m ops.clientkeys add --stack {exp.stack} <client>"
    results = []
    for name, arn in sorted(arns.items()):
        check = f"secret {name}"
        try:
            d = sm.describe_secret(SecretId=arn)  # metadata only; the value is never read
        except ClientError as e:
            results.append(Result(check, False, _aws_error(e)))
            continue
        current = any("AWSCURRENT" in s for s in d.get("VersionIdsToStages", {}).values())
        key = d.get("KmsKeyId")
        if not current:
            hint = f"; run `{hints[name]}`" if name in hints else ""
            results.append(Result(check, False, f"no current version{hint}"))
        elif not key:
            results.append(Result(check, False, "encrypted with the AWS-managed key, not the stack's"))
        elif not _same_key(key, out["kmsKeyArn"], kms):
            results.append(Result(check, False, f"encrypted with {key}, not the stack's key"))
        else:
            results.append(Result(check, True, "current version present, encrypted with the stack's key"))
    return results


def check_cache(out: dict, exp: Expect, region: str) -> Result:
    ec = _client("elasticache", region)
    rg_id = out["cacheReplicationGroupId"]
    rg = ec.describe_replication_groups(ReplicationGroupId=rg_id)["ReplicationGroups"][0]
    problems = []
    if rg.get("Status") != "available":
        problems.append(f"status {rg.get('Status')}")
    for flag, label in (("TransitEncryptionEnabled", "in-transit encryption"),
                        ("AtRestEncryptionEnabled", "at-rest encryption"),
                        ("AuthTokenEnabled", "AUTH token")):
        if not rg.get(flag):
            problems.append(f"{label} off")
    failover, multi_az = rg.get("AutomaticFailover") == "enabled", rg.get("MultiAZ") == "enabled"
    if exp.failover and not failover:
        problems.append(f"automatic failover {rg.get('AutomaticFailover')}, config wants enabled")
    if exp.multi_az and not multi_az:
        problems.append(f"multi-AZ {rg.get('MultiAZ')}, config wants enabled")
    if problems:
        return Result("cache", False, f"{rg_id}: " + "; ".join(problems))
    return Result("cache", True, f"{rg_id} available, TLS, at-rest encryption and AUTH on, "
                  f"failover {'on' if failover else 'off'}, multi-AZ {'on' if multi_az else 'off'}")


def check_alarms(out: dict, exp: Expect, region: str) -> Result:
    cw = _client("cloudwatch", region)
    names = list(out["alarmNames"])
    found: dict[str, str] = {}
    for i in range(0, len(names), 100):  # DescribeAlarms takes at most 100 names
        for page in cw.get_paginator("describe_alarms").paginate(AlarmNames=names[i:i + 100]):
            found.update({a["AlarmName"]: a["StateValue"] for a in page["MetricAlarms"]})
    missing = [n for n in names if n not in found]
    firing = [n for n in names if found.get(n) == "ALARM"]
    if missing:
        return Result("alarms", False, f"missing: {', '.join(missing)}")
    if firing:
        return Result("alarms", False, f"in ALARM: {', '.join(firing)}")
    states = Counter(found.values())
    return Result("alarms", True, f"{len(names)} present, none in ALARM ("
                  + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ")")


def check_budget(out: dict, exp: Expect, region: str, account: str) -> Result:
    budgets = _client("budgets", region)
    name = out["budgetName"]
    try:
        b = budgets.describe_budget(AccountId=account, BudgetName=name)["Budget"]
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") == "NotFoundException":
            return Result("budget", False, f"{name} not found in account {account}")
        raise
    limit = float(b["BudgetLimit"]["Amount"])
    if abs(limit - exp.budget_usd) > 0.005:
        return Result("budget", False, f"{name} limit {limit:g} {b['BudgetLimit']['Unit']}; "
                      f"config says {exp.budget_usd:g}")
    return Result("budget", True, f"{name} present, {limit:g} {b['BudgetLimit']['Unit']} a month")


def check_waf(out: dict, exp: Expect, region: str) -> Result:
    waf = _client("wafv2", region)
    acl = waf.get_web_acl_for_resource(ResourceArn=out["albArn"]).get("WebACL")
    if not acl:
        return Result("waf", False, "no web ACL associated with the load balancer")
    if acl["ARN"] != out["webAclArn"]:
        return Result("waf", False, f"the load balancer has web ACL {acl['Name']}, not the stack's")
    return Result("waf", True, f"web ACL {acl['Name']} associated with the load balancer")


def certificate_names(out: dict, region: str) -> list[str]:
    """The names the HTTPS listener's certificate was issued for (domain first, then SANs)."""
    elb, acm = _client("elbv2", region), _client("acm", region)
    for listener in elb.describe_listeners(LoadBalancerArn=out["albArn"])["Listeners"]:
        for cert in listener.get("Certificates") or []:
            c = acm.describe_certificate(CertificateArn=cert["CertificateArn"])["Certificate"]
            names = [c["DomainName"], *c.get("SubjectAlternativeNames", [])]
            return list(dict.fromkeys(names))
    return []


def _covers(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        return "." in host and host.split(".", 1)[1] == pattern[2:]
    return pattern == host


def tls_name_for(host: str, names: list[str]) -> str:
    """The name to verify the certificate against: the URL's host if the certificate covers it;
    otherwise (serviceUrl is the ALB's own DNS name) the name the certificate was issued for."""
    if not names or any(_covers(n, host) for n in names):
        return host
    return names[0].replace("*.", "verify.", 1)


class _HttpsTo(http.client.HTTPSConnection):
    """HTTPS to one host, with SNI and certificate verification for another name."""

    def __init__(self, host: str, port: Optional[int], tls_name: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.tls_name = tls_name

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.tls_name)


def _get(url: str, tls_name: str, timeout: float) -> int:
    parts = urlsplit(url)
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = _HttpsTo(parts.hostname, parts.port, tls_name, timeout)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/", headers={
            "Host": tls_name + (f":{parts.port}" if parts.port else ""),
            "User-Agent": "llm-service-verify"})
        return conn.getresponse().status
    finally:
        conn.close()


def check_health(out: dict, exp: Expect, region: str, timeout: float = 10.0) -> Result:
    url = out["serviceUrl"].rstrip("/") + exp.health_path
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return Result("health", False, f"serviceUrl {out['serviceUrl']!r} is not an http(s) URL")
    tls_name = parts.hostname
    if parts.scheme == "https":
        tls_name = tls_name_for(parts.hostname, certificate_names(out, region))
    shown = f"GET {url}" + (f" (TLS name {tls_name})" if tls_name != parts.hostname else "")
    try:
        # The certificate is always verified, against the name it was issued for.
        status = _get(url, tls_name, timeout)
    except (OSError, http.client.HTTPException) as e:
        hint = ("; the certificate does not match the load balancer's or is not trusted"
                if isinstance(e, ssl.SSLCertVerificationError) else "")
        return Result("health", False, f"{shown}: {e}{hint}")
    return Result("health", status == 200, f"{shown} answered {status}")


def _aws_error(e: ClientError) -> str:
    err = e.response.get("Error", {})
    return f"{err.get('Code', 'error')}: {err.get('Message', '')}"


def _guarded(check: str, fn: Callable[[], Any]) -> list[Result]:
    """One check's results; an AWS error fails that check only (credentials aside)."""
    try:
        got = fn()
    except NoCredentialsError:
        raise
    except ClientError as e:
        return [Result(check, False, _aws_error(e))]
    except BotoCoreError as e:
        return [Result(check, False, str(e))]
    return got if isinstance(got, list) else [got]


def run_checks(out: dict, exp: Expect, region: str, account: str) -> list[Result]:
    checks: list[tuple[str, Callable[[], Any]]] = [
        ("alb", lambda: check_alb(out, exp, region)),
        ("targets", lambda: check_targets(out, exp, region)),
        ("ecs", lambda: check_ecs(out, exp, region)),
        ("secrets", lambda: check_secrets(out, exp, region)),
        ("cache", lambda: check_cache(out, exp, region)),
        ("alarms", lambda: check_alarms(out, exp, region)),
        ("budget", lambda: check_budget(out, exp, region, account)),
        ("waf", lambda: check_waf(out, exp, region)),
        ("health", lambda: check_health(out, exp, region)),
    ]
    return [r for name, fn in checks for r in _guarded(name, fn)]


def account_id(region: str) -> str:
    """Who we are; the first call, so missing or expired credentials fail here in one line."""
    try:
        return _client("sts", region).get_caller_identity()["Account"]
    except NoCredentialsError:
        raise CannotCheck(NO_CREDENTIALS) from None
    except ClientError as e:
        raise CannotCheck(f"AWS credentials refused ({_aws_error(e)})") from None


def verify(stack: str, outputs: Path, wait: int = 0, region: Optional[str] = None, root: Path = ROOT,
           sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
           log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> list[Result]:
    try:
        cfg = load(*read_stack_file(stack, root))
        out = read_outputs(outputs, REQUIRED_OUTPUTS)
    except ConfigError:
        raise
    except (FileNotFoundError, ValueError) as e:
        raise CannotCheck(str(e)) from None
    exp = Expect.from_config(stack, cfg)
    region = region or out.get("region") or cfg.region
    account = account_id(region)
    deadline = clock() + wait
    while True:
        results = run_checks(out, exp, region, account)
        failing = [r.check for r in results if not r.ok]
        left = deadline - clock()
        if not failing or left <= 0:
            return results
        log(f"waiting: {len(failing)} failing ({', '.join(failing)}); "
            f"next try in {min(POLL_SECONDS, left):.0f} s, {left:.0f} s left")
        sleep(min(POLL_SECONDS, left))


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ops.verify", description=__doc__.split("\n")[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--outputs", type=Path, required=True,
                        help="`pulumi stack output --json` saved to a file")
    parser.add_argument("--wait", type=int, default=0, metavar="SECONDS",
                        help="retry failing checks until they pass or SECONDS have passed")
    parser.add_argument("--region", help="override the stack's region")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        results = verify(args.stack, args.outputs, wait=args.wait, region=args.region)
    except ConfigError as e:
        print(error_lines(e), file=sys.stderr)
        return 2
    except (CannotCheck, NoCredentialsError) as e:
        print(f"error: {e if isinstance(e, CannotCheck) else NO_CREDENTIALS}", file=sys.stderr)
        return 2
    for r in results:
        print(r.line)
    failed = sum(1 for r in results if not r.ok)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
