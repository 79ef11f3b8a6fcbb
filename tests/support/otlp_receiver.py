"""A real OTLP/HTTP receiver for tests: what a collector would get from the gateway.

``serving_otlp()`` starts an aiohttp app on 127.0.0.1 (a free port) that accepts OTLP/HTTP
protobuf exports, as the OpenTelemetry Collector does (OTLP specification, "OTLP/HTTP"):

- ``POST /v1/traces``  ``ExportTraceServiceRequest``   → ``ExportTraceServiceResponse``
- ``POST /v1/logs``    ``ExportLogsServiceRequest``    → ``ExportLogsServiceResponse``
- ``POST /v1/metrics`` ``ExportMetricsServiceRequest`` → ``ExportMetricsServiceResponse``

bodies gzip- or deflate-compressed (``Content-Encoding``, undone by aiohttp's parser) or not;
anything but ``application/x-protobuf`` is a 415, a body that does not decode a 400. It keeps:

- ``spans``: every span flattened to a ``ReceivedSpan`` (ids as hex, attributes as Python
  values, its resource's attributes next to it);
- ``logs``: every log record as a ``ReceivedLog`` (body and attributes as Python values);
- ``metrics``: every ``ExportMetricsServiceRequest`` as decoded (raw protobuf);
- ``posts``: the path and request headers of every export, refused ones included.

Usage::

    async with serving_otlp() as receiver:
        config = OtlpConfig(endpoint=receiver.endpoint)
        ...
        spans = await receiver.wait_for(lambda r: r.spans_named("tools/call echo"))

``receiver.status = 503`` makes the following exports fail (to test an exporter's failure path);
``receiver.clear()`` forgets what was received; ``span_tree(spans)`` prints spans as a tree.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

# protobuf ships no type stubs (types-protobuf is no dependency); the pb2 modules have theirs.
from google.protobuf.message import DecodeError, Message  # type: ignore[import-untyped]
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

PROTOBUF = "application/x-protobuf"
T = TypeVar("T")
M = TypeVar("M", bound=Message)

# Span.SpanKind and Status.StatusCode names without their prefixes: "SERVER", "ERROR".
_KINDS = {value: name.removeprefix("SPAN_KIND_") for name, value in Span.SpanKind.items()}
_STATUS = {value: name.removeprefix("STATUS_CODE_") for name, value in Status.StatusCode.items()}


def any_value(value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as the Python value it carries (lists and dicts for arrays and kvlists)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    return getattr(value, kind)


def attributes_of(pairs: Any) -> dict[str, Any]:
    """OTLP ``KeyValue`` pairs as a dict."""
    return {pair.key: any_value(pair.value) for pair in pairs}


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    """One exported span; ``parent_span_id`` is None for a root span (of this exporter's view)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str  # "SERVER", "CLIENT", "INTERNAL", "PRODUCER", "CONSUMER"
    attributes: dict[str, Any]
    status: str  # "UNSET", "OK", "ERROR"
    status_message: str
    start_ns: int
    end_ns: int
    events: tuple[tuple[str, dict[str, Any]], ...]  # (name, attributes)
    links: tuple[tuple[str, str], ...]  # (trace_id, span_id)
    resource: dict[str, Any]
    scope: str  # the instrumentation scope's name

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


@dataclass(frozen=True, slots=True)
class ReceivedLog:
    """One exported log record."""

    body: Any
    attributes: dict[str, Any]
    severity_text: str
    severity_number: int
    time_ns: int
    trace_id: str | None
    span_id: str | None
    resource: dict[str, Any]
    scope: str


@dataclass(frozen=True, slots=True)
class ReceivedPost:
    """One export request as it arrived: its path, headers and status answered."""

    path: str
    headers: CIMultiDictProxy[str]
    status: int


def _hex(raw: bytes) -> str | None:
    return raw.hex() if raw else None


def flatten_spans(export: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    """Every span of one trace export, each with its resource's attributes."""
    spans = []
    for resource_spans in export.resource_spans:
        resource = attributes_of(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=_hex(span.parent_span_id),
                        name=span.name,
                        kind=_KINDS[span.kind],
                        attributes=attributes_of(span.attributes),
                        status=_STATUS[span.status.code],
                        status_message=span.status.message,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        events=tuple((event.name, attributes_of(event.attributes)) for event in span.events),
                        links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                        resource=resource,
                        scope=scope_spans.scope.name,
                    )
                )
    return spans


def flatten_logs(export: ExportLogsServiceRequest) -> list[ReceivedLog]:
    """Every log record of one logs export, each with its resource's attributes."""
    records = []
    for resource_logs in export.resource_logs:
        resource = attributes_of(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                records.append(
                    ReceivedLog(
                        body=any_value(record.body),
                        attributes=attributes_of(record.attributes),
                        severity_text=record.severity_text,
                        severity_number=record.severity_number,
                        time_ns=record.time_unix_nano,
                        trace_id=_hex(record.trace_id),
                        span_id=_hex(record.span_id),
                        resource=resource,
                        scope=scope_logs.scope.name,
                    )
                )
    return records


@dataclass
class OtlpReceiver:
    """What one receiver got; ``endpoint`` is its base URL (no trailing slash), as in ``OtlpConfig``."""

    endpoint: str = ""
    status: int = 200  # the answer to the next exports; anything but 200 refuses them
    spans: list[ReceivedSpan] = field(default_factory=list)
    logs: list[ReceivedLog] = field(default_factory=list)
    metrics: list[ExportMetricsServiceRequest] = field(default_factory=list)
    posts: list[ReceivedPost] = field(default_factory=list)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition, repr=False)

    def clear(self) -> None:
        """Forget everything received so far."""
        self.spans.clear()
        self.logs.clear()
        self.metrics.clear()
        self.posts.clear()

    def spans_named(self, name: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.name == name]

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        """The spans of one trace, in the order they started."""
        return sorted((span for span in self.spans if span.trace_id == trace_id), key=lambda s: s.start_ns)

    async def wait_for(self, predicate: Callable[[OtlpReceiver], T], timeout_s: float = 5.0) -> T:
        """The first truthy value ``predicate(receiver)`` returns, checked now and after each export;
        an AssertionError (naming what did arrive) past ``timeout_s`` seconds."""
        async with self._arrived:
            try:
                async with asyncio.timeout(timeout_s):
                    while not (result := predicate(self)):
                        await self._arrived.wait()
            except TimeoutError:
                names = sorted({span.name for span in self.spans})
                raise AssertionError(
                    f"not received within {timeout_s}s: {len(self.spans)} spans {names}, "
                    f"{len(self.logs)} log records, {len(self.metrics)} metrics exports"
                ) from None
        return result

    async def _notify(self) -> None:
        async with self._arrived:
            self._arrived.notify_all()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/traces", self._handler(ExportTraceServiceRequest, self._keep_traces))
        app.router.add_post("/v1/logs", self._handler(ExportLogsServiceRequest, self._keep_logs))
        app.router.add_post("/v1/metrics", self._handler(ExportMetricsServiceRequest, self._keep_metrics))
        return app

    def _keep_traces(self, export: ExportTraceServiceRequest) -> Message:
        self.spans.extend(flatten_spans(export))
        return ExportTraceServiceResponse()

    def _keep_logs(self, export: ExportLogsServiceRequest) -> Message:
        self.logs.extend(flatten_logs(export))
        return ExportLogsServiceResponse()

    def _keep_metrics(self, export: ExportMetricsServiceRequest) -> Message:
        self.metrics.append(export)
        return ExportMetricsServiceResponse()

    def _handler(self, request_type: type[M], keep: Callable[[M], Message]) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            status, answer = await self._answer(request, request_type, keep)
            self.posts.append(
                ReceivedPost(request.path, CIMultiDictProxy(CIMultiDict(request.headers)), status)
            )
            await self._notify()
            return answer

        return handle

    async def _answer(
        self, request: web.Request, request_type: type[M], keep: Callable[[M], Message]
    ) -> tuple[int, web.Response]:
        if request.content_type != PROTOBUF:
            return 415, web.Response(status=415, text=f"only {PROTOBUF}")
        try:
            # aiohttp's parser has already undone a gzip or deflate Content-Encoding.
            export = request_type.FromString(await request.read())
        except (RequestPayloadError, DecodeError) as exc:
            return 400, web.Response(status=400, text=type(exc).__name__)
        if self.status != 200:
            return self.status, web.Response(status=self.status, text="refused by the test")
        response = keep(export)
        return 200, web.Response(body=response.SerializeToString(), content_type=PROTOBUF)


def span_tree(spans: list[ReceivedSpan], attributes: tuple[str, ...] = ()) -> str:
    """The spans as an indented tree (children under their parent, in start order), each line
    ``name (KIND, 1.23 ms)`` and the ``attributes`` named, for a failure message or a README."""
    ids = {span.span_id for span in spans}
    children: dict[str | None, list[ReceivedSpan]] = {}
    for span in sorted(spans, key=lambda s: s.start_ns):
        parent = span.parent_span_id if span.parent_span_id in ids else None
        children.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in children.get(parent, []):
            shown = [f"{key}={span.attributes[key]!r}" for key in attributes if key in span.attributes]
            status = " ERROR" if span.status == "ERROR" else ""
            tail = f"  {' '.join(shown)}" if shown else ""
            lines.append(f"{'  ' * depth}{span.name} ({span.kind}{status}, {span.duration_ms:.2f} ms){tail}")
            walk(span.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


@asynccontextmanager
async def serving_otlp() -> AsyncIterator[OtlpReceiver]:
    """An OTLP/HTTP receiver on 127.0.0.1 (a free port) for the duration of the block."""
    receiver = OtlpReceiver()
    runner = web.AppRunner(receiver.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        await runner.cleanup()


__all__ = [
    "OtlpReceiver",
    "ReceivedLog",
    "ReceivedPost",
    "ReceivedSpan",
    "any_value",
    "attributes_of",
    "serving_otlp",
    "span_tree",
]
