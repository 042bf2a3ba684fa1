"""`python -m ops.cache invalidate` against moto: a one-off task with the service's own task
definition and network, running the gateway's cachectl (tested against a real server in
test_gateway_cache.py). moto never runs or stops a task: its end is injected at the boto3
boundary (tests/MOTO.md)."""

from __future__ import annotations

import pytest

from ops import cache as cache_ops
from tests.conftest import help_text, refusal
from tests.moto_server import at_boundary, own_client

CLUSTER = SERVICE = "llm-service-staging"


def _deploy() -> dict:
    ec2, ecs = own_client("ec2"), own_client("ecs")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.16.0/20")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName="tasks", Description="tasks", VpcId=vpc)["GroupId"]
    ecs.create_cluster(clusterName=CLUSTER)
    # moto needs container-level cpu and memory to place a task, and cannot place an awsvpc task at
    # all (see `runs`): its stand-in task definition keeps the default network mode.
    app = {"name": "app", "image": "gw", "essential": True, "cpu": 512, "memory": 1024}
    arn = ecs.register_task_definition(family=SERVICE, containerDefinitions=[app])["taskDefinition"][
        "taskDefinitionArn"]
    network = {"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [sg], "assignPublicIp": "DISABLED"}}
    ecs.create_service(cluster=CLUSTER, serviceName=SERVICE, taskDefinition=arn, desiredCount=1,
                       launchType="FARGATE", networkConfiguration=network)
    return {"task_definition": arn, "network": network}


@pytest.fixture
def service(account):
    return account("cache_ops", _deploy)


def _ends(exit_code=None, reason=""):
    def describe_tasks(real, **kw):
        r = real(**kw)
        for task in r["tasks"]:
            if exit_code is not None:
                task["lastStatus"] = "STOPPED"
                task["containers"] = [{"name": "app", "exitCode": exit_code, "reason": reason}]
        return r
    return describe_tasks


@pytest.fixture
def runs(mocker):
    """What run_task was asked, then moto's real run_task without the awsvpc network: moto 5.2
    fails every awsvpc task (its NetworkInterface has no private_dns_name). Injected, see MOTO.md."""
    asked = []

    def run_task(real, **kw):
        asked.append(kw)
        return real(**{k: v for k, v in kw.items() if k != "networkConfiguration"})

    at_boundary(mocker, cache_ops, "ecs", "run_task", run_task)
    return asked


def run(capsys, *argv):
    code = cache_ops.main(["invalidate", "--stack", "staging", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_invalidate_runs_cachectl_with_the_services_own_task_and_network(service, capsys, mocker, runs):
    # Injected: the task ran and exited 0 (moto does not run containers).
    at_boundary(mocker, cache_ops, "ecs", "describe_tasks", _ends(0))
    code, out, err = run(capsys, "--client", "web-app")
    assert code == 0, err
    assert out == "invalidated client web-app's cache entries\n"
    (kw,) = runs
    assert kw["taskDefinition"] == service["task_definition"]
    assert kw["networkConfiguration"]["awsvpcConfiguration"]["subnets"] == \
        service["network"]["awsvpcConfiguration"]["subnets"]
    assert kw["overrides"] == {"containerOverrides": [{"name": "app", "command": [
        "python", "-m", "gateway.cachectl", "invalidate", "--client", "web-app"]}]}
    assert kw["capacityProviderStrategy"] == [{"capacityProvider": "FARGATE", "weight": 1}]


def test_without_a_client_every_entry_goes(service, capsys, mocker, runs):
    at_boundary(mocker, cache_ops, "ecs", "describe_tasks", _ends(0))
    code, out, _ = run(capsys)
    assert code == 0 and out == "invalidated every client's cache entries\n"
    command = runs[0]["overrides"]["containerOverrides"][0]["command"]
    assert command == ["python", "-m", "gateway.cachectl", "invalidate"]


def test_a_task_that_fails_says_why_in_one_line(service, capsys, mocker, runs):
    at_boundary(mocker, cache_ops, "ecs", "describe_tasks", _ends(1, "the cache did not answer"))
    code, out, err = run(capsys)
    assert code == 1 and out == ""
    assert err.splitlines()[-1] == "error: the task stopped with exit code 1: the cache did not answer"


def test_a_task_that_never_stops_times_out(service, mocker, runs):
    # moto's task is still running for its first few descriptions: a stuck task to time out on.
    s = cache_ops.rollout.resolve("staging")
    ticks = iter(range(0, 1000, 100))
    with pytest.raises(cache_ops.Failure, match="has not stopped after 300 s"):
        cache_ops.invalidate(s, None, 300, sleep=lambda _: None, clock=lambda: next(ticks), log=lambda _: None)


def test_no_service_is_one_line(aws, capsys):
    code, _, err = run(capsys)
    assert code == 1
    assert err == ("error: ECS service llm-service-staging/llm-service-staging not found in us-east-1; "
                   "deploy the stack first (pulumi up)\n")


# Every part of the one-off task and every line the command prints, exactly (mutation testing of
# ops/cache.py left 121 of its 296 mutants alive: the tests checked a few arguments and words).
def test_the_task_is_asked_for_exactly(service, capsys, mocker, runs):
    at_boundary(mocker, cache_ops, "ecs", "describe_tasks", _ends(0))
    code, out, err = run(capsys, "--client", "web-app")
    assert code == 0, err
    assert runs == [{
        "cluster": CLUSTER, "taskDefinition": service["task_definition"], "count": 1,
        "startedBy": "llm-service-cache-invalidate",
        "capacityProviderStrategy": [{"capacityProvider": "FARGATE", "weight": 1}],
        "networkConfiguration": service["network"],
        "overrides": {"containerOverrides": [{"name": "app", "command": [
            "python", "-m", "gateway.cachectl", "invalidate", "--client", "web-app"]}]},
    }]
    (line,) = err.splitlines()
    task = own_client("ecs").list_tasks(cluster=CLUSTER)["taskArns"][0].rsplit("/", 1)[-1]
    assert line == f"started {task} in {CLUSTER}; waiting up to 300 s"  # the task's id, not its ARN


def test_the_wait_polls_every_five_seconds_until_the_deadline_exactly(service, mocker, runs):
    def running(real, **kw):  # moto moves a task on as it is described; this one never ends
        r = real(**kw)
        for task in r["tasks"]:
            task["lastStatus"] = "RUNNING"
        return r
    at_boundary(mocker, cache_ops, "ecs", "describe_tasks", running)
    s = cache_ops.rollout.resolve("staging")
    slept, now = [], iter([0, 0, 10, 20, 29, 30, 31])
    with pytest.raises(cache_ops.Failure) as e:
        cache_ops.invalidate(s, None, 30, sleep=slept.append, clock=lambda: next(now), log=lambda _: None)
    assert slept == [5, 5, 5, 5]  # at 0, 10, 20 and 29; at 30 the deadline has come
    task = own_client("ecs").list_tasks(cluster=CLUSTER)["taskArns"][0].rsplit("/", 1)[-1]
    assert str(e.value) == (f"the task {task} has not stopped after 30 s (status RUNNING); look at its logs "
                            "in the service's log group")


def test_a_stopped_task_without_a_container_reason_gives_the_tasks(service, capsys, mocker, runs):
    def stopped(real, **kw):
        r = real(**kw)
        for task in r["tasks"]:
            task.update(lastStatus="STOPPED", stoppedReason="Essential container in task exited",
                        containers=[{"name": "sidecar", "exitCode": 0}, {"name": "app", "exitCode": 137}])
        return r
    at_boundary(mocker, cache_ops, "ecs", "describe_tasks", stopped)
    code, out, err = run(capsys)
    assert (code, out) == (1, "")
    assert err.splitlines()[-1] == "error: the task stopped with exit code 137: Essential container in task exited"


def test_a_stopped_task_with_no_reason_at_all_says_so(service, capsys, mocker, runs):
    def stopped(real, **kw):
        r = real(**kw)
        for task in r["tasks"]:
            task.update(lastStatus="STOPPED")
            task.pop("containers", None)
            task.pop("stoppedReason", None)
        return r
    at_boundary(mocker, cache_ops, "ecs", "describe_tasks", stopped)
    code, _, err = run(capsys)
    assert code == 1
    assert err.splitlines()[-1] == "error: the task stopped with exit code None: no reason given"


@pytest.mark.parametrize(("answer", "line"), [
    ({"tasks": [], "failures": [{"arn": "arn:aws:ecs:::container-instance/x", "reason": "RESOURCE:MEMORY"}]},
     "error: the task did not start: arn:aws:ecs:::container-instance/x RESOURCE:MEMORY"),
    ({"tasks": [{"taskArn": "arn:aws:ecs:us-east-1:1:task/c/t"}], "failures": [{"reason": "AGENT"}]},
     "error: the task did not start:  AGENT"),
    ({"tasks": [], "failures": []}, "error: the task did not start: no task returned"),
    ({"tasks": []}, "error: the task did not start: no task returned"),
    ({"tasks": [], "failures": [{"arn": "a", "reason": "MISSING"}, {"arn": "b", "reason": "AGENT"}]},
     "error: the task did not start: a MISSING; b AGENT"),
])
def test_a_task_that_does_not_start_says_why(service, capsys, mocker, answer, line):
    at_boundary(mocker, cache_ops, "ecs", "run_task", lambda real, **kw: answer)
    code, out, err = run(capsys)
    assert (code, out) == (1, "")
    assert err.splitlines()[-1] == line


def test_a_service_without_a_network_configuration_is_refused(service, capsys, mocker):
    def no_network(real, **kw):
        r = real(**kw)
        for svc in r["services"]:
            svc.pop("networkConfiguration", None)
        return r
    at_boundary(mocker, cache_ops.rollout, "ecs", "describe_services", no_network)
    code, _, err = run(capsys)
    assert code == 1
    assert err == f"error: {SERVICE} has no network configuration to run a task with\n"


def _run_task_fails(mocker, code: str, message: str) -> None:
    """Injected: AWS answers RunTask with this error."""
    from botocore.exceptions import ClientError

    def refuse(real, **kw):
        raise ClientError({"Error": {"Code": code, "Message": message}}, "RunTask")
    at_boundary(mocker, cache_ops, "ecs", "run_task", refuse)


def test_an_aws_refusal_names_the_service(service, capsys, mocker):
    _run_task_fails(mocker, "AccessDeniedException", "not ecs:RunTask")
    code, _, err = run(capsys)
    assert code == 1
    assert err.splitlines()[-1] == "error: access denied to the ECS service of staging: not ecs:RunTask"


def test_the_timeout_and_region_options_reach_the_task(service, capsys, mocker, runs):
    at_boundary(mocker, cache_ops, "ecs", "describe_tasks", _ends(0))
    code, _, err = run(capsys, "--timeout", "42", "--region", "us-east-1")
    assert code == 0, err
    assert err.splitlines()[0].endswith("; waiting up to 42 s")



def test_the_command_line_is_as_documented(capsys, monkeypatch):
    assert help_text(cache_ops.main, monkeypatch, capsys) == (
        "usage: python -m ops.cache [-h] --stack STACK [--client CLIENT]\n"
        "                           [--outputs OUTPUTS] [--region REGION]\n"
        "                           [--timeout TIMEOUT]\n"
        "                           {invalidate}\n\n"
        "Invalidate the gateway's cache: for when the information behind its answers\nchanges.\n\n"
        "positional arguments:\n  {invalidate}\n\n"
        "options:\n"
        "  -h, --help         show this help message and exit\n"
        "  --stack STACK\n"
        "  --client CLIENT    only this client's entries\n"
        "  --outputs OUTPUTS  `pulumi stack output --json` saved to a file\n"
        "  --region REGION    override the stack's region\n"
        "  --timeout TIMEOUT  seconds to wait for the task\n")


@pytest.mark.parametrize(("argv", "words"), [
    (["invalidate"], "the following arguments are required: --stack"),
    (["--stack", "staging"], "the following arguments are required: action"),
    (["purge", "--stack", "staging"], "argument action: invalid choice: 'purge' (choose from 'invalidate')"),
])
def test_a_wrong_command_line_is_refused(capsys, argv, words):
    assert refusal(cache_ops.main, argv, capsys) == f"python -m ops.cache: error: {words}"


def test_another_region_is_looked_in(service, capsys):
    code, _, err = run(capsys, "--region", "eu-west-1")
    assert code == 1
    assert err == ("error: ECS service llm-service-staging/llm-service-staging not found in eu-west-1; "
                   "deploy the stack first (pulumi up)\n")


def test_an_outputs_file_names_the_cluster_and_service(service, capsys, mocker, runs, tmp_path):
    import json

    at_boundary(mocker, cache_ops, "ecs", "describe_tasks", _ends(0))
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"region": "us-east-1", "clusterName": CLUSTER, "serviceName": SERVICE,
                                   "secretArns": {}, "clientKeysSecretArn": "x", "cacheAuthSecretArn": "y"}))
    code, out, err = run(capsys, "--outputs", str(outputs))
    assert code == 0, err
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(outputs.read_text().replace(CLUSTER, "another-cluster", 1))
    code, _, err = run(capsys, "--outputs", str(elsewhere))
    assert code == 1 and "another-cluster" in err


def test_a_missing_service_names_the_stack_to_deploy(service, capsys, mocker):
    _run_task_fails(mocker, "ResourceNotFoundException", "gone")
    code, _, err = run(capsys)
    assert code == 1
    assert err.splitlines()[-1] == ("error: the ECS service of staging does not exist; deploy the stack first "
                                    "(pulumi up --stack staging)")
