"""Traces of MCP requests (``tracing:``), exported over OTLP/HTTP.

Imported only when a config has ``tracing:`` (``gateway.telemetry.open_tracing``): a gateway
without it loads none of this.

- One tracer per gateway generation (a test process runs many gateways): spans of its own
  (``gateway.telemetry.recorder``, sampled as OpenTelemetry's
  ``ParentBased(TraceIdRatioBased(sample_ratio))``: a caller's sampled trace is always followed,
  the ratio applies to traces that start here), queued on end and exported in batches from a
  thread (``gateway.telemetry.span_export``, ``OTEL_BSP_*`` settings) to ``{endpoint}/v1/traces``
  with the configured headers, revealed only into the request. The resource is OpenTelemetry's
  (``service.name``, ``service.version``, ``OTEL_RESOURCE_ATTRIBUTES``), the same as the metrics
  and the audit trail carry. ``aclose`` flushes.
- Per request (``serve``): a SERVER span that continues the client's W3C ``traceparent`` /
  ``tracestate``, named and described by ``gateway.telemetry.attributes`` once the body is read;
  the hooks of ``gateway.telemetry.spans`` open its children inside the current span
  (``RequestTrace``); the CLIENT span toward the upstream sends its own context with the
  forwarded request, so the upstream continues the trace as the gateway's child. A streamed
  answer's spans end when the stream does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Final

from aiohttp import web

from .. import __version__
from ..config import RouteConfig, TracingConfig
from ..errors import GatewayError
from ..mcp.messages import McpMessage, in_session_era
from ..mcp.policy import Decision
from .attributes import (
    ERROR_TYPE,
    HTTP_STATUS_CODE,
    MCP_PROTOCOL_VERSION,
    MCP_SESSION_ID,
    OWN,
    Attributes,
    AttributeValue,
    answer_error,
    client_text,
    decision_attributes,
    http_span_name,
    message_attributes,
    message_span_name,
    protocol_version,
    refusal_attributes,
    server_address,
)
from .otlp_wire import ExportHead
from .recorder import CLIENT, INTERNAL, Span, Tracer, UnsampledSpan, caller_context
from .span_export import BatchSettings, OtlpTraceSender, SpanExport
from .spans import NO_SPAN, DecisionScope, SpanKindName, SpanScope, UpstreamScope, activate, deactivate

__all__ = ["INSTRUMENTATION_SCOPE", "RequestTrace", "Tracing"]

MAX_ATTRIBUTE_CHARS = 4096

INSTRUMENTATION_SCOPE: Final = "mcp_auth_gateway"
SESSION_HEADER: Final = "Mcp-Session-Id"
_KINDS: Final = {"internal": INTERNAL, "client": CLIENT}
# Every span the gateway serves or sends goes over HTTP/1.1 on TCP (Streamable HTTP).
_TRANSPORT: Final[Attributes] = {
    "network.transport": "tcp",
    "network.protocol.name": "http",
    "network.protocol.version": "1.1",
}
# The span a child opened now belongs in: the SERVER span, or the child whose block runs.
_CURRENT: ContextVar[Span | None] = ContextVar("gateway_current_span", default=None)


def resource_attributes(config: TracingConfig) -> dict[str, AttributeValue]:
    """OpenTelemetry's resource for this service (its environment settings applied)."""
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create({"service.name": config.service_name, "service.version": __version__})
    return {
        key: value
        for key, value in resource.attributes.items()
        if isinstance(value, str | bool | int | float)
    }


class Tracing:
    """The tracer of one gateway generation: ``serve`` traces a request; ``aclose`` flushes.

    Built off the event loop (``open_tracing``): the export thread starts here. ``send``: where
    batches of ended spans go instead of the collector (tests).
    """

    def __init__(self, config: TracingConfig, send: Callable[[Sequence[Span]], object] | None = None) -> None:
        self._sender: OtlpTraceSender | None = None
        if send is None:
            head = ExportHead(resource_attributes(config), INSTRUMENTATION_SCOPE, __version__)
            self._sender = OtlpTraceSender(config.otlp, head)
            send = self._sender.send
        self._export = SpanExport(send, BatchSettings.from_environment())
        self._tracer = Tracer(config.sample_ratio, self._export.add, MAX_ATTRIBUTE_CHARS)

    def flush(self) -> None:
        """Export every ended span now (blocking: call it off the loop). The benchmark's blocks
        end with it, so that each block's CPU holds its own export and no other's."""
        self._export.flush()

    async def aclose(self) -> None:
        """Export what is left and stop (in a thread: the last export is a blocking HTTP call)."""
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        if self._sender is not None:
            self._sender.stop()  # a retry's backoff in progress ends; what is left gets one try
        self._export.shutdown()
        if self._sender is not None:
            self._sender.close()

    async def serve(
        self, request: web.Request, route: RouteConfig, handling: Awaitable[web.StreamResponse]
    ) -> web.StreamResponse:
        """Await ``handling`` (the pipeline for this request) inside the request's SERVER span."""
        headers = request.headers
        parent = caller_context(headers.getall("traceparent", []), headers.getall("tracestate", []))
        server = self._tracer.start_server(
            http_span_name(request.method, route.path), parent, _server_attributes(request, route)
        )
        trace = RequestTrace(self._tracer, server, route, request)
        # An unsampled request opens no children: it only passes its trace context on, so it
        # needs no current span either.
        current = _CURRENT.set(server) if isinstance(server, Span) else None
        activated = activate(trace)
        response: web.StreamResponse | None = None
        status = 500
        try:
            response = await handling
            status = response.status
            return response
        except GatewayError as exc:
            status = exc.status
            trace.mark(refusal_attributes(exc), client_text(exc.message))  # it may quote the client
            raise
        except asyncio.CancelledError:
            # The client went away: closing a stream is how an MCP client ends it, no error.
            trace.server.set_attribute(OWN + "client_closed", True)
            raise
        except Exception as exc:
            trace.mark({ERROR_TYPE: type(exc).__qualname__}, None)
            raise
        finally:
            deactivate(activated)
            if current is not None:
                _CURRENT.reset(current)
            trace.end(status, response.headers.get(SESSION_HEADER) if response is not None else None)


def _server_attributes(request: web.Request, route: RouteConfig) -> Attributes:
    attributes: Attributes = {
        **_TRANSPORT,
        "http.request.method": request.method,
        "http.route": route.path,
    }
    if request.remote:
        attributes["client.address"] = request.remote
    return attributes


class RequestTrace:
    """One request's spans (``gateway.telemetry.spans.ActiveTrace``): the SERVER span, the
    messages its body held, and the CLIENT span toward the upstream while it is open."""

    __slots__ = (
        "_client",
        "_first",
        "_method",
        "_opened",
        "_route",
        "_session_header",
        "_tracer",
        "_version_header",
        "messages",
        "server",
    )

    def __init__(
        self, tracer: Tracer, server: Span | UnsampledSpan, route: RouteConfig, request: web.Request
    ) -> None:
        self._tracer = tracer
        self.server = server
        self._route = route
        # What the spans read of the request, not the request: timers the loop schedules during
        # it keep its context, so this object, alive until they fire (aiohttp's keep-alive
        # timer: seconds), and a request held from here would be kept with its body and answer.
        self._method = request.method
        headers = request.headers
        self._version_header = headers.get("MCP-Protocol-Version")
        self._session_header = headers.get(SESSION_HEADER)
        self.messages: list[McpMessage] = []
        self._client: Span | None = None
        # The first message's attributes, made once for the three spans that show them.
        self._first: Attributes | None = None
        # Whether the client's Mcp-Session-Id opened for it: only then is it the client's session
        # (a header that did not open is anyone's text, and is never recorded).
        self._opened = False

    # --- the hooks (gateway.telemetry.spans) --------------------------------------------------

    def _start(self, name: str, kind: int, attributes: Mapping[str, AttributeValue]) -> Span | None:
        """A child of the current span (the server span's, or the open child's), None unsampled."""
        server = self.server
        if not isinstance(server, Span):
            return None
        return self._tracer.start_child(_CURRENT.get() or server, name, kind, attributes)

    def child(self, name: str, kind: SpanKindName, attributes: Mapping[str, AttributeValue]) -> SpanScope:
        span = self._start(name, _KINDS[kind], attributes)
        return NO_SPAN if span is None else ChildScope(span)

    def decision(self, message: McpMessage) -> DecisionScope:
        self._opened = True  # deciding comes after the session opened (pipeline.handle_mcp)
        self.messages.append(message)
        if not isinstance(self.server, Span):
            return NO_SPAN
        attributes = message_attributes(message)
        if len(self.messages) == 1:
            self._first = attributes  # the CLIENT and SERVER spans show them again
        span = self._start("decide policy", INTERNAL, attributes)
        return NO_SPAN if span is None else DecisionSpan(span)

    def upstream(self, http_method: str) -> UpstreamScope:
        self._opened = True
        client = self._start(self._name(http_method), CLIENT, {})
        if client is None:
            # The upstream continues the (unsampled) trace from the SERVER span.
            return Propagation(self.server.context.headers())
        client.set_attributes(
            {**self._message_attributes(False), **self._common(), **server_address(self._route.upstream)}
        )
        self._client = client
        # Only a POST's answer answers its messages (a GET stream carries the server's own).
        watches = (AnswerWatch(self),) if http_method == "POST" else ()
        return UpstreamSpan(client, client.context.headers(), watches, self)

    # --- what the request came to ------------------------------------------------------------

    def mark(self, attributes: Attributes, description: str | None) -> None:
        """The request failed (a refusal, a crash, an error answer): the server span, and the
        CLIENT span while the upstream is answering, say so."""
        for span in (self.server, self._client):
            if span is not None and span.is_recording():
                span.set_attributes(attributes)
                span.fail(description)

    def upstream_done(self) -> None:
        self._client = None

    def end(self, status: int, sealed_session: str | None) -> None:
        """Name the SERVER span after its message (once the body was read), describe it, end it."""
        server = self.server
        if server.is_recording():
            server.rename(self._name(self._method))
            batch = {OWN + "batch.size": len(self.messages)} if len(self.messages) > 1 else {}
            server.set_attributes(
                {
                    **self._message_attributes(self._route.audit_arguments),
                    **batch,
                    **self._common(sealed_session),
                    HTTP_STATUS_CODE: status,
                }
            )
        server.end()
        # Its messages (their arguments) are not kept for as long as a timer keeps this trace.
        self.messages = []
        self._first = None

    def _name(self, http_method: str) -> str:
        if len(self.messages) == 1 and (name := message_span_name(self.messages[0])) is not None:
            return name
        return http_span_name(http_method, self._route.path)

    def _message_attributes(self, with_arguments: bool) -> Attributes:
        if len(self.messages) != 1:
            return {}
        if with_arguments or self._first is None:
            return message_attributes(self.messages[0], with_arguments=with_arguments)
        return self._first

    def _common(self, sealed_session: str | None = None) -> Attributes:
        """The session (as the client knows it: sealed) and the protocol version, if known."""
        attributes: Attributes = {}
        # A header opened only in the session era: a 2026-07-28 request's is never looked at
        # (gateway.web.handles), so it is any text the client chose, its token included.
        opened = self._opened and in_session_era(self._version_header)
        session = sealed_session or (self._session_header if opened else None)
        if session:
            attributes[MCP_SESSION_ID] = session
        version = protocol_version(self._version_header)
        if version is not None:
            attributes[MCP_PROTOCOL_VERSION] = version
        return {**_TRANSPORT, **attributes}


class Propagation:
    """An unsampled request's upstream call: its trace context goes along, no span is made."""

    __slots__ = ("headers",)
    watches: tuple[AnswerWatch, ...] = ()

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers = headers

    def __enter__(self) -> Propagation:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def set(self, key: str, value: AttributeValue) -> None:
        pass

    def fail(self, error_type: str) -> None:
        pass


class ChildScope:
    """A child span: current while open, failed by an exception that leaves it."""

    __slots__ = ("_current", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self._current: object = None

    def __enter__(self) -> ChildScope:
        self._current = _CURRENT.set(self.span)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _CURRENT.reset(self._current)  # type: ignore[arg-type]  # the token set returned
        if isinstance(exc, GatewayError):
            self.fail(exc.reason)
        elif isinstance(exc, Exception):
            self.fail(type(exc).__qualname__)
        self.span.end()

    def set(self, key: str, value: AttributeValue) -> None:
        self.span.set_attribute(key, value)

    def fail(self, error_type: str) -> None:
        self.span.set_attribute(ERROR_TYPE, error_type)
        self.span.fail(None)


class DecisionSpan(ChildScope):
    """``decide policy``: the rule that decided and the outcome; a deny is no span error (the
    request's span carries the 403)."""

    __slots__ = ()

    def __enter__(self) -> DecisionSpan:
        super().__enter__()
        return self

    def decided(self, decision: Decision, observed: Decision | None) -> None:
        self.span.set_attributes(decision_attributes(decision, observed))


class UpstreamSpan(ChildScope):
    """The CLIENT span of the forwarded request, with the ``traceparent`` that names it."""

    __slots__ = ("_trace", "headers", "watches")

    def __init__(
        self, span: Span, headers: Mapping[str, str], watches: tuple[AnswerWatch, ...], trace: RequestTrace
    ) -> None:
        super().__init__(span)
        self.headers = headers
        self.watches = watches
        self._trace = trace

    def __enter__(self) -> UpstreamSpan:
        super().__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._trace.upstream_done()
        super().__exit__(kind, exc, tb)


class AnswerWatch:
    """Sees every message of the upstream's answer (``gateway.mcp.answers.MessageRewriter``) and
    never changes one: an error response or an ``isError`` tool result marks the request failed."""

    __slots__ = ("_trace",)
    passive: Final = True  # watches only: what it cannot read goes out as it came
    # Any message this concerns holds one of these (an escaped spelling is the inspector's `\u`).
    # ``isError`` with both: every tool result the SDK sends holds ``"isError":false``, which
    # made every traced tool call's answer be parsed; ``true`` is a literal, never escaped or split.
    markers: Final = (b'"error"', (b'"isError"', b"true"))

    def __init__(self, trace: RequestTrace) -> None:
        self._trace = trace

    def rewrite(self, message: dict[str, Any]) -> None:
        error = answer_error(message)
        if error is not None:
            self._trace.mark(error, None)
        return None
