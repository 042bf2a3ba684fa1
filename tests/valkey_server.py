"""A real Valkey-compatible server (Debian's redis-server) on 127.0.0.1 with TLS and AUTH, as
ElastiCache runs it for the stack (transit encryption required, an AUTH token). Certificates come
from a test CA made with trustme; `.ci/run` installs the server."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import redis
import trustme

from tests.gateway_process import free_port
from tests.processes import die_with_parent

AUTH = "test-auth-token-0123456789abcdef0123456789abcdef"  # noqa: S105 - a test server's


@dataclass
class Server:
    port: int
    ca_file: Path
    proc: subprocess.Popen
    folder: Path
    auth: str = AUTH
    _client: Optional[redis.Redis] = field(default=None, repr=False)

    def client(self) -> redis.Redis:
        """The tests' client, made once per server process: each new TLS connection loads the
        system's CA bundle (~50 ms of CPU), seconds of the suite when each test made its own."""
        if self._client is None:
            self._client = redis.Redis(host="127.0.0.1", port=self.port, password=self.auth, ssl=True,
                                       ssl_ca_certs=str(self.ca_file))
        return self._client

    def env(self) -> dict[str, str]:
        """What the task definition gives the gateway, pointed here."""
        return {"CACHE_HOST": "127.0.0.1", "CACHE_READER_HOST": "localhost", "CACHE_PORT": str(self.port),
                "CACHE_TLS": "true", "CACHE_AUTH_TOKEN": self.auth, "CACHE_TLS_CA_FILE": str(self.ca_file)}

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> None:
        """Back at the same address with the same certificates, and empty (as a replacement node)."""
        self.stop()
        self.proc = _run(self.folder, self.port, self.auth)
        _wait(self)


def start(folder: Path, port: int = 0, auth: str = AUTH) -> Server:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    port = port or free_port()
    server = Server(port, folder / "ca.pem", _run(folder, port, auth), folder, auth)
    _wait(server)
    return server


def start_replica(primary: Server, folder: Path) -> Server:
    """A replica of `primary` with its certificate (one name for both, as behind one endpoint),
    replicating over TLS with the same AUTH token, as an ElastiCache replica does."""
    for name in ("ca.pem", "cert.pem", "key.pem"):
        shutil.copy(primary.folder / name, folder / name)
    port = free_port()
    extra = ["--replicaof", "127.0.0.1", str(primary.port), "--masterauth", primary.auth,
             "--tls-replication", "yes"]
    # The primary sends its first full copy at once, not after its default 5 s wait for more
    # replicas: a replica is only one once it has that copy (an ElastiCache replica has it long
    # before a failover; one promoted before would come up empty).
    primary.client().config_set("repl-diskless-sync-delay", 0)
    server = Server(port, folder / "ca.pem", _run(folder, port, primary.auth, extra), folder, primary.auth)
    _wait(server)
    deadline = time.monotonic() + 15
    while server.client().info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            raise RuntimeError("the replica did not get the primary's copy within 15 s")
        time.sleep(0.05)
    return server


def _run(folder: Path, port: int, auth: str, extra: Optional[list[str]] = None) -> subprocess.Popen:
    binary = shutil.which("valkey-server") or shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("no valkey-server or redis-server: `apt-get install redis-server` (.ci/run does)")
    return subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(folder / "cert.pem"), "--tls-key-file", str(folder / "key.pem"),
         "--tls-ca-cert-file", str(folder / "ca.pem"), "--tls-auth-clients", "no",
         "--requirepass", auth, "--save", "", "--appendonly", "no", "--dir", str(folder), *(extra or [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent())  # noqa: PLW1509


def _wait(server: Server) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if server.client().ping():
                return
        except (redis.RedisError, OSError):
            time.sleep(0.05)
    server.stop()
    raise RuntimeError("the test cache server did not start")
