"""Set, check and rotate the stack's LLM API key in Secrets Manager, outside Pulumi state.

    python -m ops.apikey put    --stack staging          # value from stdin or a hidden prompt
    python -m ops.apikey check  --stack staging          # is there a current value, and how old
    python -m ops.apikey rotate --stack prod --timeout 900

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

from botocore.exceptions import ClientError, NoCredentialsError

from ops import rollout
from ops.boto import client as _client
from ops.rollout import Failure, Stack

# OpenAI keys: sk-..., sk-proj-..., sk-svcacct-...; other names only need to be one token.
SHAPES = {"openai-api-key": re.compile(r"sk-[A-Za-z0-9_\-]{20,}")}
ANY_TOKEN = re.compile(r"\S{8,}")


@dataclass
class Target:
    stack: Stack
    secret_id: str
    rotation_age_days: int

    @property
    def region(self) -> str:
        return self.stack.region


def resolve(stack: str, name: str, outputs: Optional[Path], region: Optional[str]) -> Target:
    s = rollout.resolve(stack, outputs, region)
    if name not in s.cfg.secrets.names:
        raise Failure(f"{name!r} is not one of the stack's secrets.names {list(s.cfg.secrets.names)}")
    if name not in s.secrets:
        raise Failure(f"{outputs}: secretArns has no {name!r} (has {sorted(s.secrets)})")
    return Target(s, s.secrets[name], s.cfg.secrets.rotation_age_days)


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


def put(t: Target, value: str, timeout: int, sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic, log: Callable[[str], None] = print) -> None:
    """Store the value; where the service exists (and every secret it reads has a value), roll
    it out and wait until it is stable."""
    _client("secretsmanager", t.region).describe_secret(SecretId=t.secret_id)  # fails before writing
    log(_store(t, value))
    rollout.after_secret_change(t.stack, timeout, sleep, clock, log)


def check(t: Target, now: Optional[datetime] = None) -> tuple[list[str], bool]:
    """Lines to print and whether all is well. Reads metadata only, never the value."""
    sm = _client("secretsmanager", t.region)
    d = sm.describe_secret(SecretId=t.secret_id)
    stages = d.get("VersionIdsToStages", {})
    if not any("AWSCURRENT" in s for s in stages.values()):
        return [f"FAIL {t.secret_id}: no current value; run `python -m ops.apikey put "
                f"--stack {t.stack.name}`"], False
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
    rollout.require_service(t.stack)
    put(t, value, timeout, sleep, clock, log)


def explain(e: Exception, t: Optional[Target]) -> str:
    where = f"{t.secret_id} in {t.region}" if t else "the secret"
    return explain_aws(e, where, t.stack.name if t else None)


def explain_aws(e: Exception, where: str, stack: Optional[str]) -> str:
    if isinstance(e, NoCredentialsError):
        return "no AWS credentials found: set AWS_PROFILE or assume the stack's deploy role"
    if isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "")
        msg = e.response.get("Error", {}).get("Message", "")
        if code == "ResourceNotFoundException":
            flag = f" --stack {stack}" if stack else ""
            return f"{where} does not exist; deploy the stack first (pulumi up{flag})"
        if code in ("AccessDeniedException", "AccessDenied", "UnrecognizedClientException"):
            return f"access denied to {where}: {msg}"
        if code in ("ThrottlingException", "Throttling", "TooManyRequestsException"):
            return f"AWS throttled the call ({code}); nothing more was written, try again shortly"
        if code in ("ClusterNotFoundException", "ServiceNotFoundException"):
            return f"ECS {code}: {msg}"
        return f"AWS error {code}: {msg}"
    return f"AWS call failed: {e}"


def main(argv: Optional[list[str]] = None, stdin: TextIO = sys.stdin) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.apikey", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["put", "check", "rotate"])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--name", default="openai-api-key", help="which secret (default %(default)s)")
    parser.add_argument("--outputs", type=Path, help="`pulumi stack output --json` saved to a file")
    parser.add_argument("--region", help="override the stack's region")
    parser.add_argument("--timeout", type=int, default=600,
                        help="seconds to wait for the service to be stable after writing")
    args = parser.parse_args(argv)
    target = None

    def act() -> int:
        nonlocal target
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

    return rollout.run(act, lambda e: explain(e, target))

if __name__ == "__main__":
    sys.exit(main())
