"""A calibration point for the benchmark: the cheapest possible aiohttp relay (no auth, no policy,
no logging), POST in, POST out on a pooled connection, body back. What any aiohttp gateway pays
per request on this machine before doing anything of its own.

``python -m tests.bench.bare_relay --port 0 --upstream URL`` prints ``LISTENING <port>``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket

import aiohttp
from aiohttp import web


async def serve(port: int, upstream: str) -> None:
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))

    async def relay(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {"Content-Type": "application/json"}
        async with http.post(upstream, data=body, headers=headers) as response:
            data = await response.read()
            return web.Response(body=data, status=response.status, content_type="application/json")

    app = web.Application()
    app.router.add_post("/mcp", relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    await web.SockSite(runner, sock, backlog=4096).start()
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port, args.upstream))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
