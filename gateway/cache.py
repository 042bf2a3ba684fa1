"""The response cache's rules: what is cached, under which key, and how an entry is served.

Cached by default: requests whose answer is meant to be repeatable, i.e. embeddings, and chat or
Responses requests with `temperature: 0`. Any other request is cached when the client opts in with
`X-Gateway-Cache: on`. `Cache-Control: no-store` bypasses the cache (no read, no write);
`Cache-Control: no-cache` refreshes it (no read; the new answer replaces the entry). Only complete
200 answers are stored (JSON of the route's shape, or a stream that ended as the upstream ends a
finished one, with no error event), and none larger than GATEWAY_CACHE_MAX_ENTRY_BYTES; errors,
interrupted streams and non-answers never are.

The key is scoped to the client (a client never reads another's entry), the upstream organization
and project, and the route, over a canonical form of the body: keys sorted, whitespace gone, and
without the fields that do not change the answer (`stream`, `stream_options`, `user`, `store`,
`metadata`, `service_tier`). So a streamed and a non-streamed request share an entry, and a chat
answer stored one way is served the other way when it holds text only (one choice, no tool calls).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Optional

import orjson

from gateway.relay import ENDINGS, split_complete

# Fields that change how an answer is delivered or recorded, not what it says.
NOT_IN_KEY = ("stream", "stream_options", "user", "store", "metadata", "service_tier")
JSON_ENTRY, SSE_ENTRY = b"J", b"S"


@dataclass(frozen=True)
class Policy:
    read: bool
    write: bool
    label: str  # what the response header says when the cache is not read: BYPASS, REFRESH

    @property
    def used(self) -> bool:
        return self.read or self.write


BYPASS = Policy(False, False, "BYPASS")  # not cached: no read, no write


def policy(route: str, doc: dict[str, Any], headers: dict[bytes, bytes]) -> Policy:
    control = headers.get(b"cache-control", b"").lower()
    if b"no-store" in control:
        return BYPASS
    opted_in = headers.get(b"x-gateway-cache", b"").lower() == b"on"
    repeatable = route == "embeddings" or (route in ("chat.completions", "responses")
                                           and doc.get("temperature") == 0)
    if not (opted_in or repeatable):
        return BYPASS
    if b"no-cache" in control:
        return Policy(False, True, "REFRESH")
    return Policy(True, True, "")




def key(route: str, doc: dict[str, Any], org: str, project: str, query: bytes = b"", scope: str = "") -> str:
    """`scope`: the upstreams and models a routed model goes to (routing.Route.scope), so an alias
    moved to another model never serves the old one's answers."""
    canonical = {k: v for k, v in doc.items() if k not in NOT_IN_KEY}
    # The query string goes upstream as sent (an api-version, say), so it is part of the question.
    parts = [route, org, project, query.decode("latin-1"), canonical] + ([scope] if scope else [])
    body = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()


def encode(kind: bytes, body: bytes) -> bytes:
    return kind + body


def serve(entry: bytes, route: str, stream: bool) -> Optional[bytes]:
    """The entry as this request wants it (SSE bytes or a JSON body), or None when it cannot be
    (then the request is a miss)."""
    kind, body = entry[:1], entry[1:]
    if (kind == SSE_ENTRY) == stream:
        return body
    if route != "chat.completions":
        return None
    try:
        return chat_json_to_sse(body) if stream else chat_sse_to_json(body)
    except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError):
        return None  # not an answer of the shape the conversion reads


def chat_json_to_sse(body: bytes) -> Optional[bytes]:
    doc = orjson.loads(body)
    choices = doc.get("choices") or []
    if len(choices) != 1 or (choices[0].get("message") or {}).get("tool_calls"):
        return None
    message, choice = choices[0]["message"], choices[0]
    base = {"id": doc.get("id"), "object": "chat.completion.chunk", "created": doc.get("created"),
            "model": doc.get("model"), "system_fingerprint": doc.get("system_fingerprint")}
    events = [
        {**base, "choices": [{"index": 0, "delta": {"role": message.get("role", "assistant"),
                                                     "content": message.get("content") or ""},
                              "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason")}]},
    ]
    if doc.get("usage"):
        events.append({**base, "choices": [], "usage": doc["usage"]})
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def chat_sse_to_json(body: bytes) -> Optional[bytes]:
    events, _ = split_complete(body)
    text, role, finish, usage, first = [], "assistant", None, None, None
    for event in events.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not event.startswith(b"data:"):
            continue
        data = event[5:].strip()
        if data == b"[DONE]":
            break
        chunk = orjson.loads(data)
        first = first or chunk
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if choice.get("index", 0) != 0 or delta.get("tool_calls") or delta.get("function_call"):
                return None
            role = delta.get("role", role)
            text.append(delta.get("content") or "")
            finish = choice.get("finish_reason") or finish
    if first is None:
        return None
    doc = {"id": first.get("id"), "object": "chat.completion", "created": first.get("created"),
           "model": first.get("model"), "system_fingerprint": first.get("system_fingerprint"),
           "choices": [{"index": 0, "message": {"role": role, "content": "".join(text)},
                        "finish_reason": finish, "logprobs": None}]}
    if usage:
        doc["usage"] = usage
    return orjson.dumps(doc)


def complete_stream(route: str, body: bytes) -> bool:
    """Whether a recorded stream ended as the upstream ends a finished answer, with no error
    event on the way: only such a stream is an answer worth replaying."""
    if b'data: {"error"' in body or b'data:{"error"' in body or b"event: error" in body:
        return False
    last = body.rstrip().replace(b"\r\n", b"\n").rsplit(b"\n\n", 1)[-1]  # the stream's last event
    if route == "chat.completions":
        return last.startswith(b"data: [DONE]")
    return b"response.completed" in last and ENDINGS["responses"].search(last) is not None


# What a finished answer of each route holds: a JSON object without `error`, and this.
ANSWER_FIELDS = {"chat.completions": "choices", "embeddings": "data", "responses": "output"}


def complete_answer(route: str, content_type: str, body: bytes) -> bool:
    """Whether a 200 body is an answer worth replaying: JSON, of the route's shape, no error."""
    if not content_type.startswith("application/json"):
        return False
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(doc, dict) or doc.get("error"):
        return False
    if not isinstance(doc.get(ANSWER_FIELDS.get(route, "")), list):
        return False
    return route != "responses" or doc.get("status") == "completed"
