"""``metrics: {otlp: …}``: a gateway pushes its Prometheus families to a real OTLP/HTTP receiver
(tests/support/otlp_receiver.py), with the same names, in front of the SDK upstream."""

from __future__ import annotations

import aiohttp
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from tests.conftest import GatewayFactory, LogSink, Upstream, single_route_config
from tests.integration.test_lifecycle import bearer, modern_call
from tests.support.issuer import TestIssuer
from tests.support.otlp_receiver import OtlpReceiver, attributes_of, serving_otlp

API_KEY = "otlp-canary-key-7f3a91"
TOOL_CALLS = {"route": "/mcp", "mcp_method": "tools/call", "outcome": "ok"}


def tool_calls_counted(export: ExportMetricsServiceRequest) -> float | None:
    """The value of `mcp_gateway_requests` for successful tool calls in one export (None if absent)."""
    for resource_metrics in export.resource_metrics:
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                if metric.name != "mcp_gateway_requests":
                    continue
                for point in metric.sum.data_points:
                    if attributes_of(point.attributes) == TOOL_CALLS:
                        return float(point.as_double)
    return None


def latest_count(receiver: OtlpReceiver) -> float | None:
    counts = [tool_calls_counted(export) for export in receiver.metrics]
    return next((count for count in reversed(counts) if count is not None), None)


async def test_the_gateway_pushes_its_figures_to_the_collector_with_the_same_names(
    issuer: TestIssuer,
    upstream: Upstream,
    start_gateway_with: GatewayFactory,
    gateway_logs: LogSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two tool calls: within an interval the receiver gets `mcp_gateway_requests` = 2 for them
    (and the process figures), posted to /v1/metrics with the configured header; the header's
    value appears in no log line."""
    monkeypatch.setenv("GW_OTLP_KEY", API_KEY)
    async with serving_otlp() as receiver:
        # single_route_config is indented as written in a test (the fixture dedents it).
        otlp = f"{{endpoint: '{receiver.endpoint}', headers: {{x-api-key: {{env: GW_OTLP_KEY}}}}}}"
        config = single_route_config(issuer, upstream.mcp_url).rstrip(" ") + (
            f"        metrics:\n          otlp: {otlp}\n          interval_s: 0.2\n"
        )
        gateway = await start_gateway_with(config)
        body, headers = modern_call("add", {"a": 1, "b": 2})
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                async with http.post(
                    gateway.route_url(), json=body, headers={**headers, **bearer(issuer)}
                ) as response:
                    assert response.status == 200
        assert await receiver.wait_for(lambda r: latest_count(r) == 2, timeout_s=5.0)
        [*_, last] = receiver.metrics
        names = {m.name for rm in last.resource_metrics for s in rm.scope_metrics for m in s.metrics}
        assert {"mcp_gateway_request_duration_seconds", "process_resident_memory_bytes"} <= names
        assert {post.path for post in receiver.posts} == {"/v1/metrics"}
        assert {post.headers["x-api-key"] for post in receiver.posts} == {API_KEY}
    assert API_KEY not in gateway_logs.getvalue()
