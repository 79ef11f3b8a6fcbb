"""The tests' OTLP/HTTP receiver (tests/support/otlp_receiver.py), fed by the SDK's own exporters.

The exporters are synchronous (``requests``), as in the gateway, where they run on the
BatchSpanProcessor's thread: here they run in a worker thread too, off the test's loop.
"""

from __future__ import annotations

import asyncio
import gzip

import aiohttp
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from tests.support.otlp_receiver import OtlpReceiver, serving_otlp


def export_two_spans(endpoint: str, compression: Compression) -> None:
    """A parent SERVER span with an INTERNAL child, exported at once by the SDK's OTLP/HTTP exporter."""
    exporter = OTLPSpanExporter(
        endpoint=f"{endpoint}/v1/traces", headers={"x-api-key": "k-1"}, compression=compression
    )
    provider = TracerProvider(resource=Resource.create({"service.name": "receiver-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests.receiver")
    with tracer.start_as_current_span("tools/call echo", kind=SpanKind.SERVER) as parent:
        parent.set_attributes({"mcp.method.name": "tools/call", "jsonrpc.request.id": "5", "n": 3})
        parent.set_attribute("scopes", ["a", "b"])
        with tracer.start_as_current_span("decide policy") as child:
            child.add_event("decided", {"outcome": "deny"})
            child.set_status(Status(StatusCode.ERROR, "denied"))
    provider.shutdown()


async def test_spans_from_the_sdk_exporter_arrive_flattened_with_their_links() -> None:
    """Both spans arrive with hex ids, the child's parent being the parent's id, Python attribute
    values, kinds, status, events and the resource; the export's headers are kept."""
    async with serving_otlp() as receiver:
        await asyncio.to_thread(export_two_spans, receiver.endpoint, Compression.NoCompression)
        await receiver.wait_for(lambda r: len(r.spans) == 2)
    child, parent = sorted(receiver.spans, key=lambda span: span.name)
    assert parent.name == "tools/call echo" and parent.kind == "SERVER" and parent.parent_span_id is None
    assert parent.attributes == {
        "mcp.method.name": "tools/call",
        "jsonrpc.request.id": "5",
        "n": 3,
        "scopes": ["a", "b"],
    }
    assert child.kind == "INTERNAL" and child.parent_span_id == parent.span_id
    assert child.trace_id == parent.trace_id and len(child.trace_id) == 32 and len(child.span_id) == 16
    assert (child.status, child.status_message) == ("ERROR", "denied")
    assert child.events == (("decided", {"outcome": "deny"}),)
    assert parent.resource["service.name"] == "receiver-test" and parent.scope == "tests.receiver"
    assert parent.end_ns >= parent.start_ns > 0
    assert receiver.trace(parent.trace_id) == [parent, child]
    assert [post.path for post in receiver.posts] == ["/v1/traces", "/v1/traces"]
    assert receiver.posts[0].headers["X-Api-Key"] == "k-1"
    assert receiver.posts[0].status == 200


async def test_a_gzip_export_is_decoded() -> None:
    """Content-Encoding: gzip (what a collector must accept) decodes to the same spans."""
    async with serving_otlp() as receiver:
        await asyncio.to_thread(export_two_spans, receiver.endpoint, Compression.Gzip)
        await receiver.wait_for(lambda r: len(r.spans) == 2)
    assert {span.name for span in receiver.spans} == {"tools/call echo", "decide policy"}
    assert {post.headers["Content-Encoding"] for post in receiver.posts} == {"gzip"}


def export_a_log_record_and_a_metric(endpoint: str) -> None:
    logs = LoggerProvider(resource=Resource.create({"service.name": "receiver-test"}))
    logs.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{endpoint}/v1/logs")))
    logs.get_logger("tests.audit").emit(body={"decision": "allow", "seq": 1}, attributes={"kind": "audit"})
    logs.shutdown()
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    meters.get_meter("tests.metrics").create_counter("requests").add(2)
    data = reader.get_metrics_data()
    assert data is not None
    exporter = OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics")
    exporter.export(data)
    exporter.shutdown()
    meters.shutdown()


async def test_log_records_and_metrics_arrive() -> None:
    """A log record's structured body and attributes, and the raw metrics export, are kept."""
    async with serving_otlp() as receiver:
        await asyncio.to_thread(export_a_log_record_and_a_metric, receiver.endpoint)
        await receiver.wait_for(lambda r: r.logs and r.metrics)
    (record,) = receiver.logs
    assert record.body == {"decision": "allow", "seq": 1}
    assert record.attributes == {"kind": "audit"}
    assert record.resource["service.name"] == "receiver-test" and record.scope == "tests.audit"
    (export,) = receiver.metrics
    names = [m.name for rm in export.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    assert names == ["requests"]


async def test_refusals_answer_the_status_and_keep_nothing() -> None:
    """A JSON body is 415, garbage 400, a test-set status is answered as is; none is kept, every
    post is recorded; a valid protobuf export is answered with the service's response message."""
    async with serving_otlp() as receiver, aiohttp.ClientSession() as http:
        protobuf = {"Content-Type": "application/x-protobuf"}

        async def post(body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
            async with http.post(receiver.endpoint + "/v1/traces", data=body, headers=headers) as response:
                return response.status, await response.read()

        assert (await post(b"{}", {"Content-Type": "application/json"}))[0] == 415
        assert (await post(b"\xff\xff\xff", protobuf))[0] == 400
        status, body = await post(gzip.compress(b""), {**protobuf, "Content-Encoding": "gzip"})
        assert status == 200 and ExportTraceServiceResponse.FromString(body) == ExportTraceServiceResponse()
        receiver.status = 503
        assert (await post(b"", protobuf))[0] == 503
    assert [post.status for post in receiver.posts] == [415, 400, 200, 503]
    assert receiver.spans == []


async def test_wait_for_fails_naming_what_arrived() -> None:
    """Past its timeout, wait_for raises an AssertionError that counts what did arrive."""
    receiver = OtlpReceiver()
    try:
        await receiver.wait_for(lambda r: r.spans, timeout_s=0.05)
    except AssertionError as exc:
        assert "0 spans" in str(exc)
    else:
        raise AssertionError("wait_for did not time out")
