"""What the soak counts, from what the clients saw, the gateways' log lines and the fake upstreams'
records, and the invariants it holds the service to (each must be 0)."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from gateway.limits import Price
from soak.faults import Fault
from soak.load import Result

GRACE = 0.5  # seconds around a kill within which a request counts as in flight on it
NOTICED = 1.0  # seconds a gateway may go on relaying a stream its client left (two events: 0.4 s)


def in_flight_on_killed(r: Result, faults: list[Fault]) -> bool:
    """Taken by the killed target (by the load balancer's word: X-Backend, on its own 502s too) and
    not over when it died."""
    for f in faults:
        at = f.detail.get("killed_at")
        if at is not None and r.backend == f.detail["slot"] and r.started <= at + GRACE and r.ended >= at:
            return True
    return False


def had_it_when_killed(r: Result, faults: list[Fault]) -> bool:
    """In flight on the killed target, or a stream its client had left there a moment before: the
    gateway relays a left stream until it notices (its next writes fail), and writes its line then."""
    if in_flight_on_killed(r, faults):
        return True
    for f in faults:
        at = f.detail.get("killed_at")
        if at is not None and r.outcome == "abandoned" and r.backend == f.detail["slot"] \
                and r.started <= at <= r.ended + NOTICED:
            return True
    return False


def store_outages(faults: list[Fault]) -> list[tuple[float, float]]:
    """When the store was out (a failover's moment too), and two seconds after."""
    return [(f.started or f.at, (f.ended or f.at) + 2) for f in faults if f.name.startswith("valkey")]


def read_logs(logs: list[Path]) -> list[list[dict[str, Any]]]:
    """Each gateway process's request lines (not its per-upstream metric lines)."""
    return [[json.loads(text) for text in path.read_text().splitlines()
             if text.startswith("{") and '"request_id"' in text] for path in logs]


def log_lines(by_log: list[list[dict[str, Any]]]) -> tuple[dict[str, dict[str, Any]], int]:
    """Each request's log line by its id, and how many ids had more than one line."""
    lines: dict[str, dict[str, Any]] = {}
    twice = 0
    for doc in (doc for docs in by_log for doc in docs):
        twice += doc["request_id"] in lines
        lines.setdefault(doc["request_id"], doc)
    return lines, twice


def nano_of(line: dict[str, Any]) -> int:
    return round((line.get("EstimatedCostUSD") or 0) * 1e9)


class Money:
    """What the fake upstreams delivered, request by request (by the id the gateway sends them,
    X-Client-Request-Id), priced as the gateway prices it."""

    def __init__(self, records: list[dict[str, Any]], prices: dict[str, Any]):
        self.prices = prices
        self.delivered: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.arrived: dict[str, float] = {}  # when the upstream had it (time.monotonic())
        self.size: dict[str, int] = {}  # its body's bytes
        for rec in records:
            rid = rec["headers"].get("X-Client-Request-Id", "")
            self.arrived.setdefault(rid, rec["at"])
            self.size[rid] = max(self.size.get(rid, 0), len(rec["raw"]))
            if rec.get("usage") is not None:
                self.answered[rid] += 1
                self.delivered[rid] += self.price(rec["body"]["model"]).nano(*rec["usage"])

    def price(self, model: str) -> Price:
        p = self.prices.get(model, {"inputPerMillion": 0, "outputPerMillion": 0})
        return Price(p["inputPerMillion"], p["outputPerMillion"])

    def most_for_a_cut(self, rid: str, model: str) -> int:
        """The most a stream cut short can be charged: its input at a token a byte (the gateway
        estimates one per four) and 100 output tokens (it charges one per event relayed)."""
        return self.price(model).nano(self.size.get(rid, 0), 100)


def spend(lines: dict[str, dict[str, Any]], money: Money, results: list[Result], faults: list[Fault],
          zero: float) -> dict[str, Any]:
    """Every log line's charge against what the upstream delivered for that request (cache hits,
    coalesced requests and refusals too: nothing delivered, nothing charged), and every delivery
    against a log line. A stream its client left or its upstream broke is charged something and
    never more than it could have cost. A delivery with no line must be a request in flight on a
    killed process."""
    recorded, delivered = Counter(), Counter()
    mismatched, left = 0, 0
    for rid, line in lines.items():
        charged, got = nano_of(line), money.delivered.get(rid, 0)
        if line.get("status") == 499 or line.get("error") == "upstream_stream_interrupted":
            left += 1
            most = max(got, money.most_for_a_cut(rid, line.get("model") or ""))
            mismatched += not (0 < charged <= most) if rid in money.arrived else charged != 0
            continue
        recorded[line["Client"]] += charged
        delivered[line["Client"]] += got
        mismatched += charged != got
    by_id = {r.request_id: r for r in results if r.request_id}
    # A request whose process died before its headers went out is known to its client by the
    # load balancer's 502 alone, without an id: as many deliveries may go unnamed.
    unnamed = sum(1 for r in results if not r.request_id and in_flight_on_killed(r, faults))
    kills = [f.detail["killed_at"] for f in faults if "killed_at" in f.detail]
    lost, untied = 0, 0
    for rid in money.delivered:
        if rid in lines:
            continue
        lost += 1
        r = by_id.get(rid)
        if r is not None:
            untied += not had_it_when_killed(r, faults)
        elif unnamed and any(money.arrived[rid] - zero <= at + GRACE for at in kills):
            unnamed -= 1
        else:
            untied += 1
    return {"recorded_usd": {c: v / 1e9 for c, v in sorted(recorded.items())},
            "delivered_usd": {c: v / 1e9 for c, v in sorted(delivered.items())},
            "requests_charged_otherwise_than_delivered": mismatched + untied,
            "answered_twice": sum(1 for n in money.answered.values() if n > 1),
            "answered_but_lost_with_a_killed_process": lost - untied, "answered_never_logged_otherwise": untied,
            "streams_left_or_cut": left}


def counters(stored: dict[str, int], lines: dict[str, dict[str, Any]], money: Money, results: list[Result],
             faults: list[Fault], reserve: Callable[[Result], int]) -> dict[str, Any]:
    """Each client's day spend as Valkey holds it (what its limit is checked against) against the
    sum of its log lines: equal, but for what the faults allow and no more. A request in flight on
    a killed process keeps its reservation (or its charge, settled before its line); a failover
    loses the writes the replica had not yet had (asynchronous replication): of the requests
    in flight in the second before it."""
    kills = [f for f in faults if "killed_at" in f.detail]
    failovers = [f.started or f.at for f in faults if f.name == "valkey failover"]
    out: dict[str, Any] = {}
    for client, nano in sorted(stored.items()):
        logged = sum(nano_of(line) for line in lines.values() if line["Client"] == client)
        mine = [r for r in results if r.client == client]
        above = sum(max(reserve(r), money.delivered.get(r.request_id, 0)) for r in mine
                    if had_it_when_killed(r, kills) or any(  # or answered, its line not yet written
                        r.backend == f.detail["slot"] and r.ended <= f.detail["killed_at"] <= r.ended + GRACE  # type: ignore[operator]
                        for f in kills))
        below = sum(max(reserve(r), nano_of(lines.get(r.request_id, {}))) for r in mine
                    if any(r.started <= t and r.ended >= t - 1 for t in failovers))
        # What the killed process owed (requests it served without the store in the seconds
        # before) died with it.
        below += sum(nano_of(lines.get(r.request_id, {})) for r in mine
                     if lines.get(r.request_id, {}).get("CacheErrors") and any(
                         r.backend == f.detail["slot"] and f.detail["killed_at"] - 3 <= r.ended  # type: ignore[operator]
                         <= f.detail["killed_at"] for f in kills))
        out[client] = {"stored_usd": nano / 1e9, "logged_usd": logged / 1e9, "allowed_above_usd": above / 1e9,
                       "allowed_below_usd": below / 1e9, "off": not logged - below <= nano <= logged + above}
    return out


def limits(results: list[Result], limit: int, wall_zero: float, faults: list[Fault],
           lines: Optional[dict[str, dict[str, Any]]] = None) -> dict:
    """Requests of the limited client the gateway admitted per UTC minute, against its limit. What
    the store admitted must fit; set apart: what a process admitted alone while the store was out
    (or, by its log line, did not answer it in time: `alone` checks those), and what came after a
    failover in its minute (the promoted replica may lack the last counts: replication is
    asynchronous). A race (a burst at once) must admit no more than fit."""
    lines = lines or {}
    outages = store_outages(faults)
    failovers = [f.started or f.at for f in faults if f.name == "valkey failover"]

    def minute(t: float) -> int:
        return int((wall_zero + t) // 60)
    def counted_in(r: Result) -> int:
        """The UTC minute the gateway counted it in: when its line says it began, else when sent."""
        line = lines.get(r.request_id) if lines else None
        if line and "_aws" in line:
            return int((line["_aws"]["Timestamp"] - line["Latency"]) // 60_000)
        return minute(r.started)
    per_minute: dict[int, int] = defaultdict(int)
    checked: dict[int, int] = defaultdict(int)
    for r in results:
        if r.client != "limited" or r.status == 0 or r.outcome == "limited":
            continue
        if r.outcome == "failed" and in_flight_on_killed(r, faults):
            continue  # the load balancer's 502: whether the gateway had counted it died with it
        m = counted_in(r)
        per_minute[m] += 1
        out = any(a <= r.started <= b for a, b in outages)
        unanswered = bool(lines.get(r.request_id, {}).get("CacheErrors"))
        after_failover = any(minute(t) == m and t <= r.started for t in failovers)
        if not (out or unanswered or after_failover):
            checked[m] += 1
    over = sum(n - limit for n in checked.values() if n > limit)
    races: dict[str, dict[str, Any]] = {}
    for f in faults:
        if "fits" in f.detail:
            # What the store admitted must fit; a request whose gateway did not hear from the store in
            # time was admitted by that process alone (the limit per process: fail open).
            ids: list[str] = f.detail["admitted_ids"]  # type: ignore[assignment]
            by_store = sum(1 for rid in ids if not lines.get(rid, {}).get("CacheErrors"))
            races[f.name] = {**{k: f.detail[k] for k in ("client", "sent", "admitted", "fits")},
                             "admitted_by_the_store": by_store}
            over += max(0, by_store - int(f.detail["fits"]))  # type: ignore[call-overload]
    return {"limit_per_minute": limit, "admitted_per_minute": dict(sorted(per_minute.items())),
            "admitted_by_the_store_per_minute": dict(sorted(checked.items())), "races": races,
            "admitted_over_the_limit": over}


def alone(lines_by_log: list[list[dict[str, Any]]], client: str, limit: int) -> dict[str, Any]:
    """What each process admitted of a client by its own count, while the store did not answer
    (its log lines with a cache error), per minute: each process holds the limit alone."""
    per: dict[tuple[int, int], int] = defaultdict(int)
    for i, lines in enumerate(lines_by_log):
        for line in lines:
            if line["Client"] == client and line.get("CacheErrors") and line.get("status") != 429:
                per[(i, int((line["_aws"]["Timestamp"] - line["Latency"]) // 60_000))] += 1
    return {"most_in_a_process_minute": max(per.values(), default=0),
            "admitted_over_the_limit": sum(n - limit for n in per.values() if n > limit)}


def silent_streams(results: list[Result], keepalive: float, slack: float = 2.0) -> int:
    """Streams that went without a byte for longer than the keepalive interval (and a slack for a
    loaded machine): a client or proxy with a shorter idle timeout would have cut them."""
    return sum(1 for r in results if r.silence > keepalive + slack)


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


def store_fault_of(r: Result, faults: list[Fault]) -> Fault | None:
    """The store fault a request served without the store is put down to: the last one begun
    before it ended (within 30 s of the fault's end). By its end: a request begun before a fault
    meets it when it settles."""
    begun = [f for f in faults if f.name.startswith("valkey")
             and (f.started or f.at) - GRACE <= r.ended <= (f.ended or f.at) + 30]
    return max(begun, key=lambda f: f.started or f.at, default=None)


def per_fault(results: list[Result], faults: list[Fault], without_store: list[Result]) -> list[dict[str, Any]]:
    """Latency before, during and after each fault; the requests it failed; and how long after it
    began the service was whole again: its last request failed or, for a store fault, served
    without the store (no cache, limits per process)."""
    failed = [r for r in results if r.outcome == "failed"]
    out = []
    for f in faults:
        start, end = f.started or f.at, f.ended or f.at
        broken = [r for r in failed if cause_of(r, faults) is f]
        degraded = broken + [r for r in without_store if store_fault_of(r, faults) is f]
        whole = max(0.0, round(max(r.ended for r in degraded) - start, 1)) if degraded else 0.0
        out.append({"fault": f.name, "at": round(start, 1), "lasted": round(end - start, 1),
                    "before": _stats([r for r in results if start - 10 <= r.started < start]),
                    "during": _stats([r for r in results if start <= r.started <= max(end, start + 1)]),
                    "after": _stats([r for r in results if end < r.started <= end + 10]),
                    "failed_requests": len(broken), "whole_again_after_s": whole, **f.detail})
    return out


def analyse(results: list[Result], faults: list[Fault], logs: list[Path], records: list[dict[str, Any]],
            prices: dict[str, Any], limit: int, wall_zero: float, zero: float, stored: dict[str, int],
            reserve: Callable[[Result], int], keepalive: float) -> dict[str, Any]:
    failed = [r for r in results if r.outcome == "failed"]
    excused = [r for r in failed if in_flight_on_killed(r, faults)]
    lost = [r for r in failed if r not in excused]
    by_log = read_logs(logs)
    lines, logged_twice = log_lines(by_log)
    money = Money(records, prices)
    charges = spend(lines, money, results, faults, zero)
    kept = counters(stored, lines, money, results, faults, reserve)
    held = limits(results, limit, wall_zero, faults, lines)
    without_store = [r for r in results if lines.get(r.request_id, {}).get("CacheErrors")]
    # Served without the store and not put down to a store fault: its calls timed out (a burst
    # on a loaded machine), by the second they came in.
    unanswered = Counter(int(r.started) for r in without_store if store_fault_of(r, faults) is None)
    solo = alone(by_log, "limited", limit)
    invariants = {
        "streams malformed, or ended without [DONE] or an error event":
            sum(1 for r in lost if r.cause == "truncated")
            + sum(1 for r in failed if r.cause.startswith("malformed")),
        "requests failed, not in flight on a killed process nor refused by a limit": len(lost),
        "requests admitted above a client's limit (store up)": held["admitted_over_the_limit"],
        "requests a process admitted above the limit alone (store out)": solo["admitted_over_the_limit"],
        "requests charged other than the upstream delivered": charges["requests_charged_otherwise_than_delivered"],
        "requests logged more than once": logged_twice,
        "clients whose spend in Valkey is not what was logged": sum(1 for c in kept.values() if c["off"]),
        "requests answered twice upstream": charges["answered_twice"],
        "streams silent longer than the keepalive interval": silent_streams(results, keepalive),
    }
    kills = [f for f in faults if "killed_at" in f.detail]
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(wall_zero)),
        "requests": len(results),
        "outcomes": {f"{o}{' (' + c + ')' if c else ''}": n
                     for (o, c), n in sorted(Counter((r.outcome, r.cause) for r in results).items())},
        "failed_in_flight_on_a_killed_process": len(excused),
        "served_without_the_store_outside_its_faults": sum(unanswered.values()),
        "served_without_the_store_outside_its_faults_by_second": dict(sorted(unanswered.items())),
        "in_flight_at_each_kill": [sum(1 for r in results if in_flight_on_killed(r, [f])) for f in kills],
        "lost": [{"kind": r.kind, "cause": r.cause, "backend": r.backend, "at": round(r.started, 2)}
                 for r in lost],
        "invariants": invariants, "spend": charges, "stored_spend": kept, "limits": held, "alone": solo,
        "coalescing": coalescing(results, records), "overall": _stats(results),
        "faults": per_fault(results, faults, without_store),
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
               f"streams left by their client or cut by the upstream: {s['streams_left_or_cut']}")
    for client, k in report["stored_spend"].items():
        out.append(f"spend in Valkey, {client}: {k['stored_usd']:.6f} USD, logged {k['logged_usd']:.6f} "
                   f"(+{k['allowed_above_usd']:.6f} / -{k['allowed_below_usd']:.6f} allowed by the faults)")
    for name, race in report["limits"]["races"].items():
        out.append(f"{name}: {race['sent']} sent at once, {race['admitted']} admitted "
                   f"({race['admitted_by_the_store']} by the store), {race['fits']} fit")
    out.append(f"in flight on the killed process at each kill: {report['in_flight_at_each_kill']}; most a process "
               f"admitted alone in a minute (store out): {report['alone']['most_in_a_process_minute']}; "
               f"served without the store outside its faults (its calls timed out): "
               f"{report['served_without_the_store_outside_its_faults']}")
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


