"""The cache and the per-client limits, exact across tasks: two real gateway processes share a
real Valkey-compatible server with TLS and AUTH (tests/valkey_server.py), in front of the fake
upstream, whose own record of requests proves what reached it."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import math
import socket
import threading
import time

import pytest

from gateway import cache
from gateway.limits import Price, estimate
from tests import gateway_process, valkey_server
from tests.conftest import within_one_minute
from tests.fake_upstream import Running

PRICES = {m: {"inputPerMillion": 1.0, "outputPerMillion": 2.0} for m in ("gpt-4o-mini", "text-embedding-3-small")}
TPM_LIMIT_EXTRA = 30  # tokens-per-minute limit = one estimate + this (see the tokens test)
CHAT = {"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": "What is 2+2?"}]}
# Each test request differs by a one-digit seed, so every body has the same size and estimate.
SPEND_BODY = {**CHAT, "max_tokens": 5, "seed": 0}
TPM_BODY = {**CHAT, "max_tokens": 100, "seed": 0}


def _estimated_tokens(body: dict) -> int:
    tokens_in, tokens_out = estimate("chat.completions", body, len(json.dumps(body)), 1000)
    return tokens_in + tokens_out


ONE_REQUEST_NANO = Price(1.0, 2.0).nano(12, 3)  # what the fake upstream's usage costs
SPEND_ESTIMATE_NANO = Price(1.0, 2.0).nano(math.ceil(len(json.dumps(SPEND_BODY)) / 4), 5)
LIMITS = {
    "limited": {"requestsPerMinute": 20},
    # Room for exactly four requests: four settled costs plus the fifth's reservation do not fit.
    "spender": {"usdPerDay": (3 * ONE_REQUEST_NANO + SPEND_ESTIMATE_NANO) / 1e9},
    "tokens": {"tokensPerMinute": _estimated_tokens(TPM_BODY) + TPM_LIMIT_EXTRA},
}


@pytest.fixture(scope="module")
def upstream():
    return Running()


def gateway_env(valkey, coalesce_wait: str = "10") -> dict[str, str]:
    # A cache call that times out fails open (straight to the upstream); on a loaded 2-core CI
    # machine 50 concurrent requests can pass the 0.25 s default, which is what production
    # wants but not what these tests are about (the server-down case has its own test). The
    # coalescing bound is long for the same reason: under load the first answer can take
    # seconds, and a waiter past the bound would call the upstream itself.
    return {**valkey.env(), "GATEWAY_PRICES": json.dumps(PRICES), "GATEWAY_COALESCE_WAIT_SECONDS": coalesce_wait,
            "GATEWAY_CACHE_TIMEOUT_SECONDS": "3", "GATEWAY_SERVICE": "llm-service-test"}


@pytest.fixture(scope="module")
def gateways(valkey, upstream, tmp_path_factory):
    """Two gateway processes, as two tasks behind the load balancer."""
    keys_doc = gateway_process.client_keys("web-app", "batch", *LIMITS, limits=LIMITS)
    env = gateway_env(valkey)
    folder = tmp_path_factory.mktemp("gateways")
    pair = [gateway_process.start(upstream.url, folder, env=env, keys_doc=keys_doc) for _ in range(2)]
    yield pair
    for gw in pair:
        gw.stop()


def post(gw, body, client="web-app", headers=None, path="/v1/chat/completions"):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, body=raw, headers={
        "Authorization": f"Bearer {gw.keys[client]}", "Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    return resp, resp.read()


# --- the cache ---------------------------------------------------------------------------------

def test_the_same_request_twice_reaches_the_upstream_once(gateways, fake):
    a, b = gateways
    first, body1 = post(a, CHAT)
    second, body2 = post(b, CHAT)  # another task: the entry is shared
    assert (first.getheader("x-gateway-cache"), second.getheader("x-gateway-cache")) == ("MISS", "HIT")
    assert body1 == body2 and len(fake.requests) == 1


def test_two_clients_never_share_an_entry(gateways, fake):
    a, _ = gateways
    post(a, CHAT, client="web-app")
    resp, _ = post(a, CHAT, client="batch")
    assert resp.getheader("x-gateway-cache") == "MISS" and len(fake.requests) == 2


def test_the_key_ignores_order_whitespace_and_delivery_fields(gateways, fake):
    a, b = gateways
    post(a, CHAT)
    reordered = b'{"messages":[{"content":"What is 2+2?","role":"user"}],  "temperature":0,"model":"gpt-4o-mini"}'
    assert post(b, reordered)[0].getheader("x-gateway-cache") == "HIT"
    assert post(a, {**CHAT, "user": "end-user-7", "store": False})[0].getheader("x-gateway-cache") == "HIT"
    assert post(a, {**CHAT, "max_tokens": 7})[0].getheader("x-gateway-cache") == "MISS", "a field that matters"
    assert len(fake.requests) == 2


def test_only_repeatable_requests_are_cached_unless_the_client_opts_in(gateways, fake):
    a, _ = gateways
    sampled = {**CHAT, "temperature": 0.8}
    assert [post(a, sampled)[0].getheader("x-gateway-cache") for _ in range(2)] == ["BYPASS", "BYPASS"]
    optin = {"X-Gateway-Cache": "on"}
    assert [post(a, sampled, headers=optin)[0].getheader("x-gateway-cache") for _ in range(2)] == ["MISS", "HIT"]
    embed = {"model": "text-embedding-3-small", "input": "hello"}
    assert [post(a, embed, path="/v1/embeddings")[0].getheader("x-gateway-cache") for _ in range(2)] == [
        "MISS", "HIT"]
    assert len(fake.requests) == 4


def test_no_store_bypasses_and_no_cache_refreshes(gateways, fake):
    a, _ = gateways
    fake.script = [{"kind": "ok"}]
    post(a, CHAT)
    assert post(a, CHAT, headers={"Cache-Control": "no-store"})[0].getheader("x-gateway-cache") == "BYPASS"
    assert post(a, CHAT, headers={"Cache-Control": "no-cache"})[0].getheader("x-gateway-cache") == "REFRESH"
    assert post(a, CHAT)[0].getheader("x-gateway-cache") == "HIT"
    assert len(fake.requests) == 3


def test_errors_are_never_cached(gateways, fake):
    a, _ = gateways
    fake.script = [{"kind": "status", "status": 400}]
    assert post(a, CHAT)[0].status == 400
    resp, _ = post(a, CHAT)
    assert resp.status == 200 and resp.getheader("x-gateway-cache") == "MISS"


def test_a_streamed_miss_then_a_hit_replays_the_identical_events(gateways, fake):
    a, b = gateways
    fake.script = [{"kind": "stream", "chunks": ["Four", ".", " Of course."], "delay": 0.05}]
    miss, first = post(a, {**CHAT, "stream": True})
    hit, second = post(b, {**CHAT, "stream": True})
    assert (miss.getheader("x-gateway-cache"), hit.getheader("x-gateway-cache")) == ("MISS", "HIT")
    assert hit.getheader("content-type").startswith("text/event-stream")
    assert second == first and first.endswith(b"data: [DONE]\n\n")
    assert len(fake.requests) == 1


def test_a_stream_and_a_plain_request_share_what_the_content_allows(gateways, fake):
    a, _ = gateways
    fake.script = [{"kind": "stream", "chunks": ["Four", "."]}]
    post(a, {**CHAT, "stream": True})
    resp, body = post(a, CHAT)  # served from the streamed entry
    doc = json.loads(body)
    assert resp.getheader("x-gateway-cache") == "HIT"
    assert doc["object"] == "chat.completion" and doc["choices"][0]["message"]["content"] == "Four."
    assert doc["usage"]["prompt_tokens"] == 12 and len(fake.requests) == 1
    other = {**CHAT, "messages": [{"role": "user", "content": "And 3+3?"}]}
    post(a, other)
    resp, events = post(a, {**other, "stream": True})  # a plain entry served as a stream
    assert resp.getheader("x-gateway-cache") == "HIT" and events.endswith(b"data: [DONE]\n\n")
    assert b'"content":"Hello there."' in events and len(fake.requests) == 2


def test_an_interrupted_stream_is_not_cached(gateways, fake):
    a, _ = gateways
    fake.script = [{"kind": "stream", "chunks": ["a", "b"], "drop_after": 1}]
    post(a, {**CHAT, "stream": True})
    assert post(a, {**CHAT, "stream": True})[0].getheader("x-gateway-cache") == "MISS"
    assert len(fake.requests) == 2


def test_fifty_concurrent_identical_requests_over_two_tasks_reach_the_upstream_once(gateways, fake):
    fake.script = [{"kind": "slow", "delay": 0.6}]
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda i: post(gateways[i % 2], CHAT), range(50)))
    assert {r.status for r, _ in results} == {200}
    assert len({body for _, body in results}) == 1
    outcomes = sorted(r.getheader("x-gateway-cache") for r, _ in results)
    assert len(fake.requests) == 1, outcomes
    assert sorted(r.getheader("x-gateway-cache") for r, _ in results).count("MISS") == 1


def test_a_lock_holder_that_died_does_not_hold_the_others_past_the_bound(valkey, upstream, fake, tmp_path):
    """A lock nobody will release (its task died): the request waits at most
    GATEWAY_COALESCE_WAIT_SECONDS (1 for this gateway), then goes to the upstream itself."""
    keys_doc = gateway_process.client_keys("web-app", "batch", *LIMITS, limits=LIMITS)
    gw = gateway_process.start(upstream.url, tmp_path, env=gateway_env(valkey, "1"), keys_doc=keys_doc)
    try:
        h = cache.key("chat.completions", CHAT, "org-test", "proj_test")
        valkey.client().set(f"llmgw:llm-service-test:e:web-app:0:0:{h}:lock", "dead-task", px=60_000)
        start = time.monotonic()
        resp, _ = post(gw, CHAT)
        waited = time.monotonic() - start
    finally:
        gw.stop()
    assert resp.status == 200 and len(fake.requests) == 1
    assert waited >= 0.95, "it waited for the holder first"
    assert waited < 10, "and not for the lock's 60 s"


def test_invalidating_a_clients_entries_or_the_whole_stacks(gateways, valkey, fake, tmp_path):
    a, _ = gateways
    post(a, CHAT)
    post(a, CHAT, client="batch")
    env = {**valkey.env(), "GATEWAY_SERVICE": "llm-service-test"}
    assert cachectl(env, "invalidate", "--client", "web-app").returncode == 0
    assert post(a, CHAT)[0].getheader("x-gateway-cache") == "MISS"
    assert post(a, CHAT, client="batch")[0].getheader("x-gateway-cache") == "HIT", "other clients keep theirs"
    done = cachectl(env, "invalidate")
    assert done.returncode == 0 and "invalidated every client's entries" in done.stdout
    assert post(a, CHAT, client="batch")[0].getheader("x-gateway-cache") == "MISS"


def test_invalidating_a_cache_that_does_not_answer_fails_with_exit_1_and_says_so(tmp_path):
    """Exit 1 (the cache did not answer), apart from 2 (a setting is wrong): what a runbook tells apart."""
    dead = socket.create_server(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    done = cachectl({"CACHE_HOST": "127.0.0.1", "CACHE_PORT": str(port), "CACHE_TLS": "false",
                     "GATEWAY_SERVICE": "llm-service-test"}, "invalidate")
    assert done.returncode == 1 and done.stderr.startswith("cachectl: the cache did not answer"), done.stderr
    assert cachectl({"GATEWAY_SERVICE": "llm-service-test"}, "invalidate").returncode == 2


def cachectl(env, *argv):
    import subprocess
    import sys

    from infra.stack_files import ROOT
    return subprocess.run([sys.executable, "-m", "gateway.cachectl", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=20, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                                      **gateway_process.under_mutation(), **env})


# --- limits, shared by both tasks --------------------------------------------------------------

def test_a_requests_per_minute_limit_is_exact_across_two_tasks(gateways, fake):
    within_one_minute()  # one minute window for the whole burst
    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        results = list(pool.map(lambda i: post(gateways[i % 2], {**CHAT, "seed": i}, client="limited"),
                                range(40)))
    statuses = [r.status for r, _ in results]
    assert statuses.count(200) == 20 and statuses.count(429) == 20
    assert len(fake.requests) == 20
    refused, body = next((r, b) for r, b in results if r.status == 429)
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert refused.getheader("x-ratelimit-limit-requests") == "20"
    assert refused.getheader("x-ratelimit-remaining-requests") == "0"
    assert 1 <= int(refused.getheader("retry-after")) <= 60


def test_cache_hits_count_as_requests_but_not_as_tokens_or_spend(gateways, valkey, fake):
    a, b = gateways
    for gw in (a, b, a, b):
        assert post(gw, SPEND_BODY, client="spender")[0].status == 200
    day = time.strftime("%Y%m%d", time.gmtime())
    assert int(valkey.client().get(f"llmgw:llm-service-test:usd:spender:{day}")) == ONE_REQUEST_NANO
    assert len(fake.requests) == 1


def test_the_spend_cap_blocks_at_the_configured_amount(gateways, valkey, fake):
    a, b = gateways
    statuses = []
    for i in range(6):
        resp, body = post((a, b)[i % 2], {**SPEND_BODY, "seed": i}, client="spender")
        statuses.append(resp.status)
    assert statuses == [200, 200, 200, 200, 429, 429]
    error = json.loads(body)["error"]
    assert error["code"] == "insufficient_quota" and "Daily spend limit" in error["message"]
    day = time.strftime("%Y%m%d", time.gmtime())
    spent = int(valkey.client().get(f"llmgw:llm-service-test:usd:spender:{day}"))
    cap = LIMITS["spender"]["usdPerDay"] * 1e9
    assert spent == 4 * ONE_REQUEST_NANO <= cap < spent + SPEND_ESTIMATE_NANO
    assert len(fake.requests) == 4


def test_tokens_are_reserved_before_the_call_and_settled_with_the_real_usage(gateways, fake):
    """The limit holds one estimate plus 30 tokens. Unsettled, a second request would not fit;
    settled with the real usage (15 tokens each), two more do, and then no more."""
    within_one_minute()
    statuses = [post(gateways[i % 2], {**TPM_BODY, "seed": i}, client="tokens")[0].status for i in range(4)]
    assert statuses == [200, 200, 200, 429]


# --- when the cache server is gone -----------------------------------------------------------

class _Counting:
    """What is left at a stopped node's address, made countable: a listener on its port that
    closes every connection at once, so each attempt the gateway makes is one accept. `silent`:
    an endpoint behind a partition instead, that takes each connection and never answers."""

    def __init__(self, port: int, silent: bool = False):
        self.sock = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.count, self.silent, self.held = 0, silent, []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            if self.silent:
                self.held.append(conn)
            else:
                conn.close()

    def settled(self, at_least: int, timeout: float = 5) -> int:
        """The count once it has reached `at_least` and stayed for 0.2 s: the accepting thread may
        run late on a loaded machine, after the gateway has already given up and answered."""
        deadline, last, since = time.monotonic() + timeout, -1, time.monotonic()
        while time.monotonic() < deadline:
            if self.count != last:
                last, since = self.count, time.monotonic()
            elif last >= at_least and time.monotonic() - since >= 0.2:
                break
            time.sleep(0.02)
        return self.count

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_requests_still_succeed_when_the_cache_server_stops(upstream, fake, tmp_path):
    """Valkey gone (an outage, a failover): requests go straight to the upstream. A failed cache
    call is one attempt, not redis-py's default three retries with backoff (which held the first
    request after an outage for ~4 s), and the cache is skipped for a second after a failure."""
    server = valkey_server.start(tmp_path)
    keys = gateway_process.client_keys("web-app", limits={"web-app": LIMITS["limited"]})
    env = {**server.env(), "GATEWAY_CACHE_TIMEOUT_SECONDS": "0.2"}
    gw = gateway_process.start(upstream.url, tmp_path, env=env, keys_doc=keys)
    attempts = None
    try:
        assert post(gw, CHAT)[0].status == 200
        assert post(gw, CHAT)[0].getheader("x-gateway-cache") == "HIT"
        up = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        up.request("GET", "/readyz")
        answer = up.getresponse()
        assert (answer.status, json.loads(answer.read())["checks"]["cache"]) == (200, True), "the cache answers"
        server.stop()
        attempts = _Counting(server.port)
        for _ in range(3):
            resp, body = post(gw, CHAT)
            assert resp.status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "Hello there."
        assert attempts.count <= 1, "the pooled connection failed once; no retries after it"
        ready = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        ready.request("GET", "/readyz")
        assert ready.getresponse().status == 503, "readiness says the cache does not answer"
        time.sleep(1.1)  # past the skip: the next request tries the cache again, once
        before = attempts.settled(0)
        assert post(gw, CHAT)[0].status == 200
        assert attempts.settled(before + 1) - before == 1
        assert len(fake.requests) == 5
        assert len(gw.lines_where(lambda line: line.get("CacheErrors"), 4)) == 4
    finally:
        gw.stop()
        server.stop()
        if attempts:
            attempts.close()


def test_a_cache_that_never_answers_is_tried_by_one_request_at_a_time(upstream, fake, tmp_path):
    """A partition: the endpoint takes connections and never answers, so a request that tries it
    waits out a timeout. After the skip that follows a failure, one request tries the store again;
    the others go on without it meanwhile (not each opening a connection and waiting its own
    connect timeout), and every request is answered."""
    server = valkey_server.start(tmp_path)
    silent = _Counting(gateway_process.free_port(), silent=True)
    keys = gateway_process.client_keys("web-app", limits={"web-app": LIMITS["limited"]})
    env = {**server.env(), "CACHE_PORT": str(silent.sock.getsockname()[1]), "GATEWAY_CACHE_TIMEOUT_SECONDS": "0.2",
           "GATEWAY_CACHE_CONNECT_TIMEOUT_SECONDS": "0.5"}
    gw = gateway_process.start(upstream.url, tmp_path, env=env, keys_doc=keys)
    try:
        assert post(gw, CHAT)[0].status == 200  # its store call fails: the store is skipped a second
        time.sleep(1.1)
        before = silent.settled(1)
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: post(gw, CHAT)[0].status, range(6)))
        assert answers == [200] * 6
        assert silent.settled(before + 1) - before == 1, "one request tried the store; five went on without it"
        assert len(gw.lines_where(lambda line: line.get("CacheErrors"), 7)) == 7
    finally:
        gw.stop()
        server.stop()
        silent.close()
    assert "Task exception was never retrieved" not in gw.proc.stderr.read().decode()


def test_without_a_cache_host_a_local_run_caches_in_process_and_says_so(upstream, fake, tmp_path):
    gw = gateway_process.start(upstream.url, tmp_path)
    try:
        post(gw, CHAT)
        assert post(gw, CHAT)[0].getheader("x-gateway-cache") == "HIT"
        assert len(fake.requests) == 1
    finally:
        gw.stop()
    assert "cache and limits in this process only (no CACHE_HOST)" in gw.proc.stderr.read().decode()


def test_a_request_whose_answer_is_not_cached_leaves_no_lock_behind(gateways, valkey, fake):
    """The request that took the fill lock got an error: it releases the lock at once, so the
    next identical request goes upstream itself instead of waiting for a fill that never comes."""
    a, _ = gateways
    fake.script = [{"kind": "status", "status": 400}]
    body = {**CHAT, "seed": 4242}
    assert post(a, body)[0].status == 400
    assert valkey.client().keys("*:lock") == []
    assert post(a, body)[0].getheader("x-gateway-cache") == "MISS" and len(fake.requests) == 2
    assert valkey.client().keys("*:lock") == [], "nor does a request that fills the entry"
