"""The boto3 client the operator commands use (apikey, clientkeys, rollout, verify, ci_roles).

Each command binds it as its own `_client`, the seam its tests patch to inject what moto cannot
produce.

One client per service and region for each boto3 session: clients are thread-safe, and making
one loads its service model and event hooks (10 to 25 ms), which `verify --wait` and the rollout
waits would otherwise pay on every poll. A new default session (other credentials) gets new
clients.
"""

from __future__ import annotations

import weakref

from infra import private_api

_made: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def client(service: str, region: str):
    session = private_api.default_boto3_session()  # what boto3.client() itself uses
    clients = _made.setdefault(session, {})
    if (service, region) not in clients:
        clients[service, region] = session.client(service, region_name=region)
    return clients[service, region]
