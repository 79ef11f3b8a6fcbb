"""Forwarding to the upstream MCP server and streaming its answer back.

- Request headers go upstream by allowlist only: the client's ``Authorization``, ``Cookie`` and
  hop-by-hop headers can never leak (MCP "Token Passthrough"). ``Host`` is the upstream's own,
  set by the HTTP client from the upstream URL (upstream SDKs check it against DNS rebinding).
- Response headers come back by allowlist too (``RELAYED_RESPONSE_HEADERS``): nothing of the
  upstream's own HTTP surface (cookies, challenges, CORS, redirects, server banners) reaches the
  client, and the upstream's ``Mcp-Session-Id`` only as the caller passes it through
  ``seal_session_id``. The client's query string is never sent upstream: MCP endpoints take none.
- Which answers are relayed and how they are read is decided in ``gateway.mcp.answers``
  (``answer_kind``): redirects, 401/403 from the upstream, content codings, unexpected media types
  and charsets become 502. Every JSON and SSE body passes the response rewriter (list filtering),
  message by message, whatever the HTTP method: a GET stream and a replay too.
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
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ..auth.oauth_client import FetchError, read_bounded
from ..config import RouteConfig
from ..errors import UpstreamError, UpstreamTimeout
from ..mcp.answers import AnswerInspector, AnswerKind, MessageRewriter, answer_kind
from ..mcp.sse import SseEventRewriter, SseEventTooLarge

if TYPE_CHECKING:
    from ..metrics import GatewayMetrics

log = structlog.get_logger("gateway.proxy")

# Per-request facts the forwarding learns, for the request's log line and metrics.
UPSTREAM_MS = web.RequestKey("upstream_ms", float)  # time to the upstream's response headers
# The status of a streamed response whose headers went out before its handler returned.
STREAMED_STATUS = web.RequestKey("streamed_status", int)

# Content negotiation, the Streamable HTTP headers of every revision, and trace context.
# Not Mcp-Session-Id nor Last-Event-ID: the client holds sealed ones; the pipeline opens them for
# their caller and passes the upstream's own among the extra headers (gateway.web.handles).
FORWARDED_REQUEST_HEADERS = frozenset(
    {
        "accept",
        "accept-language",
        "content-type",
        "user-agent",
        "mcp-protocol-version",
        "mcp-method",
        "mcp-name",
        "traceparent",
        "tracestate",
        "baggage",
    }
)
# MCP 2026-07-28: intermediaries MUST forward Mcp-Param-* headers they do not recognise.
FORWARDED_REQUEST_PREFIXES = ("mcp-param-",)

# What of the upstream's answer headers reaches the client: how to read the body (Content-Type, the
# one answer_kind judged), caching advice (see relayed_cache_control), the Streamable HTTP headers
# (Mcp-Session-Id through seal_session_id), Retry-After on 429/503, Allow (a 405 MUST list the
# methods, RFC 9110 §15.5.6: stateless upstreams answer GET and DELETE so) and W3C trace context.
# Never Set-Cookie, WWW-Authenticate, Access-Control-* (the gateway's own CORS headers are added
# by the pipeline), Location, Server, X-Powered-By, Content-Encoding, nor anything unknown;
# framing (Content-Length, Transfer-Encoding) is aiohttp's own.
RELAYED_RESPONSE_HEADERS = frozenset(
    {
        "content-type",
        "cache-control",
        "mcp-protocol-version",
        "retry-after",
        "allow",
        "traceparent",
        "tracestate",
    }
)
SESSION_HEADER = "Mcp-Session-Id"
# RFC 9111 §3.5: with one of these a shared cache may serve a response to a request that carried
# Authorization to another caller; the gateway's answers are per caller (filtered lists).
_SHARED_CACHE_DIRECTIVES = frozenset({"public", "s-maxage", "must-revalidate"})

# A JSON answer is read whole to be inspected, up to this size (else 502).
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


def client_response_headers(
    upstream: CIMultiDictProxy[str], seal_session_id: Callable[[str], str] | None = None
) -> CIMultiDict[str]:
    """The allowlisted upstream answer headers, with the session id as ``seal_session_id`` makes it."""
    headers: CIMultiDict[str] = CIMultiDict()
    cache_control: list[str] = []
    for name, value in upstream.items():
        lowered = name.lower()
        if lowered == "cache-control":
            cache_control.append(value)
        elif lowered in RELAYED_RESPONSE_HEADERS:
            headers.add(name, value)
        elif lowered == "mcp-session-id":
            headers.add(SESSION_HEADER, seal_session_id(value) if seal_session_id is not None else value)
    if cache_control:
        headers["Cache-Control"] = relayed_cache_control(cache_control)
    return headers


def relayed_cache_control(values: Sequence[str]) -> str:
    """The upstream's Cache-Control, unless it would let a shared cache share a per-caller answer."""
    joined = ", ".join(values)
    directives = {part.partition("=")[0].strip().lower() for part in joined.split(",")}
    return "private" if directives & _SHARED_CACHE_DIRECTIVES else joined


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
            # uncompressed, and one that compresses anyway is answered 502 (answer_kind).
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
        response_filter: MessageRewriter | None = None,
        *,
        seal_session_id: Callable[[str], str] | None = None,
        seal_event_id: Callable[[str], str] | None = None,
    ) -> web.StreamResponse:
        """Send the request upstream and relay the answer; errors become 502/504.

        ``response_filter`` sees every JSON-RPC message of a JSON or SSE answer (None: relayed
        unread); ``seal_session_id`` turns the upstream's ``Mcp-Session-Id`` into the client's,
        ``seal_event_id`` each SSE event id into the one the client resumes from.
        """
        try:
            return await self._forward(
                request,
                body,
                credential_headers,
                response_headers,
                response_filter,
                seal_session_id,
                seal_event_id,
            )
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
        response_filter: MessageRewriter | None,
        seal_session_id: Callable[[str], str] | None,
        seal_event_id: Callable[[str], str] | None,
    ) -> web.StreamResponse:
        route = self.route
        url = route.upstream  # never the client's query string: MCP endpoints take none
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
            kind = judge_answer(upstream)
            headers = client_response_headers(upstream.headers, seal_session_id)
            headers.update(response_headers)
            inspector = AnswerInspector(response_filter) if response_filter is not None else None
            if kind == "sse":
                rewriter = inspector.sse(rewrite_id=seal_event_id) if inspector is not None else None
                open_streams = (
                    self._metrics.sse_stream(route.path)
                    if self._metrics is not None
                    else contextlib.nullcontext()
                )
                with open_streams:  # counted while relayed, released however it ends
                    return await _relay_stream(request, upstream, headers, acks, sse=True, rewriter=rewriter)
            if kind == "json" and inspector is not None:
                return await self._filtered_json(upstream, headers, inspector)
            if kind == "bodiless":
                return await self._bodiless(upstream, headers)
            length = upstream.content_length
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

    async def _bodiless(self, upstream: aiohttp.ClientResponse, headers: CIMultiDict[str]) -> web.Response:
        """A 2xx answer of no JSON or SSE type: relayed only if it has no body (else 502).

        Both SDK clients read a 2xx body of a look-alike type (``application/json-rpc``) as JSON,
        so one the gateway would not inspect is never relayed.
        """
        try:
            async with asyncio.timeout(self.route.response_timeout_s):
                first = await upstream.content.read(1)
        except TimeoutError as exc:
            raise UpstreamTimeout(detail="response body timed out") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("upstream_failed", detail=type(exc).__name__) from exc
        if first:
            content_type = upstream.headers.get("Content-Type", "none")[:64]
            raise UpstreamError("upstream_content_type", detail=f"2xx body of type {content_type!r}")
        return web.Response(status=upstream.status, headers=headers)

    async def _filtered_json(
        self, upstream: aiohttp.ClientResponse, headers: CIMultiDict[str], inspector: AnswerInspector
    ) -> web.Response:
        """A JSON answer: read it whole (bounded), rewrite only if needed."""
        try:
            async with asyncio.timeout(self.route.response_timeout_s):
                content = await read_bounded(upstream, _FILTERED_RESPONSE_LIMIT)
        except TimeoutError as exc:
            raise UpstreamTimeout(detail="response body timed out") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("upstream_failed", detail=type(exc).__name__) from exc
        except FetchError as exc:
            raise UpstreamError("upstream_response_too_large", detail=str(exc)) from exc
        rewritten = inspector.json_body(content)
        return web.Response(
            status=upstream.status, body=content if rewritten is None else rewritten, headers=headers
        )


def judge_answer(upstream: aiohttp.ClientResponse) -> AnswerKind:
    """``answer_kind`` for this answer's status and headers (502 when it must not be relayed)."""
    headers = upstream.headers
    status = upstream.status
    return answer_kind(
        status,
        headers.getall("Content-Type", []),
        headers.getall("Content-Encoding", []),
        empty=status in (204, 304) or upstream.content_length == 0,
        transfer_encodings=headers.getall("Transfer-Encoding", []),
    )


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
