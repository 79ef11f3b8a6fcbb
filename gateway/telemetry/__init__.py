"""OpenTelemetry for the gateway: traces of MCP requests (``tracing:``).

``open_tracing`` is the only entry point the rest of the gateway needs at start-up; the code on
the request path calls the hooks of ``gateway.telemetry.spans``, which cost a context-variable
read when tracing is off. ``gateway.telemetry.tracing`` (and with it OpenTelemetry) is imported
only for a config that has ``tracing:``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ..config import TracingConfig
from .spans import ServerTracing

__all__ = ["open_tracing"]


@contextlib.asynccontextmanager
async def open_tracing(config: TracingConfig | None) -> AsyncIterator[ServerTracing | None]:
    """The tracer for ``config`` (None without one), flushed and stopped on exit."""
    if config is None:
        yield None
        return
    from .tracing import Tracing  # OpenTelemetry only for a gateway that traces

    # Off the loop: the exporter's HTTP session and the span processor's thread start here.
    tracing = await asyncio.to_thread(Tracing, config)
    try:
        yield tracing
    finally:
        await tracing.aclose()
