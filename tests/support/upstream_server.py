"""An unmodified official-SDK MCP server for integration tests, with a request recorder in front.

Run from the repository root::

    python -m tests.support.upstream_server --port 0 [--json-response] [--stateless] [--no-host-check]
        [--tasks]

Prints exactly one line, ``LISTENING <port>``, to stdout once the socket accepts connections.
One endpoint, ``/mcp``, serves both protocol eras: the SDK routes a request to the
2026-07-28 stateless handler when its ``MCP-Protocol-Version`` header names a non-handshake
version, and to the 2025 session transport otherwise (see NOTES_SDK.md).

Server-initiated notifications: the ``notify(kind, uri)`` tool pushes
``notifications/tools/list_changed`` or ``notifications/resources/updated`` to 2026-07-28
``subscriptions/listen`` streams and to the calling 2025 session's standalone GET stream;
``demo://counter`` is the resource it updates.

``--tasks`` adds MCP 2025-11-25 tasks (task-augmented ``tools/call``, ``tasks/get``, ``tasks/result``,
``tasks/cancel``, ``tasks/list``, ``notifications/tasks/status``): see ``tests/support/upstream_tasks.py``.

The recorder (``Recorder``) is plain ASGI around the SDK's Starlette app. It appends one record
per HTTP request as soon as the request arrives and fills in the body, response status and
completion as they happen. If the client goes away before the response finished, it appends
``{"event": "disconnect", ...}``. ``GET /__records`` returns the records as JSON and
``POST /__records/clear`` empties the list.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import socket
import sys
from itertools import count
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.support.upstream_tasks import TaskAugmentation, TasksExtension, TaskStore

MCP_PATH = "/mcp"
RECORDS_PATH = "/__records"
CLEAR_PATH = "/__records/clear"
COUNTER_URI = "demo://counter"
FILES_TEMPLATE = "docs://files/{name}"  # a resource template: docs://files/<name> reads "contents of <name>"


def build_server(*, tasks: bool = False) -> MCPServer:
    """The demo server: the same tools, resource and prompt in both eras (``tasks``: and 2025-11-25 tasks)."""
    store = TaskStore()
    server = MCPServer(
        "upstream-fixture",
        version="1.0.0",
        log_level="WARNING",
        extensions=[TasksExtension(store)] if tasks else None,
        middleware=[TaskAugmentation(store)] if tasks else None,
    )

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def whoami() -> str:
        """Return a constant; the upstream never sees anything sensitive."""
        return "ok"

    @server.tool()
    async def slow_stream(ctx: Context, count: int = 200, delay_ms: int = 5) -> str:
        """Send `count` progress notifications, `delay_ms` apart, then return."""
        for i in range(1, count + 1):
            await ctx.report_progress(i, count, f"step {i}")
            if i < count:
                await anyio.sleep(delay_ms / 1000)
        return f"done {count}"

    @server.tool()
    async def sleep(seconds: float) -> str:
        """Sleep, then return."""
        await anyio.sleep(seconds)
        return f"slept {seconds}"

    @server.tool()
    async def notify(ctx: Context, kind: str = "tools", uri: str = COUNTER_URI) -> str:
        """Push one server-initiated change notification to whoever listens.

        `kind="tools"` sends `notifications/tools/list_changed`; `kind="resource"` sends
        `notifications/resources/updated` for `uri`. Both eras are served at once:
        - 2026-07-28: published on the server's subscription bus, so every open
          `subscriptions/listen` stream whose filter asks for it gets it (stamped with its
          subscription id); nobody else does.
        - 2025: sent on the calling session's standalone channel (no related request id), which
          the SDK transport writes to that session's GET SSE stream, or drops if none is open.
        Each delivery path is a no-op in the other era.
        """
        session = ctx.request_context.session
        if kind == "tools":
            await ctx.notify_tools_changed()
            await session.send_tool_list_changed()
        elif kind == "resource":
            counter[uri] = counter.get(uri, 0) + 1
            await ctx.notify_resource_updated(uri)
            await session.send_resource_updated(uri)
        else:
            raise ValueError(f"unknown kind {kind!r}: use 'tools' or 'resource'")
        return f"notified {kind}"

    counter: dict[str, int] = {}

    @server.resource("demo://greeting", mime_type="text/plain")
    def greeting() -> str:
        return "Hello from the upstream fixture"

    @server.resource(COUNTER_URI, mime_type="text/plain")
    def counter_value() -> str:
        """How many times `notify(kind="resource")` touched this resource."""
        return str(counter.get(COUNTER_URI, 0))

    @server.resource(FILES_TEMPLATE, mime_type="text/plain")
    def docs_file(name: str) -> str:
        """A resource template: the SDK percent-decodes what `{name}` captures before this runs."""
        return f"contents of {name}"

    @server.prompt()
    def greet(name: str) -> str:
        """A greeting prompt."""
        return f"Please greet {name}."

    return server


class Recorder:
    """ASGI middleware that records every HTTP request and serves the records."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.records: list[dict[str, Any]] = []
        self._ids = count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == RECORDS_PATH and scope["method"] == "GET":
            await _send_json(send, self.records)
            return
        if path == CLEAR_PATH and scope["method"] == "POST":
            self.records.clear()
            await _send_json(send, {"cleared": True})
            return
        await self._record(scope, receive, send)

    async def _record(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        record: dict[str, Any] = {
            "id": next(self._ids),
            "method": scope["method"],
            "path": path,
            "query_string": scope["query_string"].decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "body": "",
            "body_b64": "",
            "status": None,
            "completed": False,
        }
        self.records.append(record)

        # Read the whole body up front (the SDK buffers it anyway) so the disconnect watcher
        # below can call receive() without stealing body chunks from the app.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                first = message
                break
            body.extend(message.get("body", b""))
            record["body"] = body.decode("latin-1")
            record["body_b64"] = base64.b64encode(body).decode("ascii")
            if not message.get("more_body", False):
                first = {"type": "http.request", "body": bytes(body), "more_body": False}
                break
        pending: list[Message] = [first]
        finished = anyio.Event()

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                record["completed"] = True
                finished.set()
            await send(message)

        async def watch_disconnect() -> None:
            # uvicorn answers every receive() after the body with http.disconnect once the
            # connection is lost (or the response completed, which `finished` rules out).
            if first["type"] == "http.disconnect" or (await receive())["type"] == "http.disconnect":
                if not finished.is_set():
                    self.records.append({"event": "disconnect", "id": record["id"], "path": path})

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_disconnect)
            try:
                await self.app(scope, replay, watching_send)
            finally:
                tg.cancel_scope.cancel()


async def _send_json(send: Send, payload: Any) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build_app(*, json_response: bool, stateless: bool, host_check: bool, tasks: bool = False) -> Recorder:
    """The SDK's own Streamable HTTP app at /mcp, wrapped in the recorder."""
    security = None if host_check else TransportSecuritySettings(enable_dns_rebinding_protection=False)
    sdk_app = build_server(tasks=tasks).streamable_http_app(
        streamable_http_path=MCP_PATH,
        json_response=json_response,
        stateless_http=stateless,
        transport_security=security,  # None: the SDK allows Host 127.0.0.1:*, localhost:*, [::1]:*
        host="127.0.0.1",
    )
    return Recorder(sdk_app)


async def serve(port: int, app: Recorder) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(app, http="h11", log_level="warning", timeout_graceful_shutdown=1, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task  # startup failed: surface the error
            return
        await asyncio.sleep(0.01)
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    await task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--json-response", action="store_true", help="answer POSTs with application/json")
    parser.add_argument(
        "--stateless", action="store_true", help="2025 era without sessions (SDK stateless_http=True)"
    )
    parser.add_argument(
        "--no-host-check", action="store_true", help="disable the SDK's Host/Origin (DNS-rebinding) check"
    )
    parser.add_argument("--tasks", action="store_true", help="serve MCP 2025-11-25 tasks (upstream_tasks.py)")
    args = parser.parse_args(argv)
    app = build_app(
        json_response=args.json_response,
        stateless=args.stateless,
        host_check=not args.no_host_check,
        tasks=args.tasks,
    )
    try:
        asyncio.run(serve(args.port, app))
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
