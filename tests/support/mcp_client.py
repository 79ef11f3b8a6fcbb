"""Thin helpers around the official MCP SDK client (mcp 2.3.0) for integration tests.

Usage::

    async with session_client(f"{base}/mcp", {"Authorization": "Bearer t"}, era="2026") as client:
        tools = await client.list_tools()
        progress = ProgressLog()
        result = await client.call_tool("slow_stream", {"count": 5}, progress_callback=progress)
        assert progress.values == [1, 2, 3, 4, 5]

The yielded object is the SDK's high-level `mcp.Client`, already connected:
``era="2025"`` ran the ``initialize`` handshake (session era, 2025-11-25), ``era="2026"``
pinned protocol 2026-07-28 with no round trip at all, and ``era="auto"`` is the SDK default:
probe ``server/discover`` at 2026-07-28 and fall back to ``initialize`` if that is refused.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Final, Literal

import httpx2
from mcp import Client
from mcp.client.client import ConnectMode
from mcp.client.session import MessageHandlerFnT
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_types import Implementation

Era = Literal["2025", "2026", "auto"]

MODES: Final[Mapping[Era, ConnectMode]] = {"2025": "legacy", "2026": "2026-07-28", "auto": "auto"}
"""`Client(mode=...)` for each era."""


@asynccontextmanager
async def session_client(
    url: str,
    headers: Mapping[str, str] | None = None,
    *,
    era: Era = "2025",
    read_timeout_seconds: float | None = 10.0,
    http_timeout: httpx2.Timeout | None = None,
    terminate_on_close: bool = True,
    message_handler: MessageHandlerFnT | None = None,
) -> AsyncIterator[Client]:
    """Connect the SDK client to `url` (the MCP endpoint), sending `headers` on every HTTP request.

    `headers` ride on the httpx2 client, so they go out with every POST, the 2025 GET stream
    and the closing DELETE. The client's response cache is disabled so every call reaches the
    wire. `read_timeout_seconds` bounds each MCP request; `http_timeout` overrides the SDK's
    HTTP timeouts (30 s, read 300 s). With `terminate_on_close` (2025 era) the client DELETEs
    its session on exit. `message_handler` gets every server notification the session surfaces
    (e.g. 2025 change notifications from the standalone GET stream) and transport exceptions.
    """
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            create_mcp_http_client(headers=dict(headers or {}), timeout=http_timeout)
        )
        transport = streamable_http_client(url, http_client=http, terminate_on_close=terminate_on_close)
        client = Client(
            transport,
            mode=MODES[era],
            cache=None,
            read_timeout_seconds=read_timeout_seconds,
            message_handler=message_handler,
            client_info=Implementation(name="gateway-tests", version="0"),
        )
        yield await stack.enter_async_context(client)


@dataclass
class ProgressLog:
    """A `progress_callback` that records each notification in arrival order.

    The SDK spawns one task per progress notification, in receive order, and this callback
    records before its first await, so `events` keeps wire order.
    """

    events: list[tuple[float, float | None, str | None]] = field(default_factory=list)
    arrival_times: list[float] = field(default_factory=list)

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.arrival_times.append(time.monotonic())
        self.events.append((progress, total, message))

    @property
    def values(self) -> list[float]:
        return [progress for progress, _, _ in self.events]
