"""gateway.telemetry: span names and attributes (pure), the hooks without a trace, the provider.

What a collector receives through the real gateway is tests/integration/test_tracing.py.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gateway.config import OtlpConfig, TracingConfig
from gateway.errors import InsufficientScope, MissingToken, RateLimited
from gateway.mcp.messages import McpMessage
from gateway.mcp.methods import Prompt, Resource, Tool
from gateway.telemetry import open_tracing
from gateway.telemetry.attributes import (
    answer_error,
    http_span_name,
    message_attributes,
    message_span_name,
    protocol_version,
    refusal_attributes,
    server_address,
)
from gateway.telemetry.spans import NO_SPAN, calling_upstream, deciding, span
from tests.support.processes import REPO_ROOT

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def message(
    method: str | None,
    target: Tool | Prompt | Resource | None = None,
    rpc_id: Any = 1,
    kind: Any = "request",
    params: dict[str, Any] | None = None,
) -> McpMessage:
    return McpMessage(kind=kind, method=method, id=rpc_id, target=target, params=params)


@pytest.mark.parametrize(
    ("parsed", "name"),
    [
        (message("tools/call", Tool("get-weather")), "tools/call get-weather"),
        (message("prompts/get", Prompt("greet")), "prompts/get greet"),
        (message("resources/read", Resource("file:///secret/a.txt")), "resources/read"),  # no URI in names
        (message("tools/list"), "tools/list"),
        (message("notifications/initialized", rpc_id=None, kind="notification"), "notifications/initialized"),
        (message(None, kind="response"), None),  # a client's response: the HTTP name is used
        (message("tools/call", Tool(f"x {JWT}")), "tools/call x ***"),  # a pasted token is masked
    ],
)
def test_span_names_follow_the_mcp_conventions(parsed: McpMessage, name: str | None) -> None:
    """`{mcp.method.name} {target}` with a tool or prompt name, the method alone otherwise."""
    assert message_span_name(parsed) == name


def test_http_span_names_are_method_and_route() -> None:
    """GET streams, DELETEs and POSTs that are no single message: `{method} {route}`."""
    assert http_span_name("DELETE", "/github/mcp") == "DELETE /github/mcp"


def test_a_tool_call_has_the_conventions_attributes() -> None:
    """tools/call: method, execute_tool, the tool name and the request id as a string."""
    assert message_attributes(message("tools/call", Tool("echo"), rpc_id=7)) == {
        "mcp.method.name": "tools/call",
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "echo",
        "jsonrpc.request.id": "7",
    }


@pytest.mark.parametrize(
    ("parsed", "expected"),
    [
        (
            message("resources/read", Resource("demo://a"), rpc_id="r-1"),
            {
                "mcp.method.name": "resources/read",
                "mcp.resource.uri": "demo://a",
                "jsonrpc.request.id": "r-1",
            },
        ),
        (
            message("prompts/get", Prompt("greet")),
            {"mcp.method.name": "prompts/get", "gen_ai.prompt.name": "greet", "jsonrpc.request.id": "1"},
        ),
        # No request id for a notification, nor for a null id (the conventions: SHOULD NOT).
        (
            message("notifications/cancelled", rpc_id=None, kind="notification"),
            {"mcp.method.name": "notifications/cancelled"},
        ),
        (message("ping", rpc_id=None), {"mcp.method.name": "ping"}),
        (message(None, rpc_id=3, kind="response"), {"jsonrpc.request.id": "3"}),
        (message("ping", rpc_id=JWT), {"mcp.method.name": "ping", "jsonrpc.request.id": "***"}),
    ],
)
def test_other_messages_attributes(parsed: McpMessage, expected: dict[str, Any]) -> None:
    """Resources by URI, prompts by name; ids only for requests with one; client text redacted."""
    assert message_attributes(parsed) == expected


def test_arguments_only_when_asked_and_redacted() -> None:
    """gen_ai.tool.call.arguments: a JSON string, only with_arguments, secrets masked as in logs."""
    call = message(
        "tools/call", Tool("t"), params={"name": "t", "arguments": {"q": "x", "api_key": "k", "t": JWT}}
    )
    assert "gen_ai.tool.call.arguments" not in message_attributes(call)
    recorded = message_attributes(call, with_arguments=True)["gen_ai.tool.call.arguments"]
    assert recorded == '{"q": "x", "api_key": "***", "t": "***"}'
    listing = message("tools/list", params={"arguments": {"q": "x"}})
    assert "gen_ai.tool.call.arguments" not in message_attributes(listing, with_arguments=True)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            {"jsonrpc": "2.0", "id": 1, "result": {"content": [], "isError": True}},
            {"error.type": "tool_error"},
        ),
        ({"jsonrpc": "2.0", "id": 1, "result": {"content": [], "isError": False}}, None),
        ({"jsonrpc": "2.0", "id": 1, "result": {"isError": "true"}}, None),  # only the JSON true
        (
            {"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "bad"}},
            {"error.type": "-32602", "rpc.response.status_code": "-32602"},
        ),
        (
            {"jsonrpc": "2.0", "id": 1, "error": {"code": "x"}},
            {"error.type": "_OTHER", "rpc.response.status_code": "_OTHER"},
        ),
        # The upstream's own requests and notifications answer nothing.
        ({"jsonrpc": "2.0", "method": "notifications/message", "params": {"error": {"code": 1}}}, None),
    ],
)
def test_what_an_answer_says_went_wrong(answer: dict[str, Any], expected: dict[str, Any] | None) -> None:
    """isError: true is tool_error; an error response is its code; anything else is no error."""
    assert answer_error(answer) == expected


def test_refusals_carry_their_reason_status_and_code() -> None:
    """error.type is the refusal's reason (the metrics label), with the HTTP status and JSON-RPC code."""
    assert refusal_attributes(InsufficientScope(scopes=("a",))) == {
        "error.type": "insufficient_scope",
        "http.response.status_code": 403,
        "rpc.response.status_code": "-32001",
    }
    assert refusal_attributes(MissingToken())["error.type"] == "missing_token"
    assert refusal_attributes(RateLimited("echoes", 3))["http.response.status_code"] == 429


def test_only_known_protocol_versions_become_attributes() -> None:
    """A header is the client's text: only a version the gateway knows is recorded."""
    assert protocol_version("2025-06-18") == "2025-06-18"
    assert protocol_version("2026-07-28") == "2026-07-28"
    assert protocol_version(JWT) is None and protocol_version(None) is None


def test_server_address_of_an_upstream() -> None:
    """server.address and server.port, the scheme's port when the URL has none."""
    assert server_address("http://10.0.0.2:9000/mcp") == {"server.address": "10.0.0.2", "server.port": 9000}
    assert server_address("https://mcp.example/mcp") == {"server.address": "mcp.example", "server.port": 443}


def test_without_a_trace_every_hook_is_the_shared_no_op() -> None:
    """Outside a traced request the hooks return NO_SPAN: no span, no headers, no watches."""
    with span("verify token", {"a": 1}) as scope:
        scope.set("b", 2)
        scope.fail("x")
    assert scope is NO_SPAN
    with deciding(message("ping")) as decision:
        assert decision is NO_SPAN
    with calling_upstream("POST") as upstream:
        assert upstream is NO_SPAN and dict(upstream.headers) == {} and upstream.watches == ()


async def test_no_tracing_config_opens_nothing() -> None:
    """open_tracing(None) yields None: the gateway does not trace."""
    async with open_tracing(None) as tracing:
        assert tracing is None


def test_a_gateway_without_tracing_never_imports_the_tracing_sdk(tmp_path: Path) -> None:
    """Building an app for a config without `tracing:` and answering a request through the MCP
    pipeline loads neither the tracing SDK nor an exporter (a fresh interpreter, to see its
    imports; the API's `opentelemetry.trace` may be there: redis-py's observability imports it)."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        textwrap.dedent(
            """
            public_url: http://127.0.0.1:8080
            issuers: [{issuer: "http://127.0.0.1:9", algorithms: [RS256], jwks: {url: "http://127.0.0.1:9/jwks"}}]
            routes: [{path: /mcp, upstream: "http://127.0.0.1:9/mcp", scopes: [mcp:access], tools: {"*": []}}]
            """
        )
    )
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from aiohttp.test_utils import TestClient, TestServer
        from gateway.config import load_config
        from gateway.web.app import build_app

        async def main():
            app = build_app(load_config({str(config)!r}))
            async with TestClient(TestServer(app)) as client:
                response = await client.post("/mcp", json={{}})
                assert response.status == 401, response.status
            tracing = ("opentelemetry.sdk.trace", "opentelemetry.exporter", "gateway.telemetry.tracing")
            print(sorted(name for name in sys.modules if name.startswith(tracing)))

        asyncio.run(main())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_tracer_samples_by_ratio_and_follows_a_sampled_parent() -> None:
    """ParentBased(TraceIdRatioBased(0)): a root span is not recorded, a sampled remote parent's
    is, and what is sent carries the gateway's resource (service.name, service.version)."""
    from gateway.telemetry.recorder import caller_context
    from gateway.telemetry.tracing import Tracing, resource_attributes

    sent: list[Any] = []
    tracing = Tracing(
        TracingConfig(otlp=OtlpConfig(endpoint="http://unused"), sample_ratio=0.0), send=sent.extend
    )
    tracer = tracing._tracer
    assert not tracer.start_server("root", None, {}).is_recording()
    remote = caller_context([f"00-{'1' * 32}-{'2' * 16}-01"], [])
    child = tracer.start_server("child", remote, {})
    assert child.is_recording()
    child.end()
    tracing.flush()
    tracing._close()
    assert [span.name for span in sent] == ["child"]
    assert sent[0].parent_id == bytes.fromhex("2" * 16) and sent[0].parent_remote
    resource = resource_attributes(TracingConfig(otlp=OtlpConfig(endpoint="http://unused")))
    assert resource["service.name"] == "mcp-auth-gateway" and resource["service.version"]


class _Payload:
    """Something a request holds, to see whether it outlives the request (weakly referenced)."""


@pytest.mark.parametrize("ratio", [0.0, 1.0])
async def test_a_timer_scheduled_during_a_traced_request_keeps_none_of_it(ratio: float) -> None:
    """The loop keeps the context of a timer scheduled during a request (aiohttp's keep-alive
    timer: seconds) until it fires; the trace in that context must not keep the request, nor
    its messages and their arguments, alive after the request ended, sampled or not."""
    import asyncio
    import gc
    import weakref

    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from gateway.config import RouteConfig
    from gateway.mcp.methods import Tool
    from gateway.telemetry.tracing import Tracing

    sent: list[Any] = []
    tracing = Tracing(
        TracingConfig(otlp=OtlpConfig(endpoint="http://unused"), sample_ratio=ratio), send=sent.extend
    )
    route = RouteConfig(path="/mcp", upstream="http://127.0.0.1:9/mcp", resource="https://gw/mcp")
    request = make_mocked_request("POST", "/mcp", headers={"MCP-Protocol-Version": "2026-07-28"})
    payload, argument = _Payload(), _Payload()
    request[web.RequestKey("payload", _Payload)] = payload
    message = McpMessage("request", "tools/call", 1, Tool("echo"), {"arguments": {"text": argument}})
    timers: list[asyncio.TimerHandle] = []

    async def pipeline(message: McpMessage) -> web.StreamResponse:
        with deciding(message):
            pass
        with calling_upstream("POST"):
            timers.append(asyncio.get_running_loop().call_later(3600, lambda: None))
        return web.Response(status=200)

    try:
        response = await tracing.serve(request, route, pipeline(message))
        assert response.status == 200
        held, argument_held = weakref.ref(payload), weakref.ref(argument)
        del request, payload, message, argument
        gc.collect()
        assert timers and not timers[0].cancelled()  # its context is still the loop's
        assert held() is None
        assert argument_held() is None
    finally:
        for timer in timers:
            timer.cancel()
        await tracing.aclose()
    if ratio == 1.0:  # the spans it made were still recorded in full
        names = sorted(span.name for span in sent)
        assert names == ["decide policy", "tools/call echo", "tools/call echo"], names  # client, server
