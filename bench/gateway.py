"""What the gateway adds: the same requests straight to a fake upstream and through the gateway,
side by side in one run, and what its cache saves.

    python bench/gateway.py [--rounds 5]        # or: make bench-gateway

Pinned with taskset so the processes share the two cores the same way in every path: the load
generator (this process) on CPU 0; the fake upstream, the gateway and the cache server (Valkey or
Redis with TLS and AUTH, as ElastiCache runs it) on CPU 1. Each round measures, in alternating
order: direct and through the gateway (a request the gateway does not cache), non-streamed at
concurrency 1 (latency) and 16 (throughput), streamed (time to the first event); then cache hits,
and cache misses (`Cache-Control: no-cache`: lookup, upstream, fill). The report is the median
over rounds. The gateway's CPU seconds per request (from /proc) give its capacity per vCPU,
which is what `service.requestsPerTarget` should be set from.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import valkey_server  # noqa: E402
from tests.gateway_process import UPSTREAM_KEY, client_keys, free_port  # noqa: E402

# Sampled (no temperature 0): the gateway forwards it without the cache.
BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}'
STREAM = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}],"stream":true}'
CACHED = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}],"temperature":0}'
# Through a route: an alias with one target, under another name (the body is written again for it).
ROUTED = b'{"model":"chat-default","messages":[{"role":"user","content":"Say hello"}]}'
ROUTES = '{"chat-default": [{"upstream": "default", "model": "gpt-4o-mini"}]}'


def spawn(cpu: int, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, *args], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_up(url: str) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            try:
                async with s.get(url) as r:
                    await r.read()
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


async def latencies(url: str, headers: dict, body: bytes, n: int, c: int, first_event: bool = False):
    lat: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c), headers=headers) as s:
        async def one() -> float:
            t = time.perf_counter()
            async with s.post(url, data=body) as r:
                if first_event:
                    await r.content.readuntil(b"\n\n")
                    took = time.perf_counter() - t
                    await r.read()
                    return took
                await r.read()
                return time.perf_counter() - t

        for _ in range(min(200, n)):  # warm the pools
            await one()

        async def worker(k: int) -> None:
            for _ in range(k):
                lat.append(await one())

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(n // c) for _ in range(c)))
        elapsed = time.perf_counter() - t0
    lat.sort()
    return {"p50": lat[len(lat) // 2] * 1e3, "p95": lat[int(len(lat) * 0.95)] * 1e3, "rps": len(lat) / elapsed}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def round_(direct: str, through: str, key: str, gateway_pid: int, reverse: bool, routed: str,
                 routed_pid: int) -> dict:
    paths = [("direct", direct, {"Authorization": f"Bearer {UPSTREAM_KEY}"}),
             ("gateway", through, {"Authorization": f"Bearer {key}"})]
    if reverse:
        paths.reverse()
    out: dict = {}
    for name, base, headers in paths:
        h = {**headers, "Content-Type": "application/json"}
        url = f"{base}/v1/chat/completions"
        out[(name, "c1")] = await latencies(url, h, BODY, 2000, 1)
        before = cpu_seconds(gateway_pid)
        out[(name, "c16")] = await latencies(url, h, BODY, 6000, 16)
        if name == "gateway":
            out["cpu_per_request_ms"] = (cpu_seconds(gateway_pid) - before) / 6000 * 1e3
        out[(name, "stream")] = await latencies(url, h, STREAM, 500, 1, first_event=True)
    h = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    url = f"{through}/v1/chat/completions"
    out[("hit", "c1")] = await latencies(url, h, CACHED, 2000, 1)
    out[("hit", "c16")] = await latencies(url, h, CACHED, 6000, 16)
    out[("miss", "c1")] = await latencies(url, {**h, "Cache-Control": "no-cache"}, CACHED, 1000, 1)
    # The same gateway code with a route (GATEWAY_ROUTES), side by side with the plain path.
    for name, base, body, pid in [("plain", through, BODY, gateway_pid), ("routed", routed, ROUTED, routed_pid)][
            ::-1 if reverse else 1]:
        u = f"{base}/v1/chat/completions"
        out[(name, "c1")] = await latencies(u, h, body, 2000, 1)
        before = cpu_seconds(pid)
        await latencies(u, h, body, 6000, 16)
        out[f"{name}_cpu_ms"] = (cpu_seconds(pid) - before) / 6000 * 1e3
    return out


@dataclass
class Bench:
    """What every benchmark runs against, pinned: the cache server and the fake upstream on CPU 1,
    the environment a gateway needs to use them, and the processes to stop at the end."""

    env: dict[str, str]
    key: str
    upstream_port: int
    procs: list[subprocess.Popen] = field(default_factory=list)

    def spawn(self, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        proc = spawn(1, args, env)
        self.procs.append(proc)
        return proc


@contextlib.asynccontextmanager
async def bench(prefix: str) -> AsyncIterator[Bench]:
    os.sched_setaffinity(0, {0})
    up_port = free_port()
    doc, keys = client_keys("bench")
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    cache = valkey_server.start(folder)
    subprocess.run(["taskset", "-cp", "1", str(cache.proc.pid)], check=True, capture_output=True)
    b = Bench({"HOST": "127.0.0.1", "OPENAI_API_KEY": UPSTREAM_KEY, "CLIENT_KEYS": doc,
               "OPENAI_BASE_URL": f"http://127.0.0.1:{up_port}/v1", **cache.env()}, keys["bench"], up_port)
    b.spawn(["-m", "tests.fake_upstream", str(up_port)], {})
    try:
        await wait_up(f"http://127.0.0.1:{up_port}/_requests")
        yield b
    finally:
        for p in b.procs:
            p.send_signal(signal.SIGINT)  # at once (SIGTERM drains, waiting for a quiet spell)
            p.wait()
        cache.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def main(rounds: int) -> None:
    gw_port, routed_port = free_port(), free_port()
    async with bench("bench-cache-") as b:
        gateway = b.spawn(["-m", "gateway"], {**b.env, "PORT": str(gw_port)})
        routed = b.spawn(["-m", "gateway"], {**b.env, "PORT": str(routed_port), "GATEWAY_ROUTES": ROUTES})
        direct, through = f"http://127.0.0.1:{b.upstream_port}", f"http://127.0.0.1:{gw_port}"
        via_route = f"http://127.0.0.1:{routed_port}"
        await wait_up(f"{through}/healthz")
        await wait_up(f"{via_route}/healthz")
        results = [await round_(direct, through, b.key, gateway.pid, i % 2 == 1, via_route, routed.pid)
                   for i in range(rounds)]
    report(results)


def report(results: list[dict]) -> None:
    med = lambda path, kind, stat: statistics.median(r[(path, kind)][stat] for r in results)  # noqa: E731
    print(f"gateway benchmark: {len(results)} rounds (medians); load generator on CPU 0, "
          "fake upstream and gateway on CPU 1")
    print(f"{'':28}{'direct':>10}{'gateway':>10}{'added':>12}")
    for kind, label in (("c1", "non-streamed, c=1"), ("stream", "streamed, first event")):
        for stat in ("p50", "p95"):
            d, g = med("direct", kind, stat), med("gateway", kind, stat)
            print(f"{label + ' ' + stat:28}{d:9.3f} ms{g:7.3f} ms{g - d:+9.3f} ms")
    d, g = med("direct", "c16", "rps"), med("gateway", "c16", "rps")
    print(f"{'non-streamed, c=16 req/s':28}{d:10.0f}{g:10.0f}{'ratio ' + format(g / d, '.2f'):>12}")
    print("through the gateway's cache (Valkey-compatible server with TLS and AUTH):")
    for kind, stat, label in (("hit", "p50", "cache hit, c=1 p50"), ("hit", "p95", "cache hit, c=1 p95"),
                              ("miss", "p50", "cache miss, c=1 p50"), ("miss", "p95", "cache miss, c=1 p95")):
        print(f"{label:28}{'':10}{med(kind, 'c1', stat):7.3f} ms")
    hits = med("hit", "c16", "rps")
    print(f"{'cache hit, c=16 req/s':28}{'':10}{hits:10.0f}{'  vs direct ' + format(hits / d, '.2f'):>14}")
    cpu = statistics.median(r["cpu_per_request_ms"] for r in results)
    print(f"gateway CPU per request: {cpu:.3f} ms, about {1000 / cpu:.0f} requests/s per vCPU")
    plain, routed = med("plain", "c1", "p50"), med("routed", "c1", "p50")
    cpu_plain = statistics.median(r["plain_cpu_ms"] for r in results)
    cpu_routed = statistics.median(r["routed_cpu_ms"] for r in results)
    print(f"a route with one target (an alias, body written again): c=1 p50 {plain:.3f} -> {routed:.3f} ms "
          f"({routed - plain:+.3f} ms); CPU per request {cpu_plain:.3f} -> {cpu_routed:.3f} ms "
          f"({cpu_routed - cpu_plain:+.3f} ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    uvloop.run(main(parser.parse_args().rounds))
