"""gateway.web.fleet_metrics: the workers' expositions combined into the fleet's, family by family.

The workers are real ``GatewayMetrics`` registries (and real process collectors), sent and read
back as a worker and its parent do (``families_to_json``, ``families_from_json``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import METRIC_FAMILIES, GatewayMetrics
from gateway.web.admin import process_registry
from gateway.web.fleet_metrics import (
    GAUGE_RULES,
    FleetTotals,
    WorkerAnswer,
    aggregate,
    families_from_json,
    families_to_json,
    render,
)

Record = Callable[[GatewayMetrics], None]


def worker(*records: Record, process: bool = False) -> tuple[Metric, ...]:
    """A worker's families as the parent reads them: a fresh registry after ``records``."""
    metrics = GatewayMetrics(CollectorRegistry())
    for record in records:
        record(metrics)
    families = [*metrics.registry.collect(), *(process_registry().collect() if process else ())]
    return families_from_json(families_to_json(families))


def from_text(text: str) -> tuple[Metric, ...]:
    return tuple(text_string_to_metric_families(text))


def value(families: Sequence[Metric], name: str, **labels: str) -> float | None:
    """The value of the one sample called ``name`` with exactly ``labels`` (None if absent)."""
    found = [
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == name and sample.labels == labels
    ]
    assert len(found) <= 1, f"{name}{labels} appears {len(found)} times"
    return found[0] if found else None


def tool_call(duration_s: float) -> Record:
    return lambda metrics: metrics.request_finished("/mcp", "tools/call", "ok", duration_s)


def test_counters_with_the_same_labels_are_one_sample_holding_the_sum() -> None:
    """Two workers' `requests_total` for one label set add up into one sample; label sets only
    one worker has are kept as they are."""
    first = worker(tool_call(0.01), tool_call(0.01), lambda m: m.token_rejected("expired"))
    second = worker(tool_call(0.02), lambda m: m.request_finished("/mcp", "ping", "ok", 0.001))
    fleet = aggregate({"0": first, "1": second})
    name = "mcp_gateway_requests_total"
    assert value(fleet, name, route="/mcp", mcp_method="tools/call", outcome="ok") == 3
    assert value(fleet, name, route="/mcp", mcp_method="ping", outcome="ok") == 1
    assert value(fleet, "mcp_gateway_token_rejections_total", reason="expired") == 1
    created = "mcp_gateway_requests_created"
    labels = {"route": "/mcp", "mcp_method": "tools/call", "outcome": "ok"}
    earliest = min(value(first, created, **labels) or 0, value(second, created, **labels) or 0)
    assert value(fleet, created, **labels) == earliest > 0  # when the label set first appeared


def test_histograms_add_up_to_what_one_process_recording_everything_shows() -> None:
    """Buckets, `_sum` and `_count` of the fleet equal those of a single registry that observed
    every worker's requests."""
    durations = (0.0005, 0.003, 0.04, 0.2, 7.0, 0.02)
    first = worker(*(tool_call(d) for d in durations[:4]))
    second = worker(*(tool_call(d) for d in durations[4:]))
    alone = worker(*(tool_call(d) for d in durations))
    fleet = aggregate({"0": first, "1": second})

    def histogram(families: Sequence[Metric]) -> list[tuple[str, dict[str, str], float]]:
        [family] = [f for f in families if f.name == "mcp_gateway_request_duration_seconds"]
        counts = [s for s in family.samples if not s.name.endswith("_created")]
        return [(s.name, s.labels, s.value) for s in counts]

    assert histogram(fleet) == histogram(alone)
    labels = {"route": "/mcp", "mcp_method": "tools/call", "outcome": "ok"}
    assert value(fleet, "mcp_gateway_request_duration_seconds_count", **labels) == 6
    assert value(fleet, "mcp_gateway_request_duration_seconds_bucket", le="0.05", **labels) == 4
    assert value(fleet, "mcp_gateway_request_duration_seconds_sum", **labels) == pytest.approx(sum(durations))


def set_gauges(in_flight: int, circuit: int, store_up: int, jwks_at: float) -> Record:
    def record(metrics: GatewayMetrics) -> None:
        metrics.in_flight.set(in_flight)
        metrics.circuit_changed("/mcp", circuit)
        metrics.rate_limit_store_up.set(store_up)
        metrics.jwks_last_success.labels("https://as").set(jwks_at)
        metrics.workers_alive.set(7)  # what a worker read from the parent's shared count

    return record


@pytest.mark.parametrize(
    ("name", "labels", "expected"),
    [
        ("mcp_gateway_requests_in_flight", {}, 5.0),  # sum
        ("mcp_gateway_upstream_circuit_state", {"route": "/mcp"}, 2.0),  # worst: open in one
        ("mcp_gateway_rate_limit_store_up", {}, 0.0),  # worst: down in one
        ("mcp_gateway_jwks_last_success_timestamp_seconds", {"issuer": "https://as"}, 2000.0),  # latest
        ("mcp_gateway_workers_alive", {}, None),  # the parent's own count replaces the workers'
    ],
)
def test_gauges_are_combined_by_what_they_mean(
    name: str, labels: dict[str, str], expected: float | None
) -> None:
    """In-flight counts add up, a circuit or store state takes the worst worker's, a timestamp the
    latest, and the workers' copies of workers_alive are dropped."""
    fleet = aggregate({"0": worker(set_gauges(2, 0, 1, 1000.0)), "1": worker(set_gauges(3, 2, 0, 2000.0))})
    assert value(fleet, name, **labels) == expected


def test_process_figures_keep_one_series_per_worker_and_python_info_one_copy() -> None:
    """`process_*` families get a `worker` label per process (the parent's too); `python_info`,
    the same everywhere, appears once."""
    fleet = aggregate(
        {
            "0": worker(process=True),
            "1": worker(process=True),
            "parent": tuple(process_registry().collect()),
        }
    )
    [max_fds] = [family for family in fleet if family.name == "process_max_fds"]
    assert sorted(sample.labels["worker"] for sample in max_fds.samples) == ["0", "1", "parent"]
    [cpu] = [family for family in fleet if family.name == "process_cpu_seconds"]
    assert {sample.labels["worker"] for sample in cpu.samples} == {"0", "1", "parent"}
    [python] = [family for family in fleet if family.name == "python_info"]
    assert len(python.samples) == 1 and "worker" not in python.samples[0].labels


def test_an_unknown_gauge_keeps_one_series_per_worker() -> None:
    """A gauge without a rule is never summed or picked: each worker's value stays, labelled."""
    text = "# HELP x_level A level.\n# TYPE x_level gauge\nx_level 3.0\n"
    fleet = aggregate({"0": from_text(text), "1": from_text(text.replace("3.0", "4.0"))})
    assert value(fleet, "x_level", worker="0") == 3.0
    assert value(fleet, "x_level", worker="1") == 4.0
    assert value(fleet, "x_level") is None


def test_every_gauge_of_the_gateway_has_a_rule() -> None:
    """Each gauge in METRIC_FAMILIES says how a fleet combines it (a new gauge must choose)."""
    gauges = {family.name for family in worker() if family.type == "gauge"}
    gateway_gauges = gauges & set(METRIC_FAMILIES)
    assert gateway_gauges, "no gauges found"
    assert gateway_gauges <= GAUGE_RULES.keys()


def test_the_fleet_exposition_parses_back_with_one_help_and_type_per_family() -> None:
    """What the parent serves is valid text format: prometheus_client parses it back to the same
    samples, and no family has two TYPE or HELP lines."""
    fleet = aggregate(
        {
            "0": worker(tool_call(0.01), set_gauges(1, 0, 1, 5.0), process=True),
            "1": worker(tool_call(0.3), set_gauges(1, 1, 1, 6.0), process=True),
        }
    )
    text = render(fleet).decode()
    for kind in ("# TYPE ", "# HELP "):
        names = Counter(line.split()[2] for line in text.splitlines() if line.startswith(kind))
        assert [name for name, count in names.items() if count > 1] == []
    parsed = list(text_string_to_metric_families(text))

    def samples(families: Sequence[Metric]) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
        return sorted((s.name, tuple(sorted(s.labels.items())), s.value) for f in families for s in f.samples)

    # The text format puts `_created` samples in gauge families of their own: compare samples.
    assert samples(parsed) == samples(fleet)
    assert (
        value(parsed, "mcp_gateway_requests_total", route="/mcp", mcp_method="tools/call", outcome="ok") == 2
    )


def test_a_worker_that_misses_a_scrape_keeps_its_counters_but_not_its_gauges() -> None:
    """A silent worker counts with its last counters (the sum never goes down) and with none of
    its gauges; once it answers again its fresh figures replace the remembered ones."""
    totals = FleetTotals()
    name, labels = (
        "mcp_gateway_requests_total",
        {"route": "/mcp", "mcp_method": "tools/call", "outcome": "ok"},
    )
    busy = (lambda m: m.in_flight.set(4),)
    first = totals.combine(
        [WorkerAnswer(0, 100, worker(tool_call(0.01), *busy)), WorkerAnswer(1, 101, worker(tool_call(0.01)))]
    )
    assert value(first, name, **labels) == 2
    assert value(first, "mcp_gateway_requests_in_flight") == 4
    silent = totals.combine(
        [WorkerAnswer(0, 100, None), WorkerAnswer(1, 101, worker(*[tool_call(0.01)] * 3))]
    )
    assert value(silent, name, **labels) == 4  # 1 remembered + 3 fresh
    assert value(silent, "mcp_gateway_requests_in_flight") == 0
    back = totals.combine(
        [
            WorkerAnswer(0, 100, worker(*[tool_call(0.01)] * 2)),
            WorkerAnswer(1, 101, worker(*[tool_call(0.01)] * 3)),
        ]
    )
    assert value(back, name, **labels) == 5


def test_a_replaced_worker_s_counts_stay_in_the_fleet_totals() -> None:
    """Worker 1 dies after counting 5 and its replacement (another pid) starts from 0: the fleet's
    counter keeps the 5, and the histogram's count too, so Prometheus sees no reset."""
    totals = FleetTotals()
    name, labels = (
        "mcp_gateway_requests_total",
        {"route": "/mcp", "mcp_method": "tools/call", "outcome": "ok"},
    )
    totals.combine(
        [WorkerAnswer(0, 100, worker(tool_call(0.01))), WorkerAnswer(1, 101, worker(*[tool_call(0.01)] * 5))]
    )
    after = totals.combine([WorkerAnswer(0, 100, worker(tool_call(0.01))), WorkerAnswer(1, 202, worker())])
    assert value(after, name, **labels) == 6
    assert value(after, "mcp_gateway_request_duration_seconds_count", **labels) == 6
    later = totals.combine(
        [WorkerAnswer(0, 100, worker(tool_call(0.01))), WorkerAnswer(1, 202, worker(tool_call(0.01)))]
    )
    assert value(later, name, **labels) == 7


def test_the_workers_families_survive_the_trip_to_the_parent_and_nothing_else_passes() -> None:
    """A worker's JSON reads back to the same families as its text exposition says (names,
    types, samples); a body that is not one is a ValueError (the parent counts bad_response)."""
    metrics = GatewayMetrics(CollectorRegistry())
    tool_call(0.2)(metrics)
    metrics.jwks_issuer_watched("https://as")
    sent = families_from_json(families_to_json(metrics.registry.collect()))
    exposed = from_text(metrics.exposition().decode())
    assert render(sent) == render(exposed)
    for body in (
        b"",
        b"{}",
        b"[1]",
        b'[["x", "gauge", "h", [["x", {"a": 1}, 1]]]]',
        b"# TYPE x gauge\nx 1\n",
    ):
        with pytest.raises(ValueError):
            families_from_json(body)
