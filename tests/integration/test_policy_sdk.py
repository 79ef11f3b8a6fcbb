"""Per-tool, per-prompt and per-resource rules seen through the official SDK client.

A read-scoped token sees and uses only what its rules allow; a write operation gets 403
insufficient_scope naming exactly the scopes it needs; a token with those scopes succeeds.
Lists are filtered whether the upstream answers with JSON or SSE, in both protocol eras.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import Gateway, GatewayFactory, LogSink, Upstream
from tests.integration.test_authentication import MCP_HEADERS
from tests.support.challenge import parse_bearer_challenge
from tests.support.issuer import TestIssuer
from tests.support.mcp_client import session_client

RESOURCE = "http://127.0.0.1:8080/mcp"
PRM = "http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp"
READ = "mcp:access demo:read"


def policy_config(issuer: TestIssuer, upstream_url: str, extra: str = "") -> str:
    return f"""
        public_url: http://127.0.0.1:8080
        issuers: [{{issuer: {issuer.issuer}, algorithms: [RS256], jwks: {{discover: true}}}}]
        routes:
          - path: /mcp
            upstream: {upstream_url}
            scopes: [mcp:access]
            tools:
              "echo": [demo:read]
              "add": [demo:read]
              "whoami": []
              "slow_*": [demo:write]
            prompts:
              "greet": [demo:write, demo:prompts]
            resources:
              "demo://greeting": [demo:read]
              "demo://counter": [demo:write]{extra}
        """


@pytest.fixture(params=["sse", "json"])
async def policy_gateway(
    request: pytest.FixtureRequest,
    issuer: TestIssuer,
    upstream: Upstream,
    json_upstream: Upstream,
    start_gateway_with: GatewayFactory,
) -> tuple[Gateway, Upstream]:
    """The gateway with rules, in front of an upstream answering SSE or JSON."""
    return await _gateway_with_rules(request, issuer, upstream, json_upstream, start_gateway_with)


@pytest.fixture(params=["sse", "json"])
async def usable_only_gateway(
    request: pytest.FixtureRequest,
    issuer: TestIssuer,
    upstream: Upstream,
    json_upstream: Upstream,
    start_gateway_with: GatewayFactory,
) -> tuple[Gateway, Upstream]:
    """The same rules with ``list_visibility: usable``: lists show only what the caller may use."""
    extra = "\n            list_visibility: usable"
    return await _gateway_with_rules(request, issuer, upstream, json_upstream, start_gateway_with, extra)


async def _gateway_with_rules(
    request: pytest.FixtureRequest,
    issuer: TestIssuer,
    upstream: Upstream,
    json_upstream: Upstream,
    start_gateway_with: GatewayFactory,
    extra: str = "",
) -> tuple[Gateway, Upstream]:
    chosen = upstream if request.param == "sse" else json_upstream
    return await start_gateway_with(policy_config(issuer, chosen.mcp_url, extra)), chosen


def bearer(issuer: TestIssuer, scope: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE, scope=scope)}"}


@pytest.mark.parametrize("era", ["2025", "2026"])
async def test_read_token_sees_only_what_it_may_use(
    era: str, issuer: TestIssuer, usable_only_gateway: tuple[Gateway, Upstream]
) -> None:
    """With list_visibility: usable, tools/list, prompts/list, resources/list show exactly the
    allowed items."""
    gateway, _ = usable_only_gateway
    async with session_client(gateway.route_url(), bearer(issuer, READ), era=era) as client:  # type: ignore[arg-type]
        tools = await client.list_tools()
        prompts = await client.list_prompts()
        resources = await client.list_resources()
    assert sorted(tool.name for tool in tools.tools) == ["add", "echo", "whoami"]
    assert prompts.prompts == []
    assert [str(resource.uri) for resource in resources.resources] == ["demo://greeting"]


@pytest.mark.parametrize("era", ["2025", "2026"])
async def test_lists_show_what_a_step_up_allows_by_default(
    era: str, issuer: TestIssuer, policy_gateway: tuple[Gateway, Upstream]
) -> None:
    """By default (list_visibility: step_up) a read token's lists also show the write tool, the
    prompt and the counter, which a step-up would allow, so that a host that calls only listed
    tools can reach the 403 that names their scopes; tools no rule names (sleep, notify) stay
    hidden, as no scope would allow them."""
    gateway, _ = policy_gateway
    async with session_client(gateway.route_url(), bearer(issuer, READ), era=era) as client:  # type: ignore[arg-type]
        tools = sorted(tool.name for tool in (await client.list_tools()).tools)
        prompts = [prompt.name for prompt in (await client.list_prompts()).prompts]
        resources = sorted(str(r.uri) for r in (await client.list_resources()).resources)
        with pytest.raises(MCPError) as refused:
            await client.call_tool("slow_stream", {"count": 1, "delay_ms": 0})
    assert tools == ["add", "echo", "slow_stream", "whoami"]
    assert prompts == ["greet"] and resources == ["demo://counter", "demo://greeting"]
    assert refused.value.error.code == -32001  # insufficient scope: a step-up, not a dead end


@pytest.mark.parametrize("era", ["2025", "2026"])
async def test_write_token_sees_more(
    era: str, issuer: TestIssuer, policy_gateway: tuple[Gateway, Upstream]
) -> None:
    """A token with the wider scopes sees the write tool, the prompt and both resources."""
    gateway, _ = policy_gateway
    scope = "mcp:access demo:read demo:write demo:prompts"
    async with session_client(gateway.route_url(), bearer(issuer, scope), era=era) as client:  # type: ignore[arg-type]
        tools = {tool.name for tool in (await client.list_tools()).tools}
        prompts = [prompt.name for prompt in (await client.list_prompts()).prompts]
        resources = sorted(str(r.uri) for r in (await client.list_resources()).resources)
    assert {"slow_stream", "echo"} <= tools and "sleep" not in tools and "notify" not in tools
    assert prompts == ["greet"]
    assert resources == ["demo://counter", "demo://greeting"]


# What each challenge names: the operation's scopes, then the caller's (READ) that the route uses.
STEP_UPS: list[tuple[str, dict[str, Any], str]] = [
    (
        "tools/call",
        {"name": "slow_stream", "arguments": {"count": 1, "delay_ms": 0}},
        "mcp:access demo:write demo:read",
    ),
    (
        "prompts/get",
        {"name": "greet", "arguments": {"name": "Ada"}},
        "mcp:access demo:write demo:prompts demo:read",
    ),
    ("resources/read", {"uri": "demo://counter"}, "mcp:access demo:write demo:read"),
]


@pytest.mark.parametrize(("method", "params", "needed"), STEP_UPS, ids=[m for m, _, _ in STEP_UPS])
async def test_step_up_names_the_exact_scopes_then_succeeds(
    method: str,
    params: dict[str, Any],
    needed: str,
    issuer: TestIssuer,
    policy_gateway: tuple[Gateway, Upstream],
) -> None:
    """403 insufficient_scope with every scope the operation needs and the caller's own that the
    route uses (so a client that takes the challenged scopes as its new set loses nothing); with
    exactly those, the operation works and so do the caller's earlier tools."""
    gateway, upstream = policy_gateway
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": params}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            gateway.route_url(), json=body, headers={**MCP_HEADERS, **bearer(issuer, READ)}
        ) as response:
            assert response.status == 403
            challenge = parse_bearer_challenge(response.headers["WWW-Authenticate"])
            error = await response.json()
    assert challenge == {"error": "insufficient_scope", "scope": needed, "resource_metadata": PRM}
    assert error == {"jsonrpc": "2.0", "id": 7, "error": {"code": -32001, "message": "Insufficient scope"}}
    assert await upstream.requests() == []

    # The SDK client sees the same refusal as an MCP error...
    async with session_client(gateway.route_url(), bearer(issuer, READ), era="2026") as client:
        with pytest.raises(MCPError) as refused:
            await _call(client, method, params)
        assert refused.value.error.code == -32001
    # ...and succeeds once its token carries exactly the scopes the challenge named, which still
    # cover what it could do before (echo needs demo:read).
    for era in ("2025", "2026"):
        async with session_client(gateway.route_url(), bearer(issuer, challenge["scope"]), era=era) as client:
            result = await _call(client, method, params)
            earlier = await client.call_tool("echo", {"text": "still here"})
        assert result is not None and not earlier.is_error


async def _call(client: Any, method: str, params: dict[str, Any]) -> Any:
    if method == "tools/call":
        return await client.call_tool(params["name"], params["arguments"])
    if method == "prompts/get":
        return await client.get_prompt(params["name"], params["arguments"])
    return await client.read_resource(params["uri"])


async def test_unnamed_tool_is_refused_without_a_step_up(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """A tool no rule names (default deny): plain 403, no insufficient_scope, nothing forwarded."""
    gateway = await start_gateway_with(policy_config(issuer, upstream.mcp_url))
    body = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": "sleep", "arguments": {"seconds": 0}},
    }
    everything = "mcp:access demo:read demo:write demo:prompts"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            gateway.route_url(), json=body, headers={**MCP_HEADERS, **bearer(issuer, everything)}
        ) as response:
            assert response.status == 403
            assert "WWW-Authenticate" not in response.headers
            assert (await response.json())["error"] == {
                "code": -32003,
                "message": "Forbidden by gateway policy",
            }
    assert await upstream.requests() == []


async def test_metadata_scopes_supported_derived_from_rules(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """scopes_supported lists the route scopes and every scope a rule can ask for."""
    gateway = await start_gateway_with(policy_config(issuer, upstream.mcp_url))
    async with (
        aiohttp.ClientSession() as http,
        http.get(gateway.url + "/.well-known/oauth-protected-resource/mcp") as response,
    ):
        document = await response.json()
    assert document["scopes_supported"] == ["mcp:access", "demo:read", "demo:write", "demo:prompts"]


async def test_audit_event_per_decision(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory, gateway_logs: LogSink
) -> None:
    """Each decision logs subject, client, route, method, target, outcome, rule and missing scopes."""
    gateway = await start_gateway_with(policy_config(issuer, upstream.mcp_url))
    before = len(gateway_logs.lines())
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "slow_stream", "arguments": {"secret": "s3"}},
    }
    token = issuer.mint(audience=RESOURCE, scope=READ, subject="alice", client_id="cli-9")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            gateway.route_url(), json=body, headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == 403
    events = [event for event in gateway_logs.events()[before:] if event.get("event") == "policy_decision"]
    assert len(events) == 1
    event = events[0]
    assert {
        key: event[key]
        for key in ("subject", "client_id", "route", "method", "target", "decision", "rule", "missing_scopes")
    } == {
        "subject": "alice",
        "client_id": "cli-9",
        "route": "/mcp",
        "method": "tools/call",
        "target": "slow_stream",
        "decision": "deny",
        "rule": "tools['slow_*']",
        "missing_scopes": ["demo:write"],
    }
    assert "arguments" not in event  # only with audit_arguments: true


async def test_401_challenge_names_the_2026_operation_scopes_but_decisions_use_the_body(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """No token, 2026-07-28 headers naming slow_stream: the 401 asks for its scopes (a hint). A
    legacy request gets the route scopes. Headers that lie are refused once a token is shown."""
    gateway = await start_gateway_with(policy_config(issuer, upstream.mcp_url))
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {}, "_meta": meta},
    }
    modern = {**MCP_HEADERS, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call"}
    async with aiohttp.ClientSession() as http:

        async def challenge(headers: dict[str, str]) -> dict[str, str]:
            async with http.post(gateway.route_url(), json=body, headers=headers) as response:
                assert response.status == 401
                return parse_bearer_challenge(response.headers["WWW-Authenticate"])

        assert (await challenge({**modern, "Mcp-Name": "slow_stream"}))["scope"] == "mcp:access demo:write"
        assert (await challenge({**modern, "Mcp-Name": "echo"}))["scope"] == "mcp:access demo:read"
        assert (await challenge({**modern, "Mcp-Name": "unruled"}))["scope"] == "mcp:access"
        assert (await challenge({**MCP_HEADERS, "Mcp-Method": "tools/call", "Mcp-Name": "slow_stream"}))[
            "scope"
        ] == "mcp:access"
        # With a token, a header that names another tool than the body is a 400, never a decision.
        headers = {**modern, "Mcp-Name": "slow_stream", **bearer(issuer, "mcp:access demo:write")}
        async with http.post(gateway.route_url(), json=body, headers=headers) as response:
            assert response.status == 400
            assert (await response.json())["error"]["code"] == -32020
    assert await upstream.requests() == []
