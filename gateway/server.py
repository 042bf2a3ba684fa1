"""The server: uvicorn on a socket bound once, in one process or forked workers that share it.

On SIGTERM each worker drains, for at most GATEWAY_DRAIN_SECONDS (the task's stop timeout less a
margin for exiting before SIGKILL):

- it marks itself draining: `/healthz` answers 503 from then on;
- it keeps accepting while the load balancer may still send: until no request has come for
  GATEWAY_DRAIN_QUIET_SECONDS (a registered target is health-checked every interval; the
  container's own check does not count), and for at most GATEWAY_DRAIN_ACCEPT_SECONDS (by then
  the failing health checks have taken the target out of rotation). In a deploy or scale-in ECS
  sends SIGTERM only after the target's deregistration has ended, so nothing comes and it stops
  accepting after that quiet spell; on a Fargate Spot interruption SIGTERM comes first, and
  requests the load balancer sends until it takes the target out are served, not refused;
- then it stops accepting, lets the requests and streams in flight finish by the deadline, and
  exits 0. SIGINT (Ctrl-C, or a second signal) stops accepting at once.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from types import FrameType
from typing import Optional

import uvicorn

from gateway.app import App
from gateway.settings import Settings


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: App, s: Settings) -> None:
        super().__init__(config)
        self.gateway, self.s = app, s
        self.drain_started: Optional[float] = None

    def handle_exit(self, sig: int, frame: Optional[FrameType]) -> None:
        if sig == signal.SIGTERM and self.drain_started is None:
            self._captured_signals.append(sig)
            self.gateway.draining = True
            self.drain_started = time.monotonic()
            return
        self.gateway.draining = True
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        """Every 0.1 s. A draining worker that should stop accepting closes its listener first, and
        leaves uvicorn's shutdown to the next tick: a connection accepted a moment before (its
        request not read yet) would be closed unanswered by the shutdown; a tick later its request
        is in flight, and waited for."""
        if self.drain_started is None or self.should_exit:
            return await super().on_tick(counter)
        if not any(server.is_serving() for server in self.servers):  # closed at the last tick
            self.should_exit = True  # uvicorn waits for what is in flight, then exits
        else:
            why = self._stop_accepting(time.monotonic(), self.drain_started)
            if why:
                for server in self.servers:
                    server.close()
                print(f"gateway: draining: stopped accepting after {time.monotonic() - self.drain_started:.1f} s "
                      f"({why}); {len(self.server_state.tasks)} in flight, "
                      f"{self.config.timeout_graceful_shutdown:.0f} s left to finish", file=sys.stderr, flush=True)
        return await super().on_tick(counter)

    def _stop_accepting(self, now: float, started: float) -> str:
        """Why a draining worker stops accepting now ("" while it should go on), having set how
        long what is in flight may still run."""
        s = self.s
        deadline = started + s.drain_seconds
        # uvicorn annotates it int, and waits with it as a timeout: a float keeps the fraction.
        self.config.timeout_graceful_shutdown = max(0.0, deadline - now)  # type: ignore[assignment]
        if now - self.gateway.last_request >= s.drain_quiet_seconds:
            return f"no request for {s.drain_quiet_seconds:g} s"
        if now - started >= min(s.drain_accept_seconds, s.drain_seconds):
            if s.drain_accept_seconds < s.drain_seconds:
                return f"{s.drain_accept_seconds:g} s since SIGTERM: the load balancer has taken the target out"
            return f"the drain deadline ({s.drain_seconds:g} s)"
        return ""


def config(app: App, s: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app, loop="uvloop", http="httptools", lifespan="on", access_log=False, log_level="warning",
        timeout_keep_alive=s.client_keepalive_seconds,
        timeout_graceful_shutdown=int(s.drain_seconds), backlog=2048, server_header=False,
        date_header=False,
    )


def bind(s: Settings) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in s.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((s.host, s.port))
    sock.set_inheritable(True)
    return sock


def serve(s: Settings, sock: socket.socket) -> None:
    app = App(s)
    # uvicorn re-raises the signal that stopped it once it has drained; with the default handler
    # that kills the process (exit 143). After a clean drain the gateway exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    _Server(config(app, s), app, s).run(sockets=[sock])


def prefork(s: Settings, sock: socket.socket) -> int:
    children = []
    for _ in range(s.workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                serve(s, sock)
            except BaseException:  # noqa: BLE001 - a worker reports failure by its exit code
                code = 1
            os._exit(code)
        children.append(pid)
    # The workers hold the listening socket; if the parent kept it open too, the kernel would
    # go on accepting connections into the backlog after every worker stopped.
    sock.close()

    def forward(sig: int, frame: Optional[FrameType]) -> None:
        for pid in children:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    worst = 0
    for _ in children:
        _, status = os.wait()
        code = os.waitstatus_to_exitcode(status)
        if code != 0 and worst == 0:
            worst = code if code > 0 else 1
            forward(signal.SIGTERM, None)  # one worker died: stop the rest, ECS replaces the task
    return worst
