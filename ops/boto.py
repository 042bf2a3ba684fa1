"""The boto3 client the operator commands use (apikey, clientkeys, rollout, verify, ci_roles).

Each command binds it as its own `_client`, the seam its tests patch to inject what moto cannot
produce."""

from __future__ import annotations

import boto3


def client(service: str, region: str):
    return boto3.client(service, region_name=region)
