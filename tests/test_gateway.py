"""The gateway as a real process (`python -m gateway`) in front of a fake OpenAI-compatible
upstream on 127.0.0.1; the client is the official OpenAI SDK wherever an application would use it,
and a raw HTTP client where the bytes on the wire are the point. What reached the upstream is read
from the fake's own record."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import socket
import time

import openai
import pytest

from tests import gateway_process
from tests.fake_upstream import Running
from tests.gateway_process import UPSTREAM_KEY

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a secret prompt 7f3e"}]}


@pytest.fixture(scope="session")
def upstream():
    return Running()


@pytest.fixture(scope="session")
def gateway(upstream, tmp_path_factory):
    gw = gateway_process.start(upstream.url, tmp_path_factory.mktemp("gw"))
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def tuned(upstream, tmp_path_factory):
    """A second gateway with the settings the default one does not have: a 1000-byte body limit
    and prompts in the log."""
    gw = gateway_process.start(upstream.url, tmp_path_factory.mktemp("tuned"),
                               env={"GATEWAY_MAX_REQUEST_BYTES": "1000", "GATEWAY_LOG_PROMPTS": "true"})
    yield gw
    gw.stop()


@pytest.fixture
def fake(upstream):
    upstream.fake.script, upstream.fake.requests = [], []
    return upstream.fake


def sdk(gw, client="web-app", key=None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key or gw.keys[client], max_retries=0)


def raw(gw, method, path, body=None, key=None, client="web-app", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    h = {"Content-Type": "application/json", **(headers or {})}
    if key is not False:
        h["Authorization"] = f"Bearer {key or gw.keys[client]}"
    conn.request(method, path, body=body if isinstance(body, (bytes, str)) or body is None
                 else json.dumps(body), headers=h)
    return conn.getresponse()


def line_for(gw, request_id: str) -> dict:
    """The log line of one request (written as the request ends, so wait for it briefly)."""
    found = gw.lines_where(lambda line: line["request_id"] == request_id)
    assert found, f"no log line for {request_id}"
    (line,) = found
    return line


def rid(response) -> str:
    return response.headers["x-gateway-request-id"]


# --- the routes, with the client's key replaced by the stack's -----------------------------

def test_chat_completion_through_the_sdk_with_the_llm_key_only_upstream(gateway, fake):
    reply = sdk(gateway).chat.completions.create(**CHAT)
    assert reply.choices[0].message.content == "Hello there."
    (seen,) = fake.requests
    assert seen["path"] == "/v1/chat/completions"
    assert seen["headers"]["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert seen["headers"]["OpenAI-Organization"] == "org-test"
    assert seen["headers"]["OpenAI-Project"] == "proj_test"
    assert gateway.keys["web-app"] not in json.dumps(seen)


def test_the_request_body_reaches_the_upstream_as_the_same_document(gateway, fake):
    # Written again (the document the gateway checked), so spacing and escapes may differ; the
    # document, numbers and text included, may not.
    body = (b'{"model": "gpt-4o-mini",  "messages":[{"role":"user","content":"caf\\u00e9 \xe2\x82\xac"}], '
            b'"temperature":0.1, "seed": 12345678901234, "logit_bias": {"50256": -100}}')
    resp = raw(gateway, "POST", "/v1/chat/completions", body)
    assert resp.status == 200
    assert json.loads(fake.requests[0]["raw"]) == json.loads(body)


def test_embeddings_responses_and_models(gateway, fake):
    client = sdk(gateway)
    assert client.embeddings.create(model="text-embedding-3-small", input="hi").data[0].embedding == [0.1, 0.2]
    assert client.responses.create(model="gpt-4o-mini", input="hi").output_text == "Hello there."
    assert [m.id for m in client.models.list()] == ["gpt-4o-mini"]
    assert [(r["method"], r["path"]) for r in fake.requests] == [
        ("POST", "/v1/embeddings"), ("POST", "/v1/responses"), ("GET", "/v1/models")]


@pytest.mark.parametrize("key", [None, "llmgw_00000000_" + "x" * 43, "sk-proj-notaclientkey"],
                         ids=["missing", "unknown-id", "not-a-client-key"])
def test_every_request_needs_a_client_key(gateway, fake, key):
    if key is None:
        resp = raw(gateway, "POST", "/v1/chat/completions", CHAT, key=False)
        assert resp.status == 401
        assert json.loads(resp.read())["error"]["code"] == "missing_api_key"
    else:
        with pytest.raises(openai.AuthenticationError) as err:
            sdk(gateway, key=key).chat.completions.create(**CHAT)
        assert err.value.code == "invalid_api_key"
    assert fake.requests == [], "nothing reaches the upstream without a client key"


def test_a_key_with_a_known_id_but_a_wrong_secret_is_refused(gateway, fake):
    good = gateway.keys["web-app"]
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, key=forged).chat.completions.create(**CHAT)
    assert fake.requests == []


def test_gateway_errors_have_openais_shape(gateway, fake):
    for method, path, body, status, code in [
        ("POST", "/v1/nothing", CHAT, 404, "unknown_url"),
        ("POST", "/v1/chat/completions", b"{not json", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b"[1, 2]", 400, "invalid_json"),
    ]:
        resp = raw(gateway, method, path, body)
        error = json.loads(resp.read())["error"]
        assert (resp.status, error["code"]) == (status, code)
        assert set(error) == {"message", "type", "param", "code"}
    # A path the gateway does not serve is logged under one route name, not the path a client chose.
    lines = gateway.lines_where(lambda x: x.get("status") == 404 and x.get("error") == "unknown_url")
    assert lines and {x["route"] for x in lines} == {"unknown"}


def test_a_body_over_the_limit_is_refused_before_the_upstream(tuned, fake):
    resp = raw(tuned, "POST", "/v1/chat/completions", {**CHAT, "padding": "x" * 2000})
    assert resp.status == 413 and json.loads(resp.read())["error"]["code"] == "request_too_large"
    assert fake.requests == []


# --- streaming -------------------------------------------------------------------------------

def test_a_stream_through_the_sdk(gateway, fake):
    stream = sdk(gateway).chat.completions.create(**CHAT, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello."


def test_keepalive_comments_while_the_model_thinks_then_events_as_they_come(gateway, fake):
    fake.script = [{"kind": "stream", "first_delay": 0.9, "delay": 0.3, "chunks": ["a", "b", "c"]}]
    resp = raw(gateway, "POST", "/v1/chat/completions", {**CHAT, "stream": True})
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
    arrivals, buf = [], b""
    start = time.monotonic()
    while chunk := resp.read1(65536):
        buf += chunk
        arrivals.append((time.monotonic() - start, chunk))
    events = [e for e in buf.split(b"\n\n") if e]
    first_data = next(i for i, e in enumerate(events) if e.startswith(b"data:"))
    assert first_data >= 3 and all(e == b": keepalive" for e in events[:first_data]), events[:first_data]
    # Relayed as they arrive: the three deltas come about 0.3 s apart, not all at the end.
    deltas = [t for t, c in arrivals if b'"content"' in c]
    assert len(deltas) == 3 and deltas[2] - deltas[0] > 0.4


def test_a_stream_waiting_for_anothers_answer_gets_keepalives_then_the_same_events(gateway, fake):
    """The same cacheable stream twice at once: the second waits for the first's answer (one
    upstream call), kept alive meanwhile, and is then served the stored events after its
    keepalives, as the rest of the stream it began."""
    body = {**CHAT, "temperature": 0, "seed": 41, "stream": True}  # cacheable, and cached by no other test
    # The first answer takes 2 s: time enough for the second to arrive and wait on a loaded machine.
    fake.script = [{"kind": "stream", "first_delay": 2.0, "delay": 0.01, "chunks": ["a", "b", "c"]}]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(lambda: raw(gateway, "POST", "/v1/chat/completions", body))
        deadline = time.monotonic() + 5
        while not fake.requests and time.monotonic() < deadline:  # the first has reached the upstream
            time.sleep(0.01)
        second = pool.submit(lambda: raw(gateway, "POST", "/v1/chat/completions", body))
        answers = [(r, r.read()) for r in (first.result(), second.result())]
    assert len(fake.requests) == 1
    (miss, relayed), (hit, served) = answers
    # The second's headers went out with its first keepalive, before the answer was known: its
    # log line says where the answer came from.
    assert (miss.getheader("x-gateway-cache"), hit.getheader("x-gateway-cache")) == ("MISS", None)
    line = line_for(gateway, rid(hit))
    assert (line["CacheHits"], line["CacheCoalesced"]) == (1, 1)
    events = lambda b: [e for e in b.split(b"\n\n") if e.startswith(b"data:")]  # noqa: E731
    assert served.startswith(b": keepalive\n\n"), "kept alive while it waited"
    assert events(served) == events(relayed) and events(served)[-1] == b"data: [DONE]"


def test_a_stream_waiting_for_a_plain_answer_is_served_it_as_events(gateway, fake):
    """The same chat twice at once, the second streamed: it waits for the first's JSON answer
    (one upstream call) and gets it converted to the events a stream of it would have been."""
    body = {**CHAT, "temperature": 0, "seed": 43}
    fake.script = [{"kind": "slow", "delay": 1.0}]  # time for the second to arrive and wait
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(lambda: raw(gateway, "POST", "/v1/chat/completions", body))
        deadline = time.monotonic() + 5
        while not fake.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        second = pool.submit(lambda: raw(gateway, "POST", "/v1/chat/completions", {**body, "stream": True}))
        plain, streamed = first.result(), second.result()
        served = streamed.read()
    assert len(fake.requests) == 1
    line = line_for(gateway, rid(streamed))
    assert (line["CacheHits"], line["CacheCoalesced"]) == (1, 1)
    assert b'"content":"Hello there."' in served and served.rstrip().endswith(b"data: [DONE]")
    assert json.loads(plain.read())["choices"][0]["message"]["content"] == "Hello there."


def test_the_usage_chunk_the_gateway_asked_for_is_not_shown_to_the_client(gateway, fake):
    resp = raw(gateway, "POST", "/v1/chat/completions", {**CHAT, "stream": True})
    body = resp.read()
    assert fake.requests[0]["body"]["stream_options"] == {"include_usage": True}
    assert b'"usage":{' not in body and body.endswith(b"data: [DONE]\n\n")
    line = line_for(gateway, resp.getheader("x-gateway-request-id"))
    assert (line["InputTokens"], line["OutputTokens"]) == (12, 2)


def test_the_clients_own_stream_options_go_upstream_beside_the_usage_the_gateway_asks_for(gateway, fake):
    body = {**CHAT, "stream": True, "stream_options": {"include_obfuscation": False}}
    assert raw(gateway, "POST", "/v1/chat/completions", body).read().endswith(b"data: [DONE]\n\n")
    assert fake.requests[0]["body"]["stream_options"] == {"include_obfuscation": False, "include_usage": True}


def test_a_client_that_asked_for_usage_gets_it(gateway, fake):
    stream = sdk(gateway).chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": True})
    usage = [c.usage for c in stream if c.usage]
    assert usage and usage[0].prompt_tokens == 12


def test_a_responses_stream_passes_unchanged_and_reports_usage(gateway, fake):
    with sdk(gateway).responses.with_streaming_response.create(
            model="gpt-4o-mini", input="hi", stream=True) as resp:
        events = list(resp.parse())
    assert [e.type for e in events][-1] == "response.completed"
    assert "stream_options" not in fake.requests[0]["body"]
    line = line_for(gateway, rid(resp))
    assert (line["InputTokens"], line["OutputTokens"]) == (12, 3)


# --- retries ---------------------------------------------------------------------------------

def test_a_429_with_retry_after_ms_is_retried_after_that_wait(gateway, fake):
    fake.script = [{"kind": "status", "status": 429, "headers": {"retry-after-ms": "300"}}]
    start = time.monotonic()
    resp = sdk(gateway).chat.completions.with_raw_response.create(**CHAT)
    assert resp.parse().choices[0].message.content == "Hello there."
    assert time.monotonic() - start >= 0.3
    assert len(fake.requests) == 2
    line = line_for(gateway, rid(resp))
    assert (line["Retries"], line["Upstream429"], line["status"]) == (1, 1, 200)


def test_each_retry_counts_once_in_the_log_line(gateway, fake):
    fake.script = [{"kind": "drop"}, {"kind": "drop"}]  # two lost connections, then the answer
    resp = sdk(gateway).chat.completions.with_raw_response.create(**CHAT)
    assert resp.parse().choices[0].message.content == "Hello there."
    assert (line_for(gateway, rid(resp))["Retries"], len(fake.requests)) == (2, 3)


@pytest.mark.parametrize("step", [
    {"kind": "status", "status": 500}, {"kind": "status", "status": 503}, {"kind": "drop"}],
    ids=["500", "503", "dropped-connection"])
def test_5xx_and_dropped_connections_are_retried(gateway, fake, step):
    fake.script = [step]
    resp = sdk(gateway).chat.completions.with_raw_response.create(**CHAT)
    assert resp.parse().choices[0].message.content == "Hello there."
    assert len(fake.requests) == 2
    # The log line counts the retry once, and a 5xx as the upstream's (a dropped connection is not).
    line = line_for(gateway, rid(resp))
    assert (line["Retries"], line["Upstream5xx"], line["status"]) == (1, int(step["kind"] == "status"), 200)
    assert line["Requests"] == 1, "one request, however many tries"


def test_each_5xx_counts_in_the_log_line(gateway, fake):
    fake.script = [{"kind": "status", "status": 500}, {"kind": "status", "status": 503}]
    resp = sdk(gateway).chat.completions.with_raw_response.create(**CHAT)
    line = line_for(gateway, rid(resp))
    assert (line["Retries"], line["Upstream5xx"], len(fake.requests)) == (2, 2, 3)


def test_when_retries_run_out_the_client_gets_the_upstreams_429_and_headers(gateway, fake):
    fake.script = [{"kind": "status", "status": 429, "headers": {"retry-after": "0"}}] * 3
    with pytest.raises(openai.RateLimitError) as err:
        sdk(gateway).chat.completions.create(**CHAT)
    headers = err.value.response.headers
    assert headers["x-ratelimit-limit-requests"] == "500" and headers["retry-after"] == "0"
    assert len(fake.requests) == 3  # GATEWAY_MAX_ATTEMPTS defaults to 3


def test_a_retry_after_beyond_the_budget_is_passed_on_at_once(gateway, fake):
    fake.script = [{"kind": "status", "status": 429, "headers": {"retry-after": "30"}}]
    start = time.monotonic()
    with pytest.raises(openai.RateLimitError) as err:
        sdk(gateway).chat.completions.create(**CHAT)
    waited = time.monotonic() - start
    line = line_for(gateway, rid(err.value.response))
    assert (line["Retries"], line["Upstream429"], len(fake.requests)) == (0, 1, 1), "not retried"
    assert err.value.response.headers["retry-after"] == "30", "the client is told the upstream's wait"
    # Neither the 30 s asked for nor the 20 s budget was slept (a loose bound: a loaded runner is slow).
    assert waited < 10


def test_a_4xx_other_than_429_is_not_retried(gateway, fake):
    fake.script = [{"kind": "status", "status": 400, "body": {"error": {"message": "bad model", "type":
                                                                        "invalid_request_error", "code": None}}}]
    with pytest.raises(openai.BadRequestError, match="bad model"):
        sdk(gateway).chat.completions.create(**CHAT)
    assert len(fake.requests) == 1


def test_no_retry_once_a_stream_has_begun(gateway, fake):
    fake.script = [{"kind": "stream", "chunks": ["a", "b", "c"], "drop_after": 1}]
    body = raw(gateway, "POST", "/v1/chat/completions", {**CHAT, "stream": True}).read()
    assert b'"content":"a"' in body and b'"content":"b"' not in body
    assert body.rstrip().endswith(b'"code":"upstream_stream_interrupted"}}')
    assert len(fake.requests) == 1
    with pytest.raises(openai.APIError, match="closed the stream"):
        fake.script = [{"kind": "stream", "chunks": ["a", "b"], "drop_after": 1}]
        list(sdk(gateway).chat.completions.create(**CHAT, stream=True))


def test_an_unreachable_upstream_is_a_502_in_openais_shape(upstream, fake, tmp_path):
    closed = gateway_process.free_port()
    gw = gateway_process.start(f"http://127.0.0.1:{closed}", tmp_path)
    try:
        resp = raw(gw, "POST", "/v1/chat/completions", CHAT)
        assert resp.status == 502
        error = json.loads(resp.read())["error"]
        assert error["code"] == "upstream_unavailable"
        assert str(closed) not in error["message"] and "127.0.0.1" not in error["message"], \
            "the upstream's address is not the client's to know"
        # What failed, by its kind: an operator's first clue, and no address in it.
        assert error["message"] == "The LLM API could not be reached (ClientConnectorError)."
    finally:
        gw.stop()


# --- observability ---------------------------------------------------------------------------

def test_one_log_line_per_request_with_metrics_and_never_a_key_or_the_prompt(gateway, fake):
    one = sdk(gateway).chat.completions.with_raw_response.create(**CHAT)
    with sdk(gateway, "batch").chat.completions.with_streaming_response.create(**CHAT, stream=True) as two:
        list(two.parse())
    first, second = line_for(gateway, rid(one)), line_for(gateway, rid(two))
    assert (first["Client"], first["model"], first["status"], first["stream"]) == (
        "web-app", "gpt-4o-mini", 200, False)
    assert first["InputTokens"] == 12 and first["OutputTokens"] == 3 and first["Latency"] > 0
    assert first["upstream_request_id"] == "req_fake_upstream" and len(first["request_id"]) == 16
    assert second["Client"] == "batch" and second["stream"] is True
    emf = first["_aws"]["CloudWatchMetrics"][0]
    assert emf["Namespace"] == "LLMService" and emf["Dimensions"] == [["Service"], ["Service", "Client"]]
    assert {m["Name"] for m in emf["Metrics"]} <= set(first)
    text = gateway.log.read_text()
    assert UPSTREAM_KEY not in text and gateway.keys["web-app"] not in text
    assert "a secret prompt 7f3e" not in text


def test_the_prompt_is_logged_only_when_the_flag_says_so(tuned, fake):
    line = line_for(tuned, rid(sdk(tuned).chat.completions.with_raw_response.create(**CHAT)))
    assert line["prompt"] == CHAT["messages"]


def test_a_client_that_goes_away_stops_the_upstream_stream(gateway, fake):
    fake.script = [{"kind": "stream", "first_delay": 0.1, "delay": 0.5, "chunks": list("abcdefgh")}]
    conn = socket.create_connection(("127.0.0.1", gateway.port))
    body = json.dumps({**CHAT, "stream": True}).encode()
    key = gateway.keys["web-app"]
    conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    head = conn.recv(4096)
    assert b"200 OK" in head
    request_id = head.split(b"x-gateway-request-id: ")[1].split(b"\r\n")[0].decode()
    conn.close()
    line = line_for(gateway, request_id)
    assert line["status"] == 499 and line["error"] == "client_disconnected"
    assert line["Latency"] < 2000, "the gateway stopped at once, not after the whole stream"


# --- health, readiness and settings ----------------------------------------------------------

def test_health_and_readiness_need_no_key(gateway):
    assert raw(gateway, "GET", "/healthz", key=False).status == 200
    ready = raw(gateway, "GET", "/readyz", key=False)
    assert ready.status == 200 and json.loads(ready.read())["ready"] is True


def _direct(upstream, body: dict) -> bytes:
    """What the fake upstream itself sends for `body` (the gateway asks every chat stream for its usage)."""
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                 headers={"Content-Type": "application/json"})
    return conn.getresponse().read()


def test_a_long_stream_is_relayed_byte_for_byte_and_its_usage_chunk_only_when_asked(gateway, fake, upstream):
    """The relay's fast paths (whole events straight out, usage found without parsing each event)
    keep what reaches the client exactly the upstream's, less the usage chunk the client did not ask for."""
    step = {"kind": "stream", "chunks": [f"w{i} " for i in range(300)]}
    asked = {**CHAT, "stream": True, "stream_options": {"include_usage": True},
             "metadata": {"fake_step": json.dumps(step)}}
    expected = _direct(upstream, asked)
    assert expected.count(b"data: ") == 303 and b'"usage":{"prompt_tokens"' in expected
    assert raw(gateway, "POST", "/v1/chat/completions", asked).read() == expected
    unasked = {k: v for k, v in asked.items() if k != "stream_options"}
    events = expected.split(b"\n\n")
    usage_chunk = next(e for e in events if b'"choices":[]' in e)
    assert raw(gateway, "POST", "/v1/chat/completions", unasked).read() == \
        b"\n\n".join(e for e in events if e != usage_chunk)


def test_a_cached_stream_replays_byte_for_byte(gateway, fake):
    step = {"kind": "stream", "chunks": [f"c{i} " for i in range(50)]}
    body = {**CHAT, "stream": True, "temperature": 0, "seed": 2727, "stream_options": {"include_usage": True},
            "metadata": {"fake_step": json.dumps(step)}}
    first = raw(gateway, "POST", "/v1/chat/completions", body)
    first_bytes = first.read()
    second = raw(gateway, "POST", "/v1/chat/completions", body)
    assert (first.getheader("x-gateway-cache"), second.getheader("x-gateway-cache")) == ("MISS", "HIT")
    assert second.read() == first_bytes and first_bytes.count(b"data: ") == 53
    assert len(fake.requests) == 1


def test_keepalives_come_between_events_when_the_upstream_pauses_mid_stream_never_inside_one(gateway, fake):
    fake.script = [{"kind": "stream", "delay": 0.5, "chunks": ["a", "b", "c", "d"]}]
    data = raw(gateway, "POST", "/v1/chat/completions", {**CHAT, "stream": True}).read()
    events = [e for e in data.split(b"\n\n") if e]
    assert all(e == b": keepalive" or e.startswith(b"data: ") for e in events), events
    deltas = [i for i, e in enumerate(events) if b'"content"' in e]
    assert len(deltas) == 4
    assert all(b": keepalive" in events[a:b] for a, b in zip(deltas, deltas[1:], strict=False))
