"""Rate limits shared through a real ``redis-server``: two gateway processes, one budget.

The server is started by the test (``tests.support.redis_server``); the gateways are real
``mcp-auth-gateway serve`` processes in front of the SDK upstream. With the server stopped, a
``fail: closed`` limit refuses (503, nothing forwarded) and a ``fail: open`` one lets calls
through; with it back on the same port, the limits work again without a restart.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import aiohttp

from tests.conftest import Upstream
from tests.integration.test_authentication import MCP_HEADERS
from tests.integration.test_lifecycle import eventually
from tests.integration.test_rate_limits import MODERN_META
from tests.support.issuer import TestIssuer
from tests.support.processes import GatewayProcess, record_json, start_gateway_process
from tests.support.redis_server import RedisServer, redis_binary, redis_server  # noqa: F401 -- fixtures

RESOURCE = "http://127.0.0.1:8080/mcp"


def redis_config(issuer: TestIssuer, upstream_url: str, redis_url: str) -> str:
    """echo: 5 calls per subject across the fleet (closed when Redis is down); add: 100, open."""
    return textwrap.dedent(
        f"""
        listen: {{host: 127.0.0.1, port: 0}}
        public_url: http://127.0.0.1:8080
        issuers: [{{issuer: {issuer.issuer}, algorithms: [RS256], jwks: {{discover: true}}}}]
        rate_limits:
          backend: {{redis: {{url: {redis_url}, timeout_s: 0.5, retry_s: 0.2}}}}
          limits:
            echoes: {{rate: 1/hour, burst: 5, key: [subject, tool]}}
            adds: {{rate: 1/hour, burst: 100, key: [subject], fail: open}}
        routes:
          - path: /mcp
            upstream: {upstream_url}
            tools:
              echo: {{scopes: [], limits: [echoes]}}
              add: {{scopes: [], limits: [adds]}}
        """
    )


async def call(http: aiohttp.ClientSession, gateway: GatewayProcess, token: str, name: str) -> int:
    arguments = {"text": "hi"} if name == "echo" else {"a": 1, "b": 2}
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments, "_meta": MODERN_META},
    }
    headers = {
        **MCP_HEADERS,
        "Authorization": f"Bearer {token}",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": name,
    }
    async with http.post(gateway.url + "/mcp", json=body, headers=headers) as response:
        await response.read()
        return response.status


async def echo_calls(upstream: Upstream) -> int:
    return sum(
        1
        for record in await upstream.requests()
        if record.get("body") and record_json(record).get("params", {}).get("name") == "echo"
    )


async def test_two_gateways_share_one_budget_and_survive_a_redis_outage(
    issuer: TestIssuer,
    upstream: Upstream,
    redis_server: RedisServer,  # noqa: F811 -- the imported fixture
    tmp_path: Path,
) -> None:
    """Ten echo calls spread over two gateway processes: exactly five reach the upstream, five are
    429; Bob has his own five. Redis stopped: echo (fail closed) is 503 and forwarded nowhere,
    add (fail open) goes through. Redis back on its port: both gateways decide again (a fresh
    server has fresh counters: echo allowed), without a restart."""
    config = tmp_path / "gateway.yaml"
    await asyncio.to_thread(config.write_text, redis_config(issuer, upstream.mcp_url, redis_server.url))
    alice = issuer.mint(audience=RESOURCE, scope="mcp:access", subject="alice", lifetime_s=600)
    bob = issuer.mint(audience=RESOURCE, scope="mcp:access", subject="bob", lifetime_s=600)
    async with (
        start_gateway_process(config, tmp_path / "one.log") as one,
        start_gateway_process(config, tmp_path / "two.log") as two,
        aiohttp.ClientSession() as http,
    ):
        statuses = [await call(http, (one, two)[n % 2], alice, "echo") for n in range(10)]
        assert sorted(statuses) == [200] * 5 + [429] * 5, statuses
        assert await echo_calls(upstream) == 5
        assert [await call(http, two, bob, "echo") for _ in range(6)] == [200] * 5 + [429]

        await upstream.clear()
        await redis_server.stop()
        assert [await call(http, gateway, bob, "echo") for gateway in (one, two)] == [503, 503]
        assert await echo_calls(upstream) == 0
        assert [await call(http, gateway, bob, "add") for gateway in (one, two)] == [200, 200]

        await redis_server.start()

        async def both_recovered() -> bool:
            return [await call(http, gateway, alice, "echo") for gateway in (one, two)] == [200, 200]

        await eventually(both_recovered, "echo allowed again through both gateways", within=10)
        events = [event["event"] for event in await one.events()]
        assert events.count("rate_limit_store_unavailable") == 1
        assert events.count("rate_limit_store_recovered") == 1
