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
    return subprocess.run([sys.executable, "-m", "gateway.healthcheck"], cwd=ROOT, timeout=10,
                          env={"PATH": os.environ["PATH"], "PORT": str(port), "PYTHONPATH": str(ROOT)}).returncode


def _stream(port: int, key: str, out: dict) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(CHAT),
                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    out["first"] = resp.read1(65536)
    out["started"].set()
    out["rest"] = resp.read()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_a_stream_in_flight_then_exits_0(upstream, tmp_path, workers):
    upstream.fake.script = [{"kind": "stream", "first_delay": 0.05, "delay": 0.4, "chunks": list("abcde")}
                            for _ in range(workers)]
    gw = gateway_process.start(upstream.url, tmp_path, env={"GATEWAY_WORKERS": str(workers)})
    assert healthcheck(gw.port) == 0
    got = {"started": threading.Event()}
    reader = threading.Thread(target=_stream, args=(gw.port, gw.keys["web-app"], got))
    reader.start()
    assert got["started"].wait(10)
    gw.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    # Stopped accepting: a new connection is refused, so the health check fails.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", gw.port), timeout=1).close()
    assert healthcheck(gw.port) == 1
    assert gw.proc.poll() is None, "still running while the stream is in flight"
    reader.join(15)
    body = got["first"] + got["rest"]
    assert body.count(b'"content"') == 5 and body.endswith(b"data: [DONE]\n\n"), "the stream finished"
    assert gw.proc.wait(10) == 0


def test_draining_workers_answer_503_on_connections_they_already_had(upstream, tmp_path):
    # A kept-alive connection (the ALB's health checks use them) sees the drain as a 503.
    upstream.fake.script = [{"kind": "stream", "delay": 0.4, "chunks": list("abcd")}]
    gw = gateway_process.start(upstream.url, tmp_path)
    kept = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    kept.request("GET", "/healthz")
    assert kept.getresponse().read() == b"ok\n"
    got = {"started": threading.Event()}
    reader = threading.Thread(target=_stream, args=(gw.port, gw.keys["web-app"], got))
    reader.start()
    assert got["started"].wait(10)
    gw.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    try:
        kept.request("GET", "/healthz")
        status = kept.getresponse().status
    except (OSError, http.client.HTTPException):
        status = None  # closed as idle: equally out of rotation
    assert status in (503, None)
    reader.join(15)
    assert gw.proc.wait(10) == 0


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
