"""A fake OpenAI-compatible API on 127.0.0.1, for the gateway's tests and benchmark.

Each request takes the next step of a script (`POST /_script`, a list; when it runs out, every
request is answered normally, or by the step set as `always`), and is recorded (`GET /_requests`):
what reached the upstream is what the tests assert on. Steps:

    {"kind": "ok"}                                    a normal answer for the path, with usage
    {"kind": "status", "status": 429, "headers": {"retry-after-ms": "50"}}
    {"kind": "drop"}                                  close the connection without an answer
    {"kind": "slow", "delay": 1.0}                    a normal answer, late
    {"kind": "stream", "first_delay": 0.5, "delay": 0.01, "chunks": ["Hel", "lo"], "drop_after": 1}
    {"kind": "stream", "chunks": ["Hel"], "unfinished": true}   end the body without the final events
    {"kind": "models", "ids": ["gpt-4o-mini", "gpt-4o"]}   GET /v1/models listing these
    {"kind": "raw", "status": 200, "content_type": "text/html", "body": "<html>"}   these bytes
    {"kind": "ok", "content": "..."}                  a chat answer with this text
    {"kind": "stream", "error_event": true}           an error event before [DONE]
    {"kind": "stream", "before_done": 1.0}            a pause between the usage chunk and [DONE]
    {"kind": "short"}                                 a 200 whose body stops before its Content-Length

A request may name its own step instead, in `metadata.fake_step` (a JSON string). A step may set
the usage it reports: `"usage": [prompt, completion]`. With `realistic = True`, each answer
reports usage in the thousands, different for every request (`realistic_usage`), so a test of the
limit and spend arithmetic can tell the input tokens from the output tokens, and one request
from another; each recorded request holds the usage it was answered with (`usage`, or None) and
when it arrived (`at`, time.monotonic() of this process).

Run alone for the benchmark: `python -m tests.fake_upstream 9001`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from typing import Any, Optional

from aiohttp import web

CHAT = {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there."},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}
EMBEDDING = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
             "model": "text-embedding-3-small", "usage": {"prompt_tokens": 5, "total_tokens": 5}}
RESPONSE = {"id": "resp_fake", "object": "response", "status": "completed", "model": "gpt-4o-mini",
            "output": [{"type": "message", "role": "assistant",
                        "content": [{"type": "output_text", "text": "Hello there."}]}],
            "usage": {"input_tokens": 12, "output_tokens": 3, "total_tokens": 15}}
MODELS = {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "owned_by": "openai"}]}
RATE_HEADERS = {"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499",
                "x-request-id": "req_fake_upstream"}
USAGE = {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}


def realistic_usage(n: int) -> tuple[int, int]:
    """The n-th request's (prompt, completion) tokens: thousands, never twice the same pair, and
    never in a fixed ratio (a counter that swaps or drops one side comes out different)."""
    return 1000 + (n * 7919) % 3001, 500 + (n * 104729) % 2503


def _chat_usage(tokens: tuple[int, int]) -> dict[str, int]:
    return {"prompt_tokens": tokens[0], "completion_tokens": tokens[1], "total_tokens": sum(tokens)}


def _responses_usage(tokens: tuple[int, int]) -> dict[str, int]:
    return {"input_tokens": tokens[0], "output_tokens": tokens[1], "total_tokens": sum(tokens)}


class FakeUpstream:
    def __init__(self):
        self.script: list[dict[str, Any]] = []
        self.always: Optional[dict[str, Any]] = None  # the step when the script is empty (else "ok")
        self.requests: list[dict[str, Any]] = []
        self.realistic = False
        self.answered = 0  # requests answered with realistic usage
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_post("/_script", self._set_script)
        self.app.router.add_get("/_requests", self._get_requests)
        self.app.router.add_post("/_reset", self._reset)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    async def _set_script(self, request: web.Request) -> web.Response:
        self.script = list(await request.json())
        return web.json_response({"ok": True})

    async def _get_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests)

    async def _reset(self, request: web.Request) -> web.Response:
        self.script, self.requests, self.always = [], [], None
        return web.json_response({"ok": True})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.requests.append({"method": request.method, "path": request.path_qs,
                              "headers": dict(request.headers), "body": body, "raw": raw.decode(),
                              "at": time.monotonic()})
        # A request may carry its own step (metadata.fake_step, JSON): what concurrent tests need,
        # where the order of arrival is not the order of sending.
        own = ((body or {}).get("metadata") or {}).get("fake_step") if isinstance(body, dict) else None
        step = json.loads(own) if own else self.script.pop(0) if self.script else self.always or {"kind": "ok"}
        kind = step["kind"]
        answers = kind in ("ok", "slow", "stream") and request.path != "/v1/models"
        record = self.requests[-1]
        tokens = record["usage"] = self._tokens(step) if answers else None
        if kind == "drop":
            request.transport.close()
            raise asyncio.CancelledError  # the handler ends with the connection, no answer
        if kind == "status":
            return web.json_response(step.get("body") or {"error": {"message": f"fake {step['status']}",
                                                                   "type": "server_error", "code": None}},
                                     status=step["status"], headers={**RATE_HEADERS, **step.get("headers", {})})
        if kind == "short":
            resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "1000"})
            await resp.prepare(request)
            await resp.write(b'{"id": "chatcmpl-fake", "choi')
            request.transport.close()
            return resp
        if kind == "raw":
            return web.Response(status=step.get("status", 200), body=step["body"].encode(),
                                content_type=step.get("content_type", "text/plain"))
        if kind == "models":
            return web.json_response({"object": "list", "data": [
                {"id": m, "object": "model", "owned_by": "openai"} for m in step["ids"]]}, headers=RATE_HEADERS)
        if kind == "slow":
            await asyncio.sleep(step["delay"])
        if kind == "stream" or (body or {}).get("stream") is True:
            return await self._stream(request, body or {}, step if kind == "stream" else {}, tokens, record)
        answer = self._answer(request.path, tokens)
        if step.get("content") is not None and answer is CHAT:
            answer = {**CHAT, "choices": [{**CHAT["choices"][0], "message": {"role": "assistant",
                                                                            "content": step["content"]}}]}
        return web.json_response(answer, headers=RATE_HEADERS)

    def _tokens(self, step: dict[str, Any]) -> Optional[tuple[int, int]]:
        """The (prompt, completion) tokens this answer reports, if not the fixed defaults."""
        if step.get("usage") is not None:
            return tuple(step["usage"])
        if self.realistic:
            self.answered += 1
            return realistic_usage(self.answered)
        return None

    def _answer(self, path: str, tokens: Optional[tuple[int, int]] = None) -> dict[str, Any]:
        answer = {"/v1/embeddings": EMBEDDING, "/v1/responses": RESPONSE, "/v1/models": MODELS}.get(path, CHAT)
        if tokens is None or answer is MODELS:
            return answer
        if answer is EMBEDDING:
            return {**EMBEDDING, "usage": {"prompt_tokens": tokens[0], "total_tokens": tokens[0]}}
        return {**answer, "usage": _responses_usage(tokens) if answer is RESPONSE else _chat_usage(tokens)}

    async def _stream(self, request: web.Request, body: dict, step: dict,
                      tokens: Optional[tuple[int, int]] = None,
                      record: Optional[dict[str, Any]] = None) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **RATE_HEADERS})
        await resp.prepare(request)
        if step.get("drop_after") is not None and record is not None:
            record["usage"] = None  # it breaks off before its usage: it reports none
        try:
            return await self._events(request, resp, body, step, tokens)
        except ConnectionResetError:  # the gateway stopped the stream (its client left): no more to send
            return resp

    async def _events(self, request: web.Request, resp: web.StreamResponse, body: dict, step: dict,
                      tokens: Optional[tuple[int, int]]) -> web.StreamResponse:
        await asyncio.sleep(step.get("first_delay", 0))
        chunks = step.get("chunks", ["Hel", "lo", "."])
        responses_api = request.path == "/v1/responses"
        for i, text in enumerate(chunks):
            if step.get("drop_after") is not None and i >= step["drop_after"]:
                # A moment first: the client's reader takes what was sent before it sees the drop
                # (aiohttp raises a connection error before handing out what is still buffered).
                await asyncio.sleep(0.1)
                request.transport.close()
                return resp
            await resp.write(_event(_delta(text, responses_api), "response.output_text.delta"
                                    if responses_api else None))
            await asyncio.sleep(step.get("delay", 0))
        if step.get("unfinished"):
            await resp.write_eof()  # a clean end of the body, but not of the answer
            return resp
        if responses_api:
            done = {"type": "response.completed", "response": {**RESPONSE, "usage": _responses_usage(
                tokens or (12, len(chunks)))}}
            await resp.write(_event(done, "response.completed"))
        else:
            if step.get("error_event"):
                await resp.write(b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n')
            await resp.write(_event(_chunk({}, "stop")))
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = _chat_usage(tokens) if tokens else USAGE
                await resp.write(_event({**_chunk(None, None), "choices": [], "usage": usage}))
            await asyncio.sleep(step.get("before_done", 0))
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _chunk(delta: Any, finish: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "gpt-4o-mini", "choices": [choice], "usage": None}


def _delta(text: str, responses_api: bool) -> dict[str, Any]:
    if responses_api:
        return {"type": "response.output_text.delta", "delta": text}
    return _chunk({"content": text}, None)


def _event(doc: dict[str, Any], name: str | None = None) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


class Running:
    """The fake upstream served from a thread of this process."""

    def __init__(self, port: int = 0):
        self.fake = FakeUpstream()
        self._ready = threading.Event()
        self._port = port
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        runner = web.AppRunner(self.fake.app, access_log=None)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", self._port)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def main() -> None:
    import uvloop

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9001
    web.run_app(FakeUpstream().app, host="127.0.0.1", port=port, access_log=None, print=None,
                loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
