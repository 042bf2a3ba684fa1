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


KEEPALIVE = ("gateway.sseKeepaliveSeconds", "at most a third of loadBalancer.idleTimeoutSeconds ({idle}): {third} "
             "or less, or the load balancer cuts streams whose model is thinking")
RETRIES = ("gateway.retryBudgetSeconds", "at most half of loadBalancer.idleTimeoutSeconds ({idle}): the client "
           "receives nothing while the gateway retries")
WAIT = ("gateway.coalesceWaitSeconds", "with retryBudgetSeconds ({retry}) at most half of "
        "loadBalancer.idleTimeoutSeconds ({idle}): a request waiting for another's answer, then retrying, "
        "receives nothing meanwhile")


# Each rule at its edge and one past it; the shipped stacks have idleTimeoutSeconds 600,
# sseKeepaliveSeconds 15, retryBudgetSeconds 20 and coalesceWaitSeconds 30.
@pytest.mark.parametrize("stack", ["staging", "prod"])
@pytest.mark.parametrize(("changes", "refused", "got"), [
    ({"gateway__sseKeepaliveSeconds": 200}, None, None),
    ({"gateway__sseKeepaliveSeconds": 201}, KEEPALIVE, 201),
    # 15 x 3 = 45, 20 x 2 = 40 and (20 + 2) x 2 = 44 fit an idle timeout of 45, the first not one of 44
    ({"loadBalancer__idleTimeoutSeconds": 45, "gateway__coalesceWaitSeconds": 2}, None, None),
    ({"loadBalancer__idleTimeoutSeconds": 44, "gateway__coalesceWaitSeconds": 2}, KEEPALIVE, 15),
    ({"gateway__retryBudgetSeconds": 300, "gateway__coalesceWaitSeconds": 0}, None, None),
    ({"gateway__retryBudgetSeconds": 301, "gateway__coalesceWaitSeconds": 0}, RETRIES, 301),
    ({"gateway__coalesceWaitSeconds": 280}, None, None),
    ({"gateway__coalesceWaitSeconds": 281}, WAIT, 281),
    ({"gateway__retryBudgetSeconds": 271}, WAIT, 30),
], ids=lambda v: "-".join(f"{k.split('__')[1]}={x}" for k, x in v.items()) if isinstance(v, dict) else None)
def test_streams_survive_the_idle_timeout_each_rule_on_each_side_of_its_edge(stack, changes, refused, got):
    """Keepalives three times within the idle timeout, retries within half of it, and a coalesced
    wait with its retries within half too: what the client receives nothing during."""
    raw = with_changes(stack, **changes)
    if refused is None:
        load(*raw)
        return
    key, text = refused
    c = {k.split("__")[1]: v for k, v in changes.items()}
    idle = c.get("idleTimeoutSeconds", 600)
    with pytest.raises(ConfigError) as err:
        load(*raw)
    assert str(err.value) == f"llm-service:{key}: got {got}; " + text.format(
        idle=idle, third=idle // 3, retry=c.get("retryBudgetSeconds", 20))


DELAY, STOP = "loadBalancer__deregistrationDelaySeconds", "service__stopTimeoutSeconds"
SPOT = ("at most {spot} while tasks run on Fargate Spot (service.spotWeight 1): an interruption sends SIGTERM "
        "while the load balancer still routes to the task for up to 50 s, and a stream started then has the rest "
        "of the gateway's drain (service.stopTimeoutSeconds - 5 = {drain}); lower the delay, or raise "
        "stopTimeoutSeconds (Fargate: at most 120)")


# Staging runs on Spot with stopTimeoutSeconds 120: a stream started at an interruption has the
# drain (115 s) less the 50 s the load balancer may still route to the task, 65 s.
@pytest.mark.parametrize(("stack", "changes", "refused", "bound"), [
    ("staging", {}, None, 60),
    ("staging", {DELAY: 65}, None, 65),
    ("staging", {DELAY: 66}, (65, 115), None),
    ("staging", {STOP: 110, DELAY: 55}, None, 55),
    ("staging", {STOP: 110, DELAY: 56}, (55, 105), None),
    ("prod", {}, None, 300),
    ("prod", {"service__spotWeight": 1}, (65, 115), None),
    ("prod", {"service__spotWeight": 1, DELAY: 65}, None, 65),
])
def test_a_stream_survives_every_way_a_task_stops_up_to_the_stated_bound(stack, changes, refused, bound):
    from infra.config import stream_bound_seconds

    raw = with_changes(stack, **changes)
    if refused is None:
        assert stream_bound_seconds(load(*raw)) == bound
        return
    spot, drain = refused
    delay = changes.get(DELAY, 300 if stack == "prod" else 60)
    with pytest.raises(ConfigError) as err:
        load(*raw)
    assert str(err.value) == f"llm-service:loadBalancer.deregistrationDelaySeconds: got {delay}; " + SPOT.format(
        spot=spot, drain=drain)


def test_the_drain_and_a_spot_stream_are_never_negative():
    from infra.config.sections import drain_seconds, spot_stream_seconds

    assert [drain_seconds(s) for s in (2, 5, 6, 120)] == [0, 0, 1, 115]
    assert [spot_stream_seconds(s) for s in (2, 55, 56, 120)] == [0, 0, 1, 65]
