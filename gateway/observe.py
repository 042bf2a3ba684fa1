"""One JSON line per request on stdout: the request log and, in CloudWatch's Embedded Metric
Format, the metrics. The awslogs driver ships the line; CloudWatch Logs extracts the metrics from
it. No SDK calls, no extra IAM, no sidecar.

Dimensions are bounded: `Service` (the stack) and `Service, Client` (the configured client names).
The model is a log field, not a dimension: clients choose it, so it is unbounded. The line never
carries a key, and carries the prompt only when GATEWAY_LOG_PROMPTS is on.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import orjson

# name -> unit, in the order they appear in the line
METRICS = {
    "Requests": "Count", "Latency": "Milliseconds", "TimeToFirstToken": "Milliseconds",
    "InputTokens": "Count", "OutputTokens": "Count", "Upstream429": "Count", "Upstream5xx": "Count",
    "Retries": "Count", "GatewayErrors": "Count", "CacheHits": "Count", "CacheMisses": "Count",
    "CacheCoalesced": "Count", "CacheErrors": "Count", "RejectedRequests": "Count",
    "RejectedTokens": "Count", "RejectedSpend": "Count", "EstimatedCostUSD": "None",
}
REJECTED = {"requests": "RejectedRequests", "concurrent": "RejectedRequests", "tokens": "RejectedTokens",
            "spend": "RejectedSpend"}
REJECTED_METRICS = tuple(dict.fromkeys(REJECTED.values()))


@dataclass
class Record:
    request_id: str
    route: str
    started: float  # time.perf_counter() at arrival
    client: str = "-"
    model: Optional[str] = None
    stream: bool = False
    asked_usage: bool = False  # the client asked a stream for its usage chunk
    status: int = 0
    ttft_ms: Optional[float] = None
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    retries: int = 0
    upstream_429: int = 0
    upstream_5xx: int = 0
    upstream_request_id: Optional[str] = None
    upstream: Optional[str] = None  # the upstream that answered (or, failing, the last tried)
    upstream_model: Optional[str] = None  # the model under the name that upstream knows it by
    error: Optional[str] = None  # the code of an error the gateway raised
    prompt: Any = None  # only with GATEWAY_LOG_PROMPTS
    cache: Optional[str] = None  # HIT, MISS, BYPASS, REFRESH; None when the route is not cached
    coalesced: bool = False  # served from an entry another request was filling
    cache_error: bool = False  # the store did not answer: no cache, no limits for this request
    rejected: Optional[str] = None  # the limit that refused it: requests, tokens, spend
    cost_nano: Optional[int] = None  # priced usage, nano-USD
    answered: bool = False  # the upstream took the request on (answered 200): its tokens count
    reserve: tuple[int, int] = (0, 0)  # (input, output) tokens estimated before the call
    relayed: int = 0  # stream events relayed to the client
    tokens_estimated: bool = False  # tokens are the estimate, the upstream reported no usage


def line(r: Record, service: str, namespace: str, now_ms: Optional[int] = None) -> bytes:
    values = {
        "Requests": 1, "Latency": round((time.perf_counter() - r.started) * 1000, 3),
        "TimeToFirstToken": r.ttft_ms, "InputTokens": r.input_tokens, "OutputTokens": r.output_tokens,
        "Upstream429": r.upstream_429, "Upstream5xx": r.upstream_5xx, "Retries": r.retries,
        "GatewayErrors": 1 if r.error and not r.rejected else 0,
        "CacheHits": 1 if r.cache == "HIT" else 0, "CacheMisses": 1 if r.cache in ("MISS", "REFRESH") else 0,
        "CacheCoalesced": 1 if r.coalesced else 0, "CacheErrors": 1 if r.cache_error else 0,
        "EstimatedCostUSD": r.cost_nano / 1e9 if r.cost_nano is not None else None,
        **{metric: 1 if REJECTED.get(r.rejected or "") == metric else 0 for metric in REJECTED_METRICS},
    }
    present = {k: v for k, v in values.items() if v is not None}
    doc: dict[str, Any] = {
        "_aws": {
            "Timestamp": now_ms if now_ms is not None else int(time.time() * 1000),
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [["Service"], ["Service", "Client"]],
                "Metrics": [{"Name": k, "Unit": METRICS[k]} for k in present],
            }],
        },
        "Service": service, "Client": r.client, **present,
        "request_id": r.request_id, "route": r.route, "model": r.model, "stream": r.stream,
        "status": r.status, "upstream_request_id": r.upstream_request_id,
    }
    if r.upstream is not None:
        doc["upstream"], doc["upstream_model"] = r.upstream, r.upstream_model
    if r.error:
        doc["error"] = r.error
    if r.tokens_estimated:
        doc["tokens_estimated"] = True
    if r.cache:
        doc["cache"] = r.cache
    if r.prompt is not None:
        doc["prompt"] = r.prompt
    return orjson.dumps(doc) + b"\n"


def emit(data: bytes) -> None:
    # One write per line: lines from concurrent requests never interleave.
    os.write(1, data)


# Per-upstream metrics (dimension `Service, Upstream`: the names come from the stack's config).
UPSTREAM_METRICS = {"UpstreamRequests": "Count", "UpstreamErrors": "Count", "UpstreamThrottled": "Count",
                    "UpstreamCooldowns": "Count", "UpstreamCoolingDown": "None", "UpstreamLatency": "Milliseconds"}
MAX_VALUES = 100  # an EMF metric carries at most 100 values


@dataclass
class _Counts:
    requests: int = 0
    errors: int = 0
    throttled: int = 0
    latencies: list[float] = field(default_factory=list)


class UpstreamStats:
    """Each upstream's calls in this process, summed between flushes: one line per upstream every
    few seconds (`lines`), not one per call, so the request path only adds to a counter."""

    def __init__(self) -> None:
        self.counts: dict[str, _Counts] = {}

    def called(self, name: str, started: float, failed: bool = False, throttled: bool = False) -> None:
        c = self.counts.get(name)
        if c is None:
            c = self.counts[name] = _Counts()
        c.requests += 1
        c.errors += failed and not throttled
        c.throttled += throttled
        if len(c.latencies) < MAX_VALUES:
            c.latencies.append(round((time.perf_counter() - started) * 1000, 3))

    def lines(self, names: list[str], cooling: list[str], cooldowns: dict[str, int], service: str,
              namespace: str, now_ms: Optional[int] = None) -> bytes:
        """The lines for every upstream in `names`, and the counts start again. `cooldowns` (the
        cooldowns each has started, in total) is emptied too."""
        counts, self.counts = self.counts, {}
        out = []
        for name in names:
            c = counts.get(name, _Counts())
            values: dict[str, Any] = {
                "UpstreamRequests": c.requests, "UpstreamErrors": c.errors, "UpstreamThrottled": c.throttled,
                "UpstreamCooldowns": cooldowns.pop(name, 0), "UpstreamCoolingDown": int(name in cooling),
            }
            if c.latencies:
                values["UpstreamLatency"] = c.latencies
            out.append(orjson.dumps({
                "_aws": {"Timestamp": now_ms if now_ms is not None else int(time.time() * 1000),
                         "CloudWatchMetrics": [{"Namespace": namespace, "Dimensions": [["Service", "Upstream"]],
                                                "Metrics": [{"Name": k, "Unit": UPSTREAM_METRICS[k]}
                                                            for k in values]}]},
                "Service": service, "Upstream": name, **values,
            }) + b"\n")
        return b"".join(out)
