"""ops.boto: one client per service and region for each boto3 session."""

from __future__ import annotations

import boto3

from ops import boto


def test_a_client_is_made_once_per_service_and_region_and_again_for_a_new_session(monkeypatch, aws):
    ecs = boto.client("ecs", "us-east-1")
    assert boto.client("ecs", "us-east-1") is ecs
    assert boto.client("ecs", "eu-west-1") is not ecs
    assert boto.client("elbv2", "us-east-1") is not ecs
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # e.g. other credentials in the environment
    assert boto.client("ecs", "us-east-1") is not ecs
