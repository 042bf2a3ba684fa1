"""The client's side of one request: the response's start, its body, and the client leaving.

A streamed request that waits (for the upstream's first answer, through retries, or for another
request filling the cache entry) starts its response early: after GATEWAY_SSE_KEEPALIVE_SECONDS
of waiting the client gets a 200 event stream and `: keepalive` comments until the answer comes,
so no idle timeout on the way cuts it. What then goes wrong is told as an error event, which the
SDKs raise on. A client that leaves while the gateway waits for the upstream stops that call:
nobody pays for an answer no one reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Optional, TypeVar

from gateway.errors import GatewayError
from gateway.observe import Record
from gateway.relay import KEEPALIVE

T = TypeVar("T")
SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
       (b"x-accel-buffering", b"no")]


class ClientGone(Exception):
    """The client closed its connection."""


class Exchange:
    def __init__(self, send, receive, rec: Record, keepalive_seconds: float):
        self.send, self.rec, self.keepalive = send, rec, keepalive_seconds
        self.started = False
        self.gone = asyncio.ensure_future(_disconnected(receive))

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if not self.started:
            self.started = True
            await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def write(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self) -> None:
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A whole answer; after an early start, its body as the rest of the stream."""
        if self.started:
            await self.write(body)
            await self.end()
            return
        await self.start(status, headers + [(b"content-length", str(len(body)).encode())])
        await self.send({"type": "http.response.body", "body": body})

    async def fail(self, error: GatewayError) -> None:
        """An error after an early start: an event the SDKs raise on, then the end."""
        await self.write(error.sse_event())
        await self.end()

    async def wait(self, awaitable: Awaitable[T]) -> T:
        """`awaitable`'s result, keeping a waiting stream alive; ClientGone if the client leaves
        first (the awaitable is then cancelled)."""
        task = asyncio.ensure_future(awaitable)
        try:
            while True:
                timeout: Optional[float] = self.keepalive if self.rec.stream else None
                done, _ = await asyncio.wait({task, self.gone}, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                if task in done:
                    return task.result()
                if self.gone in done:
                    raise ClientGone
                await self.start(200, SSE + [(b"x-gateway-request-id", self.rec.request_id.encode())])
                await self.write(KEEPALIVE)
        finally:
            if not task.done():
                task.cancel()

    def close(self) -> None:
        self.gone.cancel()


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
