"""The config contract: every bad config fails with one message naming the key, before anything
is declared; the two stack files mirror each other."""

from __future__ import annotations

import pytest
import yaml

from infra.config import ConfigError, load
from infra.stack_files import ROOT
from tests.conftest import stack_config, with_changes

BAD = [
    # (id, stack, changes, key named, words the message must carry)
    ("min-above-max", "staging", {"service__minTasks": 5, "service__maxTasks": 2},
     "llm-service:service.minTasks", "maxTasks (2)"),
    ("fargate-pair", "staging", {"service__cpu": 256, "service__memory": 4096},
     "llm-service:service.memory", "[512, 1024, 2048]"),
    ("fargate-cpu", "staging", {"service__cpu": 3000},
     "llm-service:service.cpu", "[256, 512, 1024"),
    ("unknown-environment", "staging", {"environment": "dev"},
     "llm-service:environment", "allowed: 'staging' or 'prod'"),
    ("prod-two-azs", "prod", {"network__azCount": 2},
     "llm-service:network.azCount", "at least 3 AZs"),
    ("prod-single-az-cache", "prod", {"cache__multiAz": False},
     "llm-service:cache.multiAz", "prod needs true"),
    ("prod-failover-off", "prod", {"cache__automaticFailover": False},
     "llm-service:cache.automaticFailover", "requires automatic failover"),
    ("prod-no-failover", "prod", {"cache__automaticFailover": False, "cache__multiAz": False},
     "llm-service:cache.multiAz", "prod needs true"),
    ("prod-one-cache-node", "prod",
     {"cache__nodes": 1, "cache__multiAz": False, "cache__automaticFailover": False},
     "llm-service:cache.multiAz", "prod needs true"),
    ("plain-http", "staging", {"loadBalancer__httpMode": "plain"},
     "llm-service:loadBalancer.httpMode", "allowed: 'none' or 'redirect'"),
    ("certificate-not-an-arn", "staging",
     {"loadBalancer__certificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/staging"},
     "llm-service:loadBalancer.certificateArn", "certificate/<uuid>"),
    ("certificate-other-service", "staging",
     {"loadBalancer__certificateArn": "arn:aws:iam::123456789012:server-certificate/x"},
     "llm-service:loadBalancer.certificateArn", "arn:<partition>:acm:"),
    ("certificate-other-region", "staging",
     {"loadBalancer__certificateArn": "arn:aws:acm:eu-west-1:123456789012:certificate/"
                                      "5f0c2a3e-1b7d-4c9a-8e21-0a5b6c7d8e9f"},
     "llm-service:loadBalancer.certificateArn", "the certificate is in eu-west-1, the stack in us-east-1"),
    ("prod-single-nat", "prod", {"network__natStrategy": "single"},
     "llm-service:network.natStrategy", "per_az"),
    ("prod-short-snapshots", "prod", {"cache__snapshotRetentionDays": 1},
     "llm-service:cache.snapshotRetentionDays", "at least 7"),
    ("zero-budget", "staging", {"budget__monthlyLimitUsd": 0},
     "llm-service:budget.monthlyLimitUsd", "positive"),
    ("negative-budget", "prod", {"budget__monthlyLimitUsd": -10},
     "llm-service:budget.monthlyLimitUsd", "positive"),
    ("bad-email", "staging", {"monitoring__alertEmails": ["ops@", "x@example.com"]},
     "llm-service:monitoring.alertEmails[0]", "email"),
    ("cidr-too-small", "staging", {"network__cidr": "10.20.0.0/22"},
     "llm-service:network.cidr", "12 subnets of /20"),
    ("typo-key", "staging", {"service__maxTask": 4},
     "llm-service:service.maxTask", "unknown key"),
    ("bad-engine-version", "staging", {"cache__engineVersion": "6.0"},
     "llm-service:cache.engineVersion", "8.0"),
    ("failover-one-node", "staging", {"cache__automaticFailover": True},
     "llm-service:cache.nodes", "at least 2 nodes"),
    ("no-certificate", "staging", {"loadBalancer__certificateArn": ""},
     "llm-service:loadBalancer.certificateArn", "HTTPS needs"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_config_names_the_key_and_declares_nothing(synth, case):
    _, stack, changes, key, words = case
    with pytest.raises(ConfigError) as err:
        synth(stack, **changes)
    message = str(err.value)
    assert message.startswith(f"{key}: got "), message
    assert words in message, message
    assert err.value.declared == [], "nothing may be declared before the config passes"


def test_api_key_in_plain_text_anywhere_is_refused(synth):
    raw, keys = stack_config("staging")
    raw["llm-service:llm"]["orgId"] = "sk-proj-abcdefghijklmnopqrstuvwxyz0123"
    with pytest.raises(ConfigError) as err:
        synth("staging", raw=raw, secret_keys=keys)
    assert str(err.value).startswith("llm-service:llm.orgId: got 'sk-…(redacted)'")
    assert "abcdefghij" not in str(err.value), "the message must not echo the key"
    assert err.value.declared == []


def test_secret_value_not_marked_secret_is_refused(synth):
    raw, _ = with_changes("staging", secrets__source="pulumi")
    raw["llm-service:openai-api-key"] = "not-key-shaped-but-plain"
    with pytest.raises(ConfigError) as err:
        synth("staging", raw=raw, secret_keys=set())
    assert str(err.value).startswith("llm-service:openai-api-key: got '(redacted)'")
    assert "pulumi config set --secret openai-api-key" in str(err.value)
    assert "not-key-shaped" not in str(err.value)
    assert err.value.declared == []


def test_pulumi_source_without_a_value_is_refused(synth):
    raw, keys = with_changes("staging", secrets__source="pulumi")
    with pytest.raises(ConfigError, match=r"^llm-service:openai-api-key: got None"):
        synth("staging", raw=raw, secret_keys=keys)


def test_external_source_with_a_value_in_config_is_refused():
    raw, _ = stack_config("staging")
    raw["llm-service:openai-api-key"] = "whatever"
    with pytest.raises(ConfigError, match="secrets.source is external"):
        load(raw, {"llm-service:openai-api-key"})


def test_stack_files_pass_and_differ_where_they_should():
    staging = load(*stack_config("staging"))
    prod = load(*stack_config("prod"))
    assert (staging.environment, prod.environment) == ("staging", "prod")
    assert prod.network.az_count > staging.network.az_count
    assert prod.service.max_tasks > staging.service.max_tasks
    assert prod.service.cpu > staging.service.cpu
    assert prod.network.cidr != staging.network.cidr


def _keys(value, path=""):
    if isinstance(value, dict):
        keys = set()
        for k, v in value.items():
            keys |= {f"{path}.{k}"} | _keys(v, f"{path}.{k}")
        return keys
    return set()


def test_stack_files_mirror_each_other_key_for_key():
    docs = {s: yaml.safe_load((ROOT / f"Pulumi.{s}.yaml").read_text()) for s in ("staging", "prod")}
    assert _keys(docs["staging"]) == _keys(docs["prod"])


def test_stack_files_hold_no_secret_in_plain_text():
    for stack in ("staging", "prod"):
        text = (ROOT / f"Pulumi.{stack}.yaml").read_text()
        assert "sk-" not in text
        raw, secret_keys = stack_config(stack)
        assert not any(k.endswith("api-key") for k in raw), "external mode: no key in config"


def test_an_omitted_load_balancer_section_is_refused_not_plain_http(synth):
    raw, keys = stack_config("staging")
    del raw["llm-service:loadBalancer"]
    with pytest.raises(ConfigError) as err:
        synth("staging", raw=raw, secret_keys=keys)
    assert str(err.value) == ("llm-service:loadBalancer: got None; required: say where the HTTPS "
                              "certificate comes from (certificateArn, or domainName with hostedZoneId)")
    assert err.value.declared == []


def test_spot_with_arm64_is_accepted():
    """Fargate Spot runs ARM64 on platform 1.4.0+ (the rule's source: test_service.py)."""
    cfg = load(*with_changes("staging", service__architecture="ARM64", service__spotWeight=1))
    assert (cfg.service.architecture, cfg.service.spot_weight) == ("ARM64", 1)
