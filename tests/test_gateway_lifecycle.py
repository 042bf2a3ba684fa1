"""The gateway process's life: start-up settings, the health-check command, and the drain on
SIGTERM with a stream in flight; plus the pure functions the request path relies on (retry
waits, backoff, TCP keepalive, client keys)."""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from gateway import keys
from gateway.settings import SettingsError, from_env
from gateway.upstream import backoff, keepalive_socket_factory, retry_after
from infra.stack_files import ROOT
from tests import gateway_process
from tests.fake_upstream import Running

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture(scope="module")
def upstream():
    return Running()


def healthcheck(port: int) -> int:
    """The container health check, as the task definition runs it."""
    # Under `make mutate`, with the mutant under test (gateway_process.under_mutation).
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **gateway_process.under_mutation(),
           "PORT": str(port)}
    return subprocess.run([sys.executable, "-m", "gateway.healthcheck"], cwd=ROOT, timeout=10, env=env).returncode


def _stream(port: int, key: str, out: dict) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(CHAT),
                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    out["first"] = resp.read1(65536)
    out["started"].set()
    try:
        out["rest"] = resp.read()
    except http.client.IncompleteRead as e:  # the connection closed mid-stream
        out["rest"], out["cut"] = e.partial, True


def _get(port: int, path: str = "/healthz", agent: str = "ELB-HealthChecker/2.0") -> int:
    """A request on a new connection, as the load balancer's health checker sends one."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path, headers={"User-Agent": agent})
    status = conn.getresponse().status
    conn.close()
    return status


def _draining_within(port: int, seconds: float, agent: str = "ELB-HealthChecker/2.0") -> bool:
    """Polls /healthz until it answers 503: the signal reaches each worker through the parent, a
    moment after it was sent. Never refused meanwhile: a draining gateway still answers."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _get(port, agent=agent) == 503:
            return True
        time.sleep(0.02)
    return False


def _refused_within(port: int, seconds: float) -> bool:
    """Polls until a new connection is refused: the listener is closed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return True
        time.sleep(0.05)
    return False


def _drain_lines(gw) -> list[str]:
    """After the process exited: what each worker said when it stopped accepting."""
    return [line for line in gw.proc.stderr.read().decode().splitlines() if "draining:" in line]


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_a_stream_in_flight_then_exits_0(upstream, tmp_path, workers):
    """A deploy or scale-in: ECS sends SIGTERM after the load balancer has let the target go, so
    nothing more comes. The gateway answers 503 on /healthz at once (it is still listening),
    stops accepting after the quiet spell with the stream still in flight, finishes it, exits 0."""
    upstream.fake.script = [{"kind": "stream", "first_delay": 0.05, "delay": 0.25, "chunks": list("abcdefgh")}
                            for _ in range(workers)]
    gw = gateway_process.start(upstream.url, tmp_path, env={"GATEWAY_WORKERS": str(workers)})
    assert healthcheck(gw.port) == 0
    got = {"started": threading.Event()}
    reader = threading.Thread(target=_stream, args=(gw.port, gw.keys["web-app"], got))
    reader.start()
    assert got["started"].wait(10)
    gw.proc.send_signal(signal.SIGTERM)
    assert _draining_within(gw.port, 5), "draining: out of rotation, but still answering"
    assert healthcheck(gw.port) == 1
    assert _refused_within(gw.port, 10), "stopped accepting once nothing came"
    reader.join(15)
    body = got["first"] + got["rest"]
    assert body.count(b'"content"') == 8 and body.endswith(b"data: [DONE]\n\n"), "the stream finished"
    assert gw.proc.wait(10) == 0
    lines = _drain_lines(gw)
    assert len(lines) == workers and all("(no request for 0.3 s)" in line for line in lines)
    assert sum(" 1 in flight" in line for line in lines) == 1, "the stream was in flight when accepting stopped"


def test_ctrl_c_stops_a_local_run_at_once_and_exits_0(upstream, tmp_path):
    """SIGINT (Ctrl-C on `make serve`) is not a deploy: no drain, uvicorn stops at once, and the
    process exits 0 without a traceback (the signal it hands uvicorn is the one it got)."""
    gw = gateway_process.start(upstream.url, tmp_path)
    gw.proc.send_signal(signal.SIGINT)
    assert gw.proc.wait(10) == 0
    assert "Traceback" not in gw.proc.stderr.read().decode()


def test_requests_that_keep_coming_after_sigterm_are_served_not_refused(upstream, tmp_path):
    """A Fargate Spot interruption: SIGTERM comes while the load balancer still holds the target.
    Its health checks (now 503) keep the gateway accepting, and a request it routes meanwhile is
    served, until the checks take the target out and it goes quiet."""
    upstream.fake.script = [{"kind": "ok"}]
    gw = gateway_process.start(upstream.url, tmp_path, env={"GATEWAY_DRAIN_QUIET_SECONDS": "0.6"})
    kept = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)  # the ALB reuses connections
    kept.request("GET", "/healthz")
    assert kept.getresponse().read() == b"ok\n"
    gw.proc.send_signal(signal.SIGTERM)
    for _ in range(250):  # until the signal has reached the worker (bounded: 250 x 0.02 s)
        kept.request("GET", "/healthz")
        response = kept.getresponse()
        body = response.read()
        if response.status != 200:
            break
        time.sleep(0.02)
    assert (response.status, body) == (503, b"draining\n"), "on a connection it already had"
    statuses = []
    for i in range(8):  # a health check every 0.15 s, for twice the quiet spell
        statuses.append(_get(gw.port))
        if i == 4:
            conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
            conn.request("POST", "/v1/chat/completions", body=json.dumps({**CHAT, "stream": False}),
                         headers={"Authorization": f"Bearer {gw.keys['web-app']}",
                                  "Content-Type": "application/json"})
            resp = conn.getresponse()
            assert (resp.status, b"Hello there." in resp.read()) == (200, True)
        time.sleep(0.15)
    assert statuses == [503] * 8
    assert _refused_within(gw.port, 10)
    assert gw.proc.wait(10) == 0
    (line,) = _drain_lines(gw)
    assert "(no request for 0.6 s)" in line


def test_a_load_balancer_that_never_goes_quiet_is_stopped_after_the_accept_window(upstream, tmp_path):
    """It keeps checking a registered target that fails its checks; once those failures have
    taken it out of rotation (GATEWAY_DRAIN_ACCEPT_SECONDS), what still comes is only checks."""
    gw = gateway_process.start(upstream.url, tmp_path, env={"GATEWAY_DRAIN_QUIET_SECONDS": "5",
                                                             "GATEWAY_DRAIN_ACCEPT_SECONDS": "1",
                                                             "GATEWAY_DRAIN_SECONDS": "30"})
    gw.proc.send_signal(signal.SIGTERM)
    answered = 0
    for _ in range(200):  # health checks until refused (bounded: 200 x 0.1 s)
        try:
            answered += _get(gw.port) == 503
        except OSError:
            break
        time.sleep(0.1)
    assert gw.proc.wait(15) == 0 and answered >= 3
    (line,) = _drain_lines(gw)
    assert "(1 s since SIGTERM: the load balancer has taken the target out); 0 in flight" in line


def test_what_is_still_in_flight_at_the_drain_deadline_is_stopped_and_the_process_exits_0(upstream, tmp_path):
    """Before ECS's SIGKILL: a stream longer than the drain ends there (its client gets no
    [DONE]), and the gateway exits 0 in time."""
    upstream.fake.script = [{"kind": "stream", "first_delay": 0.05, "delay": 0.4, "chunks": list("abcdefghij")}]
    gw = gateway_process.start(upstream.url, tmp_path, env={"GATEWAY_DRAIN_SECONDS": "1"})
    got = {"started": threading.Event()}
    reader = threading.Thread(target=_stream, args=(gw.port, gw.keys["web-app"], got))
    reader.start()
    assert got["started"].wait(10)
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(15) == 0
    reader.join(15)
    body = got["first"] + got["rest"]
    assert b"data: [DONE]" not in body
    # The client is told (an error event its SDK raises on), and the stream is charged.
    assert body.rstrip().endswith(b'"code":"gateway_draining"}}'), body[-200:]
    (line,) = _drain_lines(gw)
    assert " 1 in flight" in line
    (logged,) = gw.lines_where(lambda x: x.get("error") == "gateway_draining")
    assert logged["tokens_estimated"] is True and logged["OutputTokens"] >= body.count(b'"content"')


def test_a_stream_still_waiting_for_its_first_event_at_the_drain_deadline_is_told(upstream, tmp_path):
    """Started early (keepalives while the upstream thinks), then cut by the deadline: the client
    gets the same error event, never a stream that just stops."""
    upstream.fake.script = [{"kind": "slow", "delay": 5.0}]  # no headers yet: the stream is the gateway's
    gw = gateway_process.start(upstream.url, tmp_path, env={"GATEWAY_DRAIN_SECONDS": "1",
                                                             "GATEWAY_SSE_KEEPALIVE_SECONDS": "0.2"})
    got = {"started": threading.Event()}
    reader = threading.Thread(target=_stream, args=(gw.port, gw.keys["web-app"], got))
    reader.start()
    assert got["started"].wait(10)
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(15) == 0
    reader.join(15)
    body = got["first"] + got["rest"]
    assert body.startswith(b": keepalive") and b'"content"' not in body
    assert body.rstrip().endswith(b'"code":"gateway_draining"}}'), body[-200:]


def test_the_containers_own_health_check_does_not_hold_the_drain_open(upstream, tmp_path):
    """ECS runs the container check every 15 s inside the task: it names itself, so a draining
    gateway does not take it for the load balancer and stays open until the deadline."""
    gw = gateway_process.start(upstream.url, tmp_path, env={"GATEWAY_DRAIN_QUIET_SECONDS": "0.6",
                                                             "GATEWAY_DRAIN_SECONDS": "60"})
    gw.proc.send_signal(signal.SIGTERM)
    assert _draining_within(gw.port, 5, agent="llm-service-healthcheck")
    assert healthcheck(gw.port) == 1  # the command itself, once: it fails while draining
    for _ in range(200):
        try:
            assert _get(gw.port, agent="llm-service-healthcheck") == 503
        except OSError:
            break
        time.sleep(0.1)
    assert gw.proc.wait(15) == 0
    (line,) = _drain_lines(gw)
    assert "(no request for 0.6 s)" in line


def test_the_health_check_fails_when_the_gateway_is_down(tmp_path):
    assert healthcheck(gateway_process.free_port()) == 1


@pytest.mark.parametrize("env,line", [
    ({"OPENAI_API_KEY": ""}, "gateway: OPENAI_API_KEY is not set"),
    ({"PORT": "http"}, "gateway: PORT='http': a port number"),
    ({"CLIENT_KEYS": "", "HOST": "10.0.0.5"}, "gateway: CLIENT_KEYS is not set"),
    ({"CLIENT_KEYS": '{"clients": []}'}, "gateway: CLIENT_KEYS: not a client-keys document"),
    ({"OPENAI_BASE_URL": "api.openai.com"}, "gateway: OPENAI_BASE_URL='api.openai.com'"),
])
def test_bad_settings_stop_the_process_with_one_line(upstream, tmp_path, env, line):
    gw = gateway_process.start(upstream.url, tmp_path, env=env, wait=False)
    assert gw.proc.wait(10) == 2
    err = gw.proc.stderr.read().decode().strip()
    assert err.startswith(line) and "\n" not in err, err


def test_a_local_run_makes_itself_a_key_and_says_so():
    shown = []
    s = from_env({"OPENAI_API_KEY": "sk-x", "HOST": "127.0.0.1"}, log=shown.append)
    (message,) = shown
    key = message.rsplit(" ", 1)[1]
    assert message.startswith("local client key (this run only): llmgw_")
    assert s.clients.client_for(f"Bearer {key}".encode()).name == "local"
    with pytest.raises(SettingsError):
        from_env({"OPENAI_API_KEY": "sk-x", "HOST": "10.0.0.5"})


# --- pure functions --------------------------------------------------------------------------

@pytest.mark.parametrize("headers,expected", [
    ({"retry-after-ms": "250"}, 0.25),
    ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
    ({"retry-after": "2"}, 2.0),
    ({"retry-after": "0.5"}, 0.5),
    ({"retry-after": "0"}, 0.0),
    ({"retry-after-ms": "0"}, 0.0),
    ({"retry-after": "-3"}, 0.0),  # an upstream's nonsense never makes a negative sleep
    ({"retry-after-ms": "-250"}, 0.0),
    ({"retry-after": email.utils.formatdate(999_990, usegmt=True)}, 0.0),  # a date already past
    ({"retry-after": email.utils.formatdate(1_000_030, usegmt=True)}, 30.0),
    ({"retry-after": "soon"}, None),
    ({}, None),
])
def test_retry_after_reads_what_the_upstream_asks(headers, expected):
    assert retry_after(headers, now=1_000_000) == expected


def test_backoff_is_full_jitter_capped():
    assert backoff(0, 0.5, 8, rand=lambda: 1.0) == 0.5
    assert backoff(3, 0.5, 8, rand=lambda: 1.0) == 4.0
    assert backoff(10, 0.5, 8, rand=lambda: 1.0) == 8.0
    assert backoff(3, 0.5, 8, rand=lambda: 0.0) == 0.0


def test_upstream_sockets_send_keepalive_probes_under_the_nat_idle_timeout():
    sock = keepalive_socket_factory(60)((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 1)))
    with sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
        idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
        interval = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
        assert idle + interval < 350, "a probe goes out before the NAT gateway forgets the flow"


def test_client_keys_are_stored_as_hashes_and_checked_per_key():
    doc = keys.empty_document()
    key = keys.add_key(doc, "web-app")
    assert key not in json.dumps(doc) and keys.digest(key) in json.dumps(doc)
    table = keys.ClientKeys(doc)
    assert table.client_for(f"Bearer {key}".encode()).name == "web-app"
    assert table.client_for(f"bearer {key}".encode()).name == "web-app"
    assert table.client_for(key.encode()) is None, "the Bearer scheme is required"
    assert table.client_for(None) is None
    rotated = keys.add_key(doc, "web-app", keep_old=False)
    table = keys.ClientKeys(doc)
    assert table.client_for(f"Bearer {key}".encode()) is None
    assert table.client_for(f"Bearer {rotated}".encode()).name == "web-app"
    with pytest.raises(keys.KeyDocumentError):
        keys.add_key(doc, "Web App")


def test_the_store_pool_holds_as_many_connections_as_a_worker_serves_requests():
    """A request holds one store connection at a time: a smaller pool would run out under a
    burst, and an exhausted pool reads as an outage (every client on local limits)."""
    from gateway.app import App
    s = from_env({"OPENAI_API_KEY": "sk-x", "HOST": "127.0.0.1", "CACHE_HOST": "127.0.0.1",
                  "GATEWAY_MAX_IN_FLIGHT": "3000"}, log=lambda _: None)
    assert App(s).store.primary.connection_pool.max_connections >= 3000
