"""Start the real gateway (`python -m gateway`) as a process on 127.0.0.1, for the tests.

Test client keys are made with the gateway's own key module; the process's stdout (one JSON line
per request) goes to a file the tests read.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from gateway.keys import add_key, empty_document
from infra.stack_files import ROOT
from tests.processes import die_with_parent

UPSTREAM_KEY = "sk-upstream-" + "u" * 32  # what only the gateway may send upstream
# The gateway's runtime alone (gateway/requirements.txt), as in the image, from an interpreter
# the task's user can run (`make test` builds it).
GATEWAY_PYTHON = ROOT / ".venv-gateway" / "bin" / "python"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_keys(*names: str, limits: Optional[dict[str, dict]] = None) -> tuple[str, dict[str, str]]:
    """A client-keys document and each client's key; `limits` per client name."""
    doc, keys = empty_document(), {}
    for name in names:
        keys[name] = add_key(doc, name)
        if limits and name in limits:
            doc["clients"][name]["limits"] = limits[name]
    return json.dumps(doc), keys


@dataclass
class Gateway:
    proc: subprocess.Popen
    port: int
    log: Path
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def lines_where(self, match, count: int = 1, timeout: float = 5) -> list[dict]:
        """The log lines `match` accepts, once `count` of them are written: a request's line is
        written after its last byte is sent, so a client may read the log before it lands."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.lines() if match(line)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def under_mutation() -> dict[str, str]:
    """Under `make mutate`, the mutant a test runs against is active in the gateway process too, and
    during mutmut's stats run the process reports the functions it runs (mutation/hook)."""
    mutant = os.environ.get("MUTANT_UNDER_TEST")
    if not mutant or "MUTATION_HITS" not in os.environ:
        return {}
    env = {"MUTANT_UNDER_TEST": mutant}
    if mutant == "stats":
        env |= {"MUTATION_HITS": os.environ["MUTATION_HITS"],
                "PYTHONPATH": f"{ROOT / 'mutation' / 'hook'}{os.pathsep}{ROOT}"}
    return env


def python() -> str:
    """The interpreter a gateway process runs on: the image's runtime (a third less to import than
    the dev venv, whose redis also loads OpenTelemetry), except under `make mutate`, whose mutants
    need mutmut, or where the runtime is not built."""
    if under_mutation() or not GATEWAY_PYTHON.exists():
        return sys.executable
    return str(GATEWAY_PYTHON)


def start(upstream: str, tmp: Path, env: Optional[dict[str, str]] = None, port: Optional[int] = None,
          clients: tuple[str, ...] = ("web-app", "batch"), user: Optional[tuple[int, int]] = None,
          wait: bool = True, keys_doc: Optional[tuple[str, dict[str, str]]] = None) -> Gateway:
    port = port or free_port()
    doc, keys = keys_doc or client_keys(*clients)
    full = {"PATH": os.environ["PATH"], "HOST": "127.0.0.1", "PORT": str(port),
            "OPENAI_BASE_URL": f"{upstream}/v1", "OPENAI_API_KEY": UPSTREAM_KEY, "CLIENT_KEYS": doc,
            "OPENAI_ORG_ID": "org-test", "OPENAI_PROJECT_ID": "proj_test",
            "GATEWAY_BACKOFF_BASE_SECONDS": "0.02", "GATEWAY_BACKOFF_MAX_SECONDS": "0.1",
            "GATEWAY_SSE_KEEPALIVE_SECONDS": "0.2", "GATEWAY_RETRY_BUDGET_SECONDS": "3",
            # A stop after SIGTERM waits this long without a request (the stack's: 20 s).
            "GATEWAY_DRAIN_QUIET_SECONDS": "0.3",
            "PYTHONPATH": str(ROOT), **under_mutation(), **(env or {})}
    log = tmp / f"gateway-{port}.log"
    extra = {}
    if user is not None:
        extra = {"user": user[0], "group": user[1], "extra_groups": []}
    proc = subprocess.Popen([python(), "-m", "gateway"], env=full, cwd=ROOT,  # noqa: PLW1509
                            stdout=log.open("wb"), stderr=subprocess.PIPE, preexec_fn=die_with_parent(), **extra)
    gw = Gateway(proc, port, log, keys)
    if wait:
        try:
            wait_healthy(gw)
        except RuntimeError:
            proc.kill()
            raise
    return gw


def wait_healthy(gw: Gateway, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gw.proc.poll() is not None:
            # Its stderr is a pipe here, a file where the soak starts it (soak/cluster.py).
            said = gw.proc.stderr.read().decode() if gw.proc.stderr is not None else "(stderr in a file)"
            raise RuntimeError(f"gateway exited {gw.proc.returncode}: {said}")
        try:
            with urllib.request.urlopen(f"{gw.url}/healthz", timeout=1) as r:  # noqa: S310 - loopback
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("gateway did not become healthy")
