"""The benchmark's targets as ratios within one run (issue 21): what the gateway costs next to a
direct connection and to a bare aiohttp relay measured minutes apart on the same machine, so a
slow day moves both sides. Each row: figure, value, target, whether it is met (None: no target).
"""

from __future__ import annotations

from typing import Any

# Extra CPU per request a capability may cost when it is on (issue 21: at most 10 %).
CAPABILITY_LIMIT = 1.10


def ratio_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(name: str, value: float | None, target: str, ok: bool | None) -> None:
        rows.append({"figure": name, "value": value, "target": target, "met": ok})

    for key in ("sse", "sse_client_with_upstream"):
        if key not in r:
            continue
        sse = r[key]
        ratio = sse["events_per_s_ratio"]
        row(f"SSE events/s ratio, client on core {sse['client_cores']}", ratio, ">= 0.95", ratio >= 0.95)
        first = round(sse["gateway"]["ttfe_ms"] / sse["direct"]["ttfe_ms"], 3)
        row(
            f"SSE time to first event ratio, client on core {sse['client_cores']}",
            first,
            "<= 1.20",
            first <= 1.2,
        )
    if "sessions" in r:  # every session id through the gateway is sealed and opened (session sealing)
        ratio = r["sessions"]["ratio"]
        row("session setup ratio (initialize + DELETE, sealed ids)", ratio, ">= 0.90", ratio >= 0.90)
    if "bare_relay" in r:
        # Runs alternating with the relay's where the run has them (else the earlier c=64 figure).
        gateway = r["bare_relay"].get(
            "gateway_cpu_us_per_request", r["calls_free"]["64"]["gateway"]["gateway_cpu_us_per_request"]
        )
        floor = r["bare_relay"]["cpu_us_per_request"]
        ratio = round(gateway / floor, 3)
        row(
            f"CPU us/request vs bare relay, c=64 ({gateway:.0f} / {floor:.0f})",
            ratio,
            "<= 1.35",
            ratio <= 1.35,
        )
    for rate, entry in r.get("fixed_rate", {}).items():
        added, bare = entry["added_gateway_ms"], entry["added_bare_relay_ms"]
        for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
            ratio = entry["added_ratio"][key]
            name = f"{rate} req/s open loop: added {label} ms {added[key]} (bare {bare[key]}), ratio"
            if ratio is None:  # the bare relay added nothing: direct's own percentile stalled
                name += " undefined, not shown met"
            row(name, ratio, "<= 1.20", ratio is not None and ratio <= 1.2)
        name = f"{rate} req/s open loop: added p99.9 ms (bare {bare['p999_ms']}) (info)"
        row(name, added["p999_ms"], "-", None)
    for key, label in (
        ("dpop", "DPoP proof"),
        ("condition", "a CEL condition"),
        ("rate_limit_memory", "a rate limit (memory)"),
        ("rate_limit_redis", "a rate limit (Redis)"),
        ("pinning", "tool pinning (enforce)"),
    ):
        if key in r:
            ratio = r[key]["cpu_ratio"]
            extra = r[key]["extra_cpu_us_per_request"]
            name = f"{label}: CPU/request ratio to without, c=64 ({extra:+.0f} us)"
            row(name, ratio, f"<= {CAPABILITY_LIMIT:.2f}", ratio <= CAPABILITY_LIMIT)
    if "tracing" in r:
        off = r["tracing"]["off"]["gateway_cpu_us_per_request"]
        for label, ratio_name in (("ratio_1", "1.0"), ("ratio_0.01", "0.01")):
            ratio = round(r["tracing"][label]["gateway_cpu_us_per_request"] / off, 3)
            name = f"tracing at sample ratio {ratio_name}: CPU/request ratio to off, c=64"
            row(name, ratio, f"<= {CAPABILITY_LIMIT:.2f}", ratio <= CAPABILITY_LIMIT)
    return rows
