"""`make soak`: the service under load while it breaks the ways production breaks, and what was lost.

    python -m soak                    # about 3 minutes: every fault, the figures README reports
    python -m soak --short            # about 12 s: fewer faults (the suite runs this one)
    python -m soak --json soak.json   # the report as JSON too

On 127.0.0.1 only, bounded in time and in requests. The gateways run with the environment the
staging task definition gives its container (synthesized offline, with a second upstream and a
route per model, so a 429 storm on one upstream fails over to the other); see soak/cluster.py for
the stand-ins. Exits 1 when an invariant does not hold.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from gateway.limits import Price, estimate
from soak import faults as f
from soak.cluster import Cluster, remove, workdir
from soak.load import Load, Result, body
from soak.report import analyse, text
from tests.gateway_process import client_keys

LIMIT = 60  # the limited client's requests per minute
CAP = 3  # the capped client's requests in flight at once
FITS = 4  # the spender's daily budget: as many of the spend race's reservations, and a half
MIX = {"chat": 30, "stream": 24, "stream_usage": 6, "embed": 10, "cached": 15, "slow": 5, "abandon": 7,
       "broken": 3}


@dataclass(frozen=True)
class Plan:
    seconds: float
    workers: int
    max_requests: int
    deregistration: float  # the target group's deregistration delay
    faults: tuple[tuple[str, float, float], ...]  # (name, at, lasting)
    drain_quiet: Optional[float] = None  # GATEWAY_DRAIN_QUIET_SECONDS, when not the task's


# The bursts for the limited client come before the failover (after it, in its minute, its limit is
# not checked: report.limits) or in the store's outage (each process holds the limit alone).
FULL = Plan(180, 12, 60_000, 60, (("rolling deploy", 15, 0), ("sigkill", 45, 0), ("concurrency race", 55, 0),
                                  ("spend race", 60, 0), ("valkey failover", 70, 0), ("valkey down", 90, 10),
                                  ("burst in the outage", 93, 0), ("upstream 429 storm", 115, 10),
                                  ("first token stall", 135, 10), ("limit burst", 160, 0)))
SHORT = Plan(6.0, 6, 2_000, 0.5, (
    ("rolling deploy", 0.8, 0), ("limit burst", 1.5, 0), ("spend race", 1.8, 0), ("upstream 429 storm", 2.2, 1),
    ("concurrency race", 2.6, 0), ("sigkill", 3.7, 0), ("valkey failover", 4.3, 0), ("valkey down", 4.9, 0.8),
    ("burst in the outage", 5.1, 0)), drain_quiet=0.3)


def routed_staging() -> dict[str, Any]:
    """Staging's config with a second project as a second upstream and a route per model."""
    from infra.stack_files import read_stack_file

    raw, _ = read_stack_file("staging")
    llm = dict(raw["llm-service:llm"])
    llm["upstreams"] = {"backup": {"baseUrl": "https://api.openai.com/v1", "secretName": "backup-openai-key"}}
    llm["routes"] = {m: [{"model": m}, {"upstream": "backup", "model": m}]
                     for m in ("gpt-4o-mini", "text-embedding-3-small")}
    raw["llm-service:llm"] = llm
    raw["llm-service:secrets"] = {**raw["llm-service:secrets"], "names": ["openai-api-key", "backup-openai-key"]}
    return raw


def task_environment(synthesis: Any = None) -> dict[str, str]:
    """The container's environment in the routed staging task definition; given staging's own
    synthesis (the suite's), the routing variables the program adds for the routed config."""
    if synthesis is None:
        from offline.synth import synthesize

        synthesis = synthesize("staging", routed_staging(), set())
    task = synthesis.one("aws:ecs/taskDefinition:TaskDefinition")
    (app,) = json.loads(task.inputs["containerDefinitions"])
    env = {e["name"]: e["value"] for e in app["environment"]}
    if "GATEWAY_ROUTES" not in env:
        from infra.config import load
        from infra.program import routing_environment

        env.update(routing_environment(load(routed_staging()).llm))
    return env


async def run_faults(c: Cluster, plan: Plan, load: Load, done: list[f.Fault], keepalive: float) -> None:
    """Each fault at its time, whether or not the one before has ended (a deploy's deregistration
    delay outlasts the faults that follow it)."""
    await asyncio.gather(*(one_fault(c, plan, load, done, keepalive, *fault) for fault in plan.faults))


async def one_fault(c: Cluster, plan: Plan, load: Load, done: list[f.Fault], keepalive: float,
                    name: str, at: float, lasting: float) -> None:
    await asyncio.sleep(max(0.0, at - load.now()))
    fault = f.Fault(name, at, lasting, started=load.now())
    if name == "rolling deploy":
        await f.rolling_deploy(c, c.in_rotation()[0], plan.deregistration, load, fault)
    elif name == "sigkill":
        await f.kill(c, 1.5, fault, load.zero)
    elif name == "valkey failover":
        await f.valkey_failover(c)
    elif name == "valkey down":
        await f.valkey_down(c, lasting)
    elif name == "upstream 429 storm":
        await f.upstream_storm(c, lasting)
    elif name == "first token stall":
        await f.stall(c, lasting, keepalive * 1.5)
    elif name == "limit burst":
        await load.burst("limited", 2 * LIMIT)
    elif name == "burst in the outage":  # more than one process may admit alone: each must refuse some
        await load.burst("limited", 4 * LIMIT)
    elif name == "concurrency race":
        race(fault, await load.burst("capped", 4 * CAP, "held"), CAP)
    elif name == "spend race":
        race(fault, await load.burst("spender", 4 * FITS, "fixed"), FITS)
    fault.ended = load.now()
    done.append(fault)


def race(fault: f.Fault, results: list[Result], fits: int) -> None:
    """What a burst sent at once got; of it, what was admitted before the first admitted one
    ended (after, a place or budget given back by it may be taken again, as it should)."""
    ok = [r for r in results if r.outcome == "ok"]
    first_end = min((r.ended for r in ok), default=0.0)
    admitted = [r.request_id for r in ok if r.started < first_end]
    fault.detail.update(client=results[0].client, sent=len(results), fits=fits, admitted=len(admitted),
                        admitted_ids=admitted, refused=sum(1 for r in results if r.outcome == "limited"))


def reservation(env: dict[str, str]) -> Callable[[Result], int]:
    """What the gateway reserves of a client's day spend before a request (gateway/limits.py)."""
    prices = json.loads(env["GATEWAY_PRICES"])
    out = int(env.get("GATEWAY_OUTPUT_TOKENS_ESTIMATE", "1000"))

    def nano(r: Result) -> int:
        p = prices.get("text-embedding-3-small" if r.route == "embeddings" else "gpt-4o-mini",
                       {"inputPerMillion": 0, "outputPerMillion": 0})
        return Price(p["inputPerMillion"], p["outputPerMillion"]).nano(*estimate(r.route, {}, r.size, out))
    return nano


async def soak(plan: Plan, env: dict[str, str], folder: Path) -> dict[str, Any]:
    if plan.drain_quiet is not None:
        env = {**env, "GATEWAY_DRAIN_QUIET_SECONDS": str(plan.drain_quiet)}
    reserve = reservation(env)
    rng = random.Random(0)  # noqa: S311 - a body's size, not a secret
    fixed = Result("fixed", "spender", 0, 0, "", size=len(json.dumps(body("fixed", rng)).encode()))
    no_limits = {"requestsPerMinute": 0, "tokensPerMinute": 0, "usdPerDay": 0, "concurrentRequests": 0}
    doc, keys = client_keys("web-app", "batch", "limited", "capped", "spender", limits={
        "web-app": no_limits, "batch": {**no_limits, "usdPerDay": 1000, "tokensPerMinute": 50_000_000},
        "limited": {**no_limits, "requestsPerMinute": LIMIT},
        "capped": {**no_limits, "concurrentRequests": CAP},
        "spender": {**no_limits, "usdPerDay": (FITS + 0.5) * reserve(fixed) / 1e9}})
    c = Cluster(folder, env, keys, doc)
    done: list[f.Fault] = []
    wall_zero = time.time()
    try:
        # The load balancer's idle timeout is the stack's (the gateway's read timeout is set to it).
        await c.start(idle_timeout=int(env.get("GATEWAY_READ_TIMEOUT_SECONDS", "600")))
        wall_zero = time.time()
        async with Load(c.url, keys, time.monotonic()) as load:
            keepalive = float(env.get("GATEWAY_SSE_KEEPALIVE_SECONDS", "15"))
            await asyncio.gather(
                load.clients(plan.seconds, plan.workers, plan.max_requests, MIX),
                load.steady("limited", plan.seconds, LIMIT / 120),
                run_faults(c, plan, load, done, keepalive))
            # What a process owes is paid (within about two seconds of a failure: a second's
            # skip, then the next payment's second), and the last lines reach the logs.
            await c.paid(keys["web-app"])
            await asyncio.sleep(0.3)
            records = [r for up in c.upstreams.values() for r in up.fake.requests]
            done.sort(key=lambda fault: fault.at)
            return analyse(load.results, done, c.logs, records, json.loads(env["GATEWAY_PRICES"]), LIMIT,
                           wall_zero, load.zero, c.stored_spend(env["GATEWAY_SERVICE"]), reserve, keepalive)
    finally:
        await c.stop()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__.split("\n")[0])
    parser.add_argument("--short", action="store_true", help="about 15 s, fewer faults (the suite's)")
    parser.add_argument("--json", type=Path, help="write the report here as JSON too")
    args = parser.parse_args(argv)
    folder = workdir()
    try:
        report = asyncio.run(soak(SHORT if args.short else FULL, task_environment(), folder))
    finally:
        remove(folder)
    print(text(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if not any(report["invariants"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
