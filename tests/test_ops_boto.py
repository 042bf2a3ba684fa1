"""ops.boto: one client per service and region for each boto3 session; how the commands word AWS's failures."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from ops import apikey, boto, teardown


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
