"""The router's choices and the cooldowns (gateway/routing.py), on a fake clock and fixed draws."""

from __future__ import annotations

import json

import pytest

from gateway.routing import DEFAULT, Health, Route, Router, RoutesError, Target, UpstreamSpec, parse_routes

UPSTREAMS = {DEFAULT: None, "b": None, "c": None}
ROUTES = {"chat": [{"upstream": DEFAULT, "model": "m-1", "weight": 3},
                   {"upstream": "b", "model": "m-b", "weight": 1}, {"upstream": "c", "model": "m-c", "tier": 2}]}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def router(draws: list[float] | None = None, after: int = 3,
           seconds: float = 30.0) -> tuple[Router, Health, Clock]:
    clock = Clock()
    health = Health(seconds, after, clock=clock)
    values = iter(draws or [])
    return Router(parse_routes(ROUTES, UPSTREAMS), health, rand=lambda: next(values, 0.0)), health, clock


def test_routes_are_parsed_into_tiers_in_order_with_a_scope_naming_every_target():
    route = parse_routes(ROUTES, UPSTREAMS)["chat"]
    assert [[(t.upstream, t.model, t.weight) for t in tier] for tier in route.tiers] == \
        [[(DEFAULT, "m-1", 3), ("b", "m-b", 1)], [("c", "m-c", 1)]]
    assert route.scope == '[["default","m-1"],["b","m-b"],["c","m-c"]]'
    tiers_out_of_order = parse_routes({"x": [{"upstream": "c", "model": "z", "tier": 5},
                                             {"upstream": "b", "model": "y", "tier": 2}]}, UPSTREAMS)["x"]
    assert [t.tier for tier in tiers_out_of_order.tiers for t in tier] == [2, 5]


@pytest.mark.parametrize(("doc", "says"), [
    ({"x": [{"upstream": "nowhere", "model": "m"}]}, "no upstream 'nowhere'"),
    ({"x": [{"upstream": "b", "model": "m", "weight": 0}, {"upstream": "c", "model": "m", "weight": 0}]},
     "every weight is 0"),
    ({"x": [{"upstream": "b", "model": "m"}, {"upstream": "c", "model": "m", "weight": 0, "tier": 2}]},
     "every weight is 0"),
    ({"x": [{"upstream": "b", "model": "m", "weight": -1}, {"upstream": "c", "model": "m", "weight": 2}]}, "< 0"),
    ({"x": []}, "a list of targets"),
])
def test_a_route_that_cannot_be_followed_is_refused(doc, says):
    with pytest.raises(RoutesError, match=says):
        parse_routes(doc, UPSTREAMS)


def test_weights_split_the_first_tier_and_the_draw_decides():
    r, _, _ = router([0.0, 0.74, 0.76, 0.999])
    route = r.routes["chat"]
    assert [r.choose(route).upstream for _ in range(4)] == [DEFAULT, DEFAULT, "b", "b"]


def test_a_zero_weight_target_takes_nothing_while_its_tier_has_another():
    r = Router(parse_routes({"x": [{"upstream": "b", "model": "m", "weight": 0},
                                   {"upstream": "c", "model": "m", "weight": 1}]}, UPSTREAMS),
               Health(30, 3), rand=lambda: 0.0)
    assert {r.choose(r.routes["x"]).upstream for _ in range(5)} == {"c"}


A, B, C = (DEFAULT, "m-1"), ("b", "m-b"), ("c", "m-c")  # the route's targets, as health knows them


def test_a_failover_goes_to_the_untried_target_of_the_tier_then_to_the_next_tier():
    r, _, _ = router([0.0])
    route = r.routes["chat"]
    assert r.choose(route, frozenset({A})).upstream == "b"
    assert r.choose(route, frozenset({A, B})).upstream == "c"
    # Every target tried: the first tier again.
    assert r.choose(route, frozenset({A, B, C})).upstream == DEFAULT


def test_a_target_on_the_same_upstream_under_another_model_is_a_target_of_its_own():
    r = Router(parse_routes({"x": [{"upstream": "b", "model": "small"},
                                   {"upstream": "b", "model": "large", "tier": 2}]}, UPSTREAMS),
               Health(30, 3), rand=lambda: 0.0)
    route = r.routes["x"]
    assert r.choose(route, frozenset({("b", "small")})) == Target("b", "large", 1, 2)
    r.health.cool(("b", "small"), 30)  # one model's limits, not the upstream's
    assert r.choose(route).model == "large" and r.health.usable(("b", "large"), r.health.clock())


def test_a_cooling_target_is_skipped_while_another_is_usable_and_tried_when_none_is():
    r, health, clock = router()
    route = r.routes["chat"]
    health.cool(A, 30)
    assert r.choose(route).upstream == "b"
    health.cool(B, 30)
    assert r.choose(route).upstream == "c"  # the next tier
    health.cool(C, 30)
    assert r.choose(route).upstream == DEFAULT  # every one cooling: steer, never refuse
    clock.now += 30
    assert health.cooling() == []
    assert r.choose(route).upstream == DEFAULT


def test_failures_in_a_row_cool_a_target_and_a_success_starts_the_count_again():
    _, health, clock = router(after=3, seconds=30)
    cooled: list[tuple[tuple[str, str], float]] = []
    health.on_cool = lambda key, seconds: cooled.append((key, seconds))
    assert health.failed(B) == 0 and health.failed(B) == 0
    health.succeeded(B)
    assert health.failed(B) == 0 and health.failed(B) == 0
    assert health.usable(B, clock.now) and health.unhealthy() == set()
    assert health.failed(B) == 30
    assert not health.usable(B, clock.now) and health.usable(B, clock.now + 30)
    assert cooled == [(B, 30)] and health.cooldowns == {"b": 1} and health.unhealthy() == {"b"}
    # After the cooldown it is still unhealthy (it has not answered since), and one more failure
    # cools it again.
    clock.now += 30
    assert health.cooling() == [] and health.unhealthy() == {"b"}
    assert health.failed(B) == 30 and health.cooldowns == {"b": 2}
    health.succeeded(B)
    clock.now += 30
    assert health.unhealthy() == set()


def test_retry_after_cools_its_target_for_as_long_as_it_asks_within_a_bound():
    _, health, clock = router(after=3, seconds=30)
    assert health.failed(B, retry_after=2.5) == 2.5
    assert not health.usable(B, clock.now + 2.4) and health.usable(B, clock.now + 2.5)
    assert health.failed(C, retry_after=86400) == 300  # a misread date parks it for 5 minutes at most
    health.failed(B), health.failed(B)  # the third failure in a row: the longer of the two
    assert health.until[B] == clock.now + 30


def test_a_cooldown_from_another_process_is_not_counted_here_and_never_shortens_ours():
    _, health, clock = router()
    health.cool(B, 60)
    health.cool(B, 10, counted=False)
    assert health.until[B] == clock.now + 60 and health.cooldowns == {"b": 1}
    health.cool(C, 10, counted=False)
    assert health.cooldowns == {"b": 1} and health.cooling() == [B, C]


def test_a_model_without_a_route_goes_to_the_default_upstream_under_its_own_name():
    r, _, _ = router()
    route = r.route("gpt-4o")
    assert route == Route("gpt-4o", ((Target(DEFAULT, "gpt-4o"),),))
    assert r.choose(route) == Target(DEFAULT, "gpt-4o") and route.scope == ""


def test_an_upstream_authenticates_as_its_kind_says():
    bearer = UpstreamSpec("a", "https://api.openai.com/v1/", "sk-1", org_id="org-1", project_id="proj_1")
    assert bearer.headers() == {"Authorization": "Bearer sk-1", "Accept-Encoding": "identity",
                                "OpenAI-Organization": "org-1", "OpenAI-Project": "proj_1"}
    assert bearer.url == "https://api.openai.com/v1"
    azure = UpstreamSpec("z", "https://r.openai.azure.com/openai/v1", "k-2", auth="api-key")
    assert azure.headers() == {"api-key": "k-2", "Accept-Encoding": "identity"}


def test_the_wait_before_the_next_attempt_is_nothing_for_an_untried_target_else_the_backoff():
    from gateway.settings import DEFAULT as SETTINGS
    from gateway.upstream import Upstream

    r, _, _ = router([0.0])
    upstream = Upstream(SETTINGS)
    upstream.router = r
    route = r.routes["chat"]
    failed = route.tiers[0][0]  # A
    assert upstream._next(route, frozenset({A}), failed, 0, 2.0) == (route.tiers[0][1], 0.0)  # to B, at once
    # Every target tried: back to the first tier, after a backoff (its Retry-After was A's, not C's).
    following, wait = upstream._next(route, frozenset({A, B, C}), route.tiers[1][0], 2, 9.0)
    assert following.key == A and 0 < wait <= min(SETTINGS.backoff_max_seconds, SETTINGS.backoff_base_seconds * 4)
    # The same target again (one-target route): what it asked.
    single = r.route("gpt-4o")
    assert upstream._next(single, frozenset({(DEFAULT, "gpt-4o")}), single.single, 0, 1.5) == (single.single, 1.5)
    following, wait = upstream._next(single, frozenset({(DEFAULT, "gpt-4o")}), single.single, 1, None)
    assert 0 < wait <= SETTINGS.backoff_base_seconds * 2


def test_a_routed_model_reserves_at_its_dearest_targets_price_on_each_side():
    """A spend limit reserves before the route picks a target: at the dearest input price and the
    dearest output price among its targets (they may be different targets), so no pick is under it."""
    from gateway.app import App
    from gateway.settings import from_env

    env = {"OPENAI_API_KEY": "sk-test", "HOST": "127.0.0.1", "BACKUP_KEY": "k-2",
           "GATEWAY_UPSTREAMS": json.dumps({"backup": {"baseUrl": "https://api.openai.com/v1",
                                                       "keyVariable": "BACKUP_KEY"}}),
           "GATEWAY_ROUTES": json.dumps({"m": [{"upstream": "default", "model": "cheap-out"},
                                               {"upstream": "backup", "model": "dear-out"}]}),
           "GATEWAY_PRICES": json.dumps({"cheap-out": {"inputPerMillion": 3, "outputPerMillion": 1},
                                         "dear-out": {"inputPerMillion": 2, "outputPerMillion": 8}})}
    app = App(from_env(env, log=lambda line: None))
    assert (app.reserve_prices["m"].input_per_million, app.reserve_prices["m"].output_per_million) == (3, 8)
