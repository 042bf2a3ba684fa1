"""The contract between the stack and the gateway: start the gateway with exactly what the
synthesized task definition declares (environment, container port, user, health-check command)
and check that the target group's health check and a client request both work. Only what cannot
be real here is replaced: secret values by test values, and OPENAI_BASE_URL by the fake upstream.
Changing the task definition or the gateway alone breaks this test.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from infra.stack_files import ROOT
from tests import valkey_server
from tests.conftest import container
from tests.fake_upstream import Running
from tests.gateway_process import GATEWAY_PYTHON, UPSTREAM_KEY, Gateway, client_keys, wait_healthy


def image_env() -> dict[str, str]:
    """The ENV lines of gateway/Dockerfile: part of what the container runs with."""
    text = (ROOT / "gateway" / "Dockerfile").read_text().replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in line[4:].split())
    return env


def _port_free(port: int) -> bool:
    """Free for a bind as the gateway binds (SO_REUSEADDR: sockets in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))  # noqa: S104 - where the task binds
            return True
        except OSError:
            return False


@pytest.fixture(scope="module")
def task(staging):
    app = container(staging)
    tg = staging.one("aws:lb/targetGroup:TargetGroup").inputs
    (mapping,) = app["portMappings"]
    return {"app": app, "port": mapping["containerPort"], "health_path": tg["healthCheck"]["path"],
            "matcher": tg["healthCheck"]["matcher"], "tg_port": tg["port"]}


@pytest.fixture(scope="module")
def task_ports():
    """The task's own ports, held by one test process at a time: pytest-xdist may run this
    module's tests in two workers at once, and the second would find the ports taken."""
    with open(Path(tempfile.gettempdir()) / "llm-service-contract-ports.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, after the last test here
        yield


@pytest.fixture(scope="module")
def running(task, task_ports, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("running as the task's user needs root")
    assert GATEWAY_PYTHON.exists(), "the gateway's runtime venv is missing: run `make test`"
    env = {**image_env(), **{e["name"]: e["value"] for e in task["app"]["environment"]}}
    for port in (task["port"], int(env["CACHE_PORT"])):
        if not _port_free(port):
            pytest.skip(f"port {port} is taken on this machine")
    upstream = Running()
    doc, keys = client_keys("web-app")
    test_values = {"OPENAI_API_KEY": UPSTREAM_KEY, "CLIENT_KEYS": doc, "CACHE_AUTH_TOKEN": "t" * 64}
    env.update({s["name"]: test_values[s["name"]] for s in task["app"]["secrets"]})
    env["OPENAI_BASE_URL"] = f"{upstream.url}/v1"
    # Valkey on the task's CACHE_PORT with TLS (CACHE_TLS) and the AUTH token from the secret;
    # only the ElastiCache names, unresolvable here, and the test CA are replaced.
    assert env["CACHE_TLS"] == "true"
    # Outside pytest's 0700 temp tree: the task's user reads the CA, as it reads the system's bundle.
    folder = Path(tempfile.mkdtemp(prefix="llm-service-contract-"))
    folder.chmod(0o755)
    cache = valkey_server.start(folder, port=int(env["CACHE_PORT"]), auth=env["CACHE_AUTH_TOKEN"])
    cache.ca_file.chmod(0o644)
    env.update(CACHE_HOST="127.0.0.1", CACHE_READER_HOST="localhost", CACHE_TLS_CA_FILE=str(cache.ca_file))
    # The image's /usr/local/bin/python is the runtime venv's here, and its /app the repository.
    env.update(PATH=f"{GATEWAY_PYTHON.parent}:/usr/bin:/bin", PYTHONPATH=str(ROOT))
    uid, gid = (int(x) for x in task["app"]["user"].split(":"))
    log = tmp_path_factory.mktemp("contract") / "gateway.log"
    proc = subprocess.Popen(["python", "-m", "gateway"], env=env, cwd="/", user=uid, group=gid,
                            extra_groups=[], stdout=log.open("wb"), stderr=subprocess.PIPE)
    gw = Gateway(proc, task["port"], log, keys)
    wait_healthy(gw)
    yield {"gw": gw, "env": env, "uid": uid, "gid": gid, "upstream": upstream}
    gw.stop(signal.SIGINT)  # at once: SIGTERM would wait out the task's 20 s drain quiet spell
    cache.stop()
    shutil.rmtree(folder, ignore_errors=True)


def test_the_target_group_checks_the_port_and_path_the_gateway_serves(task, running):
    assert task["tg_port"] == task["port"]
    conn = http.client.HTTPConnection("127.0.0.1", task["port"], timeout=5)
    conn.request("GET", task["health_path"])
    assert str(conn.getresponse().status) == task["matcher"]


def test_the_container_health_check_command_passes_as_the_task_user(task, running):
    kind, *command = task["app"]["healthCheck"]["command"]
    assert kind == "CMD", "exec form: no shell and no curl in the image"
    result = subprocess.run(command, env=running["env"], cwd="/", user=running["uid"], group=running["gid"],
                            extra_groups=[], timeout=10, capture_output=True)
    assert result.returncode == 0, result.stderr


def _ask(task, gw):
    conn = http.client.HTTPConnection("127.0.0.1", task["port"], timeout=10)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(
        {"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}),
        headers={"Authorization": f"Bearer {gw.keys['web-app']}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp, resp.read()


def test_a_client_request_goes_through_and_the_cache_answers_the_second(task, running):
    gw = running["gw"]
    first, body = _ask(task, gw)
    assert first.status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "Hello there."
    seen = running["upstream"].fake.requests[-1]["headers"]
    assert seen["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    second, _ = _ask(task, gw)
    assert (first.getheader("x-gateway-cache"), second.getheader("x-gateway-cache")) == ("MISS", "HIT")
    assert len(running["upstream"].fake.requests) == 1


def test_the_image_env_is_read_from_the_dockerfile():
    env = image_env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PORT"] == "8080"


def test_the_gateway_runs_as_the_non_root_user_the_task_declares(task, running):
    status = Path(f"/proc/{running['gw'].proc.pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(running["uid"])] * 4
    assert running["uid"] != 0
