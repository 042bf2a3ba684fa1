"""The router's choices and the cooldowns (gateway/routing.py), on a fake clock and fixed draws."""

from __future__ import annotations

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


def test_a_failover_goes_to_the_untried_target_of_the_tier_then_to_the_next_tier():
    r, _, _ = router([0.0])
    route = r.routes["chat"]
    assert r.choose(route, frozenset({DEFAULT})).upstream == "b"
    assert r.choose(route, frozenset({DEFAULT, "b"})).upstream == "c"
    # Every target tried: the first tier again.
    assert r.choose(route, frozenset({DEFAULT, "b", "c"})).upstream == DEFAULT


def test_a_cooling_upstream_is_skipped_while_another_is_usable_and_tried_when_none_is():
    r, health, clock = router()
    route = r.routes["chat"]
    health.cool(DEFAULT, 30)
    assert r.choose(route).upstream == "b"
    health.cool("b", 30)
    assert r.choose(route).upstream == "c"  # the next tier
    health.cool("c", 30)
    assert r.choose(route).upstream == DEFAULT  # every one cooling: steer, never refuse
    clock.now += 30
    assert health.cooling() == []
    assert r.choose(route).upstream == DEFAULT


def test_failures_in_a_row_cool_an_upstream_and_a_success_starts_the_count_again():
    _, health, clock = router(after=3, seconds=30)
    cooled: list[tuple[str, float]] = []
    health.on_cool = lambda name, seconds: cooled.append((name, seconds))
    assert health.failed("b") == 0 and health.failed("b") == 0
    health.succeeded("b")
    assert health.failed("b") == 0 and health.failed("b") == 0
    assert health.usable("b", clock.now)
    assert health.failed("b") == 30
    assert not health.usable("b", clock.now) and health.usable("b", clock.now + 30)
    assert cooled == [("b", 30)] and health.cooldowns == {"b": 1}
    # After the cooldown one more failure cools it again: it has not succeeded since.
    clock.now += 30
    assert health.failed("b") == 30 and health.cooldowns == {"b": 2}


def test_retry_after_cools_its_upstream_for_as_long_as_it_asks_within_a_bound():
    _, health, clock = router(after=3, seconds=30)
    assert health.failed("b", retry_after=2.5) == 2.5
    assert not health.usable("b", clock.now + 2.4) and health.usable("b", clock.now + 2.5)
    assert health.failed("c", retry_after=86400) == 300  # a misread date parks it for 5 minutes at most
    health.failed("b"), health.failed("b")  # the third failure in a row: the longer of the two
    assert health.until["b"] == clock.now + 30


def test_a_cooldown_from_another_process_is_not_counted_here_and_never_shortens_ours():
    _, health, clock = router()
    health.cool("b", 60)
    health.cool("b", 10, counted=False)
    assert health.until["b"] == clock.now + 60 and health.cooldowns == {"b": 1}
    health.cool("c", 10, counted=False)
    assert health.cooldowns == {"b": 1} and health.cooling() == ["b", "c"]


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
