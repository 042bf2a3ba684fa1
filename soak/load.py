"""The load: several clients calling the load balancer as applications do, each request recorded
with what its client saw: its outcome, which gateway took it (HAProxy's X-Backend), its latency and
time to first token, and whether a stream ended as a finished one ends or with an error event.

Outcomes: `ok`; `limited` (the gateway's own 429 for a client's limit); `abandoned` (the client
left a stream on purpose); `told` (a stream its upstream broke on purpose ended with the error
event the SDKs raise on, as it must); `failed`, with a cause: `status <n>`, `error event` (a stream ended
with one: the SDK raises), `truncated` (a stream ended with neither [DONE] nor an error event),
`malformed: ...` (a stream a client could misread: see `stream_verdict`), `connection`.
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
    silence: float = 0.0  # a stream's longest wait for its next bytes (keepalives count)
    request_id: str = ""
    route: str = "chat.completions"
    size: int = 0  # the request body's bytes (what the gateway's reservation is estimated from)

    @property
    def latency(self) -> float:
        return self.ended - self.started


def body(kind: str, rng: random.Random, seconds: float = 0.0) -> dict[str, Any]:
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
    if kind == "long":  # a stream of an event a second for `seconds`: in flight through a deploy
        step = {"kind": "stream", "delay": 1.0, "chunks": ["x"] * max(1, round(seconds))}
        return {**chat, "stream": True, "metadata": {"fake_step": json.dumps(step)}}
    if kind == "stream_usage":  # the client asks for the usage chunk: exactly one must come
        return {**chat, "stream": True, "stream_options": {"include_usage": True}}
    if kind in ("held", "fixed"):
        # A race's request: answered after a second, so every one of a burst is admitted or refused
        # before the first is settled; "fixed" is always the same size (its reservation known).
        step = {"kind": "slow", "delay": 1.0}
        return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Race {n:06d}"}],
                "metadata": {"fake_step": json.dumps(step)}}
    return chat


def stream_verdict(seen: bytes, asked_usage: bool) -> str:
    """`done`, `error` (ended with an error event) or `truncated` for a stream a client reads as
    the SDKs do; `malformed: <why>` for one it could misread: a keepalive comment inside an event,
    an event after `[DONE]` or after the error event, a usage chunk it did not ask for, or not
    exactly one when it did. Events are read whole, not just the stream's tail."""
    *events, tail = seen.replace(b"\r\n", b"\n").split(b"\n\n")
    ended, usage = "", 0
    for event in events:
        lines = [line for line in event.split(b"\n") if line]
        comments = sum(1 for line in lines if line.startswith(b":"))
        if comments and comments < len(lines):
            return "malformed: a keepalive inside an event"
        if comments == len(lines):
            continue  # a keepalive (or an empty event): between events, harmless
        if ended:
            return f"malformed: an event after the {ended}"
        data = b"\n".join(line[5:].lstrip(b" ") for line in lines if line.startswith(b"data:"))
        if data == b"[DONE]":
            ended = "[DONE]"
            continue
        try:
            doc = json.loads(data)
        except ValueError:
            return "malformed: an event that is not JSON"
        if isinstance(doc, dict) and "error" in doc:
            ended = "error event"
        elif isinstance(doc, dict) and doc.get("usage") is not None:
            usage += 1
    if usage and not asked_usage:
        return "malformed: a usage chunk not asked for"
    if ended == "[DONE]":
        if tail.strip():
            return "malformed: bytes after [DONE]"
        return "done" if usage == 1 or not asked_usage else f"malformed: {usage} usage chunks where one was asked"
    return "error" if ended else "truncated"


class Load:
    def __init__(self, url: str, keys: dict[str, str], clock_zero: float, seed: int = 26):
        self.url, self.keys, self.zero = url, keys, clock_zero
        self.rng = random.Random(seed)  # noqa: S311 - a load's mix, not a secret
        self.results: list[Result] = []
        self.session: Optional[aiohttp.ClientSession] = None

    def now(self) -> float:
        return time.monotonic() - self.zero

    async def __aenter__(self) -> Load:
        # A connection per request: on a kept-alive one, HAProxy answers a target's death with a
        # closed connection where the ALB answers 502 (soak/cluster.py).
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True),
                                             timeout=aiohttp.ClientTimeout(total=120))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    async def one(self, kind: str, client: str, seconds: float = 0.0) -> Result:
        assert self.session is not None
        doc = body(kind, self.rng, seconds)
        data = json.dumps(doc).encode()
        path = "/v1/embeddings" if kind == "embed" else "/v1/chat/completions"
        r = Result(kind, client, self.now(), 0.0, "failed", route=path[4:].replace("/", "."), size=len(data))
        try:
            async with self.session.post(self.url + path, data=data, headers={
                    "Authorization": f"Bearer {self.keys[client]}", "Content-Type": "application/json"}) as resp:
                r.status, r.backend = resp.status, resp.headers.get("X-Backend", "")
                r.request_id = resp.headers.get("x-gateway-request-id", "")
                if doc.get("stream") and resp.status == 200:
                    await self._stream(resp, r, abandon=kind == "abandon", asked_usage="stream_options" in doc)
                else:
                    data = await resp.read()
                    # A limit's refusal is the gateway's own: an upstream's 429 passed on names its upstream.
                    self._judge(r, resp.status, data, own="x-gateway-upstream" not in resp.headers)
        except (TimeoutError, aiohttp.ClientError) as e:
            r.outcome, r.cause = "failed", f"connection ({type(e).__name__})"
        r.ended = self.now()
        self.results.append(r)
        return r

    async def _stream(self, resp: aiohttp.ClientResponse, r: Result, abandon: bool, asked_usage: bool) -> None:
        seen, last = b"", self.now()
        async for chunk in resp.content.iter_any():
            now = self.now()
            r.silence, last = max(r.silence, now - last), now
            if r.ttft is None and b"data: {" in chunk:
                r.ttft = now - r.started
            seen += chunk
            if abandon and r.ttft is not None:
                resp.close()  # the client leaves mid-stream
                r.outcome = "abandoned"
                return
        verdict = stream_verdict(seen, asked_usage)
        if verdict == "done":
            r.outcome = "ok"
        elif verdict == "error":
            told = r.kind == "broken" and b"upstream_stream_interrupted" in seen
            r.outcome, r.cause = ("told", "") if told else ("failed", "error event")
        else:
            r.outcome, r.cause = "failed", verdict

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

    async def burst(self, client: str, n: int, kind: str = "chat") -> list[Result]:
        """`n` requests of one client sent at once (a race for its limits)."""
        return list(await asyncio.gather(*(self.one(kind, client) for _ in range(n))))
