"""The demo's upstream: a plain MCP server built with the official SDK that knows nothing of OAuth.

Run on its own with ``python -m gateway.demo.upstream --port 8001``; ``mcp-auth-gateway demo``
starts it for you. Needs the ``demo`` extra (``pip install 'mcp-auth-gateway[demo]'``).
"""

from __future__ import annotations

import argparse
import datetime

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer


def build_demo_server() -> MCPServer:
    server = MCPServer("demo-upstream", version="1.0.0", log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def utc_now() -> str:
        """The current time in UTC, ISO 8601."""
        return datetime.datetime.now(datetime.UTC).isoformat()

    @server.tool()
    async def countdown(ctx: Context, start: int = 5) -> str:
        """Count down with one progress notification per second."""
        for remaining in range(start, 0, -1):
            await ctx.report_progress(start - remaining + 1, start, f"{remaining}…")
            await anyio.sleep(1)
        return "lift-off"

    @server.resource("demo://readme", mime_type="text/plain")
    def readme() -> str:
        return "This upstream has no authentication of its own; the gateway in front of it does."

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    app = build_demo_server().streamable_http_app(streamable_http_path="/mcp", host=args.host)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
