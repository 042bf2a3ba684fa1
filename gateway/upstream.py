"""The connection to the LLM API: one keep-alive pool per process, and retries.

Retries (the guide's "retrying with exponential backoff"): on 429, 500, 502, 503, 504 and on
connection errors, before anything has gone to the client. The wait is the upstream's
`retry-after-ms` or `retry-after` when it sends one, else full-jitter exponential backoff. Both
the number of attempts and the total time are bounded; a wait that would overrun the budget is
not taken, and the upstream's answer (status, rate-limit headers, body) goes to the client as it
is, so the client's own SDK backs off.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Optional

import aiohttp

from gateway.errors import upstream_timeout, upstream_unavailable
from gateway.observe import Record
from gateway.settings import Settings

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def keepalive_socket_factory(idle_seconds: int) -> Callable[[tuple[Any, ...]], socket.socket]:
    """Sockets that send TCP keepalive probes after `idle_seconds` of silence, so a stream that
    waits minutes for a reasoning model keeps its NAT mapping (NAT gateways drop idle flows
    after 350 s)."""

    def make(addr_info: tuple[Any, ...]) -> socket.socket:
        family, kind, proto, _, _ = addr_info
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle_seconds)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, min(15, idle_seconds)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)
        return sock

    return make


def retry_after(headers: Mapping[str, str], now: Optional[float] = None) -> Optional[float]:
    """Seconds the upstream asks us to wait: `retry-after-ms`, else `retry-after` (seconds or an
    HTTP date), else None."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (now if now is not None else time.time()))


def backoff(attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2^attempt)]."""
    return rand() * min(cap, base * 2.0 ** attempt)


class Upstream:
    def __init__(self, settings: Settings):
        self.s = settings
        self.session: Optional[aiohttp.ClientSession] = None
        self.headers = {"Authorization": f"Bearer {settings.api_key}", "Accept-Encoding": "identity"}
        if settings.org_id:
            self.headers["OpenAI-Organization"] = settings.org_id
        if settings.project_id:
            self.headers["OpenAI-Project"] = settings.project_id
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout_seconds,
                                             sock_read=settings.read_timeout_seconds)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, keepalive_timeout=60, enable_cleanup_closed=True,
            socket_factory=keepalive_socket_factory(self.s.tcp_keepalive_seconds),
        )
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, timeout=self.timeout,
            skip_auto_headers=("Accept-Encoding",),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def send(self, method: str, path: str, body: Optional[bytes], headers: dict[str, str],
                   rec: Record) -> aiohttp.ClientResponse:
        """The upstream's response, after any retries; its body is not read yet."""
        assert self.session is not None, "start() first"
        url = self.s.upstream + path
        all_headers = {**self.headers, **headers}
        deadline = time.monotonic() + self.s.retry_budget_seconds
        attempt = 0
        while True:  # the last attempt returns or raises (GATEWAY_MAX_ATTEMPTS is at least 1)
            last = attempt + 1 >= self.s.max_attempts
            try:
                resp = await self.session.request(method, url, data=body, headers=all_headers)
            except (TimeoutError, aiohttp.ClientConnectionError) as e:
                wait = backoff(attempt, self.s.backoff_base_seconds, self.s.backoff_max_seconds)
                if last or time.monotonic() + wait > deadline:
                    if isinstance(e, aiohttp.ConnectionTimeoutError):
                        raise upstream_unavailable("connect timed out") from None
                    if isinstance(e, asyncio.TimeoutError):  # silence while waiting for headers
                        raise upstream_timeout(self.s.read_timeout_seconds) from None
                    raise upstream_unavailable(_describe(e)) from None
                rec.retries += 1
                attempt += 1
                await asyncio.sleep(wait)
                continue
            status = resp.status
            if status not in RETRY_STATUSES:
                return resp
            if status == 429:
                rec.upstream_429 += 1
            else:
                rec.upstream_5xx += 1
            asked = retry_after(resp.headers)
            wait = asked if asked is not None else backoff(
                attempt, self.s.backoff_base_seconds, self.s.backoff_max_seconds)
            if last or time.monotonic() + wait > deadline:
                return resp  # out of attempts or time: the client gets the upstream's answer
            resp.release()
            rec.retries += 1
            attempt += 1
            await asyncio.sleep(wait)


def _describe(e: BaseException) -> str:
    # The kind of failure only: its text names the upstream's host and port, not the client's to know.
    return type(e).__name__
