"""`python -m gateway.healthcheck`: the container health check, with the image's own interpreter
(no curl in the image). Exit 0 when GET http://127.0.0.1:$PORT/healthz answers 200 in 3 s.

It names itself (User-Agent), so that a draining gateway does not take it for the load balancer
still sending (gateway/server.py)."""

from __future__ import annotations

import http.client
import os
import sys

USER_AGENT = "llm-service-healthcheck"


def main() -> int:
    port = int(os.environ.get("PORT", "8080"))
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
        conn.request("GET", "/healthz", headers={"User-Agent": USER_AGENT})
        return 0 if conn.getresponse().status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
