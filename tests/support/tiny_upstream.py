"""A tiny, fast, recording MCP upstream for property tests (not an MCP server: no SDK, no sessions).

It answers JSON-RPC POSTs from fixed catalogues, as ``application/json`` on ``/json`` and as
``text/event-stream`` on ``/sse`` (an unrelated notification event first, then one event per
response), and records the path and the exact body bytes of every request it receives, together
with the exact bytes it answered. A body that is a JSON array (a 2025-03-26 batch) gets one
response per request in it.

A request carrying ``MCP-Protocol-Version: 2026-07-28`` gets 2026-style list results
(``cacheScope: "public"``, ``ttlMs``), so a gateway that must mark filtered results private has
something to overwrite.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOOLS = ("get_a", "get_b", "get_ab", "set_a", "del_a", "admin", "Get_a", "get_a ", "g\u0435t_a", "get_/")
PROMPTS = ("get_a", "summary", "Summary", "admin", "set_b")
RESOURCES = (
    "file:///pub/a.txt",
    "file:///pub/sub/b.txt",
    "file:///secret/key",
    "demo://a",
    "demo://b",
    "demo://ab",
    "Demo://a",
)
TEMPLATES = ("file:///pub/{name}", "file:///secret/{name}", "demo://{id}")

# Sent before the answer on every SSE response. It mentions tools and looks like a list result on
# purpose: it is a notification, so a list filter must leave it alone, byte for byte.
NOTIFICATION_EVENT = (
    b"event: message\n"
    b'data: {"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info",'
    b'"data":{"tools":[{"name":"admin"}],"note":"unrelated"}}}\n\n'
)
NEXT_CURSOR = "cursor-1"


def _list_result(method: str) -> dict[str, Any] | None:
    if method == "tools/list":
        return {"tools": [{"name": name, "inputSchema": {"type": "object"}} for name in TOOLS]}
    if method == "prompts/list":
        return {"prompts": [{"name": name} for name in PROMPTS]}
    if method == "resources/list":
        return {"resources": [{"uri": uri, "name": uri.rsplit("/", 1)[-1]} for uri in RESOURCES]}
    if method == "resources/templates/list":
        return {"resourceTemplates": [{"uriTemplate": uri, "name": uri} for uri in TEMPLATES]}
    return None


def result_for(message: dict[str, Any], modern: bool) -> dict[str, Any]:
    method = message.get("method")
    params = message.get("params") or {}
    listed = _list_result(str(method))
    if listed is not None:
        listed["nextCursor"] = NEXT_CURSOR
        if modern:
            listed.update({"cacheScope": "public", "ttlMs": 60000})
        return listed
    if method == "tools/call":
        return {"content": [{"type": "text", "text": f"called {params.get('name')}"}], "isError": False}
    if method == "prompts/get":
        return {"messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}]}
    if method == "resources/read":
        return {"contents": [{"uri": params.get("uri"), "text": "content"}]}
    return {}


@dataclass
class Received:
    path: str
    body: bytes
    answer: bytes = b""


@dataclass
class TinyUpstream:
    """Start with ``await start()``; ``url(sse)`` is the endpoint; ``records`` what arrived."""

    records: list[Received] = field(default_factory=list)
    base_url: str = ""
    _runner: web.AppRunner | None = None

    def url(self, *, sse: bool) -> str:
        return f"{self.base_url}/{'sse' if sse else 'json'}"

    def clear(self) -> None:
        self.records.clear()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/json", self._handle)
        app.router.add_post("/sse", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        record = Received(request.path, body)
        self.records.append(record)
        modern = request.headers.get("MCP-Protocol-Version") == "2026-07-28"
        document = json.loads(body)
        messages = document if isinstance(document, list) else [document]
        answers = [
            {"jsonrpc": "2.0", "id": message["id"], "result": result_for(message, modern)}
            for message in messages
            if "id" in message
        ]
        if request.path == "/json":
            payload: Any = answers if isinstance(document, list) else answers[0]
            record.answer = json.dumps(payload, separators=(",", ":")).encode()
            return web.Response(body=record.answer, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        record.answer = NOTIFICATION_EVENT
        await response.write(NOTIFICATION_EVENT)
        for answer in answers:
            event = b"event: message\ndata: " + json.dumps(answer, separators=(",", ":")).encode() + b"\n\n"
            record.answer += event
            # Two writes per event, so the relay also sees an event split across chunks.
            await response.write(event[:20])
            await response.write(event[20:])
        await response.write_eof()
        return response
