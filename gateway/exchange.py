"""The client's side of one request: the response's start, its body, and the client leaving.

A streamed request that waits (for the upstream's first answer, through retries, or for another
request filling the cache entry) starts its response early: after GATEWAY_SSE_KEEPALIVE_SECONDS
of waiting the client gets a 200 event stream and `: keepalive` comments until the answer comes,
so no idle timeout on the way cuts it. What then goes wrong is told as an error event, which the
SDKs raise on. A client that leaves while the gateway waits for the upstream stops that call:
nobody pays for an answer no one reads.

Cheap on the request path: no request schedules a timer of its own. One `Watchdog` per worker
ticks four times a second over the requests in flight: it times out a body that is slow to
arrive, and starts watching the client's connection once a wait has lasted two ticks (a stream
relayed is watched at once). The wait itself is a plain await, cancelled (as ClientGone) when
the client leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable
from typing import Optional, TypeVar

from gateway.asgi import Receive, Send
from gateway.errors import GatewayError, stream_cut_by_drain
from gateway.observe import Record
from gateway.relay import KEEPALIVE

T = TypeVar("T")
TICK_SECONDS = 0.25  # the watchdog's period
WATCH_AFTER_TICKS = 2  # a wait this long (0.25 to 0.5 s) starts watching whether the client is there
SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
       (b"x-accel-buffering", b"no")]


class ClientGone(Exception):
    """The client closed its connection."""


class Watchdog:
    """One worker's timer for every request in flight: bodies past their deadline, waits long
    enough to watch the client. A request registers in a dict, with no timer of its own."""

    def __init__(self, body_timeout_seconds: float):
        self.tick = 0
        self.body_ticks = math.ceil(body_timeout_seconds / TICK_SECONDS)
        self.reading: dict[Exchange, int] = {}  # -> the tick its body is due by
        self.waiting: dict[Exchange, int] = {}  # -> the tick its wait began
        self.task: Optional[asyncio.Task[None]] = None

    def running(self) -> Watchdog:
        if self.task is None:
            self.task = asyncio.ensure_future(self._run())
        return self

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self.tick += 1
            for ex in [ex for ex, due in self.reading.items() if self.tick > due]:
                del self.reading[ex]
                ex.time_out()
            for ex in [ex for ex, began in self.waiting.items() if self.tick - began >= WATCH_AFTER_TICKS]:
                del self.waiting[ex]
                ex.gone  # noqa: B018 - starts watching the connection

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None


class Exchange:
    def __init__(self, send: Send, receive: Receive, rec: Record, keepalive_seconds: float,
                 dog: Watchdog) -> None:
        self.send, self.rec, self.keepalive = send, rec, keepalive_seconds
        self.started = False
        self.task = asyncio.current_task()
        self.waiting = self.left = self.timed_out = False
        self.receive = receive
        self.dog = dog.running()
        self._gone: Optional[asyncio.Future[None]] = None

    async def read(self, awaitable: Awaitable[T]) -> T:
        """`awaitable` (the request's body), or TimeoutError once the body is past its deadline."""
        self.dog.reading[self] = self.dog.tick + self.dog.body_ticks
        try:
            return await awaitable
        except asyncio.CancelledError:
            if not self.timed_out:
                raise
            if self.task is not None:
                self.task.uncancel()
            raise TimeoutError from None
        finally:
            self.dog.reading.pop(self, None)

    def time_out(self) -> None:
        if self.task is not None:
            self.timed_out = True
            self.task.cancel()

    @property
    def gone(self) -> asyncio.Future[None]:
        """Done when the client has left; watched from the first wait on (a hit never waits)."""
        if self._gone is None:
            self._gone = asyncio.ensure_future(_disconnected(self.receive))
            self._gone.add_done_callback(self._client_left)
        return self._gone

    def _client_left(self, watcher: asyncio.Future[None]) -> None:
        if not watcher.cancelled() and self.waiting and self.task is not None:
            self.left = True
            self.task.cancel()  # the wait under way ends as ClientGone

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
        if self._gone is not None and self._gone.done():
            raise ClientGone
        # Most answers come fast: the client's connection is watched only once a wait is long.
        if self._gone is None:
            self.dog.waiting[self] = self.dog.tick
        timer = asyncio.get_running_loop().call_later(self.keepalive, self._keep_alive) if self.rec.stream \
            else None
        self.waiting = True
        try:
            return await awaitable
        except asyncio.CancelledError:
            if not self.left:  # not the client: the drain's deadline
                if self.started:  # a stream started early: tell its client, its SDK raises on it
                    await self._quiet(timer)  # no keepalive may follow the error event
                    with contextlib.suppress(Exception):
                        await self.fail(stream_cut_by_drain())
                raise
            if self.task is not None:
                self.task.uncancel()
            raise ClientGone from None
        finally:
            self.waiting = False
            self.dog.waiting.pop(self, None)
            await self._quiet(timer)

    _keeper: Optional[asyncio.Task[None]] = None

    async def _quiet(self, timer: Optional[asyncio.TimerHandle]) -> None:
        """No more keepalives: the timer that would start them and the task writing them stop."""
        if timer is not None:
            timer.cancel()
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    def _keep_alive(self) -> None:
        async def beat() -> None:
            await self.start(200, SSE + [(b"x-gateway-request-id", self.rec.request_id.encode())])
            while True:
                await self.write(KEEPALIVE)
                await asyncio.sleep(self.keepalive)
        self._keeper = asyncio.ensure_future(beat())

    def close(self) -> None:
        self.dog.reading.pop(self, None)
        self.dog.waiting.pop(self, None)
        if self._gone is not None:
            self._gone.cancel()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
