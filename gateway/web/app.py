"""The gateway application, assembled once in ``build_app``.

What a request goes through is ``gateway.web.pipeline``; what one config opens at run time is
``gateway.web.resources``; how a reload swaps configs under running requests is
``gateway.web.live``. This module only puts them together.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..config import GatewayConfig
from ..metrics import METRICS, GatewayMetrics
from .live import LIVE, LiveGateway, add_health_routes, remember_prepared
from .middleware import LOGGING, error_responses, request_context
from .pipeline import dispatch
from .resources import Gateway, open_gateway


def build_app(config: GatewayConfig) -> web.Application:
    """The aiohttp application for one config; ``app[LIVE].reload(config)`` swaps in another."""
    # One registry for the app's life: counters continue across reloads.
    metrics = GatewayMetrics()
    live: LiveGateway[Gateway] = LiveGateway(
        config, lambda new_config: open_gateway(new_config, metrics), dispatch
    )
    app = web.Application(
        middlewares=[
            # Outermost: first in, last out, so the one log line and the request metrics see
            # every outcome, errors and cancellations included.
            request_context,
            # Any GatewayError below becomes its HTTP answer (status, JSON-RPC body, challenge),
            # rendered with the config of the gateway serving the request, which a reload changes.
            error_responses,
        ],
        # Bodies are read by `pipeline.read_body` with the route's own limit.
        client_max_size=max(route.max_body_bytes for route in config.routes),
    )
    app[LIVE] = live
    app[METRICS] = metrics
    app[LOGGING] = config.logging

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await live.start()
        yield
        await live.aclose()

    app.cleanup_ctx.append(lifecycle)
    app.on_response_prepare.append(remember_prepared)
    add_health_routes(app.router, live)
    # MCP routes, metadata and the minted tokens' keys sit behind one catch-all: aiohttp freezes
    # its router at start-up, and a reload may change the routes.
    app.router.add_route("*", "/{path:.*}", live.handle)
    return app
