"""The published benchmark results: every target of the performance issue has a row, the README
table names the run it was copied from, and the median arithmetic is right. (The benchmark itself
is `python -m tests.bench.run`, never part of the test run.)"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from tests.bench.run import _median_run, summarise

ROOT = Path(__file__).resolve().parents[2]
LATEST = ROOT / "tests" / "bench" / "results" / "latest.json"


def latest() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(LATEST.read_text())
    return result


def test_every_target_has_a_judged_row() -> None:
    """Every performance target has a judged row, and each verdict is its value against its target."""
    rows = {row["figure"]: row for row in summarise(latest())}
    judged = {figure: row for figure, row in rows.items() if row["met"] is not None}
    for concurrency in ("1", "8", "64"):
        assert f"SDK tools/call throughput ratio c={concurrency}" in judged
        assert f"SDK tools/call p50 ratio c={concurrency}" in judged
    assert "idle stream KiB each" in judged
    # Issue 21: ratios within the run, never absolute microseconds.
    for prefix in (
        "SSE events/s ratio, client on core 0",
        "SSE events/s ratio, client on core 1",
        "SSE time to first event ratio, client on core 0",
        "session setup ratio",
        "CPU us/request vs bare relay, c=64",
        "DPoP proof: CPU/request ratio",
        "a CEL condition: CPU/request ratio",
        "a rate limit (memory): CPU/request ratio",
        "tool pinning (enforce): CPU/request ratio",
        "tracing at sample ratio 1.0: CPU/request ratio",
        "tracing at sample ratio 0.01: CPU/request ratio",
    ):
        assert any(figure.startswith(prefix) for figure in judged), prefix
    for rate in ("200", "500", "1000"):
        for percentile in ("p50", "p99"):
            assert any(figure.startswith(f"{rate} req/s open loop: added {percentile} ") for figure in judged)
    assert "free upstream: gateway CPU us/request c=64 (info)" in rows
    assert "--workers 2 scaling vs 1 worker" in rows
    # A row's verdict is its value against its target, not a copied flag.
    for row in judged.values():
        if row["value"] is None:  # a ratio the run could not measure is not shown met
            assert row["met"] is False and "undefined" in row["figure"]
            continue
        op, bound = row["target"].split()
        assert row["met"] == (row["value"] >= float(bound) if op == ">=" else row["value"] <= float(bound))


def test_dpop_figure_rows() -> None:
    """A run with the DPoP figure adds its CPU per request (proof, bearer named beside it) and the
    difference as unjudged rows, and their ratio judged against the 10 % a capability may cost;
    results from before the figure summarise without them."""
    with_dpop = {
        **latest(),
        "dpop": {
            "bearer": {"gateway_cpu_us_per_request": 300.0},
            "dpop": {"gateway_cpu_us_per_request": 420.5},
            "extra_cpu_us_per_request": 120.5,
            "cpu_ratio": 1.402,
        },
    }
    rows = {row["figure"]: row for row in summarise(with_dpop)}
    proof = rows["DPoP: gateway CPU us/request c=64, proof (bearer 300) (info)"]
    extra = rows["DPoP: extra gateway CPU us/request for the proof (info)"]
    assert (proof["value"], proof["target"], proof["met"]) == (420.5, "-", None)
    assert (extra["value"], extra["target"], extra["met"]) == (120.5, "-", None)
    judged = rows["DPoP proof: CPU/request ratio to without, c=64 (+120 us)"]
    assert (judged["value"], judged["target"], judged["met"]) == (1.402, "<= 1.10", False)
    without = {key: value for key, value in latest().items() if key != "dpop"}
    assert not any(row["figure"].startswith("DPoP") for row in summarise(without))


def test_readme_table_is_from_the_committed_results() -> None:
    """The README's results name the commit of latest.json and quote its gateway CPU per request."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"Latest results \(commit ([0-9a-f]{7})", readme)
    assert match is not None
    assert latest()["machine"]["commit"].startswith(match[1])
    free = latest()["calls_free"]["64"]["gateway"]
    assert f"{round(free['gateway_cpu_us_per_request'])} µs gateway CPU/request" in readme


def test_median_of_rounds() -> None:
    """Rounds merge into each figure's median, with requests summed and socket errors joined."""
    rounds = [
        {"requests": 10, "rps": 3.0, "p50_ms": 1.0, "socket_errors": ""},
        {"requests": 20, "rps": 1.0, "p50_ms": 5.0, "socket_errors": "timeout 1"},
        {"requests": 30, "rps": 2.0, "p50_ms": 2.0, "socket_errors": ""},
        {"requests": 40, "rps": 4.0, "p50_ms": 9.0, "socket_errors": ""},
    ]
    assert _median_run(rounds) == {
        "rounds": 4,
        "requests": 100,
        "rps": 2.5,
        "p50_ms": 3.5,
        "socket_errors": "timeout 1",
    }


def test_alternating_runs_swap_their_order_every_other_round() -> None:
    """alternate_cpu runs plain, limited, then limited, plain, …: neither label always goes first."""
    import os

    from tests.bench.run import alternate_cpu

    class _ThisProcess:
        def pids(self) -> list[int]:
            return [os.getpid()]

    order: list[str] = []

    def run(label: str) -> Any:
        def measured() -> dict[str, Any]:
            order.append(label)
            started = time.process_time()
            while time.process_time() - started < 0.02:  # some CPU to count, as a wrk run has
                pass
            return {"requests": 1, "rps": 1.0}

        return measured

    alternate_cpu(_ThisProcess(), {"plain": run("plain"), "limited": run("limited")}, 4, baseline="plain")  # type: ignore[arg-type]
    assert order == ["plain", "limited", "limited", "plain", "plain", "limited", "limited", "plain"]
