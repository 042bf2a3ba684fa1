"""`python -m gateway`: check the settings, then serve on HOST:PORT with GATEWAY_WORKERS processes
(gateway/server.py).

The settings are checked before the server's modules are imported (uvicorn, aiohttp, redis: half
a second), so a task with a bad setting stops with its one line at once.
"""

from __future__ import annotations

import sys

from gateway.settings import load_or_exit


def main() -> int:
    s = load_or_exit()
    from gateway import server  # noqa: PLC0415 - after the settings check, on purpose

    sock = server.bind(s)
    upstreams = ", ".join(f"{name} {spec.url}" for name, spec in s.upstreams.items())
    print(f"gateway: listening on {s.host}:{s.port} with {s.workers} worker(s), upstreams: {upstreams}",
          file=sys.stderr, flush=True)
    if s.workers == 1:
        server.serve(s, sock)
        return 0
    return server.prefork(s, sock)


if __name__ == "__main__":
    sys.exit(main())
