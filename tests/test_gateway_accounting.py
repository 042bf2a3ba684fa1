"""The limit and spend arithmetic, with usage as a real model reports it: thousands of tokens, a
different count for every request and every side (the fake upstream's realistic mode). Each test
sums what the fake upstream reported and compares it with what the gateway logged, what it
counted in Valkey, and what it refused: a counter that drops the completion tokens, prices one
side at the other's price, or keeps the wrong window is a different number here."""

from __future__ import annotations

import http.client
import json
import time

import pytest

from gateway.limits import Price, estimate
from tests import gateway_process
from tests.conftest import within_one_minute
from tests.fake_upstream import Running

SERVICE = "llm-service-accounting"
PRICES = {"gpt-4o-mini": {"inputPerMillion": 0.15, "outputPerMillion": 0.6},
          "text-embedding-3-small": {"inputPerMillion": 0.02, "outputPerMillion": 0.0}}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Summarise the report."}],
        "max_tokens": 1000}
RESPONSES = {"model": "gpt-4o-mini", "input": "Summarise the report.", "max_output_tokens": 1000}
EMBED = {"model": "text-embedding-3-small", "input": "the report"}
ROUTES = [  # path, body: every route that is charged, streamed and not
    ("/v1/chat/completions", CHAT),
    ("/v1/chat/completions", {**CHAT, "stream": True}),
    ("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}),
    ("/v1/responses", RESPONSES),
    ("/v1/responses", {**RESPONSES, "stream": True}),
    ("/v1/embeddings", EMBED),
]
RESERVE = sum(estimate("chat.completions", CHAT, len(json.dumps(CHAT)), 1000))
LIMITS = {
    "counted": {"requestsPerMinute": 1000, "tokensPerMinute": 10_000_000, "usdPerDay": 1000},
    # Room for one answer of 6,000 tokens and the next one's reservation, and no more.
    "tokens": {"tokensPerMinute": 6000 + RESERVE},
    # $0.002 a day: one answer of (3000, 1500) tokens is $0.00135; the next one's reservation fits.
    "spend": {"usdPerDay": 0.002},
    "requests": {"requestsPerMinute": 3},
}


@pytest.fixture(scope="module")
def upstream():
    running = Running()
    running.fake.realistic = True
    return running


@pytest.fixture(scope="module")
def gw(valkey, upstream, tmp_path_factory):
    env = {**valkey.env(), "GATEWAY_PRICES": json.dumps(PRICES), "GATEWAY_SERVICE": SERVICE}
    keys = gateway_process.client_keys(*LIMITS, limits=LIMITS)
    gateway = gateway_process.start(upstream.url, tmp_path_factory.mktemp("gw"), env=env, keys_doc=keys)
    yield gateway
    gateway.stop()


def post(gw, path: str, body: dict, client: str) -> tuple[int, bytes, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
    conn.request("POST", path, body=json.dumps(body).encode(),
                 headers={"Authorization": f"Bearer {gw.keys[client]}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data, resp


def counters(valkey, kind: str, client: str) -> dict[str, int]:
    """Each window's counter of one kind (rpm, tpm, usd) for a client, by its window's name."""
    db = valkey.client()
    prefix = f"llmgw:{SERVICE}:{kind}:{client}:"
    return {k.decode().removeprefix(prefix): int(db.get(k)) for k in db.keys(prefix + "*")}


def test_every_route_is_counted_and_priced_at_the_usage_the_upstream_reported(gw, fake, valkey):
    started = time.time()
    for path, body in ROUTES:
        status, data, _ = post(gw, path, body, "counted")
        assert status == 200, data
    ended = time.time()
    reported = [r["usage"] for r in fake.requests]
    assert len(reported) == len(ROUTES) and len(set(reported)) == len(ROUTES), "a different usage each time"
    embed_in, _ = reported[-1]
    reported[-1] = (embed_in, 0)  # an embedding has no output
    price = Price(0.15, 0.6)
    nano = [price.nano(i, o) for i, o in reported[:-1]] + [Price(0.02, 0).nano(embed_in, 0)]

    lines = gw.lines_where(lambda line: line["Client"] == "counted", count=len(ROUTES))
    assert [(line["InputTokens"], line["OutputTokens"]) for line in lines] == reported
    assert [round(line["EstimatedCostUSD"] * 1e9) for line in lines] == nano

    tpm, usd, rpm = (counters(valkey, kind, "counted") for kind in ("tpm", "usd", "rpm"))
    assert sum(tpm.values()) == sum(i + o for i, o in reported), "tokens per minute: input and output"
    assert sum(usd.values()) == sum(nano), "spend per day: each side at its own price, in nano-USD"
    assert sum(rpm.values()) == len(ROUTES)
    # The windows: the UTC minute and day the requests came in, each kept past its end, not for ever.
    assert {int(m) for m in tpm} <= set(range(int(started // 60), int(ended // 60) + 1))
    assert set(usd) <= {time.strftime("%Y%m%d", time.gmtime(t)) for t in (started, ended)}
    db = valkey.client()
    for minute in tpm:
        assert 60_000 < db.pttl(f"llmgw:{SERVICE}:tpm:counted:{minute}") <= 120_000
    for day in usd:
        assert 86_400 < db.ttl(f"llmgw:{SERVICE}:usd:counted:{day}") <= 2 * 86_400


def test_the_token_limit_counts_the_settled_usage_of_each_answer(gw, fake):
    """6,000 tokens used (2,500 in, 3,500 out) leaves exactly one reservation's room; that one
    settles at 300 + 200, and the next is refused, saying how much is used and how much is left."""
    fake.script = [{"kind": "ok", "usage": [2500, 3500]}, {"kind": "ok", "usage": [300, 200]}]
    within_one_minute()
    assert post(gw, "/v1/chat/completions", CHAT, "tokens")[0] == 200
    assert post(gw, "/v1/chat/completions", CHAT, "tokens")[0] == 200
    status, data, resp = post(gw, "/v1/chat/completions", CHAT, "tokens")
    assert status == 429 and len(fake.requests) == 2
    assert "used 6500" in json.loads(data)["error"]["message"]
    assert resp.getheader("x-ratelimit-remaining-tokens") == str(6000 + RESERVE - 6500)


def test_the_spend_limit_counts_each_answer_at_its_own_price(gw, fake):
    """$0.00135 spent (3,000 in at $0.15 and 1,500 out at $0.60 per million) leaves room for one
    reservation under $0.002; that one settles at the same, and the third is refused at $0.0027."""
    fake.script = [{"kind": "ok", "usage": [3000, 1500]}] * 2
    assert post(gw, "/v1/chat/completions", CHAT, "spend")[0] == 200
    assert post(gw, "/v1/chat/completions", CHAT, "spend")[0] == 200
    status, data, _ = post(gw, "/v1/chat/completions", CHAT, "spend")
    error = json.loads(data)["error"]
    assert status == 429 and error["code"] == "insufficient_quota" and len(fake.requests) == 2
    assert "$0.0027 spent" in error["message"]


def test_a_client_is_counted_only_for_the_limits_it_has(gw, fake, valkey):
    """Its limits decide its counters: a spend limit alone keeps no token count, a token limit
    alone no day spend (a counter with no limit to check is memory and a round trip for nothing)."""
    fake.script = [{"kind": "ok", "usage": [3000, 1500]}]
    assert post(gw, "/v1/chat/completions", CHAT, "spend")[0] == 200
    fake.script = [{"kind": "ok", "usage": [100, 50]}]
    assert post(gw, "/v1/chat/completions", CHAT, "tokens")[0] == 200
    assert counters(valkey, "tpm", "spend") == {} and counters(valkey, "usd", "tokens") == {}
    assert sum(counters(valkey, "usd", "spend").values()) == 3000 * 150 + 1500 * 600


def test_a_cache_hit_counts_against_the_request_limit(gw, fake):
    """Hits reach no upstream and cost no tokens, but they are requests: a client at its limit is
    refused a hit as it is a miss."""
    body = {**CHAT, "temperature": 0}
    within_one_minute()
    answers = [post(gw, "/v1/chat/completions", body, "requests") for _ in range(4)]
    assert [a[2].getheader("x-gateway-cache") for a in answers[:3]] == ["MISS", "HIT", "HIT"]
    assert answers[3][0] == 429 and len(fake.requests) == 1
    assert json.loads(answers[3][1])["error"]["type"] == "requests"
