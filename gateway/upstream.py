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
from gateway.observe import Record, UpstreamStats
from gateway.routing import Health, Key, Route, Router, Target
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
    """Every upstream's calls, over one keep-alive pool, routed (gateway/routing.py)."""

    def __init__(self, settings: Settings, health: Optional[Health] = None):
        self.s = settings
        self.session: Optional[aiohttp.ClientSession] = None
        self.specs = settings.upstreams
        self.headers = {name: spec.headers() for name, spec in self.specs.items()}
        self.health = health or Health(settings.cooldown_seconds, settings.cooldown_after)
        self.router = Router(settings.routes, self.health)
        self.stats = UpstreamStats()
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
                   rec: Record, route: Optional[Route] = None,
                   body_for: Optional[Callable[[str], bytes]] = None) -> aiohttp.ClientResponse:
        """The upstream's response, after any retries and failovers; its body is not read yet.
        `body_for(model)` is the body for a target that knows the model by another name."""
        assert self.session is not None, "start() first"
        route = route or self.router.route(rec.model)
        deadline = time.monotonic() + self.s.retry_budget_seconds
        attempt, tried = 0, frozenset[Key]()
        target = self.router.choose(route)
        while True:  # the last attempt returns or raises (GATEWAY_MAX_ATTEMPTS is at least 1)
            last = attempt + 1 >= self.s.max_attempts
            name = target.upstream
            rec.upstream, rec.upstream_model = name, target.model
            renamed = body is not None and body_for is not None and target.model != route.model
            data = body_for(target.model) if renamed and body_for is not None else body
            started = time.perf_counter()
            try:
                # No redirects: aiohttp would carry an api-key header (and the body) wherever one points.
                resp = await self.session.request(method, self.specs[name].url + path, data=data,
                                                  headers={**self.headers[name], **headers},
                                                  allow_redirects=False)
            except (TimeoutError, aiohttp.ClientConnectionError) as e:
                self.stats.called(name, started, failed=True)
                self.health.failed(target.key)
                tried |= {target.key}
                target, wait = self._next(route, tried, target, attempt, None)
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
                self.stats.called(name, started)
                self.health.succeeded(target.key)
                return resp
            self.stats.called(name, started, failed=True, throttled=status == 429)
            if status == 429:
                rec.upstream_429 += 1
            else:
                rec.upstream_5xx += 1
            asked = retry_after(resp.headers)
            self.health.failed(target.key, asked)
            tried |= {target.key}
            following, wait = self._next(route, tried, target, attempt, asked)
            if last or time.monotonic() + wait > deadline:
                return resp  # out of attempts or time: the client gets the upstream's answer
            resp.release()
            rec.retries += 1
            attempt += 1
            target = following
            await asyncio.sleep(wait)

    def _next(self, route: Route, tried: frozenset[Key], failed: Target, attempt: int,
              asked: Optional[float]) -> tuple[Target, float]:
        """The next attempt's target, and how long to wait before it: nothing when it has not been
        tried yet (a failover); else what the failed one asked, if it is the same, or the backoff."""
        following = self.router.choose(route, tried)
        if following.key not in tried:
            return following, 0.0
        if asked is not None and following.key == failed.key:
            return following, asked
        return following, backoff(attempt, self.s.backoff_base_seconds, self.s.backoff_max_seconds)


def _describe(e: BaseException) -> str:
    # The kind of failure only: its text names the upstream's host and port, not the client's to know.
    return type(e).__name__
