"""The CPU a rule condition adds to one call's authorization, measured in this process.

The wrk figure (``measure_variant`` in ``tests.bench.run``) compares whole requests through the
gateway, whose CPU per request swings by ±10 % run to run on this 2-core machine: more than the
difference it is after. This one runs the gateway's own authorization step for a POST
(``gateway.web.pipeline.authorize``: strict body already parsed, the decision, its JSON audit
event through the real log processors, the metrics) for the same echo call on two routes, one
whose rule has ``BENCH_CONDITION``, in alternating blocks of ``time.process_time``, and reports
each route's fastest block and their difference: noise on a shared machine only ever adds time,
so the fastest block is the closest to the cost itself.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, TextIO

from prometheus_client import CollectorRegistry

from gateway.config import parse_config_text
from gateway.logs import configure_logging
from gateway.mcp.messages import parse_post
from gateway.metrics import GatewayMetrics
from gateway.principal import Principal
from gateway.secret import PresentedToken
from gateway.web.pipeline import authorize


class _Discard:
    """A log stream that takes every line and keeps none (the gateway writes them to stdout)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _config(condition: str) -> str:
    rule = json.dumps({"scopes": ["tools:echo"], "condition": condition})
    return f"""
public_url: https://gw.bench.example
issuers: [{{issuer: https://as.bench.example, algorithms: [ES256], jwks: {{discover: true}}}}]
routes:
  - path: /plain
    upstream: http://127.0.0.1:9/mcp
    scopes: [mcp:access]
    tools: {{"echo": [tools:echo], "*": [tools:admin]}}
  - path: /cond
    upstream: http://127.0.0.1:9/mcp
    scopes: [mcp:access]
    tools: {{"echo": {rule}, "*": [tools:admin]}}
"""


def measure(condition: str, *, iterations: int = 5000, rounds: int = 11) -> dict[str, Any]:
    """µs of CPU per authorized call on each route (fastest block), and the condition's extra."""
    config = parse_config_text(_config(condition), Path("/tmp/bench-decision.yaml"), {})
    routes = {route.path: route for route in config.routes}
    claims = {
        "iss": "https://as.bench.example",
        "sub": "bench",
        "aud": "https://gw.bench.example/cond",
        "scope": "mcp:access tools:echo tools:stream",
        "groups": ["eng", "bench"],
        "client_id": "bench-client",
    }
    caller = Principal(
        issuer="https://as.bench.example",
        subject="bench",
        client_id="bench-client",
        scopes=frozenset(claims["scope"].split()),  # type: ignore[attr-defined]
        audience=(claims["aud"],),  # type: ignore[arg-type]
        expires_at=0.0,
        token_id=None,
        claims=claims,
        token=PresentedToken("bench-token-never-logged"),
    )
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hi"}},
    }
    post = parse_post(json.dumps(call).encode(), lambda _name: [])
    stream: TextIO = _Discard()  # type: ignore[assignment]
    configure_logging(json=True, level="info", stream=stream)
    metrics = GatewayMetrics(CollectorRegistry())
    per_call: dict[str, list[float]] = {path: [] for path in routes}
    for _ in range(rounds):
        for path, route in routes.items():
            for _ in range(200):  # warm: the caller's context, caches, the metric's label set
                authorize(route, caller, post, metrics)
            started = time.process_time()
            for _ in range(iterations):
                authorize(route, caller, post, metrics)
            per_call[path].append((time.process_time() - started) / iterations * 1e6)
    plain, with_condition = min(per_call["/plain"]), min(per_call["/cond"])
    return {
        "plain_us": round(plain, 2),
        "condition_us": round(with_condition, 2),
        "extra_cpu_us_per_call": round(with_condition - plain, 2),
        "median_plain_us": round(statistics.median(per_call["/plain"]), 2),
        "median_condition_us": round(statistics.median(per_call["/cond"]), 2),
        "rounds": rounds,
        "iterations": iterations,
    }


if __name__ == "__main__":
    from tests.bench.run import BENCH_CONDITION

    print(measure(BENCH_CONDITION))
