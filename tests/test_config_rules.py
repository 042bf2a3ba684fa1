"""The hand-written AWS tables agree with what botocore's service models carry, and the window,
tag and CIDR rules say no exactly where AWS does."""

from __future__ import annotations

import re

import botocore.session
import pytest

from components import cache as cache_rules
from components.cache import NODE_TYPES
from components.load_balancer import SSL_POLICIES, SSL_POLICIES_WITHOUT_TLS13
from infra import aws_rules
from policy.policies import TLS_POLICIES, tag_problems

SESSION = botocore.session.get_session()


def _doc(service: str, operation: str, member: str) -> str:
    shape = SESSION.get_service_model(service).operation_model(operation).input_shape
    return re.sub(r"<[^>]+>", " ", shape.members[member].documentation)


def test_every_node_type_is_current_generation_in_botocores_elasticache_model():
    text = _doc("elasticache", "CreateReplicationGroup", "CacheNodeType")
    current = " ".join(part.split("Previous generation")[0] for part in text.split("Current generation")[1:])
    listed = set(re.findall(r"cache\.[a-z0-9]+\.[a-z0-9]+", current))
    assert NODE_TYPES <= listed, sorted(NODE_TYPES - listed)
    assert "cache.t2.micro" in listed and "cache.t2.micro" not in NODE_TYPES, "T2: no new clusters"
    assert not {"cache.m3.large", "cache.t1.micro"} & NODE_TYPES, "previous generation"


def test_log_retention_values_are_the_ones_cloudwatch_logs_documents():
    text = _doc("logs", "PutRetentionPolicy", "retentionInDays")
    sentence = text.split("Possible values are:")[1].split(".")[0]
    assert set(aws_rules.LOG_RETENTION_DAYS) == {int(n) for n in re.findall(r"\d+", sentence)}


def test_every_allowed_ssl_policy_passes_the_policy_pack_and_no_refused_one_does():
    assert all(TLS_POLICIES.match(p) for p in SSL_POLICIES)
    assert not any(TLS_POLICIES.match(p) for p in SSL_POLICIES_WITHOUT_TLS13)
    assert "ELBSecurityPolicy-TLS13-1-2-2021-06" in SSL_POLICIES


def test_regions_come_from_botocore_for_every_partition():
    assert {"us-east-1", "eu-west-1", "us-gov-west-1", "cn-north-1"} <= aws_rules.regions()
    assert "us-east-7" not in aws_rules.regions()


@pytest.mark.parametrize("window, start, length", [
    ("sun:05:00-sun:06:00", 300, 60),
    ("sat:23:30-sun:00:30", 6 * 1440 + 1410, 60),  # across the end of the week
    ("mon:22:00-tue:02:00", 1440 + 1320, 240),
])
def test_weekly_windows_read_as_aws_writes_them(window, start, length):
    assert cache_rules.weekly_window(window) == (start, length)


@pytest.mark.parametrize("window, words", [
    ("sun:05:00-sun:05:59", "at least 60 minutes; this one is 59"),
    ("Sun:05:00-Sun:06:00", "lower case"),
    ("sun:05:00-sun:24:00", "ddd:hh24:mi"),
    ("sun:5:00-sun:6:00", "ddd:hh24:mi"),
])
def test_weekly_windows_aws_refuses(window, words):
    with pytest.raises(ValueError, match=words):
        cache_rules.weekly_window(window)


@pytest.mark.parametrize("window", ["03:00", "03:00-03:00", "3:00-4:00", "03:60-04:00"])
def test_daily_windows_aws_refuses(window):
    with pytest.raises(ValueError):
        cache_rules.daily_window(window)


@pytest.mark.parametrize("weekly, daily, overlap", [
    ("sun:05:00-sun:06:00", "03:00-04:00", False),
    ("sun:05:00-sun:06:00", "05:59-06:30", True),   # the end of the daily meets the weekly
    ("sun:05:00-sun:06:00", "04:30-05:01", True),   # the start of the weekly meets the daily
    ("sat:23:30-sun:00:30", "00:00-01:00", True),   # across the week's end
    ("sat:23:30-sun:00:30", "23:00-23:30", False),  # touching is not overlapping
    ("tue:10:00-tue:11:00", "23:30-10:30", True),   # a daily window across midnight
])
def test_windows_overlap_on_any_day(weekly, daily, overlap):
    spans = cache_rules.weekly_window(weekly), cache_rules.daily_window(daily)
    assert cache_rules.windows_overlap(*spans) is overlap


@pytest.mark.parametrize("key, value, bad", [
    ("CostCenter", "llm-42", False),
    ("Team Name", "Plattform Ünit", False),
    ("aws:created", "x", True),
    ("", "x", True),
    ("k", "x", False),  # each length at its edge, and one past it
    ("k" * 128, "x", False),
    ("k" * 129, "x", True),
    ("Owner", "v" * 256, False),
    ("Owner", "v" * 257, True),
    ("Owner", "", False),
    ("AWS:Created", "x", True),  # the prefix in any case
    ("Path", "a_b.c:d/e=f+g-h@i j", False),  # every punctuation AWS allows
    ("Owner", "a\tb", True),  # white space other than a space: a control character
    ("Owner", "a#b", True),
    ("Own*er", "x", True),
])
def test_tag_rules(key, value, bad):
    assert (aws_rules.tag_problem(key, value) is not None) is bad
    # The config's rule is the first line, the policy pack's the second: they must agree.
    assert bool(tag_problems({key: value})) is bad
