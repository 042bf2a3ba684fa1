"""`make soak`'s short version: the service as production runs it (HAProxy as the ALB, three gateway
processes with the task's environment, Valkey primary and replica behind a proxy as the primary
endpoint, two fake upstreams), broken while it serves (a rolling deploy, a SIGKILL mid-stream, a 429
storm, a Valkey failover, a burst past a client's limit), and nothing lost that the guarantees say
cannot be."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from soak.__main__ import LIMIT, SHORT, soak, task_environment


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="make soak needs haproxy (.ci/system-packages)")
def test_a_short_soak_loses_nothing_and_holds_every_limit(staging, tmp_path):
    report = asyncio.run(soak(SHORT, task_environment(staging), tmp_path))
    assert report["invariants"] == dict.fromkeys(report["invariants"], 0), report["lost"]
    assert len(report["invariants"]) == 5
    # It measured what it says: every fault happened under load, every kind of request was served.
    assert [f["fault"] for f in report["faults"]] == [name for name, _, _ in SHORT.faults]
    kill = next(f for f in report["faults"] if f["fault"] == "sigkill")
    assert kill["slot"].startswith("gw") and kill["killed_at"] > 0
    outcomes = report["outcomes"]
    assert outcomes["ok"] > 200 and outcomes["abandoned"] > 0 and outcomes["limited"] > 0 and outcomes["told"] > 0
    money = report["spend"]
    assert money["recorded_usd"] == money["delivered_usd"] and set(money["recorded_usd"]) == \
        {"web-app", "batch", "limited"}
    # The limit was put to the test: the burst came while the store was up, and filled the limit.
    assert sum(report["limits"]["admitted_by_the_store_per_minute"].values()) >= LIMIT // 2
    c = report["coalescing"]
    assert c["upstream_calls_for_them"] < c["repeated_prompt_requests"]
