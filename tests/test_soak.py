"""`make soak`'s short version: the service as production runs it (HAProxy as the ALB, three gateway
processes with the task's environment, Valkey primary and replica behind a proxy as the primary
endpoint, two fake upstreams), broken while it serves (a rolling deploy, a burst and two races for
client limits, a 429 storm, a SIGKILL mid-stream, a Valkey failover, a Valkey partition with a
burst in it), and nothing lost that the guarantees say cannot be. The checks themselves are tested
on made-up evidence in tests/test_soak_checks.py."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from soak.__main__ import CAP, FITS, LIMIT, SHORT, soak, task_environment


@pytest.mark.first  # the suite's longest test: started last, it would end the run alone
@pytest.mark.skipif(shutil.which("haproxy") is None, reason="make soak needs haproxy (.ci/system-packages)")
def test_a_short_soak_loses_nothing_and_holds_every_limit(staging, tmp_path):
    report = asyncio.run(soak(SHORT, task_environment(staging), tmp_path))
    assert report["invariants"] == dict.fromkeys(report["invariants"], 0), (report["lost"], report["stored_spend"])
    assert len(report["invariants"]) == 9
    # It measured what it says: every fault happened under load, every kind of request was served.
    assert [f["fault"] for f in report["faults"]] == [name for name, _, _ in SHORT.faults]
    deploy = next(f for f in report["faults"] if f["fault"] == "rolling deploy")
    assert deploy["in_flight_at_sigterm"] > 0, "the old task had streams to finish as it drained"
    kill = next(f for f in report["faults"] if f["fault"] == "sigkill")
    assert kill["slot"].startswith("gw") and kill["killed_at"] > 0
    assert report["in_flight_at_each_kill"][0] > 0, "the kill found requests in flight"
    outcomes = report["outcomes"]
    assert outcomes["ok"] > 200 and outcomes["abandoned"] > 0 and outcomes["limited"] > 0 and outcomes["told"] > 0
    money = report["spend"]
    assert money["recorded_usd"] == money["delivered_usd"] and set(money["recorded_usd"]) == \
        {"web-app", "batch", "limited", "capped", "spender"}
    # Valkey's day spend was compared for both clients with a budget, and it was not empty.
    assert set(report["stored_spend"]) == {"batch", "spender"}
    assert all(c["stored_usd"] > 0 for c in report["stored_spend"].values())
    # Each limit was put to the test: the burst came while the store was up, and filled the limit;
    # each race was refused past its limit; the burst in the outage made a process refuse alone.
    assert sum(report["limits"]["admitted_by_the_store_per_minute"].values()) >= LIMIT // 2
    races = report["limits"]["races"]
    assert {name: r["fits"] for name, r in races.items()} == {"spend race": FITS, "concurrency race": CAP}
    assert all(0 < r["admitted"] < r["sent"] for r in races.values()), races
    assert report["alone"]["most_in_a_process_minute"] >= LIMIT // 2
    c = report["coalescing"]
    assert c["upstream_calls_for_them"] < c["repeated_prompt_requests"]
