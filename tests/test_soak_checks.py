"""The soak's checks, each shown a made-up case of the fault it is there to catch (and the case it
must let pass): a check that cannot fail would let `make soak` print 0 over a broken gateway."""

from __future__ import annotations

import json

import pytest

from soak.faults import Fault
from soak.load import Result, stream_verdict
from soak.report import (
    Money,
    alone,
    counters,
    had_it_when_killed,
    in_flight_on_killed,
    limits,
    log_lines,
    per_fault,
    read_logs,
    silent_streams,
    spend,
)

PRICES = {"gpt-4o-mini": {"inputPerMillion": 0.15, "outputPerMillion": 0.6}}
NANO = {(1000, 2000): 1000 * 150 + 2000 * 600}  # the nano-USD of a usage, at PRICES


def chunk(text: str, usage: object = None) -> bytes:
    doc = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}],
           "usage": usage}
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


USAGE = chunk("", {"prompt_tokens": 3, "completion_tokens": 2})
DONE = b"data: [DONE]\n\n"
ERROR = b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
KEEPALIVE = b": keepalive\n\n"


# --- streams: read whole, as the SDKs read them -------------------------------------------------

@pytest.mark.parametrize(("stream", "asked", "verdict"), [
    (chunk("a") + KEEPALIVE + chunk("b") + DONE, False, "done"),
    ((chunk("a") + DONE).replace(b"\n", b"\r\n"), False, "done"),
    (chunk("a") + USAGE + DONE, True, "done"),
    (chunk("a") + ERROR, False, "error"),
    (chunk("a") + chunk("b"), False, "truncated"),
    (chunk("a") + b'data: {"obj', False, "truncated"),
    (chunk("a")[:-2] + b"\n: keepalive\n\n" + DONE, False, "malformed: a keepalive inside an event"),
    (chunk("a") + DONE + chunk("b"), False, "malformed: an event after the [DONE]"),
    (chunk("a") + ERROR + chunk("b"), False, "malformed: an event after the error event"),
    (chunk("a") + DONE + b"data: x", False, "malformed: bytes after [DONE]"),
    (chunk("a") + USAGE + DONE, False, "malformed: a usage chunk not asked for"),
    (chunk("a") + USAGE + ERROR, False, "malformed: a usage chunk not asked for"),
    (chunk("a") + DONE, True, "malformed: 0 usage chunks where one was asked"),
    (chunk("a") + USAGE + USAGE + DONE, True, "malformed: 2 usage chunks where one was asked"),
    (b"data: {not json}\n\n" + DONE, False, "malformed: an event that is not JSON"),
])
def test_a_stream_is_judged_whole(stream, asked, verdict):
    assert stream_verdict(stream, asked) == verdict


def test_a_stream_silent_past_the_keepalive_interval_is_counted():
    quiet = [Result("stream", "web-app", 0, 20, "ok", silence=s) for s in (0.2, 15.0, 16.9, 17.1)]
    assert silent_streams(quiet, keepalive=15) == 1


# --- a kill excuses only what the killed target had ---------------------------------------------

KILL = Fault("sigkill", 3.0, started=3.0, ended=4.5, detail={"slot": "gw2", "killed_at": 3.0})


def result(backend: str = "gw2", started: float = 2.0, ended: float = 3.1, outcome: str = "failed",
           request_id: str = "", client: str = "web-app", kind: str = "chat") -> Result:
    return Result(kind, client, started, ended, outcome, backend=backend, request_id=request_id, size=100)


@pytest.mark.parametrize(("r", "excused"), [
    (result(), True),
    (result(started=3.4, ended=3.45), True),  # sent to it in the moment before it was seen dead
    (result(backend="gw1"), False),
    (result(backend=""), False),  # no target named: no excuse
    (result(ended=2.9), False),  # over before the kill
    (result(started=3.6, ended=3.7), False),  # sent after it was taken out
])
def test_a_failure_is_excused_only_on_the_killed_target_while_it_had_it(r, excused):
    assert in_flight_on_killed(r, [KILL]) is excused


def test_a_stream_left_just_before_the_kill_may_still_have_been_relayed_there():
    assert had_it_when_killed(result(ended=2.5, outcome="abandoned"), [KILL])
    assert not had_it_when_killed(result(ended=1.5, started=1.0, outcome="abandoned"), [KILL])
    assert not had_it_when_killed(result(ended=2.5, outcome="ok"), [KILL])


# --- money: every line against every delivery ---------------------------------------------------

def record(rid: str, usage: tuple[int, int] | None = (1000, 2000), at: float = 2.5) -> dict:
    return {"headers": {"X-Client-Request-Id": rid}, "body": {"model": "gpt-4o-mini"}, "raw": "x" * 200,
            "usage": usage, "at": at}


def line(rid: str, usd: float | None, client: str = "web-app", status: int = 200, **more: object) -> dict:
    return {"request_id": rid, "Client": client, "status": status, "model": "gpt-4o-mini",
            "EstimatedCostUSD": usd, **more}


def charged_wrong(lines: list[dict], records: list[dict], results: list[Result] = (),
                  faults: list[Fault] = ()) -> int:
    out = spend({ln["request_id"]: ln for ln in lines}, Money(records, PRICES), list(results), list(faults), 0.0)
    return out["requests_charged_otherwise_than_delivered"]


FULL = NANO[(1000, 2000)] / 1e9


def test_a_request_is_charged_what_its_upstream_delivered():
    assert charged_wrong([line("a", FULL)], [record("a")]) == 0
    assert charged_wrong([line("a", FULL * 2)], [record("a")]) == 1  # charged twice over
    assert charged_wrong([line("a", None)], [record("a")]) == 1  # delivered, free


def test_a_request_nothing_was_delivered_for_is_charged_nothing():
    """A cache hit, a coalesced request, a refusal: no upstream record with usage."""
    assert charged_wrong([line("hit", None, cache="HIT")], []) == 0
    assert charged_wrong([line("hit", 0.001, cache="HIT")], []) == 1
    assert charged_wrong([line("refused", 0.001, status=429)], [record("refused", usage=None)]) == 1


def test_a_stream_left_or_cut_is_charged_something_and_never_more_than_it_could_cost():
    left = {"status": 499}
    assert charged_wrong([line("a", 0.0001, **left)], [record("a")]) == 0
    assert charged_wrong([line("a", None, **left)], [record("a")]) == 1  # the upstream had it: not free
    assert charged_wrong([line("a", FULL * 3, **left)], [record("a")]) == 1  # more than it could cost
    assert charged_wrong([line("a", None, **left)], []) == 0  # left before the upstream had it
    assert charged_wrong([line("a", 0.0001, **left)], []) == 1
    cut = {"error": "upstream_stream_interrupted"}
    # Nothing delivered by the upstream's word: at most its input at a token a byte (200 here) and
    # 100 output tokens, 90,000 nano-USD.
    assert charged_wrong([line("b", 0.00009, **cut)], [record("b", usage=None)]) == 0
    assert charged_wrong([line("b", 0.000091, **cut)], [record("b", usage=None)]) == 1
    assert charged_wrong([line("b", None, **cut)], [record("b", usage=None)]) == 1


def test_a_delivery_without_a_line_must_be_a_request_the_killed_process_had():
    named = result(request_id="a")
    assert charged_wrong([], [record("a")], [named], [KILL]) == 0
    assert charged_wrong([], [record("a")], [result(backend="gw1", request_id="a")], [KILL]) == 1
    # Without an id (its client got only the load balancer's 502), one per such request, and only
    # for a delivery that came before the kill.
    assert charged_wrong([], [record("a")], [result()], [KILL]) == 0
    assert charged_wrong([], [record("a"), record("b")], [result()], [KILL]) == 1
    assert charged_wrong([], [record("a", at=3.8)], [result()], [KILL]) == 1
    assert charged_wrong([], [record("a")], [], []) == 1


def test_a_request_logged_twice_is_counted(tmp_path):
    one, two = tmp_path / "gw1.log", tmp_path / "gw2.log"
    one.write_text(json.dumps(line("a", FULL)) + "\nnot a line\n" + json.dumps(line("b", FULL)) + "\n")
    two.write_text(json.dumps(line("a", FULL)) + "\n")
    lines, twice = log_lines(read_logs([one, two]))
    assert (sorted(lines), twice) == (["a", "b"], 1)


# --- Valkey's counters against the lines ---------------------------------------------------------

def off(stored: int, lines: list[dict], results: list[Result] = (), faults: list[Fault] = ()) -> bool:
    kept = counters({"batch": stored}, {ln["request_id"]: ln for ln in lines}, Money([], PRICES), list(results),
                    list(faults), lambda r: 5_000)
    return kept["batch"]["off"]


def test_the_stored_spend_is_what_was_logged_but_for_what_the_faults_allow():
    logged = [line("a", 0.00001, client="batch"), line("b", 0.00002, client="batch"), line("c", 1.0)]
    assert not off(30_000, logged)
    assert off(30_001, logged) and off(29_999, logged)  # settled twice, or never
    # A request the killed process had keeps its reservation (5,000 here): that much more is allowed.
    mine = result(client="batch", request_id="z")
    assert not off(35_000, logged, [mine], [KILL]) and off(35_001, logged, [mine], [KILL])
    # A failover loses what was written in the second before it: that much less is allowed.
    failover = Fault("valkey failover", 3.0, started=3.0, ended=3.0)
    assert not off(25_000, logged, [mine], [failover]) and off(24_999, logged, [mine], [failover])


# --- limits ---------------------------------------------------------------------------------------

def test_a_race_that_admits_more_than_fits_is_counted_over_the_limit():
    race = Fault("spend race", 1.0, started=1.0, ended=2.0,
                 detail={"client": "spender", "sent": 16, "admitted": 5, "fits": 4, "admitted_ids": list("abcde")})
    assert limits([], 60, 0.0, [race])["admitted_over_the_limit"] == 1
    # One admitted by its process alone (the store did not answer it in time): not the store's.
    assert limits([], 60, 0.0, [race], {"e": {"CacheErrors": 1}})["admitted_over_the_limit"] == 0
    race.detail.update(admitted=4, admitted_ids=list("abcd"))
    assert limits([], 60, 0.0, [race])["admitted_over_the_limit"] == 0


def test_requests_admitted_by_the_store_above_the_limit_in_a_minute_are_counted():
    admitted = [Result("chat", "limited", 1.0 + i / 100, 1.1 + i / 100, "ok", status=200, request_id=f"r{i}")
                for i in range(5)]
    assert limits(admitted, 4, 0.0, [])["admitted_over_the_limit"] == 1
    assert limits(admitted, 5, 0.0, [])["admitted_over_the_limit"] == 0
    # Admitted alone (checked apart, by `alone`): in an outage, or the store did not answer in time.
    outage = Fault("valkey down", 0.5, 2.0, started=0.5, ended=2.5)
    assert limits(admitted, 4, 0.0, [outage])["admitted_over_the_limit"] == 0
    assert limits(admitted, 4, 0.0, [], {"r4": {"CacheErrors": 1}})["admitted_over_the_limit"] == 0
    assert limits(admitted, 4, 0.0, [], {"r4": {"CacheErrors": 0}})["admitted_over_the_limit"] == 1
    # Counted in the minute the gateway's line says it began (a burst across a minute's end).
    next_minute = {"_aws": {"Timestamp": 60_500}, "Latency": 100.0}
    assert limits(admitted, 4, 0.0, [], {"r4": next_minute})["admitted_over_the_limit"] == 0
    # The load balancer's 502 for a request its killed target had: not known to have been counted.
    died = Result("chat", "limited", 2.9, 3.1, "failed", status=502, backend="gw2")
    assert limits([*admitted[:4], died], 4, 0.0, [KILL])["admitted_over_the_limit"] == 0
    assert limits([*admitted[:4], died], 4, 0.0, [])["admitted_over_the_limit"] == 1


def test_a_process_that_admits_more_than_the_limit_alone_is_counted():
    def lines(n: int, minute: int = 0) -> list[dict]:
        at = minute * 60_000 + 1_000
        return [{"Client": "limited", "CacheErrors": 1, "status": 200, "Latency": 2.0, "_aws": {"Timestamp": at}}
                for _ in range(n)]
    assert alone([lines(60), lines(60)], "limited", 60)["admitted_over_the_limit"] == 0
    assert alone([lines(61)], "limited", 60)["admitted_over_the_limit"] == 1
    assert alone([lines(40) + lines(40, minute=1)], "limited", 60)["admitted_over_the_limit"] == 0


def test_a_store_fault_is_over_when_its_last_request_served_without_the_store_is():
    down = Fault("valkey down", 10.0, 1.0, started=10.0, ended=11.0)
    storm = Fault("upstream 429 storm", 10.5, 1.0, started=10.5, ended=11.5)
    alone_ = [Result("chat", "web-app", 10.2, 10.3, "ok"), Result("chat", "web-app", 12.1, 12.4, "ok")]
    failed = [Result("chat", "web-app", 10.6, 10.9, "failed", cause="status 502")]
    report = {f["fault"]: f for f in per_fault([*alone_, *failed], [down, storm], alone_)}
    assert report["valkey down"]["whole_again_after_s"] == 2.4  # 12.4 - 10.0: served alone until then
    # Begun before a store fault, settled in it: the fault's (not the one before it).
    failover = Fault("valkey failover", 1.0, started=1.0, ended=1.0)
    settled_in = [Result("chat", "web-app", 9.4, 10.6, "ok")]
    later = {f["fault"]: f for f in per_fault(settled_in, [failover, down], settled_in)}
    assert (later["valkey failover"]["whole_again_after_s"], later["valkey down"]["whole_again_after_s"]) \
        == (0.0, 0.6)
    assert (report["upstream 429 storm"]["whole_again_after_s"], report["upstream 429 storm"]["failed_requests"]) \
        == (0.4, 1)
