"""Invalidate the gateway's cache: for when the information behind its answers changes.

    python -m ops.cache invalidate --stack staging                 # every client's entries
    python -m ops.cache invalidate --stack staging --client web-app

Valkey sits in isolated subnets, out of an operator's reach, so this runs
`python -m gateway.cachectl invalidate` as a one-off ECS task with the service's own task
definition, subnets and security group (the same image, environment and secrets), waits for it to
stop and reports its exit code. Entries are not deleted: a namespace version goes up, so every
older entry becomes unreachable at once and expires by its TTL. It needs ecs:DescribeServices,
ecs:RunTask, ecs:DescribeTasks and iam:PassRole on the task's two roles.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from ops import rollout
from ops.apikey import explain_aws
from ops.boto import client as _client
from ops.rollout import Failure, Stack

STARTED_BY = "llm-service-cache-invalidate"


def command(client: Optional[str]) -> list[str]:
    return ["python", "-m", "gateway.cachectl", "invalidate", *(["--client", client] if client else [])]


def invalidate(s: Stack, client: Optional[str], timeout: int, sleep: Callable[[float], None] = time.sleep,
               clock: Callable[[], float] = time.monotonic, log: Callable[[str], None] = print) -> str:
    service = rollout.require_service(s)
    network = service.get("networkConfiguration")
    if not network:
        raise Failure(f"{s.service} has no network configuration to run a task with")
    ecs = _client("ecs", s.region)
    started = ecs.run_task(
        cluster=s.cluster, taskDefinition=service["taskDefinition"], count=1, startedBy=STARTED_BY,
        # On-demand: a one-off task should not wait for, or lose, Spot capacity.
        capacityProviderStrategy=[{"capacityProvider": "FARGATE", "weight": 1}],
        networkConfiguration=network,
        overrides={"containerOverrides": [{"name": "app", "command": command(client)}]},
    )
    if started.get("failures") or not started.get("tasks"):
        reasons = "; ".join(f"{f.get('arn', '')} {f.get('reason')}" for f in started.get("failures", []))
        raise Failure(f"the task did not start: {reasons or 'no task returned'}")
    task_arn = started["tasks"][0]["taskArn"]
    log(f"started {task_arn.rsplit('/', 1)[-1]} in {s.cluster}; waiting up to {timeout} s")
    deadline = clock() + timeout
    while True:
        task = ecs.describe_tasks(cluster=s.cluster, tasks=[task_arn])["tasks"][0]
        if task.get("lastStatus") == "STOPPED":
            app = next((c for c in task.get("containers", []) if c.get("name") == "app"), {})
            if app.get("exitCode") == 0:
                who = f"client {client}'s" if client else "every client's"
                return f"invalidated {who} cache entries"
            raise Failure(f"the task stopped with exit code {app.get('exitCode')}: "
                          f"{app.get('reason') or task.get('stoppedReason', 'no reason given')}")
        if clock() >= deadline:
            raise Failure(f"the task {task_arn.rsplit('/', 1)[-1]} has not stopped after {timeout} s "
                          f"(status {task.get('lastStatus')}); look at its logs in the service's log group")
        sleep(5)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.cache", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["invalidate"])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--client", help="only this client's entries")
    parser.add_argument("--outputs", type=Path, help="`pulumi stack output --json` saved to a file")
    parser.add_argument("--region", help="override the stack's region")
    parser.add_argument("--timeout", type=int, default=300, help="seconds to wait for the task")
    args = parser.parse_args(argv)

    def act() -> int:
        s = rollout.resolve(args.stack, args.outputs, args.region)
        print(invalidate(s, args.client, args.timeout, log=lambda m: print(m, file=sys.stderr, flush=True)))
        return 0

    return rollout.run(act, lambda e: explain_aws(e, f"the ECS service of {args.stack}", args.stack))

if __name__ == "__main__":
    sys.exit(main())
