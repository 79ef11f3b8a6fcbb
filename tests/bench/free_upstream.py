"""A nearly free MCP upstream for the benchmark (not an MCP server: no SDK, no sessions, no checks).

``python -m tests.bench.free_upstream --port 0`` prints ``LISTENING <port>``. On ``/mcp``:
POST answers ``tools/call`` and ``tools/list`` (and anything else, with ``{}``) as
``application/json`` at once; GET opens an idle ``text/event-stream`` (one comment, then
nothing) that lasts until the client leaves; DELETE answers 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from typing import Any

from aiohttp import web

_TOOLS = {"tools": [{"name": n, "inputSchema": {"type": "object"}} for n in ("echo", "add", "secret_admin")]}


async def post(request: web.Request) -> web.Response:
    message = json.loads(await request.read())
    method = message.get("method")
    if method == "tools/call":
        name = (message.get("params") or {}).get("name")
        result: dict[str, Any] = {"content": [{"type": "text", "text": f"called {name}"}], "isError": False}
    elif method == "tools/list":
        result = _TOOLS
    else:
        result = {}
    if "id" not in message:
        return web.Response(status=202)
    body = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}, separators=(",", ":"))
    return web.Response(text=body, content_type="application/json")


async def get(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    await response.prepare(request)
    await response.write(b": idle\n\n")
    try:
        await asyncio.Event().wait()  # until the client leaves (handler cancellation)
    finally:
        pass
    return response


async def delete(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post("/mcp", post)
    app.router.add_get("/mcp", get)
    app.router.add_delete("/mcp", delete)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    site = web.SockSite(runner, sock, backlog=4096)
    await site.start()
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
