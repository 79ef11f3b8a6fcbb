"""An official-SDK MCP server whose tool definitions come from a file: restart it with another file
and its tools have changed, as a compromised or careless upstream's would (tool pinning tests).

Run from the repository root::

    python -m tests.support.drifting_upstream --port 0 --tools FILE [--page-size N] [--json-response]

``FILE`` holds a JSON list of tool definitions as ``tools/list`` shows them (camelCase keys). The
SDK's low-level ``Server`` lists them as given (``--page-size``: in pages, with ``nextCursor``)
and answers any ``tools/call`` with the text ``called <name>``. Wrapped in the same request
recorder as ``upstream_server`` (``GET /__records``), so a test can tell what reached the upstream.
Prints ``LISTENING <port>`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.transport_security import TransportSecuritySettings

from tests.support.upstream_server import MCP_PATH, Recorder, serve


def build_server(definitions: list[dict[str, Any]], page_size: int | None) -> Server[Any]:
    tools = [types.Tool.model_validate(definition) for definition in definitions]

    async def list_tools(_context: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        if page_size is None:
            return types.ListToolsResult(tools=tools)
        start = int(params.cursor) if params is not None and params.cursor else 0
        end = start + page_size
        return types.ListToolsResult(
            tools=tools[start:end], next_cursor=str(end) if end < len(tools) else None
        )

    async def call_tool(_context: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"called {params.name}")])

    return Server("drifting-upstream", version="1.0.0", on_list_tools=list_tools, on_call_tool=call_tool)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tools", type=Path, required=True, help="JSON list of tool definitions")
    parser.add_argument("--page-size", type=int, default=None, help="list the tools in pages of this size")
    parser.add_argument("--json-response", action="store_true", help="answer POSTs with application/json")
    args = parser.parse_args(argv)
    server = build_server(json.loads(args.tools.read_text()), args.page_size)
    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        json_response=args.json_response,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        host="127.0.0.1",
    )
    try:
        asyncio.run(serve(args.port, Recorder(app)))
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
