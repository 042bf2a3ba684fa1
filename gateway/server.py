"""The server: uvicorn on a socket bound once, in one process or forked workers that share it.

On SIGTERM (ECS stopping the task) each worker marks itself draining (`/healthz` answers 503 from
then on), stops accepting, lets the requests and streams in flight finish for up to
GATEWAY_DRAIN_SECONDS (the stack sets the task's stop timeout minus a margin), and exits 0.
"""

from __future__ import annotations

import os
import signal
import socket

import uvicorn

from gateway.app import App
from gateway.settings import Settings


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: App):
        super().__init__(config)
        self.gateway = app

    def handle_exit(self, sig, frame) -> None:
        self.gateway.draining = True
        super().handle_exit(sig, frame)


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
    _Server(config(app, s), app).run(sockets=[sock])


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

    def forward(sig, frame) -> None:
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
