"""Several upstreams per model, for real: two gateway processes sharing a real Valkey server, in front
of four fake upstreams on 127.0.0.1 (`default` a, then b on Azure's api-key header, c and d), whose
own records prove where each request went and what it carried."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import signal
import time

import openai
import pytest

from gateway.limits import Price
from tests import gateway_process
from tests.fake_upstream import Running

KEYS = {"b": "azure-key-" + "b" * 24, "c": "sk-c-" + "c" * 30, "d": "sk-d-" + "d" * 30}
PRICES = {"m-a": (1.0, 2.0), "m-b": (3.0, 5.0), "m-c": (0.5, 0.5), "m-d": (1.0, 1.0)}
ROUTES = {
    # a 3 : b 1; c only when both fail.
    "split": [{"upstream": "default", "model": "m-a", "weight": 3}, {"upstream": "b", "model": "m-b", "weight": 1},
              {"upstream": "c", "model": "m-c", "tier": 2}],
    "failover": [{"upstream": "default", "model": "m-a"}, {"upstream": "b", "model": "m-b", "tier": 2}],
    "drops": [{"upstream": "c", "model": "m-c"}, {"upstream": "b", "model": "m-b"}],
    "shared": [{"upstream": "d", "model": "m-d"}, {"upstream": "b", "model": "m-b"}],
    "azure-only": [{"upstream": "b", "model": "m-b"}],
}
COOLDOWN_SECONDS = 1.5
N_SPLIT = 400  # requests the weighted split is judged on: 3 standard deviations are ~6.5 points


@pytest.fixture(scope="module")
def ups():
    return {name: Running() for name in "abcd"}


@pytest.fixture
def up(ups, valkey):
    valkey.client().flushall()
    for u in ups.values():
        u.fake.script, u.fake.requests, u.fake.always = [], [], None
    return {name: u.fake for name, u in ups.items()}


@pytest.fixture(scope="module")
def pair(ups, valkey, tmp_path_factory):
    upstreams = {name: {"baseUrl": f"{ups[name].url}/v1", "auth": "api-key" if name == "b" else "bearer",
                        "keyVariable": f"{name.upper()}_KEY", **({"projectId": "proj_c"} if name == "c" else {})}
                 for name in "bcd"}
    env = {**valkey.env(), "GATEWAY_UPSTREAMS": json.dumps(upstreams), "GATEWAY_ROUTES": json.dumps(ROUTES),
           "GATEWAY_PRICES": json.dumps({m: {"inputPerMillion": i, "outputPerMillion": o}
                                         for m, (i, o) in PRICES.items()}),
           "GATEWAY_UPSTREAM_COOLDOWN_SECONDS": str(COOLDOWN_SECONDS), "GATEWAY_UPSTREAM_COOLDOWN_AFTER": "2",
           "GATEWAY_CACHE_TIMEOUT_SECONDS": "3", "GATEWAY_SERVICE": "llm-service-routing",
           **{f"{name.upper()}_KEY": key for name, key in KEYS.items()}}
    keys_doc = gateway_process.client_keys("web-app")
    folder = tmp_path_factory.mktemp("routing")
    both = [gateway_process.start(ups["a"].url, folder, env=env, keys_doc=keys_doc) for _ in range(2)]
    yield both
    for gw in both:
        gw.stop(signal.SIGINT)  # at once (SIGTERM would wait out its drain's quiet spell)


def chat(gw, model: str, **extra):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                 headers={"Authorization": f"Bearer {gw.keys['web-app']}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp, resp.read()


def served_by(gw, model: str, n: int) -> list[str]:
    """Which upstream answered each of `n` sequential requests (all must succeed)."""
    out = []
    for _ in range(n):
        resp, data = chat(gw, model)
        assert resp.status == 200, data
        out.append(resp.getheader("x-gateway-upstream"))
    return out


def cooling(gw) -> list[str]:
    """The targets (upstream/model) the process has cooling down: /readyz shows them to a client."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    conn.request("GET", "/readyz", headers={"Authorization": f"Bearer {gw.keys['web-app']}"})
    return json.loads(conn.getresponse().read())["cooling_down"]


def test_traffic_splits_by_weight_and_each_upstream_gets_its_own_model_name_and_key(pair, up):
    gw = pair[0]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: chat(gw, "split"), range(N_SPLIT)))
    assert all(resp.status == 200 for resp, _ in answers)
    by = [resp.getheader("x-gateway-upstream") for resp, _ in answers]
    assert set(by) == {"default", "b"} and len(up["c"].requests) == 0  # tier 2 only on failure
    assert abs(by.count("default") / N_SPLIT - 0.75) < 0.065
    assert len(up["a"].requests) == by.count("default") and len(up["b"].requests) == by.count("b")
    a, b = up["a"].requests[0], up["b"].requests[0]
    assert a["body"]["model"] == "m-a" and b["body"]["model"] == "m-b"
    assert a["headers"]["Authorization"] == f"Bearer {gateway_process.UPSTREAM_KEY}"
    assert "api-key" not in a["headers"]
    assert b["headers"]["api-key"] == KEYS["b"] and "Authorization" not in b["headers"]
    assert "OpenAI-Project" not in b["headers"] and a["headers"]["OpenAI-Project"] == "proj_test"


def test_each_answer_is_priced_at_the_model_its_upstream_served(pair, up):
    gw = pair[0]
    served_by(gw, "split", 12)
    lines = gw.lines_where(lambda line: line.get("model") == "split" and line.get("upstream") == "b", count=1)
    for line in gw.lines_where(lambda line: line.get("model") == "split", count=12)[-12:]:
        price = Price(*PRICES[line["upstream_model"]])
        assert line["EstimatedCostUSD"] == pytest.approx(price.nano(12, 3) / 1e9)
    assert lines and lines[0]["upstream_model"] == "m-b"


def test_a_429_fails_over_before_the_first_byte_cools_the_upstream_and_it_is_tried_after(pair, up):
    gw = pair[0]
    up["a"].always = {"kind": "status", "status": 429, "headers": {"retry-after": "1"}}
    first, _ = chat(gw, "failover")
    rid = first.getheader("x-gateway-request-id")
    assert served_by(gw, "failover", 4) == ["b"] * 4 and first.getheader("x-gateway-upstream") == "b"
    assert len(up["a"].requests) == 1  # then cooled for its Retry-After
    (line,) = gw.lines_where(lambda line: line.get("request_id") == rid)
    assert line["upstream"] == "b" and line["Retries"] == 1 and line["Upstream429"] == 1
    up["a"].always = None
    deadline = time.monotonic() + 10
    while "default/m-a" in cooling(gw) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert served_by(gw, "failover", 3) == ["default"] * 3  # the cooldown is over: back to tier 1


def test_an_upstream_that_drops_connections_is_failed_over_then_cooled_after_its_failures(pair, up):
    gw = pair[0]
    up["c"].always = {"kind": "drop"}
    assert served_by(gw, "drops", 30) == ["b"] * 30
    assert len(up["c"].requests) == 2  # GATEWAY_UPSTREAM_COOLDOWN_AFTER, then no more
    assert cooling(gw) == ["c/m-c"]
    lines = gw.lines_where(lambda line: line.get("model") == "drops", count=30)
    assert sum(line["Retries"] for line in lines) == 2


def test_a_stream_is_never_retried_once_it_began(pair, up):
    gw = pair[0]
    up["a"].always = {"kind": "stream", "chunks": ["Hel", "lo", "."], "drop_after": 1}
    resp, data = chat(gw, "failover", stream=True)
    assert resp.status == 200 and resp.getheader("x-gateway-upstream") == "default"
    assert b"upstream_stream_interrupted" in data and b"[DONE]" not in data
    assert len(up["a"].requests) == 1 and up["b"].requests == []


def test_two_processes_share_a_cooldown_through_valkey(pair, up):
    first, second = pair
    up["d"].always = {"kind": "status", "status": 503, "headers": {"retry-after": "30"}}
    assert served_by(first, "shared", 12) == ["b"] * 12
    assert len(up["d"].requests) == 1
    deadline = time.monotonic() + 10
    while "d/m-d" not in cooling(second) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "d/m-d" in cooling(second)
    # The second process never called d, and does not now: the first one's discovery saved it.
    assert served_by(second, "shared", 20) == ["b"] * 20
    assert len(up["d"].requests) == 1


def test_an_unknown_model_is_refused_as_the_sdk_expects(pair, up):
    client = openai.OpenAI(base_url=f"{pair[0].url}/v1", api_key=pair[0].keys["web-app"], max_retries=0)
    with pytest.raises((openai.NotFoundError, openai.BadRequestError)) as raised:
        client.chat.completions.create(model="not-routed", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 400 and raised.value.code == "model_not_found"
    # A target's own model, priced but no route's name: refused too (it would reach `default`).
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="m-b", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.code == "model_not_found"
    assert all(u.requests == [] for u in up.values())
    answer = client.chat.completions.create(model="split", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "Hello there."


def test_the_model_list_is_the_routes_names_whatever_the_default_upstream_lists(pair, up):
    up["a"].script = [{"kind": "models", "ids": ["m-a", "gpt-4o", "split"]}]
    conn = http.client.HTTPConnection("127.0.0.1", pair[0].port, timeout=5)
    conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {pair[0].keys['web-app']}"})
    listed = [m["id"] for m in json.loads(conn.getresponse().read())["data"]]
    assert listed == list(ROUTES)


def test_upstream_metrics_lines_are_emf_per_upstream_and_start_again_after_each():
    from gateway.observe import UpstreamStats

    stats = UpstreamStats()
    started = time.perf_counter()
    stats.called("default", started)
    stats.called("b", started, failed=True, throttled=True)
    stats.called("b", started, failed=True)
    stats.called("b", started)
    cooldowns = {"b": 2}
    lines = [json.loads(x) for x in stats.lines(["default", "b", "c"], ["b"], cooldowns, "svc", "NS", now_ms=5)
             .splitlines()]
    seen = [(x["Upstream"], x["UpstreamRequests"], x["UpstreamErrors"], x["UpstreamThrottled"],
             x["UpstreamCooldowns"], x["UpstreamCoolingDown"], len(x.get("UpstreamLatency", []))) for x in lines]
    assert seen == [("default", 1, 0, 0, 0, 0, 1), ("b", 3, 1, 1, 2, 1, 3), ("c", 0, 0, 0, 0, 0, 0)]
    directive = lines[1]["_aws"]
    assert directive["Timestamp"] == 5 and directive["CloudWatchMetrics"][0]["Namespace"] == "NS"
    assert directive["CloudWatchMetrics"][0]["Dimensions"] == [["Service", "Upstream"]]
    assert {m["Name"]: m["Unit"] for m in directive["CloudWatchMetrics"][0]["Metrics"]}["UpstreamLatency"] == \
        "Milliseconds"
    assert "UpstreamLatency" not in [m["Name"] for m in lines[2]["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
    assert cooldowns == {} and stats.counts == {}  # the next line counts from zero
    for _ in range(150):
        stats.called("c", started)
    (c,) = [json.loads(x) for x in stats.lines(["c"], [], {}, "svc", "NS").splitlines()]
    assert c["UpstreamRequests"] == 150 and len(c["UpstreamLatency"]) == 100  # EMF's bound on values


def test_readyz_shows_cooling_targets_to_a_client_only(pair, up):
    conn = http.client.HTTPConnection("127.0.0.1", pair[0].port, timeout=5)
    conn.request("GET", "/readyz")
    doc = json.loads(conn.getresponse().read())
    assert doc["ready"] is True and "cooling_down" not in doc  # the load balancer's world sees no names
    assert isinstance(cooling(pair[0]), list)


def test_a_redirect_is_answered_not_followed_so_an_api_key_never_leaves_for_another_host(pair, up, ups):
    up["b"].always = {"kind": "status", "status": 307,
                      "headers": {"location": f"{ups['d'].url}/v1/chat/completions"}}
    resp, _ = chat(pair[0], "azure-only")
    assert resp.status == 307 and up["d"].requests == []
    assert len(up["b"].requests) == 1 and up["b"].requests[0]["headers"]["api-key"] == KEYS["b"]
