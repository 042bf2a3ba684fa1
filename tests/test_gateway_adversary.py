"""The limits, spend and cache against a client holding a valid key and trying to get past them
(issue 22): the real gateway process, the fake upstream and a real Valkey server with TLS and
AUTH. Each test is one way through that used to work; the fake upstream's own record, the
counters in Valkey and the gateway's log line say what really happened."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import signal
import socket
import time

import pytest

from gateway.keys import add_key, empty_document
from gateway.limits import Price, estimate, windows
from tests import gateway_process, valkey_server
from tests.fake_upstream import Running

SERVICE = "llm-service-adversary"
PRICES = {"gpt-4o-mini": {"inputPerMillion": 1.0, "outputPerMillion": 2.0},
          "text-embedding-3-small": {"inputPerMillion": 0.1, "outputPerMillion": 0.0}}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 10}


def _reserved(body: dict) -> int:
    tokens_in, tokens_out = estimate("chat.completions", body, len(json.dumps(body)), 1000)
    return tokens_in + tokens_out


RESPONSES = {"model": "gpt-4o-mini", "input": "What is 2+2?", "temperature": 0, "max_output_tokens": 10}


def _reserved_responses(body: dict) -> int:
    tokens_in, tokens_out = estimate("responses", body, len(json.dumps(body)), 1000)
    return tokens_in + tokens_out


CLIENTS = {
    "web-app": {},
    "spender": {"limits": {"usdPerDay": 100}},
    "burst": {"limits": {"requestsPerMinute": 5}},
    "one-app": {"stateful": True},
    "two-at-once": {"limits": {"concurrentRequests": 2}},
    "mixed": {"limits": {"tokensPerMinute": 1200, "usdPerDay": 0.0008}},
    # Room for one Responses request, settled at the fake's 15 tokens, and not one more.
    "flipper": {"limits": {"tokensPerMinute": _reserved_responses({**RESPONSES, "stream": True}) + 14}},
    "mini-only": {"models": ["gpt-4o-mini"]},
    "leaver": {"limits": {"usdPerDay": 100}},
    # Room for one plain CHAT's reservation, not for the same with n: 2.
    "tokens": {"limits": {"tokensPerMinute": _reserved(CHAT) + 5}},
}


def _keys() -> tuple[str, dict[str, str]]:
    doc, keys = empty_document(), {}
    for name, entry in CLIENTS.items():
        keys[name] = add_key(doc, name)
        doc["clients"][name].update(entry)
    return json.dumps(doc), keys


@pytest.fixture(scope="module")
def upstream():
    return Running()


KEYS = _keys()


@pytest.fixture(scope="module")
def gw(valkey, upstream, tmp_path_factory):
    env = {**valkey.env(), "GATEWAY_PRICES": json.dumps(PRICES), "GATEWAY_SERVICE": SERVICE,
           "GATEWAY_CACHE_TIMEOUT_SECONDS": "3", "GATEWAY_CACHE_MAX_ENTRY_BYTES": "4096"}
    gateway = gateway_process.start(upstream.url, tmp_path_factory.mktemp("gw"), env=env, keys_doc=KEYS)
    yield gateway
    gateway.stop()


def call(gw, method: str, path: str, body=None, client: str = "web-app", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
    raw = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request(method, path, body=raw, headers={"Authorization": f"Bearer {gw.keys[client]}",
                                                   "Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    return resp, (json.loads(data) if data[:1] == b"{" else data)


def chat(gw, body, client="web-app", headers=None, path="/v1/chat/completions"):
    return call(gw, "POST", path, body, client, headers)


def _open_request(gw, client: str, body: bytes, length: int | None = None) -> socket.socket:
    """A POST sent by hand, so a test can stop reading, trickle the body or walk away."""
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=20)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {gw.keys[client]}\r\nContent-Length: {length or len(body)}\r\n\r\n")
    sock.sendall(head.encode() + body)
    return sock


def tokens_used(valkey, client: str) -> int:
    minute, _, _, _ = windows()
    return int(valkey.client().get(f"llmgw:{SERVICE}:tpm:{client}:{minute}") or 0)


# --- 4, 5: the model is checked before anything uses it, and only listed models are served ------

def test_a_model_not_listed_is_refused_in_openais_shape_and_never_reaches_the_upstream(gw, fake):
    for model in ("gpt-4o", "gpt-4o-mini-realtime-preview", "default"):
        resp, body = chat(gw, {**CHAT, "model": model})
        assert resp.status == 400, model
        assert body["error"] == {"message": f"The model `{model}` does not exist or you do not have access to it.",
                                 "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
    assert fake.requests == []


def test_a_dated_snapshot_of_a_listed_model_is_served_at_its_price(gw, fake):
    resp, _ = chat(gw, {**CHAT, "model": "gpt-4o-mini-2024-07-18"})
    assert resp.status == 200 and len(fake.requests) == 1
    (line,) = gw.lines_where(lambda x: x.get("model") == "gpt-4o-mini-2024-07-18")
    assert line["EstimatedCostUSD"] == pytest.approx((12 * 1.0 + 3 * 2.0) / 1e6)


def test_a_client_held_to_some_models_can_neither_call_nor_list_the_others(gw, fake):
    resp, body = chat(gw, {"model": "text-embedding-3-small", "input": "hi"}, client="mini-only",
                      path="/v1/embeddings")
    assert (resp.status, body["error"]["code"]) == (400, "model_not_found")
    assert chat(gw, CHAT, client="mini-only")[0].status == 200
    fake.script = [{"kind": "models", "ids": ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]}] * 2
    assert [m["id"] for m in call(gw, "GET", "/v1/models", client="mini-only")[1]["data"]] == ["gpt-4o-mini"]
    assert [m["id"] for m in call(gw, "GET", "/v1/models")[1]["data"]] == ["gpt-4o-mini", "text-embedding-3-small"]


def test_a_huge_model_name_is_refused_at_once_and_logged_short(gw, fake):
    """A 400,000-character name used to block the event loop for a minute in the price lookup."""
    resp, body = chat(gw, {**CHAT, "model": "a-" * 200_000})
    assert (resp.status, body["error"]["code"]) == (400, "invalid_model")
    (line,) = gw.lines_where(lambda x: x.get("error") == "invalid_model")
    assert line["model"] is None and len(json.dumps(line)) < 4096
    assert fake.requests == []


# --- 3: what the reservation reads is validated, and n counts -------------------------------------

def test_n_choices_are_reserved_n_times(gw, fake, valkey):
    resp, body = chat(gw, {**CHAT, "n": 2}, client="tokens")
    assert (resp.status, body["error"]["type"]) == (429, "tokens")
    assert fake.requests == [] and tokens_used(valkey, "tokens") == 0
    assert chat(gw, CHAT, client="tokens")[0].status == 200


@pytest.mark.parametrize("field,value", [("max_tokens", -10_000), ("max_tokens", 1e30), ("max_tokens", 10.0),
                                         ("max_completion_tokens", 0), ("n", 129), ("n", True)])
def test_a_negative_float_or_huge_output_limit_is_refused_before_the_limits_see_it(gw, fake, valkey, field, value):
    resp, body = chat(gw, {**CHAT, field: value}, client="tokens")
    assert resp.status == 400 and body["error"]["param"] == field
    assert fake.requests == [] and tokens_used(valkey, "tokens") == 0


def test_listing_models_charges_no_tokens(gw, fake, valkey):
    for _ in range(3):
        assert call(gw, "GET", "/v1/models", client="tokens")[0].status == 200
    assert tokens_used(valkey, "tokens") == 0


# --- 11: smaller ways through ----------------------------------------------------------------------

def test_two_authorization_headers_are_refused(gw, fake):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Authorization", "Bearer not-a-key")
    conn.putheader("Authorization", f"Bearer {gw.keys['web-app']}")
    conn.putheader("Content-Type", "application/json")
    body = json.dumps(CHAT).encode()
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    resp = conn.getresponse()
    assert resp.status == 400 and json.loads(resp.read())["error"]["code"] == "invalid_api_key"
    assert fake.requests == []


def test_the_query_string_is_part_of_the_cache_key(gw, fake):
    cached = {**CHAT, "temperature": 0}
    chat(gw, cached, path="/v1/chat/completions?api-version=1")
    resp, _ = chat(gw, cached, path="/v1/chat/completions?api-version=2")
    assert resp.getheader("x-gateway-cache") == "MISS"
    assert [r["path"] for r in fake.requests] == ["/v1/chat/completions?api-version=1",
                                                   "/v1/chat/completions?api-version=2"]
    assert chat(gw, cached, path="/v1/chat/completions?api-version=2")[0].getheader("x-gateway-cache") == "HIT"



# --- 1: a stream the client abandons (or that is cut) is charged for what was consumed ------------

def _read_events_then_close(gw, body, client, events: int) -> int:
    """Read `events` content events of a stream, then close the socket; the events read."""
    sock = _open_request(gw, client, json.dumps(body).encode())
    seen, data = 0, b""
    while seen < events:
        chunk = sock.recv(65536)
        assert chunk, "the stream ended before the client left"
        data += chunk
        if not data.startswith(b"HTTP/1.1 200"):
            sock.close()
            raise AssertionError(f"refused: {data[:40]!r}")
        seen = data.count(b'"content"')
    sock.close()
    return seen


def test_a_stream_abandoned_before_its_end_is_charged_its_input_and_what_was_relayed(gw, fake, valkey):
    fake.script = [{"kind": "stream", "delay": 0.05, "chunks": [f"t{i} " for i in range(40)]}]
    body = {**CHAT, "stream": True, "max_tokens": 100}
    read = _read_events_then_close(gw, body, "spender", 30)
    (line,) = gw.lines_where(lambda x: x.get("Client") == "spender" and x.get("status") == 499 and x["stream"])
    reserved_in, _ = estimate("chat.completions", body, len(json.dumps(body)), 1000)
    assert line["tokens_estimated"] is True
    assert line["InputTokens"] == reserved_in and line["OutputTokens"] >= read
    expected = (reserved_in * 1.0 + line["OutputTokens"] * 2.0) / 1e6
    assert line["EstimatedCostUSD"] == pytest.approx(expected)
    _, day, _, _ = windows()
    spent = int(valkey.client().get(f"llmgw:{SERVICE}:usd:spender:{day}") or 0)
    assert spent == round(expected * 1e9), "the day's spend holds the charge, not a refund"


def test_a_stream_left_after_its_usage_came_is_charged_that_usage(gw, fake):
    fake.script = [{"kind": "stream", "chunks": ["a", "b", "c"], "before_done": 1.0}]
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    sock = _open_request(gw, "leaver", json.dumps(body).encode())
    data = b""
    while b'"usage":{"prompt_tokens"' not in data:  # the usage chunk, relayed: the gateway has seen it
        chunk = sock.recv(65536)
        assert chunk and b"[DONE]" not in chunk, "the stream ended before the client left"
        data += chunk
    sock.close()
    (line,) = gw.lines_where(lambda x: x.get("Client") == "leaver" and x.get("status") == 499 and x["stream"])
    assert (line["InputTokens"], line["OutputTokens"]) == (12, 2), "what the upstream reported"
    assert "tokens_estimated" not in line


def test_a_stream_the_upstream_ends_without_finishing_ends_with_an_error_the_sdk_raises(gw, fake):
    import openai
    fake.script = [{"kind": "stream", "chunks": ["Hel", "lo"], "unfinished": True}]
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.keys["web-app"], max_retries=0)
    got = []
    with pytest.raises(openai.APIError, match="closed the stream before it finished"):
        for chunk in client.chat.completions.create(**{**CHAT, "stream": True}):
            got += [c.delta.content for c in chunk.choices if c.delta.content]
    assert got == ["Hel", "lo"]
    (line,) = gw.lines_where(lambda x: x.get("error") == "upstream_stream_interrupted")
    assert line["OutputTokens"] >= 2, "charged for what it relayed"


# --- 2: a cached answer that cannot be served as asked is a miss, and a miss passes the limits -----

def test_flipping_stream_on_a_cached_answer_does_not_get_past_the_limits(gw, fake):
    """A Responses answer cached as JSON cannot be replayed as a stream: asking for it streamed
    used to go to the upstream with no limit check and no charge, again and again."""
    first, _ = chat(gw, RESPONSES, client="flipper", path="/v1/responses")
    assert (first.status, first.getheader("x-gateway-cache")) == (200, "MISS")
    resp, body = chat(gw, {**RESPONSES, "stream": True}, client="flipper", path="/v1/responses")
    assert (resp.status, body["error"]["type"]) == (429, "tokens")
    assert len(fake.requests) == 1
    again, _ = chat(gw, RESPONSES, client="flipper", path="/v1/responses")
    assert (again.status, again.getheader("x-gateway-cache")) == (200, "HIT"), "a servable hit still is one"


# --- 7: only well-formed answers are cached ------------------------------------------------------

CACHED = {**CHAT, "temperature": 0}


def test_a_200_that_is_not_an_answer_is_not_cached(gw, fake):
    fake.script = [{"kind": "raw", "status": 200, "content_type": "text/html", "body": "<html>maintenance</html>"}]
    assert chat(gw, CACHED)[0].status == 200
    resp, body = chat(gw, {**CACHED, "stream": True})
    assert (resp.status, resp.getheader("x-gateway-cache")) == (200, "MISS"), "not a 500 from a bad entry"
    assert len(fake.requests) == 2


def test_a_stream_carrying_an_error_event_is_not_cached(gw, fake):
    fake.script = [{"kind": "stream", "chunks": ["Hel"], "error_event": True}]
    chat(gw, {**CACHED, "stream": True})
    assert chat(gw, {**CACHED, "stream": True})[0].getheader("x-gateway-cache") == "MISS"
    assert len(fake.requests) == 2


def test_an_answer_larger_than_the_cap_is_served_but_not_cached(gw, fake):
    fake.script = [{"kind": "ok", "content": "x" * 5000}]
    resp, body = chat(gw, CACHED)
    assert resp.status == 200 and len(body["choices"][0]["message"]["content"]) == 5000
    assert chat(gw, CACHED)[0].getheader("x-gateway-cache") == "MISS"
    assert len(fake.requests) == 2


# --- 8: upstream protocol errors are OpenAI-shaped, counted and logged as what they were ----------

def test_a_short_body_from_the_upstream_is_a_502_in_openais_shape(gw, fake):
    fake.script = [{"kind": "short"}]
    resp, body = chat(gw, CHAT)
    assert resp.status == 502
    assert body["error"]["code"] == "upstream_unavailable" and body["error"]["type"] == "server_error"
    (line,) = gw.lines_where(lambda x: x.get("error") == "upstream_unavailable")
    assert line["status"] == 502 and line["GatewayErrors"] == 1


def test_a_base_url_carrying_credentials_is_refused_at_start_up(upstream, tmp_path):
    bad = gateway_process.start(upstream.url.replace("http://", "http://user:pass@"), tmp_path, wait=False)
    assert bad.proc.wait(10) == 2
    assert bad.proc.stderr.read().decode().startswith("gateway: OPENAI_BASE_URL carries credentials")


# --- 6 and 3: limits exact on fresh processes, a bound on requests in flight, an outage bounded ----

def _burst(gws, client: str, n: int, body=None, path="/v1/chat/completions") -> list[int]:
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(chat, gws[i % len(gws)], body or CHAT, client, None, path) for i in range(n)]
        return sorted(f.result()[0].status for f in futures)


def test_a_burst_on_freshly_started_processes_admits_exactly_the_limit(valkey, upstream, fake, tmp_path):
    """New tasks used to open a TLS connection per request at once (a TLS context each, ~30 ms of
    CPU), time out their cache calls and let the burst through with no limits."""
    env = {**valkey.env(), "GATEWAY_PRICES": json.dumps(PRICES), "GATEWAY_SERVICE": SERVICE,
           "GATEWAY_WORKERS": "2"}  # two fresh processes sharing the socket, as two tasks would
    fresh = gateway_process.start(upstream.url, tmp_path, env=env, keys_doc=KEYS)
    try:
        assert _burst([fresh], "burst", 24) == [200] * 5 + [429] * 19
        assert len(fake.requests) == 5
    finally:
        fresh.stop()


def test_requests_in_flight_at_once_are_bounded_per_client_and_places_come_back(gw, fake):
    fake.script = [{"kind": "slow", "delay": 1.0}] * 4
    assert _burst([gw], "two-at-once", 4) == [200, 200, 429, 429]
    assert chat(gw, CHAT, client="two-at-once")[0].status == 200, "finished requests gave their places back"
    (refused, *_) = gw.lines_where(lambda x: x.get("Client") == "two-at-once" and x.get("status") == 429)
    assert refused["RejectedRequests"] == 1


def test_a_client_at_its_bound_cannot_hold_a_worker_with_bodies_that_never_come(gw, fake):
    body = json.dumps(CHAT).encode()
    held = [_open_request(gw, "two-at-once", body[:10], length=len(body)) for _ in range(2)]
    try:
        time.sleep(0.3)  # both are being read
        resp, answer = chat(gw, CHAT, client="two-at-once")
        assert (resp.status, answer["error"]["code"]) == (429, "rate_limit_exceeded"), "refused before its body"
        assert chat(gw, CHAT)[0].status == 200, "other clients are served"
    finally:
        for sock in held:
            sock.close()
    assert [r["body"]["model"] for r in fake.requests] == ["gpt-4o-mini"], "only the other client's"


def test_a_store_outage_holds_each_processs_limits_and_the_spend_is_settled_after(upstream, fake, tmp_path):
    """Limits fail open no longer: while Valkey does not answer each process counts alone
    (bounded: tasks x workers x the limit), and once it answers what was charged meanwhile is
    added to the shared counters."""
    server = valkey_server.start(tmp_path)
    keys = gateway_process.client_keys("outage", limits={"outage": {"requestsPerMinute": 3, "usdPerDay": 100}})
    env = {**server.env(), "GATEWAY_PRICES": json.dumps(PRICES), "GATEWAY_SERVICE": SERVICE,
           "GATEWAY_CACHE_TIMEOUT_SECONDS": "0.2"}
    alone = gateway_process.start(upstream.url, tmp_path, env=env, keys_doc=keys)
    try:
        server.stop()
        assert [chat(alone, CHAT, client="outage")[0].status for _ in range(5)] == [200] * 3 + [429] * 2
        minute = windows()[0]
        server.restart()
        time.sleep(1.1)  # past the second the gateway skips a store that failed
        assert chat(alone, CHAT, client="outage")[0].status == 200  # the store answers: it is paid what is owed
        store = server.client()

        def counted() -> tuple[int, int]:
            return (sum(int(store.get(k)) for k in store.keys(f"llmgw:{SERVICE}:rpm:outage:*")),
                    sum(int(store.get(k)) for k in store.keys(f"llmgw:{SERVICE}:usd:outage:*")))
        deadline = time.monotonic() + 5  # paid within a second or so of the store's return
        while time.monotonic() < deadline and counted()[0] < 4:
            time.sleep(0.05)
        time.sleep(0.2)
        requests, spent = counted()
        assert (requests, spent) == (4, 4 * round((12 * 1.0 + 3 * 2.0) * 1000))
        if windows()[0] == minute:  # the requests counted alone count in their minute
            assert chat(alone, CHAT, client="outage")[0].status == 429
    finally:
        alone.stop()
        server.stop()


def test_a_settlement_the_store_missed_is_paid_and_the_place_given_back_when_it_answers(upstream, fake, tmp_path):
    """The store stops answering while an admitted request runs: its settlement (the refund of
    what it did not use, its place in flight) waits in the process and is paid once the store
    answers, with no request needed to trigger it."""
    server = valkey_server.start(tmp_path)
    keys = gateway_process.client_keys("settle", limits={"settle": {"concurrentRequests": 1, "usdPerDay": 100}})
    env = {**server.env(), "GATEWAY_PRICES": json.dumps(PRICES), "GATEWAY_SERVICE": SERVICE,
           "GATEWAY_CACHE_TIMEOUT_SECONDS": "0.2"}
    alone = gateway_process.start(upstream.url, tmp_path, env=env, keys_doc=keys)
    store = server.client()
    flying = f"llmgw:{SERVICE}:inflight:settle"
    try:
        fake.script = [{"kind": "slow", "delay": 1.0}]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(chat, alone, CHAT, "settle")
            deadline = time.monotonic() + 10
            while not fake.requests and time.monotonic() < deadline:
                time.sleep(0.02)
            assert store.zcard(flying) == 1, "admitted: its place is taken"
            os.kill(server.proc.pid, signal.SIGSTOP)  # the store stops answering, and keeps its data
            try:
                assert running.result(20)[0].status == 200
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while store.zcard(flying) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.zcard(flying) == 0, "the place came back"
        spent = sum(int(store.get(k)) for k in store.keys(f"llmgw:{SERVICE}:usd:settle:*"))
        assert spent == round((12 * 1.0 + 3 * 2.0) * 1000), "the reservation was settled to the usage"
        assert chat(alone, CHAT, client="settle")[0].status == 200
    finally:
        alone.stop()
        server.stop()


# --- 9: clients share the API's project, so none reaches another's stored state -----------------

@pytest.mark.parametrize("body,field", [
    ({"previous_response_id": "resp_someone_elses"}, "previous_response_id"),
    ({"conversation": "conv_someone_elses"}, "conversation"),
    ({"prompt": {"id": "pmpt_someone_elses"}}, "prompt"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-abc"}]}]}, "file_id"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_abc"]}]}, "vector_store_ids"),
    ({"input": [{"type": "item_reference", "id": "msg_abc"}]}, "item_reference"),
])
def test_a_client_cannot_name_state_the_api_keeps_for_the_project(gw, fake, body, field):
    resp, answer = chat(gw, {"model": "gpt-4o-mini", "input": "hi", **body}, path="/v1/responses")
    assert resp.status == 400
    assert (answer["error"]["param"], answer["error"]["code"]) == (field, "stateful_not_allowed")
    assert fake.requests == []


@pytest.mark.parametrize("raw, field", [
    (b'{"model":"gpt-4o-mini","input":"hi","previous\\u005fresponse_id":"resp_other"}', "previous_response_id"),
    (b'{"model":"gpt-4o-mini","input":[{"role":"user","content":[{"type":"input_file","fil\\u0065_id":"file-x"}]}]}',
     "file_id"),
    (b'{"model":"gpt-4o-mini","input":[{"id":"msg_other"}]}', "item_reference"),  # a reference needs no type
])
def test_stored_state_spelt_another_way_is_still_refused(gw, fake, raw, field):
    resp, answer = chat(gw, raw, path="/v1/responses")
    assert resp.status == 400
    assert (answer["error"]["param"], answer["error"]["code"]) == (field, "stateful_not_allowed")
    assert fake.requests == []


def test_a_key_sent_twice_means_to_the_upstream_what_the_gateway_checked(gw, fake):
    raw = b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"model":"gpt-4o-mini"}'
    resp, _ = chat(gw, raw, client="mini-only")
    assert resp.status == 200
    assert fake.requests[0]["raw"].count('"model"') == 1
    assert fake.requests[0]["body"]["model"] == "gpt-4o-mini"


def test_what_a_client_sends_is_not_stored_where_another_could_reach_it(gw, fake):
    mention = "the word prompt and \"file_id\" in a prompt"
    chat(gw, {"model": "gpt-4o-mini", "input": mention}, path="/v1/responses")
    chat(gw, {**CHAT, "store": True})
    assert [r["body"]["store"] for r in fake.requests] == [False, False]
    assert "file_id" in fake.requests[0]["body"]["input"], "text that merely mentions a field passes"


def test_a_client_trusted_with_state_uses_it_as_sent(gw, fake):
    body = {"model": "gpt-4o-mini", "input": "go on", "previous_response_id": "resp_mine"}
    assert chat(gw, body, client="one-app", path="/v1/responses")[0].status == 200
    assert fake.requests[0]["body"] == body, "passed through, stored as the API's default"


def test_idempotency_keys_are_scoped_to_the_client(gw, fake):
    for client in ("web-app", "one-app"):
        chat(gw, CHAT, client=client, headers={"Idempotency-Key": "retry-1"})
    assert [r["headers"]["Idempotency-Key"] for r in fake.requests] == ["web-app:retry-1", "one-app:retry-1"]


# --- 11: a waiting stream stays alive, a client that leaves stops the call, nothing holds a worker ---

def _raw(gw, body: dict, path: str = "/v1/chat/completions") -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
    conn.request("POST", path, body=json.dumps(body), headers={
        "Authorization": f"Bearer {gw.keys['web-app']}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    return resp.read()


def test_a_stream_waiting_for_the_upstreams_first_answer_gets_keepalives(gw, fake):
    fake.script = [{"kind": "slow", "delay": 0.8}]
    body = _raw(gw, {**CHAT, "stream": True})
    assert body.startswith(b": keepalive\n\n") and body.rstrip().endswith(b"data: [DONE]")


def test_an_error_after_an_early_start_is_an_event_the_sdk_raises_on(gw, fake):
    """Retries that wait (the upstream asks for 0.3 s each time) outlast the keepalive interval: the
    stream has begun, so the upstream's final 429 arrives as its error event."""
    import openai
    fake.script = [{"kind": "status", "status": 429, "headers": {"retry-after-ms": "300"}}] * 3
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.keys["web-app"], max_retries=0)
    with pytest.raises(openai.APIError, match="fake 429"):
        for _ in client.chat.completions.create(**{**CHAT, "stream": True}):
            pass
    assert len(fake.requests) == 3


def test_a_client_that_leaves_a_non_streamed_request_stops_it_and_is_charged(gw, fake):
    fake.script = [{"kind": "slow", "delay": 8}]
    sock = _open_request(gw, "spender", json.dumps(CHAT).encode())
    deadline = time.monotonic() + 10
    while not fake.requests and time.monotonic() < deadline:  # the upstream has it
        time.sleep(0.02)
    sock.close()
    (line,) = gw.lines_where(lambda x: x.get("Client") == "spender" and x.get("status") == 499
                             and not x["stream"], timeout=6)
    assert line["error"] == "client_disconnected" and line["tokens_estimated"] is True
    assert line["OutputTokens"] == CHAT["max_tokens"], "a non-streamed answer is charged its reservation"


@pytest.fixture(scope="module")
def tight(upstream, tmp_path_factory):
    """A gateway with small bounds: a 0.5 s body budget, two requests in flight."""
    gateway = gateway_process.start(upstream.url, tmp_path_factory.mktemp("tight"), env={
        "GATEWAY_BODY_TIMEOUT_SECONDS": "0.5", "GATEWAY_MAX_IN_FLIGHT": "2"}, keys_doc=KEYS)
    yield gateway
    gateway.stop()


def test_a_body_trickled_in_is_refused_not_waited_for(tight, fake):
    sock = _open_request(tight, "web-app", b'{"model": ', length=100)
    answer = b""
    while b"request_timeout" not in answer:  # headers and body may come in two reads
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408") and b'"code":"request_timeout"' in answer
    assert fake.requests == []


def test_a_worker_serves_at_most_its_bound_at_once_and_says_so_in_openais_shape(tight, fake):
    fake.script = [{"kind": "slow", "delay": 1.0}] * 2
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: chat(tight, CHAT, "web-app"), range(3)))
    assert sorted(resp.status for resp, _ in answers) == [200, 200, 503]
    ((resp, body),) = [a for a in answers if a[0].status == 503]
    # The SDKs retry a 503 after the Retry-After they are given: one second, not their own backoff.
    assert resp.getheader("retry-after") == "1"
    assert body == {"error": {"message": "The gateway is serving as many requests as it can; retry shortly.",
                              "type": "server_error", "param": None, "code": "server_overloaded"}}
    (refused,) = tight.lines_where(lambda x: x.get("error") == "server_overloaded")
    assert refused["status"] == 503
    assert call(tight, "GET", "/healthz")[0].status == 200, "health checks are never refused"


# --- the invariant, under a mix ---------------------------------------------------------------------

def _step(**step) -> dict:
    return {"metadata": {"fake_step": json.dumps(step)}}


def test_under_a_concurrent_mix_spend_is_never_below_what_was_delivered_nor_admission_past_a_limit(
        gw, fake, valkey):
    """Streams, abandoned streams, cache hits, upstream errors and n > 1 at once, for one client
    with a token and a spend limit: the recorded spend is at least the usage the upstream reported
    for what was delivered (and one output token per event an abandoned stream received), and
    neither counter ends past its limit by more than one request's reservation."""
    plain = {**CHAT, "max_tokens": 20}
    kinds = {
        "json": plain, "n3": {**plain, "n": 3}, "hit": {**plain, "temperature": 0},
        "stream": {**plain, "stream": True}, "error": {**plain, **_step(kind="status", status=400)},
        "abandon": {**plain, "stream": True,
                    **_step(kind="stream", delay=0.03, chunks=[f"w{i}" for i in range(30)])},
    }
    plan = [k for _ in range(6) for k in kinds]
    abandoned_events: list[int] = []

    def one(kind: str):
        if kind == "abandon":
            try:
                abandoned_events.append(_read_events_then_close(gw, kinds[kind], "mixed", 5))
            except AssertionError:  # refused: the answer was a 429, not a stream
                pass
            return None
        return chat(gw, kinds[kind], client="mixed")[0].status

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = [s for s in pool.map(one, plan) if s is not None]
    assert set(statuses) == {200, 400, 429} and statuses.count(200) >= 5, "the limits were reached"
    time.sleep(0.3)  # the last settlements land
    lines = [x for x in gw.lines() if x.get("Client") == "mixed"]
    delivered = sum(x["InputTokens"] * 1.0 + x["OutputTokens"] * 2.0 for x in lines
                    if x["status"] == 200 and x.get("cache") != "HIT" and not x.get("tokens_estimated"))
    delivered += sum(abandoned_events) * 2.0
    _, day, _, _ = windows()
    store = valkey.client()
    spent = int(store.get(f"llmgw:{SERVICE}:usd:mixed:{day}") or 0)
    assert spent >= round(delivered * 1000)
    biggest = max(_reserved(body) for body in kinds.values())
    assert spent <= 0.0008e9 + Price(1.0, 2.0).nano(biggest, biggest)
    for key in store.keys(f"llmgw:{SERVICE}:tpm:mixed:*"):
        assert int(store.get(key)) <= 1200 + biggest
