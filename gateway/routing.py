"""Where a request goes: the stack's upstreams and its routes.

An upstream is an OpenAI-compatible API with its own key (`default` is OPENAI_BASE_URL with
OPENAI_API_KEY; others come from GATEWAY_UPSTREAMS, each key from its own secret). A route maps a
model clients call (an alias such as `chat-default`, or a model's own name) to targets: (upstream,
the model name that upstream knows, weight, tier). A request goes to a target of the first tier
drawn by weight among those not cooling down, and fails over to another target (same tier first,
then the next tier) on 429, 5xx, a connection error or a timeout before the response's headers:
never once a stream has begun. With routes, the routes are the models clients may call; without,
every priced model goes to `default` under its own name.

A target (an upstream and a model: an API's rate limits are per model) that fails
GATEWAY_UPSTREAM_COOLDOWN_AFTER times in a row, or answers with Retry-After, cools down: no
request is sent to it while another target is usable, until the cooldown
(GATEWAY_UPSTREAM_COOLDOWN_SECONDS, or the Retry-After) ends; then the next request tries it
again. With Valkey, a cooldown one process starts reaches every other within about a second.
When every target is cooling down, the request still tries them: cooldowns steer, never refuse.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import orjson

DEFAULT = "default"
AUTHS = ("bearer", "api-key")
# A Retry-After cools its upstream for at most this long: a misread date must not park it for a day.
MAX_RETRY_AFTER_COOLDOWN = 300.0


@dataclass(frozen=True)
class UpstreamSpec:
    """One OpenAI-compatible API: where it is and the headers every call to it carries."""

    name: str
    base_url: str
    key: str = field(repr=False)
    auth: str = "bearer"  # or "api-key" (Azure OpenAI's v1 API)
    org_id: str = ""
    project_id: str = ""
    key_variable: str = ""  # where the key comes from (an extra upstream's injected secret)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/")

    def headers(self) -> dict[str, str]:
        out = {"Authorization": f"Bearer {self.key}"} if self.auth == "bearer" else {"api-key": self.key}
        out["Accept-Encoding"] = "identity"
        if self.org_id:
            out["OpenAI-Organization"] = self.org_id
        if self.project_id:
            out["OpenAI-Project"] = self.project_id
        return out


@dataclass(frozen=True)
class Target:
    upstream: str
    model: str  # the name the upstream knows the model by
    weight: int = 1
    tier: int = 1

    @property
    def key(self) -> tuple[str, str]:
        return self.upstream, self.model


@dataclass(frozen=True)
class Route:
    """A client-facing model's targets, tier by tier. `scope` names the targets, for the cache key:
    an alias moved to another snapshot never serves the old snapshot's answers."""

    model: str
    tiers: tuple[tuple[Target, ...], ...]
    scope: str = ""

    @property
    def single(self) -> Optional[Target]:
        """The one target of a route that has only one (no choice to make)."""
        return self.tiers[0][0] if len(self.tiers) == 1 and len(self.tiers[0]) == 1 else None

    @property
    def targets(self) -> tuple[Target, ...]:
        return tuple(t for tier in self.tiers for t in tier)


class RoutesError(ValueError):
    pass


def parse_routes(doc: Mapping[str, Any], upstreams: Mapping[str, Any]) -> dict[str, Route]:
    """GATEWAY_ROUTES: {"chat-default": [{"upstream": "default", "model": "gpt-4o-mini-2024-07-18",
    "weight": 3, "tier": 1}, ...]}. Each target's upstream must exist and each tier must carry
    weight (the stack's config contract says the same, with the stack's key names)."""
    routes = {}
    for model, targets in doc.items():
        if not isinstance(targets, list) or not targets:
            raise RoutesError(f"route {model!r}: a list of targets")
        try:
            parsed = [Target(str(t["upstream"]), str(t["model"]), int(t.get("weight", 1)), int(t.get("tier", 1)))
                      for t in targets]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise RoutesError(f"route {model!r}: each target is {{upstream, model, weight, tier}}") from None
        for t in parsed:
            if t.upstream not in upstreams:
                raise RoutesError(f"route {model!r}: no upstream {t.upstream!r} (have {sorted(upstreams)})")
            if t.weight < 0:
                raise RoutesError(f"route {model!r}: weight {t.weight} < 0")
        tiers = tuple(tuple(t for t in parsed if t.tier == n) for n in sorted({t.tier for t in parsed}))
        if any(sum(t.weight for t in tier) == 0 for tier in tiers):
            raise RoutesError(f"route {model!r}: a tier whose every weight is 0")
        scope = orjson.dumps([[t.upstream, t.model] for t in parsed]).decode()
        routes[model] = Route(model, tiers, scope)
    return routes


Key = tuple[str, str]  # (upstream, model): what cools down (an API's limits are per model)


class Health:
    """Each target's run of failures and its cooldown, by (upstream, model), in this process (and,
    through `on_cool`, in the store for the other processes)."""

    def __init__(self, cooldown_seconds: float, cooldown_after: int,
                 clock: Callable[[], float] = time.monotonic,
                 on_cool: Optional[Callable[[Key, float], None]] = None):
        self.cooldown_seconds, self.cooldown_after = cooldown_seconds, cooldown_after
        self.clock, self.on_cool = clock, on_cool
        self.until: dict[Key, float] = {}  # -> clock time its cooldown ends
        self.failures: dict[Key, int] = {}  # -> failures in a row
        self.cooldowns: dict[str, int] = {}  # upstream -> cooldowns started here (a metric)

    def usable(self, key: Key, now: float) -> bool:
        return self.until.get(key, 0.0) <= now

    def succeeded(self, key: Key) -> None:
        if self.failures.get(key):
            self.failures[key] = 0

    def failed(self, key: Key, retry_after: Optional[float] = None) -> float:
        """Count a failure; the seconds of the cooldown it starts (0: none)."""
        n = self.failures[key] = self.failures.get(key, 0) + 1
        seconds = self.cooldown_seconds if n >= self.cooldown_after else 0.0
        if retry_after:
            seconds = max(seconds, min(retry_after, MAX_RETRY_AFTER_COOLDOWN))
        if seconds:
            self.cool(key, seconds)
            if self.on_cool is not None:
                self.on_cool(key, seconds)
        return seconds

    def cool(self, key: Key, seconds: float, counted: bool = True) -> None:
        now = self.clock()
        if counted and self.usable(key, now):
            self.cooldowns[key[0]] = self.cooldowns.get(key[0], 0) + 1
        self.until[key] = max(self.until.get(key, 0.0), now + seconds)

    def cooling(self, now: Optional[float] = None) -> list[Key]:
        now = self.clock() if now is None else now
        return [key for key, until in self.until.items() if until > now]

    def unhealthy(self) -> set[str]:
        """Upstreams with a target cooling down, or failing since its last cooldown (it has not
        answered since): what the per-upstream alarm watches."""
        failing = {key for key, n in self.failures.items() if n >= self.cooldown_after}
        return {upstream for upstream, _ in [*self.cooling(), *failing]}


class Router:
    """Chooses a request's target: by weight among the first tier's usable targets not tried yet;
    failing that the next tier's; failing that any untried target, cooling or not; and once every
    target has been tried, the first tier again."""

    def __init__(self, routes: Mapping[str, Route], health: Health, rand: Callable[[], float] = random.random):
        self.routes, self.health, self.rand = routes, health, rand

    def route(self, model: Optional[str]) -> Route:
        found = self.routes.get(model or "")
        if found is not None:
            return found
        # No route: the default upstream, under the model's own name (the single-upstream stack).
        return Route(model or "", ((Target(DEFAULT, model or ""),),))

    def choose(self, route: Route, tried: frozenset[Key] = frozenset()) -> Target:
        one = route.single
        if one is not None:
            return one
        now = self.health.clock()
        for usable_only in (True, False):
            for tier in route.tiers:
                candidates = [t for t in tier if t.weight > 0 and t.key not in tried
                              and (not usable_only or self.health.usable(t.key, now))]
                if candidates:
                    return self._draw(candidates)
        # Every target tried: start over (a route has a target with weight: parse_routes).
        return self.choose(route)

    def _draw(self, candidates: list[Target]) -> Target:
        if len(candidates) == 1:
            return candidates[0]
        point = self.rand() * sum(t.weight for t in candidates)
        for t in candidates:
            point -= t.weight
            if point < 0:
                return t
        return candidates[-1]  # point == total, to within rounding
