"""The CPU tracing adds to one tools/call, measured in this process (the wrk figure's companion).

``tracing_figure`` in ``tests.bench.run`` compares three gateway processes under ``wrk``; on a
shared 2-core machine their CPU per request swings by more than the smaller difference it is
after (ratio 0.01). Here three gateways (no ``tracing:``, sample ratio 1.0, 0.01) run in this
process, in front of the nearly free upstream's handler (also in this process), and answer one
client's sequential echo calls in alternating blocks of ``time.process_time``; spans go to the
OTLP sink in a subprocess (tests/bench/otlp_sink.py). ``process_time`` counts every thread, the
span processor's export thread included. The client's and the upstream's share is the same for
all three, so the differences are tracing's; each label's fastest block is kept (noise on a
shared machine only adds time). A traced block ends by exporting its spans (``Tracing.flush``),
so that its export is counted in it, not in the block after it.

    python -m tests.bench.tracing_cost
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.config import load_config
from gateway.logs import configure_logging
from gateway.server import start_gateway
from gateway.telemetry.spans import calling_upstream
from gateway.telemetry.tracing import Tracing
from gateway.web.live import LIVE
from tests.bench import free_upstream
from tests.support.issuer import SigningKey, TestIssuer
from tests.support.processes import REPO_ROOT

RATIOS: dict[str, float | None] = {"off": None, "ratio_1": 1.0, "ratio_0.01": 0.01}
ISSUER = "https://issuer.bench.example"
CALL = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {
        "name": "echo",
        "arguments": {"text": "hi"},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        },
    },
}
HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "MCP-Protocol-Version": "2026-07-28",
    "Mcp-Method": "tools/call",
    "Mcp-Name": "echo",
}


class _Discard:
    """A log stream that takes every line and keeps none."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _config(folder: Path, upstream_port: int, sink_port: int, ratio: float | None) -> Path:
    tracing = (
        ""
        if ratio is None
        else (f"tracing: {{otlp: {{endpoint: 'http://127.0.0.1:{sink_port}'}}, sample_ratio: {ratio}}}\n")
    )
    path = folder / f"gateway-{ratio}.yaml"
    path.write_text(
        "public_url: http://127.0.0.1:8080\n"
        f"issuers: [{{issuer: {ISSUER}, algorithms: [ES256], jwks: {{file: jwks.json}}}}]\n"
        + tracing
        + "routes:\n"
        "  - path: /mcp\n"
        f"    upstream: http://127.0.0.1:{upstream_port}/mcp\n"
        "    scopes: [mcp:access]\n"
        '    tools: {"echo": [tools:echo], "*": [tools:admin]}\n'
    )
    return path


async def _measure(folder: Path, sink_port: int, iterations: int, rounds: int) -> dict[str, Any]:
    upstream = web.Application()
    upstream.router.add_post("/mcp", free_upstream.post)
    upstream_runner = web.AppRunner(upstream, access_log=None)
    await upstream_runner.setup()
    site = web.TCPSite(upstream_runner, "127.0.0.1", 0)
    await site.start()
    upstream_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    issuer = TestIssuer(keys=[SigningKey.generate("ES256", kid="bench")], base_url=ISSUER)
    (folder / "jwks.json").write_text(json.dumps(issuer.jwks()))
    token = issuer.mint(audience="http://127.0.0.1:8080/mcp", scope="mcp:access tools:echo", lifetime_s=3600)
    runners: list[web.AppRunner] = []
    urls: dict[str, str] = {}
    try:
        tracers: dict[str, Tracing] = {}
        for label, ratio in RATIOS.items():
            config = load_config(_config(folder, upstream_port, sink_port, ratio))
            runner, port = await start_gateway(config, host="127.0.0.1", port=0)
            runners.append(runner)
            urls[label] = f"http://127.0.0.1:{port}/mcp"
            tracing = runner.app[LIVE].current.tracing
            if isinstance(tracing, Tracing):
                tracers[label] = tracing
        await asyncio.sleep(0.5)  # keys loaded
        headers = {**HEADERS, "Authorization": f"Bearer {token}"}
        body = json.dumps(CALL)
        per_call: dict[str, list[float]] = {label: [] for label in urls}
        async with aiohttp.ClientSession() as http:

            async def calls(url: str, count: int) -> None:
                for _ in range(count):
                    async with http.post(url, data=body, headers=headers) as response:
                        await response.read()
                        if response.status != 200:
                            raise RuntimeError(f"{url}: {response.status}")

            for url in urls.values():
                await calls(url, 200)  # warm: connections, the verified-token cache
            labels = list(urls)
            for round_ in range(rounds):
                # Each round starts with another label: the block after a heavy one is no
                # longer always the same label's (order alone moved a label by ~10 %).
                for label in labels[round_ % len(labels) :] + labels[: round_ % len(labels)]:
                    url = urls[label]
                    started = time.process_time()
                    await calls(url, iterations)
                    if (tracing := tracers.get(label)) is not None:
                        # This block's spans exported within it: the export thread would
                        # otherwise do it during the next label's block, on its clock.
                        await asyncio.to_thread(tracing.flush)
                    per_call[label].append((time.process_time() - started) / iterations * 1e6)
    finally:
        for runner in runners:
            await runner.cleanup()  # flushes the traced gateways' spans
        await upstream_runner.cleanup()
    best = {label: round(min(values), 1) for label, values in per_call.items()}
    return {
        "cpu_us_per_call": best,
        "extra_cpu_us_ratio_1": round(best["ratio_1"] - best["off"], 1),
        "extra_cpu_us_ratio_0.01": round(best["ratio_0.01"] - best["off"], 1),
        "blocks": {label: [round(v, 1) for v in values] for label, values in per_call.items()},
        "iterations": iterations,
        "rounds": rounds,
    }


async def _unsampled_path_us(folder: Path, sink_port: int, iterations: int = 20_000) -> float:
    """µs of CPU the span hooks add to a request that is not sampled (sample ratio 0): the SERVER
    span's start and end around the pipeline and the traceparent passed upstream, around a
    handler that does nothing; the fastest of five blocks, the bare handler's time taken off."""
    config = load_config(_config(folder, 9, sink_port, 0.0))
    assert config.tracing is not None
    tracing = Tracing(config.tracing)
    route = config.routes[0]
    request = make_mocked_request("POST", "/mcp", headers=HEADERS)
    answer = web.Response()

    async def pipeline() -> web.StreamResponse:
        with calling_upstream("POST") as traced:  # outside serve: NO_SPAN, no headers
            headers.update(traced.headers)
        return answer

    headers: dict[str, str] = {}

    try:
        best = float("inf")
        for _ in range(5):
            started = time.process_time()
            for _ in range(iterations):
                await tracing.serve(request, route, pipeline())
            traced_s = time.process_time() - started
            started = time.process_time()
            for _ in range(iterations):
                await pipeline()
            best = min(best, (traced_s - (time.process_time() - started)) / iterations * 1e6)
        if "traceparent" not in headers:
            raise RuntimeError("the unsampled path passed no traceparent upstream: not what is measured")
        return round(best, 2)
    finally:
        await tracing.aclose()


def measure(*, iterations: int = 1000, rounds: int = 7, core: int | None = None) -> dict[str, Any]:
    """µs of this process's CPU per echo call through each gateway (fastest block), and the extras;
    ``core``: run this process on that core once the sink (on any other) has started."""
    stream: TextIO = _Discard()  # type: ignore[assignment]
    configure_logging(json=True, level="info", stream=stream)
    sink = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.otlp_sink", "--port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    affinity = os.sched_getaffinity(0)
    try:
        assert sink.stdout is not None
        sink_port = int(sink.stdout.readline().split()[1])
        if core is not None:
            os.sched_setaffinity(0, {core})
        with tempfile.TemporaryDirectory(prefix="gw-tracing-cost-") as tmp:
            result = asyncio.run(_measure(Path(tmp), sink_port, iterations, rounds))
            result["unsampled_path_us"] = asyncio.run(_unsampled_path_us(Path(tmp), sink_port))
            return result
    finally:
        os.sched_setaffinity(0, affinity)  # the caller's cores again (tests.bench.run: the load core)
        sink.terminate()
        sink.wait(10)


if __name__ == "__main__":
    print(json.dumps(measure(core=0 if (os.cpu_count() or 1) >= 2 else None), indent=1))
