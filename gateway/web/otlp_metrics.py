"""``metrics: {otlp: {endpoint, headers, timeout_s}, interval_s}``: the Prometheus families pushed
to an OpenTelemetry collector too, with the same names.

Every ``interval_s``, and once more when the process stops, a gateway process converts its
registry (the families of its ``/metrics``, the ``process_*`` ones included) into OTLP and sends
them to ``{endpoint}/v1/metrics`` (OTLP/HTTP, protobuf, gzip, the configured headers revealed
only into the exporter) with the OpenTelemetry SDK's exporter, off the event loop. An export
that fails is logged (``metrics_export_failed``) and the next interval sends the totals again:
cumulative figures lose nothing by a missed push.

The conversion (``to_otlp``) keeps the Prometheus names: a family's name as prometheus_client
knows it (a counter without ``_total``, which Prometheus' OTLP ingestion appends again, so a
query reads ``mcp_gateway_requests_total`` either way); labels become attributes.

- counter → monotonic cumulative Sum; each label set's start time is its ``_created`` sample;
- histogram → cumulative Histogram: bounds from ``le`` (``+Inf`` is implicit in OTLP), a count
  per bucket (Prometheus' are cumulative), sum and count; no min and max, which Prometheus keeps
  none of (the fields are optional in OTLP);
- gauge (and info) → Gauge.

Under ``serve --workers N`` every worker pushes its own figures as its own instance: the resource
carries ``service.instance.id`` (random per process) and ``mcp_gateway.worker`` (the index), as
for any service scaled out, and the backend sums instances. A replaced worker is a new instance
whose streams start anew, which OTLP states with their start times instead of a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Final

import structlog
from aiohttp import web
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.metrics.export import Metric as OtlpMetric
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from .. import __version__
from ..config import MetricsExportConfig
from ..metrics import METRICS
from ..telemetry.otlp_http import compression
from .admin import PROCESS_REGISTRY

__all__ = ["build_exporter", "resource_for", "start_metrics_push", "to_otlp"]

log = structlog.get_logger("gateway.otlp_metrics")

SERVICE_NAME: Final = "mcp-auth-gateway"
_SCOPE: Final = InstrumentationScope("gateway.metrics", __version__)
_CUMULATIVE: Final = AggregationTemporality.CUMULATIVE
Labels = tuple[tuple[str, str], ...]


def resource_for(worker: int | None) -> Resource:
    """This process as an OTLP resource: the service, this start's instance id, the worker index."""
    attributes: dict[str, str | int] = {
        "service.name": SERVICE_NAME,
        "service.version": __version__,
        "service.instance.id": str(uuid.uuid4()),
    }
    if worker is not None:
        attributes["mcp_gateway.worker"] = worker
    return Resource.create(attributes)


def _labels(sample: Sample, *without: str) -> Labels:
    return tuple(sorted((k, v) for k, v in sample.labels.items() if k not in without))


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _sum(family: Metric, now_ns: int, started_ns: int) -> OtlpMetric:
    created = {_labels(s): _ns(s.value) for s in family.samples if s.name == family.name + "_created"}
    points = [
        NumberDataPoint(dict(_labels(s)), created.get(_labels(s), started_ns), now_ns, s.value)
        for s in family.samples
        if s.name == family.name + "_total"
    ]
    return OtlpMetric(family.name, family.documentation, "", Sum(points, _CUMULATIVE, is_monotonic=True))


@dataclass
class _Series:
    """One label set of a Prometheus histogram, gathered from its samples."""

    start_ns: int
    buckets: list[tuple[float, float]] = field(default_factory=list)  # (le, cumulative count)
    total: float = 0.0
    count: float = 0.0

    def point(self, labels: Labels, now_ns: int) -> HistogramDataPoint:
        buckets = sorted(self.buckets)  # +Inf last
        cumulative = [int(count) for _bound, count in buckets]
        return HistogramDataPoint(
            attributes=dict(labels),
            start_time_unix_nano=self.start_ns,
            time_unix_nano=now_ns,
            count=int(self.count),
            sum=self.total,
            bucket_counts=[
                now - before for now, before in zip(cumulative, [0, *cumulative[:-1]], strict=True)
            ],
            explicit_bounds=[bound for bound, _count in buckets if bound != math.inf],
            # Prometheus keeps no min or max; OTLP's are optional, and None leaves them unset.
            min=None,  # type: ignore[arg-type]
            max=None,  # type: ignore[arg-type]
        )


def _histogram(family: Metric, now_ns: int, started_ns: int) -> OtlpMetric:
    series: dict[Labels, _Series] = {}
    for s in family.samples:
        one = series.setdefault(_labels(s, "le"), _Series(started_ns))
        suffix = s.name.removeprefix(family.name)
        if suffix == "_bucket":
            one.buckets.append((float(s.labels["le"]), s.value))
        elif suffix == "_sum":
            one.total = s.value
        elif suffix == "_count":
            one.count = s.value
        elif suffix == "_created":
            one.start_ns = _ns(s.value)
    points = [one.point(labels, now_ns) for labels, one in series.items()]
    return OtlpMetric(family.name, family.documentation, "", Histogram(points, _CUMULATIVE))


def _gauge(family: Metric, now_ns: int) -> OtlpMetric:
    points = [
        NumberDataPoint(dict(_labels(s)), 0, now_ns, s.value)
        for s in family.samples
        if s.name in (family.name, family.name + "_info")
    ]
    return OtlpMetric(family.name, family.documentation, "", Gauge(points))


def to_otlp(families: Iterable[Metric], resource: Resource, *, now_s: float, started_s: float) -> MetricsData:
    """Prometheus families as one OTLP export (see the module doc); ``started_s``: the start time
    of a counter without a ``_created`` sample (the process's start)."""
    now_ns, started_ns = _ns(now_s), _ns(started_s)
    metrics = []
    for family in families:
        if family.type == "counter":
            metrics.append(_sum(family, now_ns, started_ns))
        elif family.type == "histogram":
            metrics.append(_histogram(family, now_ns, started_ns))
        elif family.type in ("gauge", "info"):
            metrics.append(_gauge(family, now_ns))
        # summaries, state sets, untyped: the gateway has none
    scope = ScopeMetrics(_SCOPE, metrics, schema_url="")
    return MetricsData([ResourceMetrics(resource, [scope], schema_url="")])


def build_exporter(config: MetricsExportConfig) -> OTLPMetricExporter:
    otlp = config.otlp
    return OTLPMetricExporter(
        endpoint=f"{otlp.endpoint}/v1/metrics",
        headers={name: value.reveal() for name, value in otlp.headers},
        timeout=otlp.timeout_s,
        compression=compression(otlp),
    )


class _Push:
    """One process's pushes: collect on the loop (as /metrics does), convert and send off it."""

    def __init__(
        self,
        gateway_app: web.Application,
        config: MetricsExportConfig,
        exporter: MetricExporter,
        worker: int | None,
    ) -> None:
        self.gateway_app = gateway_app
        self.config = config
        self.exporter = exporter
        self.resource = resource_for(worker)
        self.started_s = time.time()

    async def once(self) -> bool:
        families = list(self.gateway_app[METRICS].registry.collect())
        return await asyncio.to_thread(self._send, families)

    def _send(self, families: list[Metric]) -> bool:
        families += PROCESS_REGISTRY.collect()  # reads /proc: files, so here, off the loop
        data = to_otlp(families, self.resource, now_s=time.time(), started_s=self.started_s)
        result = self.exporter.export(data, timeout_millis=self.config.otlp.timeout_s * 1000)
        if result is not MetricExportResult.SUCCESS:
            # The endpoint only: header values are secrets.
            log.warning("metrics_export_failed", endpoint=f"{self.config.otlp.endpoint}/v1/metrics")
            return False
        return True

    async def every_interval(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            await self.once()


def start_metrics_push(
    gateway_app: web.Application,
    config: MetricsExportConfig,
    *,
    worker: int | None = None,
    exporter: MetricExporter | None = None,
) -> None:
    """Push ``gateway_app``'s figures while it runs (call before its runner's ``setup``): every
    ``interval_s``, and a last time when it stops, before the exporter closes."""

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        # Off the loop: the exporter builds its HTTP session (and reads certificates) here.
        sender = exporter if exporter is not None else await asyncio.to_thread(build_exporter, config)
        # Off the loop too: Resource.create runs the SDK's resource detectors on a thread pool.
        push = await asyncio.to_thread(_Push, gateway_app, config, sender, worker)
        task = asyncio.create_task(push.every_interval())
        log.info(
            "metrics_export_started",
            endpoint=f"{config.otlp.endpoint}/v1/metrics",
            interval_s=config.interval_s,
        )
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await push.once()  # what was counted since the last interval
        await asyncio.to_thread(push.exporter.shutdown)

    gateway_app.cleanup_ctx.append(lifecycle)
