"""Rule conditions and observe mode through the real gateway, in front of the SDK upstream.

A condition is CEL over the caller's claims and identity, the tool and its arguments. These tests
drive the official SDK client (and raw JSON-RPC where the exact answer matters) and check what
the upstream received: a call a condition refuses never reaches it.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp.shared.exceptions import MCPError

from gateway import cli
from tests.conftest import Gateway, GatewayFactory, LogSink, Upstream
from tests.integration.test_authentication import MCP_HEADERS
from tests.support.issuer import TestIssuer
from tests.support.mcp_client import session_client
from tests.support.processes import record_json

RESOURCE = "http://127.0.0.1:8080/mcp"
SCOPES = "mcp:access demo:read"


def conditions_config(
    issuer: TestIssuer, upstream_url: str, route_extra: str = "", tools: str = "", top: str = ""
) -> str:
    """echo only for text ending in our domain; add only on small numbers and for the caller's
    team; whoami never for an agent (a token with `act`); list_visibility usable so a false
    claim condition hides the tool."""
    tools = (
        tools
        or """
              echo:
                scopes: [demo:read]
                condition: 'arguments.text.endsWith("@example.com")'
              add:
                scopes: [demo:read]
                condition: 'arguments.a < 100 && "eng" in claims.groups'
              whoami:
                condition: '!has(principal.actor)'
              "slow_*": [demo:read]"""
    )
    return f"""
        public_url: http://127.0.0.1:8080
        issuers: [{{issuer: {issuer.issuer}, algorithms: [RS256], jwks: {{discover: true}}}}]{top}
        routes:
          - path: /mcp
            upstream: {upstream_url}
            scopes: [mcp:access]
            audit_arguments: true{route_extra}
            tools:{tools}
        """


def bearer(issuer: TestIssuer, scope: str = SCOPES, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE, scope=scope, claims=claims)}"}


OMITTED = object()  # a tools/call without params.arguments


async def raw_call(
    gateway: Gateway, headers: dict[str, str], name: str, arguments: Any
) -> tuple[int, Any, bool]:
    """One tools/call POST; the status, the JSON body, and whether it carried a challenge."""
    params: dict[str, Any] = {"name": name}
    if arguments is not OMITTED:
        params["arguments"] = arguments
    body = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": params}
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.route_url(), json=body, headers={**MCP_HEADERS, **headers}) as response,
    ):
        answer = await response.json() if response.content_type == "application/json" else None
        return response.status, answer, "WWW-Authenticate" in response.headers


async def called_tools(upstream: Upstream) -> list[tuple[str, Any]]:
    """Every tools/call the upstream received: (name, arguments)."""
    calls = []
    for record in await upstream.requests():
        body = record_json(record) if record.get("body") else {}
        if isinstance(body, dict) and body.get("method") == "tools/call":
            calls.append((body["params"]["name"], body["params"].get("arguments")))
    return calls


FORBIDDEN = {"code": -32003, "message": "Forbidden by gateway policy"}


@pytest.fixture
async def gateway(issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory) -> Gateway:
    return await start_gateway_with(conditions_config(issuer, upstream.mcp_url))


async def test_arguments_decide_allow_and_deny(
    issuer: TestIssuer, upstream: Upstream, gateway: Gateway
) -> None:
    """echo to our domain is forwarded; to another domain, or with the text missing, it is a plain
    403 -32003 without a scope challenge, and the upstream receives nothing of it."""
    async with session_client(gateway.route_url(), bearer(issuer)) as client:
        allowed = await client.call_tool("echo", {"text": "bob@example.com"})
        with pytest.raises(MCPError) as refused:
            await client.call_tool("echo", {"text": "bob@evil.example"})
    assert allowed.content[0].text == "bob@example.com"  # type: ignore[union-attr]
    assert refused.value.error.code == -32003
    await upstream.clear()
    sent: tuple[Any, ...] = (
        {"text": "bob@evil.example"},
        {},
        OMITTED,
        None,
        ["bob@example.com"],
        {"text": 5},
        {"text": "x@example.com.x"},
    )
    for arguments in sent:
        status, answer, challenged = await raw_call(gateway, bearer(issuer), "echo", arguments)
        assert (status, answer["error"], challenged) == (403, FORBIDDEN, False), arguments
    assert await called_tools(upstream) == []


async def test_claims_decide(issuer: TestIssuer, upstream: Upstream, gateway: Gateway) -> None:
    """add needs the caller in the eng group (a claim) and a small first argument; a token
    without the claim, or in another group, is refused and nothing is forwarded."""
    async with session_client(gateway.route_url(), bearer(issuer, groups=["eng", "ops"])) as client:
        result = await client.call_tool("add", {"a": 2, "b": 3})
    assert result.structured_content == {"result": 5}
    await upstream.clear()
    for claims in ({"groups": ["sales"]}, {}, {"groups": "eng"}):
        status, answer, _ = await raw_call(gateway, bearer(issuer, **claims), "add", {"a": 2, "b": 3})
        assert (status, answer["error"]) == (403, FORBIDDEN), claims
    status, answer, _ = await raw_call(gateway, bearer(issuer, groups=["eng"]), "add", {"a": 500, "b": 3})
    assert (status, answer["error"]) == (403, FORBIDDEN)
    assert await called_tools(upstream) == []


async def test_actor_decides(issuer: TestIssuer, upstream: Upstream, gateway: Gateway) -> None:
    """whoami is refused to an agent acting for a user (RFC 8693 `act`) and allowed to the user."""
    async with session_client(gateway.route_url(), bearer(issuer)) as client:
        assert not (await client.call_tool("whoami", {})).is_error
    await upstream.clear()
    agent = bearer(issuer, act={"sub": "agent-7", "iss": issuer.issuer})
    status, answer, challenged = await raw_call(gateway, agent, "whoami", {})
    assert (status, answer["error"], challenged) == (403, FORBIDDEN, False)
    assert await called_tools(upstream) == []


async def test_missing_scopes_are_challenged_before_the_condition(
    issuer: TestIssuer, upstream: Upstream, gateway: Gateway
) -> None:
    """A caller without echo's scope gets the step-up challenge (a scope can help it), whatever
    its arguments; the upstream still receives nothing."""
    status, answer, challenged = await raw_call(
        gateway, bearer(issuer, "mcp:access"), "echo", {"text": "x@evil"}
    )
    assert (status, answer["error"]["code"], challenged) == (403, -32001, True)
    assert await called_tools(upstream) == []


async def test_a_list_shows_what_some_call_could_use(issuer: TestIssuer, gateway: Gateway) -> None:
    """tools/list shows echo and add (their conditions read arguments: decided per call) and
    hides whoami from an agent, whose condition is false whatever it sends."""
    async with session_client(gateway.route_url(), bearer(issuer)) as client:
        user_tools = sorted(tool.name for tool in (await client.list_tools()).tools)
    agent = bearer(issuer, act={"sub": "agent-7"})
    async with session_client(gateway.route_url(), agent) as client:
        agent_tools = sorted(tool.name for tool in (await client.list_tools()).tools)
    assert user_tools == ["add", "echo", "slow_stream", "whoami"]
    assert agent_tools == ["add", "echo", "slow_stream"]


async def test_denials_are_audited_with_the_condition_and_its_reason(
    issuer: TestIssuer, gateway: Gateway, gateway_logs: LogSink
) -> None:
    """The audit event names the rule, the condition's result and why: a false condition, and an
    absent argument (fail closed)."""
    before = len(gateway_logs.lines())
    await raw_call(gateway, bearer(issuer), "echo", {"text": "a@evil"})
    await raw_call(gateway, bearer(issuer), "echo", {})
    events = [e for e in gateway_logs.events()[before:] if e.get("event") == "policy_decision"]
    assert [(e["decision"], e["conditions"]) for e in events] == [
        ("deny", [{"rule": "tools['echo']", "result": "false", "reason": ""}]),
        ("deny", [{"rule": "tools['echo']", "result": "error", "reason": "arguments.text is absent"}]),
    ]
    assert events[0]["arguments"] == {"text": "a@evil"} and events[0]["scopes"] == ["demo:read", "mcp:access"]


# echo is enforced as demo:read; its candidate replacement, observed, needs demo:write and our domain.
OBSERVED_TOOLS = """
              echo:
                scopes: [demo:read]
                observe:
                  scopes: [demo:write]
                  condition: 'arguments.text.endsWith("@example.com")'
              "*": [demo:read]"""


async def test_an_observed_rule_forwards_and_logs_would_deny(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory, gateway_logs: LogSink
) -> None:
    """An observed rule decides and logs: the call it would refuse (wrong domain, missing scope)
    is forwarded as the enforced rule after it says, with one `would_deny` event naming the
    observed rule, its missing scope and its condition; a call it allows logs nothing more."""
    admin = "\n        admin: {host: 127.0.0.1, port: 0}"
    gateway = await start_gateway_with(
        conditions_config(issuer, upstream.mcp_url, tools=OBSERVED_TOOLS, top=admin)
    )
    before = len(gateway_logs.lines())
    async with session_client(gateway.route_url(), bearer(issuer)) as client:
        refused_by_observed = await client.call_tool("echo", {"text": "bob@evil.example"})
    async with session_client(gateway.route_url(), bearer(issuer, SCOPES + " demo:write")) as client:
        allowed_by_both = await client.call_tool("echo", {"text": "bob@example.com"})
    assert refused_by_observed.content[0].text == "bob@evil.example"  # type: ignore[union-attr]
    assert allowed_by_both.content[0].text == "bob@example.com"  # type: ignore[union-attr]
    assert [arguments for name, arguments in await called_tools(upstream)] == [
        {"text": "bob@evil.example"},
        {"text": "bob@example.com"},
    ]
    events = gateway_logs.events()[before:]
    would_deny = [event for event in events if event.get("event") == "would_deny"]
    assert len(would_deny) == 1
    (event,) = would_deny
    assert (event["rule"], event["missing_scopes"], event["target"]) == (
        "tools['echo']",
        ["demo:write"],
        "echo",
    )
    assert event["conditions"] == [{"rule": "tools['echo']", "result": "false", "reason": ""}]
    decisions = [e for e in events if e.get("event") == "policy_decision" and e.get("target") == "echo"]
    assert [(e["decision"], e["rule"], e["observed"]["decision"]) for e in decisions] == [
        ("allow", "tools['echo']", "deny"),
        ("allow", "tools['echo']", "allow"),
    ]
    assert gateway.admin_url is not None
    async with aiohttp.ClientSession() as http, http.get(gateway.admin_url + "/metrics") as response:
        metrics = await response.text()
    assert (
        'mcp_gateway_policy_observed_total{outcome="would_deny",route="/mcp",rule="tools[\'echo\']"} 1.0'
        in metrics
    )


async def test_an_observed_route_forwards_everything_a_token_may_reach(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory, gateway_logs: LogSink
) -> None:
    """`mode: observe` on the route: a token without the route's scopes and a call whose condition
    is false are both forwarded, each logged as would_deny; a request without a token is still 401."""
    config = conditions_config(issuer, upstream.mcp_url, route_extra="\n            mode: observe")
    gateway = await start_gateway_with(config)
    before = len(gateway_logs.lines())
    async with session_client(gateway.route_url(), bearer(issuer, "unrelated")) as client:
        result = await client.call_tool("echo", {"text": "bob@evil.example"})
    assert result.content[0].text == "bob@evil.example"  # type: ignore[union-attr]
    assert ("echo", {"text": "bob@evil.example"}) in await called_tools(upstream)
    would_deny = [e for e in gateway_logs.events()[before:] if e.get("event") == "would_deny"]
    echo = [e for e in would_deny if e.get("target") == "echo"]
    assert len(echo) == 1 and echo[0]["missing_scopes"] == ["mcp:access", "demo:read"]
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.route_url(), json={}, headers=MCP_HEADERS) as response:
            assert response.status == 401


NEIGHBOUR_RULES = """
              echo:
                scopes: [demo:read]
                condition: 'arguments.text.endsWith("@example.com")'
              "*": [demo:read]
            prompts:
              greet:
                condition: 'arguments.name != "mallory" && method == "prompts/get"'
            resources:
              "demo://*":
                condition: 'resource == "demo://greeting" || "ops" in claims.groups'
            methods:
              "completion/complete": []"""


@pytest.fixture(params=["sse", "json"])
async def neighbour_gateway(
    request: pytest.FixtureRequest,
    issuer: TestIssuer,
    upstream: Upstream,
    json_upstream: Upstream,
    start_gateway_with: GatewayFactory,
) -> tuple[Gateway, Upstream]:
    """Conditions in every section, in front of an upstream answering SSE or JSON."""
    chosen = upstream if request.param == "sse" else json_upstream
    return await start_gateway_with(conditions_config(issuer, chosen.mcp_url, tools=NEIGHBOUR_RULES)), chosen


@pytest.mark.parametrize("era", ["2025", "2026"])
async def test_prompts_and_resources_are_decided_by_their_conditions_in_both_eras(
    era: str, issuer: TestIssuer, neighbour_gateway: tuple[Gateway, Upstream]
) -> None:
    """prompts/get by its arguments, resources/read by the URI and a claim, a tools/call by its
    arguments: in the 2025 and the 2026-07-28 protocol, over SSE and JSON upstreams."""
    gateway, upstream = neighbour_gateway
    async with session_client(gateway.route_url(), bearer(issuer), era=era) as client:  # type: ignore[arg-type]
        greeting = await client.get_prompt("greet", {"name": "alice"})
        readable = await client.read_resource("demo://greeting")
        await upstream.clear()
        refusals = []
        for attempt in (
            client.get_prompt("greet", {"name": "mallory"}),
            client.read_resource("demo://counter"),
            client.call_tool("echo", {"text": "x@evil.example"}),
        ):
            with pytest.raises(MCPError) as refused:
                await attempt
            refusals.append(refused.value.error.code)
    assert "alice" in str(greeting.messages[0].content) and readable.contents
    assert refusals == [-32003, -32003, -32003]
    assert [record for record in await upstream.requests() if record.get("body")] == []
    async with session_client(gateway.route_url(), bearer(issuer, groups=["ops"]), era=era) as client:  # type: ignore[arg-type]
        assert (await client.read_resource("demo://counter")).contents


async def test_a_completion_of_a_prompt_is_judged_like_a_list_item(
    issuer: TestIssuer, neighbour_gateway: tuple[Gateway, Upstream]
) -> None:
    """completion/complete on greet sends no prompt arguments to judge: its condition reads them,
    so it is decided at prompts/get, and the completion reaches the upstream (as the list shows
    greet), while prompts/get with the refused name does not."""
    gateway, upstream = neighbour_gateway
    async with session_client(gateway.route_url(), bearer(issuer)) as client:
        prompts = [prompt.name for prompt in (await client.list_prompts()).prompts]
    await upstream.clear()
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    calls: dict[str, dict[str, Any]] = {
        "completion/complete": {
            "ref": {"type": "ref/prompt", "name": "greet"},
            "argument": {"name": "name", "value": "m"},
        },
        "prompts/get": {"name": "greet", "arguments": {"name": "mallory"}},
    }
    statuses = []
    async with aiohttp.ClientSession() as http:
        for method, params in calls.items():
            body = {"jsonrpc": "2.0", "id": 4, "method": method, "params": {**params, "_meta": meta}}
            headers = {
                **MCP_HEADERS,
                **bearer(issuer),
                "MCP-Protocol-Version": "2026-07-28",
                "Mcp-Method": method,
            }
            if method == "prompts/get":
                headers["Mcp-Name"] = "greet"
            async with http.post(gateway.route_url(), json=body, headers=headers) as response:
                statuses.append(response.status)
    assert prompts == ["greet"]
    assert statuses[1] == 403 and statuses[0] != 403  # what the upstream answers the completion is its own
    methods = [record_json(r).get("method") for r in await upstream.requests() if r.get("body")]
    assert methods == ["completion/complete"]


async def test_one_refused_call_refuses_the_whole_batch(
    issuer: TestIssuer, upstream: Upstream, gateway: Gateway
) -> None:
    """A 2025-03-26 batch whose second call's condition is false: 403, and the upstream receives
    neither call."""
    batch = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "a@example.com"}},
        },
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "a@evil"}},
        },
    ]
    headers = {**MCP_HEADERS, "MCP-Protocol-Version": "2025-03-26", **bearer(issuer)}
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.route_url(), json=batch, headers=headers) as response,
    ):
        assert response.status == 403
    assert await called_tools(upstream) == []


async def test_simulate_replays_a_real_log_against_a_candidate(
    issuer: TestIssuer,
    upstream: Upstream,
    start_gateway_with: GatewayFactory,
    gateway_logs: LogSink,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Calls through the gateway are recorded; `simulate` with a candidate that moves echo to
    another domain and opens whoami to agents prints exactly those changes (the two example.com
    calls now denied, the example.org one and the agent's whoami now allowed), exit status 1;
    the config that made the log changes nothing, exit 0."""
    config = conditions_config(issuer, upstream.mcp_url)
    gateway = await start_gateway_with(config)
    before = len(gateway_logs.lines())
    agent = bearer(issuer, act={"sub": "agent-7"})
    for headers, name, arguments in (
        (bearer(issuer), "echo", {"text": "a@example.com"}),
        (bearer(issuer), "echo", {"text": "b@example.org"}),
        (bearer(issuer), "echo", {"text": "c@example.com"}),
        (agent, "whoami", {}),
        (bearer(issuer), "whoami", {}),
    ):
        await raw_call(gateway, headers, name, arguments)
    lines = gateway_logs.lines()[before:]
    candidate_text = (
        textwrap.dedent(config)
        .replace('endsWith("@example.com")', 'endsWith("@example.org")')
        .replace("'!has(principal.actor)'", "'true'")
    )
    # The command does blocking file I/O: off the loop the gateway runs on.
    changed, changed_out = await asyncio.to_thread(simulate, tmp_path, lines, candidate_text, capsys)
    same, same_out = await asyncio.to_thread(simulate, tmp_path, lines, textwrap.dedent(config), capsys)
    assert changed == 1
    assert changed_out == [
        "5 recorded decisions against the candidate's enforced rules: 1 unchanged, 4 changed, 0 undecidable",
        "allow -> deny: 2",
        "  tools['echo']: 2",
        "    line 1: tools/call echo by user-1: tools['echo'] condition false (was tools['echo'])",
        "    line 6: tools/call echo by user-1: tools['echo'] condition false (was tools['echo'])",
        "deny -> allow: 2",
        "  tools['echo']: 1",
        "    line 3: tools/call echo by user-1: allowed (was tools['echo']; tools['echo'] condition false)",
        "  tools['whoami']: 1",
        "    line 8: tools/call whoami by user-1: allowed "
        "(was tools['whoami']; tools['whoami'] condition false)",
        "skipped: 0 lines not JSON, 7 other events",
    ]
    assert same == 0
    assert same_out[0].endswith("5 unchanged, 0 changed, 0 undecidable")


def simulate(
    folder: Path, log_lines: list[str], candidate: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, list[str]]:
    """Run `mcp-auth-gateway simulate` on the log lines against a candidate config's text."""
    log, config = folder / "audit.jsonl", folder / "candidate.yaml"
    log.write_text("\n".join(log_lines) + "\n")
    config.write_text(candidate)
    status = cli.main(["simulate", "--config", str(config), "--decisions", str(log)])
    return status, capsys.readouterr().out.splitlines()
