"""The load: several clients calling the load balancer as applications do, each request recorded
with what its client saw: its outcome, which gateway took it (HAProxy's X-Backend), its latency and
time to first token, and whether a stream ended as a finished one ends or with an error event.

Outcomes: `ok`; `limited` (the gateway's own 429 for a client's limit); `abandoned` (the client
left a stream on purpose); `told` (a stream its upstream broke on purpose ended with the error
event the SDKs raise on, as it must); `failed`, with a cause: `status <n>`, `error event` (a stream ended
with one: the SDK raises), `truncated` (a stream ended with neither [DONE] nor an error event),
`connection`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Any, Optional

import aiohttp

LIMIT_CODES = ("rate_limit_exceeded", "insufficient_quota")
CACHED_PROMPTS = 6  # the repeated prompts: what the cache and its coalescing save


@dataclass
class Result:
    kind: str
    client: str
    started: float  # seconds since the soak began
    ended: float
    outcome: str
    cause: str = ""
    status: int = 0
    backend: str = ""
    ttft: Optional[float] = None
    request_id: str = ""

    @property
    def latency(self) -> float:
        return self.ended - self.started


def body(kind: str, rng: random.Random) -> dict[str, Any]:
    n = rng.randrange(10**6)
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Question {n}?"}]}
    if kind == "embed":
        return {"model": "text-embedding-3-small", "input": f"text {n}"}
    if kind == "cached":
        return {**chat, "temperature": 0, "messages": [{"role": "user", "content": f"FAQ {n % CACHED_PROMPTS}"}]}
    if kind == "stream":
        return {**chat, "stream": True}
    if kind == "slow":  # a reasoning model: its first token after a while
        step = {"kind": "stream", "first_delay": 1.0, "chunks": ["a", "b", "c"]}
        return {**chat, "stream": True, "metadata": {"fake_step": json.dumps(step)}}
    if kind == "broken":  # the upstream breaks the stream after its first event
        step = {"kind": "stream", "chunks": ["a", "b", "c"], "drop_after": 1}
        return {**chat, "stream": True, "metadata": {"fake_step": json.dumps(step)}}
    if kind == "abandon":
        step = {"kind": "stream", "delay": 0.2, "chunks": ["x"] * 20}
        return {**chat, "stream": True, "metadata": {"fake_step": json.dumps(step)}}
    return chat


class Load:
    def __init__(self, url: str, keys: dict[str, str], clock_zero: float, seed: int = 26):
        self.url, self.keys, self.zero = url, keys, clock_zero
        self.rng = random.Random(seed)  # noqa: S311 - a load's mix, not a secret
        self.results: list[Result] = []
        self.session: Optional[aiohttp.ClientSession] = None

    def now(self) -> float:
        return time.monotonic() - self.zero

    async def __aenter__(self) -> Load:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=False),
                                             timeout=aiohttp.ClientTimeout(total=120))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    async def one(self, kind: str, client: str) -> Result:
        assert self.session is not None
        doc = body(kind, self.rng)
        path = "/v1/embeddings" if kind == "embed" else "/v1/chat/completions"
        r = Result(kind, client, self.now(), 0.0, "failed")
        try:
            async with self.session.post(self.url + path, json=doc,
                                         headers={"Authorization": f"Bearer {self.keys[client]}"}) as resp:
                r.status, r.backend = resp.status, resp.headers.get("X-Backend", "")
                r.request_id = resp.headers.get("x-gateway-request-id", "")
                if doc.get("stream") and resp.status == 200:
                    await self._stream(resp, r, abandon=kind == "abandon")
                else:
                    data = await resp.read()
                    # A limit's refusal is the gateway's own: an upstream's 429 passed on names its upstream.
                    self._judge(r, resp.status, data, own="x-gateway-upstream" not in resp.headers)
        except (TimeoutError, aiohttp.ClientError) as e:
            r.outcome, r.cause = "failed", f"connection ({type(e).__name__})"
        r.ended = self.now()
        self.results.append(r)
        return r

    async def _stream(self, resp: aiohttp.ClientResponse, r: Result, abandon: bool) -> None:
        seen = b""
        async for chunk in resp.content.iter_any():
            if r.ttft is None and b"data: {" in chunk:
                r.ttft = self.now() - r.started
            seen += chunk
            if abandon and r.ttft is not None:
                resp.close()  # the client leaves mid-stream
                r.outcome = "abandoned"
                return
        if seen.rstrip().endswith(b"data: [DONE]"):
            r.outcome = "ok"
        elif b'data: {"error"' in seen:
            told = r.kind == "broken" and b"upstream_stream_interrupted" in seen
            r.outcome, r.cause = ("told", "") if told else ("failed", "error event")
        else:
            r.outcome, r.cause = "failed", "truncated"

    @staticmethod
    def _judge(r: Result, status: int, data: bytes, own: bool = True) -> None:
        if status == 200:
            r.outcome = "ok"
            return
        try:
            code = json.loads(data)["error"].get("code")
        except (ValueError, KeyError, TypeError, AttributeError):
            code = None
        if status == 429 and code in LIMIT_CODES and r.backend and own:
            r.outcome = "limited"
        else:
            r.outcome, r.cause = "failed", f"status {status}" + (f" {code}" if code else "")

    async def clients(self, until: float, workers: int, max_requests: int, mix: dict[str, int]) -> None:
        """`workers` applications, each sending one request after another until `until` (seconds
        since the start) or `max_requests` in all."""
        kinds = list(mix)
        weights = [mix[k] for k in kinds]
        sent = 0

        async def worker(i: int) -> None:
            nonlocal sent
            client = ("web-app", "batch")[i % 2]
            while self.now() < until and sent < max_requests:
                sent += 1
                await self.one(self.rng.choices(kinds, weights)[0], client)

        await asyncio.gather(*(worker(i) for i in range(workers)))

    async def steady(self, client: str, until: float, per_second: float) -> None:
        """One client at a steady pace (the limited one), well under its limit."""
        sent = []
        while self.now() < until:
            sent.append(asyncio.ensure_future(self.one("chat", client)))
            await asyncio.sleep(1 / per_second)
        await asyncio.gather(*sent)

    async def burst(self, client: str, n: int) -> None:
        await asyncio.gather(*(self.one("chat", client) for _ in range(n)))
