"""Relaying a server-sent-event stream from the upstream to the client.

Bytes go out as soon as an event is complete (the upstream writes whole events, so in practice
each read goes straight out); only a trailing half event waits for its end, so that a keepalive
comment never lands inside an event. While the upstream is silent the client gets `: keepalive`
every GATEWAY_SSE_KEEPALIVE_SECONDS, so no idle timeout on the way cuts a stream whose model is
still thinking.

Usage: chat completions report tokens in a last chunk only when asked
(`stream_options.include_usage`). The gateway asks on every stream, so that tokens and spend are
counted, and drops that chunk again when the client had not asked for it. The Responses API
reports usage in its `response.completed` event, which passes untouched.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any, Optional

import orjson

KEEPALIVE = b": keepalive\n\n"
_USAGE_HINTS = (b'"usage":{', b'"usage": {')


def split_complete(buf: bytes) -> tuple[bytes, bytes]:
    """(complete events, the incomplete rest)."""
    if buf.endswith(b"\n\n"):  # the common case: the upstream writes whole events
        return buf, b""
    cut = max(buf.rfind(b"\n\n") + 2 if b"\n\n" in buf else 0,
              buf.rfind(b"\r\n\r\n") + 4 if b"\r\n\r\n" in buf else 0)
    return buf[:cut], buf[cut:]


def _data(event: bytes) -> bytes:
    """An event's data lines, joined (b"" for an event without data: a comment, a keepalive)."""
    return b"\n".join(line[5:].lstrip() for line in event.splitlines() if line.startswith(b"data:"))


def usage_of(doc: Any) -> Optional[tuple[int, int]]:
    """(input, output) tokens from a chat, embeddings or Responses API body or event."""
    if not isinstance(doc, dict):
        return None
    usage = doc.get("usage")
    if usage is None and isinstance(doc.get("response"), dict):  # response.completed
        usage = doc["response"].get("usage")
    if not isinstance(usage, dict):
        return None
    inp = usage.get("prompt_tokens", usage.get("input_tokens"))
    out = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if not isinstance(inp, int) or not isinstance(out, int):
        return None
    return inp, out


# How each route's upstream ends a finished stream. A stream that stops without one of these
# was cut (the upstream closed early): the client is told so, never left with half an answer.
# Matched as SSE framing only (a line's start, or a JSON `type` whose quotes are not escaped),
# so a model that writes these words in its answer does not end its stream early.
ENDINGS = {
    "chat.completions": re.compile(rb"(?:^|\n)data: ?\[DONE\]"),
    "responses": re.compile(rb'(?:^|\n)event: ?response\.(?:completed|incomplete|failed)\r?\n'
                            rb'|"type": ?"response\.(?:completed|incomplete|failed)"'),
}


class UsageFilter:
    """Reads usage from complete events; drops the usage-only chunk the gateway asked for.
    Also counts the events relayed (what an abandoned stream is charged for) and notes whether
    the upstream ended the stream (`ended`)."""

    def __init__(self, strip_usage_chunk: bool, ending: Optional[re.Pattern[bytes]] = None):
        self.strip = strip_usage_chunk
        self.usage: Optional[tuple[int, int]] = None
        self.ending = ending
        self.ended = ending is None
        self.events = 0  # data events seen: about one token each in a streamed answer

    def __call__(self, events: bytes) -> bytes:
        self.events += events.count(b"data:")
        if not self.ended and self.ending.search(events):  # type: ignore[union-attr]
            self.ended = True
        if b'"usage":{' not in events and b'"usage": {' not in events:  # _USAGE_HINTS, unrolled
            return events  # the common case: no parsing at all
        kept = []
        for event in events.replace(b"\r\n", b"\n").split(b"\n\n"):
            if not event:
                continue
            data = _data(event)
            doc = _loads(data) if data and any(h in data for h in _USAGE_HINTS) else None
            found = usage_of(doc)
            if found:
                self.usage = found
                if self.strip and isinstance(doc, dict) and doc.get("choices") == []:
                    continue  # the client did not ask for this chunk
            kept.append(event + b"\n\n")
        return b"".join(kept)


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


class _Quiet:
    """When the stream last moved, and whether half an event is held back: what the keepalive
    task reads, so that the relay itself schedules no timer per event."""

    __slots__ = ("last", "partial")

    def __init__(self, now: float) -> None:
        self.last, self.partial = now, False


async def _keep_alive(write: Callable[[bytes], Awaitable[None]], seconds: float, quiet: _Quiet) -> None:
    """`: keepalive` once the stream has been silent for `seconds`, between events only. One timer
    per interval of silence, not one per event read."""
    loop = asyncio.get_running_loop()
    while True:
        wait = quiet.last + seconds - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
            continue
        if not quiet.partial:
            await write(KEEPALIVE)
        quiet.last = loop.time()


async def relay(read: Callable[[], Awaitable[bytes]], write: Callable[[bytes], Awaitable[None]],
                keepalive_seconds: float, on_first: Callable[[], None],
                transform: Callable[[bytes], bytes] = lambda b: b,
                tap: Optional[Callable[[bytes], None]] = None) -> None:
    """Copy events from `read` (b"" at the end) to `write` until the upstream ends the stream;
    `tap` sees them as the upstream sent them (for the cache). Raises what `read` raises (a
    dropped upstream); the caller tells the client, once no keepalive can follow."""
    loop = asyncio.get_running_loop()
    quiet = _Quiet(loop.time())
    keeper = asyncio.ensure_future(_keep_alive(write, keepalive_seconds, quiet))
    buf = b""
    started = False
    try:
        while chunk := await read():
            quiet.last = loop.time()
            if buf:
                buf += chunk
                events, buf = split_complete(buf)
            else:
                events, buf = split_complete(chunk)
            quiet.partial = bool(buf)
            if events:
                if tap:
                    tap(events)
                events = transform(events)
                if events:
                    if not started:
                        started = True
                        on_first()
                    await write(events)
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
    if buf:
        if tap:
            tap(buf)
        await write(transform(buf))
