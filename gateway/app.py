"""The gateway as a plain ASGI application: no framework on the request path.

Routes: `POST /v1/chat/completions`, `POST /v1/responses`, `POST /v1/embeddings`, `GET /v1/models`
(to OPENAI_BASE_URL with the stack's key), `GET /healthz` and `GET /readyz` (no key needed).
Request and response bodies pass through as bytes; the request is parsed once (for `model` and
`stream`) and re-serialised only to ask a stream for its token usage.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Optional

import aiohttp
import orjson

from gateway import errors, observe
from gateway.errors import GatewayError
from gateway.observe import Record
from gateway.relay import UsageFilter, relay, usage_of
from gateway.settings import Settings
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


class App:
    def __init__(self, settings: Settings):
        self.s = settings
        self.upstream = Upstream(settings)
        self.draining = False  # set on SIGTERM: /healthz fails from then on

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.upstream.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.upstream.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope: dict, receive, send) -> None:
        method, path = scope["method"], scope["path"]
        if path == "/healthz":
            return await _plain(send, 503 if self.draining else 200, b"draining\n" if self.draining else b"ok\n")
        if path == "/readyz":
            return await self.ready(send)
        route = ROUTES.get((method, path))
        rec = Record(request_id=os.urandom(8).hex(), route=route or "unknown", started=time.perf_counter())
        try:
            if route is None:
                raise errors.not_found(method, path)
            await self.proxy(scope, receive, send, route, rec)
        except GatewayError as e:
            rec.status, rec.error = e.status, e.code or e.type
            await _respond(send, e.status, e.headers + JSON + [(b"x-gateway-request-id", rec.request_id.encode())],
                           e.body())
        finally:
            observe.emit(observe.line(rec, self.s.service, self.s.namespace))

    async def ready(self, send) -> None:
        checks = {"llm_key": bool(self.s.api_key), "client_keys": len(self.s.clients) > 0,
                  "not_draining": not self.draining}
        ok = all(checks.values())
        await _respond(send, 200 if ok else 503, JSON, orjson.dumps({"ready": ok, "checks": checks}))

    async def proxy(self, scope: dict, receive, send, route: str, rec: Record) -> None:
        headers = dict(scope["headers"])
        client = self.s.clients.client_for(headers.get(b"authorization"))
        if client is None:
            raise errors.unauthorized(b"authorization" in headers)
        rec.client = client.name
        body, doc = None, None
        if scope["method"] == "POST":
            body = await _read_body(receive, headers, self.s.max_request_bytes)
            body, doc = self.prepare(route, body, rec)
        forward = {name: headers[raw].decode("latin-1") for raw, name in FORWARDED.items() if raw in headers}
        forward["X-Client-Request-Id"] = rec.request_id
        if body is not None:
            forward["Content-Type"] = "application/json"
        # OPENAI_BASE_URL ends in /v1, as the SDKs expect: append what follows the client's /v1.
        path = scope["path"][3:] + (f"?{scope['query_string'].decode('latin-1')}"
                                    if scope.get("query_string") else "")
        resp = await self.upstream.send(scope["method"], path, body, forward, rec)
        try:
            rec.status = resp.status
            rec.upstream_request_id = resp.headers.get("x-request-id")
            out = _passed(resp.headers) + [(b"x-gateway-request-id", rec.request_id.encode())]
            if rec.stream and resp.status == 200 and resp.content_type == "text/event-stream":
                strip = route == "chat.completions" and not _asked_usage(doc)
                await self.stream(resp, send, receive, out, rec, UsageFilter(strip))
            else:
                data = await resp.read()
                if resp.status == 200:
                    found = usage_of(_loads(data))
                    if found:
                        rec.input_tokens, rec.output_tokens = found
                await _respond(send, resp.status, out, data)
        finally:
            resp.release()

    def prepare(self, route: str, body: bytes, rec: Record) -> tuple[bytes, dict]:
        """Parse once for the log and the stream flag; ask a chat stream for its usage."""
        doc = _loads(body)
        if not isinstance(doc, dict):
            raise errors.bad_json()
        model = doc.get("model")
        rec.model = model if isinstance(model, str) else None
        rec.stream = doc.get("stream") is True
        if self.s.log_prompts:
            rec.prompt = doc.get("messages", doc.get("input"))
        if rec.stream and route == "chat.completions" and not _asked_usage(doc):
            options = doc.get("stream_options") if isinstance(doc.get("stream_options"), dict) else {}
            body = orjson.dumps({**doc, "stream_options": {**options, "include_usage": True}})
        return body, doc

    async def stream(self, resp: aiohttp.ClientResponse, send, receive, headers: list, rec: Record,
                     usage: UsageFilter) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers + [
            (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]})

        async def write(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        def first() -> None:
            rec.ttft_ms = round((time.perf_counter() - rec.started) * 1000, 3)

        # A client that goes away stops the upstream too: nobody pays for tokens no one reads.
        copying = asyncio.ensure_future(relay(resp.content.readany, write, self.s.sse_keepalive_seconds,
                                              first, usage))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({copying, gone}, return_when=asyncio.FIRST_COMPLETED)
            if gone.done() and not copying.done():
                copying.cancel()
                resp.close()
                rec.status, rec.error = 499, "client_disconnected"
                return
            try:
                copying.result()
            except (TimeoutError, aiohttp.ClientError):
                failure = errors.stream_interrupted()
                rec.error = failure.code
                await write(failure.sse_event())
            if usage.usage:
                rec.input_tokens, rec.output_tokens = usage.usage
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.cancel()
            if not copying.done():
                copying.cancel()


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _read_body(receive, headers: dict, limit: int) -> bytes:
    declared = headers.get(b"content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise errors.too_large(limit)
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise errors.too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _asked_usage(doc: Optional[dict]) -> bool:
    options = (doc or {}).get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _passed(headers) -> list[tuple[bytes, bytes]]:
    out = []
    for name, value in headers.items():
        lower = name.lower()
        if lower in PASSED_HEADERS or lower.startswith(PASSED_PREFIXES):
            out.append((lower.encode(), value.encode("latin-1")))
    return out


async def _respond(send, status: int, headers: list, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": headers + [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _plain(send, status: int, body: bytes) -> None:
    await _respond(send, status, [(b"content-type", b"text/plain")], body)
