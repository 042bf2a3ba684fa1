"""A moto server on 127.0.0.1 for the boto3 commands: a real emulation of the AWS APIs,
reset between tests. What it does not emulate is listed in tests/MOTO.md.

The server runs in this process (ThreadedMotoServer), so a test module that needs the same
deployed state in many tests asks `account(key, build)`: the first time in a process, `build()`
makes it through the API and a snapshot of moto's backends is kept; every later test starts from
a fresh copy of that snapshot. The state is what the API calls made, without making them again
(tests/test_verify.py proves a test's changes do not reach the next one)."""

from __future__ import annotations

import copy
import functools
import logging
import os
import socket
import urllib.request
from dataclasses import dataclass

import pytest

# moto, boto3 and botocore are imported where they are used: pytest-xdist's controller loads
# this plugin too, and runs no test.


@functools.cache  # once a process: mutmut runs several sessions in one
def _faster_dispatch() -> None:
    """moto 5.2's server lists its own package directory (~90 stat calls) and inspects the
    response class's members on every request: a third of each call's time here. Both answers
    are fixed for a process, so compute them once. werkzeug's per-request log lines go too.
    Each KMS key moto makes gets a new 2048-bit RSA key for Sign/Verify (~40 ms), which a
    symmetric key cannot do: symmetric keys share one. And each service's regions, which moto
    looks up in botocore's endpoint data for every backend it makes after a reset, are looked up
    once per service."""
    import moto.backends
    import moto.core.responses
    import moto.kms.models
    from moto.core.base_backend import AccountSpecificBackend

    lookup = AccountSpecificBackend._generate_regions.__wrapped__  # noqa: SLF001 - moto's, uncached
    regions = functools.cache(lambda service: tuple(lookup(None, service)))
    AccountSpecificBackend._generate_regions = lambda self, service: list(regions(service))  # noqa: SLF001

    generate, shared = moto.kms.models.generate_private_key, []

    def private_key(key_spec: str):
        if key_spec != "SYMMETRIC_DEFAULT":
            return generate(key_spec)
        if not shared:
            shared.append(generate(key_spec))
        return shared[0]

    moto.kms.models.generate_private_key = private_key

    modules = tuple(moto.backends.list_of_moto_modules())
    moto.backends.list_of_moto_modules = lambda: modules
    moto.core.responses.method_names_from_class = functools.lru_cache(maxsize=None)(
        moto.core.responses.method_names_from_class)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    port = _free_port()
    from moto.server import ThreadedMotoServer

    _faster_dispatch()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in
             ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
              "AWS_PROFILE", "AWS_DEFAULT_REGION", "MOTO_EC2_LOAD_DEFAULT_AMIS")}
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing",
                       # Not the stacks' region (us-east-1): a command that forgot the stack's region and
                       # used the operator's default would find nothing, as it would in AWS.
                       "AWS_DEFAULT_REGION": "ap-southeast-2",
                       # No test uses AMIs; loading moto's catalogue costs ~1 s after every reset.
                       "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"})
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    yield endpoint
    server.stop()
    # Clients made for this server point at its port: a later session in the same process (mutmut
    # runs several) must make new ones, as a new default session does for ops.boto.
    import boto3

    boto3.DEFAULT_SESSION = None
    own_client.cache_clear()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def reset(endpoint: str) -> None:
    req = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(req).read()  # noqa: S310 - loopback only


@pytest.fixture
def aws(moto_endpoint):
    """A clean emulated account for each test."""
    reset(moto_endpoint)
    return moto_endpoint


@dataclass(frozen=True)
class Snapshot:
    backends: tuple  # moto's BackendDicts in use when it was taken
    state: list      # a deep copy of their accounts, regions and resources


def snapshot() -> Snapshot:
    """Everything the emulated account holds now (one deep copy, so shared objects stay shared)."""
    from moto.core.base_backend import BackendDict, backend_lock

    with backend_lock:
        backends = tuple(BackendDict._instances)
        return Snapshot(backends, copy.deepcopy([dict(b) for b in backends]))


@pytest.fixture(scope="session")
def _built() -> dict:
    return {}


@pytest.fixture
def account(aws, _built):
    """`account(key, build)`: the emulated account as `build()` leaves it, and a copy of what
    `build` returned (ids and ARNs, not clients). `key` names the build, unique in the session."""
    def get(key, build):
        if key in _built:
            snap, value = _built[key]
            restore(aws, snap)
        else:
            value = build()
            _built[key] = snapshot(), value
        return copy.deepcopy(value)
    return get


@functools.cache
def own_client(service: str):
    """The tests' own client for a service (us-east-1): made once, and never one of the clients
    ops.boto hands the commands, so a patch on those never changes what a test reads."""
    import boto3

    return boto3.client(service, region_name="us-east-1")


def restore(endpoint: str, snap: Snapshot) -> None:
    """Reset the server, then put back a fresh copy of `snap` (the snapshot itself stays as taken)."""
    reset(endpoint)
    from moto.core.base_backend import BackendDict, backend_lock

    state = copy.deepcopy(snap.state)
    with backend_lock:
        for backend, accounts in zip(snap.backends, state, strict=True):
            backend.update(accounts)
            if backend not in BackendDict._instances:
                BackendDict._instances.append(backend)


def at_boundary(mocker, module, service: str, method: str, answer, spy: tuple[str, ...] = ()) -> dict:
    """Patch `module._client` so the `service` client's `method` answers `answer(real, **kwargs)`,
    where `real` is the call to moto. For what moto cannot produce (tests/MOTO.md):
    runtime states, refusals. `spy` names methods of that client to record. Returns the clients
    the module made, by service."""
    make, made = module._client, {}

    def client(svc, region):
        c = make(svc, region)
        # ops.boto hands out one client per service and region: patch it once (mocker undoes it).
        if svc == service and made.get(svc) is not c:
            real = getattr(c, method)
            mocker.patch.object(c, method, side_effect=lambda **kw: answer(real, **kw))
            for name in spy:
                mocker.spy(c, name)
        made[svc] = c
        return c

    mocker.patch.object(module, "_client", side_effect=client)
    return made


def _rollout(done: bool):
    """DescribeServices as a rollout reports it once finished (done), or while stuck on its way.
    moto keeps every rollout IN_PROGRESS at no running task, but a test says which it needs
    rather than lean on that: whether moto's service shows it can depend on what ran before."""
    def answer(real, **kw):
        r = real(**kw)
        for s in r["services"]:
            s["deployments"] = [{**s["deployments"][0], "status": "PRIMARY",
                                 "rolloutState": "COMPLETED" if done else "IN_PROGRESS"}]
            s["runningCount"] = s["desiredCount"] if done else 0
        return r
    return answer


@pytest.fixture
def rolls_out(mocker):
    """Injected: every rollout finishes. Returns the clients ops.rollout made, by service."""
    from ops import rollout

    return at_boundary(mocker, rollout, "ecs", "describe_services", _rollout(True), spy=("update_service",))


@pytest.fixture
def rollout_stuck(mocker):
    """Injected: every rollout stays on its way (a deployment that never reaches its count)."""
    from ops import rollout

    return at_boundary(mocker, rollout, "ecs", "describe_services", _rollout(False), spy=("update_service",))
