"""Tracing (issue 19) through the real gateway: the spans a collector receives, and the trace
context the SDK upstream receives.

A real OTLP/HTTP receiver (tests/support/otlp_receiver.py) is the collector; the span processor
exports every 20 ms (``OTEL_BSP_SCHEDULE_DELAY``, the SDK's own setting), so spans arrive while
the test waits. Calls are 2026-07-28 ``tools/call`` POSTs (stateless) unless a test needs a
session; the client sends its own ``traceparent``, as an instrumented MCP client does.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import GatewayFactory, Upstream, single_route_config
from tests.integration.test_authentication import INITIALIZE, MCP_HEADERS
from tests.integration.test_exchange_introspection import (
    ECHO,
    exchange_config,
    introspected,
    introspection_config,
)
from tests.integration.test_rate_limits import MODERN_META, RESOURCE, call
from tests.integration.test_session_binding import initialize
from tests.support.fake_as import FakeAuthorizationServer, serving_fake_as
from tests.support.issuer import TestIssuer
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan, serving_otlp
from tests.support.processes import record_json

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
SAMPLED_PARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
SECRET_ARGUMENT = "argument-canary-7f3d1c"
TRANSPORT = {"network.transport": "tcp", "network.protocol.name": "http", "network.protocol.version": "1.1"}


@pytest.fixture
async def receiver(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[OtlpReceiver]:
    """The collector; the gateway's span processor exports every 20 ms."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
    monkeypatch.setenv("GW_OTLP_KEY", "collector-key-123")
    async with serving_otlp() as otlp:
        yield otlp


@pytest.fixture
async def fake_as(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeAuthorizationServer]:
    """The scriptable authorization server, its client secret in the environment as configured."""
    async with serving_fake_as() as server:
        monkeypatch.setenv("AS_CLIENT_SECRET", server.client_secret)
        yield server


def tracing_section(receiver: OtlpReceiver, ratio: float = 1.0, compression: str = "gzip") -> str:
    """``tracing:`` to the receiver, with an API key header from the environment."""
    return f"""
        tracing:
          otlp:
            endpoint: "{receiver.endpoint}/"
            headers: {{x-api-key: {{env: GW_OTLP_KEY}}}}
            compression: {compression}
          sample_ratio: {ratio}
          service_name: gateway-under-test
        """


def traced_config(
    issuer: TestIssuer, upstream: Upstream, receiver: OtlpReceiver, ratio: float = 1.0, **route: Any
) -> str:
    """One route in front of the SDK upstream, traced to the receiver."""
    return single_route_config(issuer, upstream.mcp_url, **route) + tracing_section(receiver, ratio)


def bearer(issuer: TestIssuer, scope: str = "mcp:access") -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE, scope=scope, subject='alice')}"}


async def post(url: str, token: str, body: object, traceparent: str) -> tuple[int, Any, Any]:
    """A 2025-11-25 POST with a bearer token and the client's traceparent."""
    headers = {
        **MCP_HEADERS,
        "Authorization": f"Bearer {token}",
        "MCP-Protocol-Version": "2025-11-25",
        "traceparent": traceparent,
    }
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=headers) as response:
        return response.status, response.headers.copy(), await response.read()


def upstream_header(record: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in record["headers"] if key.lower() == name]


async def tool_calls(upstream: Upstream) -> list[dict[str, Any]]:
    return [
        r for r in await upstream.requests() if r.get("body") and record_json(r).get("method") == "tools/call"
    ]


def one(spans: list[ReceivedSpan], name: str, kind: str) -> ReceivedSpan:
    found = [span for span in spans if span.name == name and span.kind == kind]
    assert len(found) == 1, [(span.name, span.kind) for span in spans]
    return found[0]


async def trace_of(receiver: OtlpReceiver, trace_id: str, server_name: str) -> list[ReceivedSpan]:
    """The trace's spans, once its SERVER span (the last to end) has arrived."""
    await receiver.wait_for(
        lambda r: any(s.kind == "SERVER" and s.name == server_name for s in r.trace(trace_id))
    )
    return receiver.trace(trace_id)


async def test_a_tool_call_is_one_trace_from_the_client_through_the_gateway_to_the_upstream(
    issuer: TestIssuer, upstream: Upstream, receiver: OtlpReceiver, start_gateway_with: GatewayFactory
) -> None:
    """The client's traceparent → the SERVER span `tools/call echo` → its children `verify token`,
    `decide policy` and the CLIENT span `tools/call echo`, whose id the upstream receives in its
    traceparent, in the client's trace; each with the convention's attributes."""
    gateway = await start_gateway_with(
        traced_config(issuer, upstream, receiver, tools={"echo": ["mcp:access"]})
    )
    auth = bearer(issuer)
    status, answer, _ = await call(
        gateway, {**auth, "traceparent": SAMPLED_PARENT, "tracestate": "vendor=abc"}
    )
    assert status == 200 and answer["result"]["content"] == [{"type": "text", "text": "hi"}]
    spans = await trace_of(receiver, CLIENT_TRACE, "tools/call echo")

    server = one(spans, "tools/call echo", "SERVER")
    assert server.parent_span_id == CLIENT_SPAN
    assert server.attributes == {
        **TRANSPORT,
        "http.request.method": "POST",
        "http.route": "/mcp",
        "http.response.status_code": 200,
        "client.address": "127.0.0.1",
        "mcp.method.name": "tools/call",
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "echo",
        "jsonrpc.request.id": "5",
        "mcp.protocol.version": "2026-07-28",
    }
    assert server.status == "UNSET"
    assert server.resource["service.name"] == "gateway-under-test"
    assert server.resource["service.version"]
    verify = one(spans, "verify token", "INTERNAL")
    assert verify.parent_span_id == server.span_id
    assert verify.attributes == {"mcp_gateway.token.cache_hit": False, "mcp_gateway.token.scheme": "bearer"}
    decide = one(spans, "decide policy", "INTERNAL")
    assert decide.parent_span_id == server.span_id
    assert decide.attributes == {
        "mcp.method.name": "tools/call",
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "echo",
        "jsonrpc.request.id": "5",
        "mcp_gateway.policy.outcome": "allow",
        "mcp_gateway.policy.rule": "tools['echo']",
    }
    client = one(spans, "tools/call echo", "CLIENT")
    assert client.parent_span_id == server.span_id
    assert client.attributes == {
        **TRANSPORT,
        "mcp.method.name": "tools/call",
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "echo",
        "jsonrpc.request.id": "5",
        "mcp.protocol.version": "2026-07-28",
        "server.address": "127.0.0.1",
        "server.port": int(upstream.base_url.rsplit(":", 1)[1]),
    }
    assert {span.span_id for span in spans} == {
        server.span_id,
        verify.span_id,
        decide.span_id,
        client.span_id,
    }
    # The children lie within the server span; the client span covers the relayed stream.
    assert (
        server.start_ns
        <= verify.start_ns
        <= decide.start_ns
        <= client.start_ns
        <= client.end_ns
        <= server.end_ns
    )

    (record,) = await tool_calls(upstream)
    assert upstream_header(record, "traceparent") == [f"00-{CLIENT_TRACE}-{client.span_id}-01"]
    assert upstream_header(record, "tracestate") == ["vendor=abc"]

    # The same token again: the verified-token cache answers.
    await call(gateway, {**auth, "traceparent": f"00-{'1' * 32}-{CLIENT_SPAN}-01"})
    spans = await trace_of(receiver, "1" * 32, "tools/call echo")
    assert one(spans, "verify token", "INTERNAL").attributes["mcp_gateway.token.cache_hit"] is True
    # The collector got the configured header, revealed into the exporter only.
    assert {post.headers.get("x-api-key") for post in receiver.posts} == {"collector-key-123"}


async def test_a_denied_call_has_the_refusal_and_a_deny_decision_and_no_upstream_span(
    issuer: TestIssuer, upstream: Upstream, receiver: OtlpReceiver, start_gateway_with: GatewayFactory
) -> None:
    """A tools/call the rules refuse: 403, its SERVER span says insufficient_scope with the status and
    JSON-RPC code, `decide policy` says deny and which rule, there is no CLIENT span, and the
    upstream received nothing."""
    gateway = await start_gateway_with(
        traced_config(issuer, upstream, receiver, tools={"echo": ["repo:admin"]})
    )
    status, answer, _ = await call(gateway, {**bearer(issuer), "traceparent": SAMPLED_PARENT})
    assert status == 403 and answer["error"]["code"] == -32001
    spans = await trace_of(receiver, CLIENT_TRACE, "tools/call echo")
    server = one(spans, "tools/call echo", "SERVER")
    assert server.attributes["error.type"] == "insufficient_scope"
    assert server.attributes["http.response.status_code"] == 403
    assert server.attributes["rpc.response.status_code"] == "-32001"
    assert server.status == "ERROR"
    decide = one(spans, "decide policy", "INTERNAL")
    assert decide.attributes["mcp_gateway.policy.outcome"] == "deny"
    assert decide.attributes["mcp_gateway.policy.rule"] == "tools['echo']"
    assert decide.attributes["mcp_gateway.policy.missing_scopes"] == ["repo:admin"]
    assert [span.kind for span in spans if span.kind == "CLIENT"] == []
    assert await tool_calls(upstream) == []


async def test_a_request_without_a_token_is_a_401_span_named_after_the_route(
    issuer: TestIssuer, upstream: Upstream, receiver: OtlpReceiver, start_gateway_with: GatewayFactory
) -> None:
    """No token: the body is never read, so the span is `POST /mcp` with error.type missing_token."""
    gateway = await start_gateway_with(traced_config(issuer, upstream, receiver))
    status, _, _ = await call(gateway, {"traceparent": SAMPLED_PARENT})
    assert status == 401
    (server,) = await trace_of(receiver, CLIENT_TRACE, "POST /mcp")
    assert server.attributes["error.type"] == "missing_token"
    assert server.attributes["http.response.status_code"] == 401
    assert "mcp.method.name" not in server.attributes


def exported_text(receiver: OtlpReceiver) -> str:
    """Everything the collector got, as text: names, attributes, events, statuses, resources."""
    return json.dumps(
        [
            [s.name, s.attributes, s.events, s.status_message, s.resource, s.trace_id, s.span_id]
            for s in receiver.spans
        ],
        default=str,
    )


@pytest.mark.parametrize("audit_arguments", [False, True])
async def test_no_token_nor_secret_reaches_the_collector(
    issuer: TestIssuer,
    upstream: Upstream,
    receiver: OtlpReceiver,
    start_gateway_with: GatewayFactory,
    audit_arguments: bool,
) -> None:
    """The caller's token is in no exported attribute, event, status or resource; a tool argument
    only with audit_arguments (as gen_ai.tool.call.arguments), a token-shaped one masked even then;
    a token pasted into a tool name is masked in the span name."""
    gateway = await start_gateway_with(
        traced_config(issuer, upstream, receiver, audit_arguments=audit_arguments)
    )
    auth = bearer(issuer)
    token = auth["Authorization"].split()[1]
    arguments = {"text": SECRET_ARGUMENT, "nested": {"value": token}}
    await call(gateway, {**auth, "traceparent": SAMPLED_PARENT}, arguments=arguments)
    await call(gateway, {**auth, "traceparent": f"00-{'2' * 32}-{CLIENT_SPAN}-01"}, name=f"x {token}")
    spans = await trace_of(receiver, CLIENT_TRACE, "tools/call echo")
    await receiver.wait_for(lambda r: any(s.kind == "SERVER" for s in r.trace("2" * 32)))
    text = exported_text(receiver)
    signature = token.rsplit(".", 1)[1]
    assert signature not in text and token not in text
    assert "tools/call x ***" in {span.name for span in receiver.spans}
    server = one(spans, "tools/call echo", "SERVER")
    if audit_arguments:
        recorded = json.loads(server.attributes["gen_ai.tool.call.arguments"])
        assert recorded == {"text": SECRET_ARGUMENT, "nested": {"value": "***"}}
    else:
        assert SECRET_ARGUMENT not in text
        assert "gen_ai.tool.call.arguments" not in server.attributes


async def test_ratio_zero_exports_no_trace_that_starts_here_but_follows_a_sampled_caller(
    issuer: TestIssuer, upstream: Upstream, receiver: OtlpReceiver, start_gateway_with: GatewayFactory
) -> None:
    """sample_ratio 0: a call without traceparent exports nothing (the upstream still gets a valid,
    unsampled traceparent); a caller's sampled traceparent is followed (ParentBased)."""
    gateway = await start_gateway_with(traced_config(issuer, upstream, receiver, ratio=0.0))
    auth = bearer(issuer)
    assert (await call(gateway, auth))[0] == 200
    assert (await call(gateway, {**auth, "traceparent": SAMPLED_PARENT}))[0] == 200
    spans = await trace_of(receiver, CLIENT_TRACE, "tools/call echo")
    assert len(spans) == 4
    assert {span.trace_id for span in receiver.spans} == {CLIENT_TRACE}
    unparented, parented = await tool_calls(upstream)
    (sent,) = upstream_header(unparented, "traceparent")
    # Not sampled (flag 01 clear); the SDK sets W3C level 2's random-trace-id flag (02).
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[02]", sent), sent
    assert upstream_header(parented, "traceparent")[0].endswith("-01")


async def test_an_sse_answer_span_ends_when_the_stream_does(
    issuer: TestIssuer, upstream: Upstream, receiver: OtlpReceiver, start_gateway_with: GatewayFactory
) -> None:
    """In a 2025-11-25 session a tool streams progress events for ~100 ms over SSE: the SERVER and
    CLIENT spans last at least that long, the SERVER span ending after the CLIENT span."""
    gateway = await start_gateway_with(traced_config(issuer, upstream, receiver))
    auth = bearer(issuer)
    body = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {
            "name": "slow_stream",
            "arguments": {"count": 6, "delay_ms": 20},
            "_meta": {"progressToken": 1},
        },
    }
    async with aiohttp.ClientSession() as http:
        sealed = await initialize(http, gateway, auth)
        headers = {**MCP_HEADERS, **auth, "Mcp-Session-Id": sealed, "MCP-Protocol-Version": "2025-11-25"}
        async with http.post(
            gateway.route_url(), json=body, headers={**headers, "traceparent": SAMPLED_PARENT}
        ) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            events = (await response.text()).count("event: message")
    assert events == 7  # six progress notifications and the result
    spans = await trace_of(receiver, CLIENT_TRACE, "tools/call slow_stream")
    server = one(spans, "tools/call slow_stream", "SERVER")
    client = one(spans, "tools/call slow_stream", "CLIENT")
    assert client.duration_ms >= 100 and server.duration_ms >= client.duration_ms
    assert server.end_ns >= client.end_ns
    assert server.attributes["mcp.session.id"] == sealed


async def test_a_tool_error_result_and_a_json_rpc_error_answer_are_span_errors(
    issuer: TestIssuer, upstream: Upstream, receiver: OtlpReceiver, start_gateway_with: GatewayFactory
) -> None:
    """A result with isError: true is error.type tool_error on the SERVER and CLIENT spans (the HTTP
    answer is a 200); a JSON-RPC error answer is its code."""
    gateway = await start_gateway_with(traced_config(issuer, upstream, receiver))
    auth = bearer(issuer)
    status, _, _ = await call(
        gateway, {**auth, "traceparent": SAMPLED_PARENT}, name="notify", arguments={"kind": "bogus"}
    )
    assert status == 200
    spans = await trace_of(receiver, CLIENT_TRACE, "tools/call notify")
    for kind in ("SERVER", "CLIENT"):
        span = one(spans, "tools/call notify", kind)
        assert (span.attributes["error.type"], span.status) == ("tool_error", "ERROR"), kind
    assert one(spans, "tools/call notify", "SERVER").attributes["http.response.status_code"] == 200

    other = "3" * 32
    body = {
        "jsonrpc": "2.0",
        "id": 9,
        "method": "prompts/get",
        "params": {"name": "nope", "_meta": MODERN_META},
    }
    headers = {
        **MCP_HEADERS,
        **auth,
        "traceparent": f"00-{other}-{CLIENT_SPAN}-01",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "prompts/get",
        "Mcp-Name": "nope",
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.route_url(), json=body, headers=headers) as response,
    ):
        answer = await response.text()
    spans = await trace_of(receiver, other, "prompts/get nope")
    server = one(spans, "prompts/get nope", "SERVER")
    code = re.search(r'"code":\s*(-?\d+)', answer)
    assert code is not None, answer
    assert server.attributes["error.type"] == code.group(1) and server.status == "ERROR"
    assert server.attributes["gen_ai.prompt.name"] == "nope"


async def test_a_session_is_recorded_as_the_client_sees_it_on_post_and_delete(
    issuer: TestIssuer, upstream: Upstream, receiver: OtlpReceiver, start_gateway_with: GatewayFactory
) -> None:
    """2025-11-25: the initialize span and the DELETE span carry the sealed Mcp-Session-Id the client
    holds, never the upstream's own; DELETE is a span named `DELETE /mcp`."""
    gateway = await start_gateway_with(traced_config(issuer, upstream, receiver))
    auth = bearer(issuer)
    parent = {"traceparent": SAMPLED_PARENT}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            gateway.route_url(), json=INITIALIZE, headers={**MCP_HEADERS, **auth, **parent}
        ) as response:
            assert response.status == 200
            sealed = response.headers["Mcp-Session-Id"]
            await response.read()
        session = {"Mcp-Session-Id": sealed, "MCP-Protocol-Version": "2025-11-25"}
        async with http.delete(gateway.route_url(), headers={**auth, **session, **parent}) as response:
            assert response.status in (200, 204)
    spans = await trace_of(receiver, CLIENT_TRACE, "DELETE /mcp")
    initialize = one(spans, "initialize", "SERVER")
    delete = one(spans, "DELETE /mcp", "SERVER")
    raw = {
        value for record in await upstream.requests() for value in upstream_header(record, "mcp-session-id")
    }
    assert raw and sealed not in raw
    assert initialize.attributes["mcp.session.id"] == sealed
    assert delete.attributes["mcp.session.id"] == sealed
    assert one(spans, "DELETE /mcp", "CLIENT").attributes["mcp.session.id"] == sealed
    assert delete.attributes["mcp.protocol.version"] == "2025-11-25"
    assert not raw & {str(v) for s in spans for v in s.attributes.values()}


async def test_spans_go_uncompressed_with_compression_none_and_gzipped_by_default(
    issuer: TestIssuer, upstream: Upstream, receiver: OtlpReceiver, start_gateway_with: GatewayFactory
) -> None:
    """``compression: none`` sends the protobuf as it is (no Content-Encoding) and the spans arrive
    the same; the default section (gzip) says gzip."""
    for compression, encoding in (("none", []), ("gzip", ["gzip"])):
        receiver.clear()
        config = single_route_config(issuer, upstream.mcp_url, tools={"echo": ["mcp:access"]})
        gateway = await start_gateway_with(config + tracing_section(receiver, compression=compression))
        trace_id = secrets.token_hex(16)
        status, _, _ = await call(gateway, {**bearer(issuer), "traceparent": f"00-{trace_id}-{'1' * 16}-01"})
        assert status == 200
        spans = await trace_of(receiver, trace_id, "tools/call echo")
        assert {span.name for span in spans} >= {"tools/call echo", "verify token", "decide policy"}
        posts = [post for post in receiver.posts if post.path == "/v1/traces"]
        assert posts and all(post.headers.getall("Content-Encoding", []) == encoding for post in posts)


async def test_without_tracing_the_clients_trace_context_goes_upstream_untouched(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """No `tracing:`: the upstream gets the client's traceparent and tracestate as sent (today's
    behaviour), and no span is made."""
    gateway = await start_gateway_with(single_route_config(issuer, upstream.mcp_url))
    tracestate = f"vendor={secrets.token_hex(4)}"
    await call(gateway, {**bearer(issuer), "traceparent": SAMPLED_PARENT, "tracestate": tracestate})
    (record,) = await tool_calls(upstream)
    assert upstream_header(record, "traceparent") == [SAMPLED_PARENT]
    assert upstream_header(record, "tracestate") == [tracestate]


async def test_a_key_rotation_fetches_the_jwks_inside_the_token_verification_span(
    issuer: TestIssuer, upstream: Upstream, receiver: OtlpReceiver, start_gateway_with: GatewayFactory
) -> None:
    """A token signed by a key the gateway has not seen: `verify token` holds a CLIENT span
    `fetch JWKS` naming the issuer, the refetch the unknown kid caused."""
    gateway = await start_gateway_with(traced_config(issuer, upstream, receiver))
    issuer.rotate()
    await asyncio.sleep(0.25)  # past jwks_refresh_cooldown_s: an unknown kid may refetch
    assert (await call(gateway, {**bearer(issuer), "traceparent": SAMPLED_PARENT}))[0] == 200
    spans = await trace_of(receiver, CLIENT_TRACE, "tools/call echo")
    verify = one(spans, "verify token", "INTERNAL")
    fetch = one(spans, "fetch JWKS", "CLIENT")
    assert fetch.parent_span_id == verify.span_id
    assert fetch.attributes == {"mcp_gateway.issuer": issuer.issuer}
    assert fetch.status == "UNSET"


async def test_token_exchange_and_introspection_get_their_spans(
    issuer: TestIssuer,
    upstream: Upstream,
    receiver: OtlpReceiver,
    fake_as: FakeAuthorizationServer,
    start_gateway_with: GatewayFactory,
) -> None:
    """Exchange: an `exchange token` span, the cache answering the second call; introspection: a
    CLIENT span `introspect token` with the AS's verdict. The client secret, the exchanged token
    and the opaque token are in no exported attribute."""
    exchanging = await start_gateway_with(
        exchange_config(issuer, upstream, fake_as) + tracing_section(receiver)
    )
    token = issuer.mint(audience=RESOURCE, scope="mcp:access demo:read")
    fake_as.subject_tokens[token] = frozenset({"mcp:access", "demo:read"})
    for n in (1, 2):
        status, _, _ = await post(exchanging.route_url(), token, {**ECHO, "id": n}, SAMPLED_PARENT)
        assert status in (200, 400, 404)  # forwarded (the SDK upstream has no session for it)
    await receiver.wait_for(lambda r: len([s for s in r.spans if s.kind == "SERVER"]) == 2)
    spans = receiver.trace(CLIENT_TRACE)
    exchanges = sorted((s for s in spans if s.name == "exchange token"), key=lambda s: s.start_ns)
    assert [s.attributes["mcp_gateway.cache_hit"] for s in exchanges] == [False, True]
    servers = {s.span_id for s in spans if s.kind == "SERVER"}
    assert {s.parent_span_id for s in exchanges} <= servers and fake_as.exchange_calls == 1

    receiver.clear()
    other = "5" * 32
    opaque = await start_gateway_with(
        introspection_config(fake_as.issuer, upstream, fake_as) + tracing_section(receiver)
    )
    fake_as.introspection["opaque-good"] = introspected(fake_as)
    await post(opaque.route_url(), "opaque-good", ECHO, f"00-{other}-{CLIENT_SPAN}-01")
    spans = await trace_of(receiver, other, "tools/call echo")
    verify = one(spans, "verify token", "INTERNAL")
    introspect = one(spans, "introspect token", "CLIENT")
    assert introspect.parent_span_id == verify.span_id
    assert introspect.attributes == {"mcp_gateway.issuer": fake_as.issuer, "mcp_gateway.result": "active"}
    text = exported_text(receiver)
    for secret in (fake_as.client_secret, *fake_as.issued, "opaque-good", token):
        assert secret not in text
