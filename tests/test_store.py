"""One suite, both stores: the in-process store a local run uses and Valkey (a real server with TLS
and AUTH) must answer every gate, fill, settle and invalidation the same way, so that a limit
tested against one holds on the other. Each case runs on its own event loop with a fresh store."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.limits import Limits, Reservation, windows
from gateway.store import LocalStore, StoreUnavailable, ValkeyStore
from tests.conftest import within_one_minute

SERVICE = "llm-service-store"


@pytest.fixture(params=["in-process", "valkey"])
def run(request, valkey):
    """run(scenario): scenario(store) on a fresh store of the kind, on its own loop."""
    def make():
        if request.param == "in-process":
            return LocalStore()
        valkey.client().flushall()
        return ValkeyStore("127.0.0.1", port=valkey.port, password=valkey.auth, ca_file=str(valkey.ca_file),
                           service=SERVICE, timeout=2.0)

    def go(scenario):
        within_one_minute(3)  # a case takes well under a second
        loop = asyncio.new_event_loop()

        async def body():
            store = make()
            try:
                await scenario(store)
            finally:
                await store.close()
        try:
            loop.run_until_complete(body())
        finally:
            loop.close()
    return go


NONE = Limits()  # no limit


def gate(store, client="c", limits=NONE, cache_hash="", read=False, lock=False, tokens=0, nano=0,
         counted=False):
    return store.gate(client, limits, cache_hash, read, lock, tokens, nano, 5_000, counted)


def test_requests_per_minute_are_counted_and_refused_at_the_limit(run):
    async def scenario(store):
        limits = Limits(requests_per_minute=2)
        assert [(await gate(store, limits=limits)).outcome for _ in range(2)] == ["miss", "miss"]
        refused = await gate(store, limits=limits)
        assert (refused.outcome, refused.used) == ("requests", 2)
        counted = await gate(store, limits=limits, counted=True)
        assert counted.outcome == "miss", "a request counted already (a hit it could not serve) is let through"
        assert (await gate(store, limits=limits)).used == 2, "and not counted twice"
        assert (await gate(store, "other", limits)).outcome == "miss", "each client has its own count"
    run(scenario)


def test_a_request_with_nothing_to_cache_names_no_entry_and_holds_no_lock(run):
    """Even when it asks to lock (a caller's slip): without a cache hash there is nothing to fill."""
    async def scenario(store):
        for read, lock in ((False, False), (True, True)):
            g = await gate(store, read=read, lock=lock)
            assert (g.outcome, g.entry_key, g.holds_lock) == ("miss", "", False)
    run(scenario)


def test_tokens_and_spend_are_refused_past_the_limit_and_admitted_up_to_it(run):
    async def scenario(store):
        limits = Limits(tokens_per_minute=1000, usd_per_day=0.000001)  # 1,000 nano-dollars
        assert (await gate(store, limits=limits, tokens=600, nano=600)).outcome == "miss"
        over = await gate(store, limits=limits, tokens=401)
        assert (over.outcome, over.used) == ("tokens", 600)
        spend = await gate(store, limits=limits, nano=401)
        assert (spend.outcome, spend.used) == ("spend", 600)
        assert (await gate(store, limits=limits, tokens=400, nano=400)).outcome == "miss", "exactly at the limit"
        assert (await gate(store, limits=limits, tokens=1)).outcome == "tokens"
    run(scenario)


def test_each_limit_admits_its_whole_amount_from_an_empty_window(run):
    """The first request of a window may use all of it: a limit of 1 request, and a first request
    asking the whole token or spend allowance, are admitted; one past it is refused with 0 used."""
    async def scenario(store):
        assert (await gate(store, "r", Limits(requests_per_minute=1))).outcome == "miss"
        assert (await gate(store, "r", Limits(requests_per_minute=1))).outcome == "requests"
        limits = Limits(tokens_per_minute=1000, usd_per_day=0.000001)
        over = await gate(store, "t", limits=limits, tokens=1001)
        assert (over.outcome, over.used) == ("tokens", 0)
        spend = await gate(store, "s", limits=limits, nano=1001)
        assert (spend.outcome, spend.used) == ("spend", 0)
        assert (await gate(store, "a", limits=limits, tokens=1000, nano=1000)).outcome == "miss"
    run(scenario)


def test_a_hit_counts_as_one_request(run):
    async def scenario(store):
        limits = Limits(requests_per_minute=4)
        holder = await gate(store, limits=limits, cache_hash="h", read=True, lock=True)  # 1
        await store.fill(holder, b"J{}", 60)
        assert (await gate(store, limits=limits, cache_hash="h", read=True)).outcome == "hit"  # 2
        assert (await gate(store, limits=limits)).outcome == "miss"  # 3
        assert (await gate(store, limits=limits)).outcome == "miss"  # 4
        refused = await gate(store, limits=limits)
        assert (refused.outcome, refused.used) == ("requests", 4)
    run(scenario)


def test_settling_for_a_client_this_store_never_gated_counts_its_requests(run):
    """A process that counted requests alone while the store was away settles them later, for
    clients the store may not have seen since it started."""
    async def scenario(store):
        from gateway.limits import windows
        from gateway.store import Reservation

        minute, day, _, _ = windows()
        await store.settle("new", Reservation(0, 0, minute, day, ""), 0, 0, requests=2)
        refused = await gate(store, "new", Limits(requests_per_minute=2))
        assert (refused.outcome, refused.used) == ("requests", 2)
    run(scenario)


def test_the_in_process_store_forgets_what_expired():
    store = LocalStore()
    store._set("k", 1, 0.001)  # noqa: SLF001 - the store's own bookkeeping
    time.sleep(0.01)
    assert store._get("k") is None and "k" not in store.values, "not kept once expired"  # noqa: SLF001


def test_settling_corrects_the_reservation_and_adds_requests_counted_elsewhere(run):
    async def scenario(store):
        limits = Limits(requests_per_minute=5, tokens_per_minute=1000, usd_per_day=0.000001)
        first = await gate(store, limits=limits, tokens=900, nano=900)
        assert (await gate(store, limits=limits, tokens=200)).outcome == "tokens"
        await store.settle("c", first.reservation, 100, 50, requests=3)
        assert (await gate(store, limits=limits, tokens=900, nano=950)).outcome == "miss", "100 + 900, 50 + 950"
        refused = await gate(store, limits=limits)
        assert (refused.outcome, refused.used) == ("requests", 5), "2 gated and 3 settled"
    run(scenario)


def test_requests_in_flight_are_bounded_and_a_settled_one_frees_its_place(run):
    async def scenario(store):
        limits = Limits(concurrent_requests=2)
        a, b = await gate(store, limits=limits), await gate(store, limits=limits)
        assert a.reservation.flight and b.reservation.flight and a.reservation.flight != b.reservation.flight
        third = await gate(store, limits=limits)
        assert (third.outcome, third.used) == ("concurrent", 2)
        await store.settle("c", a.reservation, 0, 0)
        assert (await gate(store, limits=limits)).outcome == "miss"
        assert not (await gate(store, "free")).reservation.flight, "no bound, no place taken"
    run(scenario)


def test_one_request_fills_an_entry_the_others_read_and_hits_count_as_requests(run):
    async def scenario(store):
        limits = Limits(requests_per_minute=3)
        holder = await gate(store, limits=limits, cache_hash="h", read=True, lock=True)
        other = await gate(store, limits=limits, cache_hash="h", read=True, lock=True)
        assert (holder.outcome, holder.holds_lock) == ("miss", True)
        assert (other.outcome, other.holds_lock) == ("miss", False)
        await store.fill(holder, b"J{}", 60)
        assert await store.wait(other, 5) == b"J{}"
        hit = await gate(store, limits=limits, cache_hash="h", read=True, lock=True)
        assert (hit.outcome, hit.entry) == ("hit", b"J{}")
        assert (await gate(store, limits=limits, cache_hash="h", read=True)).outcome == "requests", "3 used"
        fresh = await gate(store, "d", cache_hash="h", read=True, lock=True)
        assert fresh.outcome == "miss" and fresh.entry is None, "another client never reads this one's entry"
        unread = await gate(store, cache_hash="h", read=False, lock=True)
        assert unread.outcome == "miss", "a refresh does not read the entry"
        unlocked = await gate(store, "e", cache_hash="h2", read=True, lock=False)
        assert not unlocked.holds_lock
    run(scenario)


def test_a_released_lock_passes_to_the_next_request_and_its_waiter_gets_nothing(run):
    async def scenario(store):
        holder = await gate(store, cache_hash="h", read=True, lock=True)
        waiter = await gate(store, cache_hash="h", read=True, lock=True)
        assert await store.wait(waiter, 0.05) is None, "nothing within the bound"
        waiting = asyncio.create_task(store.wait(waiter, 5))
        await asyncio.sleep(0.01)
        await store.release(holder)
        assert await waiting is None
        nxt = await gate(store, cache_hash="h", read=True, lock=True)
        assert nxt.outcome == "miss" and nxt.holds_lock
    run(scenario)


def test_a_waiter_gets_the_entry_filled_while_it_waits(run):
    async def scenario(store):
        holder = await gate(store, cache_hash="h", read=True, lock=True)
        waiter = await gate(store, cache_hash="h", read=True, lock=True)
        waiting = asyncio.create_task(store.wait(waiter, 5))
        await asyncio.sleep(0.02)
        assert not waiting.done(), "nothing to read yet: it waits"
        await store.fill(holder, b"J{}", 60)
        assert await waiting == b"J{}"
    run(scenario)


def test_a_late_second_release_leaves_the_lock_another_request_took_since(run):
    async def scenario(store):
        first = await gate(store, cache_hash="h", read=True, lock=True)
        await store.release(first)
        second = await gate(store, cache_hash="h", read=True, lock=True)
        assert second.holds_lock
        await store.release(first)  # again, late: the lock is the second's now
        third = await gate(store, cache_hash="h", read=True, lock=True)
        assert third.outcome == "miss" and not third.holds_lock, "one filler at a time"
        await store.release(third)  # a gate that never held the lock releases nothing
        assert not (await gate(store, cache_hash="h", read=True, lock=True)).holds_lock
        await store.fill(second, b"J{}", 60)
        assert (await gate(store, cache_hash="h", read=True)).entry == b"J{}"
    run(scenario)


def test_a_valkey_waiter_polls_the_reader_and_looks_for_the_lock_every_fourth_poll(valkey):
    """Counted in the server's command statistics: a waiter whose holder went without filling stops
    at its fourth poll (one EXISTS, then one last GET from the primary), not at its bound, and a
    waiter whose entry is there reads it at its first poll."""
    async def commands(scenario):
        server = valkey.client()
        server.flushall()
        store = ValkeyStore("127.0.0.1", port=valkey.port, password=valkey.auth, ca_file=str(valkey.ca_file),
                            service=SERVICE, timeout=2.0)
        try:
            holder = await gate(store, cache_hash="h", read=True, lock=True)
            waiter = await gate(store, cache_hash="h", read=True, lock=True)
            await scenario(store, holder)
            server.config_resetstat()
            got = await store.wait(waiter, 30)
            stats = server.info("commandstats")
            return got, {c: stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("get", "exists")}
        finally:
            await store.close()

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(commands(lambda store, holder: store.release(holder))) == (
            None, {"get": 5, "exists": 1})
        assert loop.run_until_complete(commands(lambda store, holder: store.fill(holder, b"J{}", 60))) == (
            b"J{}", {"get": 1, "exists": 0})
    finally:
        loop.close()


def test_a_valkey_waiter_backs_off_from_5_ms_by_half_each_poll_to_100_ms_until_its_bound(valkey):
    """On a fake clock: the pauses between polls while the holder still fills, and the last poll
    is the one that reaches the bound exactly (none after it)."""
    expected = [0.005 * 1.5 ** n for n in range(8)] + [0.1, 0.1]
    bound = 0.0
    for pause in expected:
        bound += pause  # as the clock adds them, so that the last one lands on the bound exactly
    clock, pauses = [0.0], []

    async def sleep(pause):
        pauses.append(pause)
        clock[0] += pause

    async def scenario():
        valkey.client().flushall()
        store = ValkeyStore("127.0.0.1", port=valkey.port, password=valkey.auth, ca_file=str(valkey.ca_file),
                            service=SERVICE, timeout=2.0)
        store.clock, store.sleep = lambda: clock[0], sleep
        try:
            await gate(store, cache_hash="h", read=True, lock=True)  # the holder, filling all along
            waiter = await gate(store, cache_hash="h", read=True, lock=True)
            assert await store.wait(waiter, bound) is None
        finally:
            await store.close()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert pauses == pytest.approx(expected)


def test_invalidating_one_client_leaves_the_others_and_invalidating_all_reaches_everyone(run):
    async def scenario(store):
        for client in ("a", "b"):
            await store.fill(await gate(store, client, cache_hash="h", read=True, lock=True), b"J{}", 60)
        assert [await store.invalidate("a"), await store.invalidate("a")] == [1, 2], "a version, counted up"
        assert (await gate(store, "a", cache_hash="h", read=True)).outcome == "miss"
        assert (await gate(store, "b", cache_hash="h", read=True)).outcome == "hit"
        assert await store.invalidate() == 1
        assert (await gate(store, "b", cache_hash="h", read=True)).outcome == "miss"
        # Each later invalidation too, of an entry filled since the last one:
        for client, again in (("a", lambda: store.invalidate("a")), ("b", store.invalidate)):
            await store.fill(await gate(store, client, cache_hash="h", read=True, lock=True), b"J{}", 60)
            assert (await gate(store, client, cache_hash="h", read=True)).outcome == "hit"
            await again()
            assert (await gate(store, client, cache_hash="h", read=True)).outcome == "miss"
    run(scenario)


def test_each_script_names_its_keys_and_arguments_once():
    from gateway.store import FILL, GATE, RELEASE, SETTLE, Script

    for script in (GATE, FILL, RELEASE, SETTLE):
        assert "ARGV[" not in script.body and "KEYS[" not in script.body  # only the names
        first = script.source.splitlines()
        assert first[0] == f"local {', '.join(script.key_names)} = unpack(KEYS)"
        assert first[1] == f"local {', '.join(script.arg_names)} = unpack(ARGV)"
    demo = Script(("a_key",), ("x", "y"), "return 1")
    assert demo.args(y=2, x=1) == [1, 2] and demo.keys(a_key="k") == ["k"]
    with pytest.raises(TypeError, match=r"expected \['x', 'y'\], got \['x'\]"):
        demo.args(x=1)
    with pytest.raises(TypeError, match=r"got \['x', 'y', 'z'\]"):
        demo.args(x=1, y=2, z=3)


def test_a_failed_call_leaves_the_calls_still_running_on_their_connections(valkey):
    """After a failure the idle connections are dropped, not those in use: closing one under a
    running call failed that call too (in a burst, one call's timeout broke the others')."""
    async def scenario():
        store = ValkeyStore("127.0.0.1", port=valkey.port, password=valkey.auth, ca_file=str(valkey.ca_file),
                            service=SERVICE, timeout=2.0)

        async def fails():
            raise TimeoutError("a call that timed out")
        try:
            blocking = store.primary.execute_command("BLPOP", "nothing:here", 0.5)
            running = asyncio.ensure_future(store._call(blocking))
            await asyncio.sleep(0.2)  # the blocking call is on its connection
            with pytest.raises(StoreUnavailable):
                await store._call(fails())
            assert await running is None, "it ran to its end (a timed-out BLPOP answers nil)"
        finally:
            await store.close()
    asyncio.run(scenario())


# --- marks: what the store may have applied after a call timed out counts once -------------------

MARKED = Limits(requests_per_minute=100, tokens_per_minute=10_000, usd_per_day=1.0, concurrent_requests=5)


def marked(valkey, scenario):
    """scenario(store, counts) on a fresh Valkey store, every gate's token (and mark) "00…0":
    counts() is the client's (rpm, tpm, usd, in flight) as Valkey holds them."""
    async def go():
        valkey.client().flushall()
        store = ValkeyStore("127.0.0.1", port=valkey.port, password=valkey.auth, ca_file=str(valkey.ca_file),
                            service=SERVICE, timeout=2.0)

        def counts():
            c = valkey.client()
            total = {kind: sum(int(c.get(k) or 0) for k in c.scan_iter(match=f"llmgw:{SERVICE}:{kind}:c:*"))
                     for kind in ("rpm", "tpm", "usd")}
            return total["rpm"], total["tpm"], total["usd"], c.zcard(f"llmgw:{SERVICE}:inflight:c")
        try:
            await scenario(store, counts)
        finally:
            await store.close()
    within_one_minute(3)
    asyncio.run(go())


def test_a_settlement_sent_twice_counts_once(valkey, mocker):
    mocker.patch("gateway.store.os.urandom", return_value=bytes(8))

    async def scenario(store, counts):
        g = await gate(store, limits=MARKED, tokens=1000, nano=5000)
        assert g.reservation.mark == "0" * 16 and counts() == (1, 1000, 5000, 1)
        for _ in range(2):  # the first's answer was lost: the gateway sends it again
            await store.settle("c", g.reservation, 1500, 7000)
        assert counts() == (1, 1500, 7000, 0)
    marked(valkey, scenario)


def test_a_void_undoes_a_gate_that_landed_and_lets_its_fill_lock_go(valkey, mocker):
    mocker.patch("gateway.store.os.urandom", side_effect=[b"\x11" * 8, bytes(8)])

    async def scenario(store, counts):
        other = await gate(store, limits=MARKED, tokens=100, nano=100)
        await store.settle("c", other.reservation, 100, 100)  # another request, settled as reserved
        g = await gate(store, limits=MARKED, cache_hash="h", read=True, lock=True, tokens=1000, nano=5000)
        assert g.holds_lock and counts() == (2, 1100, 5100, 1)
        await store.settle("c", g.reservation, 0, 0, -1, void=True)
        assert counts() == (1, 100, 100, 0)
        assert valkey.client().get(g.entry_key + ":lock") is None, "identical requests need not wait for it"
        await store.settle("c", g.reservation, 0, 0, -1, void=True)
        assert counts() == (1, 100, 100, 0), "a void sent twice undoes once"
    marked(valkey, scenario)


def test_a_void_of_a_hit_undoes_its_request_only(valkey, mocker):
    async def scenario(store, counts):
        g = await gate(store, limits=MARKED, cache_hash="h", read=True, lock=True, tokens=1000, nano=5000)
        await store.fill(g, b"answer", 60)
        await store.settle("c", g.reservation, 1000, 5000)
        mocker.patch("gateway.store.os.urandom", return_value=bytes(8))
        hit = await gate(store, limits=MARKED, cache_hash="h", read=True, tokens=1000, nano=5000)
        assert hit.outcome == "hit" and counts() == (2, 1000, 5000, 0)
        minute, day, _, _ = windows()
        await store.settle("c", Reservation(1000, 5000, minute, day, "0" * 16, "0" * 16), 0, 0, -1, void=True)
        assert counts() == (1, 1000, 5000, 0)
    marked(valkey, scenario)


def test_a_gate_that_lands_after_its_void_counts_nothing_and_a_settled_one_is_not_voided(valkey, mocker):
    mocker.patch("gateway.store.os.urandom", return_value=bytes(8))

    async def scenario(store, counts):
        minute, day, _, _ = windows()
        gone = Reservation(1000, 5000, minute, day, "0" * 16, "0" * 16)
        await store.settle("c", gone, 0, 0, -1, void=True)  # the void came first: nothing to undo
        assert counts() == (0, 0, 0, 0)
        late = await gate(store, limits=MARKED, tokens=1000, nano=5000)
        assert (late.outcome, late.admitted, counts()) == ("void", False, (0, 0, 0, 0))
        valkey.client().delete(f"llmgw:{SERVICE}:mark:" + "0" * 16)
        g = await gate(store, limits=MARKED, tokens=1000, nano=5000)
        await store.settle("c", g.reservation, 1200, 6000)
        await store.settle("c", g.reservation, 0, 0, -1, void=True)
        assert counts() == (1, 1200, 6000, 0), "a settled request's void changes nothing"
    marked(valkey, scenario)


def test_closing_a_store_closes_its_connections_to_both_endpoints(valkey):
    """The primary's and the reader's (a task stopping, or cachectl done, leaves no connection open
    on the node: redis-py closes only the pools it made, and these are the store's own)."""
    def ours() -> int:
        return sum(1 for c in valkey.client().client_list() if c.get("cmd") != "client|list")

    async def scenario():
        before = ours()
        store = ValkeyStore("127.0.0.1", reader_host="localhost", port=valkey.port, password=valkey.auth,
                            ca_file=str(valkey.ca_file), service=SERVICE, timeout=2.0)
        assert store.reader is not store.primary
        await store.warm(2)
        assert ours() == before + 4, "two to each endpoint"
        await store.close()
        deadline = time.monotonic() + 5
        while ours() > before and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert ours() == before
    asyncio.run(scenario())
