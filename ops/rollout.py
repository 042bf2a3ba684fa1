"""What the operator commands share: finding a stack's service and secrets, and rolling the
service out after a secret changed.

ECS reads secrets when a task starts, so a new value reaches running tasks only through a new
deployment. A deployment started while some secret the tasks read still has no value fails
(ResourceInitializationError) and the circuit breaker stops it; so a command rolls out only when
every secret has a value, and otherwise says which one is missing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from botocore.exceptions import BotoCoreError, ClientError

from infra.config import (
    CACHE_AUTH_TOKEN,
    CLIENT_KEYS,
    ConfigError,
    StackConfig,
    error_lines,
    load,
    physical_prefix,
    secret_prefix,
)
from infra.outputs import read_outputs
from infra.stack_files import ROOT, read_stack_file
from ops.boto import client as _client


class Failure(Exception):
    """One line for the operator; exit code 1."""


def run(action: Callable[[], int], aws_error: Callable[[Exception], str]) -> int:
    """A command's action, with every failure as one line on stderr: exit 2 for a bad stack
    config (as every command does), 1 for the rest; `aws_error` words an AWS refusal."""
    def err(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
    try:
        return action()
    except ConfigError as e:
        err(error_lines(e))
        return 2
    except Failure as e:
        err(f"error: {e}")
    except (ClientError, BotoCoreError) as e:
        err(f"error: {aws_error(e)}")
    except (FileNotFoundError, ValueError) as e:
        err(f"error: {e}")
    return 1


@dataclass
class Stack:
    name: str
    region: str
    cluster: str
    service: str
    secrets: dict[str, str]  # every secret the tasks read: name -> id (name or ARN)
    cfg: StackConfig


def resolve(stack: str, outputs: Optional[Path] = None, region: Optional[str] = None,
            root: Path = ROOT) -> Stack:
    """From the stack file's naming convention, or from `pulumi stack output --json` saved to a file."""
    cfg = load(*read_stack_file(stack, root))
    names = [*cfg.secrets.names, CLIENT_KEYS, CACHE_AUTH_TOKEN]
    found = Stack(stack, region or cfg.region, physical_prefix(stack), physical_prefix(stack),
                  {n: f"{secret_prefix(stack)}/{n}" for n in names}, cfg)
    if outputs is not None:
        out = read_outputs(outputs, ["secretArns", "clientKeysSecretArn", "cacheAuthSecretArn",
                                     "clusterName", "serviceName"])
        found.secrets = {**out["secretArns"], CLIENT_KEYS: out["clientKeysSecretArn"],
                         CACHE_AUTH_TOKEN: out["cacheAuthSecretArn"]}
        found.cluster, found.service = out["clusterName"], out["serviceName"]
        found.region = region or out.get("region") or found.region
    return found


def find_service(ecs, s: Stack) -> Optional[dict]:
    try:
        found = ecs.describe_services(cluster=s.cluster, services=[s.service])
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") == "ClusterNotFoundException":
            return None
        raise
    services = [x for x in found.get("services", []) if x.get("status") == "ACTIVE"]
    return services[0] if services else None


def require_service(s: Stack) -> dict:
    service = find_service(_client("ecs", s.region), s)
    if service is None:
        raise Failure(f"ECS service {s.cluster}/{s.service} not found in {s.region}; "
                      "deploy the stack first (pulumi up)")
    return service


def without_value(s: Stack) -> list[str]:
    """The names of the service's secrets that have no current value (metadata only)."""
    sm = _client("secretsmanager", s.region)
    missing = []
    for name, secret_id in s.secrets.items():
        stages = sm.describe_secret(SecretId=secret_id).get("VersionIdsToStages", {})
        if not any("AWSCURRENT" in v for v in stages.values()):
            missing.append(name)
    return missing


HOW_TO_SET = {CLIENT_KEYS: "python -m ops.clientkeys add --stack {stack} <client>"}


def after_secret_change(s: Stack, timeout: int, sleep: Callable[[float], None] = time.sleep,
                        clock: Callable[[], float] = time.monotonic, log: Callable[[str], None] = print) -> None:
    """Roll the service out so every task reads the new value; wait until it is stable."""
    ecs = _client("ecs", s.region)
    if find_service(ecs, s) is None:
        log(f"no ECS service {s.cluster}/{s.service} yet: its first tasks will read this value")
        return
    missing = without_value(s)
    if missing:
        steps = "; ".join(HOW_TO_SET.get(n, "python -m ops.apikey put --stack {stack} --name " + n)
                          .format(stack=s.name) for n in missing)
        log(f"not rolling out yet: {', '.join(missing)} has no value, and tasks cannot start without it; "
            f"run {steps}")
        return
    roll_out(ecs, s, timeout, sleep, clock, log)


def roll_out(ecs, s: Stack, timeout: int, sleep: Callable[[float], None],
             clock: Callable[[], float], log: Callable[[str], None]) -> None:
    """A new deployment, so running tasks (and a rollout the circuit breaker stopped for want of
    a value) start again; then wait until that deployment, by the id UpdateService answered
    with, is the only one, COMPLETED, at full count.

    ECS is eventually consistent: DescribeServices right after UpdateService may still show the
    previous deployment as PRIMARY (a FAILED one, on a first deploy), or not yet show the new
    one. Only the new deployment's own state decides."""
    # The family's latest revision, not the service's current one: after a deployment the circuit
    # breaker rolled back for want of a value (a secret added to secrets.names, as a new upstream's
    # key), the service is back on the old revision while the stack declares the new one.
    answer = ecs.update_service(cluster=s.cluster, service=s.service, taskDefinition=s.service,
                                forceNewDeployment=True)
    started = primary_id(answer.get("service", {}))
    if started is None:
        raise Failure("UpdateService answered without a PRIMARY deployment to follow; the new value is "
                      f"stored: check the service with `python -m ops.verify --stack {s.name}`")
    log(f"forced a new deployment of {s.cluster}/{s.service}; waiting up to {timeout} s")
    deadline, seen = clock() + timeout, False
    while True:
        svc = find_service(ecs, s) or {}
        visible = any(d.get("id") == started for d in svc.get("deployments", []))
        if seen and not visible:
            raise Failure(f"deployment {started} was replaced by a newer one before it completed "
                          "(another deploy or rollout started); run the command again once it is done")
        seen = seen or visible
        if deployment_done(svc, started):
            log(f"{s.service} is stable: {svc['runningCount']} tasks run the new value")
            return
        if clock() >= deadline:
            raise Failure(f"{s.service} not stable after {timeout} s (running "
                          f"{svc.get('runningCount')} of {svc.get('desiredCount')}, "
                          f"{len(svc.get('deployments', []))} deployments); the new value is stored")
        sleep(10)


def primary_id(service: dict) -> Optional[str]:
    """The id of the PRIMARY deployment in a service description (UpdateService's answer)."""
    return next((d.get("id") for d in service.get("deployments", []) if d.get("status") == "PRIMARY"), None)


def deployment_done(svc: dict, started: Optional[str]) -> bool:
    """True once deployment `started` is the service's only one, COMPLETED, at full count;
    Failure once it failed or another deployment replaced it; False while it is on its way
    (or not visible yet)."""
    deployments = svc.get("deployments", [])
    mine = next((d for d in deployments if d.get("id") == started), None)
    if mine is None:
        return False  # not visible yet (eventual consistency); the caller's deadline bounds this
    if mine.get("rolloutState") == "FAILED":
        raise Failure(f"the new deployment failed ({mine.get('rolloutStateReason', '')}); "
                      "the circuit breaker rolls back to the old tasks, which keep the old value")
    if mine.get("status") != "PRIMARY":
        raise Failure(f"deployment {started} was replaced by a newer one before it completed "
                      "(another deploy or rollout started); run the command again once it is done")
    return (len(deployments) == 1 and mine.get("rolloutState") == "COMPLETED"
            and svc.get("runningCount") == svc.get("desiredCount"))
