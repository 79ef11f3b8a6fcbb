"""Upstream failures through the real gateway: retry, circuit breaker, health check, bulkhead.

Each scenario runs an in-process gateway with an admin listener and reads its metrics there;
every count is the scenario's own, exactly. Upstreams: the SDK fixture server (directly, or
behind a byte relay that starts listening when the test says so: a port that refused and then
accepts), a port with nothing listening (refused), a listening socket whose accept queue is full
(black-holed: connects time out), and the canned upstream for a health endpoint that goes bad.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict

from gateway.config import GatewayConfig, load_config
from gateway.server import start_gateway
from gateway.web.admin import ADMIN
from gateway.web.live import LIVE
from tests.conftest import Gateway, GatewayFactory, LogSink, Upstream, single_route_config
from tests.integration.test_authentication import INITIALIZE, MCP_HEADERS
from tests.integration.test_lifecycle import eventually, modern_call
from tests.integration.test_metrics import Samples, free_port, scrape, value
from tests.support.canned_upstream import Canned, CannedUpstream, canned_upstream
from tests.support.issuer import TestIssuer

RESOURCE = "http://127.0.0.1:8080/mcp"
ROUTE = "/mcp"
JSON_TYPE = ("Content-Type", "application/json")
CALL_RESULT = b'{"jsonrpc":"2.0","id":1,"result":{"content":[]}}'
ECHO = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}


def config_for(issuer: TestIssuer, upstream_url: str, **route: Any) -> str:
    """One route at /mcp in front of ``upstream_url``, with an admin listener for /metrics."""
    text = single_route_config(issuer, upstream_url, **route)
    return text.replace("listen:", "admin: {host: 127.0.0.1, port: 0}\n        listen:", 1)


async def post(
    gateway: Gateway, issuer: TestIssuer, body: object = INITIALIZE, headers: dict[str, str] | None = None
) -> tuple[int, CIMultiDict[str], bytes]:
    """POST ``body`` through the gateway with a valid token: status, headers, body."""
    sent = {**MCP_HEADERS, "Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}", **(headers or {})}
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.route_url(), json=body, headers=sent) as response,
    ):
        return response.status, response.headers.copy(), await response.read()


async def metrics(gateway: Gateway) -> Samples:
    assert gateway.admin_url is not None
    _, _, samples = await scrape(gateway.admin_url)
    return samples


def counts(samples: Samples, **wanted: str) -> dict[str, float]:
    """The resilience families for the route (and ``wanted`` labels), by short name."""
    route = {"route": ROUTE}
    return {
        "retries": value(samples, "mcp_gateway_upstream_retries_total", **route),
        "state": value(samples, "mcp_gateway_upstream_circuit_state", **route),
        "opened": value(samples, "mcp_gateway_upstream_circuit_opened_total", **route),
        "circuit_open": value(
            samples, "mcp_gateway_upstream_rejected_total", **route, reason="upstream_circuit_open"
        ),
        "busy": value(samples, "mcp_gateway_upstream_rejected_total", **route, reason="upstream_busy"),
        **{
            reason: value(samples, "mcp_gateway_upstream_errors_total", **route, reason=reason)
            for reason in wanted.values()
        },
    }


async def readyz(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(url + "/readyz") as response:
        return response.status, await response.json()


def assert_json_rpc_503(status: int, headers: CIMultiDict[str], raw: bytes, retry_after_max: int) -> None:
    """503, a whole-seconds Retry-After within bounds, and a JSON-RPC error body."""
    assert status == 503, raw
    assert 1 <= int(headers["Retry-After"]) <= retry_after_max
    assert headers["Content-Type"].startswith("application/json")
    assert b'"error": {"code": -32000' in raw


@dataclass
class Relay:
    """A TCP relay on ``port`` to the SDK upstream, listening only once ``open`` is called."""

    port: int
    target: tuple[str, int]
    accepted: int = 0
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, upstream_writer]
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def aclose(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@contextlib.asynccontextmanager
async def relay_to(upstream: Upstream) -> AsyncIterator[Relay]:
    """A relay on a free port (refusing until opened) to ``upstream``."""
    parts = urlsplit(upstream.base_url)
    relay = Relay(free_port(), (parts.hostname or "127.0.0.1", parts.port or 80))
    try:
        yield relay
    finally:
        await relay.aclose()


@contextlib.asynccontextmanager
async def black_hole() -> AsyncIterator[int]:
    """A port whose connects time out: it listens, but its accept queue is full and never served."""
    listener = socket.socket()
    listener.setblocking(False)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    fillers: list[asyncio.StreamWriter] = []
    try:
        while True:  # fill the queue until a connect hangs: the kernel now drops the SYNs
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 0.3)
            except TimeoutError:
                break
            fillers.append(writer)
            assert len(fillers) < 10, "the accept queue never filled"
        yield port
    finally:
        for writer in fillers:
            writer.close()
        listener.close()


# --- 1. a refused connect is retried once ---------------------------------------------------------


async def test_a_connect_refused_once_is_retried_and_answered(
    issuer: TestIssuer,
    json_upstream: Upstream,
    start_gateway_with: GatewayFactory,
    gateway_logs: LogSink,
) -> None:
    """The upstream port refuses, then listens (before the retry): 200, one retry, no error."""
    async with relay_to(json_upstream) as relay:
        gateway = await start_gateway_with(config_for(issuer, f"http://127.0.0.1:{relay.port}/mcp"))
        mark = len(gateway_logs.getvalue())
        answer = asyncio.create_task(post(gateway, issuer))
        # Same loop as the gateway: this runs while it waits the retry delay after the refusal.
        await eventually(lambda: '"upstream_retry"' in gateway_logs.getvalue()[mark:], "a retry")
        await relay.open()
        status, _, raw = await answer
    assert status == 200, raw
    assert b'"serverInfo"' in raw
    assert relay.accepted == 1
    assert [r["body"] for r in await json_upstream.requests() if '"initialize"' in r["body"]]
    samples = await metrics(gateway)
    assert counts(samples, refused="upstream_refused") == {
        "retries": 1, "state": 0, "opened": 0, "circuit_open": 0, "busy": 0, "upstream_refused": 0,
    }  # fmt: skip


async def test_a_connect_refused_twice_is_a_502_after_one_retry(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """Nothing listens: the retry is refused too; 502 upstream_refused, counted once each."""
    gateway = await start_gateway_with(config_for(issuer, f"http://127.0.0.1:{free_port()}/mcp"))
    status, _, _ = await post(gateway, issuer)
    assert status == 502
    samples = await metrics(gateway)
    assert counts(samples, refused="upstream_refused") == {
        "retries": 1, "state": 0, "opened": 0, "circuit_open": 0, "busy": 0, "upstream_refused": 1,
    }  # fmt: skip


# --- 2. the circuit breaker -----------------------------------------------------------------------


async def test_a_black_holed_upstream_opens_the_circuit_and_fails_fast(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """Three connect timeouts (504, no retry) open the circuit: the next two get 503 at once,
    with Retry-After; /readyz on both ports is 503 (the only route is open) and lists it."""
    async with black_hole() as port:
        gateway = await start_gateway_with(
            config_for(
                issuer,
                f"http://127.0.0.1:{port}/mcp",
                connect_timeout_s=0.2,
                circuit_breaker={"failures": 3, "open_s": 30},
            )
        )
        timed_out = [await post(gateway, issuer) for _ in range(3)]
        assert [status for status, _, _ in timed_out] == [504, 504, 504]
        for status, headers, raw in [await post(gateway, issuer) for _ in range(2)]:
            assert_json_rpc_503(status, headers, raw, retry_after_max=30)
        samples = await metrics(gateway)
        assert gateway.admin_url is not None
        assert await readyz(gateway.admin_url) == (
            503,
            {
                "ready": False,
                "routes": {ROUTE: {"ready": False, "circuit": "open", "health": "unchecked"}},
            },
        )
        # The MCP port, which anyone may ask, says whether it is ready and nothing of its upstreams.
        assert await readyz(gateway.url) == (503, {"ready": False})
    assert counts(samples, timeout="upstream_connect_timeout") == {
        "retries": 0, "state": 2, "opened": 1, "circuit_open": 2, "busy": 0, "upstream_connect_timeout": 3,
    }  # fmt: skip


async def test_the_open_circuit_sends_nothing_then_one_trial_closes_it(
    issuer: TestIssuer, json_upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """Two refused requests open the circuit; while open, the now-listening upstream gets
    nothing (503); after open_s one trial goes through and its answer closes the circuit."""
    async with relay_to(json_upstream) as relay:
        gateway = await start_gateway_with(
            config_for(
                issuer,
                f"http://127.0.0.1:{relay.port}/mcp",
                circuit_breaker={"failures": 2, "open_s": 1.5},
            )
        )
        assert [(await post(gateway, issuer))[0] for _ in range(2)] == [502, 502]
        await relay.open()
        status, headers, raw = await post(gateway, issuer)
        assert_json_rpc_503(status, headers, raw, retry_after_max=2)
        assert relay.accepted == 0 and await json_upstream.requests() == []

        async def half_open() -> bool:
            assert gateway.admin_url is not None
            _, body = await readyz(gateway.admin_url)
            return body["routes"][ROUTE]["circuit"] == "half_open"  # type: ignore[no-any-return]

        await eventually(half_open, "the half-open circuit", within=5)
        status, _, raw = await post(gateway, issuer)
        assert status == 200, raw
        assert relay.accepted == 1 and len(await json_upstream.requests()) == 1
        assert gateway.admin_url is not None
        assert (await readyz(gateway.admin_url))[1]["routes"][ROUTE]["circuit"] == "closed"
        samples = await metrics(gateway)
    assert counts(samples, refused="upstream_refused") == {
        "retries": 2, "state": 0, "opened": 1, "circuit_open": 1, "busy": 0, "upstream_refused": 2,
    }  # fmt: skip


async def test_any_http_answer_keeps_the_circuit_closed(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """An upstream answering 500 every time is reachable: five 500s with failures 2, still closed."""
    async with canned_upstream(Canned(500, [JSON_TYPE], CALL_RESULT)) as upstream:
        gateway = await start_gateway_with(
            config_for(issuer, upstream.url, circuit_breaker={"failures": 2, "open_s": 30})
        )
        assert [(await post(gateway, issuer, ECHO))[0] for _ in range(5)] == [500] * 5
        assert len(upstream.requests) == 5
    samples = await metrics(gateway)
    assert counts(samples) == {"retries": 0, "state": 0, "opened": 0, "circuit_open": 0, "busy": 0}


# --- 3. the active health check -------------------------------------------------------------------


def health_requests(upstream: CannedUpstream, path: str = "/health") -> int:
    return sum(request.target == path for request in upstream.requests)


async def test_a_failing_health_check_opens_the_circuit_until_it_recovers(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """/health answering 503 twice: the route is unhealthy, /readyz 503 on both ports, MCP
    requests get 503 and the upstream none; /health answering again: ready, requests go."""
    async with canned_upstream(Canned(503)) as upstream:
        gateway = await start_gateway_with(
            config_for(
                issuer,
                upstream.url,
                health_check={"path": "/health", "interval_s": 0.05, "timeout_s": 1, "failures": 2},
            ),
            wait_ready=False,
        )
        unhealthy = {"ready": False, "circuit": "open", "health": "unhealthy"}
        assert gateway.admin_url is not None
        admin_url = gateway.admin_url
        await eventually(lambda: _route_is(admin_url, unhealthy), "an unhealthy route")
        assert await readyz(gateway.admin_url) == (503, {"ready": False, "routes": {ROUTE: unhealthy}})
        assert await readyz(gateway.url) == (503, {"ready": False})
        status, headers, raw = await post(gateway, issuer, ECHO)
        assert_json_rpc_503(status, headers, raw, retry_after_max=1)
        assert health_requests(upstream, ROUTE) == 0

        upstream.answer = Canned(200, [JSON_TYPE], CALL_RESULT)
        healthy = {"ready": True, "circuit": "closed", "health": "healthy"}
        await eventually(lambda: _route_is(admin_url, healthy), "a healthy route")
        assert await readyz(gateway.url) == (200, {"ready": True})
        assert (await post(gateway, issuer, ECHO))[0] == 200
        assert health_requests(upstream, ROUTE) == 1
        samples = await metrics(gateway)
    assert counts(samples) == {"retries": 0, "state": 0, "opened": 1, "circuit_open": 1, "busy": 0}
    checks = "mcp_gateway_upstream_health_checks_total"
    assert value(samples, checks, route=ROUTE, result="failed") >= 2
    assert value(samples, checks, route=ROUTE, result="ok") >= 1
    assert all(r.method == "GET" and not r.body for r in upstream.requests if r.target == "/health")
    assert not any(name.lower() == "authorization" for r in upstream.requests for name, _ in r.headers)


async def _route_is(url: str, wanted: dict[str, Any]) -> bool:
    status, body = await readyz(url)
    return body.get("routes", {}).get(ROUTE) == wanted and status == (200 if wanted["ready"] else 503)


async def test_health_checks_end_with_their_gateway_generation(issuer: TestIssuer, tmp_path: Path) -> None:
    """A reload stops the old generation's checks and starts the new one's; stopping ends all."""
    async with canned_upstream(Canned(200)) as upstream:

        def config(path: str) -> GatewayConfig:
            file = tmp_path / f"{path.strip('/')}.yaml"
            checked = config_for(issuer, upstream.url, health_check={"path": path, "interval_s": 0.05})
            file.write_text(textwrap.dedent(checked))
            return load_config(file)

        first, second = await asyncio.to_thread(config, "/one"), await asyncio.to_thread(config, "/two")
        runner, _ = await start_gateway(first, host="127.0.0.1", port=0)
        try:
            assert runner.app.get(ADMIN) is not None
            await eventually(lambda: health_requests(upstream, "/one") >= 2, "checks of /one")
            await runner.app[LIVE].reload(second)
            await eventually(lambda: health_requests(upstream, "/two") >= 2, "checks of /two")
            # Drained (no request in flight), the old generation is closed: its task with it.
            await eventually(lambda: _stays(upstream, "/one"), "the /one checks to stop")
        finally:
            await runner.cleanup()
        await eventually(lambda: _stays(upstream, "/two"), "the /two checks to stop")


async def _stays(upstream: CannedUpstream, path: str) -> bool:
    """No new check of ``path`` arrives within ten check intervals."""
    before = health_requests(upstream, path)
    await asyncio.sleep(0.5)
    return health_requests(upstream, path) == before


# --- 4. the bulkhead ------------------------------------------------------------------------------


async def test_the_bulkhead_refuses_beyond_its_limit_but_not_a_get_stream(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """max_concurrent_requests 1: while a slow call streams its answer, a second POST gets 503
    at once and the upstream never sees it; a GET goes through; after the call, POSTs go again."""
    gateway = await start_gateway_with(config_for(issuer, upstream.mcp_url, max_concurrent_requests=1))
    body, headers = modern_call("sleep", {"seconds": 1.5})
    slow = asyncio.create_task(post(gateway, issuer, body, headers))

    async def sleeping_upstream() -> bool:
        return any('"sleep"' in record["body"] for record in await upstream.requests())

    await eventually(sleeping_upstream, "the slow call upstream")
    echo, echo_headers = modern_call("echo", {"text": "second"})
    status, answer_headers, raw = await post(gateway, issuer, echo, echo_headers)
    assert_json_rpc_503(status, answer_headers, raw, retry_after_max=1)
    assert b"Upstream MCP server busy" in raw
    token = {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"}
    get_headers = {**token, "Accept": "text/event-stream", "MCP-Protocol-Version": "2026-07-28"}
    async with aiohttp.ClientSession() as http, http.get(gateway.route_url(), headers=get_headers) as got:
        assert got.status != 503  # whatever the upstream answers a GET: it was asked
    samples_during = await metrics(gateway)
    status, _, raw = await slow
    assert status == 200 and b"slept 1.5" in raw
    echo, echo_headers = modern_call("echo", {"text": "third"})
    assert (await post(gateway, issuer, echo, echo_headers))[0] == 200
    records = await upstream.requests()
    assert not any('"second"' in record["body"] for record in records)
    assert any(record["method"] == "GET" for record in records)
    samples = await metrics(gateway)
    in_use = "mcp_gateway_upstream_requests_in_use"
    assert value(samples_during, in_use, route=ROUTE) == 1
    assert value(samples, in_use, route=ROUTE) == 0
    assert counts(samples) == {"retries": 0, "state": 0, "opened": 0, "circuit_open": 0, "busy": 1}
