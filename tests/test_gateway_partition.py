"""A network partition between the gateway and Valkey: the endpoint takes connections and does not
answer, and what the gateway sent meanwhile is delivered when it ends (TCP sends again what was
not acknowledged). A call that timed out may so have been applied all the same: the gateway's
second try of a settlement, and its own count of a request it admitted alone, must not count it
twice. Found by `make soak` (a settlement held back by a partition was applied twice); the
proxy is the soak's (soak/cluster.py), run here on its own thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import threading
import time

import pytest

from soak.cluster import Proxy
from tests import gateway_process
from tests.fake_upstream import Running

SERVICE = "llm-service-partition"
PRICES = {"gpt-4o-mini": {"inputPerMillion": 0.15, "outputPerMillion": 0.6}}
LIMITS = {"requestsPerMinute": 1000, "tokensPerMinute": 50_000_000, "usdPerDay": 1000}
CLIENTS = ("settling", "gating")


def chat(answer_after: float = 0.0) -> dict:
    step = {"kind": "slow", "delay": answer_after}
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Summarise it."}],
            "metadata": {"fake_step": json.dumps(step)}}


class Partitionable:
    """The soak's proxy before Valkey, on an event loop of its own."""

    def __init__(self, target: int):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.proxy = Proxy(target)
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self.loop).result(5)

    def partition(self, on: bool) -> None:
        self.proxy.partitioned = on

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def setup(valkey, tmp_path_factory):
    """One gateway before the proxy; each test has a client of its own (its own counters)."""
    upstream = Running()
    upstream.fake.realistic = True
    proxy = Partitionable(valkey.port)
    env = {**valkey.env(), "CACHE_PORT": str(proxy.proxy.port), "GATEWAY_SERVICE": SERVICE,
           "GATEWAY_PRICES": json.dumps(PRICES), "GATEWAY_CACHE_TIMEOUT_SECONDS": "0.2",
           "GATEWAY_CACHE_CONNECT_TIMEOUT_SECONDS": "0.5"}
    keys = gateway_process.client_keys(*CLIENTS, limits=dict.fromkeys(CLIENTS, LIMITS))
    for key in valkey.client().scan_iter(match=f"llmgw:{SERVICE}:*"):
        valkey.client().delete(key)
    gw = gateway_process.start(upstream.url, tmp_path_factory.mktemp("gw"), env=env, keys_doc=keys)
    yield gw, proxy, valkey
    gw.stop()
    proxy.close()


def post(gw: gateway_process.Gateway, client: str, body: dict) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Authorization": f"Bearer {gw.keys[client]}", "Content-Type": "application/json"})
    status = conn.getresponse().status
    conn.close()
    return status


def counters(valkey, client: str) -> dict[str, int]:
    """The client's counters in Valkey, by kind (rpm, tpm, usd), summed over their windows."""
    out = {"rpm": 0, "tpm": 0, "usd": 0}
    for key in valkey.client().scan_iter(match=f"llmgw:{SERVICE}:*:{client}:*"):
        kind = key.decode().split(":")[2]
        if kind in out:
            out[kind] += int(valkey.client().get(key) or 0)
    return out


def logged(gw: gateway_process.Gateway, client: str, n: int) -> dict[str, int]:
    lines = gw.lines_where(lambda line: line.get("Client") == client, n)
    return {"rpm": len(lines), "tpm": sum(ln["InputTokens"] + ln["OutputTokens"] for ln in lines),
            "usd": sum(round(ln["EstimatedCostUSD"] * 1e9) for ln in lines)}


def unpaid(gw: gateway_process.Gateway) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("GET", "/readyz", headers={"Authorization": f"Bearer {gw.keys['settling']}"})
    doc = json.loads(conn.getresponse().read())
    conn.close()
    return doc["unpaid"]


def scripts_run(valkey) -> int:
    stats = valkey.client().info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))


def once_run(valkey, scripts: int, timeout: float = 10) -> None:
    """Until Valkey has run `scripts` more of the gateway's scripts (the calls held back, and the
    gateway's own tries once the store answers: a second or two after): then all of them are in
    the counters, and a call applied twice is there twice."""
    deadline, start = time.monotonic() + timeout, scripts_run(valkey)
    while scripts_run(valkey) < start + scripts and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_settlement_held_back_by_a_partition_and_sent_again_counts_once(setup):
    gw, proxy, valkey = setup
    assert post(gw, "settling", chat()) == 200
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(post, gw, "settling", chat(answer_after=1.0))  # settled in the partition
        time.sleep(0.5)
        proxy.partition(True)
        assert held.result() == 200
    time.sleep(0.5)
    assert unpaid(gw) == 1, "the settlement it could not send, shown to a client on /readyz"
    proxy.partition(False)  # the settlement the gateway gave up on arrives; it sends it again too
    once_run(valkey, 2)
    want = logged(gw, "settling", 2)
    assert counters(valkey, "settling") == want
    assert unpaid(gw) == 0


def test_a_gate_held_back_by_a_partition_is_undone_and_the_request_counted_once(setup):
    gw, proxy, valkey = setup
    assert post(gw, "gating", chat()) == 200
    proxy.partition(True)
    assert post(gw, "gating", chat()) == 200  # its gate timed out: admitted alone, charged by this process
    time.sleep(0.3)
    proxy.partition(False)  # the gate arrives late (a reservation, a request); the process pays its count
    once_run(valkey, 3)  # the gate, its void, and the payment of what the process counted
    want = logged(gw, "gating", 2)
    assert counters(valkey, "gating") == want
    assert gw.lines_where(lambda line: line.get("Client") == "gating" and line.get("CacheErrors"), 1)


def test_a_payment_cut_by_a_cancellation_is_kept_to_be_sent_again_as_it_was(valkey):
    """What a process owes, its payment on its way when the process stops (the loop cancelled):
    it may have landed, so it is kept with its mark, not dropped nor merged into a new one."""
    from gateway.app import App, Unsettled
    from gateway.limits import windows
    from gateway.settings import from_env

    proxy = Partitionable(valkey.port)
    env = {**valkey.env(), "CACHE_PORT": str(proxy.proxy.port), "OPENAI_API_KEY": "sk-test", "HOST": "127.0.0.1",
           "GATEWAY_SERVICE": SERVICE}

    async def scenario():
        app = App(from_env(env, log=lambda line: None))
        minute, day, _, _ = windows()
        app.owed[("gating", minute, day)] = [2, 300, 4000]
        proxy.partition(True)
        paying = asyncio.ensure_future(app.pay())
        await asyncio.sleep(0.1)  # sent, unanswered
        paying.cancel()
        with pytest.raises(asyncio.CancelledError):
            await paying
        (debt,) = app.unsettled
        assert isinstance(debt, Unsettled) and (debt.client, debt.requests, debt.tokens, debt.nano) == \
            ("gating", 2, 300, 4000) and debt.r.mark and not app.owed
        await app.store.close()
    try:
        asyncio.run(scenario())
    finally:
        proxy.partition(False)
        proxy.close()
