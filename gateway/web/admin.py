"""The admin listener (``admin: {host, port}``): ``/metrics``, ``/healthz`` and ``/readyz``.

A second aiohttp listener, separate from the one MCP clients reach, so metrics are never served
to them and the admin port can stay on loopback or an internal network. It runs inside the
gateway application's lifecycle: it starts once the gateway has started and stops before the
gateway closes, so ``/readyz`` always reflects a live gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from aiohttp import web

from ..config import AdminConfig, GatewayConfig
from ..metrics import CONTENT_TYPE_LATEST, METRICS
from .app import GATEWAY
from .live import LIVE

log = structlog.get_logger("gateway.admin")


@dataclass
class AdminListener:
    """Where the admin listener is; ``port`` is the bound one (config port 0 picks a free one)."""

    config: AdminConfig
    port: int | None = None
    runner: web.AppRunner | None = None


ADMIN = web.AppKey("admin", AdminListener)


def admin_app(gateway_app: web.Application) -> web.Application:
    """The admin application; it reads the gateway application's metrics and readiness per request."""

    async def metrics(_request: web.Request) -> web.Response:
        body = gateway_app[METRICS].exposition()
        # CONTENT_TYPE_LATEST carries a charset, which aiohttp wants as a header, not content_type.
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        live = gateway_app.get(LIVE)  # the gateway serving now (a reload swaps it)
        ready = live.current.ready if live is not None else gateway_app[GATEWAY].ready
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics, allow_head=True)
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_get("/readyz", readyz, allow_head=True)
    return app


def start_admin(gateway_app: web.Application, config: GatewayConfig) -> AdminListener | None:
    """With ``admin:`` configured, run the admin listener with ``gateway_app`` (call before its runner's
    ``setup``); the listener is reachable as ``gateway_app[ADMIN]``. Without it, nothing happens."""
    if config.admin is None:
        return None
    listener = AdminListener(config.admin)
    gateway_app[ADMIN] = listener

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        runner = web.AppRunner(admin_app(gateway_app), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, listener.config.host, listener.config.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        listener.runner = runner
        sockets = getattr(site._server, "sockets", None) or ()  # the bound port (0 picks one)
        listener.port = sockets[0].getsockname()[1] if sockets else listener.config.port
        log.info("admin_listening", host=listener.config.host, port=listener.port)
        yield
        listener.runner = None
        await runner.cleanup()

    gateway_app.cleanup_ctx.append(lifecycle)
    return listener
