"""What the soak counts, from what the clients saw, the gateways' log lines and the fake upstreams'
records, and the invariants it holds the service to (each must be 0)."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from gateway.limits import Price
from soak.faults import Fault
from soak.load import Result

GRACE = 0.5  # seconds around a kill within which a request counts as in flight on it


def in_flight_on_killed(r: Result, faults: list[Fault]) -> bool:
    for f in faults:
        at = f.detail.get("killed_at")
        if at is not None and r.backend in (f.detail["slot"], "") and r.started <= at + GRACE and r.ended >= at:
            return True
    return False


def store_outages(faults: list[Fault]) -> list[tuple[float, float]]:
    return [(f.started or f.at, (f.ended or f.at) + 2) for f in faults if f.name.startswith("valkey")]


def log_lines(logs: list[Path]) -> dict[str, dict[str, Any]]:
    lines = {}
    for path in logs:
        for text in path.read_text().splitlines():
            if text.startswith("{") and '"request_id"' in text:
                doc = json.loads(text)
                lines[doc["request_id"]] = doc
    return lines


def spend(lines: dict[str, dict[str, Any]], records: list[dict[str, Any]],
          prices: dict[str, Any]) -> dict[str, Any]:
    """Recorded (the gateway's log lines) against delivered (the usage the fake upstreams reported),
    request by request; a request answered whose gateway died before its line was written is
    counted apart, and so is a stream its client left (charged its input and what was relayed)."""
    recorded, delivered, mismatched, lost, left, twice = Counter(), Counter(), 0, 0, 0, 0
    answered: Counter[str] = Counter()
    for rec in records:
        if rec.get("usage") is None:
            continue
        rid = rec["headers"].get("X-Client-Request-Id", "")
        answered[rid] += 1
        p = prices.get(rec["body"]["model"], {"inputPerMillion": 0, "outputPerMillion": 0})
        nano = Price(p["inputPerMillion"], p["outputPerMillion"]).nano(*rec["usage"])
        line = lines.get(rid)
        if line is None:
            lost += 1
            continue
        if line.get("status") == 499:
            left += 1
            continue
        client = line["Client"]
        delivered[client] += nano
        charged = round((line.get("EstimatedCostUSD") or 0) * 1e9)
        recorded[client] += charged
        mismatched += charged != nano
    twice = sum(1 for n in answered.values() if n > 1)
    return {"recorded_usd": {c: v / 1e9 for c, v in sorted(recorded.items())},
            "delivered_usd": {c: v / 1e9 for c, v in sorted(delivered.items())},
            "requests_charged_otherwise_than_delivered": mismatched, "answered_twice": twice,
            "answered_but_lost_with_a_killed_process": lost, "streams_left_by_their_client": left}


def limits(results: list[Result], limit: int, wall_zero: float, faults: list[Fault]) -> dict:
    """Requests of the limited client the gateway admitted per UTC minute, against its limit. What
    the store admitted must fit; set apart: what a process admitted alone while the store was out,
    and what came after a failover in its minute (the promoted replica may lack the last counts:
    replication is asynchronous)."""
    outages = store_outages(faults)
    failovers = [f.started or f.at for f in faults if f.name == "valkey failover"]

    def minute(t: float) -> int:
        return int((wall_zero + t) // 60)
    per_minute: dict[int, int] = defaultdict(int)
    checked: dict[int, int] = defaultdict(int)
    for r in results:
        if r.client != "limited" or r.status == 0 or r.outcome == "limited":
            continue
        m = minute(r.started)
        per_minute[m] += 1
        alone = any(a <= r.started <= b for a, b in outages)
        after_failover = any(minute(t) == m and t <= r.started for t in failovers)
        if not (alone or after_failover):
            checked[m] += 1
    over = sum(n - limit for n in checked.values() if n > limit)
    return {"limit_per_minute": limit, "admitted_per_minute": dict(sorted(per_minute.items())),
            "admitted_by_the_store_per_minute": dict(sorted(checked.items())), "admitted_over_the_limit": over}


def coalescing(results: list[Result], records: list[dict[str, Any]]) -> dict[str, int]:
    repeated = [rec for rec in records if rec["body"] and rec["body"].get("temperature") == 0]
    return {"repeated_prompt_requests": sum(1 for r in results if r.kind == "cached"),
            "distinct_repeated_prompts": len({json.dumps(rec["body"]["messages"]) for rec in repeated}),
            "upstream_calls_for_them": len(repeated)}


def _stats(rs: list[Result]) -> dict[str, Any]:
    lat = sorted(r.latency * 1000 for r in rs if r.outcome == "ok" and r.kind in ("chat", "embed", "cached"))
    ttft = sorted(r.ttft * 1000 for r in rs if r.ttft is not None and r.kind == "stream")

    def pct(xs: list[float], q: float) -> float | None:
        return round(xs[min(len(xs) - 1, int(len(xs) * q))], 1) if xs else None
    return {"requests": len(rs), "latency_p50_ms": pct(lat, 0.5), "latency_p99_ms": pct(lat, 0.99),
            "ttft_p50_ms": pct(ttft, 0.5), "ttft_p99_ms": pct(ttft, 0.99)}


def cause_of(r: Result, faults: list[Fault]) -> Fault | None:
    """The fault a failed request is put down to: the kill it was in flight on, else the last one
    begun before it (within 30 s of its end)."""
    for f in faults:
        if f.detail.get("killed_at") is not None and in_flight_on_killed(r, [f]):
            return f
    begun = [f for f in faults if (f.started or f.at) - GRACE <= r.started <= (f.ended or f.at) + 30]
    return max(begun, key=lambda f: f.started or f.at, default=None)


def per_fault(results: list[Result], faults: list[Fault]) -> list[dict[str, Any]]:
    failed = [r for r in results if r.outcome == "failed"]
    out = []
    for f in faults:
        start, end = f.started or f.at, f.ended or f.at
        broken = [r for r in failed if cause_of(r, faults) is f]
        whole = round(max(r.ended for r in broken) - start, 1) if broken else 0.0
        out.append({"fault": f.name, "at": round(start, 1), "lasted": round(end - start, 1),
                    "before": _stats([r for r in results if start - 10 <= r.started < start]),
                    "during": _stats([r for r in results if start <= r.started <= max(end, start + 1)]),
                    "after": _stats([r for r in results if end < r.started <= end + 10]),
                    "failed_requests": len(broken), "whole_again_after_s": whole, **f.detail})
    return out


def analyse(results: list[Result], faults: list[Fault], logs: list[Path], records: list[dict[str, Any]],
            prices: dict[str, Any], limit: int, wall_zero: float) -> dict[str, Any]:
    failed = [r for r in results if r.outcome == "failed"]
    excused = [r for r in failed if in_flight_on_killed(r, faults)]
    lost = [r for r in failed if r not in excused]
    money = spend(log_lines(logs), records, prices)
    held = limits(results, limit, wall_zero, faults)
    invariants = {
        "streams ended without [DONE] or an error event": sum(1 for r in lost if r.cause == "truncated"),
        "requests failed, not in flight on a killed process nor refused by a limit": len(lost),
        "requests admitted above a client's limit (store up)": held["admitted_over_the_limit"],
        "requests charged other than the upstream delivered": money["requests_charged_otherwise_than_delivered"],
        "requests answered twice upstream": money["answered_twice"],
    }
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(wall_zero)),
        "requests": len(results),
        "outcomes": {f"{o}{' (' + c + ')' if c else ''}": n
                     for (o, c), n in sorted(Counter((r.outcome, r.cause) for r in results).items())},
        "failed_in_flight_on_a_killed_process": len(excused),
        "lost": [{"kind": r.kind, "cause": r.cause, "backend": r.backend, "at": round(r.started, 2)}
                 for r in lost],
        "invariants": invariants, "spend": money, "limits": held, "coalescing": coalescing(results, records),
        "overall": _stats(results), "faults": per_fault(results, faults),
    }


def text(report: dict[str, Any]) -> str:
    out = [f"soak {report['when']}: {report['requests']} requests"]
    out += [f"  {name:58} {n}" for name, n in report["outcomes"].items()]
    out.append(f"  failed while in flight on a killed process: {report['failed_in_flight_on_a_killed_process']}")
    out.append("invariants (each must be 0):")
    out += [f"  {'OK  ' if n == 0 else 'FAIL'} {name}: {n}" for name, n in report["invariants"].items()]
    s, c = report["spend"], report["coalescing"]
    out.append(f"spend recorded {json.dumps(s['recorded_usd'])}, delivered {json.dumps(s['delivered_usd'])}; "
               f"answered but lost with a killed process: {s['answered_but_lost_with_a_killed_process']}; "
               f"streams left by their client: {s['streams_left_by_their_client']}")
    out.append(f"repeated prompts: {c['repeated_prompt_requests']} requests, {c['distinct_repeated_prompts']} "
               f"distinct, {c['upstream_calls_for_them']} upstream calls")
    out.append(f"{'fault':18}{'at':>6}{'failed':>8}{'whole after':>13}   p50 / p99 ms before, during, after;"
               " ttft p50 / p99")
    for f in report["faults"]:
        windows = ("before", "during", "after")
        cols = "  ".join(f"{f[w]['latency_p50_ms']}/{f[w]['latency_p99_ms']}" for w in windows)
        ttft = "  ".join(f"{f[w]['ttft_p50_ms']}/{f[w]['ttft_p99_ms']}" for w in windows)
        out.append(f"{f['fault']:18}{f['at']:>6}{f['failed_requests']:>8}{f['whole_again_after_s']:>11} s   "
                   f"{cols};  {ttft}")
    return "\n".join(out)


