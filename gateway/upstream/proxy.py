"""Forwarding to the upstream MCP server and streaming its answer back.

- Request headers go upstream by allowlist only: the client's ``Authorization``, ``Cookie`` and
  hop-by-hop headers can never leak (MCP "Token Passthrough"). ``Host`` is the upstream's own,
  set by the HTTP client from the upstream URL (upstream SDKs check it against DNS rebinding).
- SSE is relayed chunk by chunk as it arrives: the first event reaches the client while the
  upstream is still sending, and a long-lived stream has no read timeout.
- Connections are pooled and kept alive per upstream.
- A client that disconnects cancels the handler (``handler_cancellation``); leaving the
  ``async with`` on an unfinished upstream response closes that upstream connection, which the
  upstream sees as the client going away (MCP 2026-07-28: closing the stream is cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ..auth.oauth_client import FetchError, read_bounded
from ..config import RouteConfig
from ..errors import UpstreamError, UpstreamTimeout
from ..mcp.sse import SseEventRewriter, SseEventTooLarge

if TYPE_CHECKING:
    from ..metrics import GatewayMetrics

log = structlog.get_logger("gateway.proxy")

# Per-request facts the forwarding learns, for the request's log line and metrics.
UPSTREAM_MS = web.RequestKey("upstream_ms", float)  # time to the upstream's response headers
# The status of a streamed response whose headers went out before its handler returned.
STREAMED_STATUS = web.RequestKey("streamed_status", int)

# Content negotiation, the Streamable HTTP headers of every revision, and trace context.
FORWARDED_REQUEST_HEADERS = frozenset(
    {
        "accept",
        "accept-language",
        "content-type",
        "user-agent",
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
        "mcp-method",
        "mcp-name",
        "traceparent",
        "tracestate",
        "baggage",
    }
)
# MCP 2026-07-28: intermediaries MUST forward Mcp-Param-* headers they do not recognise.
FORWARDED_REQUEST_PREFIXES = ("mcp-param-",)

# RFC 9110 §7.6.1 connection-specific fields, plus framing we recompute ourselves.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


class ResponseFilter(Protocol):
    """Rewrites an upstream answer (list filtering); None means "forward the bytes unchanged"."""

    def rewrite_json(self, body: bytes) -> bytes | None: ...

    def rewrite_event_data(self, data: str) -> str | None: ...


# A JSON answer that must be filtered is read whole, up to this size (else 502).
_FILTERED_RESPONSE_LIMIT = 16 * 1024 * 1024

# Bodies up to this size are read whole and answered with a Content-Length; larger or
# open-ended ones (SSE) are streamed.
_BUFFERED_RESPONSE_LIMIT = 1024 * 1024


def upstream_request_headers(incoming: CIMultiDictProxy[str], extra: Mapping[str, str]) -> CIMultiDict[str]:
    """The headers sent upstream: allowlisted incoming ones plus the route's credential."""
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lowered = name.lower()
        if lowered in FORWARDED_REQUEST_HEADERS or lowered.startswith(FORWARDED_REQUEST_PREFIXES):
            headers.add(name, value)
    for name, value in extra.items():
        headers[name] = value
    return headers


def client_response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        if name.lower() not in _HOP_BY_HOP:
            headers.add(name, value)
    return headers


# Linux only; elsewhere acknowledging promptly is left to the kernel.
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class PromptAcks:
    """Acknowledge what the upstream sent at once, not up to 40 ms later.

    An upstream socket without TCP_NODELAY (uvicorn's, for one: the official Python SDK's server)
    holds each small write until the previous one is acknowledged (Nagle), and on a kept-alive
    connection that has just sent a request the kernel delays that acknowledgement (up to 40 ms
    on Linux), hoping to piggyback it on data the gateway never sends. Every answer whose body
    follows its headers in a second write, and every event of a stream, would stall on it. A
    client with a fresh connection per request does not stall; the gateway pools connections, so
    it must ask for the acknowledgement itself: TCP_QUICKACK sends the one pending now, and is
    asked again after each read because the kernel drops back to delayed acknowledgements.
    """

    __slots__ = ("_socket",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        connection = response.connection
        transport = connection.transport if connection is not None else None
        self._socket = (
            transport.get_extra_info("socket")
            if transport is not None and _TCP_QUICKACK is not None
            else None
        )

    def now(self) -> None:
        if self._socket is not None:
            try:
                self._socket.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            except OSError:  # closed meanwhile: nothing left to acknowledge
                self._socket = None


def is_event_stream(headers: CIMultiDictProxy[str]) -> bool:
    return headers.get("Content-Type", "").split(";", 1)[0].strip().lower() == "text/event-stream"


class Upstream:
    """One upstream MCP server: its URL and a pooled, kept-alive client session."""

    def __init__(self, route: RouteConfig, metrics: GatewayMetrics | None = None) -> None:
        self.route = route
        self._metrics = metrics
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True),
            # Connect bounded; no read timeout: SSE streams are long-lived by design. The wait for
            # response headers is bounded separately in `forward`.
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=route.connect_timeout_s,
                sock_connect=route.connect_timeout_s,
                sock_read=None,
            ),
            # Bytes pass through untouched; we never forward Accept-Encoding, so upstreams answer
            # uncompressed, but if one compresses anyway the client gets it as sent.
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def aclose(self) -> None:
        await self._session.close()

    async def forward(
        self,
        request: web.Request,
        body: bytes | None,
        credential_headers: Mapping[str, str],
        response_headers: Mapping[str, str],
        response_filter: ResponseFilter | None = None,
    ) -> web.StreamResponse:
        """Send the request upstream and relay the answer; errors become 502/504."""
        try:
            return await self._forward(request, body, credential_headers, response_headers, response_filter)
        except UpstreamError as exc:
            if self._metrics is not None:
                self._metrics.upstream_failed(self.route.path, exc.reason)
            raise

    async def _forward(
        self,
        request: web.Request,
        body: bytes | None,
        credential_headers: Mapping[str, str],
        response_headers: Mapping[str, str],
        response_filter: ResponseFilter | None,
    ) -> web.StreamResponse:
        route = self.route
        url = route.upstream if not request.query_string else f"{route.upstream}?{request.query_string}"
        outgoing = upstream_request_headers(request.headers, credential_headers)
        sent_at = time.perf_counter()
        try:
            async with asyncio.timeout(route.response_timeout_s):
                upstream = await self._session.request(
                    request.method, url, data=body, headers=outgoing, allow_redirects=False
                )
        except TimeoutError as exc:
            raise UpstreamTimeout(detail=f"no response headers within {route.response_timeout_s}s") from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError("upstream_refused", detail=type(exc).__name__) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("upstream_failed", detail=type(exc).__name__) from exc
        waited_s = time.perf_counter() - sent_at
        request[UPSTREAM_MS] = round(waited_s * 1000, 3)
        if self._metrics is not None:
            self._metrics.upstream_responded(route.path, waited_s)
        async with upstream:
            acks = PromptAcks(upstream)
            acks.now()  # the headers' acknowledgement releases a body the upstream holds back
            headers = client_response_headers(upstream.headers)
            headers.update(response_headers)
            if is_event_stream(upstream.headers):
                rewriter = SseEventRewriter(response_filter.rewrite_event_data) if response_filter else None
                open_streams = (
                    self._metrics.sse_stream(route.path)
                    if self._metrics is not None
                    else contextlib.nullcontext()
                )
                with open_streams:  # counted while relayed, released however it ends
                    return await _relay_stream(request, upstream, headers, acks, sse=True, rewriter=rewriter)
            length = upstream.content_length
            if response_filter is not None and is_json(upstream.headers):
                return await self._filtered_json(upstream, headers, response_filter)
            if length is not None and length <= _BUFFERED_RESPONSE_LIMIT:
                try:
                    async with asyncio.timeout(route.response_timeout_s):
                        content = await upstream.read()
                except TimeoutError as exc:
                    raise UpstreamTimeout(detail="response body timed out") from exc
                except aiohttp.ClientError as exc:
                    raise UpstreamError("upstream_failed", detail=type(exc).__name__) from exc
                return web.Response(status=upstream.status, body=content, headers=headers)
            return await _relay_stream(request, upstream, headers, acks, sse=False)

    async def _filtered_json(
        self, upstream: aiohttp.ClientResponse, headers: CIMultiDict[str], response_filter: ResponseFilter
    ) -> web.Response:
        """A JSON answer that must be filtered: read it whole (bounded), rewrite only if needed."""
        try:
            async with asyncio.timeout(self.route.response_timeout_s):
                content = await read_bounded(upstream, _FILTERED_RESPONSE_LIMIT)
        except TimeoutError as exc:
            raise UpstreamTimeout(detail="response body timed out") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("upstream_failed", detail=type(exc).__name__) from exc
        except FetchError as exc:
            raise UpstreamError("upstream_response_too_large", detail=str(exc)) from exc
        rewritten = response_filter.rewrite_json(content)
        return web.Response(
            status=upstream.status, body=content if rewritten is None else rewritten, headers=headers
        )


def is_json(headers: CIMultiDictProxy[str]) -> bool:
    return headers.get("Content-Type", "").split(";", 1)[0].strip().lower() == "application/json"


async def _relay_stream(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    headers: CIMultiDict[str],
    acks: PromptAcks,
    *,
    sse: bool,
    rewriter: SseEventRewriter | None = None,
) -> web.StreamResponse:
    if sse:
        # MCP 2026-07-28 SHOULD: tell buffering reverse proxies in front of us not to buffer.
        headers["X-Accel-Buffering"] = "no"
    response = web.StreamResponse(status=upstream.status, headers=headers)
    await response.prepare(request)
    request[STREAMED_STATUS] = upstream.status
    try:
        async for chunk in upstream.content.iter_any():
            acks.now()
            out = rewriter.feed(chunk) if rewriter is not None else chunk
            if out:
                await response.write(out)
        if rewriter is not None and (tail := rewriter.finish()):
            await response.write(tail)
    except ConnectionResetError:
        # The client went away (aiohttp's ClientConnectionResetError is one): nothing more can be
        # sent, and leaving `async with upstream` closes the upstream request. Not an error.
        return response
    except (aiohttp.ClientError, SseEventTooLarge) as exc:
        # Headers are already sent, so the status cannot change. Abort the client connection
        # rather than end the chunked body cleanly: a truncated stream must not look complete.
        log.warning("upstream_stream_broken", error=type(exc).__name__)
        if request.transport is not None:
            request.transport.abort()
        raise UpstreamError("upstream_stream_broken", detail=type(exc).__name__) from exc
    with contextlib.suppress(ConnectionResetError):  # the client may close right after the last event
        await response.write_eof()
    return response
