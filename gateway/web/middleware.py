"""The two outer layers of every request: context (id, timer, log line) and error rendering."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from ..config import GatewayConfig, LoggingConfig, RouteConfig
from ..errors import GatewayError, TokenRejected
from ..logs import HIDE_SUBJECT, log_soon, mask_presented_token
from ..metrics import METRICS, NO_ROUTE, mcp_method_label
from ..principal import Principal
from ..upstream.proxy import STREAMED_STATUS, UPSTREAM_MS
from .listener import CONNECTIONS
from .metadata import route_challenge

log = structlog.get_logger("gateway.request")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Per-request state, set by the pipeline and read by the outer layers.
ROUTE = web.RequestKey("route", RouteConfig)
PRINCIPAL = web.RequestKey("principal", Principal)
OUTCOME = web.RequestKey("outcome", str)
REASON = web.RequestKey("reason", str)
RPC_ID = web.RequestKey("rpc_id", object)
REQUEST_ID = web.RequestKey("request_id", str)
MCP_METHOD = web.RequestKey("mcp_method", str)  # the method the body named (one message)
TARGET = web.RequestKey("target", str)  # the tool, resource or prompt the body named
# The config of the gateway serving this request (set by LiveGateway.handle; a reload swaps it).
SERVING_CONFIG = web.RequestKey("serving_config", GatewayConfig)
CLIENT_CLOSED = 499  # logged status of a request whose client left before any answer (nginx's)

# The gateway's `logging:` settings, read by the outermost layer.
LOGGING = web.AppKey("logging", LoggingConfig)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: a request id, structlog context, and one canonical log line per request."""
    request_id = secrets.token_hex(8)
    started = time.perf_counter()
    mask_presented_token(None)  # a kept-alive connection's previous request masked its own
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    request[REQUEST_ID] = request_id
    logging_config = request.app.get(LOGGING)
    if logging_config is not None and not logging_config.include_subject:
        structlog.contextvars.bind_contextvars(**{HIDE_SUBJECT: True})
    metrics = request.app.get(METRICS)
    if metrics is not None:
        metrics.in_flight.inc()
    connections = request.app.get(CONNECTIONS)
    if connections is not None:  # the headers are complete: the listener's header timer stops
        connections.request_started(request.transport)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:  # streamed responses got the header before their first byte
            response.headers["X-Request-Id"] = request_id
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        # The client went away and its handler was cancelled. A stream it already got the
        # headers of keeps their status (closing a stream is normal); else it is "cancelled".
        status = request.get(STREAMED_STATUS, CLIENT_CLOSED)
        if STREAMED_STATUS not in request:
            request[OUTCOME] = "cancelled"
        raise
    finally:
        if connections is not None:
            connections.request_finished(request.transport)
        duration_s = time.perf_counter() - started
        outcome = request.get(OUTCOME, "ok" if status < 400 else "error")
        _log_request(request, status, outcome, duration_s)
        if metrics is not None:
            metrics.in_flight.dec()
            route = request.get(ROUTE)
            metrics.request_finished(
                route.path if route is not None else NO_ROUTE,
                mcp_method_label(request.method, request.get(MCP_METHOD)),
                outcome,
                duration_s,
            )
        structlog.contextvars.clear_contextvars()


UNKNOWN_PATH = "(unknown path)"


def loggable_path(request: web.Request, routed: bool, status: int) -> str:
    """The path as the request line shows it: only a path the gateway served or routed.

    Never the query string, and never a path nobody configured: a client can put anything
    there, a token spelled so that no redaction recognises it (``%2E`` for its dots) included.
    """
    return request.path if routed or status < 400 else UNKNOWN_PATH


def _log_request(request: web.Request, status: int, outcome: str, duration_s: float) -> None:
    principal = request.get(PRINCIPAL)
    route = request.get(ROUTE)
    fields: dict[str, Any] = {
        "http_method": request.method,
        "path": loggable_path(request, route is not None, status),
        "status": status,
        "outcome": outcome,
        "duration_ms": round(duration_s * 1000, 3),
    }
    if route is not None:
        fields["route"] = route.path
    if (mcp_method := request.get(MCP_METHOD)) is not None:
        fields["mcp_method"] = mcp_method
    if (target := request.get(TARGET)) is not None:
        fields["target"] = target
    if (reason := request.get(REASON)) is not None:
        fields["reason"] = reason
    if (upstream_ms := request.get(UPSTREAM_MS)) is not None:
        fields["upstream_ms"] = upstream_ms
    if principal is not None:
        fields["subject"] = principal.subject
        fields["client_id"] = principal.client_id
    # After the response: aiohttp writes the response this handler returns in this same step,
    # so the client does not wait for the line (rendered in a copy of this context, which the
    # clearing that follows does not touch).
    log_soon(log, "info", "request", fields)


@web.middleware
async def error_responses(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render any GatewayError as HTTP: a Bearer challenge for auth errors, JSON-RPC otherwise."""
    try:
        return await handler(request)
    except GatewayError as exc:
        request[OUTCOME] = "rejected" if exc.status < 500 else "error"
        request[REASON] = exc.reason
        if isinstance(exc, TokenRejected):
            metrics = request.app.get(METRICS)
            if metrics is not None:
                metrics.token_rejected(exc.reason)
        if exc.detail:  # in the order of the request's other lines, which are logged soon
            log_soon(log, "info", "rejected", {"reason": exc.reason, "detail": exc.detail})
        response = render_error(request, exc)
        if exc.closes_connection:  # what is left of the request is never read
            response.force_close()
        return response


def render_error(request: web.Request, exc: GatewayError) -> web.Response:
    """The error's own status, JSON-RPC code and headers; the challenge is the route's, if any."""
    route = request.get(ROUTE)
    config = request.get(SERVING_CONFIG)
    challenge = route_challenge(config, route) if route is not None and config is not None else None
    return jsonrpc_error_response(
        exc.status, request.get(RPC_ID), exc.jsonrpc_code, exc.message, exc.headers(challenge)
    )


def jsonrpc_error_response(
    status: int, rpc_id: object, code: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """An HTTP error whose body is a JSON-RPC error, so MCP clients can read it (MCP 2026-07-28 K8)."""
    return web.Response(
        status=status,
        headers=headers,
        content_type="application/json",
        text=json.dumps({"jsonrpc": "2.0", "id": rpc_id, "error": {"code": code, "message": message}}),
    )
