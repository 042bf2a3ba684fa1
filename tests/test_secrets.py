"""The stack's KMS key and secrets: key policy, names per stack, exact-ARN read policy,
and the two ways to supply the value."""

from __future__ import annotations

import json

from components.secrets_store import env_var_name
from components.service import read_policy
from infra import private_api
from offline.plan import to_json
from tests.conftest import container, policy, with_changes

KEY = "aws:kms/key:Key"
SECRET = "aws:secretsmanager/secret:Secret"
VERSION = "aws:secretsmanager/secretVersion:SecretVersion"


def test_key_rotates_and_has_an_alias(stack):
    key = stack.one(KEY)
    assert key.inputs["enableKeyRotation"] is True
    assert key.inputs["deletionWindowInDays"] == (30 if stack.stack == "prod" else 7)
    alias = stack.one("aws:kms/alias:Alias")
    assert alias.inputs["name"] == f"alias/llm-service/{stack.stack}"


def test_key_policy_lets_the_publishers_and_services_use_it(stack):
    statements = {s["Sid"]: s for s in policy(stack.one(KEY))["Statement"]}
    publishers = statements["AlarmAndBudgetPublishersUseTheTopicKey"]
    assert set(publishers["Principal"]["Service"]) == {"cloudwatch.amazonaws.com",
                                                       "budgets.amazonaws.com"}
    assert set(publishers["Action"]) == {"kms:GenerateDataKey*", "kms:Decrypt"}
    via = statements["ServicesInThisAccountAndRegion"]["Condition"]["StringEquals"]
    assert {"secretsmanager.us-east-1.amazonaws.com", "elasticache.us-east-1.amazonaws.com",
            "sns.us-east-1.amazonaws.com"} <= set(via["kms:ViaService"])
    assert via["kms:CallerAccount"] == "123456789012"
    logs = statements["CloudWatchLogsEncryptsThisAccountsGroups"]
    assert logs["Principal"]["Service"] == "logs.us-east-1.amazonaws.com"


def test_logs_key_statements_grant_nothing_a_condition_can_never_allow(stack):
    """DescribeKey carries no encryption context: under the context condition it would never be
    allowed, so it has its own statement; the crypto actions keep the condition."""
    statements = {s["Sid"]: s for s in policy(stack.one(KEY))["Statement"]}
    crypto, describe = (statements["CloudWatchLogsEncryptsThisAccountsGroups"],
                        statements["CloudWatchLogsDescribesTheKey"])
    assert not any(a.startswith("kms:Describe") for a in crypto["Action"])
    assert crypto["Condition"] == {"ArnLike": {"kms:EncryptionContext:aws:logs:arn":
                                               "arn:aws:logs:us-east-1:123456789012:log-group:*"}}
    assert describe["Action"] == "kms:DescribeKey" and "Condition" not in describe
    assert describe["Principal"] == crypto["Principal"] == {"Service": "logs.us-east-1.amazonaws.com"}


def test_staging_secrets_are_deleted_at_once_so_a_re_create_can_reuse_the_names(staging, prod):
    """A recovery window keeps a deleted secret's name taken: `destroy` then `up` would fail with
    "scheduled for deletion". Staging deletes at once; prod keeps 30 days and protection."""
    assert {s.inputs["recoveryWindowInDays"] for s in staging.of_type(SECRET)} == {0}
    assert {s.inputs["recoveryWindowInDays"] for s in prod.of_type(SECRET)} == {30}
    assert all(s.protect for s in prod.of_type(SECRET))


def test_every_secret_uses_the_stack_key_and_a_per_stack_name(stack):
    key_arn = stack.outputs["kmsKeyArn"]
    secrets = stack.of_type(SECRET)
    assert {s.inputs["name"] for s in secrets} == {
        f"llm-service/{stack.stack}/openai-api-key", f"llm-service/{stack.stack}/cache-auth-token",
        f"llm-service/{stack.stack}/client-keys"}
    assert all(s.inputs["kmsKeyId"] == key_arn for s in secrets)


def test_staging_and_prod_secrets_differ(staging, prod):
    names = lambda s: {x.inputs["name"] for x in s.of_type(SECRET)}  # noqa: E731
    assert not names(staging) & names(prod)


def test_external_mode_declares_no_api_key_value(stack):
    versions = stack.of_type(VERSION)
    assert [v.name for v in versions] == ["secrets-cache-auth-token-value"]


def test_prod_secrets_and_key_are_protected(prod, staging):
    assert prod.one(KEY).protect and all(s.protect for s in prod.of_type(SECRET))
    assert not staging.one(KEY).protect


def test_execution_role_reads_exactly_the_injected_secrets(stack):
    pol = policy(stack.one("aws:iam/rolePolicy:RolePolicy", "service-execution-secrets"))
    read, decrypt = pol["Statement"]
    injected = sorted(s["valueFrom"] for s in container(stack)["secrets"])
    assert read["Action"] == "secretsmanager:GetSecretValue"
    assert read["Resource"] == injected
    assert decrypt["Resource"] == stack.outputs["kmsKeyArn"]
    assert decrypt["Condition"]["StringEquals"]["kms:ViaService"] == \
        "secretsmanager.us-east-1.amazonaws.com"
    assert "*" not in json.dumps(pol)


def test_read_policy_is_exact():
    doc = json.loads(_resolve(read_policy(["arn:b", "arn:a"], "arn:key", "eu-west-1")))
    assert doc["Statement"][0]["Resource"] == ["arn:a", "arn:b"]


def _resolve(output):
    return private_api.wait(output.future())


def test_pulumi_mode_keeps_the_value_secret(synth):
    raw, keys = with_changes("staging", secrets__source="pulumi")
    raw["llm-service:openai-api-key"] = "sk-proj-THISMUSTNEVERLEAK0123456789"
    keys.add("llm-service:openai-api-key")
    s = synth("staging", raw=raw, secret_keys=keys)
    version = s.one(VERSION, "secrets-openai-api-key-value")
    assert version.inputs["secretString"] == "sk-proj-THISMUSTNEVERLEAK0123456789"
    assert "secretString" in version.secret_inputs
    plan = json.dumps(to_json(s))
    assert "THISMUSTNEVERLEAK" not in plan
    assert "THISMUSTNEVERLEAK" not in json.dumps(container(s))
    # The secret says the stack writes its value, and the version is the Secrets component's child.
    api_key = s.one(SECRET, "secrets-openai-api-key")
    assert api_key.inputs["description"] == "openai-api-key for llm-service/staging"
    assert version.parent == ("llm-service:secrets:Secrets", "secrets")
    assert version.inputs["secretId"] == ("arn:aws:secretsmanager:us-east-1:123456789012:secret:"
                                          "llm-service/staging/openai-api-key-AbCdEf")


def test_cache_auth_token_is_secret_everywhere(stack):
    token = stack.one("random:index/randomPassword:RandomPassword")
    version = stack.one(VERSION, "secrets-cache-auth-token-value")
    group = stack.one("aws:elasticache/replicationGroup:ReplicationGroup")
    assert "secretString" in version.secret_inputs
    assert "authToken" in group.secret_inputs
    assert "cacheAuthToken" in stack.secret_outputs
    assert token.inputs["length"] >= 32 and token.inputs["special"] is False
    assert "mock-generated-password" not in json.dumps(to_json(stack))


def test_key_policy_statements_are_each_bound_to_this_account_region_and_purpose(stack):
    """Each grant to a principal outside the account's own administrators carries its condition,
    checked one by one: without `aws:SourceAccount` the publishers could be used by any account's
    alarms (the confused deputy); without `kms:CallerAccount` and `kms:ViaService` any principal
    could call the key directly; without the log-group context CloudWatch Logs could encrypt
    another account's groups with it."""
    document = policy(stack.one(KEY))
    # Without it KMS reads the 2008 language, in which no policy variable or newer key works.
    assert document["Version"] == "2012-10-17"
    statements = {s["Sid"]: s for s in document["Statement"]}
    assert set(statements) == {"AccountAdministers", "ServicesInThisAccountAndRegion",
                               "CloudWatchLogsEncryptsThisAccountsGroups", "CloudWatchLogsDescribesTheKey",
                               "AlarmAndBudgetPublishersUseTheTopicKey"}
    assert all(s["Effect"] == "Allow" and s["Resource"] == "*" for s in statements.values())
    admin = statements["AccountAdministers"]
    assert admin["Principal"] == {"AWS": "arn:aws:iam::123456789012:root"} and admin["Action"] == "kms:*"
    services = statements["ServicesInThisAccountAndRegion"]
    assert services["Principal"] == {"AWS": "*"}
    assert set(services["Action"]) == {"kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*",
                                       "kms:GenerateDataKey*", "kms:CreateGrant", "kms:DescribeKey"}
    assert list(services["Condition"]) == ["StringEquals"]
    assert services["Condition"]["StringEquals"]["kms:CallerAccount"] == "123456789012"
    # Exactly the services that encrypt this stack's data at rest with the key, in this region.
    assert set(services["Condition"]["StringEquals"]["kms:ViaService"]) == {
        f"{s}.us-east-1.amazonaws.com" for s in ("secretsmanager", "elasticache", "sns", "logs", "ecr")}
    logs = statements["CloudWatchLogsEncryptsThisAccountsGroups"]
    assert set(logs["Action"]) == {"kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*"}
    publishers = statements["AlarmAndBudgetPublishersUseTheTopicKey"]
    assert publishers["Condition"] == {"StringEquals": {"aws:SourceAccount": "123456789012"}}


def test_what_each_secret_and_the_key_say_they_are_for(stack, synth):
    """An operator in the console reads from the description whether a value is theirs to write
    (out of band) or the stack's; every secret and version is the Secrets component's child."""
    prefix = f"llm-service/{stack.stack}"
    assert stack.one(KEY).inputs["description"] == f"{prefix}: secrets, logs, cache and alarm topic"
    assert {s.inputs["name"]: s.inputs["description"] for s in stack.of_type(SECRET)} == {
        f"{prefix}/openai-api-key": f"openai-api-key for {prefix}; value set out of band",
        f"{prefix}/client-keys": f"client-keys for {prefix}; value set out of band",
        f"{prefix}/cache-auth-token": f"cache-auth-token for {prefix}; generated by the stack"}
    owner = ("llm-service:secrets:Secrets", "secrets")
    assert {r.parent for r in [*stack.of_type(SECRET), *stack.of_type(VERSION), stack.one(KEY),
                               stack.one("aws:kms/alias:Alias")]} == {owner}
    # The generated token is the value written, not a placeholder.
    token = stack.one(VERSION, "secrets-cache-auth-token-value")
    assert token.inputs["secretString"] == "mock-generated-password-0123456789"
    assert stack.one("aws:kms/alias:Alias").inputs["targetKeyId"] == stack.outputs["kmsKeyArn"].rsplit("/", 1)[1]


def test_each_secret_reaches_the_container_under_its_upper_case_name(stack):
    assert env_var_name("openai-api-key") == "OPENAI_API_KEY"
    assert env_var_name("cache-auth-token") == "CACHE_AUTH_TOKEN"
    by_name = {s["name"]: s["valueFrom"] for s in container(stack)["secrets"]}
    arn = stack.one(SECRET, "secrets-openai-api-key").inputs["name"]
    assert "OPENAI_API_KEY" in by_name and arn in by_name["OPENAI_API_KEY"]
