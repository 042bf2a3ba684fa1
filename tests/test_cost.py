"""The cost estimate: each line's arithmetic against the price table, every declared type priced
or named free, the token spend with and without the cache, and the budget check."""

from __future__ import annotations

import ast
import json
import os
import re
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
    # With Spot, the deregistration delay may not exceed the drain (infra/config.py).
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


@pytest.mark.parametrize("stack_name", ["staging", "prod"])
def test_every_line_is_the_product_its_quantity_shows_at_the_tables_prices(reports, stack_name):
    """What a reader checks by hand: each line's dollars are its quantity multiplied out (the
    shown figures are rounded, hence the tolerance), and every price it shows is in the table."""
    table = {item["usd"] for item in TABLE["items"].values()}
    for x in reports[stack_name].lines:
        for at_max, usd in ((False, x.usd), (True, x.usd_max)):
            assert usd == pytest.approx(_shown_product(x.quantity, at_max), rel=0.02, abs=0.011), x
        assert {float(p) for p in re.findall(r"\$([\d.]+)", x.quantity)} <= table, x
        assert x.fixed == ("[traffic]" not in cost.to_text(cost.Report(**{**vars(reports[stack_name]),
                                                                          "lines": [x]})))


GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("name,argv", [("cost-staging.txt", ["--stack", "staging"]),
                                       ("cost-prod.txt", ["--stack", "prod"]),
                                       ("cost-prod.json", ["--stack", "prod", "--json"])])
def test_the_cost_report_is_the_reviewed_one(capsys, name, argv):
    """The report as README and a reviewer read it, line for line. After a deliberate change to
    the stacks, the prices or the wording: UPDATE_GOLDEN=1 pytest tests/test_cost.py, and review."""
    assert cost.main(argv) == 0
    got = capsys.readouterr().out
    if os.environ.get("UPDATE_GOLDEN"):
        (GOLDEN / name).write_text(got)
    assert got == (GOLDEN / name).read_text()
