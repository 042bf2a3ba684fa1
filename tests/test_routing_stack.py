"""Upstreams and routes as stack config (llm.upstreams, llm.routes): the contract's refusals, and what a
routed staging declares: the variables the gateway reads, each key injected by ARN from its own
secret, the alarms and widgets per upstream. The default stacks declare none of it."""

from __future__ import annotations

import json

import pytest

from gateway import settings
from infra.config import ConfigError, load
from tests.conftest import container, policy, with_changes

ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
AZURE = "https://acme-east.openai.azure.com/openai/v1"
UPSTREAMS = {
    "backup": {"baseUrl": "https://api.openai.com/v1", "projectId": "proj_backup",
               "secretName": "backup-openai-key"},
    "azure": {"baseUrl": AZURE, "auth": "api-key", "secretName": "azure-openai-key"},
}
ROUTES = {
    "chat-default": [{"model": "gpt-4o-mini-2024-07-18", "weight": 3},
                     {"upstream": "backup", "model": "gpt-4o-mini-2024-07-18", "weight": 1},
                     {"upstream": "azure", "model": "gpt-4o-mini", "tier": 2}],
}
SECRET_NAMES = ["openai-api-key", "backup-openai-key", "azure-openai-key"]


def routed(llm: dict | None = None, names: list[str] = SECRET_NAMES, **more) -> tuple[dict, set]:
    """Staging with the upstreams and routes above; the cost assumes the route (the priced models
    are not callable by name in a routed stack)."""
    raw, keys = with_changes("staging", **{"traffic__model": "chat-default", **more})
    raw["llm-service:llm"] = {**raw["llm-service:llm"], "upstreams": UPSTREAMS, "routes": ROUTES, **(llm or {})}
    raw["llm-service:secrets"] = {**raw["llm-service:secrets"], "names": names}
    return raw, keys


@pytest.fixture(scope="module")
def stack(synth):
    return synth("staging", raw=routed()[0], secret_keys=routed()[1])


def refusal(raw: dict, keys: set) -> str:
    with pytest.raises(ConfigError) as err:
        load(raw, keys)
    return str(err.value).splitlines()[0]


@pytest.mark.parametrize(("llm", "key", "words"), [
    ({"routes": {"chat": [{"upstream": "elsewhere", "model": "gpt-4o"}]}},
     "llm-service:llm.routes.chat[0].upstream", "one of default, backup, azure"),
    ({"routes": {"chat": [{"model": "gpt-4o", "weight": 0},
                          {"upstream": "backup", "model": "gpt-4o", "weight": 0}]}},
     "llm-service:llm.routes.chat", "a weight above 0 on at least one target of each tier"),
    ({"routes": {"chat": [{"model": "gpt-4o"}, {"upstream": "azure", "model": "gpt-4o", "tier": 2, "weight": 0}]}},
     "llm-service:llm.routes.chat", "got 'tier 2'"),
    ({"routes": {"chat": [{"model": "gpt-5-unpriced"}]}},
     "llm-service:llm.routes.chat[0].model", "a model listed in llm.prices"),
    ({"routes": {"chat": []}}, "llm-service:llm.routes.chat", "at least one target"),
    ({"routes": {"bad name": [{"model": "gpt-4o"}]}}, "llm-service:llm.routes.bad name", "a model name"),
    ({"upstreams": {**UPSTREAMS, "azure": {**UPSTREAMS["azure"], "baseUrl": "https://acme.openai.azure.com/openai"}}},
     "llm-service:llm.upstreams.azure.baseUrl", "Azure OpenAI's v1 API"),
    ({"upstreams": {**UPSTREAMS, "azure": {**UPSTREAMS["azure"], "orgId": "org-1"}}},
     "llm-service:llm.upstreams.azure.orgId", "\"\" with auth api-key"),
    ({"upstreams": {**UPSTREAMS, "azure": {**UPSTREAMS["azure"], "projectId": "proj_1"}}},
     "llm-service:llm.upstreams.azure.projectId", "\"\" with auth api-key"),
    ({"upstreams": {**UPSTREAMS, "default": UPSTREAMS["backup"]}}, "llm-service:llm.upstreams.default",
     "other than `default`"),
    ({"upstreams": {**UPSTREAMS, "Backup_2": UPSTREAMS["backup"]}}, "llm-service:llm.upstreams.Backup_2",
     "a-z, 0-9 and -"),
    ({"upstreams": {**UPSTREAMS, "plain": {**UPSTREAMS["backup"], "baseUrl": "http://api.openai.com/v1"}}},
     "llm-service:llm.upstreams.plain.baseUrl", "https://"),
    ({"upstreams": {**UPSTREAMS, "odd": {**UPSTREAMS["backup"], "auth": "basic"}}},
     "llm-service:llm.upstreams.odd.auth", "bearer"),
])
def test_a_route_or_upstream_that_cannot_work_is_refused_naming_its_key(llm, key, words):
    first = refusal(*routed(llm))
    assert first.startswith(f"{key}: got "), first
    assert words in first, first


def test_an_upstreams_key_must_be_one_of_the_stacks_secrets():
    first = refusal(*routed(names=["openai-api-key", "backup-openai-key"]))
    assert first.startswith("llm-service:llm.upstreams.azure.secretName: got 'azure-openai-key'"), first
    assert "ops.apikey put --stack <stack> --name azure-openai-key" in first


def test_the_cost_estimate_may_assume_a_routed_model_and_not_an_unknown_one():
    cfg = load(*routed(traffic__model="chat-default"))
    assert cfg.traffic.model == "chat-default"
    first = refusal(*routed(traffic__model="chat-other"))
    assert first.startswith("llm-service:traffic.model: got 'chat-other'; one of the models in llm.routes "
                            "(chat-default)"), first
    first = refusal(*routed(traffic__model="gpt-4o-mini"))  # priced, but not callable in a routed stack
    assert first.startswith("llm-service:traffic.model: got 'gpt-4o-mini'; one of the models in llm.routes"), first


def test_a_snapshot_of_a_priced_model_is_priced_and_the_stack_file_keys_read_back():
    cfg = load(*routed())
    assert cfg.llm.priced("gpt-4o-mini-2024-07-18") and not cfg.llm.priced("gpt-4o-mini-2")
    assert cfg.llm.upstream_names == ["default", "backup", "azure"] and cfg.llm.routed
    assert [(t.upstream, t.weight, t.tier) for t in cfg.llm.routes["chat-default"]] == \
        [("default", 3, 1), ("backup", 1, 1), ("azure", 1, 2)]


def test_the_task_carries_upstreams_and_routes_the_gateway_reads_and_no_key(stack):
    app = container(stack)
    env = {e["name"]: e["value"] for e in app["environment"]}
    upstreams = json.loads(env["GATEWAY_UPSTREAMS"])
    assert upstreams == {
        "azure": {"auth": "api-key", "baseUrl": AZURE, "keyVariable": "AZURE_OPENAI_KEY", "orgId": "",
                  "projectId": ""},
        "backup": {"auth": "bearer", "baseUrl": "https://api.openai.com/v1", "keyVariable": "BACKUP_OPENAI_KEY",
                   "orgId": "", "projectId": "proj_backup"}}
    assert (env["GATEWAY_UPSTREAM_COOLDOWN_SECONDS"], env["GATEWAY_UPSTREAM_COOLDOWN_AFTER"]) == ("30", "3")
    # What the gateway makes of it, with the injected secrets as the task would have them.
    injected = {s["name"]: f"key-of-{s['name']}" for s in app["secrets"]}
    s = settings.from_env({**env, **injected, "CLIENT_KEYS": '{"version": 1, "clients": {}}'}, log=lambda _: None)
    assert {n: (u.url, u.auth, u.key) for n, u in s.upstreams.items()} == {
        "default": ("https://api.openai.com/v1", "bearer", "key-of-OPENAI_API_KEY"),
        "backup": ("https://api.openai.com/v1", "bearer", "key-of-BACKUP_OPENAI_KEY"),
        "azure": (AZURE, "api-key", "key-of-AZURE_OPENAI_KEY")}
    route = s.routes["chat-default"]
    assert [[(t.upstream, t.model, t.weight) for t in tier] for tier in route.tiers] == [
        [("default", "gpt-4o-mini-2024-07-18", 3), ("backup", "gpt-4o-mini-2024-07-18", 1)],
        [("azure", "gpt-4o-mini", 1)]]
    assert "key-of" not in json.dumps(env)


def test_each_upstreams_key_is_injected_from_its_own_secret_and_the_execution_role_reads_exactly_those(stack):
    app = container(stack)
    by_name = {s["name"]: s["valueFrom"] for s in app["secrets"]}
    arns = {d.name: d for d in stack.of_type("aws:secretsmanager/secret:Secret")}
    secret_names = {d.inputs["name"] for d in arns.values()}
    assert {"llm-service/staging/backup-openai-key", "llm-service/staging/azure-openai-key"} <= secret_names
    assert {"BACKUP_OPENAI_KEY", "AZURE_OPENAI_KEY", "OPENAI_API_KEY"} <= set(by_name)
    assert len(set(by_name.values())) == len(by_name)  # one secret each
    read, _ = policy(stack.one("aws:iam/rolePolicy:RolePolicy", "service-execution-secrets"))["Statement"]
    assert read["Resource"] == sorted(by_name.values())
    key = stack.one("aws:kms/key:Key")
    assert all(d.inputs["kmsKeyId"] == stack.outputs["kmsKeyArn"] for d in arns.values()) and key


def test_each_upstream_has_a_cooling_down_alarm_and_dashboard_widgets(stack):
    cooling = {a.inputs["name"]: a.inputs for a in stack.of_type(ALARM) if "cooling-down" in a.inputs["name"]}
    assert sorted(cooling) == [f"llm-service-staging-upstream-{u}-cooling-down"
                               for u in ("azure", "backup", "default")]
    one = cooling["llm-service-staging-upstream-backup-cooling-down"]
    assert (one["metricName"], one["statistic"], one["period"], one["evaluationPeriods"], one["threshold"],
            one["comparisonOperator"], one["treatMissingData"]) == \
        ("UpstreamCoolingDown", "Maximum", 300, 3, 1, "GreaterThanOrEqualToThreshold", "notBreaching")
    assert one["dimensions"] == {"Service": "llm-service-staging", "Upstream": "backup"}
    body = json.loads(stack.one("aws:cloudwatch/dashboard:Dashboard").inputs["dashboardBody"])
    lines = [m for w in body["widgets"] for m in w["properties"].get("metrics", []) if "Upstream" in m]
    assert {(m[1], m[m.index("Upstream") + 1]) for m in lines} == {
        (metric, u) for metric in ("UpstreamRequests", "UpstreamErrors", "UpstreamThrottled",
                                   "UpstreamCoolingDown", "UpstreamLatency")
        for u in ("default", "backup", "azure")}


def test_a_stack_with_one_upstream_declares_no_routing(staging, prod):
    for s in (staging, prod):
        env = {e["name"] for e in container(s)["environment"]}
        assert not env & {"GATEWAY_UPSTREAMS", "GATEWAY_ROUTES", "GATEWAY_UPSTREAM_COOLDOWN_SECONDS"}
        assert not [a for a in s.of_type(ALARM) if "cooling-down" in a.inputs["name"]]
        assert "UpstreamRequests" not in s.one("aws:cloudwatch/dashboard:Dashboard").inputs["dashboardBody"]


def test_the_plan_shows_the_model_table_and_the_cost_prices_a_routed_model_by_its_targets(stack):
    from gateway.limits import Price
    from offline import cost, plan

    routes = {"chat-default": [{"model": "gpt-4o-mini", "weight": 3}, {"upstream": "backup", "model": "gpt-4o"},
                               {"upstream": "azure", "model": "gpt-4o-mini", "tier": 2}]}
    cfg = load(*routed({"routes": routes}, traffic__model="chat-default"))
    rows = [(r.model, r.upstream, r.upstream_model, r.tier, r.share_percent) for r in cost.model_table(cfg)]
    assert rows == [("chat-default", "default", "gpt-4o-mini", 1, 75.0),
                    ("chat-default", "backup", "gpt-4o", 1, 25.0),
                    ("chat-default", "azure", "gpt-4o-mini", 2, 100.0)]  # routes: the priced models are not called
    assert [r.model for r in cost.model_table(load(*with_changes("staging")))] == \
        ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]  # no routes: every priced model, to `default`
    t = cfg.traffic
    tokens = (t.input_tokens_per_request, t.output_tokens_per_request)
    per_request = 0.75 * Price(0.15, 0.60).nano(*tokens) + 0.25 * Price(2.50, 10.00).nano(*tokens)
    assert cost.token_spend(cfg).without_cache == round(t.requests_per_day * cost.DAYS * per_request / 1e9, 2)
    text = plan.to_text(stack, load(*routed()))
    assert "  chat-default             tier 1   75.0%  default:gpt-4o-mini-2024-07-18" in text
    assert "  chat-default             tier 2  100.0%  azure:gpt-4o-mini" in text


def test_make_diff_names_an_alias_moved_in_one_stack_and_not_the_other():
    from offline.diff import config_lines

    moved = {"chat-default": [{**ROUTES["chat-default"][0], "model": "gpt-4o-mini-2025-04-14"},
                              *ROUTES["chat-default"][1:]]}
    staging, _ = routed({"routes": moved})
    prod, _ = routed()
    lines = [line for line in config_lines(staging, prod) if "llm.routes" in line]
    assert lines == ['  llm-service:llm.routes.chat-default: '
                     + json.dumps(moved["chat-default"], sort_keys=True) + " -> "
                     + json.dumps(ROUTES["chat-default"], sort_keys=True)]
    assert load(*routed({"routes": moved})).llm.routes["chat-default"][0].model == "gpt-4o-mini-2025-04-14"
