"""The rollout the operator commands wait for, against moto: it follows the deployment
UpdateService started, by id, whatever DescribeServices shows first.

ECS is eventually consistent: a DescribeServices right after UpdateService can still show the
previous deployment as PRIMARY (a FAILED one, on a first deploy) and not yet the new one. moto
answers consistently and never moves a rollout on, so the states each test needs are injected
at the boto3 boundary (tests/MOTO.md), keyed on the id moto's UpdateService answered with.
"""

from __future__ import annotations

import json

import pytest

from ops import rollout
from tests.moto_server import at_boundary, own_client

CLUSTER = SERVICE = "llm-service-staging"
OLD = "ecs-svc/1111111111111111111"


def _deploy() -> dict:
    ecs = own_client("ecs")
    ecs.create_cluster(clusterName=CLUSTER)
    ecs.register_task_definition(family=SERVICE,
                                 containerDefinitions=[{"name": "app", "image": "x", "memory": 512}])
    ecs.create_service(cluster=CLUSTER, serviceName=SERVICE, taskDefinition=SERVICE, desiredCount=2)
    return {}


@pytest.fixture
def stack(account):
    account("rollout", _deploy)
    return rollout.resolve("staging")


def _scripted(mocker, *states):
    """DescribeServices answers with each state in turn (the last one from then on). A state is a
    list of (id, status, rolloutState) and the running count; "NEW" stands for the id moto's
    UpdateService answered with."""
    calls = {"n": 0}

    def describe(real, **kw):
        r = real(**kw)
        svc = r["services"][0]
        new = svc["deployments"][0]["id"]
        deployments, running = states[min(calls["n"], len(states) - 1)]
        calls["n"] += 1
        svc["deployments"] = [{"id": new if i == "NEW" else i, "status": status, "rolloutState": state,
                               "rolloutStateReason": "tasks failed to start" if state == "FAILED" else ""}
                              for i, status, state in deployments]
        svc["runningCount"] = running
        return r

    return at_boundary(mocker, rollout, "ecs", "describe_services", describe, spy=("update_service",)), calls


def _roll(stack, timeout=600):
    ticks = iter(range(0, 100_000, 10))
    lines: list[str] = []
    ecs = rollout._client("ecs", stack.region)
    rollout.roll_out(ecs, stack, timeout, sleep=lambda s: None, clock=lambda: next(ticks), log=lines.append)
    return lines


def test_a_stale_failed_deployment_read_right_after_the_update_is_not_the_new_ones_failure(stack, mocker):
    """A first deploy: the circuit breaker failed the first deployment; the command forces a new
    one, and the first read still shows only the old FAILED one."""
    _, calls = _scripted(
        mocker,
        ([(OLD, "PRIMARY", "FAILED")], 0),                                  # stale: the new one not visible
        ([("NEW", "PRIMARY", "IN_PROGRESS"), (OLD, "ACTIVE", "FAILED")], 1),
        ([("NEW", "PRIMARY", "COMPLETED")], 2))
    lines = _roll(stack)
    assert lines[-1] == "llm-service-staging is stable: 2 tasks run the new value"
    assert calls["n"] == 3


def test_stable_only_when_the_new_deployment_is_the_only_one_and_at_full_count(stack, mocker):
    _, calls = _scripted(
        mocker,
        ([("NEW", "PRIMARY", "COMPLETED"), (OLD, "ACTIVE", "COMPLETED")], 2),  # old tasks still draining
        ([("NEW", "PRIMARY", "COMPLETED")], 1),                               # not at full count yet
        ([("NEW", "PRIMARY", "COMPLETED")], 2))
    _roll(stack)
    assert calls["n"] == 3


def test_the_new_deployment_failing_is_reported_with_its_reason(stack, mocker):
    _scripted(mocker, ([("NEW", "PRIMARY", "IN_PROGRESS"), (OLD, "ACTIVE", "COMPLETED")], 2),
              ([("NEW", "ACTIVE", "FAILED"), (OLD, "PRIMARY", "COMPLETED")], 2))
    with pytest.raises(rollout.Failure, match=r"^the new deployment failed \(tasks failed to start\)"):
        _roll(stack)


def test_a_newer_deployment_taking_over_is_not_reported_as_this_ones_success(stack, mocker):
    """Someone else's `pulumi up` starts another deployment meanwhile: this command cannot say
    its value is running, because the tasks it waited for were replaced."""
    _scripted(mocker, ([("NEW", "ACTIVE", "IN_PROGRESS"), ("ecs-svc/3", "PRIMARY", "IN_PROGRESS")], 2),
              ([("ecs-svc/3", "PRIMARY", "COMPLETED")], 2))
    with pytest.raises(rollout.Failure, match="was replaced by a newer one before it completed"):
        _roll(stack)


def test_an_old_deployment_completed_is_not_the_new_one(stack, mocker):
    """Only the deployment UpdateService started counts: the previous one, COMPLETED and alone
    (a read from before the update), never ends the wait."""
    _scripted(mocker, ([(OLD, "PRIMARY", "COMPLETED")], 2))
    with pytest.raises(rollout.Failure, match="not stable after 300 s .*the new value is stored"):
        _roll(stack, timeout=300)



def test_a_deployment_that_was_seen_and_then_vanished_was_replaced(stack, mocker):
    _scripted(mocker, ([("NEW", "PRIMARY", "IN_PROGRESS"), (OLD, "ACTIVE", "COMPLETED")], 2),
              ([("ecs-svc/4", "PRIMARY", "IN_PROGRESS")], 2))
    with pytest.raises(rollout.Failure, match="was replaced by a newer one before it completed"):
        _roll(stack)


def test_an_update_that_names_no_deployment_is_reported_not_waited_on(stack, mocker):
    """Injected: an UpdateService answer without deployments (moto always lists one)."""
    at_boundary(mocker, rollout, "ecs", "update_service", lambda real, **kw: {**real(**kw), "service": {}})
    with pytest.raises(rollout.Failure, match="^UpdateService answered without a PRIMARY deployment"):
        _roll(stack)


def test_an_outputs_file_names_the_service_secrets_and_region_the_stack_file_would_guess(tmp_path):
    """`pulumi stack output --json` saved to a file wins over the naming convention (a stack
    deployed elsewhere); a --region given on the command line wins over both."""
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:"
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({
        "secretArns": {"openai-api-key": f"{arn}a-AbCdEf"}, "clientKeysSecretArn": f"{arn}c-AbCdEf",
        "cacheAuthSecretArn": f"{arn}t-AbCdEf", "clusterName": "cluster-x", "serviceName": "service-x",
        "region": "eu-west-1"}))
    found = rollout.resolve("staging", outputs)
    assert (found.cluster, found.service, found.region) == ("cluster-x", "service-x", "eu-west-1")
    assert found.secrets == {"openai-api-key": f"{arn}a-AbCdEf", "client-keys": f"{arn}c-AbCdEf",
                             "cache-auth-token": f"{arn}t-AbCdEf"}
    assert rollout.resolve("staging", outputs, region="ap-southeast-2").region == "ap-southeast-2"
    assert rollout.resolve("staging").region == "us-east-1", "the stack file's, without outputs"
