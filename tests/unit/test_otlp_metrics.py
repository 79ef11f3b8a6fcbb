"""gateway.web.otlp_metrics: a real registry's Prometheus families as OTLP, names kept.

The export is encoded with the OTLP exporter's own encoder and read back as protobuf, as a
collector would.
"""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric as PbMetric
from prometheus_client import CollectorRegistry

from gateway.metrics import GatewayMetrics
from gateway.web.otlp_metrics import resource_for, to_otlp
from tests.support.otlp_receiver import attributes_of

NOW_S = 1_800_000_000.0


def exported(metrics: GatewayMetrics, *, worker: int | None = None) -> dict[str, PbMetric]:
    """The OTLP metrics of ``metrics``' registry by name, as encoded for the wire."""
    data = to_otlp(metrics.registry.collect(), resource_for(worker), now_s=NOW_S, started_s=NOW_S - 60)
    request = encode_metrics(data)
    [resource_metrics] = request.resource_metrics
    [scope] = resource_metrics.scope_metrics
    return {metric.name: metric for metric in scope.metrics}


def test_a_counter_is_a_monotonic_cumulative_sum_named_as_the_family() -> None:
    """`mcp_gateway_requests_total` goes out as the cumulative monotonic Sum
    `mcp_gateway_requests` (Prometheus' OTLP ingestion appends `_total`), one point per label
    set, its labels as attributes, starting when the label set was created."""
    metrics = GatewayMetrics(CollectorRegistry())
    for _ in range(3):
        metrics.request_finished("/mcp", "tools/call", "ok", 0.01)
    metrics.request_finished("/mcp", "ping", "ok", 0.001)
    created = metrics.registry.get_sample_value(
        "mcp_gateway_requests_created", {"route": "/mcp", "mcp_method": "tools/call", "outcome": "ok"}
    )
    requests = exported(metrics)["mcp_gateway_requests"]
    assert requests.sum.is_monotonic and requests.sum.aggregation_temporality == 2  # CUMULATIVE
    points = {attributes_of(p.attributes)["mcp_method"]: p for p in requests.sum.data_points}
    assert attributes_of(points["tools/call"].attributes) == {
        "route": "/mcp",
        "mcp_method": "tools/call",
        "outcome": "ok",
    }
    assert (points["tools/call"].as_double, points["ping"].as_double) == (3.0, 1.0)
    assert created is not None and points["tools/call"].start_time_unix_nano == int(created * 1e9)
    assert points["tools/call"].time_unix_nano == int(NOW_S * 1e9)


def test_a_histogram_has_per_bucket_counts_bounds_sum_and_count() -> None:
    """Prometheus' cumulative buckets become OTLP's per-bucket counts over the same bounds
    (+Inf implicit), with the sum and count, and no min or max."""
    metrics = GatewayMetrics(CollectorRegistry())
    for duration in (0.0005, 0.003, 0.003, 0.2, 400.0):
        metrics.request_finished("/mcp", "tools/call", "ok", duration)
    [point] = exported(metrics)["mcp_gateway_request_duration_seconds"].histogram.data_points
    assert list(point.explicit_bounds) == [
        0.001,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        30,
        60,
        300,
    ]
    assert list(point.bucket_counts) == [1, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert (point.count, point.sum) == (5, 0.0005 + 0.003 + 0.003 + 0.2 + 400.0)
    assert not point.HasField("min") and not point.HasField("max")


def test_gauges_are_gauges_and_the_resource_names_the_instance_and_worker() -> None:
    """A gauge keeps its value and labels; the resource carries the service, a per-process
    instance id and the worker index."""
    metrics = GatewayMetrics(CollectorRegistry())
    metrics.circuit_changed("/mcp", 2)
    gauge = exported(metrics)["mcp_gateway_upstream_circuit_state"].gauge
    assert [(attributes_of(p.attributes), p.as_double) for p in gauge.data_points] == [
        ({"route": "/mcp"}, 2.0)
    ]
    first, second = resource_for(1).attributes, resource_for(1).attributes
    assert (first["service.name"], first["mcp_gateway.worker"]) == ("mcp-auth-gateway", 1)
    assert first["service.instance.id"] != second["service.instance.id"]
    assert "mcp_gateway.worker" not in resource_for(None).attributes
