"""A moto server on 127.0.0.1 for the boto3 commands: a real emulation of the AWS APIs,
reset between tests. What it does not emulate is listed in tests/MOTO.md."""

from __future__ import annotations

import os
import socket
import urllib.request

import pytest
from moto.server import ThreadedMotoServer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in
             ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
              "AWS_PROFILE", "AWS_DEFAULT_REGION", "MOTO_EC2_LOAD_DEFAULT_AMIS")}
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       # No test uses AMIs; loading moto's catalogue costs ~1 s after every reset.
                       "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"})
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def aws(moto_endpoint):
    """A clean emulated account for each test."""
    req = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(req).read()  # noqa: S310 - loopback only
    return moto_endpoint


def at_boundary(mocker, module, service: str, method: str, answer, spy: tuple[str, ...] = ()) -> dict:
    """Patch `module._client` so the `service` client's `method` answers `answer(real, **kwargs)`,
    where `real` is the call to moto. For what moto cannot produce (tests/MOTO.md):
    runtime states, refusals. `spy` names methods of that client to record. Returns the clients
    the module made, by service."""
    make, made = module._client, {}

    def client(svc, region):
        c = made[svc] = make(svc, region)
        if svc == service:
            real = getattr(c, method)
            mocker.patch.object(c, method, side_effect=lambda **kw: answer(real, **kw))
            for name in spy:
                mocker.spy(c, name)
        return c

    mocker.patch.object(module, "_client", side_effect=client)
    return made
