"""ops.boto: one client per service and region for each boto3 session; how the commands word AWS's failures."""

from __future__ import annotations

import os

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from infra.stack_files import ROOT
from ops import apikey, boto, ci_roles, clientkeys, teardown, verify
from tests.conftest import help_text, refusal


def test_a_client_is_made_once_per_service_and_region_and_again_for_a_new_session(monkeypatch, aws):
    ecs = boto.client("ecs", "us-east-1")
    assert boto.client("ecs", "us-east-1") is ecs
    assert boto.client("ecs", "eu-west-1") is not ecs
    assert boto.client("elbv2", "us-east-1") is not ecs
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # e.g. other credentials in the environment
    assert boto.client("ecs", "us-east-1") is not ecs


# How the operator commands word an AWS failure: each case with the exact line an operator reads.
def _client_error(code: str, message: str = "why", operation: str = "PutSecretValue") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


@pytest.mark.parametrize(("error", "stack", "line"), [
    (NoCredentialsError(), "prod",
     "no AWS credentials found: set AWS_PROFILE or assume the stack's deploy role"),
    (_client_error("ResourceNotFoundException"), "prod",
     "the secret does not exist; deploy the stack first (pulumi up --stack prod)"),
    (_client_error("ResourceNotFoundException"), None,
     "the secret does not exist; deploy the stack first (pulumi up)"),
    (_client_error("AccessDeniedException", "not allowed"), "prod", "access denied to the secret: not allowed"),
    (_client_error("AccessDenied", "no"), "prod", "access denied to the secret: no"),
    (_client_error("UnrecognizedClientException", "bad token"), "prod", "access denied to the secret: bad token"),
    (_client_error("ThrottlingException"), "prod",
     "AWS throttled the call (ThrottlingException); nothing more was written, try again shortly"),
    (_client_error("Throttling"), "prod",
     "AWS throttled the call (Throttling); nothing more was written, try again shortly"),
    (_client_error("TooManyRequestsException"), "prod",
     "AWS throttled the call (TooManyRequestsException); nothing more was written, try again shortly"),
    (_client_error("ClusterNotFoundException", "gone"), "prod", "ECS ClusterNotFoundException: gone"),
    (_client_error("ServiceNotFoundException", "gone"), "prod", "ECS ServiceNotFoundException: gone"),
    (_client_error("InternalFailure", "oops"), "prod", "AWS error InternalFailure: oops"),
    (ClientError({}, "PutSecretValue"), "prod", "AWS error : "),
    (EndpointConnectionError(endpoint_url="https://secretsmanager"), "prod",
     'AWS call failed: Could not connect to the endpoint URL: "https://secretsmanager"'),
])
def test_each_aws_failure_reads_as_one_exact_line(error, stack, line):
    assert apikey.explain_aws(error, "the secret", stack) == line


def test_teardown_names_the_call_aws_refused():
    assert teardown._aws_error(_client_error("DependencyViolation", "in use", "DeleteVpc")) == \
        "AWS refused DeleteVpc: DependencyViolation: in use"
    assert teardown._aws_error(NoCredentialsError()) == \
        "no AWS credentials found: set AWS_PROFILE or assume the stack's deploy role"
    assert teardown._aws_error(ValueError("no outputs")) == "no outputs"


# Every operator command's --help, and each subcommand's: an operator at 3 a.m. reads these first.
HELP = [(ci_roles.main, []), (clientkeys.main, []), (verify.main, []), (teardown.main, []),
        (teardown.main, ["ready"]), (teardown.main, ["restore"])]


def test_the_commands_help_is_the_reviewed_one(monkeypatch, capsys):
    """Line for line (UPDATE_GOLDEN=1 rewrites tests/golden/ops-help.txt after a deliberate change)."""
    shown = ""
    for main, argv in HELP:
        shown += f"$ python -m {main.__module__} {' '.join([*argv, '--help'])}\n"
        shown += help_text(lambda a, main=main, argv=argv: main([*argv, *a]), monkeypatch, capsys) + "\n"
    golden = ROOT / "tests" / "golden" / "ops-help.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(shown)
    assert shown == golden.read_text()


@pytest.mark.parametrize("main,argv", [
    (ci_roles.main, ["show", "--repo", "acme/llm-service"]), (verify.main, []),
    (clientkeys.main, ["list"]), (teardown.main, ["ready"])])
def test_a_command_without_its_stack_is_refused(main, argv, capsys):
    """The stack decides every name a command acts on: none guesses it."""
    required = refusal(main, argv, capsys).split("the following arguments are required: ")[1]
    assert "--stack" in required.split(", ")
