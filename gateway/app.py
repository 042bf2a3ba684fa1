"""The gateway as a plain ASGI application: no framework on the request path.

Routes: `POST /v1/chat/completions`, `POST /v1/responses`, `POST /v1/embeddings`, `GET /v1/models`
(to OPENAI_BASE_URL with the stack's key), `GET /healthz` and `GET /readyz` (no key needed).
Request and response bodies pass through as bytes; the request is parsed once (for `model` and
`stream`) and re-serialised only to ask a stream for its token usage.

A request's way: client key; one round trip to the store for the cache entry and the client's
limits (gateway/store.py); a hit is served from the entry; a miss that another request is already
filling waits for that entry; otherwise the upstream, with the answer recorded for the cache and
the reserved tokens and spend settled with the usage it reports.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import aiohttp
import orjson

from gateway import cache, errors, observe, tenancy
from gateway.asgi import Doc, Headers, Receive, RequestHeaders, Scope, Send
from gateway.errors import GatewayError
from gateway.exchange import SSE, ClientGone, Exchange, Watchdog
from gateway.healthcheck import USER_AGENT
from gateway.keys import Client
from gateway.limits import Limits, Price, Reservation, check_model, estimate, rejection, windows
from gateway.observe import Record
from gateway.relay import ENDINGS, UsageFilter, relay, usage_of
from gateway.routing import Health, Key, Route
from gateway.settings import Settings
from gateway.store import Gate, LocalStore, Store, StoreUnavailable, ValkeyStore
from gateway.upstream import Upstream

ROUTES = {
    ("POST", "/v1/chat/completions"): "chat.completions",
    ("POST", "/v1/responses"): "responses",
    ("POST", "/v1/embeddings"): "embeddings",
    ("GET", "/v1/models"): "models",
}
# Upstream response headers a client (or its SDK) uses; everything else stays here.
PASSED_HEADERS = ("content-type", "x-request-id", "openai-processing-ms", "openai-version",
                  "retry-after", "retry-after-ms")
PASSED_PREFIXES = ("x-ratelimit-",)
# Client request headers the upstream needs to see.
FORWARDED = {b"accept": "Accept", b"openai-beta": "OpenAI-Beta", b"idempotency-key": "Idempotency-Key"}
JSON = [(b"content-type", b"application/json")]
UPSTREAM_METRICS_SECONDS = 10  # how often each upstream's metrics line is written
OWN_HEALTH_CHECK = USER_AGENT.encode()  # the container's own check, not the load balancer



@dataclass(frozen=True)
class Unsettled:
    """A call to the store's counters that did not get its answer, to be sent again as it was."""

    client: str
    r: Reservation
    tokens: int
    nano: int
    requests: int = 0
    void: bool = False


@dataclass(slots=True)
class Call:
    """One request on its way through the gateway, made once its client is known: who asks (client,
    limits), what (route, headers, body, doc), the cache policy, the store's answer (gate), the
    client's side of the exchange (ex) and the record that becomes its log line (rec). Each step
    (gate, cache, upstream, relay, settle) reads it and adds what it learns."""

    scope: Scope
    ex: Exchange
    headers: RequestHeaders
    client: Client
    limits: Limits
    route: str
    rec: Record
    body: Optional[bytes] = None
    doc: Doc = field(default_factory=dict)
    policy: cache.Policy = cache.BYPASS
    sent: Optional[Doc] = None  # the document that goes upstream (`body`), for a target's own model name
    model_route: Optional[Route] = None  # where the model goes (gateway/routing.py)
    gate: Optional[Gate] = None
    settled: bool = False  # the reservation was settled (once, by `App.finish`)

    def body_for(self, model: str) -> bytes:
        """The body for a target that knows the model by another name."""
        return orjson.dumps({**(self.sent or {}), "model": model})


class App:
    def __init__(self, settings: Settings):
        self.s = settings
        self.health = Health(settings.cooldown_seconds, settings.cooldown_after,
                             on_cool=self.share_cooldown if settings.routed and settings.cache_host else None)
        self.upstream = Upstream(settings, self.health)
        # Every routed target, for reading the other processes' cooldowns.
        self.route_keys = sorted({t.key for r in settings.routes.values() for t in r.targets})
        # What a routed model reserves against a spend limit: its dearest target's price.
        self.reserve_prices = {model: Price(max(self.s.prices.of(t.model).input_per_million for t in r.targets),
                                            max(self.s.prices.of(t.model).output_per_million for t in r.targets))
                               for model, r in settings.routes.items()}
        self.store: Store = ValkeyStore(
            settings.cache_host, reader_host=settings.cache_reader_host, port=settings.cache_port,
            password=settings.cache_auth_token, tls=settings.cache_tls, ca_file=settings.cache_ca_file or None,
            service=settings.service, timeout=settings.cache_timeout_seconds,
            connect_timeout=settings.cache_connect_timeout_seconds,
            max_connections=settings.max_in_flight + 16,  # + background calls
        ) if settings.cache_host else LocalStore()
        # The limits while the shared store does not answer: this process counts alone, and what
        # it charged is added to the shared counters once the store answers again (`owed`).
        self.local = LocalStore()
        self.owed: dict[tuple[str, int, str], list[int]] = {}  # (client, minute, day) -> requests, tokens, nano
        # Settlements the store missed (it failed while the request ran), payments of what was owed
        # that failed, and gates it may have applied after they timed out (to be voided): sent when
        # it answers, each by its reservation's mark, so that one the store did apply counts once.
        self.unsettled: list[Unsettled] = []
        self.paying: Optional[asyncio.Task[None]] = None
        self.draining = False  # set on SIGTERM: /healthz fails from then on
        self.in_flight = 0  # requests this worker is serving (GATEWAY_MAX_IN_FLIGHT bounds it)
        self.flying: dict[str, int] = {}  # client -> its requests this worker is serving
        self.dog = Watchdog(settings.body_timeout_seconds)  # slow bodies, clients that leave
        # When a request last came from outside the task (the load balancer, its health checks):
        # a draining gateway stops accepting once this is quiet (gateway/server.py).
        self.last_request = time.monotonic()

    # pragma: no mutate start
    # Not mutated: mutmut's wrapper would hide from uvicorn that this is an ASGI 3 coroutine.
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)
    # pragma: no mutate end

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.upstream.start()
                if isinstance(self.store, ValkeyStore):
                    await self.store.warm()
                if isinstance(self.store, ValkeyStore) or self.s.routed:
                    self.paying = asyncio.ensure_future(self.every_second())
                where = (f"Valkey at {self.s.cache_host}:{self.s.cache_port}" if self.s.cache_host else
                         "this process only (no CACHE_HOST): nothing is shared with other processes")
                print(f"gateway: cache and limits in {where}", file=sys.stderr, flush=True)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.dog.stop()
                if self.paying is not None:
                    self.paying.cancel()  # and waited for: a call it had running puts its debt back
                    await asyncio.gather(self.paying, return_exceptions=True)
                    await self.pay(last=True)  # what is still owed when the process exits is lost
                await self.upstream.close()
                await self.store.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        if path == "/healthz":
            if (b"user-agent", OWN_HEALTH_CHECK) not in scope["headers"]:
                self.last_request = time.monotonic()
            return await _plain(send, 503 if self.draining else 200, b"draining\n" if self.draining else b"ok\n")
        self.last_request = time.monotonic()
        if path == "/readyz":
            return await self.ready(send, dict(scope["headers"]))
        route = ROUTES.get((method, path))
        rec = Record(request_id=os.urandom(8).hex(), route=route or "unknown", started=time.perf_counter())
        self.in_flight += 1
        try:
            if route is None:
                raise errors.not_found(method, path)
            if self.in_flight > self.s.max_in_flight:
                raise errors.overloaded()
            await self.proxy(scope, receive, send, route, rec)
        except GatewayError as e:
            rec.status, rec.error = e.status, e.code or e.type
            await _respond(send, e.status, e.headers + JSON + [(b"x-gateway-request-id", rec.request_id.encode())],
                           e.body())
        except Exception as e:  # noqa: BLE001 - whatever it was, the client gets OpenAI's shape
            failure = errors.internal()
            rec.status, rec.error = failure.status, failure.code
            print(f"gateway: request {rec.request_id} failed: {type(e).__name__}: {e}", file=sys.stderr,
                  flush=True)
            ids = [(b"x-gateway-request-id", rec.request_id.encode())]
            await _quietly(_respond(send, failure.status, JSON + ids, failure.body()))
        finally:
            self.in_flight -= 1
            observe.emit(observe.line(rec, self.s.service, self.s.namespace))

    async def ready(self, send: Send, headers: RequestHeaders) -> None:
        checks = {"llm_key": bool(self.s.api_key), "client_keys": len(self.s.clients) > 0,
                  "cache": await self.store.ping(), "not_draining": not self.draining}
        ok = all(checks.values())
        doc: dict[str, Any] = {"ready": ok, "checks": checks}
        # Targets cooling down do not make a task unready (another task would see the same); they
        # are shown to a client of this gateway only, not to anyone who reaches the load balancer.
        if self.s.clients.client_for(headers.get(b"authorization")) is not None:
            doc["cooling_down"] = sorted(f"{upstream}/{model}" for upstream, model in self.health.cooling())
            # What this worker still owes the shared counters (after a store failure): 0 once paid.
            doc["unpaid"] = len(self.owed) + len(self.unsettled)
        await _respond(send, 200 if ok else 503, JSON, orjson.dumps(doc))

    async def proxy(self, scope: Scope, receive: Receive, send: Send, route: str, rec: Record) -> None:
        headers = dict(scope["headers"])
        if len(headers) < len(scope["headers"]) and \
                sum(1 for name, _ in scope["headers"] if name == b"authorization") > 1:
            raise errors.invalid("Send one Authorization header.", code="invalid_api_key")
        client = self.s.clients.client_for(headers.get(b"authorization"))
        if client is None:
            raise errors.unauthorized(b"authorization" in headers)
        rec.client = client.name
        limits = Limits.from_json(client.limits, self.s.default_limits)
        # A client's requests in flight here are some of its requests in flight everywhere: at its
        # bound already, it is refused before its body is read (or a trickled body would hold a
        # worker's places for everyone else until the store is asked).
        here = self.flying.get(client.name, 0)
        if limits.concurrent_requests and here >= limits.concurrent_requests:
            rec.rejected = "concurrent"
            raise rejection("concurrent", limits, here, 1)
        self.flying[client.name] = here + 1
        try:
            ex = Exchange(send, receive, rec, self.s.sse_keepalive_seconds, self.dog)
            await self.exchange(Call(scope, ex, headers, client, limits, route, rec))
        finally:
            self.flying[client.name] -= 1

    async def exchange(self, call: Call) -> None:
        ex, rec, route = call.ex, call.rec, call.route
        size = 0
        if call.scope["method"] == "POST":
            try:  # a trickled body holds nothing past its deadline
                body = await ex.read(_read_body(ex.receive, call.headers, self.s.max_request_bytes))
            except TimeoutError:
                raise errors.body_timeout(self.s.body_timeout_seconds) from None
            size = len(body)  # the client's bytes, before the gateway asks a stream for its usage
            call.body, call.doc, call.sent = self.prepare(route, body, rec, call.client)
            call.model_route = self.upstream.router.route(rec.model)
        rec.reserve = estimate(route, call.doc, size, self.s.output_tokens_estimate)
        if call.body is not None:
            call.policy = cache.policy(route, call.doc, call.headers)
        call.gate = await self.gate(call, call.policy)
        try:
            gate = call.gate
            if gate is not None and gate.entry is not None:
                if await self.from_cache(ex, gate.entry, route, rec):
                    return
                # Stored the other way and not convertible: a miss, and a miss passes the limits
                # (the request itself was counted with the hit).
                miss = cache.Policy(False, call.policy.write, "")
                call.gate = gate = await self.gate(call, miss, counted=True)
            if gate is not None and gate.outcome == "miss" and call.policy.read and not gate.holds_lock:
                if await self.coalesce(ex, gate, route, rec):
                    return
            rec.cache = (call.policy.label or "MISS") if call.body is not None else None
            await self.forward(call)
        except ClientGone:
            rec.status, rec.error = 499, "client_disconnected"
        except GatewayError as e:
            if not ex.started:
                raise
            rec.status, rec.error = e.status, e.code or e.type  # after an early start: an event
            await _quietly(ex.fail(e))
        finally:
            ex.close()
            await self.finish(call)

    async def finish(self, call: Call) -> None:
        """Settle the request's reservation, once: before its answer's last byte where there is
        one, else when the exchange ends."""
        if not call.settled:
            call.settled = True
            await self.settle(call.client, call.gate, call.rec)

    async def gate(self, call: Call, policy: cache.Policy, counted: bool = False) -> Optional[Gate]:
        """One round trip: the entry and the client's limits. None: nothing to check, or the
        store did not answer (then the request goes on without cache and limits). `counted`:
        the request was counted already (a hit that could not be served)."""
        client, limits, route, doc, rec = call.client, call.limits, call.route, call.doc, call.rec
        query = call.scope.get("query_string", b"")
        if not policy.used and not limits.any:
            return None
        tokens_in, tokens_out = rec.reserve
        price = self.reserve_prices.get(rec.model or "") or self.s.prices.of(rec.model)
        nano = price.nano(tokens_in, tokens_out) if limits.usd_per_day else 0
        tokens = tokens_in + tokens_out if limits.tokens_per_minute else 0
        scope = call.model_route.scope if call.model_route else ""
        key = cache.key(route, doc, self.s.org_id, self.s.project_id, query, scope) if policy.used else ""
        try:
            gate = await self.store.gate(client.name, limits, key, policy.read, policy.write, tokens, nano,
                                         int(self.s.coalesce_wait_seconds * 1000), counted)
        except StoreUnavailable as e:
            rec.cache_error = True
            if e.maybe is not None:  # sent and timed out: applied, maybe; to be undone
                self.unsettled.append(Unsettled(client.name, e.maybe, 0, 0, 0 if counted else -1, void=True))
            if not limits.any:
                return None
            # No cache; the limits as this process alone sees them.
            gate = await self.local.gate(client.name, limits, "", False, False, tokens, nano, 0, counted)
            gate.local, gate.counted = True, counted
        if not gate.admitted:
            rec.rejected = gate.outcome
            _, _, to_minute, to_day = windows()
            raise rejection(gate.outcome, limits, gate.used, to_day if gate.outcome == "spend" else to_minute)
        return gate

    async def from_cache(self, ex: Exchange, entry: bytes, route: str, rec: Record,
                         coalesced: bool = False) -> bool:
        served = cache.serve(entry, route, rec.stream)
        if served is None:
            return False  # stored the other way and not convertible: ask the upstream
        rec.cache, rec.coalesced, rec.status = "HIT", coalesced, 200
        headers = [(b"x-gateway-cache", b"HIT"), (b"x-gateway-request-id", rec.request_id.encode())]
        if rec.stream:
            events = UsageFilter(strip_usage_chunk=not rec.asked_usage)(served)
            await ex.respond(200, headers + SSE[:2], events)
        else:
            await ex.respond(200, headers + JSON, served)
        rec.ttft_ms = round((time.perf_counter() - rec.started) * 1000, 3) if rec.stream else None
        return True

    async def coalesce(self, ex: Exchange, gate: Gate, route: str, rec: Record) -> bool:
        """Another request is filling this entry: wait for it, within the bound."""
        try:
            entry = await ex.wait(self.store.wait(gate, self.s.coalesce_wait_seconds))
        except StoreUnavailable:
            rec.cache_error = True
            return False
        if entry is None or not await self.from_cache(ex, entry, route, rec, coalesced=True):
            return False
        return True

    async def settle(self, client: Client, gate: Optional[Gate], rec: Record) -> None:
        """Charge what the upstream worked on instead of the estimate: nothing for a hit, an
        error or a request it never took on; its reported usage; else (a stream the client left
        or that was cut, usage never reported) the input estimate and an output token for each
        event relayed, or the whole output reserved for an answer that never said."""
        used_in, used_out = self.consumed(rec)
        rec.cost_nano = self.s.prices.of(rec.upstream_model or rec.model).nano(used_in, used_out) \
            if rec.answered else None
        if gate is None or gate.reservation is None:
            return
        r = gate.reservation
        used_tokens = used_in + used_out if r.tokens else 0
        used_nano = (rec.cost_nano or 0) if r.nano else 0
        if gate.local:
            await self.local.settle(client.name, r, used_tokens, used_nano)
            owed = self.owed.setdefault((client.name, r.minute, r.day), [0, 0, 0])
            owed[0] += 0 if gate.counted else 1  # a hit it could not serve was counted already
            owed[1] += used_tokens
            owed[2] += used_nano
            return
        try:
            await self.store.settle(client.name, r, used_tokens, used_nano)
        except StoreUnavailable:
            rec.cache_error = True
            # Bounded: only requests admitted by the store before it failed get here.
            self.unsettled.append(Unsettled(client.name, r, used_tokens, used_nano))

    async def every_second(self) -> None:
        """What this process charged alone, or could not settle, goes to the shared counters as
        soon as the store answers again (within a second or so), request or not; with routes, the
        other processes' cooldowns are read and the per-upstream metrics written."""
        tick = 0
        while True:
            await asyncio.sleep(1.0)
            tick += 1
            try:
                if self.owed or self.unsettled:
                    await self.pay()
                if self.s.routed:
                    await self.read_cooldowns()
                    if tick % UPSTREAM_METRICS_SECONDS == 0:
                        self.write_upstream_metrics()
            except Exception as e:  # noqa: BLE001 - one bad second must not end the loop for good
                print(f"gateway: background work failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)

    def share_cooldown(self, key: Key, seconds: float) -> None:
        """Tell the other processes (in the background: the request goes on to another target)."""
        assert isinstance(self.store, ValkeyStore)  # noqa: S101 - set only with CACHE_HOST
        until_ms = int((time.time() + seconds) * 1000)
        task = asyncio.ensure_future(self.store.cool(key, until_ms))
        task.add_done_callback(_ignore_failure)

    async def read_cooldowns(self) -> None:
        if not isinstance(self.store, ValkeyStore) or not self.route_keys:
            return
        try:
            found = await self.store.cooldowns(self.route_keys)
        except StoreUnavailable:
            return
        wall = time.time()
        for key, until_ms in found.items():
            self.health.cool(key, until_ms / 1000 - wall, counted=False)

    def write_upstream_metrics(self) -> None:
        h = self.health
        observe.emit(self.upstream.stats.lines(list(self.s.upstreams), sorted(h.unhealthy()), h.cooldowns,
                                               self.s.service, self.s.namespace))

    async def pay(self, last: bool = False) -> None:
        """One try at each debt; what the store does not take (or a cancellation cuts) stays owed.
        `last`: the process is exiting, the store is tried even within its skip after a failure."""
        if last and isinstance(self.store, ValkeyStore):
            self.store.try_now()
        for window in list(self.owed):
            client, minute, day = window
            requests, tokens, nano = self.owed.pop(window)
            mark = os.urandom(8).hex()
            debt = Unsettled(client, Reservation(0, 0, minute, day, mark=mark), tokens, nano, requests)
            try:
                await self.store.settle(client, debt.r, tokens, nano, requests)
            except StoreUnavailable as e:
                if e.sent:  # it may have landed: sent again as it was, by its mark
                    self.unsettled.append(debt)
                else:  # skipped: owed still, with what comes next in its window
                    for i, v in enumerate((requests, tokens, nano)):
                        self.owed.setdefault(window, [0, 0, 0])[i] += v
            except asyncio.CancelledError:
                self.unsettled.append(debt)
                raise
        for _ in range(len(self.unsettled)):
            debt = self.unsettled.pop(0)
            try:
                await self.store.settle(debt.client, debt.r, debt.tokens, debt.nano, debt.requests, debt.void)
            except (StoreUnavailable, asyncio.CancelledError) as e:
                self.unsettled.append(debt)
                if isinstance(e, asyncio.CancelledError):
                    raise

    @staticmethod
    def consumed(rec: Record) -> tuple[int, int]:
        if not rec.answered:  # a cache hit, or a request the upstream never took on: nothing used
            return 0, 0
        if rec.input_tokens is not None:
            return rec.input_tokens, rec.output_tokens or 0
        rec.tokens_estimated = True
        reserved_in, reserved_out = rec.reserve
        rec.input_tokens, rec.output_tokens = reserved_in, rec.relayed if rec.stream else reserved_out
        return rec.input_tokens, rec.output_tokens

    async def forward(self, call: Call) -> None:
        """The upstream's answer to the client. The entry is filled (or its fill lock let go) and
        the reservation settled (`finish`) before the answer's last byte goes out: whoever asks
        next sees both."""
        scope, ex, route, headers, body, rec, gate = call.scope, call.ex, call.route, call.headers, call.body, \
            call.rec, call.gate
        forward = {name: headers[raw].decode("latin-1") for raw, name in FORWARDED.items() if raw in headers}
        if "Idempotency-Key" in forward:  # the API's key space is the project's: scope it to the client
            forward["Idempotency-Key"] = tenancy.idempotency_key(rec.client, forward["Idempotency-Key"])
        forward["X-Client-Request-Id"] = rec.request_id
        if body is not None:
            forward["Content-Type"] = "application/json"
        # OPENAI_BASE_URL ends in /v1, as the SDKs expect: append what follows the client's /v1.
        path = scope["path"][3:] + (f"?{scope['query_string'].decode('latin-1')}"
                                    if scope.get("query_string") else "")
        store = gate if call.policy.write else None  # the gate whose entry this answer fills
        try:
            try:
                resp = await ex.wait(self.upstream.send(scope["method"], path, body, forward, rec,
                                                        call.model_route, call.body_for))
            except ClientGone:
                rec.answered = True  # the upstream had the request: charge its reservation
                raise
            try:
                rec.status, rec.answered = resp.status, resp.status == 200
                rec.upstream_request_id = resp.headers.get("x-request-id")
                out = _passed(resp.headers) + [(b"x-gateway-request-id", rec.request_id.encode()),
                                               (b"x-gateway-upstream", (rec.upstream or "").encode())]
                if rec.cache:
                    out.append((b"x-gateway-cache", rec.cache.encode()))
                if rec.stream and resp.status == 200 and resp.content_type == "text/event-stream":
                    recorded = _Recording(self.s.cache_max_entry_bytes)
                    watch = UsageFilter(route == "chat.completions" and not rec.asked_usage,
                                        ENDINGS.get(route))
                    completed = await self.stream(resp, ex, out, rec, watch, recorded if store else None)
                    if completed is None:
                        return  # the client left
                    entry = recorded.entry()
                    if store and completed and entry is not None and cache.complete_stream(route, entry):
                        await self.fill(store, cache.encode(cache.SSE_ENTRY, entry), rec)
                    await self.let_go(gate, rec)
                    await self.finish(call)
                    await ex.end()
                else:
                    try:
                        data = await ex.wait(resp.read())
                    except (TimeoutError, aiohttp.ClientError):  # a short body, a bad length, a drop
                        rec.status = 502
                        raise errors.upstream_unavailable("the answer broke off") from None
                    if route == "models" and resp.status == 200:
                        data = self.listed_models(data, rec)
                    if resp.status == 200:
                        found = usage_of(_loads(data))
                        if found:
                            rec.input_tokens, rec.output_tokens = found
                        if store and len(data) <= self.s.cache_max_entry_bytes \
                                and cache.complete_answer(route, resp.content_type, data):
                            await self.fill(store, cache.encode(cache.JSON_ENTRY, data), rec)
                    await self.let_go(gate, rec)
                    await self.finish(call)
                    if ex.started and resp.status != 200:  # an early-started stream: the error as an event
                        rec.error = "upstream_error"
                        await ex.write(b"data: " + (data if _is_error(data) else errors.upstream_unavailable(
                            f"status {resp.status}").body()) + b"\n\n")
                        await ex.end()
                    else:
                        await ex.respond(resp.status, out, data)
            finally:
                resp.release()
        finally:
            await self.let_go(gate, rec)  # the client left, or the upstream failed

    def listed_models(self, data: bytes, rec: Record) -> bytes:
        """The upstream's model list, less what this client may not call."""
        doc = _loads(data)
        if not self.s.prices.listed or not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
            return data
        client = self.s.clients.named(rec.client)
        allowed = client.models if client else None
        if self.s.routes:  # the routes' names are the models, whatever the default upstream lists
            doc["data"] = [{"id": name, "object": "model", "created": 0, "owned_by": "llm-service"}
                           for name in self.s.routes if allowed is None or name in allowed]
            return orjson.dumps(doc)
        doc["data"] = [m for m in doc["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)
                       and (listed := self.s.prices.listed_as(m["id"])) is not None
                       and (allowed is None or listed in allowed)]
        return orjson.dumps(doc)

    async def fill(self, gate: Gate, entry: bytes, rec: Record) -> None:
        try:
            await self.store.fill(gate, entry, self.s.cache_ttl_seconds)
            gate.holds_lock = False  # the fill let it go
        except StoreUnavailable:
            rec.cache_error = True

    async def let_go(self, gate: Optional[Gate], rec: Record) -> None:
        """Give up a fill lock this answer did not fill, once: the requests waiting for it stop
        waiting and ask the upstream themselves."""
        if gate is None or not gate.holds_lock:
            return
        try:
            await self.store.release(gate)
        except StoreUnavailable:
            rec.cache_error = True
        gate.holds_lock = False

    def prepare(self, route: str, body: bytes, rec: Record, client: Client) -> tuple[bytes, Doc, Doc]:
        """Parse once for the log and the stream flag; check the model and the stored state a
        client names before anything uses them. What goes upstream is the document checked,
        written again (a key sent twice cannot mean one thing here and another there), with
        `store: false` for a client kept from stored state and a chat stream asked for its usage."""
        doc = _loads(body)
        if not isinstance(doc, dict):
            raise errors.bad_json()
        rec.model = check_model(doc.get("model"), self.s.prices, client.models, self.s.routes)
        rec.stream = doc.get("stream") is True
        rec.asked_usage = _asked_usage(doc)
        sent = doc if client.stateful else (tenancy.stores_nothing(route, doc) or doc)
        if rec.stream and route == "chat.completions" and not rec.asked_usage:
            options = doc.get("stream_options")
            options = options if isinstance(options, dict) else {}
            sent = {**sent, "stream_options": {**options, "include_usage": True}}
        body = orjson.dumps(sent)
        if not client.stateful:
            field = tenancy.stored_state(route, sent, body)
            if field:
                raise errors.invalid(f"`{field}` names state the API keeps, which this client may not use: "
                                     "every client of this gateway shares the API's project.", param=field,
                                     code="stateful_not_allowed")
        if self.s.log_prompts:
            rec.prompt = doc.get("messages", doc.get("input"))
        return body, doc, sent

    async def stream(self, resp: aiohttp.ClientResponse, ex: Exchange, headers: Headers, rec: Record,
                     usage: UsageFilter, tap: Optional[Callable[[bytes], None]] = None) -> Optional[bool]:
        """Relay the stream, all but its end. True: the upstream finished it; False: it broke off
        (the client got an error event); None: the client went away (nothing more to send)."""
        await ex.start(200, headers + SSE[1:])

        def first() -> None:
            rec.ttft_ms = round((time.perf_counter() - rec.started) * 1000, 3)

        # A client that goes away stops the upstream too: nobody pays for tokens no one reads.
        copying = asyncio.ensure_future(relay(resp.content.readany, ex.write, self.s.sse_keepalive_seconds,
                                              first, usage, tap))
        try:
            try:
                await asyncio.wait({copying, ex.gone}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                # The drain's deadline: tell the client, rather than end the stream as if finished,
                # once the relay has stopped (no chunk nor keepalive may follow the error event).
                copying.cancel()
                await asyncio.gather(copying, return_exceptions=True)
                rec.error = errors.stream_cut_by_drain().code
                await _quietly(ex.write(errors.stream_cut_by_drain().sse_event()))
                raise
            if ex.gone.done() and not copying.done():
                copying.cancel()
                resp.close()
                rec.status, rec.error = 499, "client_disconnected"
                return None
            completed = True
            try:
                copying.result()
                if not usage.ended:  # the upstream closed the stream without finishing it
                    raise aiohttp.ClientPayloadError("the stream ended before its end")
            except (TimeoutError, aiohttp.ClientError):
                failure = errors.stream_interrupted()
                rec.error, completed = failure.code, False
                await ex.write(failure.sse_event())
            return completed
        finally:
            rec.relayed = usage.events
            if usage.usage:  # reported, even if the client left before the end: charge it
                rec.input_tokens, rec.output_tokens = usage.usage
            if not copying.done():
                copying.cancel()


def _ignore_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a cooldown the store missed is only this process's


class _Recording:
    """A stream's events for the cache, up to `limit` bytes: past it, nothing is kept."""

    def __init__(self, limit: int):
        self.parts: list[bytes] = []
        self.size, self.limit = 0, limit

    def __call__(self, events: bytes) -> None:
        self.size += len(events)
        if self.size <= self.limit:
            self.parts.append(events)

    def entry(self) -> Optional[bytes]:
        return b"".join(self.parts) if self.size <= self.limit else None


async def _quietly(write: Awaitable[Any], seconds: float = 1.0) -> None:
    """A last write that must not hold up a stop (the client may be gone too)."""
    try:
        await asyncio.wait_for(write, seconds)
    except Exception:  # noqa: BLE001, S110 - nothing more can be told to this client
        pass


def _is_error(data: bytes) -> bool:
    doc = _loads(data)
    return isinstance(doc, dict) and isinstance(doc.get("error"), dict)


async def _read_body(receive: Receive, headers: RequestHeaders, limit: int) -> bytes:
    declared = headers.get(b"content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise errors.too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise errors.too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _asked_usage(doc: Optional[Doc]) -> bool:
    options = (doc or {}).get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _passed(headers: Mapping[str, str]) -> Headers:
    out = []
    for name, value in headers.items():
        lower = name.lower()
        if lower in PASSED_HEADERS or lower.startswith(PASSED_PREFIXES):
            out.append((lower.encode(), value.encode("latin-1")))
    return out


async def _respond(send: Send, status: int, headers: Headers, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": headers + [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _plain(send: Send, status: int, body: bytes) -> None:
    await _respond(send, status, [(b"content-type", b"text/plain")], body)
