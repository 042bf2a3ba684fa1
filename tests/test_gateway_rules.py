"""The gateway's cache and limit rules as functions: what is cached and under which key, how an
entry is served the other way, how tokens and money are estimated and priced, what a refusal
says, and the in-process store a local run uses."""

from __future__ import annotations

import asyncio
import json
import time

import orjson
import pytest

from gateway import cache, errors
from gateway.errors import GatewayError
from gateway.limits import Limits, Price, Prices, check_model, estimate, rejection
from gateway.relay import ENDINGS, UsageFilter, split_complete
from gateway.store import LocalStore

CHAT = {"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("route,doc,headers,expected", [
    ("chat.completions", CHAT, {}, (True, True, "")),
    ("chat.completions", {**CHAT, "temperature": 0.7}, {}, (False, False, "BYPASS")),
    ("chat.completions", {k: v for k, v in CHAT.items() if k != "temperature"}, {}, (False, False, "BYPASS")),
    ("chat.completions", {**CHAT, "temperature": 0.7}, {b"x-gateway-cache": b"on"}, (True, True, "")),
    ("chat.completions", CHAT, {b"cache-control": b"no-store"}, (False, False, "BYPASS")),
    ("chat.completions", CHAT, {b"cache-control": b"no-cache"}, (False, True, "REFRESH")),
    ("embeddings", {"model": "text-embedding-3-small", "input": "x"}, {}, (True, True, "")),
    ("responses", {"model": "gpt-4o-mini", "input": "x", "temperature": 0}, {}, (True, True, "")),
])
def test_what_is_cached(route, doc, headers, expected):
    p = cache.policy(route, doc, headers)
    assert (p.read, p.write, p.label) == expected


def test_the_key_is_the_meaning_of_the_request():
    base = cache.key("chat.completions", CHAT, "org", "proj")
    reordered = json.loads('{"messages": [{"content": "hi", "role": "user"}],\n "temperature": 0, '
                           '"model": "gpt-4o-mini"}')
    assert cache.key("chat.completions", reordered, "org", "proj") == base
    delivery = {**CHAT, "stream": True, "stream_options": {"include_usage": True}, "user": "u1", "store": True}
    assert cache.key("chat.completions", delivery, "org", "proj") == base
    for other in (cache.key("chat.completions", {**CHAT, "max_tokens": 5}, "org", "proj"),
                  cache.key("chat.completions", CHAT, "org-2", "proj"),
                  cache.key("chat.completions", CHAT, "org", "proj-2"),
                  cache.key("responses", CHAT, "org", "proj")):
        assert other != base


ANSWER = {"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Four."}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def test_a_plain_answer_served_as_a_stream_and_back():
    entry = cache.encode(cache.JSON_ENTRY, json.dumps(ANSWER).encode())
    events = cache.serve(entry, "chat.completions", stream=True)
    assert events.endswith(b"data: [DONE]\n\n")
    back = json.loads(cache.serve(cache.encode(cache.SSE_ENTRY, events), "chat.completions", stream=False))
    assert back["choices"][0]["message"] == {"role": "assistant", "content": "Four."}
    assert back["choices"][0]["finish_reason"] == "stop" and back["usage"] == ANSWER["usage"]


def test_tool_calls_and_other_routes_are_not_converted():
    tool = {**ANSWER, "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [{"id": "t", "type": "function",
                                                              "function": {"name": "f", "arguments": "{}"}}]}}]}
    assert cache.serve(cache.encode(cache.JSON_ENTRY, json.dumps(tool).encode()), "chat.completions", True) is None
    assert cache.serve(cache.encode(cache.SSE_ENTRY, b"data: {}\n\n"), "responses", False) is None
    same = cache.encode(cache.SSE_ENTRY, b"event: x\ndata: {}\n\n")
    assert cache.serve(same, "responses", True) == b"event: x\ndata: {}\n\n", "the same kind is served as it is"


def test_only_finished_streams_count_as_complete():
    assert cache.complete_stream("chat.completions", b"data: {}\n\ndata: [DONE]\n\n")
    assert not cache.complete_stream("chat.completions", b"data: {}\n\n")
    done = b'event: response.completed\ndata: {"type":"response.completed"}\n\n'
    assert cache.complete_stream("responses", done)
    assert cache.complete_stream("responses", b'data: {"type":"response.completed"}\n\n'), "data lines only"


def test_a_model_that_writes_the_end_marker_does_not_end_its_stream():
    said = b'data: {"choices":[{"delta":{"content":"data: [DONE]"}}]}\n\n'
    assert not cache.complete_stream("chat.completions", said)
    watch = UsageFilter(False, ENDINGS["chat.completions"])
    watch(said)
    assert not watch.ended
    watch(b"data: [DONE]\n\n")
    assert watch.ended
    text = (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
            b'"delta":"event: response.completed \\"type\\":\\"response.completed\\""}\n\n')
    assert not cache.complete_stream("responses", text)
    watch = UsageFilter(False, ENDINGS["responses"])
    watch(text)
    assert not watch.ended


PRICES = Prices({"gpt-4o-mini": {"inputPerMillion": 0.15, "outputPerMillion": 0.6},
                 "gpt-4o": {"inputPerMillion": 2.5, "outputPerMillion": 10}})


def test_the_model_list_allows_listed_models_and_their_dated_snapshots_only():
    assert check_model("gpt-4o-mini", PRICES) == "gpt-4o-mini"
    assert check_model("gpt-4o-mini-2024-07-18", PRICES) == "gpt-4o-mini-2024-07-18"
    assert PRICES.of("gpt-4o-mini-2024-07-18") == Price(0.15, 0.6)
    for model in ("gpt-4o-mini-realtime-preview", "o1", "default", "gpt-4o-mini-2024-07", "GPT-4O-MINI"):
        with pytest.raises(GatewayError) as e:
            check_model(model, PRICES)
        assert (e.value.status, e.value.code, e.value.param) == (400, "model_not_found", "model"), model
    assert Price(0.15, 0.6).nano(1_000_000, 1_000_000) == 750_000_000  # $0.75


def test_a_client_may_be_held_to_a_subset_of_the_list():
    assert check_model("gpt-4o-mini-2024-07-18", PRICES, frozenset({"gpt-4o-mini"}))
    with pytest.raises(GatewayError) as e:
        check_model("gpt-4o", PRICES, frozenset({"gpt-4o-mini"}))
    assert e.value.code == "model_not_found"


@pytest.mark.parametrize("model", [None, 7, "", "x" * 129, "gpt 4o", "gpt-4o\n", "-gpt", "ü-model", ["gpt-4o"]])
def test_a_model_that_is_not_a_model_name_is_refused_before_it_is_looked_up(model):
    with pytest.raises(GatewayError) as e:
        check_model(model, PRICES)
    assert (e.value.status, e.value.code, e.value.param) == (400, "invalid_model", "model")


def test_the_lookup_is_linear_in_the_name_length():
    """A 400,000-character name with hyphens blocked the event loop for a minute: names are now
    checked (at most 128 characters) before any lookup, and the lookup strips one date suffix."""
    long = "a-" * 200_000
    with pytest.raises(GatewayError):
        check_model(long, PRICES)
    assert PRICES.listed_as("gpt-4o-" + "1" * 100) is None


def test_without_a_list_every_model_is_allowed_and_free():
    local = Prices(None)
    assert check_model("anything-at-all", local) == "anything-at-all" and local.of("anything") == Price(0, 0)


def test_estimates_reserve_the_requests_own_output_limit_times_its_choices():
    assert estimate("chat.completions", {"max_tokens": 50}, 400, 1000) == (100, 50)
    assert estimate("chat.completions", {"max_completion_tokens": 70}, 4, 1000) == (1, 70)
    assert estimate("chat.completions", {"max_tokens": 50, "n": 128}, 400, 1000) == (100, 6400)
    assert estimate("chat.completions", {"n": 3}, 4, 1000) == (1, 3000)
    assert estimate("responses", {"max_output_tokens": 9}, 8, 1000) == (2, 9)
    assert estimate("chat.completions", {}, 10, 1000) == (3, 1000)
    assert estimate("chat.completions", {"max_tokens": None}, 10, 1000) == (3, 1000)
    assert estimate("embeddings", {"input": "x"}, 10, 1000) == (3, 0)
    assert estimate("models", {}, 0, 1000) == (0, 0), "listing models is not charged"


def test_several_output_limits_are_each_checked_and_the_largest_reserved():
    both = {"max_completion_tokens": 5, "max_tokens": 900}
    assert estimate("chat.completions", both, 4, 1000) == (1, 900)
    with pytest.raises(GatewayError) as e:
        estimate("chat.completions", {"max_completion_tokens": 5, "max_tokens": -1}, 4, 1000)
    assert e.value.param == "max_tokens"


@pytest.mark.parametrize("field,value,code", [
    ("max_tokens", 1e30, "invalid_type"), ("max_tokens", 10.0, "invalid_type"),
    ("max_tokens", "10", "invalid_type"),
    ("max_tokens", True, "invalid_type"), ("max_tokens", -5, "integer_out_of_range"),
    ("max_tokens", 0, "integer_out_of_range"), ("max_completion_tokens", 1_000_001, "integer_out_of_range"),
    ("max_output_tokens", -1, "integer_out_of_range"), ("n", 0, "integer_out_of_range"),
    ("n", 129, "integer_out_of_range"), ("n", 2.5, "invalid_type"),
])
def test_what_the_estimate_reads_is_a_whole_number_in_bounds_or_refused(field, value, code):
    route = "responses" if field == "max_output_tokens" else "chat.completions"
    with pytest.raises(GatewayError) as e:
        estimate(route, {field: value}, 10, 1000)
    assert (e.value.status, e.value.param, e.value.code) == (400, field, code)


def test_client_limits_override_the_defaults_field_by_field():
    base = Limits(requests_per_minute=60, tokens_per_minute=1000, usd_per_day=5)
    assert Limits.from_json({"usdPerDay": 1}, base) == Limits(60, 1000, 1.0)
    assert Limits.from_json({}, base) == base


@pytest.mark.parametrize("reason,headers,code", [
    ("requests", {"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "0",
                  "x-ratelimit-reset-requests": "12s", "retry-after": "12"}, "rate_limit_exceeded"),
    ("tokens", {"x-ratelimit-limit-tokens": "500", "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": "12s", "retry-after": "12"}, "rate_limit_exceeded"),
    ("spend", {"retry-after": "12"}, "insufficient_quota"),
])
def test_a_refusal_is_a_429_with_the_headers_sdks_back_off_by(reason, headers, code):
    e = rejection(reason, Limits(10, 500, 2.0), {"requests": 10, "tokens": 520, "spend": 2_100_000_000}[reason],
                  11.2)
    assert e.status == 429 and e.code == code
    assert {k.decode(): v.decode() for k, v in e.headers} == headers
    assert json.loads(e.body())["error"]["code"] == code


def test_the_in_process_store_keeps_the_same_rules():
    async def scenario():
        store, limits = LocalStore(), Limits(requests_per_minute=2, usd_per_day=0.000001)
        first = await store.gate("c", limits, "h", True, True, 0, 600, 1000)
        assert first.outcome == "miss" and first.holds_lock
        second = await store.gate("c", limits, "h", True, True, 0, 300, 1000)
        assert second.outcome == "miss" and not second.holds_lock, "one request fills, the other waits"
        waiting = asyncio.create_task(store.wait(second, 5))
        await store.fill(first, b"J{}", 60)
        assert await waiting == b"J{}"
        assert (await store.gate("c", limits, "h", True, True, 0, 0, 1000)).outcome == "requests"
        other = await store.gate("d", limits, "", False, False, 0, 1001, 1000)
        assert other.outcome == "spend", "more than $0.000001 (1000 nano-dollars)"
        await store.invalidate("c")
        assert (await store.gate("c", Limits(), "h", True, True, 0, 0, 1000)).entry is None
    _run(scenario)


# An answer as OpenAI sends it, every field a replay must carry set to a value of its own.
OPENAI_ANSWER = {"id": "chatcmpl-AbC123", "object": "chat.completion", "created": 1733100000,
          "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_0ba0d124f1",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there."},
                       "finish_reason": "length", "logprobs": None}],
          "usage": {"prompt_tokens": 1234, "completion_tokens": 567, "total_tokens": 1801}}
CHUNK_FIELDS = {"id": "chatcmpl-AbC123", "object": "chat.completion.chunk", "created": 1733100000,
                "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_0ba0d124f1"}


def _sse(events: list) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


# The same answer as OpenAI streams it: role first, the text in pieces, the finish, the usage.
OPENAI_STREAM = _sse([
    {**CHUNK_FIELDS, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                  "finish_reason": None}]},
    {**CHUNK_FIELDS, "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]},
    {**CHUNK_FIELDS, "choices": [{"index": 0, "delta": {"content": " there."}, "finish_reason": None}]},
    {**CHUNK_FIELDS, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
    {**CHUNK_FIELDS, "choices": [], "usage": OPENAI_ANSWER["usage"]},
])


def _events(body: bytes) -> list:
    assert body.endswith(b"data: [DONE]\n\n")
    return [json.loads(e[len(b"data: "):]) for e in body.split(b"\n\n")[:-2]]


def test_a_cached_answer_replayed_as_a_stream_is_the_stream_openai_would_send():
    assert _events(cache.chat_json_to_sse(json.dumps(OPENAI_ANSWER).encode())) == [
        {**CHUNK_FIELDS, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello there."},
                                      "finish_reason": None}]},
        {**CHUNK_FIELDS, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
        {**CHUNK_FIELDS, "choices": [], "usage": OPENAI_ANSWER["usage"]},
    ]
    tool = {**OPENAI_ANSWER, "usage": None, "choices": [{**OPENAI_ANSWER["choices"][0], "message": {
        "role": "assistant", "content": None, "tool_calls": [{"id": "call_1"}]}}]}
    assert cache.chat_json_to_sse(json.dumps(tool).encode()) is None, "a tool call is not replayed as text"
    bare = {**OPENAI_ANSWER, "usage": None,
            "choices": [{"index": 0, "message": {"content": None}, "finish_reason": "stop"}]}
    first, last = _events(cache.chat_json_to_sse(json.dumps(bare).encode()))
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""} and "usage" not in last


def test_a_cached_stream_replayed_as_an_answer_is_the_answer_openai_would_send():
    assert json.loads(cache.chat_sse_to_json(OPENAI_STREAM)) == OPENAI_ANSWER
    crlf = OPENAI_STREAM.replace(b"\n", b"\r\n")
    assert json.loads(cache.chat_sse_to_json(crlf)) == OPENAI_ANSWER, "events framed with CRLF"
    tight = OPENAI_STREAM.replace(b"data: ", b"data:")
    assert json.loads(cache.chat_sse_to_json(tight)) == OPENAI_ANSWER, "no space after data:"
    with_comment = b": keepalive\n\n" + OPENAI_STREAM
    assert json.loads(cache.chat_sse_to_json(with_comment)) == OPENAI_ANSWER, "a comment is not the end"
    for other in ({"index": 1, "delta": {"content": "x"}}, {"index": 0, "delta": {"tool_calls": [{}]}},
                  {"index": 0, "delta": {"function_call": {"name": "f"}}}, {"delta": {"tool_calls": [{}]}}):
        odd = _sse([{**CHUNK_FIELDS, "choices": [{"finish_reason": None, **other}]}])
        assert cache.chat_sse_to_json(odd) is None, other
    named = _sse([{**CHUNK_FIELDS, "choices": [{"index": 0, "delta": {"role": "developer", "content": "x"}}]}])
    assert json.loads(cache.chat_sse_to_json(named))["choices"][0]["message"]["role"] == "developer"


@pytest.mark.parametrize("body,complete", [
    (b'data: {"choices":[]}\n\ndata: [DONE]\n\n', True),
    (b'data: {"choices":[]}\r\n\r\ndata: [DONE]\r\n\r\n', True),
    (b'data: {"error": {"message": "x"}}\n\ndata: [DONE]\n\n', False),
    (b'data:{"error": {"message": "x"}}\n\ndata: [DONE]\n\n', False),
    (b'event: error\ndata: {"message": "x"}\n\ndata: [DONE]\n\n', False),
    (b"data: [DONE]\n\ndata: {}\n\n", False),  # the end marker is not the last event
])
def test_a_chat_stream_is_complete_only_when_it_ends_with_done_and_carries_no_error(body, complete):
    assert cache.complete_stream("chat.completions", body) is complete


@pytest.mark.parametrize("route,content_type,body,complete", [
    ("chat.completions", "application/json", OPENAI_ANSWER, True),
    ("chat.completions", "application/json; charset=utf-8", OPENAI_ANSWER, True),
    ("chat.completions", "text/html", OPENAI_ANSWER, False),
    ("chat.completions", "application/json", {**OPENAI_ANSWER, "error": {"message": "x"}}, False),
    ("chat.completions", "application/json", {"data": []}, False),
    ("chat.completions", "application/json", [OPENAI_ANSWER], False),
    ("embeddings", "application/json", {"object": "list", "data": []}, True),
    ("embeddings", "application/json", OPENAI_ANSWER, False),
    ("responses", "application/json", {"status": "completed", "output": []}, True),
    ("responses", "application/json", {"status": "incomplete", "output": []}, False),
    ("responses", "application/json", {"status": "completed"}, False),
])
def test_an_answer_is_complete_only_as_json_of_its_routes_shape_without_an_error(route, content_type, body,
                                                                               complete):
    assert cache.complete_answer(route, content_type, json.dumps(body).encode()) is complete
    assert cache.complete_answer(route, content_type, b"{not json") is False


def test_no_price_table_lists_nothing_and_prices_nothing():
    """A local run without GATEWAY_PRICES: every model allowed, at no cost."""
    free = Prices.from_json("")
    assert free.listed is False and free.listed_as("anything-at-all") == "anything-at-all"
    assert free.of("gpt-4o").nano(1_000_000, 1_000_000) == 0


def test_an_output_limit_of_exactly_one_token_is_allowed_and_the_refusal_names_the_range():
    assert estimate("chat.completions", {"max_tokens": 1}, 4, 1000) == (1, 1)
    assert estimate("chat.completions", {"max_tokens": 1_000_000}, 4, 1000) == (1, 1_000_000)
    with pytest.raises(GatewayError) as e:
        estimate("chat.completions", {"max_tokens": 1_000_001}, 4, 1000)
    assert e.value.message == "`max_tokens` must be a whole number from 1 to 1,000,000"


def test_windows_are_the_utc_minute_and_day_of_the_time_given():
    import datetime

    from gateway.limits import windows

    now = datetime.datetime(2021, 3, 4, 23, 59, 30, 250_000, tzinfo=datetime.UTC).timestamp()
    minute, day, to_minute, to_day = windows(now)
    assert minute == int(now) // 60 == 26_915_039
    assert day == "20210304", "the UTC day, whatever the machine's zone and whenever the test runs"
    assert (to_minute, to_day) == pytest.approx((29.75, 29.75))


@pytest.mark.parametrize("reason,used,retry,message,kind,code,headers", [
    ("concurrent", 2, 0.2, "Too many requests in flight: limit 2 at once. Wait for one to finish.",
     "requests", "rate_limit_exceeded", {"retry-after": "1"}),
    ("requests", 60, 0.2, "Rate limit reached for requests per minute: limit 60, used 60. Try again in 1s.",
     "requests", "rate_limit_exceeded", {"x-ratelimit-limit-requests": "60",
                                         "x-ratelimit-remaining-requests": "0",
                                         "x-ratelimit-reset-requests": "1s", "retry-after": "1"}),
    ("tokens", 900, 12.5, "Rate limit reached for tokens per minute: limit 1000, used 900. Try again in 13s.",
     "tokens", "rate_limit_exceeded", {"x-ratelimit-limit-tokens": "1000",
                                       "x-ratelimit-remaining-tokens": "100",
                                       "x-ratelimit-reset-tokens": "13s", "retry-after": "13"}),
    ("spend", 2_700_000, 3600,
     "Daily spend limit of $0.002 reached ($0.0027 spent today, UTC). It resets in 3600s.",
     "insufficient_quota", "insufficient_quota", {"retry-after": "3600"}),
])
def test_each_refusal_says_what_openai_says_and_when_to_come_back(reason, used, retry, message, kind, code,
                                                                 headers):
    limits = Limits(requests_per_minute=60, tokens_per_minute=1000, usd_per_day=0.002, concurrent_requests=2)
    e = rejection(reason, limits, used, retry)
    assert (e.status, e.message, e.type, e.code) == (429, message, kind, code)
    assert {k.decode(): v.decode() for k, v in e.headers} == headers


def test_a_typed_input_item_with_an_id_is_not_a_reference_and_a_container_is_state():
    from gateway import tenancy

    def state(doc):
        return tenancy.stored_state("responses", doc, json.dumps(doc, separators=(",", ":")).encode())
    typed = {"model": "m", "input": [{"id": "msg_1", "type": "message", "role": "user", "content": "hi"}]}
    assert state(typed) is None
    assert state({"model": "m", "input": [{"id": "msg_1"}]}) == "item_reference"
    tool = {"model": "m", "input": "hi", "tools": [{"type": "code_interpreter", "container": "cntr_1"}]}
    assert state(tool) == "container"


def test_a_client_looked_up_by_a_name_it_does_not_have_is_none():
    from gateway.keys import ClientKeys, add_key, empty_document

    doc = empty_document()
    add_key(doc, "web-app")
    keys = ClientKeys.from_json(json.dumps(doc))
    assert keys.named("web-app").name == "web-app" and keys.named("nobody") is None


@pytest.mark.parametrize("control,opt_in,expected", [
    (b"max-age=0, No-Store", b"", (False, False, "BYPASS")),
    (b"no-cache, no-store", b"", (False, False, "BYPASS")),  # no-store wins, whatever the order
    (b"private, NO-CACHE", b"", (False, True, "REFRESH")),
    (b"max-age=60", b"", (True, True, "")),  # directives the cache does not act on change nothing
    (b"", b"ON", (True, True, "")),
    (b"no-cache", b"On", (False, True, "REFRESH")),
])
def test_cache_control_with_several_directives_and_any_letter_case(control, opt_in, expected):
    headers = {b"cache-control": control, b"x-gateway-cache": opt_in}
    doc = {**CHAT, "temperature": 0.7} if opt_in else CHAT
    p = cache.policy("chat.completions", doc, headers)
    assert (p.read, p.write, p.label) == expected


@pytest.mark.parametrize("route,doc,headers,cached", [
    ("chat.completions", {**CHAT, "temperature": 0.0}, {}, True),
    ("chat.completions", {**CHAT, "temperature": "0"}, {}, False),
    ("responses", {"model": "m", "input": "x", "temperature": 1}, {}, False),
    ("models", {}, {}, False),
    ("models", {}, {b"x-gateway-cache": b"on"}, True),
    ("chat.completions", {**CHAT, "temperature": 1}, {b"x-gateway-cache": b"off"}, False),
])
def test_what_is_repeatable_is_cached_and_the_rest_only_on_request(route, doc, headers, cached):
    assert cache.policy(route, doc, headers).used is cached


BASE = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


@pytest.mark.parametrize("field,value", [
    ("model", "gpt-4o"), ("messages", [{"role": "user", "content": "hi!"}]), ("temperature", 0.0001),
    ("max_tokens", 5), ("max_completion_tokens", 5), ("seed", 1), ("n", 2), ("top_p", 0.5),
    ("tools", [{"type": "function", "function": {"name": "f"}}]), ("tool_choice", "none"),
    ("response_format", {"type": "json_object"}), ("stop", ["\n"]), ("logprobs", True),
    ("presence_penalty", 0.1), ("frequency_penalty", 0.1), ("logit_bias", {"1": 1}), ("reasoning_effort", "low"),
])
def test_every_field_that_changes_the_answer_changes_the_key(field, value):
    assert cache.key("chat.completions", {**BASE, field: value}, "org", "proj") != \
        cache.key("chat.completions", BASE, "org", "proj")


@pytest.mark.parametrize("field,value", [
    ("stream", True), ("stream_options", {"include_usage": True}), ("user", "u-1"), ("store", True),
    ("metadata", {"k": "v"}), ("service_tier", "flex"),
])
def test_fields_that_only_change_delivery_or_records_share_the_key(field, value):
    assert cache.key("chat.completions", {**BASE, field: value}, "org", "proj") == \
        cache.key("chat.completions", BASE, "org", "proj")


def test_the_key_is_scoped_to_route_org_project_and_query_and_blind_to_key_order():
    k = cache.key("chat.completions", BASE, "org", "proj", b"api-version=1")
    assert len({k, cache.key("responses", BASE, "org", "proj", b"api-version=1"),
                cache.key("chat.completions", BASE, "org-2", "proj", b"api-version=1"),
                cache.key("chat.completions", BASE, "org", "proj-2", b"api-version=1"),
                cache.key("chat.completions", BASE, "org", "proj", b"api-version=2")}) == 5
    reordered = dict(reversed(list(BASE.items())))
    assert cache.key("chat.completions", reordered, "org", "proj", b"api-version=1") == k
    assert len(k) == 64 and int(k, 16) >= 0, "a SHA-256 in hex"


def test_a_second_key_for_a_client_keeps_the_first_unless_told_not_to():
    from gateway.keys import ClientKeys, add_key, empty_document

    doc = empty_document()
    first, second = add_key(doc, "web-app"), add_key(doc, "web-app")
    keys = ClientKeys.from_json(json.dumps(doc))
    assert keys.client_for(f"Bearer {first}".encode()) and keys.client_for(f"Bearer {second}".encode())
    third = add_key(doc, "web-app", keep_old=False)
    keys = ClientKeys.from_json(json.dumps(doc))
    assert keys.client_for(f"Bearer {first}".encode()) is None and keys.client_for(f"Bearer {third}".encode())


def test_a_keys_creation_time_is_utc_whatever_the_machines_zone(monkeypatch):
    import datetime
    import time

    from gateway.keys import add_key, empty_document

    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+5:30: a local time would be hours off
    time.tzset()
    try:
        doc = empty_document()
        add_key(doc, "web-app")
        created = doc["clients"]["web-app"]["keys"][0]["created"]
        stamp = datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
        assert abs((datetime.datetime.now(datetime.UTC) - stamp).total_seconds()) < 120
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_bad_client_name_or_document_is_refused_saying_what_is_allowed():
    from gateway.keys import ClientKeys, KeyDocumentError, add_key, empty_document

    with pytest.raises(KeyDocumentError) as e:
        add_key(empty_document(), "Web App")
    assert str(e.value) == ("client name 'Web App': lower-case letters, digits, . _ - "
                            "(up to 63, starting with a letter or digit)")
    for doc in ({"version": 2, "clients": {}}, {"version": 1, "clients": []}, {"clients": {}}, []):
        with pytest.raises(KeyDocumentError) as e:
            ClientKeys.from_json(json.dumps(doc))
        assert str(e.value) == 'not a client-keys document: expected {"version": 1, "clients": {...}}', doc


def test_a_replay_carries_the_role_and_reads_a_choice_without_an_index_as_the_first():
    tool = {**OPENAI_ANSWER, "usage": None,
            "choices": [{"index": 0, "message": {"role": "tool", "content": "42"}, "finish_reason": "stop"}]}
    first, _ = _events(cache.chat_json_to_sse(json.dumps(tool).encode()))
    assert first["choices"][0]["delta"] == {"role": "tool", "content": "42"}
    unnamed = _sse([{**CHUNK_FIELDS, "choices": [{"delta": {"content": "Hi"}, "finish_reason": "stop"}]}])
    doc = json.loads(cache.chat_sse_to_json(unnamed))
    assert doc["choices"][0]["message"] == {"role": "assistant", "content": "Hi"}, "no role sent: assistant"


@pytest.mark.parametrize("route,doc,sent", [
    ("responses", {"input": "x"}, {"input": "x", "store": False}),  # the Responses API stores by default
    ("responses", {"input": "x", "store": True}, {"input": "x", "store": False}),
    ("responses", {"input": "x", "store": False}, None),  # already stores nothing: sent as it is
    ("chat.completions", {"messages": [], "store": True}, {"messages": [], "store": False}),
    ("chat.completions", {"messages": []}, None),  # chat stores only when asked
    ("chat.completions", {"messages": [], "store": False}, None),
])
def test_what_a_client_that_may_not_keep_state_sends_is_never_stored(route, doc, sent):
    from gateway import tenancy

    assert tenancy.stores_nothing(route, doc) == sent


def test_one_choice_is_allowed_and_a_bad_model_name_is_refused_saying_what_a_name_is():
    assert estimate("chat.completions", {"max_tokens": 50, "n": 1}, 400, 1000) == (100, 50)
    with pytest.raises(GatewayError) as e:
        check_model("gpt 4o", Prices(None))
    assert (e.value.message, e.value.param, e.value.code) == (
        "`model` must be a model name: letters, digits and . _ : / -, up to 128", "model", "invalid_model")


def _run(scenario):
    # Its own loop, closed after, never installed: asyncio.run() would leave the main thread
    # without a current loop, which Pulumi's synthesis in later tests needs.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(scenario())
    finally:
        loop.close()


def test_the_in_process_store_keeps_what_it_counts_as_long_as_valkey_does():
    """What tests/test_store.py cannot see from outside: the lifetimes of the in-process store's
    counters (a version outlives every entry; a day's spend outlives the day; a minute's counters
    two minutes, as WINDOW_TTL_MS)."""
    async def scenario():
        store = LocalStore()
        gate = await store.gate("c", Limits(), "", False, False, 600, 5_000, 1000)
        await store.settle("c", gate.reservation, 250, 2_000, requests=3)
        await store.invalidate("c")
        r, now = gate.reservation, time.monotonic()
        assert store.values["ver:c"][0] - now > 9 * 365 * 86400
        assert 86_400 < store.values[f"usd:c:{r.day}"][0] - now <= 2 * 86_400
        for kind in ("tpm", "rpm"):
            assert 60 < store.values[f"{kind}:c:{r.minute}"][0] - now <= 120
    _run(scenario)


@pytest.mark.parametrize(("buf", "complete", "rest"), [
    (b"", b"", b""),
    (b"data: a", b"", b"data: a"),  # nothing complete yet
    (b"data: a\n\ndata: b", b"data: a\n\n", b"data: b"),
    (b"data: a\n\ndata: b\n\n", b"data: a\n\ndata: b\n\n", b""),
    (b"data: a\r\n\r\ndata: b", b"data: a\r\n\r\n", b"data: b"),  # CRLF framing
    (b"data: a\r\n\r\ndata: b\n\nc", b"data: a\r\n\r\ndata: b\n\n", b"c"),  # the later of the two
])
def test_a_buffer_splits_after_its_last_complete_event(buf, complete, rest):
    assert split_complete(buf) == (complete, rest)


USAGE_CHUNK = b'data: {"choices":[],"usage":{"prompt_tokens":1200,"completion_tokens":3400}}'


def test_events_without_usage_pass_byte_for_byte_and_with_it_the_usage_is_read():
    crlf = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\r\n\r\n: keepalive\r\n\r\n"
    watch = UsageFilter(True)
    assert watch(crlf) == crlf, "as the upstream framed them"
    assert watch.usage is None and watch.events == 1
    # CRLF framing, a blank event in the middle, the usage chunk stripped (the client did not ask for it):
    mixed = b"data: {\"choices\":[{}]}\r\n\r\n\r\n\r\n" + USAGE_CHUNK + b"\r\n\r\ndata: [DONE]\r\n\r\n"
    assert watch(mixed) == b'data: {"choices":[{}]}\n\ndata: [DONE]\n\n'
    assert watch.usage == (1200, 3400) and watch.events == 4
    kept = UsageFilter(False)
    assert kept(USAGE_CHUNK + b"\n\n") == USAGE_CHUNK + b"\n\n" and kept.usage == (1200, 3400)
    spaced = UsageFilter(False)  # data without the optional space, over two lines
    spaced(b'data:{"choices":[],\ndata:"usage": {"input_tokens":7,"output_tokens":9}}\n\n')
    assert spaced.usage == (7, 9)



# What a client's SDK reads from each error the gateway makes: the status picks the exception
# (and whether it retries: 408, 429 and 5xx), the code is what an application branches on, and every
# 5xx says server_error. Each is sent as JSON and, once a stream has begun, as its last event.
ERRORS = [
    (errors.unauthorized(True), 401, "invalid_request_error", "invalid_api_key"),
    (errors.unauthorized(False), 401, "invalid_request_error", "missing_api_key"),
    (errors.invalid("bad", "model", "model_not_found"), 400, "invalid_request_error", "model_not_found"),
    (errors.not_found("GET", "/v2/x"), 404, "invalid_request_error", "unknown_url"),
    (errors.too_large(1024), 413, "invalid_request_error", "request_too_large"),
    (errors.bad_json(), 400, "invalid_request_error", "invalid_json"),
    (errors.upstream_unavailable("connection refused"), 502, "server_error", "upstream_unavailable"),
    (errors.upstream_timeout(2.5), 504, "server_error", "upstream_timeout"),
    (errors.stream_interrupted(), 502, "server_error", "upstream_stream_interrupted"),
    (errors.stream_cut_by_drain(), 503, "server_error", "gateway_draining"),
    (errors.internal(), 500, "server_error", "gateway_error"),
    (errors.body_timeout(2.5), 408, "invalid_request_error", "request_timeout"),
    (errors.overloaded(), 503, "server_error", "server_overloaded"),
]


@pytest.mark.parametrize("error,status,kind,code", ERRORS, ids=[e[3] for e in ERRORS])
def test_each_error_has_the_status_type_and_code_a_client_reads(error, status, kind, code):
    assert (error.status, error.type, error.code) == (status, kind, code)
    body = orjson.loads(error.body())["error"]
    assert body == {"message": error.message, "type": kind, "param": error.param, "code": code}
    assert error.sse_event() == b"data: " + error.body() + b"\n\n"


def test_error_messages_name_what_happened_and_never_the_upstreams_address():
    assert errors.upstream_timeout(2.5).message == "The LLM API sent nothing for 2.5 s."
    assert errors.body_timeout(30).message == "The request body did not arrive within 30 s."
    assert errors.too_large(1024).message == "Request body larger than 1024 bytes."
    assert errors.not_found("GET", "/v2/x").message == "Unknown request URL: GET /v2/x."
    assert errors.upstream_unavailable("connection refused").message == \
        "The LLM API could not be reached (connection refused)."
    assert errors.internal().message == "The gateway failed on this request; retry it."
    assert errors.unauthorized(True).message == \
        "Incorrect API key provided. Use a client key this gateway issued (python -m ops.clientkeys add <client>)."
    assert errors.stream_cut_by_drain().message == \
        "The gateway stopped before the stream finished (it is being replaced); retry the request."
    assert errors.invalid("bad", "model").param == "model"
    assert errors.overloaded().headers == [(b"retry-after", b"1")] and errors.internal().headers == []
