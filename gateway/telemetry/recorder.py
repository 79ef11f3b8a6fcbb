"""The spans of a traced gateway: W3C trace context in and out, sampling, and the span object.

The OpenTelemetry SDK's spans cost about 30 µs each to start and end (a sampler object, an id
generator, bounded attribute dicts behind locks, context objects), four of them per tool call;
the gateway needs none of that generality. A span here is a slotted object that collects its
attributes in a plain dict and, once ended, is handed to the export queue
(``gateway.telemetry.span_export``) whose thread encodes it (``gateway.telemetry.otlp_wire``).

- Trace context (W3C Trace Context, level 2): ``parse_traceparent`` accepts version 00 exactly
  and a later version by its first four fields, never ``ff``, all-zero ids or upper-case hex;
  ``parse_tracestate`` keeps at most 32 well-formed members with distinct keys, or nothing.
- Sampling as OpenTelemetry's ``ParentBased(TraceIdRatioBased(ratio))``: a caller's trace is
  followed as its sampled flag says; a trace that starts here is sampled when the low 64 bits
  of its id are below ``ratio * 2**64``. A span that is not sampled is an ``UnsampledSpan``: it
  records nothing and only passes its trace context on.
- Limits as the SDK's defaults, with the gateway's attribute length: 128 attributes (further
  ones counted as dropped), strings cut at ``max_attribute_chars``.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from .attributes import AttributeValue

__all__ = [
    "CLIENT",
    "INTERNAL",
    "SERVER",
    "Span",
    "SpanContext",
    "Tracer",
    "UnsampledSpan",
    "caller_context",
    "parse_traceparent",
    "parse_tracestate",
]

# SpanKind as OTLP numbers it.
INTERNAL: Final = 1
SERVER: Final = 2
CLIENT: Final = 3
MAX_ATTRIBUTES: Final = 128
MAX_TRACESTATE_MEMBERS: Final = 32

_TRACEPARENT: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACESTATE_MEMBER: Final = re.compile(
    r"((?:[a-z][_0-9a-z\-*/]{0,255})|(?:[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13}))"
    r"=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e])"
)
_ZERO_TRACE: Final = bytes(16)
_ZERO_SPAN: Final = bytes(8)
_OWS: Final = " \t"


class SpanContext:
    """Who a span is, as W3C trace context carries it between processes."""

    __slots__ = ("remote", "sampled", "span_id", "trace_id", "trace_state")

    def __init__(
        self, trace_id: bytes, span_id: bytes, sampled: bool, trace_state: str, remote: bool
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled
        self.trace_state = trace_state  # the tracestate header as passed on; "" for none
        self.remote = remote

    def headers(self) -> dict[str, str]:
        """The ``traceparent`` (and ``tracestate``) that name this span as the caller."""
        flags = "01" if self.sampled else "00"
        headers = {"traceparent": f"00-{self.trace_id.hex()}-{self.span_id.hex()}-{flags}"}
        if self.trace_state:
            headers["tracestate"] = self.trace_state
        return headers


def parse_traceparent(value: str) -> tuple[bytes, bytes, bool] | None:
    """(trace id, parent id, sampled) of a ``traceparent`` value, None if it is not one."""
    value = value.strip(_OWS)
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex = match.groups()
    if version == "ff":
        return None
    # Version 00 is exactly these four fields; a later version may add fields after a dash.
    if len(value) != 55 and (version == "00" or value[55] != "-"):
        return None
    trace_id, span_id = bytes.fromhex(trace_hex), bytes.fromhex(span_hex)
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id, bool(int(flags_hex, 16) & 0x01)


def parse_tracestate(values: Iterable[str]) -> str:
    """The ``tracestate`` to pass on from every header line given, normalized (``k=v,k2=v2``);
    "" if there is none or any member is malformed (W3C: then it is discarded whole)."""
    members: list[str] = []
    keys: set[str] = set()
    for value in values:
        for member in value.split(","):
            member = member.strip(_OWS)
            if not member:
                continue  # an empty list member is allowed
            match = _TRACESTATE_MEMBER.fullmatch(member)
            if match is None or match.group(1) in keys:
                return ""
            keys.add(match.group(1))
            members.append(member)
            if len(members) > MAX_TRACESTATE_MEMBERS:
                return ""
    return ",".join(members)


def _new_trace_id() -> bytes:
    while (value := random.getrandbits(128)) == 0:
        pass
    return value.to_bytes(16, "big")


def _new_span_id() -> bytes:
    while (value := random.getrandbits(64)) == 0:
        pass
    return value.to_bytes(8, "big")


class Span:
    """A sampled span: open until ``end``, which hands it to the export queue once."""

    __slots__ = (
        "_max_chars",
        "_sink",
        "attributes",
        "context",
        "dropped_attributes",
        "end_ns",
        "error",
        "kind",
        "name",
        "parent_id",
        "parent_remote",
        "start_ns",
    )

    def __init__(
        self,
        name: str,
        kind: int,
        context: SpanContext,
        parent: SpanContext | None,
        sink: Callable[[Span], None],
        max_chars: int,
    ) -> None:
        self.name = name
        self.kind = kind
        self.context = context
        self.parent_id = None if parent is None else parent.span_id
        self.parent_remote = parent is not None and parent.remote
        self._sink = sink
        self._max_chars = max_chars
        self.attributes: dict[str, AttributeValue] = {}
        self.dropped_attributes = 0
        self.error: str | None = None
        self.end_ns = 0
        self.start_ns = time.time_ns()

    # What the encoder reads (gateway.telemetry.otlp_wire.WireSpan) besides the fields above.
    @property
    def trace_id(self) -> bytes:
        return self.context.trace_id

    @property
    def span_id(self) -> bytes:
        return self.context.span_id

    @property
    def trace_state(self) -> str:
        return self.context.trace_state

    def is_recording(self) -> bool:
        return self.end_ns == 0

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.set_attributes({key: value})

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self.end_ns:
            return
        mine = self.attributes
        limit = self._max_chars
        for key, value in attributes.items():
            if isinstance(value, str):
                mine[key] = value if len(value) <= limit else value[:limit]
            elif type(value) is int or type(value) is bool:  # most of the rest: no union check
                mine[key] = value
            elif isinstance(value, tuple) and all(isinstance(item, str) for item in value):
                mine[key] = tuple(item[:limit] for item in value)
            elif isinstance(value, int | float):  # bool is an int
                mine[key] = value
            else:
                self.dropped_attributes += 1  # not an attribute value OTLP can carry
        if len(mine) > MAX_ATTRIBUTES:
            # The newest keys are the last ones (dicts keep their order): those are dropped.
            for key in list(mine)[MAX_ATTRIBUTES:]:
                del mine[key]
                self.dropped_attributes += 1

    def fail(self, description: str | None) -> None:
        """Status ERROR, with ``description`` if given (the latest failure's)."""
        if not self.end_ns:
            self.error = description or ""

    def rename(self, name: str) -> None:
        if not self.end_ns:
            self.name = name

    def end(self) -> None:
        if self.end_ns:
            return
        self.end_ns = max(time.time_ns(), self.start_ns)
        self._sink(self)


class UnsampledSpan:
    """A span that is not sampled: it has a trace context to pass on and records nothing."""

    __slots__ = ("context",)

    def __init__(self, context: SpanContext) -> None:
        self.context = context

    def is_recording(self) -> bool:
        return False

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        pass

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        pass

    def fail(self, description: str | None) -> None:
        pass

    def rename(self, name: str) -> None:
        pass

    def end(self) -> None:
        pass


class Tracer:
    """Starts spans: the SERVER span of a request (sampled or not) and children of a span."""

    __slots__ = ("_bound", "_max_chars", "_sink")

    def __init__(self, sample_ratio: float, sink: Callable[[Span], None], max_attribute_chars: int) -> None:
        self._bound = round(sample_ratio * (1 << 64))
        self._sink = sink
        self._max_chars = max_attribute_chars

    def start_server(
        self, name: str, parent: SpanContext | None, attributes: Mapping[str, AttributeValue]
    ) -> Span | UnsampledSpan:
        """A request's span, in the caller's trace if it sent one."""
        if parent is None:
            trace_id = _new_trace_id()
            sampled = int.from_bytes(trace_id[8:], "big") < self._bound
            trace_state = ""
        else:
            trace_id, sampled, trace_state = parent.trace_id, parent.sampled, parent.trace_state
        context = SpanContext(trace_id, _new_span_id(), sampled, trace_state, remote=False)
        if not sampled:
            return UnsampledSpan(context)
        span = Span(name, SERVER, context, parent, self._sink, self._max_chars)
        span.set_attributes(attributes)
        return span

    def start_child(
        self, parent: Span, name: str, kind: int, attributes: Mapping[str, AttributeValue]
    ) -> Span:
        """A span inside ``parent`` (sampled, as its parent is)."""
        own = parent.context
        context = SpanContext(own.trace_id, _new_span_id(), True, own.trace_state, remote=False)
        span = Span(name, kind, context, own, self._sink, self._max_chars)
        if attributes:
            span.set_attributes(attributes)
        return span


def caller_context(traceparents: list[str], tracestates: list[str]) -> SpanContext | None:
    """The caller's span from a request's ``traceparent`` line and ``tracestate`` lines
    (joined), None without one. Two ``traceparent`` lines are none (the W3C test suite's
    ``test_traceparent_duplicated``): a proxy that reads the last would put the request in
    another trace than the gateway did."""
    if len(traceparents) != 1:
        return None
    parsed = parse_traceparent(traceparents[0])
    if parsed is None:
        return None  # and its tracestate is not looked at (W3C)
    trace_id, span_id, sampled = parsed
    return SpanContext(trace_id, span_id, sampled, parse_tracestate(tracestates), remote=True)
