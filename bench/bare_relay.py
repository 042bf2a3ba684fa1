"""The floor for a relayed stream: the smallest pass-through that forwards a chat stream event by
event, with no auth, logs, metrics, limits or cache (issue 27). The gateway's streamed path is
measured against it in the same run (bench/streams.py).

    python bench/bare_relay.py PORT UPSTREAM_URL
"""

from __future__ import annotations

import sys

import aiohttp
import uvloop
from aiohttp import web


async def make_app(upstream: str) -> web.Application:
    app = web.Application()

    async def start(_: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(auto_decompress=False)

    async def stop(_: web.Application) -> None:
        await app["session"].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with app["session"].post(upstream + request.path, data=body, headers={
                "Content-Type": "application/json", "Authorization": "Bearer relay"}) as up:
            resp = web.StreamResponse(status=up.status, headers={"Content-Type": up.headers["Content-Type"]})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_post("/v1/chat/completions", relay)
    return app


if __name__ == "__main__":
    port, upstream = int(sys.argv[1]), sys.argv[2]
    web.run_app(make_app(upstream), host="127.0.0.1", port=port, access_log=None, print=None,
                loop=uvloop.new_event_loop())
