"""The gateway's own span recorder, OTLP encoder and export thread (gateway.telemetry.recorder,
.otlp_wire, .span_export), read back with the official OTLP protobuf classes.

What a collector receives through the real gateway is tests/integration/test_tracing.py.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import structlog
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.config import OtlpConfig
from gateway.secret import Secret
from gateway.telemetry.otlp_wire import ExportHead
from gateway.telemetry.recorder import (
    CLIENT,
    MAX_ATTRIBUTES,
    Span,
    Tracer,
    caller_context,
    parse_traceparent,
    parse_tracestate,
)
from gateway.telemetry.span_export import BatchSettings, OtlpTraceSender, SpanExport
from tests.support.otlp_receiver import any_value, attributes_of, flatten_spans, serving_otlp

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def ended(tracer: Tracer, attributes: dict[str, Any], parent: Any = None) -> Span:
    span = tracer.start_server("tools/call echo", parent, attributes)
    assert isinstance(span, Span)
    span.end()
    return span


def decoded(spans: list[Span]) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    message.ParseFromString(ExportHead({"service.name": "gw", "n": 1}, "gateway", "9.9").request(spans))
    return message


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (f"00-{TRACE}-{PARENT}-01", (True, True)),
        (f"00-{TRACE}-{PARENT}-00", (True, False)),
        (f" 00-{TRACE}-{PARENT}-01\t", (True, True)),  # optional whitespace around a header value
        (f"01-{TRACE}-{PARENT}-01-extra", (True, True)),  # a later version may add fields
        (f"00-{TRACE}-{PARENT}-01-extra", None),  # version 00 is exactly four fields
        (f"01-{TRACE}-{PARENT}-01extra", None),
        (f"ff-{TRACE}-{PARENT}-01", None),
        (f"00-{TRACE.upper()}-{PARENT}-01", None),
        (f"00-{'0' * 32}-{PARENT}-01", None),
        (f"00-{TRACE}-{'0' * 16}-01", None),
        (f"00-{TRACE[:-1]}-{PARENT}-01", None),
        ("", None),
    ],
)
def test_traceparent_is_read_as_w3c_trace_context_says(value: str, valid: tuple[bool, bool] | None) -> None:
    """A malformed traceparent starts a new trace rather than joining a made-up one."""
    parsed = parse_traceparent(value)
    if valid is None:
        assert parsed is None
    else:
        assert parsed == (bytes.fromhex(TRACE), bytes.fromhex(PARENT), valid[1])


@pytest.mark.parametrize(
    ("lines", "passed_on"),
    [
        (["a=1, b@t=2"], "a=1,b@t=2"),
        (["a=1", "b=2"], "a=1,b=2"),
        (["a=1,,b=2"], "a=1,b=2"),
        (["a=1,a=2"], ""),  # duplicate keys: the whole header is discarded
        (["A=1"], ""),
        (["a=1,b"], ""),
        ([",".join(f"k{i}=v" for i in range(33))], ""),  # more than 32 members
        ([",".join(f"k{i}=v" for i in range(32))], ",".join(f"k{i}=v" for i in range(32))),
    ],
)
def test_tracestate_is_passed_on_normalized_or_not_at_all(lines: list[str], passed_on: str) -> None:
    """tracestate: every line joined; one malformed member discards it all (W3C)."""
    assert parse_tracestate(lines) == passed_on


def test_a_caller_context_is_joined_with_its_tracestate_and_sampling_decision() -> None:
    """One traceparent line is read (two are none); a sampled caller is sampled whatever the ratio."""
    assert caller_context([f"00-{TRACE}-{PARENT}-01", f"00-{'1' * 32}-{PARENT}-01"], ["vendor=x"]) is None
    caller = caller_context([f"00-{TRACE}-{PARENT}-01"], ["vendor=x"])
    assert caller is not None and caller.remote and caller.trace_state == "vendor=x"
    sent: list[Span] = []
    span = Tracer(0.0, sent.append, 64).start_server("s", caller, {})
    assert span.context.trace_id == bytes.fromhex(TRACE) and span.is_recording()
    assert span.context.headers()["tracestate"] == "vendor=x"
    assert caller_context([f"00-{TRACE}-{PARENT}-zz"], ["vendor=x"]) is None


def test_the_sampling_ratio_decides_by_the_trace_id() -> None:
    """ratio 0 records no root span, 1 every one, 0.5 about half (by the low 64 bits of the id)."""
    for ratio, low, high in ((0.0, 0, 0), (1.0, 2000, 2000), (0.5, 850, 1150)):
        tracer = Tracer(ratio, lambda span: None, 64)
        sampled = sum(tracer.start_server("s", None, {}).is_recording() for _ in range(2000))
        assert low <= sampled <= high, (ratio, sampled)


def test_attributes_are_truncated_and_the_newest_beyond_the_limit_dropped() -> None:
    """Long strings (alone or in a tuple) are cut to the limit; past 128 keys, new keys drop."""
    sent: list[Span] = []
    tracer = Tracer(1.0, sent.append, 8)
    span = tracer.start_server("s", None, {"long": "x" * 50, "list": ("y" * 20, "z")})
    assert isinstance(span, Span)
    span.set_attributes({f"k{i}": i for i in range(MAX_ATTRIBUTES + 5)})
    assert span.attributes["long"] == "x" * 8 and span.attributes["list"] == ("y" * 8, "z")
    assert len(span.attributes) == MAX_ATTRIBUTES and span.dropped_attributes == 7
    span.end()
    span.end()
    span.set_attribute("late", 1)
    assert sent == [span] and "late" not in span.attributes
    decoded_span = decoded(sent).resource_spans[0].scope_spans[0].spans[0]
    assert decoded_span.dropped_attributes_count == 7


def test_every_attribute_type_decodes_as_the_official_protobuf_reads_it() -> None:
    """str (a lone surrogate replaced by ?), bool apart from 1, int64 and beyond, float, arrays."""
    values: dict[str, Any] = {
        "s": "héllo",
        "surrogate": "a\ud800b",
        "t": True,
        "one": 1,
        "neg": -5,
        "big": 2**63 - 1,
        "huge": 2**70,
        "f": 0.25,
        "arr": ("a", "b"),
        "long": "v" * 300,  # past the pair cache's size limit
    }
    sent: list[Span] = []
    tracer = Tracer(1.0, sent.append, 4096)
    parent = caller_context([f"00-{TRACE}-{PARENT}-01"], ["a=1"])
    server = ended(tracer, values, parent)
    child = tracer.start_child(server, "GET upstream", CLIENT, {"s": "héllo", "one": 1})
    child.fail("upstream refused")
    child.end()
    for _ in range(2):  # the second pass is encoded from the pair cache
        request = decoded(sent)
        resource = attributes_of(request.resource_spans[0].resource.attributes)
        assert resource == {"service.name": "gw", "n": 1}
        scope = request.resource_spans[0].scope_spans[0].scope
        assert (scope.name, scope.version) == ("gateway", "9.9")
        first, second = flatten_spans(request)
        raw = {pair.key: pair.value for pair in request.resource_spans[0].scope_spans[0].spans[0].attributes}
        assert raw["t"].HasField("bool_value") and raw["one"].HasField("int_value")
        assert {key: any_value(value) for key, value in raw.items()} == {
            **values,
            "surrogate": "a?b",  # UTF-8 cannot carry it: replaced, never a failed export
            "huge": str(2**70),
            "arr": ["a", "b"],
        }
        assert first.trace_id == TRACE and first.parent_span_id == PARENT and first.kind == "SERVER"
        assert second.parent_span_id == first.span_id and second.kind == "CLIENT"
        assert second.attributes == {"s": "héllo", "one": 1}
        assert (second.status, second.status_message) == ("ERROR", "upstream refused")
        spans = request.resource_spans[0].scope_spans[0].spans
        assert spans[0].trace_state == "a=1" and spans[0].flags == 0x301 and spans[1].flags == 0x101
        assert spans[0].end_time_unix_nano >= spans[0].start_time_unix_nano > 0


def test_batch_settings_follow_the_otel_bsp_variables_and_warn_on_bad_ones() -> None:
    """OTEL_BSP_* as the SDK reads them; a bad value keeps the default with a warning."""
    with structlog.testing.capture_logs() as logs:
        settings = BatchSettings.from_environment(
            {
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                "OTEL_BSP_MAX_QUEUE_SIZE": "10",
                "OTEL_BSP_EXPORT_TIMEOUT": "x",
            }
        )
    assert settings == BatchSettings(100, 10, 10, 30000)  # a batch never exceeds the queue
    assert [(log["event"], log["variable"]) for log in logs] == [
        ("tracing_setting_ignored", "OTEL_BSP_EXPORT_TIMEOUT")
    ]


def test_a_full_queue_drops_spans_and_says_how_many() -> None:
    """Past the queue size spans are dropped (never blocking a request); the next export says so."""
    release = threading.Event()
    batches: list[int] = []

    def send(spans: Any) -> None:
        release.wait(5)
        batches.append(len(spans))

    export = SpanExport(send, BatchSettings(60_000, 3, 3, 5000))
    tracer = Tracer(1.0, export.add, 64)
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            ended(tracer, {})
        release.set()
        assert export.flush(5)
        export.shutdown()
    assert batches == [3]
    assert {"event": "trace_spans_dropped", "spans": 2, "max_queue_size": 3, "log_level": "warning"} in logs


async def test_the_sender_retries_a_busy_collector_and_gives_up_on_a_refusal() -> None:
    """503 is retried until the collector takes the batch; 400 is not retried and is logged
    without any header value (an API key) in the line."""
    async with serving_otlp() as receiver:
        otlp = OtlpConfig(
            endpoint=receiver.endpoint, headers=(("x-api-key", Secret("k-secret")),), timeout_s=5
        )
        sender = OtlpTraceSender(otlp, ExportHead({"service.name": "gw"}, "gateway", "1"))
        sent: list[Span] = []
        ended(Tracer(1.0, sent.append, 64), {"a": "b"})

        receiver.status = 503

        async def accept_later() -> None:
            await receiver.wait_for(lambda r: len(r.posts) >= 1)
            receiver.status = 200

        accepting = asyncio.create_task(accept_later())
        assert await asyncio.to_thread(sender.send, sent)
        await accepting
        assert [post.status for post in receiver.posts][-1] == 200 and len(receiver.posts) >= 2
        assert receiver.posts[0].headers["x-api-key"] == "k-secret"
        assert receiver.posts[0].headers["content-encoding"] == "gzip"
        assert [span.attributes for span in receiver.spans] == [{"a": "b"}]

        receiver.status = 400
        posts_before = len(receiver.posts)
        with structlog.testing.capture_logs() as logs:
            assert not await asyncio.to_thread(sender.send, sent)
        sender.close()
        assert len(receiver.posts) == posts_before + 1
        assert [log["event"] for log in logs] == ["trace_export_failed"] and logs[0]["status"] == 400
        assert "k-secret" not in repr(logs)


def test_values_otlp_cannot_carry_are_dropped_and_counted_and_floats_keep_their_sign() -> None:
    """A value of no OTLP attribute type (a list, None, bytes, a tuple holding a non-string) is
    dropped and counted on the span, never raised into the request nor losing its batch; -0.0
    after 0.0 decodes as -0.0 (the encoder remembers no float)."""
    sent: list[Span] = []
    tracer = Tracer(1.0, sent.append, 64)
    odd: dict[str, Any] = {"list": ["a"], "none": None, "bytes": b"x", "mixed": ("a", 1), "kept": "v"}
    span = tracer.start_server("odd", None, odd)
    assert isinstance(span, Span)
    assert span.attributes == {"kept": "v"} and span.dropped_attributes == 4
    span.end()
    ended(tracer, {"zero": 0.0})
    ended(tracer, {"zero": -0.0})
    request = decoded(sent)
    spans = request.resource_spans[0].scope_spans[0].spans
    assert spans[0].dropped_attributes_count == 4
    zeros = [span.attributes[0].value.double_value for span in spans[1:]]
    assert [str(value) for value in zeros] == ["0.0", "-0.0"]
