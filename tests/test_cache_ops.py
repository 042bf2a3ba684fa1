"""`python -m ops.cache invalidate` against moto: a one-off task with the service's own task
definition and network, running the gateway's cachectl (tested against a real server in
test_gateway_cache.py). moto never runs or stops a task: its end is injected at the boto3
boundary (tests/MOTO.md)."""

from __future__ import annotations

import pytest

from ops import cache as cache_ops
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
    # moto's task stays RUNNING: exactly the stuck task to time out on.
    s = cache_ops.rollout.resolve("staging")
    ticks = iter(range(0, 1000, 100))
    with pytest.raises(cache_ops.Failure, match="has not stopped after 300 s"):
        cache_ops.invalidate(s, None, 300, sleep=lambda _: None, clock=lambda: next(ticks), log=lambda _: None)


def test_no_service_is_one_line(aws, capsys):
    code, _, err = run(capsys)
    assert code == 1
    assert err == ("error: ECS service llm-service-staging/llm-service-staging not found in us-east-1; "
                   "deploy the stack first (pulumi up)\n")
