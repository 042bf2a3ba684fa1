"""`python -m ops.apikey` against moto in server mode on 127.0.0.1.

moto keeps ECS runningCount at 0 and rolloutState IN_PROGRESS, so the states a real rollout
reaches (stable, failed) are injected at the boto3 boundary where a test needs them, and the
test says so.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError, NoCredentialsError

from ops import apikey, rollout
from tests.conftest import help_text, refusal
from tests.moto_server import at_boundary, own_client

KEY = "sk-proj-" + "A1b2C3d4" * 6
STACK = "staging"
SECRET_NAME = "llm-service/staging/openai-api-key"


class Pipe(io.StringIO):
    def isatty(self):
        return False


class Tty(io.StringIO):
    def isatty(self):
        return True


def _deploy() -> dict:
    """What `pulumi up --stack staging` leaves behind, as far as the command needs."""
    kms, sm, ecs = own_client("kms"), own_client("secretsmanager"), own_client("ecs")
    key_id = kms.create_key(Description="stack key")["KeyMetadata"]["KeyId"]
    arn = sm.create_secret(Name=SECRET_NAME, KmsKeyId=key_id)["ARN"]
    # The other secrets the tasks read: the stack writes the cache token, clientkeys the keys.
    sm.create_secret(Name="llm-service/staging/cache-auth-token", KmsKeyId=key_id, SecretString="t" * 64)
    sm.create_secret(Name="llm-service/staging/client-keys", KmsKeyId=key_id,
                     SecretString='{"version": 1, "clients": {}}')
    ecs.create_cluster(clusterName="llm-service-staging")
    ecs.register_task_definition(family="llm-service-staging", containerDefinitions=[
        {"name": "app", "image": "x", "memory": 512}])
    ecs.create_service(cluster="llm-service-staging", serviceName="llm-service-staging",
                       taskDefinition="llm-service-staging", desiredCount=1)
    return {"arn": arn, "key_id": key_id}


@pytest.fixture
def deployed(account):
    return {**account("apikey", _deploy), "sm": own_client("secretsmanager"), "ecs": own_client("ecs")}




def run(argv, stdin=None, capsys=None):
    code = apikey.main(argv, stdin=stdin or Pipe(""))
    out = capsys.readouterr() if capsys else None
    return code, out


def test_put_from_a_pipe_stores_a_current_version_and_rolls_out(deployed, capsys, rolls_out):
    code, out = run(["put", "--stack", STACK], Pipe(KEY + "\n"), capsys)
    assert code == 0, out.err
    assert deployed["sm"].get_secret_value(SecretId=SECRET_NAME)["SecretString"] == KEY
    assert KEY not in out.out + out.err
    assert "stored a new current version of llm-service/staging/openai-api-key" in out.out
    rolls_out["ecs"].update_service.assert_called_once_with(
        cluster="llm-service-staging", service="llm-service-staging", taskDefinition="llm-service-staging",
        forceNewDeployment=True)
    assert "llm-service-staging is stable: 1 tasks run the new value" in out.out


def test_first_deploy_order_ends_in_a_healthy_service(deployed, capsys, mocker):
    """`pulumi up` leaves the secret empty: the first tasks fail, the circuit breaker marks the
    first deployment FAILED with nothing to roll back to. `put` must start a rollout again.
    Injected: the FAILED first deployment, then the new rollout completing (moto does neither)."""
    clients: list[dict] = []

    def runtime(real, **kw):
        r = real(**kw)
        forced = clients[0]["ecs"].update_service.call_count > 0
        for svc in r["services"]:
            # moto keeps one deployment id through forceNewDeployment: the id tracked is that one.
            svc["deployments"] = [{**svc["deployments"][0], "status": "PRIMARY", "rolloutState": "COMPLETED"}
                                  ] if forced else [
                {**svc["deployments"][0], "status": "PRIMARY", "rolloutState": "FAILED",
                 "rolloutStateReason": "ECS deployment circuit breaker: tasks failed to start."}]
            svc["runningCount"] = svc["desiredCount"] if forced else 0
        return r

    clients.append(at_boundary(mocker, rollout, "ecs", "describe_services", runtime,
                               spy=("update_service",)))
    assert run(["check", "--stack", STACK], None, capsys)[0] == 1  # no value yet
    code, out = run(["put", "--stack", STACK], Pipe(KEY), capsys)
    assert code == 0, out.err
    clients[0]["ecs"].update_service.assert_called_once()
    assert out.out.splitlines()[1:] == [
        "forced a new deployment of llm-service-staging/llm-service-staging; waiting up to 600 s",
        "llm-service-staging is stable: 1 tasks run the new value"]
    assert deployed["sm"].get_secret_value(SecretId=SECRET_NAME)["SecretString"] == KEY
    assert run(["check", "--stack", STACK], None, capsys)[0] == 0


def test_put_before_the_service_exists_stores_and_says_so(deployed, capsys, mocker):
    deployed["ecs"].delete_service(cluster="llm-service-staging", service="llm-service-staging",
                                   force=True)
    spy = mocker.spy(rollout, "roll_out")
    code, out = run(["put", "--stack", STACK], Pipe(KEY), capsys)
    assert code == 0, out.err
    assert deployed["sm"].get_secret_value(SecretId=SECRET_NAME)["SecretString"] == KEY
    assert out.out.splitlines()[-1] == ("no ECS service llm-service-staging/llm-service-staging yet: "
                                        "its first tasks will read this value")
    spy.assert_not_called()


def test_put_waits_with_the_rollout_until_the_client_keys_have_a_value(deployed, capsys, mocker):
    """On a first deploy both external secrets are empty: a rollout before both have values
    would fail again, so put stores and says what is missing."""
    deployed["sm"].delete_secret(SecretId="llm-service/staging/client-keys", ForceDeleteWithoutRecovery=True)
    deployed["sm"].create_secret(Name="llm-service/staging/client-keys", KmsKeyId=deployed["key_id"])
    spy = mocker.spy(rollout, "roll_out")
    code, out = run(["put", "--stack", STACK], Pipe(KEY), capsys)
    assert code == 0, out.err
    assert out.out.splitlines()[-1] == (
        "not rolling out yet: client-keys has no value, and tasks cannot start without it; run "
        "python -m ops.clientkeys add --stack staging <client>")
    spy.assert_not_called()
    assert deployed["sm"].get_secret_value(SecretId=SECRET_NAME)["SecretString"] == KEY


def test_put_reports_a_rollout_that_fails_even_with_the_value(deployed, capsys, mocker):
    # Injected: a rollout the circuit breaker stops (a wrong key, say); moto cannot fail one.
    def failed(real, **kw):
        r = real(**kw)
        new = r["services"][0]["deployments"][0]
        r["services"][0]["deployments"] = [
            {**new, "status": "PRIMARY", "rolloutState": "FAILED", "rolloutStateReason": "tasks failed to start"}]
        return r

    at_boundary(mocker, rollout, "ecs", "describe_services", failed)
    code, out = run(["put", "--stack", STACK, "--timeout", "5"], Pipe(KEY), capsys)
    assert code == 1
    assert out.err.startswith("error: the new deployment failed (tasks failed to start)")


def test_put_from_a_hidden_prompt(deployed, capsys, mocker, rolls_out):
    prompt = mocker.patch("ops.apikey.getpass.getpass", return_value=KEY)
    code, out = run(["put", "--stack", STACK], Tty(""), capsys)
    assert code == 0
    prompt.assert_called_once()
    assert deployed["sm"].get_secret_value(SecretId=SECRET_NAME)["SecretString"] == KEY
    assert KEY not in out.out + out.err


def test_put_refuses_a_malformed_key_and_writes_nothing(deployed, capsys):
    code, out = run(["put", "--stack", STACK], Pipe("hello world not a key"), capsys)
    assert code == 1
    assert "does not look like a openai-api-key" in out.err
    assert "hello" not in out.err
    versions = deployed["sm"].list_secret_version_ids(SecretId=SECRET_NAME)["Versions"]
    assert versions == []


def test_value_is_never_taken_from_argv():
    with pytest.raises(SystemExit):
        apikey.main(["put", "--stack", STACK, KEY], stdin=Pipe(""))


def _outputs(tmp_path, secret_arns: dict[str, str]):
    """`pulumi stack output --json` of the deployed staging stack, saved to a file, with these secretArns."""
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({
        "secretArns": secret_arns, "region": "us-east-1",
        "clientKeysSecretArn": "llm-service/staging/client-keys",
        "cacheAuthSecretArn": "llm-service/staging/cache-auth-token",
        "clusterName": "llm-service-staging", "serviceName": "llm-service-staging"}))
    return outputs


def test_put_via_outputs_file(deployed, capsys, tmp_path, rolls_out):
    outputs = _outputs(tmp_path, {"openai-api-key": deployed["arn"]})
    code, out = run(["put", "--stack", STACK, "--outputs", str(outputs)], Pipe(KEY), capsys)
    assert code == 0, out.err
    assert deployed["arn"] in out.out


def test_outputs_file_missing_an_output_is_one_line(deployed, capsys, tmp_path):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"secretArns": {}}))
    code, out = run(["check", "--stack", STACK, "--outputs", str(outputs)], None, capsys)
    assert code == 1
    assert out.err.strip().count("\n") == 0
    assert "has no output 'clientKeysSecretArn'" in out.err


def test_outputs_file_without_the_secret_is_one_exact_line(deployed, capsys, tmp_path):
    outputs = _outputs(tmp_path, {"other-api-key": deployed["arn"]})
    code, out = run(["check", "--stack", STACK, "--outputs", str(outputs)], None, capsys)
    assert code == 1
    assert out.err == (f"error: {outputs}: secretArns has no 'openai-api-key' "
                       "(has ['cache-auth-token', 'client-keys', 'other-api-key'])\n")


def test_a_secret_other_than_openais_is_any_one_token_of_eight_characters_or_more():
    assert apikey.read_value("anthropic-api-key", Pipe(" tok-5678 \n")) == "tok-5678"
    for bad in ("tok-567", "tok 5678"):
        with pytest.raises(rollout.Failure) as e:
            apikey.read_value("anthropic-api-key", Pipe(bad))
        assert str(e.value) == (f"that does not look like a anthropic-api-key ({len(bad)} characters read); "
                                "nothing was written")


def test_check_prints_each_line_and_fails_on_a_fail(deployed, capsys, mocker):
    deployed["sm"].put_secret_value(SecretId=SECRET_NAME, SecretString=KEY)
    changed = datetime.now(UTC) - timedelta(days=3)  # `main` checks against the clock
    _described(mocker, KmsKeyId=None, LastChangedDate=changed)
    code, out = run(["check", "--stack", STACK], None, capsys)
    assert code == 1
    assert out.out.splitlines() == [
        "FAIL llm-service/staging/openai-api-key: encrypted with the AWS-managed key, not the stack's",
        f"OK   llm-service/staging/openai-api-key: current value present, last changed {changed:%Y-%m-%d} "
        "(3 days ago)"]


def test_check_without_a_value_fails(deployed, capsys):
    code, out = run(["check", "--stack", STACK], None, capsys)
    assert code == 1
    assert out.out.startswith("FAIL llm-service/staging/openai-api-key: no current value")


def test_check_reports_age_and_never_reads_the_value(deployed, capsys, mocker):
    deployed["sm"].put_secret_value(SecretId=SECRET_NAME, SecretString=KEY)
    at_boundary(mocker, apikey, "secretsmanager", "get_secret_value",
                lambda real, **kw: pytest.fail("check read the value"))
    code, out = run(["check", "--stack", STACK], None, capsys)
    assert code == 0, out.err
    assert out.out.startswith("OK   llm-service/staging/openai-api-key: current value present")
    assert KEY not in out.out


def test_check_warns_when_older_than_the_rotation_age(deployed):
    deployed["sm"].put_secret_value(SecretId=SECRET_NAME, SecretString=KEY)
    target = apikey.resolve(STACK, "openai-api-key", None, None)
    later = datetime.now(UTC) + timedelta(days=target.rotation_age_days + 5)
    lines, ok = apikey.check(target, now=later)
    assert ok
    assert lines[0].startswith("WARN") and "older than the rotation age of 90 days" in lines[0]


def test_missing_secret_is_one_clear_line(aws, capsys):
    code, out = run(["put", "--stack", STACK], Pipe(KEY), capsys)
    assert code == 1
    assert out.err == ("error: llm-service/staging/openai-api-key in us-east-1 does not exist; "
                       "deploy the stack first (pulumi up --stack staging)\n")


def test_missing_credentials_is_one_clear_line(deployed, capsys, mocker):
    mocker.patch("ops.apikey._client", side_effect=NoCredentialsError())
    code, out = run(["check", "--stack", STACK], None, capsys)
    assert code == 1
    assert out.err.startswith("error: no AWS credentials found")


@pytest.mark.parametrize("code,words", [
    ("AccessDeniedException", "access denied to llm-service/staging/openai-api-key"),
    ("ThrottlingException", "AWS throttled the call"),
])
def test_denied_and_throttled_write_nothing(deployed, capsys, mocker, code, words):
    # moto grants every call: the refusal is injected at the boto3 boundary.
    def refuse(real, **kw):
        raise ClientError({"Error": {"Code": code, "Message": "no"}}, "PutSecretValue")

    at_boundary(mocker, apikey, "secretsmanager", "put_secret_value", refuse)
    rc, out = run(["put", "--stack", STACK], Pipe(KEY), capsys)
    assert rc == 1 and words in out.err and out.err.count("\n") == 1
    assert deployed["sm"].list_secret_version_ids(SecretId=SECRET_NAME)["Versions"] == []


def test_rotate_puts_then_redeploys_and_waits(deployed, capsys, rolls_out):
    made = rolls_out
    code, out = run(["rotate", "--stack", STACK], Pipe(KEY), capsys)
    assert code == 0, out.err
    made["ecs"].update_service.assert_called_once_with(
        cluster="llm-service-staging", service="llm-service-staging", taskDefinition="llm-service-staging",
        forceNewDeployment=True)
    assert deployed["sm"].get_secret_value(SecretId=SECRET_NAME)["SecretString"] == KEY
    assert "is stable" in out.out and KEY not in out.out + out.err


def test_rotate_times_out_and_says_the_key_is_stored(deployed, rollout_stuck):
    target = apikey.resolve(STACK, "openai-api-key", None, None)
    ticks = iter(range(0, 10_000, 100))
    with pytest.raises(apikey.Failure) as err:
        apikey.rotate(target, KEY, timeout=300, sleep=lambda s: None,
                      clock=lambda: next(ticks), log=lambda line: None)
    assert "not stable after 300 s (running 0 of 1, 1 deployments); the new value is stored" \
        in str(err.value)


def test_rotate_reports_a_failed_rollout(deployed, mocker):
    # A circuit-breaker rollback cannot happen in moto: inject the FAILED rollout state.
    def failed(real, **kw):
        r = real(**kw)
        new = r["services"][0]["deployments"][0]
        r["services"][0]["deployments"] = [
            {**new, "status": "PRIMARY", "rolloutState": "FAILED", "rolloutStateReason": "tasks failed to start"},
            {"id": "ecs-svc/0000000000000000001", "status": "ACTIVE", "rolloutState": "COMPLETED"}]
        return r

    at_boundary(mocker, rollout, "ecs", "describe_services", failed)
    target = apikey.resolve(STACK, "openai-api-key", None, None)
    ticks = iter(range(0, 10_000, 100))  # a fake clock: were the failure missed, 300 s would pass at once
    with pytest.raises(apikey.Failure, match="the new deployment failed \\(tasks failed to start\\)"):
        apikey.rotate(target, KEY, timeout=300, sleep=lambda s: None, clock=lambda: next(ticks),
                      log=lambda line: None)


def test_rotate_against_a_missing_service_writes_nothing(deployed, capsys):
    deployed["ecs"].delete_service(cluster="llm-service-staging", service="llm-service-staging",
                                   force=True)
    code, out = run(["rotate", "--stack", STACK], Pipe(KEY), capsys)
    assert code == 1
    assert "ECS service llm-service-staging/llm-service-staging not found" in out.err
    assert deployed["sm"].list_secret_version_ids(SecretId=SECRET_NAME)["Versions"] == []


# `check` reads the secret's metadata; moto's dates are "now", so what AWS may hold instead (an
# old value, a secret never changed since created, no dates, the AWS-managed key) is put into
# its real answer.
DAY = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _described(mocker, **fields):
    def answer(real, **kw):
        d = real(**kw)
        for k, v in fields.items():
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v
        return d
    at_boundary(mocker, apikey, "secretsmanager", "describe_secret", answer)


@pytest.mark.parametrize(("changed", "created", "line"), [
    (DAY, DAY - timedelta(days=400), "OK   llm-service/staging/openai-api-key: current value present, "
                                     "last changed 2026-03-01 (10 days ago)"),
    (None, DAY, "OK   llm-service/staging/openai-api-key: current value present, "
                "last changed 2026-03-01 (10 days ago)"),  # never changed: its creation
    (None, None, "OK   llm-service/staging/openai-api-key: current value present, last changed unknown "
                 "(0 days ago)"),
])
def test_check_reads_the_age_from_the_last_change_else_the_creation(deployed, mocker, changed, created, line):
    deployed["sm"].put_secret_value(SecretId=SECRET_NAME, SecretString=KEY)
    _described(mocker, LastChangedDate=changed, CreatedDate=created)
    lines, ok = apikey.check(apikey.resolve(STACK, "openai-api-key", None, None), now=DAY + timedelta(days=10))
    assert (lines, ok) == ([line], True)


@pytest.mark.parametrize(("days", "first_word"), [(90, "OK  "), (91, "WARN")])
def test_check_warns_from_the_first_day_past_the_rotation_age(deployed, mocker, days, first_word):
    deployed["sm"].put_secret_value(SecretId=SECRET_NAME, SecretString=KEY)
    _described(mocker, LastChangedDate=DAY)
    lines, ok = apikey.check(apikey.resolve(STACK, "openai-api-key", None, None), now=DAY + timedelta(days=days))
    assert ok and lines[0].startswith(first_word)
    if first_word == "WARN":
        assert lines == ["WARN llm-service/staging/openai-api-key: last changed 2026-03-01, 91 days ago; older "
                         "than the rotation age of 90 days: run `rotate`"]


def test_check_fails_a_secret_under_the_aws_managed_key(deployed, mocker):
    deployed["sm"].put_secret_value(SecretId=SECRET_NAME, SecretString=KEY)
    _described(mocker, KmsKeyId=None, LastChangedDate=DAY)
    lines, ok = apikey.check(apikey.resolve(STACK, "openai-api-key", None, None), now=DAY)
    assert ok is False
    assert lines == ["FAIL llm-service/staging/openai-api-key: encrypted with the AWS-managed key, "
                     "not the stack's",
                     "OK   llm-service/staging/openai-api-key: current value present, last changed 2026-03-01 "
                     "(0 days ago)"]


def test_a_name_the_stack_does_not_have_is_one_exact_line(capsys):
    code, out = run(["check", "--stack", STACK, "--name", "anthropic-api-key"], None, capsys)
    assert code == 1
    assert out.err == "error: 'anthropic-api-key' is not one of the stack's secrets.names ['openai-api-key']\n"


def test_a_malformed_key_is_described_by_its_length_alone(deployed, capsys, mocker):
    prompt = mocker.patch("ops.apikey.getpass.getpass", return_value="  not-a-key  ")
    code, out = run(["put", "--stack", STACK], Tty(""), capsys)
    prompt.assert_called_once_with("openai-api-key (input hidden): ")
    assert code == 1
    assert out.err == "error: that does not look like a openai-api-key (9 characters read); nothing was written\n"


def test_the_command_line_is_as_documented(capsys, monkeypatch):
    assert help_text(apikey.main, monkeypatch, capsys) == (
        "usage: python -m ops.apikey [-h] --stack STACK [--name NAME]\n"
        "                            [--outputs OUTPUTS] [--region REGION]\n"
        "                            [--timeout TIMEOUT]\n"
        "                            {put,check,rotate}\n\n"
        "Set, check and rotate the stack's LLM API key in Secrets Manager, outside\nPulumi state.\n\n"
        "positional arguments:\n  {put,check,rotate}\n\n"
        "options:\n"
        "  -h, --help          show this help message and exit\n"
        "  --stack STACK\n"
        "  --name NAME         which secret (default openai-api-key)\n"
        "  --outputs OUTPUTS   `pulumi stack output --json` saved to a file\n"
        "  --region REGION     override the stack's region\n"
        "  --timeout TIMEOUT   seconds to wait for the service to be stable after\n"
        "                      writing\n")


@pytest.mark.parametrize(("argv", "words"), [
    (["check"], "the following arguments are required: --stack"),
    (["--stack", "staging"], "the following arguments are required: action"),
    (["show", "--stack", "staging"],
     "argument action: invalid choice: 'show' (choose from 'put', 'check', 'rotate')"),
    (["put", "--stack", "staging", "--timeout", "soon"], "argument --timeout: invalid int value: 'soon'"),
])
def test_a_wrong_command_line_is_refused(capsys, argv, words):
    refused = refusal(lambda a: apikey.main(a, stdin=Pipe("")), argv, capsys)
    assert refused == f"python -m ops.apikey: error: {words}"


def test_another_region_is_looked_in(deployed, capsys):
    code, out = run(["check", "--stack", STACK, "--region", "eu-west-1"], None, capsys)
    assert code == 1
    assert out.err == ("error: llm-service/staging/openai-api-key in eu-west-1 does not exist; "
                       "deploy the stack first (pulumi up --stack staging)\n")


def test_put_passes_its_timeout_to_the_rollout(deployed, capsys, mocker):
    waits = mocker.patch("ops.apikey.rollout.after_secret_change")
    code, out = run(["put", "--stack", STACK, "--timeout", "42"], Pipe(KEY), capsys)
    assert code == 0, out.err
    (call,) = waits.call_args_list
    assert call.args[1] == 42 and call.args[4] is print  # the rollout's progress goes to stdout


def test_rotate_passes_its_timeout_and_log_on(deployed, capsys, mocker):
    mocker.patch("ops.apikey.rollout.require_service")
    waits = mocker.patch("ops.apikey.rollout.after_secret_change")
    code, out = run(["rotate", "--stack", STACK, "--timeout", "7"], Pipe(KEY), capsys)
    assert code == 0, out.err
    (call,) = waits.call_args_list
    assert call.args[1] == 7 and call.args[4] is print


def test_rotate_logs_where_it_is_told(deployed, mocker):
    mocker.patch("ops.apikey.rollout.require_service")
    waits = mocker.patch("ops.apikey.rollout.after_secret_change")
    lines: list[str] = []
    apikey.rotate(apikey.resolve(STACK, "openai-api-key", None, None), KEY, 7, log=lines.append)
    (stored,) = lines
    assert stored.startswith(f"stored a new current version of {SECRET_NAME} (version ")
    assert waits.call_args.args[4] == lines.append


def test_an_error_before_the_target_is_known_names_the_secret_generically(capsys, mocker):
    missing = ClientError({"Error": {"Code": "ResourceNotFoundException", "Message": "none"}}, "DescribeStacks")
    mocker.patch("ops.apikey.resolve", side_effect=missing)
    code, out = run(["check", "--stack", STACK], None, capsys)
    assert code == 1
    assert out.err == "error: the secret does not exist; deploy the stack first (pulumi up)\n"


def test_a_second_upstreams_key_is_written_and_checked_in_its_own_secret(deployed, capsys, mocker, rolls_out):
    """llm.upstreams' keys (docs/gateway.md, "Several upstreams"): each in its own secret under the
    stack's key, put and checked by name; the default key is left as it was."""
    from tests.test_routing_stack import routed

    mocker.patch.object(rollout, "read_stack_file", lambda stack, root=None: routed())
    backup = "llm-service/staging/backup-openai-key"
    azure = "llm-service/staging/azure-openai-key"
    for name in (backup, azure):  # what `pulumi up` creates, without values
        deployed["sm"].create_secret(Name=name, KmsKeyId=deployed["key_id"])
    for name in (SECRET_NAME, azure):
        deployed["sm"].put_secret_value(SecretId=name, SecretString="k" * 40)
    # `pulumi up` registered the revision that injects the new keys; its deployment could not start
    # (backup's key had no value) and the circuit breaker rolled the service back to revision 1.
    ecs = deployed["ecs"]
    ecs.register_task_definition(family="llm-service-staging", containerDefinitions=[
        {"name": "app", "image": "x", "memory": 512}])
    other = "sk-proj-" + "Z9y8X7w6" * 6
    code, out = run(["put", "--stack", STACK, "--name", "backup-openai-key"], Pipe(other + "\n"), capsys)
    assert code == 0, out.err
    # The family without a revision: ECS runs its latest ACTIVE revision, the stack's :2, not the
    # service's :1 (moto keeps the name as given; AWS's UpdateService reference says so).
    rolls_out["ecs"].update_service.assert_called_once_with(
        cluster="llm-service-staging", service="llm-service-staging", taskDefinition="llm-service-staging",
        forceNewDeployment=True)
    assert f"stored a new current version of {backup}" in out.out and other not in out.out + out.err
    assert deployed["sm"].get_secret_value(SecretId=backup)["SecretString"] == other
    assert deployed["sm"].get_secret_value(SecretId=SECRET_NAME)["SecretString"] == "k" * 40  # untouched
    code, out = run(["check", "--stack", STACK, "--name", "backup-openai-key"], None, capsys)
    assert code == 0 and out.out.startswith(f"OK   {backup}: current value present"), out
    deployed["sm"].delete_secret(SecretId=azure, ForceDeleteWithoutRecovery=True)
    deployed["sm"].create_secret(Name=azure, KmsKeyId=deployed["key_id"])
    code, out = run(["check", "--stack", STACK, "--name", "azure-openai-key"], None, capsys)
    assert code == 1 and out.out.startswith(f"FAIL {azure}: no current value"), out
