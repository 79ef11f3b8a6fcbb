"""Running the gateway: one listener, signals, and a clean stop."""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from .app import build_app
from .config import GatewayConfig

log = structlog.get_logger("gateway.server")


async def start_gateway(
    config: GatewayConfig, *, host: str | None = None, port: int | None = None
) -> tuple[web.AppRunner, int]:
    """Start the gateway's listener; returns the runner and the bound port (port 0 picks a free one)."""
    runner = web.AppRunner(
        build_app(config),
        # A client that goes away cancels its handler, which closes the upstream request
        # (MCP 2026-07-28: closing the stream is cancellation) and frees the connection.
        handler_cancellation=True,
        # Our own canonical log line replaces the access log, which would print query strings.
        access_log=None,
    )
    await runner.setup()
    site = web.TCPSite(runner, host or config.listen.host, config.listen.port if port is None else port)
    await site.start()
    sockets = [sock for server in runner.sites for sock in (server._server.sockets if server._server else [])]  # type: ignore[attr-defined]
    bound_port = sockets[0].getsockname()[1] if sockets else config.listen.port
    return runner, bound_port


async def serve(config: GatewayConfig) -> None:
    """Serve until SIGINT or SIGTERM."""
    runner, port = await start_gateway(config)
    log.info("listening", host=config.listen.host, port=port, routes=[route.path for route in config.routes])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await runner.cleanup()
