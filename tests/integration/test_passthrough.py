"""The SDK client works through the gateway in both eras, and the client's token goes nowhere."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import GatewayFactory, LogSink, Upstream, single_route_config
from tests.support.issuer import TestIssuer
from tests.support.mcp_client import ProgressLog, session_client

RESOURCE = "http://127.0.0.1:8080/mcp"


def text_of(result: object) -> str:
    return result.content[0].text  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("era", ["2025", "2026"])
async def test_sdk_client_lists_and_calls_tools_through_gateway(
    era: str, issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """With a valid token the official client lists tools and calls one, in each protocol era."""
    gateway = await start_gateway_with(single_route_config(issuer, upstream.mcp_url))
    token = issuer.mint(audience=RESOURCE)
    async with session_client(gateway.route_url(), {"Authorization": f"Bearer {token}"}, era=era) as client:  # type: ignore[arg-type]
        tools = await client.list_tools()
        assert {"echo", "add", "slow_stream"} <= {tool.name for tool in tools.tools}
        result = await client.call_tool("echo", {"text": "hello through the gateway"})
        assert text_of(result) == "hello through the gateway"

    requests = await upstream.requests()
    assert requests, "the upstream received nothing"
    versions = {
        value
        for record in requests
        for name, value in record["headers"]
        if name.lower() == "mcp-protocol-version"
    }
    if era == "2025":
        assert any(r["method"] == "DELETE" for r in requests), "session end (DELETE) did not pass through"
        assert any(
            name.lower() == "mcp-session-id" for record in requests for name, _ in record["headers"]
        ), "Mcp-Session-Id never reached the upstream"
        assert "2026-07-28" not in versions
    else:
        assert versions == {"2026-07-28"}
        assert all(r["method"] == "POST" for r in requests)
        methods = {value for r in requests for name, value in r["headers"] if name.lower() == "mcp-method"}
        assert "tools/call" in methods


@pytest.mark.parametrize("era", ["2025", "2026"])
async def test_progress_notifications_stream_in_order_before_the_tool_finishes(
    era: str, issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """200 progress notifications arrive in order, the first one long before the result."""
    gateway = await start_gateway_with(single_route_config(issuer, upstream.mcp_url))
    token = issuer.mint(audience=RESOURCE)
    progress = ProgressLog()
    async with session_client(gateway.route_url(), {"Authorization": f"Bearer {token}"}, era=era) as client:  # type: ignore[arg-type]
        started = time.monotonic()
        result = await client.call_tool(
            "slow_stream", {"count": 200, "delay_ms": 10}, progress_callback=progress
        )
        finished = time.monotonic()
    assert text_of(result) == "done 200"
    assert progress.values == [float(n) for n in range(1, 201)]
    # The tool runs for >= 2 s. Buffering anywhere would deliver every event at the end.
    first_after = progress.arrival_times[0] - started
    assert first_after < (finished - started) / 2, (first_after, finished - started)


async def test_client_token_never_reaches_upstream_or_logs(
    issuer: TestIssuer,
    upstream: Upstream,
    start_gateway_with: GatewayFactory,
    gateway_logs: LogSink,
) -> None:
    """A canary token is absent from everything the upstream recorded and from every log line."""
    gateway = await start_gateway_with(single_route_config(issuer, upstream.mcp_url))
    canary = issuer.mint(audience=RESOURCE, claims={"canary": "CANARY-7f3a"})
    signature = canary.rsplit(".", 1)[1]
    headers = {"Authorization": f"Bearer {canary}", "Cookie": f"session={canary}"}
    for era in ("2025", "2026"):
        async with session_client(gateway.route_url(), headers, era=era) as client:
            await client.call_tool("echo", {"text": "x"})
            await asyncio.sleep(0.05)

    records = await upstream.records()
    assert any(r.get("method") == "DELETE" for r in records)
    dumped = repr(records)
    assert canary not in dumped and signature not in dumped
    for record in records:
        names = {name.lower() for name, _ in record.get("headers", [])}
        assert not names & {"authorization", "cookie", "proxy-authorization"}, names
    logs = gateway_logs.getvalue()
    assert "request" in logs  # the gateway did log these requests
    assert canary not in logs and signature not in logs
