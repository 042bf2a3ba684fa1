"""Per-client limits: requests and tokens per minute, spend per day in USD.

Each client's limits come from its entry in the client-keys document (`limits`), field by field
over the stack's defaults (GATEWAY_DEFAULT_LIMITS); 0 means no limit. They are checked and
charged atomically in Valkey (gateway/store.py), so they hold across every task:

- requests per minute: every request, cache hits included (a fixed window per UTC minute);
- tokens per minute and USD per day: only what reaches the LLM API. Before the call an estimate
  is reserved (input about a token per 4 bytes of body, output the request's max tokens or
  GATEWAY_OUTPUT_TOKENS_ESTIMATE); after it, the reservation is settled with the usage the
  upstream reports, priced by the per-model table (GATEWAY_PRICES, USD per million tokens).

Money is counted in nano-dollars (integers): exact, and far from overflowing.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Container
from dataclasses import dataclass
from typing import Any, Optional

import orjson

from gateway.errors import GatewayError, invalid

NANO = 1_000_000_000
# A model name as OpenAI-compatible APIs write them (gpt-4o-mini-2024-07-18,
# ft:gpt-4o-mini:acme:name:abc123): checked before anything looks it up or logs it.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")  # a dated snapshot of a listed model
# Bounds on what a request may ask for, well above any model's own: beyond them a request is
# refused rather than reserved against the limits at some other figure.
MAX_OUTPUT_TOKENS = 1_000_000
MAX_CHOICES = 128  # OpenAI's own bound on `n`
OUTPUT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    usd_per_day: float = 0.0
    concurrent_requests: int = 0  # in flight at once, across every task

    @classmethod
    def from_json(cls, doc: dict[str, Any], base: Optional[Limits] = None) -> Limits:
        base = base or cls()
        return cls(
            requests_per_minute=int(doc.get("requestsPerMinute", base.requests_per_minute)),
            tokens_per_minute=int(doc.get("tokensPerMinute", base.tokens_per_minute)),
            usd_per_day=float(doc.get("usdPerDay", base.usd_per_day)),
            concurrent_requests=int(doc.get("concurrentRequests", base.concurrent_requests)),
        )

    @property
    def any(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute or self.usd_per_day
                    or self.concurrent_requests)

    @property
    def nano_per_day(self) -> int:
        return round(self.usd_per_day * NANO)


@dataclass(frozen=True)
class Price:
    input_per_million: float
    output_per_million: float

    def nano(self, input_tokens: int, output_tokens: int) -> int:
        # USD per million tokens = nano-USD per token / 1000.
        return round(input_tokens * self.input_per_million * 1000 + output_tokens * self.output_per_million * 1000)


class Prices:
    """The models clients may call, and what each costs. Any other model is refused; a dated
    snapshot of a listed model (gpt-4o-mini-2024-07-18) is allowed and priced as that model.
    Without a table (a local run) every model is allowed and costs nothing."""

    def __init__(self, table: Optional[dict[str, Any]]):
        self.listed = table is not None
        self.table = {m: Price(float(p["inputPerMillion"]), float(p["outputPerMillion"]))
                      for m, p in (table or {}).items()}

    @classmethod
    def from_json(cls, text: str) -> Prices:
        return cls(orjson.loads(text) if text else None)

    def listed_as(self, model: str) -> Optional[str]:
        """The listed model this name is (itself, or the model it is a snapshot of), or None."""
        if model in self.table or not self.listed:
            return model
        family = SNAPSHOT.sub("", model)
        return family if family in self.table else None

    def of(self, model: Optional[str]) -> Price:
        listed = self.listed_as(model) if model else None
        return self.table.get(listed, FREE) if listed else FREE


FREE = Price(0.0, 0.0)


def check_model(model: Any, prices: Prices, allowed: Optional[frozenset[str]] = None,
                routes: Container[str] = ()) -> str:
    """The request's model, if this client may call it (with routes, one of the routes' names;
    else a priced one); else the 400 OpenAI answers with. A priced model is not callable by name
    in a routed stack: it may be a deployment of one provider only, and its name would send the
    prompt to the default upstream instead."""
    if not isinstance(model, str) or not MODEL_NAME.fullmatch(model):
        raise invalid("`model` must be a model name: letters, digits and . _ : / -, up to 128",
                      param="model", code="invalid_model")
    listed = (model if model in routes else None) if routes else prices.listed_as(model)
    if listed is None or (allowed is not None and listed not in allowed):
        raise invalid(f"The model `{model}` does not exist or you do not have access to it.",
                      param="model", code="model_not_found")
    return model


@dataclass
class Reservation:
    tokens: int
    nano: int
    minute: int  # the windows the reservation was charged to
    day: str
    flight: str = ""  # its place among the client's requests in flight ("" when not bounded)
    # Its mark in the shared store ("" for none): a settlement sent again after a timeout (the first
    # may have been applied all the same) counts once, and a gate applied after the gateway gave up
    # on it is undone (`void`).
    mark: str = ""


def estimate(route: str, doc: dict[str, Any], body_size: int, default_output: int) -> tuple[int, int]:
    """(input, output) tokens reserved before the call: about a token per 4 bytes of the body in,
    and the request's own output limit (the largest, if it sends several; else the default) times
    its number of choices out;
    embeddings and the model list have no output. A field it reads that is not a whole number in
    bounds is refused (400), never read as some other figure."""
    if route == "models":
        return 0, 0
    # Every output limit sent is checked, and the largest reserved: which one an upstream obeys
    # when a client sends several is the upstream's business, not a way under the limits.
    asked = [_whole(field, doc[field], 1, MAX_OUTPUT_TOKENS) for field in OUTPUT_FIELDS
             if doc.get(field) is not None]
    out = max(asked) if asked else 0 if route == "embeddings" else default_output
    choices = doc.get("n")
    if route == "chat.completions" and choices is not None:
        out *= _whole("n", choices, 1, MAX_CHOICES)
    return math.ceil(body_size / 4), out


def _whole(field: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(f"`{field}` must be a whole number from {low} to {high:,}", param=field,
                      code="integer_out_of_range" if isinstance(value, int) and not isinstance(value, bool)
                      else "invalid_type")
    return value


def windows(now: Optional[float] = None) -> tuple[int, str, float, float]:
    """(minute number, UTC day, seconds to the next minute, seconds to the next day)."""
    now = time.time() if now is None else now
    minute = int(now // 60)
    day = time.strftime("%Y%m%d", time.gmtime(now))
    return minute, day, 60 - now % 60, 86400 - now % 86400


def rejection(reason: str, limits: Limits, used: int, retry_after: float) -> GatewayError:
    """A 429 like OpenAI's own, with the headers its SDKs back off by."""
    wait = max(1, math.ceil(retry_after))
    if reason == "concurrent":
        message = (f"Too many requests in flight: limit {limits.concurrent_requests} at once. "
                   "Wait for one to finish.")
        return GatewayError(429, message, type="requests", code="rate_limit_exceeded",
                            headers=[(b"retry-after", b"1")])
    if reason == "requests":
        message = (f"Rate limit reached for requests per minute: limit {limits.requests_per_minute}, "
                   f"used {used}. Try again in {wait}s.")
        headers = {"x-ratelimit-limit-requests": limits.requests_per_minute,
                   "x-ratelimit-remaining-requests": max(0, limits.requests_per_minute - used),
                   "x-ratelimit-reset-requests": f"{wait}s"}
        code, kind = "rate_limit_exceeded", "requests"
    elif reason == "tokens":
        message = (f"Rate limit reached for tokens per minute: limit {limits.tokens_per_minute}, "
                   f"used {used}. Try again in {wait}s.")
        headers = {"x-ratelimit-limit-tokens": limits.tokens_per_minute,
                   "x-ratelimit-remaining-tokens": max(0, limits.tokens_per_minute - used),
                   "x-ratelimit-reset-tokens": f"{wait}s"}
        code, kind = "rate_limit_exceeded", "tokens"
    else:
        message = (f"Daily spend limit of ${limits.usd_per_day:g} reached (${used / NANO:.4f} spent "
                   f"today, UTC). It resets in {wait}s.")
        headers = {}
        code, kind = "insufficient_quota", "insufficient_quota"
    headers["retry-after"] = wait
    return GatewayError(429, message, type=kind, code=code,
                        headers=[(k.encode(), str(v).encode()) for k, v in headers.items()])
