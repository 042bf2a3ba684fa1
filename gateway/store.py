"""Where the cache and the limits live: Valkey (shared by every task) or, for a local run without
CACHE_HOST, this process.

One server-side script per request (`gate`) does, in one round trip and atomically: read the
namespace versions and the entry (a hit), check and charge the client's limits, and take the
short-lived lock that makes concurrent identical misses reach the upstream once. The lock holder
fills the entry (`fill`); the others poll for it (`wait`, on the reader endpoint) until it is
there, the lock is gone (its holder failed or died) or GATEWAY_COALESCE_WAIT_SECONDS have passed,
and then go to the upstream themselves. Invalidation raises a namespace version (the whole stack's
or one client's): every older entry becomes unreachable at once and expires by its TTL.

Keys, under `llmgw:<service>:`: `ver`, `ver:<client>` (versions); `e:<client>:<ver>:<ver>:<hash>`
(entries) and `…:lock`; `rpm:<client>:<minute>`, `tpm:<client>:<minute>`, `usd:<client>:<day>`;
`cool:<upstream>:<model>` (a target's cooldown, gateway/routing.py); `mark:<token>` (a limited
request's: its gate applied, its settlement done, or its gate voided).
"""

from __future__ import annotations

import asyncio
import math
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Optional, Protocol, TypeVar, cast

import redis.asyncio as redis
from redis.asyncio.connection import ConnectionPool, RedisSSLContext, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.limits import Limits, Reservation, windows

T = TypeVar("T")

WINDOW_TTL_MS = 120_000  # a minute window outlives its minute, then goes
WINDOW_TTL_S = WINDOW_TTL_MS / 1000  # the same, for the in-process store
DAY_TTL_S = 2 * 86400
# How long a request holds its place among a client's requests in flight, at most: one whose
# task died frees its place after this (a longer one still running frees it early).
INFLIGHT_TTL_MS = 15 * 60 * 1000
# How long a request's mark (settled once) is kept: longer than a store outage's late writes can
# arrive (a connection's unanswered bytes are given up within minutes); about 170 bytes a limited
# request with Valkey's own overhead (docs/gateway.md sizes it).
MARK_TTL_MS = 15 * 60 * 1000
WARM_CONNECTIONS = 8  # opened at start-up, so a burst on a new task does not open them at once


def _closed(task: asyncio.Future[None]) -> None:
    """Dropping connections to a store that does not answer can time out too: nothing to do."""
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True)
class Script:
    """A Lua script whose KEYS and ARGV are named once, here: its source opens by binding each to a
    local of that name, and `keys`/`args` order the values a call passes by the same names."""

    key_names: tuple[str, ...]
    arg_names: tuple[str, ...]
    body: str

    @property
    def source(self) -> str:
        bind = [f"local {', '.join(names)} = unpack({table})"
                for names, table in ((self.key_names, "KEYS"), (self.arg_names, "ARGV")) if names]
        return "\n".join(bind) + "\n" + self.body

    def keys(self, **values: str) -> list[str]:
        return self._ordered(self.key_names, values)

    def args(self, **values: Any) -> list[Any]:
        return self._ordered(self.arg_names, values)

    @staticmethod
    def _ordered(names: tuple[str, ...], values: dict[str, Any]) -> list[Any]:
        try:  # on the request path: no set built unless a name is wrong
            if len(values) == len(names):
                return [values[n] for n in names]
        except KeyError:
            pass
        raise TypeError(f"expected {sorted(names)}, got {sorted(values)}")


# One round trip per request: the cache entry and every limit of the client, counted atomically.
GATE = Script(
    ("ver_key", "client_ver_key", "rpm_key", "tpm_key", "usd_key", "inflight_key", "mark_key"),
    ("entry_prefix", "cache_hash", "read", "lock", "rpm_limit", "tpm_limit", "nano_limit", "tokens", "nano",
     "lock_ms", "token", "window_ttl_ms", "day_ttl_s", "counted", "concurrent_limit", "now_ms",
     "inflight_ttl_ms", "mark_ttl_ms"),
    """
-- Sent, timed out, voided by the gateway, and arrived late all the same: it counts nothing.
if mark_key ~= '' and redis.call('EXISTS', mark_key) == 1 then return {'void', 0, ''} end
local entry_key = ''
if cache_hash ~= '' then
  local gv = redis.call('GET', ver_key) or '0'
  local cv = redis.call('GET', client_ver_key) or '0'
  entry_key = entry_prefix .. gv .. ':' .. cv .. ':' .. cache_hash
end
local is_counted = counted == '1'  -- a hit that could not be served, gated again as a miss
local rpm_used = tonumber(redis.call('GET', rpm_key) or '0')
if not is_counted and tonumber(rpm_limit) > 0 and rpm_used >= tonumber(rpm_limit) then
  return {'requests', rpm_used, entry_key}
end
local function count_request()
  if is_counted then return end
  if redis.call('INCR', rpm_key) == 1 then redis.call('PEXPIRE', rpm_key, window_ttl_ms) end
end
if read == '1' and entry_key ~= '' then
  local entry = redis.call('GET', entry_key)
  if entry then
    count_request()
    if mark_key ~= '' then redis.call('SET', mark_key, 'h', 'PX', mark_ttl_ms) end
    return {'hit', 0, entry_key, entry}
  end
end
if tonumber(tpm_limit) > 0 then
  local used = tonumber(redis.call('GET', tpm_key) or '0')
  if used + tonumber(tokens) > tonumber(tpm_limit) then return {'tokens', used, entry_key} end
end
if tonumber(nano_limit) > 0 then
  local spent = tonumber(redis.call('GET', usd_key) or '0')
  if spent + tonumber(nano) > tonumber(nano_limit) then return {'spend', spent, entry_key} end
end
if tonumber(concurrent_limit) > 0 then
  redis.call('ZREMRANGEBYSCORE', inflight_key, '-inf', now_ms)
  local flying = redis.call('ZCARD', inflight_key)
  if flying >= tonumber(concurrent_limit) then return {'concurrent', flying, entry_key} end
  redis.call('ZADD', inflight_key, tonumber(now_ms) + tonumber(inflight_ttl_ms), token)
  redis.call('PEXPIRE', inflight_key, inflight_ttl_ms)
end
count_request()
if tokens ~= '0' then
  redis.call('INCRBY', tpm_key, tokens)
  redis.call('PEXPIRE', tpm_key, window_ttl_ms)
end
if nano ~= '0' then
  redis.call('INCRBY', usd_key, nano)
  redis.call('EXPIRE', usd_key, day_ttl_s)
end
local holds = 0
if lock == '1' and entry_key ~= '' then
  if redis.call('SET', entry_key .. ':lock', token, 'NX', 'PX', lock_ms) then holds = 1 end
end
if mark_key ~= '' then  -- reserved, and the fill lock it took (a void lets it go)
  redis.call('SET', mark_key, holds == 1 and ('r' .. entry_key .. ':lock') or 'r', 'PX', mark_ttl_ms)
end
return {'miss', holds, entry_key}
""")

FILL = Script(("entry_key", "lock_key"), ("entry", "ttl", "lock_token"), """
redis.call('SET', entry_key, entry, 'EX', ttl)
if redis.call('GET', lock_key) == lock_token then redis.call('DEL', lock_key) end
return 1
""")

RELEASE = Script(("lock_key",), ("lock_token",), """
if redis.call('GET', lock_key) == lock_token then redis.call('DEL', lock_key) end
return 1
""")

# A request's reservation corrected to what it used, once: by its mark, a settlement sent again
# (after a timeout that may have hidden its success) changes nothing. `void`: the gateway gave up
# on the request's gate (it timed out) and admitted it alone; a gate that was applied all the same
# is undone (what it counted: the request, and a miss's reservation, place in flight and fill
# lock), and one still on its way will count nothing when it lands.
SETTLE = Script(("tpm_key", "usd_key", "inflight_key", "rpm_key", "mark_key"),
                ("tokens", "nano", "window_ttl_ms", "day_ttl_s", "flight", "requests", "void", "mark_ttl_ms",
                 "mark"), """
if mark_key ~= '' then
  local state = redis.call('GET', mark_key)
  if state == 's' or state == 'v' then return 0 end
  if void == '1' then
    redis.call('SET', mark_key, 'v', 'PX', mark_ttl_ms)
    if not state then return 0 end
    if state == 'h' then tokens, nano = '0', '0' end
    local lock_key = string.sub(state, 2)
    if lock_key ~= '' and redis.call('GET', lock_key) == mark then redis.call('DEL', lock_key) end
  else
    redis.call('SET', mark_key, 's', 'PX', mark_ttl_ms)
  end
end
if tokens ~= '0' then
  redis.call('INCRBY', tpm_key, tokens)
  redis.call('PEXPIRE', tpm_key, window_ttl_ms)
end
if nano ~= '0' then
  redis.call('INCRBY', usd_key, nano)
  redis.call('EXPIRE', usd_key, day_ttl_s)
end
if flight ~= '' then redis.call('ZREM', inflight_key, flight) end
if requests ~= '0' then
  redis.call('INCRBY', rpm_key, requests)
  redis.call('PEXPIRE', rpm_key, window_ttl_ms)
end
return 1
""")

# A target's cooldown for every process: the later end wins.
COOL = Script(("cool_key",), ("until_ms", "ttl_ms"), """
if tonumber(redis.call('GET', cool_key) or '0') < tonumber(until_ms) then
  redis.call('SET', cool_key, until_ms, 'PX', ttl_ms)
end
return 1
""")


@dataclass
class Gate:
    outcome: str  # hit, miss, or the limit refused: requests, tokens, spend, concurrent
    used: int = 0  # for a refusal: what the window already holds
    entry: Optional[bytes] = None
    entry_key: str = ""  # a miss's: where fill, wait and release find the entry
    holds_lock: bool = False
    lock_token: str = ""
    reservation: Optional[Reservation] = None
    local: bool = False  # checked by this process alone: the shared store did not answer
    counted: bool = False  # the request was counted already (a hit that could not be served)

    @property
    def admitted(self) -> bool:
        return self.outcome in ("hit", "miss")


class Store(Protocol):
    """What the gateway asks of the store of its cache entries and limits. ValkeyStore (shared by
    every task) and LocalStore (this process alone) both implement it; tests/test_store.py runs one
    suite against both."""

    kind: str

    async def gate(self, client: str, limits: Limits, cache_hash: str, read: bool, lock: bool,
                   tokens: int, nano: int, lock_ms: int, counted: bool = False) -> Gate:
        """The cache entry (a hit) or the client's admission (a miss, with its reservation and,
        when `lock`, the right to fill the entry), or the limit that refused it."""
        ...

    async def fill(self, gate: Gate, entry: bytes, ttl: int) -> None:
        """Store the answer for the gate's entry and give up the right to fill it."""
        ...

    async def release(self, gate: Gate) -> None:
        """Give up the right to fill the entry without filling it."""
        ...

    async def settle(self, client: str, r: Reservation, tokens: int, nano: int, requests: int = 0,
                     void: bool = False) -> None:
        """Correct a reservation to what was used and give back its place in flight, once; `void`:
        undo a gate the gateway gave up on, if it was applied all the same."""
        ...

    async def wait(self, gate: Gate, bound: float) -> Optional[bytes]:
        """The entry another request is filling, or None (its holder failed, or the bound)."""
        ...

    async def invalidate(self, client: Optional[str] = None) -> int:
        """Make every entry (or one client's) unreachable; the new namespace version."""
        ...

    async def ping(self) -> bool:
        ...

    async def close(self) -> None:
        ...


class StoreUnavailable(Exception):
    """The store did not answer; the request goes on without cache or limits. `maybe`: a marked
    gate that was sent, and so may have been applied all the same (to be voided once the store
    answers)."""

    def __init__(self, message: str, sent: bool = True):
        super().__init__(message)
        self.sent = sent
        self.maybe: Optional[Reservation] = None


class ValkeyStore:
    """The shared store. Every call is bounded by a short timeout; after a failure the store is
    skipped for a second, then tried by one call at a time until it answers, so an outage costs
    each request nothing but the skip (and one call a second its timeout)."""

    kind = "valkey"

    def __init__(self, host: str, *, reader_host: str = "", port: int = 6379, password: str = "",
                 tls: bool = True, ca_file: Optional[str] = None, service: str, timeout: float,
                 connect_timeout: float = 0.0, max_connections: int = 1024):
        self.prefix = f"llmgw:{service}:"
        # No client-side retries: redis-py's default retries a failed connection 3 times with
        # exponential backoff (seconds), which stalled the first requests after an outage for ~4 s.
        # A failed call here is one attempt, then the skip below.
        kwargs: dict[str, Any] = dict(port=port, password=password or None, socket_timeout=timeout,
                                      socket_connect_timeout=connect_timeout or timeout,
                                      retry=Retry(NoBackoff(), 0))
        if tls:
            # One TLS context for every connection: redis-py makes one per connection otherwise,
            # about 30 ms of CPU each, which a burst of new connections turned into timeouts.
            context = RedisSSLContext(cert_reqs=ssl.CERT_REQUIRED, ca_certs=ca_file)
            kwargs.update(connection_class=_SharedTls, shared_tls=context)
        def client(at: str) -> redis.Redis:
            # A request holds one connection at a time, so a pool as large as the requests a worker
            # serves is never exhausted (an exhausted pool would read as an outage).
            return redis.Redis(connection_pool=ConnectionPool(host=at, max_connections=max_connections, **kwargs))

        self.primary = client(host)
        self.reader = client(reader_host) if reader_host and reader_host != host else self.primary
        self._gate = self.primary.register_script(GATE.source)
        self._fill = self.primary.register_script(FILL.source)
        self._release = self.primary.register_script(RELEASE.source)
        self._settle = self.primary.register_script(SETTLE.source)
        self._cool = self.primary.register_script(COOL.source)
        self.down_until = 0.0  # calls skip the store until then, after a failure
        self.failed = False  # the last call failed: the next is a probe
        self.probing = False  # a probe is in flight: the others skip the store until it answers

    def _mark_key(self, r: Reservation) -> str:
        return f"{self.prefix}mark:{r.mark}" if r.mark else ""  # "": the scripts skip marks

    def try_now(self) -> None:
        """The next call tries the store, even within the skip after a failure (a last try)."""
        self.down_until, self.probing = 0.0, False

    async def warm(self, n: int = WARM_CONNECTIONS) -> None:
        """Open connections before the first requests need them (a failure here is harmless)."""
        clients = {id(c): c for c in (self.primary, self.reader)}.values()
        await asyncio.gather(*(c.ping() for c in clients for _ in range(n)), return_exceptions=True)

    async def close(self) -> None:
        # The pools are this store's own (passed in): redis-py closes only pools it made itself.
        await self.primary.aclose(close_connection_pool=True)
        if self.reader is not self.primary:
            await self.reader.aclose(close_connection_pool=True)

    async def _call(self, coro: Awaitable[T]) -> T:
        # After a failure, one call a second tries the store again (the probe) and the others skip
        # it meanwhile: against an endpoint that does not answer at all (a partition), each call
        # that tried would wait out its own connect timeout.
        if self.probing or time.monotonic() < self.down_until:
            cast(Coroutine[Any, Any, T], coro).close()  # redis-py's calls are coroutines
            raise StoreUnavailable("skipped after a recent failure", sent=False)
        probe = self.probing = self.failed
        try:
            result = await coro
        except Exception as e:  # noqa: BLE001 - whatever the client raises, the store did not answer: fail open
            self.failed, self.down_until = True, time.monotonic() + 1.0
            # Every idle pooled connection is suspect after a failure (a failover or a restart
            # leaves them all dead): drop them, so the store's return costs one failure, not one
            # each. Not those in use: closed under a running call, they failed it too, where it
            # would have ended by itself or timed out.
            for pool in {id(c.connection_pool): c.connection_pool for c in (self.primary, self.reader)}.values():
                asyncio.ensure_future(pool.disconnect(inuse_connections=False)).add_done_callback(_closed)
            raise StoreUnavailable(f"{type(e).__name__}: {e}") from None
        finally:
            if probe:
                self.probing = False
        self.failed = False
        return result


    async def gate(self, client: str, limits: Limits, cache_hash: str, read: bool, lock: bool,
                   tokens: int, nano: int, lock_ms: int, counted: bool = False) -> Gate:
        minute, day, _, _ = windows()
        token = os.urandom(8).hex()
        # Marked only where a count matters: a client with no limit has nothing to count twice.
        reservation = Reservation(tokens, nano, minute, day, token if limits.concurrent_requests else "",
                                  token if limits.any else "")
        p = self.prefix
        try:
            reply = await self._call(self._gate(
                keys=GATE.keys(ver_key=f"{p}ver", client_ver_key=f"{p}ver:{client}",
                               rpm_key=f"{p}rpm:{client}:{minute}", tpm_key=f"{p}tpm:{client}:{minute}",
                               usd_key=f"{p}usd:{client}:{day}", inflight_key=f"{p}inflight:{client}",
                               mark_key=self._mark_key(reservation)),
                args=GATE.args(entry_prefix=f"{p}e:{client}:", cache_hash=cache_hash, read=int(read),
                               lock=int(lock), rpm_limit=limits.requests_per_minute,
                               tpm_limit=limits.tokens_per_minute, nano_limit=limits.nano_per_day, tokens=tokens,
                               nano=nano, lock_ms=lock_ms, token=token, window_ttl_ms=WINDOW_TTL_MS,
                               day_ttl_s=DAY_TTL_S, counted=int(counted),
                               concurrent_limit=limits.concurrent_requests, now_ms=int(time.time() * 1000),
                               inflight_ttl_ms=INFLIGHT_TTL_MS, mark_ttl_ms=MARK_TTL_MS)))
        except StoreUnavailable as e:
            e.maybe = reservation if e.sent and reservation.mark else None  # unmarked: nothing to undo
            raise
        outcome = reply[0].decode()
        gate = Gate(outcome)
        if outcome == "hit":
            gate.entry = reply[3]
        elif outcome == "miss":  # the entry's key: for fill, wait and release
            gate.entry_key, gate.holds_lock, gate.lock_token = reply[2].decode(), bool(reply[1]), token
            gate.reservation = reservation
        else:
            gate.used = int(reply[1])
        return gate

    async def fill(self, gate: Gate, entry: bytes, ttl: int) -> None:
        await self._call(self._fill(keys=FILL.keys(entry_key=gate.entry_key, lock_key=gate.entry_key + ":lock"),
                                    args=FILL.args(entry=entry, ttl=ttl, lock_token=gate.lock_token)))

    async def release(self, gate: Gate) -> None:
        await self._call(self._release(keys=RELEASE.keys(lock_key=gate.entry_key + ":lock"),
                                       args=RELEASE.args(lock_token=gate.lock_token)))

    async def settle(self, client: str, r: Reservation, tokens: int, nano: int, requests: int = 0,
                     void: bool = False) -> None:
        """Correct the reservation to what was used, and give back its place in flight, once (by its
        mark); `requests` adds requests counted elsewhere (by a process while the store was away).
        `void`: undo a gate the gateway gave up on, if it was applied all the same."""
        if tokens == r.tokens and nano == r.nano and not r.flight and not requests and not void:
            return
        p = self.prefix
        await self._call(self._settle(
            keys=SETTLE.keys(tpm_key=f"{p}tpm:{client}:{r.minute}", usd_key=f"{p}usd:{client}:{r.day}",
                             inflight_key=f"{p}inflight:{client}", rpm_key=f"{p}rpm:{client}:{r.minute}",
                             mark_key=self._mark_key(r)),
            args=SETTLE.args(tokens=tokens - r.tokens, nano=nano - r.nano, window_ttl_ms=WINDOW_TTL_MS,
                             day_ttl_s=DAY_TTL_S, flight=r.flight, requests=requests, void=int(void),
                             mark_ttl_ms=MARK_TTL_MS, mark=r.mark)))

    # The waiter's clock and pause (a test runs them on a fake clock).
    clock: Callable[[], float] = staticmethod(time.monotonic)
    sleep: Callable[[float], Awaitable[None]] = staticmethod(asyncio.sleep)

    async def wait(self, gate: Gate, bound: float) -> Optional[bytes]:
        """The entry another request is filling, or None (its holder failed, or the bound)."""
        deadline, pause, polls = self.clock() + bound, 0.005, 0
        while self.clock() < deadline:
            await self.sleep(pause)
            entry: Optional[bytes] = await self._call(self.reader.get(gate.entry_key))  # type: ignore[arg-type]
            if entry is not None:
                return entry
            polls += 1
            if polls % 4 == 0 and not await self._call(self.primary.exists(gate.entry_key + ":lock")):
                # Gone without an entry: the holder failed. One more look at the primary, in
                # case the reader lags behind the fill.
                return await self._call(self.primary.get(gate.entry_key))  # type: ignore[arg-type]
            pause = min(pause * 1.5, 0.1)
        return None

    async def invalidate(self, client: Optional[str] = None) -> int:
        return await self._call(self.primary.incr(f"{self.prefix}ver" + (f":{client}" if client else "")))

    async def cool(self, key: tuple[str, str], until_ms: int) -> None:
        """A target's cooldown, for every process: it ends when the key expires (a shorter one
        never replaces a longer one)."""
        ttl = until_ms - int(time.time() * 1000)
        if ttl > 0:
            await self._call(self._cool(keys=COOL.keys(cool_key=self._cool_key(key)),
                                        args=COOL.args(until_ms=until_ms, ttl_ms=ttl)))

    async def cooldowns(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The targets cooling down, and when (epoch ms) each cooldown ends."""
        values = await self._call(self.primary.mget([self._cool_key(k) for k in keys]))
        return {k: int(v) for k, v in zip(keys, values, strict=True) if v is not None}

    def _cool_key(self, key: tuple[str, str]) -> str:
        return f"{self.prefix}cool:{key[0]}:{key[1]}"

    async def ping(self) -> bool:
        try:
            return bool(await self._call(self.primary.ping()))
        except StoreUnavailable:
            return False


class LocalStore:
    """This process only (`make serve` without CACHE_HOST): the same rules, nothing shared."""

    kind = "in-process"

    def __init__(self) -> None:
        self.values: dict[str, tuple[float, object]] = {}
        self.waiters: dict[str, tuple[str, asyncio.Event]] = {}  # entry -> its lock's token, and its fill
        self.flying: dict[str, set[str]] = {}  # client -> its requests in flight

    def _get(self, key: str) -> Any:
        found = self.values.get(key)
        if found is None or found[0] < time.monotonic():
            self.values.pop(key, None)
            return None
        return found[1]

    def _set(self, key: str, value: object, ttl: float) -> None:
        self.values[key] = (time.monotonic() + ttl, value)

    def _add(self, key: str, n: int, ttl: float) -> int:
        total = int(self._get(key) or 0) + n
        self._set(key, total, ttl)
        return total

    async def close(self) -> None:
        pass

    async def gate(self, client: str, limits: Limits, cache_hash: str, read: bool, lock: bool,
                   tokens: int, nano: int, lock_ms: int, counted: bool = False) -> Gate:
        minute, day, _, _ = windows()
        rpm, tpm, usd = f"rpm:{client}:{minute}", f"tpm:{client}:{minute}", f"usd:{client}:{day}"
        entry_key = ""
        if cache_hash:
            entry_key = f"e:{client}:{self._get('ver') or 0}:{self._get('ver:' + client) or 0}:{cache_hash}"
        used = int(self._get(rpm) or 0)
        if not counted and limits.requests_per_minute and used >= limits.requests_per_minute:
            return Gate("requests", used)
        if read and entry_key and self._get(entry_key) is not None:
            self._add(rpm, 1, WINDOW_TTL_S)
            return Gate("hit", entry=self._get(entry_key))
        if limits.tokens_per_minute and int(self._get(tpm) or 0) + tokens > limits.tokens_per_minute:
            return Gate("tokens", int(self._get(tpm) or 0))
        if limits.nano_per_day and int(self._get(usd) or 0) + nano > limits.nano_per_day:
            return Gate("spend", int(self._get(usd) or 0))
        flying, flight = self.flying.setdefault(client, set()), ""
        if limits.concurrent_requests:
            if len(flying) >= limits.concurrent_requests:
                return Gate("concurrent", len(flying))
            flight = os.urandom(8).hex()
            flying.add(flight)
        self._add(rpm, 0 if counted else 1, WINDOW_TTL_S)
        self._add(tpm, tokens, WINDOW_TTL_S)
        self._add(usd, nano, DAY_TTL_S)
        holds, token = bool(lock and entry_key and entry_key not in self.waiters), ""
        if holds:
            token = os.urandom(8).hex()
            self.waiters[entry_key] = token, asyncio.Event()
        return Gate("miss", entry_key=entry_key, holds_lock=holds, lock_token=token,
                    reservation=Reservation(tokens, nano, minute, day, flight))

    async def fill(self, gate: Gate, entry: bytes, ttl: int) -> None:
        self._set(gate.entry_key, entry, ttl)
        await self.release(gate)

    async def release(self, gate: Gate) -> None:
        # As Valkey's script: only the lock this gate took (a late second release of a lock since
        # taken by another request leaves that one alone).
        token, event = self.waiters.get(gate.entry_key, ("", None))
        if gate.holds_lock and event is not None and token == gate.lock_token:
            del self.waiters[gate.entry_key]
            event.set()

    async def settle(self, client: str, r: Reservation, tokens: int, nano: int, requests: int = 0,
                     void: bool = False) -> None:
        # In this process every call is answered: none is sent twice, no gate is voided.
        self._add(f"tpm:{client}:{r.minute}", tokens - r.tokens, WINDOW_TTL_S)
        self._add(f"usd:{client}:{r.day}", nano - r.nano, DAY_TTL_S)
        self._add(f"rpm:{client}:{r.minute}", requests, WINDOW_TTL_S)
        self.flying.get(client, set()).discard(r.flight)

    async def wait(self, gate: Gate, bound: float) -> Optional[bytes]:
        _, event = self.waiters.get(gate.entry_key, ("", None))
        if event is not None:
            try:
                await asyncio.wait_for(event.wait(), bound)
            except TimeoutError:
                return None
        entry: Optional[bytes] = self._get(gate.entry_key)
        return entry

    async def invalidate(self, client: Optional[str] = None) -> int:
        return self._add("ver" + (f":{client}" if client else ""), 1, math.inf)  # as Valkey's INCR: kept

    async def ping(self) -> bool:
        return True


class _SharedTls(SSLConnection):
    """A TLS connection that uses its pool's one context instead of building its own."""

    def __init__(self, *, shared_tls: RedisSSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ssl_context = shared_tls
