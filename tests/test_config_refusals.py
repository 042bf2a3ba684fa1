"""Every value AWS would refuse is refused by the config contract first: one line naming the key
as written, exit 2, nothing declared. Each case is a plausible mistake in a copy of a shipped
stack file."""

from __future__ import annotations

import pytest
import yaml

from infra.config import ConfigError, load
from offline import plan
from tests.conftest import stack_config, with_changes

CERT_WEST_1 = "arn:aws:acm:us-west-1:123456789012:certificate/5f0c2a3e-1b7d-4c9a-8e21-0a5b6c7d8e9f"


def _tags(n: int) -> dict:
    return {f"Team{i}": "x" for i in range(n)}


BAD = [
    # (id, stack, changes, key the first line names, words it must carry)
    ("node-type-unknown", "staging", {"cache__nodeType": "cache.t4g.huge"},
     "llm-service:cache.nodeType", "current-generation ElastiCache node type"),
    ("node-type-typo", "staging", {"cache__nodeType": "cache.m7g.larg"},
     "llm-service:cache.nodeType", "did you mean cache.m7g.large?"),
    ("node-type-t2", "staging", {"cache__nodeType": "cache.t2.micro"},
     "llm-service:cache.nodeType", "not a current-generation"),
    ("node-type-ec2-name", "prod", {"cache__nodeType": "m7g.large"},
     "llm-service:cache.nodeType", "cache.m7g.large"),
    ("log-retention-45", "staging", {"service__logRetentionDays": 45},
     "llm-service:service.logRetentionDays", "1, 3, 5, 7, 14, 30, 60"),
    ("log-retention-0", "staging", {"network__flowLogRetentionDays": 0},
     "llm-service:network.flowLogRetentionDays", "PutRetentionPolicy"),
    ("cache-log-retention", "prod", {"cache__logRetentionDays": 10},
     "llm-service:cache.logRetentionDays", "3653"),
    ("waf-log-retention", "staging", {"edge__logRetentionDays": 2},
     "llm-service:edge.logRetentionDays", "one of"),
    ("cidr-prefix-over-32", "staging", {"loadBalancer__ingressCidrs": ["10.0.0.0/8", "10.0.0.0/33"]},
     "llm-service:loadBalancer.ingressCidrs[1]", "not an IPv4 CIDR"),
    ("cidr-host-bits", "staging", {"loadBalancer__ingressCidrs": ["10.1.2.3/8"]},
     "llm-service:loadBalancer.ingressCidrs[0]", "has host bits set"),
    ("cidr-a-word", "prod", {"loadBalancer__ingressCidrs": ["office"]},
     "llm-service:loadBalancer.ingressCidrs[0]", "not an IPv4 CIDR"),
    ("ipv6-given-ipv4", "staging", {"loadBalancer__ingressIpv6Cidrs": ["0.0.0.0/0"]},
     "llm-service:loadBalancer.ingressIpv6Cidrs[0]", "IPv4 CIDR where IPv6"),
    ("nobody-may-connect", "staging",
     {"loadBalancer__ingressCidrs": [], "loadBalancer__ingressIpv6Cidrs": []},
     "llm-service:loadBalancer.ingressCidrs", "nobody can reach"),
    ("ssl-policy-unknown", "staging", {"loadBalancer__sslPolicy": "ELBSecurityPolicy-TLS13-1-2-2099-01"},
     "llm-service:loadBalancer.sslPolicy", "not an ALB security policy with TLS 1.3"),
    ("ssl-policy-without-tls13", "prod", {"loadBalancer__sslPolicy": "ELBSecurityPolicy-2016-08"},
     "llm-service:loadBalancer.sslPolicy", "offers no TLS 1.3"),
    ("maintenance-window-format", "staging", {"cache__maintenanceWindow": "Sun 05:00-06:00"},
     "llm-service:cache.maintenanceWindow", "ddd:hh24:mi-ddd:hh24:mi"),
    ("maintenance-window-short", "prod", {"cache__maintenanceWindow": "sun:05:00-sun:05:30"},
     "llm-service:cache.maintenanceWindow", "at least 60 minutes; this one is 30"),
    ("maintenance-window-hour-25", "staging", {"cache__maintenanceWindow": "sun:25:00-mon:01:00"},
     "llm-service:cache.maintenanceWindow", "ddd:hh24:mi-ddd:hh24:mi"),
    ("snapshot-window-format", "prod", {"cache__snapshotWindow": "3-4"},
     "llm-service:cache.snapshotWindow", "hh24:mi-hh24:mi"),
    ("windows-overlap", "prod", {"cache__maintenanceWindow": "tue:03:30-tue:04:30"},
     "llm-service:cache.snapshotWindow", "overlaps the maintenance window (tue:03:30-tue:04:30)"),
    ("windows-overlap-across-midnight", "staging",
     {"cache__maintenanceWindow": "sat:23:30-sun:00:45", "cache__snapshotWindow": "00:30-01:30"},
     "llm-service:cache.snapshotWindow", "overlaps"),
    ("region-that-does-not-exist", "staging", {"aws:region": "us-east-7"},
     "aws:region", "not an AWS region"),
    ("region-typo", "staging", {"aws:region": "eu-wset-1"},
     "aws:region", "did you mean eu-west-1?"),
    ("more-azs-than-the-region", "staging",
     {"aws:region": "us-west-1", "network__azCount": 3, "loadBalancer__certificateArn": CERT_WEST_1},
     "llm-service:network.azCount", "us-west-1 has 2 standard AZs"),
    ("prod-in-a-two-az-region", "prod",
     {"aws:region": "us-west-1", "loadBalancer__certificateArn": CERT_WEST_1},
     "llm-service:network.azCount", "prod needs 3"),
    ("empty-image", "staging", {"service__image": ""},
     "llm-service:service.image", "image reference"),
    ("image-with-a-space", "staging", {"service__image": "my app:latest"},
     "llm-service:service.image", "image reference"),
    ("container-port-over-65535", "staging", {"service__containerPort": 70000},
     "llm-service:service.containerPort", "at most 65535"),
    ("container-port-privileged", "prod", {"service__containerPort": 80},
     "llm-service:service.containerPort", "at least 1024"),
    ("cache-port-zero", "staging", {"cache__port": 0},
     "llm-service:cache.port", "1 to 65535"),
    ("reserved-tag-environment", "staging", {"tags": {"Environment": "prod"}},
     "llm-service:tags.Environment", "the budget filters on Environment"),
    ("reserved-tag-other-case", "prod", {"tags": {"project": "x"}},
     "llm-service:tags.project", "Project is the stack's own tag"),
    ("tag-aws-prefix", "staging", {"tags": {"aws:owner": "me"}},
     "llm-service:tags.aws:owner", "may not start with aws:"),
    ("tag-value-too-long", "staging", {"tags": {"Note": "x" * 300}},
     "llm-service:tags.Note", "not a valid tag value"),
    ("too-many-tags", "staging", {"tags": _tags(48)},
     "llm-service:tags", "at most 47 tags"),
    ("prices-with-a-default", "staging",
     {"llm__prices": {"gpt-4o-mini": {"inputPerMillion": 0.15, "outputPerMillion": 0.6},
                      "default": {"inputPerMillion": 1, "outputPerMillion": 1}}},
     "llm-service:llm.prices", "there is no `default` price any more"),
    ("prices-empty", "prod", {"llm__prices": {}}, "llm-service:llm.prices", "list at least one model"),
    ("prices-bad-model-name", "staging",
     {"llm__prices": {"gpt 4o": {"inputPerMillion": 1, "outputPerMillion": 1}}},
     "llm-service:llm.prices", "'gpt 4o' is not a model name"),
    ("traffic-model-not-listed", "prod", {"traffic__model": "o1"},
     "llm-service:traffic.model",
     "one of the models in llm.prices (gpt-4o, gpt-4o-mini, text-embedding-3-small)"),
    ("delay-beyond-the-drain-on-spot", "staging", {"loadBalancer__deregistrationDelaySeconds": 66},
     "llm-service:loadBalancer.deregistrationDelaySeconds",
     "at most 65 while tasks run on Fargate Spot (service.spotWeight 1): an interruption sends SIGTERM "
     "while the load balancer still routes to the task for up to 50 s"),
    ("drain-shortened-below-the-delay-on-spot", "staging", {"service__stopTimeoutSeconds": 100},
     "llm-service:loadBalancer.deregistrationDelaySeconds", "at most 45 while tasks run on Fargate Spot"),
    ("scale-in-before-grace", "staging",
     {"service__scaleInCooldown": 30, "service__healthCheckGraceSeconds": 60},
     "llm-service:service.scaleInCooldown", "at least service.healthCheckGraceSeconds (60)"),
    ("user-root-ids", "staging", {"service__user": "0:0"},
     "llm-service:service.user", "never root"),
    ("user-root-name", "prod", {"service__user": "root"},
     "llm-service:service.user", "never root"),
    ("user-not-a-user", "staging", {"service__user": "app user"},
     "llm-service:service.user", "uid:gid"),
    ("misspelt-section", "staging", {"loadBalancr": {"httpMode": "none"}},
     "llm-service:loadBalancr", "unknown key; did you mean `loadBalancer`?"),
    ("misspelt-key", "prod", {"service__maxTask": 4},
     "llm-service:service.maxTask", "did you mean `maxTasks`?"),
    ("misspelt-nested-key", "staging", {"gateway__defaultLimits": {"requestPerMinute": 5}},
     "llm-service:gateway.defaultLimits.requestPerMinute", "did you mean `requestsPerMinute`?"),
    ("misspelt-namespace", "staging", {"llm-servce:network": {"azCount": 2}},
     "llm-servce:network", "did you mean `llm-service:network`?"),
    ("section-not-a-mapping", "staging", {"network": "10.0.0.0/16"},
     "llm-service:network", "must be a section of keys"),
    ("text-for-a-number", "staging", {"service__cpu": "lots"},
     "llm-service:service.cpu", "whole number"),
    ("prod-one-az", "prod", {"network__azCount": 1},
     "llm-service:network.azCount", "prod needs at least 3 AZs, so that losing one AZ"),
    ("prod-one-task", "prod", {"service__minTasks": 1},
     "llm-service:service.minTasks", "prod needs at least 2 tasks"),
    ("prod-shell", "prod", {"service__executeCommand": True},
     "llm-service:service.executeCommand", "no shell into production"),
    ("prod-short-key-deletion", "prod", {"secrets__keyDeletionWindowDays": 7},
     "llm-service:secrets.keyDeletionWindowDays", "prod needs 30 days"),
    ("base-url-plain-http", "staging", {"llm__baseUrl": "http://api.openai.com/v1"},
     "llm-service:llm.baseUrl", "https://"),
    ("base-url-with-credentials", "prod", {"llm__baseUrl": "https://me:secret@api.example.net/v1"},
     "llm-service:llm.baseUrl", "must not carry credentials"),
    ("org-id-with-a-space", "staging", {"llm__orgId": "org abc"},
     "llm-service:llm.orgId", "does not match"),
    ("domain-with-scheme", "staging", {"loadBalancer__domainName": "https://api.mycompany.com"},
     "llm-service:loadBalancer.domainName", "without a scheme"),
    ("zone-id-with-path", "staging",
     {"loadBalancer__domainName": "api.mycompany.com", "loadBalancer__hostedZoneId": "/hostedzone/Z0123456789ABC"},
     "llm-service:loadBalancer.hostedZoneId", "without /hostedzone/"),
    ("zone-without-domain", "staging", {"loadBalancer__hostedZoneId": "Z0123456789ABC"},
     "llm-service:loadBalancer.hostedZoneId", "a zone without loadBalancer.domainName"),
    ("health-path-relative", "staging", {"loadBalancer__healthCheckPath": "healthz"},
     "llm-service:loadBalancer.healthCheckPath", "starting with /"),
    ("spot-weight-over-1000", "staging", {"service__spotWeight": 2000},
     "llm-service:service.spotWeight", "at most 1000"),
    ("recovery-window-3", "staging", {"secrets__recoveryWindowDays": 3},
     "llm-service:secrets.recoveryWindowDays", "0 (delete at once) or 7 to 30"),
    ("threshold-zero", "staging", {"budget__actualThresholds": [0, 80]},
     "llm-service:budget.actualThresholds", "1 to 1000"),
    ("keepalive-past-the-nat", "staging", {"gateway__upstreamTcpKeepaliveSeconds": 340},
     "llm-service:gateway.upstreamTcpKeepaliveSeconds", "NAT gateway drops the idle flow"),
    ("cache-too-many-nodes", "prod", {"cache__nodes": 7},
     "llm-service:cache.nodes", "1 to 6"),
    # A key in plain text inside a longer value, or in a section that takes any text.
    ("key-inside-a-value", "staging", {"llm__orgId": "org-1 sk-proj-" + "A" * 20 + " (rotated)"},
     "llm-service:llm.orgId", "an API key may not be stored in plain text"),
    ("key-in-a-tag", "prod", {"tags": {"Note": "key=sk-" + "b" * 24}},
     "llm-service:tags.Note", "an API key may not be stored in plain text"),
    # A misspelling deep in a map whose keys are the user's own (model names).
    ("price-field-typo", "prod",
     {"llm__prices": {"gpt-4o-mini": {"inputPerMilion": 0.15, "outputPerMillion": 0.6}}},
     "llm-service:llm.prices.gpt-4o-mini.inputPerMilion", "did you mean `inputPerMillion`?"),
    ("limit-typo-prod", "prod", {"gateway__defaultLimits": {"usdPerDy": 5}},
     "llm-service:gateway.defaultLimits.usdPerDy", "did you mean `usdPerDay`?"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_refused_in_one_line_naming_the_key_with_exit_2_and_nothing_declared(synth, tmp_path, capsys, case):
    name, stack, changes, key, words = case
    raw, keys = with_changes(stack, **changes)
    with pytest.raises(ConfigError) as err:
        synth(stack, raw=raw, secret_keys=keys)
    assert err.value.declared == [], "nothing may be declared before the config passes"
    text = yaml.dump({"config": raw}, Dumper=yaml.CSafeDumper, sort_keys=False)
    (tmp_path / f"Pulumi.{name}.yaml").write_text(text)
    assert plan.main(["--stack", name, "--dir", str(tmp_path)]) == 2
    out = capsys.readouterr()
    first = out.err.splitlines()[0]
    assert first.startswith(f"config error: {key}: got "), out.err
    assert words in first, first
    assert out.out == "", "a refusal prints no plan"


def test_the_list_is_long_enough():
    assert len(BAD) >= 40 and len({c[0] for c in BAD}) == len(BAD)


def test_independent_mistakes_are_all_reported_one_line_each():
    raw, keys = with_changes("staging", service__logRetentionDays=45, cache__nodeType="cache.x.y",
                             edge__rateWindowSeconds=90)
    with pytest.raises(ConfigError) as err:
        load(raw, keys)
    lines = str(err.value).splitlines()
    assert [line.split(":")[1] for line in lines] == [
        "service.logRetentionDays", "cache.nodeType", "edge.rateWindowSeconds"]


def test_a_misspelt_section_is_one_line_and_never_dumps_its_values():
    raw, keys = stack_config("staging")
    raw["llm-service:loadBalancr"] = raw.pop("llm-service:loadBalancer")
    with pytest.raises(ConfigError) as err:
        load(raw, keys)
    assert str(err.value) == ("llm-service:loadBalancr: got a section {…}; unknown key; "
                              "did you mean `loadBalancer`?")


def test_an_unknown_key_that_looks_secret_is_not_echoed():
    raw, keys = with_changes("staging", cache__authToken="hunter2-and-more")
    with pytest.raises(ConfigError) as err:
        load(raw, keys)
    assert "hunter2" not in str(err.value) and "'(redacted)'" in str(err.value)


def test_an_unknown_key_far_from_any_lists_the_keys_there():
    raw, keys = with_changes("staging", edge__banana=1)
    with pytest.raises(ConfigError, match=r"the keys here are rateLimit, rateWindowSeconds, logRetentionDays"):
        load(raw, keys)


@pytest.mark.parametrize("value", [8.0, 8, "8.0"])
def test_an_unquoted_engine_version_is_read_as_written(value):
    cfg = load(*with_changes("staging", cache__engineVersion=value))
    assert cfg.cache.engine_version == "8.0"


def test_an_unquoted_engine_version_that_does_not_exist_says_to_quote():
    with pytest.raises(ConfigError, match=r"cache.engineVersion: got '7.2'; redis versions .* "
                                          r"\(in quotes, e.g. \"7.1\"\)"):
        load(*with_changes("staging", cache__engineVersion=7.2, cache__engine="redis"))


def test_numbers_where_text_is_expected_are_taken_as_text():
    cfg = load(*with_changes("staging", service__user=1000, tags={"CostCenter": 4711}))
    assert cfg.service.user == "1000" and cfg.tags["CostCenter"] == "4711"


def test_a_region_from_another_partition_is_a_region():
    cert = "arn:aws-us-gov:acm:us-gov-west-1:123456789012:certificate/5f0c2a3e-1b7d-4c9a-8e21-0a5b6c7d8e9f"
    cfg = load(*with_changes("staging", **{"aws:region": "us-gov-west-1"},
                             loadBalancer__certificateArn=cert))
    assert cfg.region == "us-gov-west-1"


# --- stack files that are not YAML ----------------------------------------------------------------

SHIPPED = "  llm-service:network:\n    cidr: 10.20.0.0/16\n"


@pytest.mark.parametrize("broken, where, words", [
    ("  llm-service:network:\n    cidr: 10.20.0.0/16\n   azCount: 2\n", ":", "YAML syntax error"),
    ("  llm-service:network:\n    cidr: [10.20.0.0/16\n", ":", "YAML syntax error"),
    ("  llm-service:network:\n    cidr: 10.20.0.0/16\n    cidr: 10.30.0.0/16\n", ":",
     "the key 'cidr' is written twice"),
], ids=["indentation", "unclosed-list", "duplicate-key"])
def test_a_yaml_error_is_one_line_with_file_line_and_column_exit_2(tmp_path, capsys, broken, where, words):
    from infra.stack_files import ROOT
    text = (ROOT / "Pulumi.staging.yaml").read_text()
    assert SHIPPED in text
    (tmp_path / "Pulumi.broken.yaml").write_text(text.replace(SHIPPED, broken))
    assert plan.main(["--stack", "broken", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    line_no = text.index(SHIPPED)
    first_line = text[:line_no].count("\n") + 1
    file_part, line, column = err.removeprefix("config error: ").split(":")[:3]
    assert file_part == "Pulumi.broken.yaml" and first_line <= int(line) <= first_line + 3, err
    assert int(column) >= 1 and words in err


def test_a_stack_file_that_is_a_list_is_refused(tmp_path, capsys):
    (tmp_path / "Pulumi.list.yaml").write_text("- config\n")
    assert plan.main(["--stack", "list", "--dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("config error: Pulumi.list.yaml: a stack file is a mapping with "
                                       "a `config:` mapping of keys such as llm-service:network\n")


def _bounded_fields():
    """Every numeric setting with a declared range, as (section, key, low, high) as written."""
    import annotated_types

    from infra.config import StackConfig

    for section_name, section in StackConfig.model_fields.items():
        model = section.annotation
        if not (isinstance(model, type) and hasattr(model, "model_fields")):
            continue
        for name, f in model.model_fields.items():
            low = next((m.ge for m in f.metadata if isinstance(m, annotated_types.Ge)), None)
            high = next((m.le for m in f.metadata if isinstance(m, annotated_types.Le)), None)
            if low is not None or high is not None:
                yield section.alias or section_name, f.alias or name, low, high


BOUNDED = list(_bounded_fields())


@pytest.mark.parametrize("stack", ["staging", "prod"])
@pytest.mark.parametrize("section,key,low,high", BOUNDED, ids=[f"{s}.{k}" for s, k, _, _ in BOUNDED])
def test_each_side_of_each_declared_range_is_refused_naming_the_key(stack, section, key, low, high):
    """A value one step outside a range, below it and above it, in both stacks: one line naming
    the key as written and the value, and nothing else accepted in its place."""
    assert low is not None or high is not None
    for bound, step in ((low, -1), (high, 1)):
        if bound is None:
            continue
        value = bound + step if isinstance(bound, int) else bound + step * max(abs(bound) * 0.01, 0.001)
        raw, keys = with_changes(stack, **{f"{section}__{key}": value})
        with pytest.raises(ConfigError) as e:
            load(raw, keys)
        first = str(e.value).splitlines()[0]
        assert first.startswith(f"llm-service:{section}.{key}"), (first, value)
        assert str(value) in first or f"{value:g}" in first, (first, value)


# Each prod rule at its edge: (key, the last value prod refuses, the first it accepts).
PROD_EDGES = [
    ("network__azCount", 2, 3),
    ("network__natStrategy", "single", "per_az"),
    ("cache__multiAz", False, True),
    ("cache__automaticFailover", False, True),
    ("cache__nodes", 1, 2),
    ("cache__snapshotRetentionDays", 6, 7),
    ("service__executeCommand", True, False),
    ("service__minTasks", 1, 2),
    ("secrets__keyDeletionWindowDays", 29, 30),
    ("monitoring__alertEmails", [], ["oncall@acme.io"]),
]


def test_every_prod_rule_is_at_its_edge_here():
    from infra.config import PROD_RULES

    assert sorted(k.replace("__", ".") for k, _, _ in PROD_EDGES) == sorted(PROD_RULES)


@pytest.mark.parametrize("key,refused,accepted", PROD_EDGES, ids=[e[0] for e in PROD_EDGES])
def test_a_prod_rule_refuses_the_value_past_its_edge_in_prod_only(key, refused, accepted):
    """Past the edge: refused in prod, naming the key and why; at the edge: accepted in prod; the
    refused value: accepted in staging (where it is the point of a cheaper stack)."""
    # The cache's own rules tie nodes, multi-AZ and failover together: past the edge, the three go
    # together, so that prod's rule is what refuses.
    together = {"cache__nodes": 1, "cache__multiAz": False, "cache__automaticFailover": False}
    past = {**together, key: refused} if key in together else {key: refused}
    raw, keys = with_changes("prod", **past)
    with pytest.raises(ConfigError) as e:
        load(raw, keys)
    name = f"llm-service:{key.replace('__', '.')}: got "
    assert [line for line in str(e.value).splitlines() if line.startswith(name) and "prod needs" in line]
    load(*with_changes("prod", **{key: accepted}))
    load(*with_changes("staging", **past))


@pytest.mark.parametrize(("key", "value", "text"), [
    ("llm-service:cache.authToken", "hunter2", "'(redacted)'"),  # by the key's last word
    ("llm-service:secrets.values.openai-api-key", "x", "'(redacted)'"),
    ("llm-service:llm.projectId", "sk-proj-" + "a" * 40, "'(redacted)'"),  # by the value's shape
    ("llm-service:limits.tokensPerMinute", "many", "'many'"),  # "token" not as the last word
    ("llm-service:cache.authToken", 5, "5"),  # only text is a secret
    ("llm-service:service", {"cpu": 1}, "a section {…}"),
    ("llm-service:service", {}, "{}"),
    ("llm-service:tags.Team", "x" * 198, "'" + "x" * 198 + "'"),  # 200 characters: shown whole
    ("llm-service:tags.Team", "x" * 199, "'" + "x" * 196 + "…"),  # 201: cut to 197 and an ellipsis
])
def test_a_value_is_shown_redacted_if_it_looks_secret_and_cut_at_200_characters(key, value, text):
    from infra.config.errors import shown

    assert shown(key, value) == text
    assert str(ConfigError(key, value, "why")) == f"{key}: got {text}; why"
    assert ConfigError(key, value, "why").value == value, "kept whole for the code that reads it"


def test_a_components_refusals_are_keyed_as_the_stack_file_writes_them_with_the_value_at_each():
    from types import SimpleNamespace

    from infra.config.errors import ConfigErrors, refuse

    values = SimpleNamespace(names=["a", "b"], prices={"gpt-X": 1.5}, idle_timeout_seconds=4)
    with pytest.raises(ConfigError) as one:
        refuse("loadBalancer", values, [("idle_timeout_seconds", "at least 5; see `idle_timeout_seconds`")])
    assert len(one.value.errors) == 1
    assert str(one.value) == ("llm-service:loadBalancer.idleTimeoutSeconds: got 4; at least 5; "
                              "see loadBalancer.idleTimeoutSeconds")
    with pytest.raises(ConfigErrors) as two:
        refuse("llm", values, [("names[1]", "unique"), ("prices[gpt-X]", "a price per million tokens")])
    assert [(e.key, e.value, e.allowed) for e in two.value.errors] == [
        ("llm-service:llm.names[1]", "b", "unique"),
        ("llm-service:llm.prices.gpt-X", 1.5, "a price per million tokens")]
    refuse("llm", values, [])  # nothing found: nothing raised



def _secrets(stack="staging", source="pulumi", names=("openai-api-key", "extra-key")):
    raw, secret_keys = with_changes(stack, secrets__source=source, secrets__names=list(names))
    return raw, set(secret_keys)


def test_with_secrets_in_pulumi_each_named_secret_is_set_and_encrypted():
    raw, secret_keys = _secrets()
    raw["llm-service:openai-api-key"] = "x"
    secret_keys.add("llm-service:openai-api-key")
    with pytest.raises(ConfigError) as missing:  # the first is there: the second is still looked for
        load(raw, secret_keys)
    assert str(missing.value) == ("llm-service:extra-key: got None; secrets.source is pulumi: run "
                                  "`pulumi config set --secret extra-key <value>`")
    raw["llm-service:extra-key"] = "y"
    with pytest.raises(ConfigError) as plain:
        load(raw, secret_keys)
    assert str(plain.value) == ("llm-service:extra-key: got '(redacted)'; stored in plain text; run "
                                "`pulumi config set --secret extra-key` to encrypt it")
    secret_keys.add("llm-service:extra-key")
    assert load(raw, secret_keys).secrets.names == ["openai-api-key", "extra-key"], \
        "the secrets' own keys are not settings of the stack"


def test_with_external_secrets_a_value_in_pulumi_config_is_refused():
    raw, secret_keys = _secrets(source="external")
    assert load(raw, secret_keys).secrets.source == "external", "none set: they live in Secrets Manager"
    raw["llm-service:extra-key"] = "y"
    secret_keys.add("llm-service:extra-key")
    with pytest.raises(ConfigError) as err:
        load(raw, secret_keys)
    assert str(err.value) == ("llm-service:extra-key: got '(secret)'; secrets.source is external, so the value "
                              "must not be in Pulumi config; remove it or set secrets.source to pulumi")


def test_an_api_key_in_plain_text_is_refused_after_any_encrypted_key():
    raw, secret_keys = with_changes("staging")
    raw = {"llm-service:openai-api-key": "enc", **raw}  # an encrypted key first: the rest still checked
    raw["llm-service:llm"] = {**raw["llm-service:llm"], "orgId": "sk-proj-" + "a" * 40}
    with pytest.raises(ConfigError) as err:
        load(raw, {*secret_keys, "llm-service:openai-api-key"})
    assert str(err.value) == ("llm-service:llm.orgId: got 'sk-…(redacted)'; an API key may not be stored in plain "
                              "text; use `python -m ops.apikey put` (external) or `pulumi config set --secret`")


@pytest.mark.parametrize(("key", "refused"), [
    ("llm-servX:service", True),   # 16 of 20 characters in common: a ratio of 0.8, a typo
    ("llm-servX:service:cpu", True),  # a second colon is the key's own
    ("llm-sXrvX:service", False),  # 0.7: another plugin's namespace, passed by
    ("aws:profile", False),
])
def test_a_namespace_nearly_the_projects_is_a_typo_and_others_are_passed_by(key, refused):
    raw, secret_keys = with_changes("staging")
    raw[key] = {"cpu": 512}
    if not refused:
        load(raw, secret_keys)
        return
    with pytest.raises(ConfigError) as err:
        load(raw, secret_keys)
    assert str(err.value) == (f"{key}: got a section {{…}}; unknown namespace 'llm-servX'; "
                              f"did you mean `llm-service:{key.partition(':')[2]}`?")


def test_a_key_with_a_second_colon_is_an_unknown_key_of_the_project():
    raw, secret_keys = with_changes("staging")
    raw["llm-service:service:cpu"] = 512
    with pytest.raises(ConfigError, match=r"^llm-service:service:cpu: got 512; "):
        load(raw, secret_keys)


def test_the_key_of_an_error_is_the_stack_files():
    from infra.config.errors import stack_key

    assert [stack_key(k) for k in ("aws:region", "llm-service:llm", "service.cpu", "service:cpu")] == [
        "aws:region", "llm-service:llm", "llm-service:service.cpu", "llm-service:service:cpu"]


EU_CERT = "arn:aws:acm:eu-west-1:123456789012:certificate/5f0c2a3e-1b7d-4c9a-8e21-0a5b6c7d8e9f"
SERVICE_KEYS = ("cpu, memory, architecture, containerPort, user, minTasks, maxTasks, desiredTasks, autoscaling, "
                "cpuTarget, memoryTarget, requestsPerTarget, scaleOutCooldown, scaleInCooldown, fargateBase, "
                "fargateWeight, spotWeight, healthCheckGraceSeconds, stopTimeoutSeconds, logRetentionDays, "
                "executeCommand, containerInsights, image, healthCheckCommand, ecrRepository")


@pytest.mark.parametrize(("stack", "changes", "message"), [
    # an unknown key at each depth: the closest known one, or every key of its section
    ("staging", {"llm-service:servce": {}}, "llm-service:servce: got {}; unknown key; did you mean `service`?"),
    ("staging", {"service__cpuu": 1}, "llm-service:service.cpuu: got 1; unknown key; did you mean `cpu`?"),
    ("staging", {"service__zzzz": 1},
     f"llm-service:service.zzzz: got 1; unknown key; the keys here are {SERVICE_KEYS}"),
    ("staging", {"llm__prices": {"gpt-4o": {"inptuPerMillion": 1, "outputPerMillion": 2}}},
     "llm-service:llm.prices.gpt-4o.inptuPerMillion: got 1; unknown key; did you mean `inputPerMillion`?"),
    # a validator's own ValueError, in its own words
    ("staging", {"service__logRetentionDays": 4},
     "llm-service:service.logRetentionDays: got 4; CloudWatch Logs keeps log events for one of 1, 3, 5, 7, 14, "
     "30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653 days "
     "(PutRetentionPolicy)"),
    # in prod, a prod rule's words only where the value breaks the prod rule
    ("prod", {"network__azCount": 7}, "llm-service:network.azCount: got 7; must be at most 4"),
    ("prod", {"network__azCount": "abc"}, "llm-service:network.azCount: got 'abc'; must be a whole number"),
    ("prod", {"network__azCount": 2},
     "llm-service:network.azCount: got 2; prod needs at least 3 AZs, so that losing one AZ leaves two serving"),
    ("prod", {"network__azCount": 1},
     "llm-service:network.azCount: got 1; prod needs at least 3 AZs, so that losing one AZ leaves two serving"),
    ("staging", {"network__azCount": 1}, "llm-service:network.azCount: got 1; must be at least 2"),
    ("staging", {"loadBalancer__certificateArn": EU_CERT},
     f"llm-service:loadBalancer.certificateArn: got '{EU_CERT}'; the certificate is in eu-west-1, the stack "
     "in us-east-1: a load balancer uses ACM certificates of its own region only; request or import one in "
     "us-east-1"),
])
def test_each_refusal_in_its_own_words(stack, changes, message):
    with pytest.raises(ConfigError) as err:
        load(*with_changes(stack, **changes))
    assert str(err.value) == message


@pytest.mark.parametrize(("loc", "known"), [
    (("llm", "prices", "gpt-x", "typo"), ["inputPerMillion", "outputPerMillion"]),  # in a map's entry
    (("tags", "Team", "typo"), []),                # under a map of text: no keys
    (("service", "cpu", "x", "typo"), []),         # under a number
    (("secrets", "names", 0, "typo"), []),         # under a list's item
    (("service", "nosuch", "typo"), []),           # under a key that is not there
])
def test_the_keys_known_at_a_location(loc, known):
    from infra.config.messages import _fields_at, _loc_to_key

    assert _fields_at(loc) == known
    assert _fields_at(("typo",))[:3] == ["aws:region", "environment", "teardown"]
    assert _loc_to_key(()) == "llm-service", "the stack as a whole"


BAD_VALUES = (None, [], "x", -1, {}, [1, "a"], {"a": 1}, 1e309, True, [None], [{}], "é" * 300)


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_any_bad_value_of_any_key_is_refused_in_lines_naming_keys_never_a_crash(stack):
    """Every key of the shipped file, in turn, given each of a dozen values of the wrong kind: the
    refusal is a ConfigError whose lines each name a key as the stack file writes it, once."""
    raw, secret_keys = stack_config(stack)
    tried = 0
    for section in raw:  # a whole section of the wrong kind
        for bad in BAD_VALUES:
            try:
                load({**raw, section: bad}, secret_keys)
            except ConfigError as err:
                assert str(err).startswith(("llm-service:", "aws:")), str(err)
    for section, values in raw.items():
        for key in values if isinstance(values, dict) else ():
            for bad in BAD_VALUES:
                changed = {**raw, section: {**values, key: bad}}
                try:
                    load(changed, secret_keys)
                except ConfigError as err:
                    lines = str(err).splitlines()
                    assert len(lines) == len(set(lines)), lines
                    assert all(line.startswith(("llm-service:", "aws:")) for line in lines), lines
                tried += 1
    assert tried > 1000


def test_secret_names_that_are_not_a_list_are_refused_as_such():
    with pytest.raises(ConfigError) as err:
        load(*with_changes("staging", secrets__names=-1))
    assert str(err.value) == "llm-service:secrets.names: got -1; must be a list, e.g. [a, b]"
