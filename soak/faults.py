"""The ways production breaks, each done to the cluster the way AWS or the provider does it."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass, field
from typing import Optional

from soak.cluster import Cluster, Slot
from soak.load import Load

LONG_STREAMS = 8  # started before a deploy, over the targets in rotation (the old one among them)


@dataclass
class Fault:
    name: str
    at: float  # seconds since the soak began
    seconds: float = 0.0  # how long it lasts (0: a moment)
    started: Optional[float] = None
    ended: Optional[float] = None
    detail: dict[str, object] = field(default_factory=dict)


async def replace(c: Cluster, old: Slot) -> Slot:
    """A new task in the spare slot, registered once healthy (ECS starts it before the old one
    leaves, minimumHealthyPercent 100)."""
    new = c.spare()
    c.start_gateway(new)
    await c.wait_up(new)
    c.set_state(new, "ready")
    return new


async def rolling_deploy(c: Cluster, old: Slot, deregistration: float, load: Load, f: Fault) -> None:
    """ECS's deployment of one task: the replacement registers; the old target is deregistered
    (drain: no new requests) for the deregistration delay, then taken out (maint, health checks
    stop) and sent SIGTERM; the gateway drains what it still has and exits. Streams that outlast
    the delay are started first, before the replacement is there (least connections would send
    them all to it), so that the old task has some to finish as it drains."""
    longer = [asyncio.ensure_future(load.one("long", "web-app", deregistration + 3)) for _ in range(LONG_STREAMS)]
    await replace(c, old)
    c.set_state(old, "drain")
    await asyncio.sleep(deregistration)
    c.set_state(old, "maint")
    assert old.gateway is not None
    f.detail.update(slot=old.name, in_flight_at_sigterm=c.flying().get(old.name, 0))
    old.gateway.proc.send_signal(signal.SIGTERM)
    await asyncio.gather(*longer)


async def kill(c: Cluster, noticed_after: float, f: Fault, zero: float) -> None:
    """A task in service that dies at once (SIGKILL: an OOM kill, a host failure) with requests in
    flight: the target with the most, waited for (a few seconds at most) if none has any; ECS
    starts a replacement when it notices."""
    deadline = time.monotonic() + 5
    while True:
        flying = c.flying()
        victim = max(c.in_rotation(), key=lambda s: flying.get(s.name, 0))
        if flying.get(victim.name, 0) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    assert victim.gateway is not None
    victim.gateway.proc.kill()
    f.detail.update(slot=victim.name, killed_at=time.monotonic() - zero,
                    in_flight_by_the_load_balancer=flying.get(victim.name, 0))
    await asyncio.sleep(noticed_after)
    c.set_state(victim, "maint")
    await replace(c, victim)


async def valkey_failover(c: Cluster) -> None:
    """The primary's node fails; ElastiCache promotes the replica and moves the primary endpoint.
    Connections to the old primary end; writes not yet replicated are lost (asynchronous
    replication)."""
    assert c.primary is not None and c.replica is not None and c.proxy is not None
    c.primary.proc.kill()
    c.replica.client().execute_command("REPLICAOF", "NO", "ONE")
    c.primary, c.replica = c.replica, None
    c.proxy.target = c.primary.port
    c.proxy.cut()


async def valkey_down(c: Cluster, seconds: float) -> None:
    """The endpoint does not answer for a while (a network partition): connections open, commands
    sent, and no answer; the gateway's timeouts find it out."""
    assert c.proxy is not None
    c.proxy.partitioned = True
    await asyncio.sleep(seconds)
    c.proxy.partitioned = False


async def upstream_storm(c: Cluster, seconds: float) -> None:
    """The default upstream answers every request 429 (a project's rate limit exhausted)."""
    fake = c.upstreams["default"].fake
    fake.always = {"kind": "status", "status": 429, "headers": {"retry-after": "1"},
                   "body": {"error": {"message": "Rate limit reached", "type": "requests",
                                      "code": "rate_limit_exceeded"}}}
    await asyncio.sleep(seconds)
    fake.always = None


async def stall(c: Cluster, seconds: float, first_token_after: float) -> None:
    """Every upstream sends nothing for longer than the keepalive interval before it answers (a
    model thinking; every upstream, so no failover hides it)."""
    for up in c.upstreams.values():
        up.fake.always = {"kind": "slow", "delay": first_token_after}
    await asyncio.sleep(seconds)
    for up in c.upstreams.values():
        up.fake.always = None
