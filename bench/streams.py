"""Streams at the floor (issue 27): the CPU a relayed event costs in the gateway, against a bare
relay (bench/bare_relay.py) in the same run, same pinning, same fake upstream.

    python bench/streams.py [--rounds 3]        # part of `make bench-gateway`

Pinned as bench/gateway.py pins: the load generator on CPU 0; the fake upstream, the gateway, the
bare relay and the cache server on CPU 1. For 20, 300 and 1,000 events per stream, with and
without `stream_options.include_usage` (the gateway asks for usage either way), with and without
the cache writing the stream (`temperature: 0` with `Cache-Control: no-cache`: no read, a write),
at concurrency 1 and 16: each path's CPU seconds per stream (from /proc), the gateway's CPU per
event above the relay's, and its ratio. Then, with the upstream pacing its events 1 ms apart, the
time to the first byte and the gap between events as the client sees them (p50, p99), both paths.
Medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gateway import bench, cpu_seconds, wait_up  # noqa: E402
from tests.gateway_process import free_port  # noqa: E402

EVENTS = (20, 300, 1000)


def body(events: int, usage: bool, cached: bool, paced: bool = False) -> bytes:
    step = {"kind": "stream", "chunks": [f"w{i} " for i in range(events)], "delay": 0.001 if paced else 0}
    doc = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}], "stream": True,
           "metadata": {"fake_step": json.dumps(step)}}
    if usage:
        doc["stream_options"] = {"include_usage": True}
    if cached:
        doc["temperature"] = 0
    return json.dumps(doc).encode()


async def streams(url: str, headers: dict, data: bytes, n: int, c: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c), headers=headers) as s:
        async def worker(k: int) -> None:
            for _ in range(k):
                async with s.post(url, data=data) as r:
                    await r.read()
        await asyncio.gather(*(worker(n // c) for _ in range(c)))


async def gaps(url: str, headers: dict, data: bytes, n: int) -> dict:
    """Time to the first byte and the gaps between events, as a client reads them (c=1)."""
    first, between = [], []
    async with aiohttp.ClientSession(headers=headers) as s:
        for _ in range(n):
            t = time.perf_counter()
            async with s.post(url, data=data) as r:
                last = None
                async for line in r.content:
                    now = time.perf_counter()
                    if not line.startswith(b"data: {"):
                        continue
                    if last is None:
                        first.append(now - t)
                    else:
                        between.append(now - last)
                    last = now
    first.sort()
    between.sort()
    return {"ttfb_ms": statistics.median(first) * 1e3, "gap_p50_ms": between[len(between) // 2] * 1e3,
            "gap_p99_ms": between[int(len(between) * 0.99)] * 1e3}


async def round_(gw: str, relay: str, key: str, pids: dict[str, int]) -> dict:
    out: dict = {}
    paths = {"relay": (relay, {"Authorization": "Bearer x"}), "gateway": (gw, {"Authorization": f"Bearer {key}"})}
    for events in EVENTS:
        n = max(100, 60_000 // events)  # a second or more of CPU per path: /proc counts in 10 ms ticks
        for usage in (True, False):
            for cached in (False, True):
                for c in (1, 16):
                    for name, (base, headers) in paths.items():
                        if cached and name == "relay":
                            continue  # no cache in the relay: the gateway's cached rows compare with its floor
                        h = {**headers, "Content-Type": "application/json"}
                        if cached:
                            h["Cache-Control"] = "no-cache"  # no read, a write: every stream is recorded
                        before = cpu_seconds(pids[name])
                        await streams(f"{base}/v1/chat/completions", h, body(events, usage, cached), n, c)
                        out[(name, events, usage, cached, c)] = (cpu_seconds(pids[name]) - before) / n
    for name, (base, headers) in paths.items():
        h = {**headers, "Content-Type": "application/json"}
        out[(name, "paced")] = await gaps(f"{base}/v1/chat/completions", h, body(300, True, False, paced=True), 10)
    return out


async def main(rounds: int) -> None:
    gw_port, relay_port = free_port(), free_port()
    async with bench("bench-streams-") as b:
        gateway = b.spawn(["-m", "gateway"], {**b.env, "PORT": str(gw_port)})
        relay = b.spawn(["bench/bare_relay.py", str(relay_port), f"http://127.0.0.1:{b.upstream_port}"], {})
        gw, via = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{relay_port}"
        await wait_up(f"{gw}/healthz")
        await wait_up(f"{via}/v1/chat/completions")
        results = [await round_(gw, via, b.key, {"gateway": gateway.pid, "relay": relay.pid})
                   for _ in range(rounds)]
    report(results)


def report(results: list[dict]) -> None:
    med = lambda key: statistics.median(r[key] for r in results)  # noqa: E731
    print(f"stream benchmark: {len(results)} rounds (medians); CPU per stream in ms; "
          "per event: the gateway's CPU above the bare relay's, in µs")
    print(f"{'events':>6} {'usage':>6} {'cache':>6} {'c':>3} {'relay':>8} {'gateway':>8} {'ratio':>6} "
          f"{'µs/event above':>15}")
    for events in EVENTS:
        for usage in (True, False):
            for cached in (False, True):
                for c in (1, 16):
                    floor = med(("relay", events, usage, False, c)) * 1e3
                    gw = med(("gateway", events, usage, cached, c)) * 1e3
                    above = (gw - floor) / events * 1e3
                    print(f"{events:>6} {'yes' if usage else 'no':>6} {'write' if cached else '-':>6} {c:>3} "
                          f"{floor:>8.3f} {gw:>8.3f} {gw / floor:>6.2f} {above:>15.1f}")
    print("the per-event path alone: CPU per event from 300 to 1,000 events (the fixed per-request cost cancels)")
    def slope(name: str, usage: bool, cache: bool, c: int) -> float:
        return (med((name, 1000, usage, cache, c)) - med((name, 300, usage, cache, c))) / 700 * 1e6
    for usage in (True, False):
        for cached in (False, True):
            for c in (1, 16):
                floor, gw = slope("relay", usage, False, c), slope("gateway", usage, cached, c)
                print(f"  usage {'yes' if usage else 'no':3} cache {'write' if cached else '-':5} c={c:<3} "
                      f"relay {floor:5.2f} µs/event, gateway {gw:5.2f} µs/event, ratio {gw / floor:.2f}")
    for name in ("relay", "gateway"):
        paced = {k: statistics.median(r[(name, "paced")][k] for r in results) for k in results[0][(name, "paced")]}
        print(f"{name:8} 300 events 1 ms apart, c=1: first byte {paced['ttfb_ms']:.2f} ms, between events "
              f"p50 {paced['gap_p50_ms']:.3f} ms, p99 {paced['gap_p99_ms']:.3f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    uvloop.run(main(parser.parse_args().rounds))
