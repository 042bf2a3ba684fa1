"""The service as production runs it, on 127.0.0.1: HAProxy in the ALB's place, gateway processes
configured as the task definition configures one, Valkey (TLS, AUTH) as a primary and a replica
behind a TCP proxy in the place of ElastiCache's primary endpoint, and two fake OpenAI-compatible
upstreams. Each piece has the handles the faults use (soak/faults.py).

HAProxy stands in for the ALB: least outstanding connections (`leastconn`), health checks on
/healthz (every 250 ms, where the ALB's come every 5 s: the soak's minutes are short), the stack's
idle timeout, and a server's `drain` then `maint` states for a target's
deregistration. Unlike the ALB it retries a request whose connection to a target was refused
(`retry-on conn-failure`: nothing reached the target); it never resends a request a target
received. Every answer carries the server that took it (`X-Backend`), HAProxy's own 502s too. Where
a target dies before answering a request that came on a kept-alive client connection, HAProxy closes
that connection without an answer (so that a browser retries) and without a log line, where the ALB
answers 502: so the load opens a connection per request (soak/load.py), and every request a dead
target had is answered 502 and named.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import aiohttp

from tests import valkey_server
from tests.fake_upstream import Running
from tests.gateway_process import GATEWAY_PYTHON, UPSTREAM_KEY, Gateway, free_port, wait_healthy
from tests.processes import die_with_parent

ROOT = Path(__file__).resolve().parents[1]
# Where the gateways' code comes from: this checkout, or a scratch copy with a fault put in on
# purpose (SOAK_GATEWAY_ROOT), to show the soak catches it.
GATEWAY_ROOT = Path(os.environ.get("SOAK_GATEWAY_ROOT", ROOT))
BACKUP_KEY = "sk-backup-" + "b" * 30
SLOTS = 4  # HAProxy's server slots: three serving, one for a replacement to start in


class Proxy:
    """A TCP proxy in the place of ElastiCache's primary endpoint: a failover moves it to another
    node and drops every connection (as the endpoint's DNS change and the old primary's end do).
    While `partitioned` (the endpoint unreachable: a network partition) nothing answers and nothing
    is refused: a new connection is accepted and then hears nothing, and what is sent on an open one
    goes unanswered, so the gateway's connect and command timeouts are what it meets, as in AWS
    (a partition drops packets; it sends no reset). Held bytes flow again when it ends."""

    def __init__(self, target: int):
        self.target, self.port, self.partitioned, self.closed = target, free_port(), False, False
        self.links: set[asyncio.StreamWriter] = set()
        self.server: Optional[asyncio.base_events.Server] = None

    async def _heal(self) -> None:
        while self.partitioned and not self.closed:
            await asyncio.sleep(0.02)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._heal()
        if self.closed:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self.links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    await self._heal()
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()
                self.links.discard(dst)

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except asyncio.CancelledError:
            pass

    def cut(self) -> None:
        for w in list(self.links):
            w.close()
        self.links.clear()

    async def close(self) -> None:
        self.closed = True
        self.cut()
        await asyncio.sleep(0.2)  # each link's copying ends with its connections, not cancelled
        if self.server is not None:
            self.server.close()


@dataclass
class Slot:
    name: str
    port: int
    gateway: Optional[Gateway] = None


@dataclass
class Cluster:
    folder: Path
    task_env: dict[str, str]
    keys: dict[str, str]
    keys_doc: str
    upstreams: dict[str, Running] = field(default_factory=dict)
    slots: list[Slot] = field(default_factory=list)
    primary: Optional[valkey_server.Server] = None
    replica: Optional[valkey_server.Server] = None
    proxy: Optional[Proxy] = None
    haproxy: Optional[subprocess.Popen] = None
    states: dict[str, str] = field(default_factory=dict)  # each slot's state in the load balancer
    lb_port: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    # --- the pieces -------------------------------------------------------------------------
    async def start(self, gateways: int = 3, idle_timeout: int = 600) -> None:
        self.upstreams = {"default": Running(), "backup": Running()}
        for up in self.upstreams.values():
            up.fake.realistic = True
        self.primary = valkey_server.start(self._dir("valkey-primary"))
        self.replica = valkey_server.start_replica(self.primary, self._dir("valkey-replica"))
        self.proxy = Proxy(self.primary.port)
        await self.proxy.start()
        self.slots = [Slot(f"gw{i + 1}", free_port()) for i in range(SLOTS)]
        for slot in self.slots[:gateways]:
            self.start_gateway(slot)
            self.states[slot.name] = "ready"
        self.lb_port = free_port()
        self.haproxy = self._haproxy(idle_timeout)
        await asyncio.gather(*(self.wait_up(slot) for slot in self.slots[:gateways]))
        await self.wait_in_rotation(gateways)

    async def wait_in_rotation(self, n: int, timeout: float = 20) -> None:
        """Until the load balancer's health checks have put `n` targets in rotation."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.admin("show servers state gateways").splitlines()
            # Columns: be_id be_name srv_id srv_name srv_addr srv_op_state (2: running) ...
            up = [line for line in states[2:] if line.split()[5:6] == ["2"]]
            if len(up) >= n:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the load balancer has not put {n} targets in rotation")

    def _dir(self, name: str) -> Path:
        path = self.folder / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def gateway_env(self, port: int) -> dict[str, str]:
        """The task's environment, with what only differs here: addresses, the test CA, the secrets'
        values (injected by ECS in the task)."""
        assert self.proxy is not None and self.primary is not None
        env = dict(self.task_env)
        env.update(
            HOST="127.0.0.1", PORT=str(port), PATH=os.environ["PATH"], PYTHONPATH=str(GATEWAY_ROOT),
            OPENAI_BASE_URL=f"{self.upstreams['default'].url}/v1", OPENAI_API_KEY=UPSTREAM_KEY,
            CLIENT_KEYS=self.keys_doc, CACHE_AUTH_TOKEN=self.primary.auth, CACHE_HOST="127.0.0.1",
            CACHE_READER_HOST="localhost", CACHE_PORT=str(self.proxy.port),
            CACHE_TLS_CA_FILE=str(self.primary.ca_file), BACKUP_OPENAI_KEY=BACKUP_KEY,
        )
        if "GATEWAY_UPSTREAMS" in env:
            ups = json.loads(env["GATEWAY_UPSTREAMS"])
            ups["backup"]["baseUrl"] = f"{self.upstreams['backup'].url}/v1"
            env["GATEWAY_UPSTREAMS"] = json.dumps(ups)
        return env

    def start_gateway(self, slot: Slot) -> None:
        log = self.folder / f"{slot.name}-{len(self.logs)}.log"
        self.logs.append(log)
        python = str(GATEWAY_PYTHON) if GATEWAY_PYTHON.exists() else sys.executable
        proc = subprocess.Popen([python, "-m", "gateway"], env=self.gateway_env(slot.port), cwd=GATEWAY_ROOT,  # noqa: PLW1509, S603
                                stdout=log.open("wb"), stderr=(self.folder / f"{log.stem}.err").open("wb"),
                                preexec_fn=die_with_parent())
        slot.gateway = Gateway(proc, slot.port, log, self.keys)

    async def wait_up(self, slot: Slot) -> None:
        assert slot.gateway is not None
        try:
            await asyncio.to_thread(wait_healthy, slot.gateway, 30)
        except RuntimeError as e:
            err = slot.gateway.log.with_suffix(".err")
            raise RuntimeError(f"{slot.name}: {e}\n{err.read_text()[-2000:] if err.exists() else ''}") from None

    def _haproxy(self, idle: int) -> subprocess.Popen:
        servers = "\n".join(f"  server {s.name} 127.0.0.1:{s.port} check" + ("" if s.gateway else " disabled")
                            for s in self.slots)
        config = f"""global
  stats socket {self.folder / 'haproxy.sock'} mode 600 level admin
  maxconn 4000
defaults
  mode http
  timeout connect 2s
  timeout client {idle}s
  timeout server {idle}s
  timeout http-keep-alive {idle}s
  retries 2
  retry-on conn-failure
  # A connection to a target per request (and one from the client: soak/load.py): a target that
  # dies with a request on it is answered for with a 502 naming it, as the ALB answers.
  option http-server-close
  option redispatch
frontend lb
  bind 127.0.0.1:{self.lb_port}
  default_backend gateways
backend gateways
  balance leastconn
  option httpchk GET /healthz
  http-check expect status 200
  default-server inter 250ms fall 2 rise 2
  http-after-response set-header X-Backend "%s"
{servers}
"""
        path = self.folder / "haproxy.cfg"
        path.write_text(config)
        proc = subprocess.Popen(["haproxy", "-f", str(path)], stdout=subprocess.DEVNULL,  # noqa: S603, S607
                                stderr=(self.folder / "haproxy.err").open("wb"), preexec_fn=die_with_parent())
        deadline = time.monotonic() + 10
        while not (self.folder / "haproxy.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return proc

    def admin(self, command: str) -> str:
        """HAProxy's runtime API (the stats socket): `set server gateways/gw1 state drain`."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.folder / "haproxy.sock"))
            s.sendall(command.encode() + b"\n")
            out = b""
            while chunk := s.recv(4096):
                out += chunk
        return out.decode()

    def set_state(self, slot: Slot, state: str) -> None:
        self.admin(f"set server gateways/{slot.name} state {state}")
        self.states[slot.name] = state

    async def paid(self, key: str, timeout: float = 10) -> None:
        """Until every running gateway owes the store nothing (its /readyz `unpaid`, shown to a
        client): what a process counted alone or could not settle is in the counters then."""
        deadline = time.monotonic() + timeout
        pending = self.serving()
        async with aiohttp.ClientSession() as session:
            while pending and time.monotonic() < deadline:
                still = []
                for slot in pending:
                    try:
                        async with session.get(f"http://127.0.0.1:{slot.port}/readyz",
                                               headers={"Authorization": f"Bearer {key}"}) as resp:
                            owes = (await resp.json()).get("unpaid", 1)
                    except (aiohttp.ClientError, ValueError):
                        owes = 0 if slot.gateway is None or slot.gateway.proc.poll() is not None else 1
                    if owes:
                        still.append(slot)
                pending = still
                if pending:
                    await asyncio.sleep(0.1)

    def stored_spend(self, service: str) -> dict[str, int]:
        """Each client's day spend (nano-USD) as the primary holds it: what its limit is checked against."""
        assert self.primary is not None
        store = self.primary.client()
        out: dict[str, int] = defaultdict(int)
        for key in store.scan_iter(match=f"llmgw:{service}:usd:*"):
            client = key.decode().split(":")[-2]  # …:usd:<client>:<day>
            out[client] += int(store.get(key) or 0)
        return dict(out)

    def serving(self) -> list[Slot]:
        return [s for s in self.slots if s.gateway is not None and s.gateway.proc.poll() is None]

    def in_rotation(self) -> list[Slot]:
        """The running targets the load balancer sends new requests to (not one still starting,
        nor one draining)."""
        return [s for s in self.serving() if self.states.get(s.name) == "ready"]

    def flying(self) -> dict[str, int]:
        """Each target's requests in flight, as the load balancer counts them (its `scur`)."""
        rows = self.admin("show stat").splitlines()
        head = rows[0].lstrip("# ").split(",")
        at = {name: i for i, name in enumerate(head)}
        return {cols[at["svname"]]: int(cols[at["scur"]] or 0) for cols in (r.split(",") for r in rows[1:] if r)
                if cols[at["pxname"]] == "gateways" and cols[at["svname"]] not in ("BACKEND", "FRONTEND")}

    def spare(self) -> Slot:
        return next(s for s in self.slots if s.gateway is None or s.gateway.proc.poll() is not None)

    async def stop(self) -> None:
        for slot in self.slots:
            if slot.gateway is not None and slot.gateway.proc.poll() is None:
                slot.gateway.proc.send_signal(signal.SIGINT)
        for slot in self.slots:
            if slot.gateway is not None:
                try:
                    slot.gateway.proc.wait(15)
                except subprocess.TimeoutExpired:
                    slot.gateway.proc.kill()
        if self.haproxy is not None:
            self.haproxy.terminate()
            self.haproxy.wait(10)
        if self.proxy is not None:
            await self.proxy.close()
        for server in (self.replica, self.primary):
            if server is not None:
                server.stop()


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="llm-service-soak-"))


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
