"""The admin listener (``admin: {host, port}``): ``/metrics``, ``/healthz`` and ``/readyz``.

``/metrics`` holds the gateway's families and the process's own (open and maximum file
descriptors, resident memory, CPU); ``/readyz`` lists each route's circuit and health check and
is 503 once shutdown has begun, or while every route's circuit is open (``gateway.upstream.resilience``).

A second aiohttp listener, separate from the one MCP clients reach, so metrics are never served
to them and the admin port can stay on loopback or an internal network. It runs inside the
gateway application's lifecycle: it starts once the gateway has started and stops before the
gateway closes, so ``/readyz`` always reflects a live gateway. Under ``serve --workers N`` the
parent serves ``admin.port`` for the whole fleet and each worker this application on a private
socket (``gateway.web.fleet_admin``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest

from ..config import AdminConfig, GatewayConfig
from ..metrics import CONTENT_TYPE_LATEST, METRICS
from .fleet_metrics import FLEET_METRICS_PATH, families_to_json
from .live import LIVE, add_health_routes

log = structlog.get_logger("gateway.admin")


@dataclass
class AdminListener:
    """Where the admin listener is; ``port`` is the bound one (config port 0 picks a free one;
    None without a TCP listener: a worker of ``serve --workers N`` serving its parent only)."""

    config: AdminConfig
    port: int | None = None
    runner: web.AppRunner | None = None


@dataclass(frozen=True, slots=True)
class AdminPlace:
    """Where a process's admin application listens: a TCP port on ``admin.host`` (None: none) and a
    unix socket (None: none). A single gateway: ``admin.port`` only; a worker of ``serve --workers
    N``: its parent's private socket, and its own port with ``per_worker_ports``
    (``gateway.web.fleet_admin``)."""

    port: int | None
    unix_path: str | None = None


ADMIN = web.AppKey("admin", AdminListener)


def process_registry() -> CollectorRegistry:
    """This process's own figures (``process_open_fds``, ``process_max_fds``, resident memory,
    CPU seconds, start time; the Python version), kept apart from the gateway's families."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


# Built at import: registering reads /proc (blocking), which must not happen on the event loop.
PROCESS_REGISTRY: Final = process_registry()


def admin_app(gateway_app: web.Application) -> web.Application:
    """The admin application; it reads the gateway application's metrics and readiness per request."""

    process = PROCESS_REGISTRY

    async def metrics(_request: web.Request) -> web.Response:
        # The process figures are read from /proc: files, so off the loop.
        body = gateway_app[METRICS].exposition() + await asyncio.to_thread(generate_latest, process)
        # CONTENT_TYPE_LATEST carries a charset, which aiohttp wants as a header, not content_type.
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def fleet_metrics(_request: web.Request) -> web.Response:
        # The same figures for the parent of serve --workers N, as JSON (gateway.web.fleet_metrics).
        own = await asyncio.to_thread(lambda: tuple(process.collect()))
        body = families_to_json([*gateway_app[METRICS].registry.collect(), *own])
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/metrics", metrics, allow_head=True)
    app.router.add_get(FLEET_METRICS_PATH, fleet_metrics)
    add_health_routes(app.router, gateway_app[LIVE], details=True)  # the gateway serving now
    return app


def start_admin(
    gateway_app: web.Application, config: GatewayConfig, place: AdminPlace | None = None
) -> AdminListener | None:
    """With ``admin:`` configured, run the admin listener with ``gateway_app`` (call before its runner's
    ``setup``) at ``place`` (default: ``admin.port``); the listener is reachable as
    ``gateway_app[ADMIN]``. Without ``admin:``, or a place with neither port nor socket, nothing happens."""
    if config.admin is None:
        return None
    if place is None:
        place = AdminPlace(port=config.admin.port)
    if place.port is None and place.unix_path is None:
        return None
    listener = AdminListener(config.admin)
    gateway_app[ADMIN] = listener

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        # Idle connections close as on the MCP listener (aiohttp's own default is an hour).
        keepalive_s = config.limits.keepalive_timeout_s
        runner = web.AppRunner(admin_app(gateway_app), access_log=None, keepalive_timeout=keepalive_s)
        await runner.setup()
        try:
            if place.port is not None:
                await web.TCPSite(runner, listener.config.host, place.port).start()
            if place.unix_path is not None:
                await web.UnixSite(runner, place.unix_path).start()
        except BaseException:
            await runner.cleanup()
            raise
        listener.runner = runner
        # The bound port (config port 0 picks one); a unix socket's address is its path.
        ports = (address[1] for address in runner.addresses if isinstance(address, tuple))
        listener.port = next(ports, None)
        where = {} if place.unix_path is None else {"socket": place.unix_path}
        log.info("admin_listening", host=listener.config.host, port=listener.port, **where)
        yield
        listener.runner = None
        await runner.cleanup()

    gateway_app.cleanup_ctx.append(lifecycle)
    return listener
