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
- Connections are pooled and kept alive per upstream, by the leg's own lean HTTP/1.1 client
  (``gateway.upstream.http_client``). What happens when the upstream fails
  (one retry of a failed connect, the circuit breaker, the active health check, the bulkhead) is
  decided in ``gateway.upstream.resilience``; ``Upstream._send`` and ``forward`` apply it.
- A client that disconnects cancels the handler (``handler_cancellation``); leaving the
  ``async with`` on an unfinished upstream response closes that upstream connection, which the
  upstream sees as the client going away (MCP 2026-07-28: closing the stream is cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final
from urllib.parse import urljoin

import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ..config import RouteConfig
from ..config.model import HealthCheckConfig
from ..errors import CircuitOpen, UpstreamBusy, UpstreamError, UpstreamTimeout
from ..mcp.answers import AnswerInspector, AnswerKind, MessageRewriter, answer_kind
from ..mcp.sse import SseEventRewriter, SseEventTooLarge
from .bodies import chunks_within, read_whole_body, sse_chunks
from .http_client import (
    AnswerBroken,
    ConnectFailed,
    ConnectTimedOut,
    UpstreamAnswer,
    UpstreamClient,
    UpstreamIOError,
)
from .resilience import (
    CIRCUIT_STATE_VALUES,
    RETRY_DELAY_S,
    Bulkhead,
    CircuitBreaker,
    CircuitState,
    HealthTracker,
    Pass,
    RouteReadiness,
    connect_verdict,
    retry_after_header_s,
    retry_connect,
)

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

# What an SSE stream silent for sse_heartbeat_s gets: a comment line, which every SSE reader skips.
SSE_HEARTBEAT = b": keep-alive\n\n"

# A streamed body's bytes that follow the previous write within this window are written together
# when the window ends: an upstream emitting events back to back would otherwise cost one write,
# and one wake-up of the client, per event (measured: 970 writes for 1001 events, and the client
# on the upstream's core got 0.7x the events/s it gets direct). The first bytes, and any that come
# after a pause, are written at once; no byte waits longer than this.
_COALESCE_S = 0.001

# A JSON answer is read whole to be inspected, up to this size (else 502).
_FILTERED_RESPONSE_LIMIT = 16 * 1024 * 1024

# Bodies up to this size are read whole and answered with a Content-Length; larger or
# open-ended ones (SSE) are streamed.
_BUFFERED_RESPONSE_LIMIT = 1024 * 1024


_TRACE_CONTEXT: Final = frozenset({"traceparent", "tracestate"})


def upstream_request_headers(incoming: CIMultiDictProxy[str], extra: Mapping[str, str]) -> CIMultiDict[str]:
    """The headers sent upstream: allowlisted incoming ones plus the route's credential."""
    headers: CIMultiDict[str] = CIMultiDict()
    # A traced gateway sends its own trace context: the client's tracestate (one it discarded,
    # or one of a traceparent it rejected) must not go along with the gateway's traceparent.
    replaced = _TRACE_CONTEXT if "traceparent" in extra else frozenset()
    for name, value in incoming.items():
        lowered = name.lower()
        if lowered in replaced:
            continue
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

    def __init__(self, response: UpstreamAnswer) -> None:
        transport = response.transport
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


# The body of a POST health check: a JSON-RPC ping (MCP basic/utilities/ping).
_PING: Final = b'{"jsonrpc":"2.0","id":"gateway-health-check","method":"ping"}'
_PING_HEADERS: Final = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


class Upstream:
    """One upstream MCP server: its URL, a pooled, kept-alive client session, its circuit and
    bulkhead, and its health-check task (with ``health_check``; ended by ``aclose``).

    Built inside a running loop (``open_gateway``): the health-check task starts at once.
    """

    def __init__(self, route: RouteConfig, metrics: GatewayMetrics | None = None) -> None:
        self.route = route
        self._metrics = metrics
        self._breaker = CircuitBreaker(
            route.circuit_breaker, on_change=self._circuit_changed, on_open=self._circuit_opened
        )
        self._bulkhead = Bulkhead(route.max_concurrent_requests)
        self._health: HealthTracker | None = None
        self._health_task: asyncio.Task[None] | None = None
        if metrics is not None:
            metrics.upstream_watched(route.path)
            bulkhead = self._bulkhead
            metrics.upstream_slots_in_use(route.path, lambda: bulkhead.in_use)
        # Connect bounded; no read timeout: SSE streams are long-lived by design. The wait for
        # response headers is bounded separately in `forward`. Bytes pass through untouched: no
        # Accept-Encoding is forwarded, so upstreams answer uncompressed, and one that compresses
        # anyway is answered 502 (answer_kind). No cookies are kept, no redirect is followed.
        self._client = UpstreamClient(route.upstream, connect_timeout_s=route.connect_timeout_s)
        self._target = self._client.target(route.upstream)
        if route.health_check is not None:
            self._health = HealthTracker(route.health_check.failures)
            self._health_task = asyncio.create_task(
                self._check_health(route.health_check, self._health), name=f"health-check:{route.path}"
            )

    async def aclose(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await self._client.aclose()

    def readiness(self) -> RouteReadiness:
        """The circuit's state now and the health check's verdict (for ``/readyz``)."""
        healthy = self._health.healthy if self._health is not None else None
        return RouteReadiness(self._breaker.state, healthy)

    def _circuit_changed(self, state: CircuitState) -> None:
        log.warning("upstream_circuit", route=self.route.path, state=state)
        if self._metrics is not None:
            self._metrics.circuit_changed(self.route.path, CIRCUIT_STATE_VALUES[state])

    def _circuit_opened(self) -> None:
        if self._metrics is not None:
            self._metrics.circuit_opened(self.route.path)

    async def _check_health(self, check: HealthCheckConfig, health: HealthTracker) -> None:
        """Every ``interval_s``: ask the upstream, and hold its circuit open while it is unhealthy."""
        target = self._client.target(urljoin(self.route.upstream, check.path))
        while True:
            ok = await self._probe(check, target)
            if self._metrics is not None:
                self._metrics.upstream_health_checked(self.route.path, ok)
            if health.observe(ok):
                unhealthy = health.healthy is False
                log.warning("upstream_health", route=self.route.path, healthy=not unhealthy)
                self._breaker.hold_open(unhealthy, retry_after_s=check.interval_s)
            await asyncio.sleep(check.interval_s)

    async def _probe(self, check: HealthCheckConfig, target: str) -> bool:
        """One check: any answer below 500 within ``timeout_s`` is healthy. No credential is sent."""
        post = check.method == "POST"
        try:
            async with asyncio.timeout(check.timeout_s):
                answer = await self._client.request(
                    check.method, target, _PING if post else None, _PING_HEADERS if post else {}
                )
            async with answer:  # the body is not read: the connection is just closed
                return answer.status < 500
        except (TimeoutError, UpstreamIOError):
            return False

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
        body_sent: Callable[[], None] | None = None,
    ) -> web.StreamResponse:
        """Send the request upstream and relay the answer; errors become 502/504.

        ``response_filter`` sees every JSON-RPC message of a JSON or SSE answer (None: relayed
        unread); ``seal_session_id`` turns the upstream's ``Mcp-Session-Id`` into the client's,
        ``seal_event_id`` each SSE event id into the one the client resumes from; ``body_sent`` is
        called once the upstream has answered (so has the whole body). Holds a slot of
        the route's ``max_concurrent_requests`` until the answer is relayed (a GET holds none);
        with none free, ``UpstreamBusy`` (503) and nothing is sent.
        """
        holds_slot = request.method != "GET"  # the listening SSE stream: see resilience.Bulkhead
        if holds_slot:
            self._take_slot()
        try:
            return await self._forward(
                request,
                body,
                credential_headers,
                response_headers,
                response_filter,
                seal_session_id,
                seal_event_id,
                body_sent,
            )
        except UpstreamError as exc:
            if self._metrics is not None:
                self._metrics.upstream_failed(self.route.path, exc.reason)
            raise
        finally:
            if holds_slot:
                self._bulkhead.release()

    def _take_slot(self) -> None:
        if not self._bulkhead.acquire():
            if self._metrics is not None:
                self._metrics.upstream_shed(self.route.path, UpstreamBusy.reason)
            raise UpstreamBusy(detail=f"{self._bulkhead.limit} requests in flight")

    async def _forward(
        self,
        request: web.Request,
        body: bytes | None,
        credential_headers: Mapping[str, str],
        response_headers: Mapping[str, str],
        response_filter: MessageRewriter | None,
        seal_session_id: Callable[[str], str] | None,
        seal_event_id: Callable[[str], str] | None,
        body_sent: Callable[[], None] | None,
    ) -> web.StreamResponse:
        route = self.route
        outgoing = upstream_request_headers(request.headers, credential_headers)
        sent_at = time.perf_counter()
        upstream = await self._send(request.method, body, outgoing)
        if body_sent is not None:
            body_sent()
        waited_s = time.perf_counter() - sent_at
        request[UPSTREAM_MS] = round(waited_s * 1000, 3)
        if self._metrics is not None:
            self._metrics.upstream_responded(route.path, waited_s)
        async with upstream:
            acks = PromptAcks(upstream)
            if not upstream.content.is_eof():
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
                    chunks = sse_chunks(upstream.content, route.sse_heartbeat_s, route.sse_max_lifetime_s)
                    return await _relay_stream(request, upstream, headers, acks, chunks, rewriter=rewriter)
            if kind == "json" and inspector is not None:
                return await self._filtered_json(upstream, headers, inspector)
            if kind == "bodiless":
                return await self._bodiless(upstream, headers)
            length = upstream.content_length
            if length is not None and length <= _BUFFERED_RESPONSE_LIMIT:
                content = await read_whole_body(upstream, route, _BUFFERED_RESPONSE_LIMIT)
                return web.Response(status=upstream.status, body=content, headers=headers)
            chunks = chunks_within(upstream.content, route.upstream_idle_timeout_s)
            return await _relay_stream(request, upstream, headers, acks, chunks)

    async def _send(self, method: str, body: bytes | None, headers: CIMultiDict[str]) -> UpstreamAnswer:
        """Send the request if its circuit lets it, once more if the connect failed, and wait for
        the response headers (``response_timeout_s``, the retry included); errors become 502/503/504."""
        route = self.route
        admitted = self._breaker.admit()
        if not isinstance(admitted, Pass):
            if self._metrics is not None:
                self._metrics.upstream_shed(route.path, CircuitOpen.reason)
            raise CircuitOpen(
                detail=f"circuit {self._breaker.state}",
                retry_after_s=retry_after_header_s(admitted.retry_after_s),
            )
        failure: BaseException | None = None
        try:
            async with asyncio.timeout(route.response_timeout_s):
                attempt = 1
                while True:
                    try:
                        # Never the client's query string: MCP endpoints take none.
                        return await self._client.request(method, self._target, body, headers)
                    except ConnectFailed as exc:
                        if not retry_connect(exc, attempt):
                            raise
                        log.info("upstream_retry", route=route.path, error=type(exc).__name__)
                    attempt += 1
                    if self._metrics is not None:
                        self._metrics.upstream_retried(route.path)
                    await asyncio.sleep(RETRY_DELAY_S)
        except Exception as exc:
            failure = exc
            error = self._send_error(exc)
            if error is exc:
                raise
            raise error from exc
        except BaseException as exc:  # cancelled (the client went away): no verdict
            failure = exc
            raise
        finally:
            self._breaker.record(admitted, connect_verdict(failure))

    def _send_error(self, exc: Exception) -> Exception:
        """The gateway's error for a request that got no response headers (others unchanged)."""
        route = self.route
        if isinstance(exc, ConnectTimedOut):
            return UpstreamTimeout(
                "upstream_connect_timeout", detail=f"no connection within {route.connect_timeout_s}s"
            )
        if isinstance(exc, TimeoutError):
            return UpstreamTimeout(detail=f"no response headers within {route.response_timeout_s}s")
        if isinstance(exc, ConnectFailed):
            return UpstreamError("upstream_refused", detail=_failure_name(exc))
        if isinstance(exc, (AnswerBroken, ValueError)):  # ValueError: a header no request may carry
            return UpstreamError("upstream_failed", detail=_failure_name(exc))
        return exc

    async def _bodiless(self, upstream: UpstreamAnswer, headers: CIMultiDict[str]) -> web.Response:
        """A 2xx answer of no JSON or SSE type: relayed only if it has no body (else 502).

        Both SDK clients read a 2xx body of a look-alike type (``application/json-rpc``) as JSON,
        so one the gateway would not inspect is never relayed.
        """
        route = self.route
        try:
            async with asyncio.timeout(min(route.response_timeout_s, route.upstream_idle_timeout_s)):
                first = await upstream.content.readany()
        except TimeoutError as exc:
            raise UpstreamTimeout(detail="response body timed out") from exc
        except AnswerBroken as exc:
            raise UpstreamError("upstream_failed", detail=_failure_name(exc)) from exc
        if first:
            content_type = upstream.headers.get("Content-Type", "none")[:64]
            raise UpstreamError("upstream_content_type", detail=f"2xx body of type {content_type!r}")
        return web.Response(status=upstream.status, headers=headers)

    async def _filtered_json(
        self, upstream: UpstreamAnswer, headers: CIMultiDict[str], inspector: AnswerInspector
    ) -> web.Response:
        """A JSON answer: read it whole (bounded), rewrite only if needed."""
        content = await read_whole_body(upstream, self.route, _FILTERED_RESPONSE_LIMIT)
        rewritten = inspector.json_body(content)
        return web.Response(
            status=upstream.status, body=content if rewritten is None else rewritten, headers=headers
        )


def _failure_name(exc: Exception) -> str:
    """What a failure's detail names: the OS or TLS error under ours, where there is one."""
    cause = exc.__cause__
    return type(cause if isinstance(cause, OSError) else exc).__name__


def judge_answer(upstream: UpstreamAnswer) -> AnswerKind:
    """``answer_kind`` for this answer's status and headers (502 when it must not be relayed)."""
    headers = upstream.headers
    status = upstream.status
    return _judged(
        status,
        tuple(headers.getall("Content-Type", ())),
        tuple(headers.getall("Content-Encoding", ())),
        status in (204, 304) or upstream.content_length == 0,
        tuple(headers.getall("Transfer-Encoding", ())),
    )


# An upstream sends the same few header values answer after answer: each combination is judged
# once (a refusal is raised again each time; only verdicts are kept). Bounded: the values are
# the upstream's to choose.
@functools.lru_cache(maxsize=256)
def _judged(
    status: int,
    content_types: tuple[str, ...],
    content_encodings: tuple[str, ...],
    empty: bool,
    transfer_encodings: tuple[str, ...],
) -> AnswerKind:
    return answer_kind(
        status, content_types, content_encodings, empty=empty, transfer_encodings=transfer_encodings
    )


async def _relay_stream(
    request: web.Request,
    upstream: UpstreamAnswer,
    headers: CIMultiDict[str],
    acks: PromptAcks,
    chunks: AsyncIterator[bytes | None],
    *,
    rewriter: SseEventRewriter | None = None,
) -> web.StreamResponse:
    """Relay ``chunks`` as they come; an SSE answer has a ``rewriter`` (whole events out) and
    gets a heartbeat comment where ``chunks`` yields None (``sse_chunks``)."""
    if rewriter is not None:
        # MCP 2026-07-28 SHOULD: tell buffering reverse proxies in front of us not to buffer.
        headers["X-Accel-Buffering"] = "no"
    response = web.StreamResponse(status=upstream.status, headers=headers)
    await response.prepare(request)
    request[STREAMED_STATUS] = upstream.status
    loop = asyncio.get_running_loop()
    written_at = -_COALESCE_S
    try:
        async for chunk in chunks:
            if chunk is None:  # silence: the rewriter has sent whole events only, so a comment fits
                await response.write(SSE_HEARTBEAT)
                continue
            acks.now()
            out = rewriter.feed(chunk) if rewriter is not None else chunk
            if not out:
                continue
            if (wait := written_at + _COALESCE_S - loop.time()) > 0:
                # Events close behind the last write: what else arrives within the window goes in
                # the same write (see _COALESCE_S).
                await asyncio.sleep(wait)
                if more := upstream.content.read_nowait():
                    acks.now()
                    out += rewriter.feed(more) if rewriter is not None else more
            await response.write(out)
            written_at = loop.time()
        # At the stream's max lifetime an unfinished event stays unsent, as at any cut.
        if rewriter is not None and upstream.content.at_eof() and (tail := rewriter.finish()):
            await response.write(tail)
    except ConnectionResetError:
        # The client went away (aiohttp's ClientConnectionResetError is one): nothing more can be
        # sent, and leaving `async with upstream` closes the upstream request. Not an error.
        return response
    except (AnswerBroken, SseEventTooLarge, TimeoutError) as exc:
        # Headers are already sent, so the status cannot change. Abort the client connection
        # rather than end the chunked body cleanly: a truncated body must not look complete.
        log.warning("upstream_stream_broken", error=type(exc).__name__)
        if request.transport is not None:
            request.transport.abort()
        if isinstance(exc, TimeoutError):
            raise UpstreamTimeout(detail="upstream body went silent") from exc
        detail = _failure_name(exc) if isinstance(exc, AnswerBroken) else type(exc).__name__
        raise UpstreamError("upstream_stream_broken", detail=detail) from exc
    with contextlib.suppress(ConnectionResetError):  # the client may close right after the last event
        await response.write_eof()
    return response
