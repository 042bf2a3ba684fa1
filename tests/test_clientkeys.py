"""`python -m ops.clientkeys` against moto in server mode; the keys it prints are checked with
the gateway's own code (gateway/keys.py) against what it stored.

A test says which rollout it needs, injected at the boto3 boundary (tests/MOTO.md): `rolls_out`
(finished) or `rollout_stuck` (tests/moto_server.py).
"""

from __future__ import annotations

import json

import pytest

from gateway.keys import KEY_SHAPE, ClientKeys
from ops import clientkeys, rollout
from tests.conftest import refusal
from tests.moto_server import own_client

STACK = "staging"
PREFIX = "llm-service/staging"


def _deploy() -> None:
    """What `pulumi up` leaves, with the API key already put."""
    kms, sm, ecs = own_client("kms"), own_client("secretsmanager"), own_client("ecs")
    key_id = kms.create_key(Description="stack key")["KeyMetadata"]["KeyId"]
    sm.create_secret(Name=f"{PREFIX}/openai-api-key", KmsKeyId=key_id, SecretString="sk-proj-" + "k" * 40)
    sm.create_secret(Name=f"{PREFIX}/cache-auth-token", KmsKeyId=key_id, SecretString="t" * 64)
    sm.create_secret(Name=f"{PREFIX}/client-keys", KmsKeyId=key_id)
    ecs.create_cluster(clusterName="llm-service-staging")
    ecs.register_task_definition(family="llm-service-staging", containerDefinitions=[
        {"name": "app", "image": "x", "memory": 512}])
    ecs.create_service(cluster="llm-service-staging", serviceName="llm-service-staging",
                       taskDefinition="llm-service-staging", desiredCount=1)


@pytest.fixture
def deployed(account):
    account("clientkeys", _deploy)
    return own_client("secretsmanager")




def run(capsys, action, *rest):
    """The command as the docs write it: `add --stack staging web-app ...`."""
    ticks = iter(range(0, 100_000, 10))  # a fake clock: a rollout that never ends times out at once
    code = clientkeys.main([action, "--stack", STACK, *rest], sleep=lambda s: None, clock=lambda: next(ticks))
    out = capsys.readouterr()
    return code, out.out, out.err


def stored(sm) -> ClientKeys:
    return ClientKeys.from_json(sm.get_secret_value(SecretId=f"{PREFIX}/client-keys")["SecretString"])


def test_add_prints_the_key_once_stores_its_hash_and_rolls_out(deployed, capsys, rolls_out):
    code, out, err = run(capsys, "add", "web-app")
    assert code == 0, err
    key = out.strip()
    assert KEY_SHAPE.fullmatch(key), "stdout is the key alone"
    raw = deployed.get_secret_value(SecretId=f"{PREFIX}/client-keys")["SecretString"]
    assert key not in raw and key not in err
    assert stored(deployed).client_for(f"Bearer {key}".encode()).name == "web-app"
    rolls_out["ecs"].update_service.assert_called_once_with(
        cluster="llm-service-staging", service="llm-service-staging", taskDefinition="llm-service-staging",
        forceNewDeployment=True)
    assert err.splitlines()[-1] == "llm-service-staging is stable: 1 tasks run the new value"


def test_the_first_client_before_the_api_key_stores_but_does_not_roll_out(deployed, capsys, mocker):
    deployed.delete_secret(SecretId=f"{PREFIX}/openai-api-key", ForceDeleteWithoutRecovery=True)
    deployed.create_secret(Name=f"{PREFIX}/openai-api-key")
    spy = mocker.spy(rollout, "roll_out")
    code, out, err = run(capsys, "add", "web-app")
    assert code == 0 and KEY_SHAPE.fullmatch(out.strip())
    assert err.splitlines()[-1] == (
        "not rolling out yet: openai-api-key has no value, and tasks cannot start without it; "
        "run python -m ops.apikey put --stack staging --name openai-api-key")
    spy.assert_not_called()


def test_list_names_clients_and_key_ids_never_hashes(deployed, capsys, rolls_out):
    run(capsys, "add", "web-app")
    run(capsys, "add", "batch")
    code, out, _ = run(capsys, "list")
    assert code == 0
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["batch", "web-app"]
    doc = json.loads(deployed.get_secret_value(SecretId=f"{PREFIX}/client-keys")["SecretString"])
    assert all(k["sha256"] not in out for c in doc["clients"].values() for k in c["keys"])
    assert doc["clients"]["batch"]["keys"][0]["id"] in lines[0]


def test_limits_sit_beside_the_keys_and_the_gateway_reads_them(deployed, capsys, rolls_out):
    code, _, err = run(capsys, "add", "web-app", "--rpm", "100", "--usd-per-day", "2.5")
    assert code == 0, err
    client = next(iter(stored(deployed)._by_id.values()))[1]
    assert client.limits == {"requestsPerMinute": 100, "usdPerDay": 2.5}
    from gateway.limits import Limits

    merged = Limits.from_json(client.limits, Limits(requests_per_minute=60, tokens_per_minute=9000, usd_per_day=5))
    assert merged == Limits(requests_per_minute=100, tokens_per_minute=9000, usd_per_day=2.5)
    assert run(capsys, "limits", "web-app", "--tpm", "0")[0] == 0
    client = next(iter(stored(deployed)._by_id.values()))[1]
    assert client.limits == {"requestsPerMinute": 100, "usdPerDay": 2.5, "tokensPerMinute": 0}
    assert "limits: requestsPerMinute 100, tokensPerMinute 0, usdPerDay 2.5" in run(capsys, "list")[1]
    assert run(capsys, "limits", "web-app", "--defaults")[0] == 0
    assert "limits: the stack's defaults" in run(capsys, "list")[1]


def test_a_client_may_be_held_to_some_of_the_stacks_models(deployed, capsys, rolls_out):
    code, _, err = run(capsys, "add", "web-app", "--models", "gpt-4o-mini,text-embedding-3-small")
    assert code == 0, err
    client = next(iter(stored(deployed)._by_id.values()))[1]
    assert client.models == frozenset({"gpt-4o-mini", "text-embedding-3-small"})
    assert "models: gpt-4o-mini, text-embedding-3-small" in run(capsys, "list")[1]
    code, _, err = run(capsys, "limits", "web-app", "--models", "o1")
    assert code == 1 and "o1: not in llm.prices of staging (gpt-4o, gpt-4o-mini, text-embedding-3-small)" in err
    assert run(capsys, "limits", "web-app", "--models", "all")[0] == 0
    assert next(iter(stored(deployed)._by_id.values()))[1].models is None
    assert "models: every listed model" in run(capsys, "list")[1]
    assert run(capsys, "limits", "web-app", "--stateful", "yes")[0] == 0
    assert next(iter(stored(deployed)._by_id.values()))[1].stateful is True
    assert "may use stored state" in run(capsys, "list")[1]


def test_a_negative_limit_is_refused_by_the_command_line(deployed, capsys):
    assert refusal(clientkeys.main, ["add", "--stack", STACK, "web-app", "--rpm", "-5"], capsys) == (
        "python -m ops.clientkeys: error: argument --rpm: 0 or more")


def test_limits_with_nothing_to_set_is_refused_naming_what_it_takes(deployed, capsys):
    assert refusal(clientkeys.main, ["limits", "--stack", STACK, "web-app"], capsys) == (
        "python -m ops.clientkeys: error: limits needs --rpm, --tpm, --usd-per-day, --concurrent, --models, "
        "--stateful or --defaults")


def test_rotate_replaces_the_key_and_keep_old_overlaps(deployed, capsys, rolls_out):
    old = run(capsys, "add", "web-app")[1].strip()
    new = run(capsys, "rotate", "web-app")[1].strip()
    keys = stored(deployed)
    assert keys.client_for(f"Bearer {old}".encode()) is None
    assert keys.client_for(f"Bearer {new}".encode()).name == "web-app"
    newer = run(capsys, "rotate", "web-app", "--keep-old")[1].strip()
    keys = stored(deployed)
    assert keys.client_for(f"Bearer {new}".encode()) and keys.client_for(f"Bearer {newer}".encode())


def test_revoke_a_client_or_one_of_its_keys(deployed, capsys, rolls_out):
    first = run(capsys, "add", "web-app")[1].strip()
    second = run(capsys, "rotate", "web-app", "--keep-old")[1].strip()
    key_id = KEY_SHAPE.fullmatch(first)["id"]
    code, _, err = run(capsys, "revoke", "web-app", "--key-id", key_id)
    assert code == 0 and f"revoked key {key_id} of web-app" in err
    keys = stored(deployed)
    assert keys.client_for(f"Bearer {first}".encode()) is None
    assert keys.client_for(f"Bearer {second}".encode()).name == "web-app"
    assert run(capsys, "revoke", "web-app")[0] == 0
    assert len(stored(deployed)) == 0


def test_a_revoke_rolls_out_and_waits_for_the_tasks_to_drop_the_key(deployed, capsys, rolls_out):
    """A revoked key works until every task has read the new document: the command says when."""
    run(capsys, "add", "web-app")
    rolls_out["ecs"].update_service.reset_mock()
    code, _, err = run(capsys, "revoke", "web-app")
    assert code == 0
    rolls_out["ecs"].update_service.assert_called_once_with(
        cluster="llm-service-staging", service="llm-service-staging", taskDefinition="llm-service-staging",
        forceNewDeployment=True)
    assert err.splitlines()[-1] == "llm-service-staging is stable: 1 tasks run the new value"


def test_a_revoke_whose_rollout_never_ends_fails_and_says_so(deployed, capsys, rollout_stuck):
    """The stuck deployment a revoke must not call done."""
    run(capsys, "add", "web-app")
    code, _, err = run(capsys, "revoke", "web-app")
    assert code == 1
    assert "revoked client web-app" in err
    assert err.splitlines()[-1] == ("error: llm-service-staging not stable after 600 s (running 0 of 1, "
                                    "1 deployments); the new value is stored")


@pytest.mark.parametrize("argv,message", [
    (("rotate", "nobody"), "error: no client 'nobody' (clients: web-app)"),
    (("revoke", "nobody"), "error: no client 'nobody'"),
    (("add", "web-app"), "error: client 'web-app' exists; use `rotate` for a new key"),
    (("add", "Web App"), "error: client name 'Web App': lower-case letters"),
    (("revoke", "web-app", "--key-id", "00000000"), "error: client 'web-app' has no key 00000000"),
])
def test_mistakes_change_nothing_and_say_why_in_one_line(deployed, capsys, rolls_out, argv, message):
    run(capsys, "add", "web-app")
    before = deployed.get_secret_value(SecretId=f"{PREFIX}/client-keys")["VersionId"]
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == "" and err.startswith(message) and err.count("\n") == 1
    assert deployed.get_secret_value(SecretId=f"{PREFIX}/client-keys")["VersionId"] == before


def test_an_edit_by_someone_else_meanwhile_is_not_overwritten(deployed, capsys, rolls_out, mocker):
    run(capsys, "add", "web-app")
    real_read = clientkeys.read

    def read_then_someone_else_writes(s):
        doc, version = real_read(s)
        deployed.put_secret_value(SecretId=f"{PREFIX}/client-keys",
                                  SecretString=json.dumps({"version": 1, "clients": {}}))
        return doc, version

    mocker.patch.object(clientkeys, "read", side_effect=read_then_someone_else_writes)
    code, out, err = run(capsys, "add", "batch")
    assert code == 1 and out == ""
    assert "changed while this command ran" in err
    assert "batch" not in deployed.get_secret_value(SecretId=f"{PREFIX}/client-keys")["SecretString"]


def test_a_missing_secret_is_one_line(aws, capsys):
    code, out, err = run(capsys, "add", "web-app")
    assert code == 1 and out == ""
    assert err == ("error: the client-keys secret of staging does not exist; "
                   "deploy the stack first (pulumi up --stack staging)\n")
