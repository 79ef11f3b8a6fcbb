"""The gateway application, assembled once in ``build_app``.

What a request goes through is ``gateway.web.pipeline``; what one config opens at run time is
``gateway.web.resources``; how a reload swaps configs under running requests is
``gateway.web.live``. This module only puts them together.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web, web_response

from ..audit_trail.trail import AuditTrail
from ..auth.key_registry import KeyRegistry
from ..config import GatewayConfig
from ..metrics import METRICS, GatewayMetrics
from .limits import ADMISSION, Admission, ProcessLimits, open_file_limit, process_limits
from .listener import CONNECTIONS, Connections
from .live import LIVE, LiveGateway, add_health_routes, remember_prepared
from .middleware import LOGGING, error_responses, request_context
from .pipeline import dispatch
from .resources import Gateway, open_gateway

# The process's resolved limits, which the listener is started with.
LIMITS = web.AppKey("limits", ProcessLimits)
# The process's audit trail (`audit:`; one for the app's life, since it needs a restart to change).
AUDIT_TRAIL = web.AppKey("audit_trail", AuditTrail)

# The `Server` header of every answer the process writes: the product, never a version.
SERVER_HEADER = "mcp-auth-gateway"


def hide_server_version() -> None:
    """Make every response of this process say ``Server: mcp-auth-gateway``, not aiohttp's
    ``Python/3.x aiohttp/3.x``.

    aiohttp has no setting for it (aio-libs/aiohttp#3140): ``StreamResponse._prepare_headers``
    does ``headers.setdefault("Server", SERVER_SOFTWARE)`` with this module constant for every
    response, including those its protocol layer writes itself (the 400 for a request its
    parser refused, the 500 for an unhandled error), which no middleware or
    ``on_response_prepare`` hook reaches; and that hook runs before the ``setdefault``, so it
    could replace the value but not remove the header. Replacing the constant, here and only
    here, covers the gateway's and the admin listener's answers alike (tests/integration/
    test_malformed_http.py checks every kind). It names the gateway without a version, so an
    operator can still tell which hop answered.
    """
    # Assigned by name: aiohttp imports the constant into web_response without re-exporting it.
    setattr(web_response, "SERVER_SOFTWARE", SERVER_HEADER)  # noqa: B010


async def defer_continue(request: web.Request) -> None:
    """``Expect: 100-continue`` is answered by ``pipeline.read_body``, once the caller is known.

    aiohttp's own handler sends ``100 Continue`` before any middleware runs, inviting anyone to
    send a body; here a request without a valid token gets its 401 first and sends none. Any
    other expectation is refused with 417, as aiohttp does.
    """
    expect = request.headers.get("Expect", "")
    if expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect[:64]}")


def build_app(config: GatewayConfig, limits: ProcessLimits | None = None) -> web.Application:
    """The aiohttp application for one config; ``app[LIVE].reload(config)`` swaps in another.

    ``limits``: the process's resolved ``limits:`` (default: from the config and this process's
    open-file limit); they stay for the application's life, across reloads.
    """
    hide_server_version()
    limits = limits or process_limits(config.limits, open_file_limit())
    # One registry for the app's life: counters continue across reloads.
    metrics = GatewayMetrics()
    # The issuers' keys too: each gateway generation borrows them, so a reload that keeps an
    # issuer keeps its cached keys and refresh task (gateway.auth.key_registry).
    keys = KeyRegistry(metrics)
    # Opened in `lifecycle`, before the first gateway; each generation records into it.
    trail = AuditTrail(config.audit, metrics, include_subject=config.logging.include_subject)
    live: LiveGateway[Gateway] = LiveGateway(
        config, lambda new_config: open_gateway(new_config, metrics, keys, trail), dispatch
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
    app[LIMITS] = limits
    app[AUDIT_TRAIL] = trail
    app[ADMISSION] = Admission(limits, metrics)
    app[CONNECTIONS] = Connections(limits.header_timeout_s, limits.send_timeout_s, metrics)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await trail.open()  # a trail that cannot open stops the start
        try:
            await live.start()
            yield
            await live.aclose()
            await keys.aclose()  # after every generation returned its leases
        finally:
            await trail.aclose()  # after the last request: seals the open segment, flushes

    app.cleanup_ctx.append(lifecycle)
    app.on_response_prepare.append(remember_prepared)
    add_health_routes(app.router, live)
    # MCP routes, metadata and the minted tokens' keys sit behind one catch-all: aiohttp freezes
    # its router at start-up, and a reload may change the routes.
    app.router.add_route("*", "/{path:.*}", live.handle, expect_handler=defer_continue)
    return app
