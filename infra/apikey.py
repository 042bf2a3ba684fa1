"""Set, check and rotate the stack's LLM API key in Secrets Manager, outside Pulumi state.

    python -m infra.apikey put    --stack staging          # value from stdin or a hidden prompt
    python -m infra.apikey check  --stack staging          # is there a current value, and how old
    python -m infra.apikey rotate --stack prod --timeout 900

`put` and `rotate` both roll the ECS service out after writing, so every task reads the new
value, and wait until it is stable. That is what makes the first deploy work: `pulumi up` creates
the secret without a value, the first tasks cannot start, the circuit breaker stops the rollout,
and `put` then starts a new one. `rotate` differs only in refusing to write when the service does
not exist yet.

The secret is found by the stack's naming convention (`llm-service/<stack>/<name>`, region from
the stack file) or, with `--outputs FILE`, from `pulumi stack output --json > FILE`. The value is
never taken from argv or the environment, never printed, and never read back by `check`.
Every failure is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import getpass
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Optional, TextIO

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from infra.clients import client as _client
from infra.config import load, physical_prefix, secret_prefix
from infra.outputs import read_outputs
from infra.synth import ROOT, read_stack_file

# OpenAI keys: sk-..., sk-proj-..., sk-svcacct-...; other names only need to be one token.
SHAPES = {"openai-api-key": re.compile(r"sk-[A-Za-z0-9_\-]{20,}")}
ANY_TOKEN = re.compile(r"\S{8,}")


class Failure(Exception):
    """One line for the operator; exit code 1."""


@dataclass
class Target:
    stack: str
    region: str
    secret_id: str
    name: str
    rotation_age_days: int
    cluster: str
    service: str


def resolve(stack: str, name: str, outputs: Optional[Path], region: Optional[str],
            root: Path = ROOT) -> Target:
    cfg = load(*read_stack_file(stack, root))
    target = Target(
        stack=stack, region=region or cfg.region, secret_id=f"{secret_prefix(stack)}/{name}",
        name=name, rotation_age_days=cfg.secrets.rotation_age_days,
        cluster=physical_prefix(stack), service=physical_prefix(stack),
    )
    if outputs is not None:
        out = read_outputs(outputs, ["secretArns", "clusterName", "serviceName"])
        if name not in out["secretArns"]:
            raise Failure(f"{outputs}: secretArns has no {name!r} (has {sorted(out['secretArns'])})")
        target.secret_id = out["secretArns"][name]
        target.cluster, target.service = out["clusterName"], out["serviceName"]
        target.region = region or out.get("region") or target.region
    return target


def read_value(name: str, stdin: TextIO) -> str:
    """From a pipe (`pbpaste | ...`) or a hidden prompt; never from argv or the environment."""
    if stdin.isatty():
        value = getpass.getpass(f"{name} (input hidden): ")
    else:
        value = stdin.read()
    value = value.strip()
    shape = SHAPES.get(name, ANY_TOKEN)
    if not shape.fullmatch(value):
        # Say what is wrong without echoing any of it.
        raise Failure(f"that does not look like a {name} ({len(value)} characters read); "
                      "nothing was written")
    return value


def _store(t: Target, value: str) -> str:
    sm = _client("secretsmanager", t.region)
    version = sm.put_secret_value(SecretId=t.secret_id, SecretString=value)["VersionId"]
    return f"stored a new current version of {t.secret_id} (version {version})"


def put(t: Target, value: str, timeout: int = 600, sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic, log: Callable[[str], None] = print) -> None:
    """Store the value; where the service exists, roll it out and wait until it is stable."""
    _client("secretsmanager", t.region).describe_secret(SecretId=t.secret_id)  # fails before writing
    ecs = _client("ecs", t.region)
    exists = _find_service(ecs, t) is not None
    log(_store(t, value))
    if not exists:
        log(f"no ECS service {t.cluster}/{t.service} yet: its first tasks will read this value")
        return
    _roll_out(ecs, t, timeout, sleep, clock, log)


def check(t: Target, now: Optional[datetime] = None) -> tuple[list[str], bool]:
    """Lines to print and whether all is well. Reads metadata only, never the value."""
    sm = _client("secretsmanager", t.region)
    d = sm.describe_secret(SecretId=t.secret_id)
    stages = d.get("VersionIdsToStages", {})
    if not any("AWSCURRENT" in s for s in stages.values()):
        return [f"FAIL {t.secret_id}: no current value; run `python -m infra.apikey put "
                f"--stack {t.stack}`"], False
    lines, ok = [], True
    if not d.get("KmsKeyId"):
        lines.append(f"FAIL {t.secret_id}: encrypted with the AWS-managed key, not the stack's")
        ok = False
    changed = d.get("LastChangedDate") or d.get("CreatedDate")
    now = now or datetime.now(UTC)
    age = (now - changed).days if changed else 0
    when = changed.strftime("%Y-%m-%d") if changed else "unknown"
    if age > t.rotation_age_days:
        lines.append(f"WARN {t.secret_id}: last changed {when}, {age} days ago; older than the "
                     f"rotation age of {t.rotation_age_days} days: run `rotate`")
    else:
        lines.append(f"OK   {t.secret_id}: current value present, last changed {when} "
                     f"({age} days ago)")
    return lines, ok


def rotate(t: Target, value: str, timeout: int, sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.monotonic, log: Callable[[str], None] = print) -> None:
    # Check the service exists before writing, so a wrong target writes nothing.
    _service(_client("ecs", t.region), t)
    put(t, value, timeout, sleep, clock, log)


def _roll_out(ecs, t: Target, timeout: int, sleep: Callable[[float], None],
              clock: Callable[[], float], log: Callable[[str], None]) -> None:
    """A new deployment, so running tasks (and a rollout the circuit breaker stopped for want of
    the value) start again with it; then wait for one COMPLETED deployment at full count."""
    ecs.update_service(cluster=t.cluster, service=t.service, forceNewDeployment=True)
    log(f"forced a new deployment of {t.cluster}/{t.service}; waiting up to {timeout} s")
    deadline = clock() + timeout
    while True:
        svc = _service(ecs, t)
        deployments = svc.get("deployments", [])
        primary = [d for d in deployments if d.get("status") == "PRIMARY"]
        if (len(deployments) == 1 and primary and primary[0].get("rolloutState") == "COMPLETED"
                and svc.get("runningCount") == svc.get("desiredCount")):
            log(f"{t.service} is stable: {svc['runningCount']} tasks run the new key")
            return
        if primary and primary[0].get("rolloutState") == "FAILED":
            raise Failure(f"the new deployment failed ({primary[0].get('rolloutStateReason', '')}); "
                          "the circuit breaker rolls back to the old tasks, which keep the old key")
        if clock() >= deadline:
            raise Failure(f"{t.service} not stable after {timeout} s (running "
                          f"{svc.get('runningCount')} of {svc.get('desiredCount')}, "
                          f"{len(deployments)} deployments); the new key is stored")
        sleep(10)


def _find_service(ecs, t: Target) -> Optional[dict]:
    try:
        found = ecs.describe_services(cluster=t.cluster, services=[t.service])
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") == "ClusterNotFoundException":
            return None
        raise
    services = [s for s in found.get("services", []) if s.get("status") == "ACTIVE"]
    return services[0] if services else None


def _service(ecs, t: Target) -> dict:
    service = _find_service(ecs, t)
    if service is None:
        raise Failure(f"ECS service {t.cluster}/{t.service} not found in {t.region}; "
                      "deploy the stack first (pulumi up)")
    return service


def explain(e: Exception, t: Optional[Target]) -> str:
    where = f"{t.secret_id} in {t.region}" if t else "the secret"
    if isinstance(e, NoCredentialsError):
        return "no AWS credentials found: set AWS_PROFILE or assume the stack's deploy role"
    if isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "")
        msg = e.response.get("Error", {}).get("Message", "")
        if code == "ResourceNotFoundException":
            stack = f" --stack {t.stack}" if t else ""
            return f"{where} does not exist; deploy the stack first (pulumi up{stack})"
        if code in ("AccessDeniedException", "AccessDenied", "UnrecognizedClientException"):
            return f"access denied to {where}: {msg}"
        if code in ("ThrottlingException", "Throttling", "TooManyRequestsException"):
            return f"AWS throttled the call ({code}); nothing more was written, try again shortly"
        if code in ("ClusterNotFoundException", "ServiceNotFoundException"):
            return f"ECS {code}: {msg}"
        return f"AWS error {code}: {msg}"
    return f"AWS call failed: {e}"


def main(argv: Optional[list[str]] = None, stdin: TextIO = sys.stdin) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.apikey", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["put", "check", "rotate"])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--name", default="openai-api-key", help="which secret (default %(default)s)")
    parser.add_argument("--outputs", type=Path, help="`pulumi stack output --json` saved to a file")
    parser.add_argument("--region", help="override the stack's region")
    parser.add_argument("--timeout", type=int, default=600,
                        help="seconds to wait for the service to be stable after writing")
    args = parser.parse_args(argv)
    target = None
    try:
        target = resolve(args.stack, args.name, args.outputs, args.region)
        if args.action == "check":
            lines, ok = check(target)
            print("\n".join(lines))
            return 0 if ok else 1
        value = read_value(args.name, stdin)
        if args.action == "put":
            put(target, value, args.timeout)
        else:
            rotate(target, value, args.timeout)
        return 0
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
    except (ClientError, BotoCoreError) as e:
        print(f"error: {explain(e, target)}", file=sys.stderr)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
