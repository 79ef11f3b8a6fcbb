"""OTLP's protobuf encoding of spans (``ExportTraceServiceRequest``), written out by hand.

The OpenTelemetry exporter builds a message object per span, attribute and value and serializes
the tree: about 30 µs per span of the gateway's (measured with upb), on every traced request.
The wire format is small and stable (opentelemetry-proto ``trace/v1/trace.proto``,
``common/v1/common.proto``), so each field is written as its bytes here: a span costs a third
of that. What the resource and the instrumentation scope say is encoded once
(``ExportHead``). tests/unit/test_span_recorder.py decodes the output with the official protobuf
classes, every value type included.

Protobuf wire format: a field is its tag, ``field number << 3 | wire type``, then a varint
(type 0), 8 little-endian bytes (type 1), a varint length and that many bytes (type 2), or 4
little-endian bytes (type 5). Every tag here is one byte but ``Span.flags`` (field 16).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Final, Protocol

from .attributes import AttributeValue

__all__ = ["ExportHead", "WireSpan"]

_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_SMALL: Final = tuple(bytes((n,)) for n in range(128))
_FIXED64: Final = struct.Struct("<Q").pack
_DOUBLE: Final = struct.Struct("<d").pack
_FIXED32: Final = struct.Struct("<I").pack
# Span.flags (fixed32): the W3C trace flags in bits 0-7, then whether the parent's remoteness
# is known (bit 8) and whether it is remote (bit 9).
_FLAG_HAS_IS_REMOTE: Final = 0x100
_FLAG_IS_REMOTE: Final = 0x200


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _text(value: str) -> bytes:
    # A string a client sent may hold a lone surrogate (JSON allows "\ud800"); protobuf strings
    # are UTF-8, and one bad attribute must not lose the whole batch at the collector.
    return value.encode("utf-8", "replace")


def _any_value(value: AttributeValue) -> bytes:
    """``AnyValue``: string 1, bool 2, int64 3, double 4, ArrayValue 5."""
    if isinstance(value, str):
        return _delimited(b"\x0a", _text(value))
    if isinstance(value, bool):  # before int: a bool is one
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            return _delimited(b"\x0a", str(value).encode())  # no int64 holds it
        return b"\x18" + _varint(value if value >= 0 else value + (1 << 64))
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    # A sequence of strings (AttributeValue's last form): ArrayValue.values (1).
    return _delimited(b"\x2a", b"".join(_delimited(b"\x0a", _any_value(item)) for item in value))


# Most of a span's attributes recur on every request (the transport, the method, the route,
# the tool, the outcome), so a pair's encoding is remembered by tag, key, value and value type
# (True and 1 are equal keys otherwise); a value longer than this is encoded each time, and so
# is a float (0.0 and -0.0 are equal keys, a NaN equals nothing).
_PAIR_CACHE_SIZE: Final = 4096
_PAIR_VALUE_CHARS: Final = 128
_PAIRS: dict[tuple[bytes, str, type, AttributeValue], bytes] = {}


def _pair(tag: bytes, key: str, value: AttributeValue) -> bytes:
    """One ``KeyValue`` (key 1, value 2) under ``tag``."""
    return _delimited(tag, _delimited(b"\x0a", _text(key)) + _delimited(b"\x12", _any_value(value)))


def _attributes(tag: bytes, attributes: Mapping[str, AttributeValue]) -> bytes:
    """Repeated ``KeyValue`` under ``tag``."""
    parts = []
    for key, value in attributes.items():
        cache_key = (tag, key, value.__class__, value)
        encoded = _PAIRS.get(cache_key)
        if encoded is None:
            encoded = _pair(tag, key, value)
            if isinstance(value, bool | int) or (
                isinstance(value, str | tuple) and len(value) <= _PAIR_VALUE_CHARS
            ):
                if len(_PAIRS) >= _PAIR_CACHE_SIZE:
                    _PAIRS.clear()  # a fresh start beats tracking use on the export thread
                _PAIRS[cache_key] = encoded
        parts.append(encoded)
    return b"".join(parts)


class WireSpan(Protocol):
    """What an ended span tells the encoder (``gateway.telemetry.recorder.Span``)."""

    @property
    def trace_id(self) -> bytes: ...  # 16 bytes
    @property
    def span_id(self) -> bytes: ...  # 8 bytes
    @property
    def trace_state(self) -> str: ...
    @property
    def parent_id(self) -> bytes | None: ...
    @property
    def parent_remote(self) -> bool: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> int: ...  # SpanKind: 1 internal, 2 server, 3 client
    @property
    def start_ns(self) -> int: ...
    @property
    def end_ns(self) -> int: ...
    @property
    def attributes(self) -> Mapping[str, AttributeValue]: ...
    @property
    def dropped_attributes(self) -> int: ...
    @property
    def error(self) -> str | None: ...  # None: status unset; a text (maybe ""): ERROR with it


def _span(span: WireSpan) -> bytes:
    """``Span``: trace_id 1, span_id 2, trace_state 3, parent_span_id 4, name 5, kind 6,
    start 7, end 8, attributes 9, dropped_attributes_count 10, status 15, flags 16."""
    parts = [b"\x0a\x10", span.trace_id, b"\x12\x08", span.span_id]
    if span.trace_state:
        parts.append(_delimited(b"\x1a", span.trace_state.encode()))
    flags = 0x01 | _FLAG_HAS_IS_REMOTE  # only sampled spans are exported
    if span.parent_id is not None:
        parts += (b"\x22\x08", span.parent_id)
        if span.parent_remote:
            flags |= _FLAG_IS_REMOTE
    parts += (
        _delimited(b"\x2a", _text(span.name)),
        b"\x30",
        _SMALL[span.kind],
        b"\x39",
        _FIXED64(span.start_ns),
        b"\x41",
        _FIXED64(span.end_ns),
        _attributes(b"\x4a", span.attributes),
    )
    if span.dropped_attributes:
        parts += (b"\x50", _varint(span.dropped_attributes))
    if span.error is not None:
        # Status: message 2, code 3 (STATUS_CODE_ERROR = 2).
        message = _delimited(b"\x12", _text(span.error)) if span.error else b""
        parts.append(_delimited(b"\x7a", message + b"\x18\x02"))
    parts += (b"\x85\x01", _FIXED32(flags))
    return b"".join(parts)


class ExportHead:
    """The resource (its attributes) and the instrumentation scope (name, version) every export
    of one tracer carries, encoded once."""

    __slots__ = ("_resource", "_scope")

    def __init__(self, resource: Mapping[str, AttributeValue], scope_name: str, scope_version: str) -> None:
        # ResourceSpans.resource (1): Resource.attributes (1).
        self._resource = _delimited(b"\x0a", _attributes(b"\x0a", resource))
        # ScopeSpans.scope (1): InstrumentationScope name (1), version (2).
        self._scope = _delimited(
            b"\x0a", _delimited(b"\x0a", _text(scope_name)) + _delimited(b"\x12", _text(scope_version))
        )

    def request(self, spans: Iterable[WireSpan]) -> bytes:
        """``ExportTraceServiceRequest``: one ResourceSpans (1) holding one ScopeSpans (2)."""
        scope_spans = self._scope + b"".join(_delimited(b"\x12", _span(span)) for span in spans)
        return _delimited(b"\x0a", self._resource + _delimited(b"\x12", scope_spans))
