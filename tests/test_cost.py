"""The cost estimate: each line's arithmetic against the price table, every declared type priced
or named free, the token spend with and without the cache, and the budget check."""

from __future__ import annotations

import ast
import json
import os
import re
import sys
from pathlib import Path

import pytest

from offline import cost
from offline.synth import Declared
from tests.conftest import config_of

TABLE = cost.load_prices("us-east-1")


def price(key: str) -> float:
    return TABLE["items"][key]["usd"]


@pytest.fixture(scope="module")
def reports(staging, prod):
    return {s.stack: cost.estimate(s.stack, s.resources, config_of(s)) for s in (staging, prod)}


def line(report: cost.Report, item: str) -> cost.Line:
    (found,) = [x for x in report.lines if x.item == item]
    return found


def test_fargate_lines_price_each_tasks_size_by_architecture_and_spot_share(reports):
    # staging: ARM64, 0.5 vCPU and 1 GB, all on Spot, 1 to 3 tasks.
    s = reports["staging"]
    vcpu = line(s, "Fargate ARM64 Spot vCPU")
    assert vcpu.usd == round(1 * 0.5 * 730 * price("fargate_spot.vcpu_hour.ARM64"), 2)
    assert vcpu.usd_max == round(3 * 0.5 * 730 * price("fargate_spot.vcpu_hour.ARM64"), 2)
    assert line(s, "Fargate ARM64 Spot GB").usd == round(1 * 1 * 730 * price("fargate_spot.gb_hour.ARM64"), 2)
    assert not [x for x in s.lines if "on-demand" in x.item]
    # prod: on-demand base 3, 1 vCPU and 2 GB, 3 to 12 tasks.
    p = reports["prod"]
    assert line(p, "Fargate ARM64 on-demand vCPU").usd == round(3 * 1 * 730 * price("fargate.vcpu_hour.ARM64"), 2)
    assert line(p, "Fargate ARM64 on-demand GB").usd_max == round(12 * 2 * 730 * price("fargate.gb_hour.ARM64"), 2)


def test_a_spot_share_splits_tasks_beyond_the_base(synth, prod):
    # With Spot, the deregistration delay may not exceed the drain (infra/config/stack.py).
    s = synth("prod", service__fargateBase=2, service__fargateWeight=1, service__spotWeight=3,
              loadBalancer__deregistrationDelaySeconds=60)
    report = cost.estimate("prod", s.resources, config_of(prod))
    # min 3 tasks: 2 base on-demand, the third split 1:3; max 12: 2 + 10 * 1/4 on-demand.
    on = line(report, "Fargate ARM64 on-demand vCPU")
    spot = line(report, "Fargate ARM64 Spot vCPU")
    assert on.usd == round((2 + 0.25) * 730 * price("fargate.vcpu_hour.ARM64"), 2)
    assert spot.usd_max == round(10 * 0.75 * 730 * price("fargate_spot.vcpu_hour.ARM64"), 2)


@pytest.mark.parametrize("stack, item, expected", [
    ("staging", "NAT gateway hours", 1 * 730 * 0.045),
    ("prod", "NAT gateway hours", 3 * 730 * 0.045),
    ("prod", "NAT public IPv4 addresses", 3 * 730 * 0.005),
    ("prod", "interface endpoints", 5 * 3 * 730 * 0.01),
    ("staging", "ElastiCache valkey cache.t4g.micro", 1 * 730 * 0.0128),
    ("prod", "ElastiCache valkey cache.m7g.large", 2 * 730 * 0.1264),
    ("prod", "ALB hours", 730 * 0.0225),
    ("prod", "ALB public IPv4 addresses", 3 * 730 * 0.005),
    ("staging", "WAF web ACL and rules", 5.0 + 4 * 1.0),
    ("prod", "KMS keys", 1.0),
    ("prod", "secrets", 3 * 0.4),
    ("prod", "dashboards", 3.0),
    ("prod", "alarms", 21 * 0.1),  # 13 single-metric alarms, 4 metric-math alarms of 2 metrics
])
def test_fixed_lines_are_quantity_times_the_tables_price(reports, stack, item, expected):
    assert line(reports[stack], item).usd == round(expected, 2)


def test_alarm_metrics_are_counted_as_aws_bills_them(prod, reports):
    alarms = prod.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
    metrics = sum(max(1, len([q for q in a.inputs.get("metricQueries") or [] if q.get("metric")])) for a in alarms)
    assert line(reports["prod"], "alarms").quantity.startswith(f"{len(alarms)} alarms reading {metrics} metrics")


def test_traffic_lines_follow_the_assumptions(reports, prod):
    t = config_of(prod).traffic
    month = t.requests_per_day * 730 / 24
    p = reports["prod"]
    assert line(p, "WAF requests").usd == round(month / 1e6 * 0.6, 2)
    misses = month * (1 - t.cache_hit_rate_percent / 100)
    nat_gb = misses * (t.request_kilobytes + t.response_kilobytes) / 1024 ** 2
    assert line(p, "NAT data to the LLM API").usd == round(nat_gb * 0.045, 2)
    assert not line(p, "WAF requests").fixed and line(p, "NAT gateway hours").fixed


def test_token_spend_with_and_without_the_cache(reports, prod):
    t = config_of(prod).traffic
    mini = config_of(prod).llm.prices["gpt-4o-mini"]
    month = t.requests_per_day * 730 / 24 * (t.input_tokens_per_request * mini.input_per_million
                                             + t.output_tokens_per_request * mini.output_per_million) / 1e6
    tokens = reports["prod"].tokens
    assert tokens.without_cache == round(month, 2)
    assert tokens.with_cache == round(month * (1 - t.cache_hit_rate_percent / 100), 2)


def test_totals_add_up(reports):
    for r in reports.values():
        assert r.total == round(sum(x.usd for x in r.lines), 2)
        assert r.fixed == round(sum(x.usd for x in r.lines if x.fixed), 2)
        assert r.total_max >= r.total
        doc = cost.to_json(r)
        assert doc["monthlyTotal"] == round(r.total + r.tokens.with_cache, 2)
        assert cost.to_text(r).splitlines()[-1].startswith(f"monthly total: ${doc['monthlyTotal']:,.2f}")


def test_every_declared_type_is_priced_or_named_free(stack):
    assert {r.type for r in stack.resources if not r.type.startswith("llm-service:")} <= set(cost.BILLING)


def test_a_new_billable_resource_without_a_price_line_fails(staging):
    rds = Declared("aws:rds/instance:Instance", "db", custom=True)
    with pytest.raises(cost.Unpriced, match="aws:rds/instance:Instance has no line"):
        cost.estimate("staging", [*staging.resources, rds], config_of(staging))


def test_a_node_type_without_a_price_says_to_refresh(synth, staging):
    s = synth("staging", cache__nodeType="cache.r6g.4xlarge")
    with pytest.raises(cost.Unpriced, match=r"elasticache.valkey.cache.r6g.4xlarge.*offline.cost refresh"):
        cost.estimate("staging", s.resources, config_of(staging))


def test_a_region_without_a_table_says_to_refresh():
    with pytest.raises(cost.Unpriced, match="no price table for eu-west-1"):
        cost.load_prices("eu-west-1")


def test_every_price_names_its_source():
    assert TABLE["recorded"] and TABLE["basis"]
    for key, item in TABLE["items"].items():
        assert item["usd"] >= 0 and item["unit"] and item["page"] and item["product"], key


def test_a_budget_below_the_fixed_cost_is_warned_about(reports, staging):
    cfg = config_of(staging)
    assert cost.budget_warning(reports["staging"], cfg) is None  # the shipped $150 clears it
    low = cfg.model_copy(update={"budget": cfg.budget.model_copy(update={"monthly_limit_usd": 50.0})})
    warning = cost.budget_warning(reports["staging"], low)
    assert warning.startswith("warning: llm-service:budget.monthlyLimitUsd is $50.00, below")


def test_cost_command_prints_lines_and_totals(capsys):
    assert cost.main(["--stack", "staging", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["stack"] == "staging" and doc["lines"] and doc["awsTotal"] > 0


def _shown_product(quantity: str, at_max: bool) -> float:
    """The figure a reader gets by multiplying out a line's quantity: `x` is times, `a to b` the
    minimum (or maximum) task count, words and a leading label ("5 endpoints, ...", "17 alarms
    reading ...") are not figures."""
    q = quantity.rsplit(", ", 1)[-1].split(" reading ")[-1]
    q = re.sub(r"\([^()\d]*\)", "", q)  # "(one per AZ)"
    q = re.sub(r"(\d),(\d)", r"\1\2", q)
    q = re.sub(r"([\d.]+) to ([\d.]+)", lambda m: m[2] if at_max else m[1], q)
    q = re.sub(r"\bx\b", "*", q)
    expr = re.sub(r"[^\d.+*() ]", " ", q).strip()
    return eval(compile(ast.parse(expr, mode="eval"), "<quantity>", "eval"), {"__builtins__": {}})  # noqa: S307


def _check_as_a_reader(report: cost.Report, table: dict) -> None:
    """What a reader checks by hand: each line's dollars are its quantity multiplied out (the
    shown figures are rounded, hence the tolerance), and every price it shows is in the table."""
    prices = {item["usd"] for item in table["items"].values()}
    for x in report.lines:
        for at_max, usd in ((False, x.usd), (True, x.usd_max)):
            assert usd == pytest.approx(_shown_product(x.quantity, at_max), rel=0.02, abs=0.011), x
        assert {float(p) for p in re.findall(r"\$([\d.]+)", x.quantity)} <= prices, x
        assert x.fixed == ("[traffic]" not in cost.to_text(cost.Report(**{**vars(report), "lines": [x]})))


@pytest.mark.parametrize("stack_name", ["staging", "prod"])
def test_every_line_is_the_product_its_quantity_shows_at_the_tables_prices(reports, stack_name):
    _check_as_a_reader(reports[stack_name], TABLE)


def test_every_line_is_still_its_quantity_multiplied_out_at_other_prices(prod, monkeypatch):
    """At the table's own prices some are $1.00, where times and divided-by agree: with every
    price changed, each line must still be what its quantity shows."""
    odd = {**TABLE, "items": {k: {**v, "usd": round(v["usd"] * 1.37 + 0.011, 5)}
                              for k, v in TABLE["items"].items()}}
    monkeypatch.setattr(cost, "load_prices", lambda region: odd)
    _check_as_a_reader(cost.estimate("prod", prod.resources, config_of(prod)), odd)


@pytest.mark.parametrize("request_kb,response_kb,leads", [(4.0, 2.0, "connections"), (100.0, 60.0, "bytes")])
def test_alb_lcus_are_the_largest_of_new_connections_and_processed_bytes(synth, request_kb, response_kb, leads):
    from infra.config import load
    from tests.conftest import with_changes

    changes = {"traffic__requestKilobytes": request_kb, "traffic__responseKilobytes": response_kb}
    cfg = load(*with_changes("prod", **changes))
    lcu = line(cost.estimate("prod", synth("prod", **changes).resources, cfg), "ALB LCUs at the assumed traffic")
    per_day = cfg.traffic.requests_per_day
    by = {"connections": per_day / 86400 / 25, "bytes": per_day / 24 * (request_kb + response_kb) / 1024 ** 2}
    assert max(by, key=by.get) == leads
    assert lcu.quantity.startswith(f"{by[leads]:.3f} LCU x 730 h")
    assert lcu.usd == round(by[leads] * 730 * price("alb.lcu_hour"), 2)


GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("name,argv", [("cost-staging.txt", ["--stack", "staging"]),
                                       ("cost-prod.txt", ["--stack", "prod"]),
                                       ("cost-prod.json", ["--stack", "prod", "--json"])])
def test_the_cost_report_is_the_reviewed_one(capsys, name, argv):
    """The report as docs/cost.md and a reviewer read it, line for line. After a deliberate change to
    the stacks, the prices or the wording: UPDATE_GOLDEN=1 pytest tests/test_cost.py, and review."""
    assert cost.main(argv) == 0
    got = capsys.readouterr().out
    if os.environ.get("UPDATE_GOLDEN"):
        (GOLDEN / name).write_text(got)
    assert got == (GOLDEN / name).read_text()


def _stack_files(tmp_path: Path, **budget: float) -> Path:
    import yaml

    from infra.stack_files import ROOT

    for stack in ("staging", "prod"):
        doc = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())
        if budget:
            doc["config"]["llm-service:budget"].update(budget)
        (tmp_path / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return tmp_path


def test_cost_command_says_what_it_is_and_needs_a_stack(capsys):
    with pytest.raises(SystemExit) as done:
        cost.main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith("usage: python -m offline.cost [-h] --stack STACK [--json]")
    assert "What a stack costs a month" in out and re.search(r"--dir DIR\s+where the stack files are", out)
    described = " ".join(out.split("\n\n")[1].split())
    assert described == cost.__doc__.split("\n")[0], "the description is the docstring's first line, no more"
    with pytest.raises(SystemExit) as done:
        cost.main([])
    assert done.value.code == 2 and "the following arguments are required: --stack" in capsys.readouterr().err


def test_cost_command_reads_the_stack_files_it_is_pointed_at_and_warns_of_a_low_budget(capsys, tmp_path):
    where = _stack_files(tmp_path, monthlyLimitUsd=50)
    assert cost.main(["--stack", "staging", "--dir", str(where)]) == 0
    out, err = capsys.readouterr()
    assert out == (GOLDEN / "cost-staging.txt").read_text(), "the same stack, read from elsewhere"
    assert err.startswith("warning: llm-service:budget.monthlyLimitUsd is $50.00, below the stack's fixed")
    assert err.count("\n") == 1


def test_cost_command_exits_2_with_one_line_for_a_bad_or_missing_stack(capsys, tmp_path):
    where = _stack_files(tmp_path, monthlyLimitUsd=-1)
    assert cost.main(["--stack", "staging", "--dir", str(where)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("config error: llm-service:budget.monthlyLimitUsd")
    assert cost.main(["--stack", "qa", "--dir", str(where)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "error: no stack file Pulumi.qa.yaml; stacks: ['prod', 'staging']\n"


def test_cost_refresh_is_handed_the_rest_of_the_command_line(monkeypatch):
    import offline.prices_refresh

    seen = []
    monkeypatch.setattr(offline.prices_refresh, "main", lambda argv: seen.append(argv) or 7)
    assert cost.main(["refresh", "--region", "eu-west-1"]) == 7
    assert seen == [["--region", "eu-west-1"]]
    monkeypatch.setattr(sys, "argv", ["offline.cost", "refresh", "--region", "us-west-2"])
    assert cost.main() == 7 and seen[-1] == ["--region", "us-west-2"]


def test_a_budget_exactly_at_the_fixed_cost_is_not_warned_about(reports, staging):
    cfg = config_of(staging)
    fixed = reports["staging"].fixed
    at = cfg.model_copy(update={"budget": cfg.budget.model_copy(update={"monthly_limit_usd": fixed})})
    assert cost.budget_warning(reports["staging"], at) is None
    under = cfg.model_copy(update={"budget": cfg.budget.model_copy(update={"monthly_limit_usd": fixed - 0.01})})
    assert cost.budget_warning(reports["staging"], under).endswith(
        "the budget alert would fire every month; raise it above the estimate")


def test_token_spend_and_totals_are_rounded_to_the_cent_at_any_traffic(synth):
    """Shipped traffic gives whole-cent figures; these do not."""
    from infra.config import load
    from tests.conftest import with_changes

    changes = {"traffic__requestsPerDay": 12_345, "traffic__inputTokensPerRequest": 777,
               "traffic__outputTokensPerRequest": 333, "traffic__cacheHitRatePercent": 17}
    cfg = load(*with_changes("staging", **changes))
    r = cost.estimate("staging", synth("staging", **changes).resources, cfg)
    month = 12_345 * 730 / 24 * (777 * 0.15 + 333 * 0.60) / 1e6
    assert (r.tokens.without_cache, r.tokens.with_cache) == (round(month, 2), round(month * 0.83, 2))
    assert r.tokens.without_cache != round(month, 3) and r.tokens.with_cache != round(month * 0.83, 3)
    assert cost.to_json(r)["monthlyTotal"] == round(r.total + r.tokens.with_cache, 2)


def test_a_stack_shaped_unlike_the_shipped_ones_is_priced_by_what_it_declares(staging):
    """What a fork may declare: a fixed task count on the default provider, x86 tasks, a cache
    group that names no engine or node count, Container Insights `enhanced`, log groups that
    keep logs for ever by default, no flow logs."""
    cfg = config_of(staging)
    resources = [
        Declared("aws:ecs/service:Service", "svc", False, inputs={"desiredCount": 2}),
        Declared("aws:ecs/taskDefinition:TaskDefinition", "task", False, inputs={"cpu": "256", "memory": "512"}),
        Declared("aws:ecs/cluster:Cluster", "cluster", False,
                 inputs={"settings": [{"name": "containerInsights", "value": "enhanced"}]}),
        Declared("aws:elasticache/replicationGroup:ReplicationGroup", "cache", False,
                 inputs={"nodeType": "cache.t4g.micro"}),
        Declared("aws:cloudwatch/logGroup:LogGroup", "a", False),
        Declared("aws:cloudwatch/logGroup:LogGroup", "b", False, inputs={"retentionInDays": 7}),
    ]
    r = cost.estimate("fork", resources, cfg)
    vcpu = line(r, "Fargate X86_64 on-demand vCPU")
    assert (vcpu.usd, vcpu.usd_max) == (round(2 * 0.25 * 730 * price("fargate.vcpu_hour.X86_64"), 2),) * 2
    assert vcpu.quantity.startswith("2 to 2 tasks x 0.25 vCPU")
    assert not [x for x in r.lines if "Spot" in x.item]
    assert line(r, "Container Insights metrics").usd == round(17 * price("cloudwatch.metric_month"), 2)
    group = line(r, "ElastiCache valkey cache.t4g.micro")
    assert group.usd == round(730 * price("elasticache.valkey.cache.t4g.micro"), 2)
    month = cfg.traffic.requests_per_day * 730 / 24
    gb = month * (0.7 + 1.5) / 1024 ** 2  # the gateway's lines and WAF's, no flow logs
    assert line(r, "log ingestion").quantity == f"2 groups, {gb:.2f} GB x $0.5"
    assert line(r, "log storage").usd == round(gb * 30 / 30.4 * price("logs.storage_gb_month"), 2), \
        "a group without a retention counts as 30 days, the longest of the two"
    forever = [x for x in resources if x.name != "b"] + [
        Declared("aws:cloudwatch/logGroup:LogGroup", "b", False, inputs={"retentionInDays": 3653})]
    kept = line(cost.estimate("fork", forever, cfg), "log storage")
    assert kept.usd == round(gb * 365 / 30.4 * price("logs.storage_gb_month"), 2), "a year's logs at most"


@pytest.mark.parametrize("strategies,tasks,on_demand", [
    ([{"capacityProvider": "FARGATE_SPOT", "weight": 1}], 4, 0.0),
    ([{"capacityProvider": "FARGATE", "base": 1, "weight": 1}, {"capacityProvider": "FARGATE_SPOT", "weight": 3}],
     5, 2.0),
    ([{"capacityProvider": "FARGATE", "base": 2}], 5, 5.0),
    ([{"capacityProvider": "FARGATE", "weight": 1}, {"capacityProvider": "FARGATE_SPOT", "weight": 1}], 4, 2.0),
    ([], 3, 3.0),
])
def test_tasks_split_between_on_demand_and_spot_as_ecs_places_them(staging, strategies, tasks, on_demand):
    svc = Declared("aws:ecs/service:Service", "svc", False, inputs={"capacityProviderStrategies": strategies})
    e = cost.Estimate([svc], config_of(staging), TABLE)
    assert cost._tasks(e, tasks) == (on_demand, tasks - on_demand)


def test_cost_and_diff_read_the_stack_file_they_are_pointed_at_with_its_secrets(capsys, tmp_path):
    """`secrets.source: pulumi`: the key is a `secure:` value in the stack file, which the
    commands must read as secret (else the contract refuses it), and the resources priced are
    the ones that file declares, not the checkout's."""
    import yaml

    from offline import diff

    where = _stack_files(tmp_path)
    doc = yaml.safe_load((where / "Pulumi.staging.yaml").read_text())
    doc["config"]["llm-service:secrets"]["source"] = "pulumi"
    doc["config"]["llm-service:openai-api-key"] = {"secure": "v1:c2VjcmV0IGJ5IHB1bHVtaQ=="}
    doc["config"]["llm-service:cache"]["nodeType"] = "cache.t4g.small"  # and what it declares is its own
    (where / "Pulumi.staging.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    assert cost.main(["--stack", "staging", "--dir", str(where)]) == 0
    out = capsys.readouterr().out
    assert "ElastiCache valkey cache.t4g.small" in out and "cache.t4g.micro" not in out
    assert diff.main(["--dir", str(where)]) == 0
    out = capsys.readouterr().out
    assert "  llm-service:secrets.source: 'pulumi' -> 'external'" in out
    assert "cache-group: nodeType 'cache.t4g.small' -> 'cache.m7g.large'" in out
    assert "c2VjcmV0" not in out


def _fork_config(requests_per_day: int = 5_000_000):
    """Traffic large enough that a day more or less of logs shows in the cents."""
    from infra.config import load
    from tests.conftest import with_changes

    return load(*with_changes("staging", traffic__requestsPerDay=requests_per_day))


def _fork(*extra: Declared) -> list:
    return [Declared("aws:ecs/service:Service", "svc", False),
            Declared("aws:ecs/taskDefinition:TaskDefinition", "task", False,
                     inputs={"cpu": "1024", "memory": "2048"}), *extra]


def test_a_service_that_names_no_count_runs_one_task():
    vcpu = line(cost.estimate("fork", _fork(), _fork_config()), "Fargate X86_64 on-demand vCPU")
    assert vcpu.quantity.startswith("1 to 1 tasks x 1 vCPU")


def test_a_redis_cache_is_priced_as_redis_and_an_unpriced_engine_says_so():
    redis = Declared("aws:elasticache/replicationGroup:ReplicationGroup", "c", False,
                     inputs={"nodeType": "cache.t4g.micro", "engine": "redis", "numCacheClusters": 2})
    group = line(cost.estimate("fork", _fork(redis), _fork_config()), "ElastiCache redis cache.t4g.micro")
    assert group.usd == round(2 * 730 * price("elasticache.redis.cache.t4g.micro"), 2)
    memcached = Declared("aws:elasticache/replicationGroup:ReplicationGroup", "c", False,
                         inputs={"nodeType": "cache.t4g.micro", "engine": "memcached"})
    with pytest.raises(cost.Unpriced, match="no price for elasticache.memcached.cache.t4g.micro"):
        cost.estimate("fork", _fork(memcached), _fork_config())


@pytest.mark.parametrize("retentions,days", [([None], 30), ([None, 7], 30), ([14, 60], 60),
                                             ([3653], 365), ([400, 7], 365)])
def test_log_storage_is_kept_for_the_longest_retention_a_year_at_most(retentions, days):
    """A group without a retention: 30 days (CloudWatch's default is for ever; the estimate assumes
    a month); capped at a year: the estimate is of the first year's bill."""
    groups = [Declared("aws:cloudwatch/logGroup:LogGroup", f"g{i}", False,
                       inputs={} if r is None else {"retentionInDays": r}) for i, r in enumerate(retentions)]
    cfg = _fork_config()
    month = cfg.traffic.requests_per_day * 730 / 24
    gb = month * (0.7 + 1.5) / 1024 ** 2
    stored = line(cost.estimate("fork", _fork(*groups), cfg), "log storage")
    assert stored.usd == round(gb * days / 30.4 * price("logs.storage_gb_month"), 2)
    assert stored.usd != round(gb * (days + 1) / 30.4 * price("logs.storage_gb_month"), 2), "a day shows"
