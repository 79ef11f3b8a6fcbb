"""Request smuggling through the gateway: every body below is refused or denied, none forwarded.

The token holds every scope the rules know, so only the strict reading of the body (and the
rules that deny `admin_reset`) stand between these requests and the upstream.
"""

from __future__ import annotations

import base64
import json

import aiohttp
import pytest

from tests.conftest import Gateway, GatewayFactory, Upstream
from tests.support.issuer import TestIssuer

RESOURCE = "http://127.0.0.1:8080/mcp"
MCP = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
LEGACY = {**MCP, "MCP-Protocol-Version": "2025-11-25"}
BATCH_ERA = {**MCP, "MCP-Protocol-Version": "2025-03-26"}
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


def call(name: object, rpc_id: int = 1) -> str:
    return json.dumps(
        {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": {"name": name, "arguments": {}}}
    )


def modern(name: str, header_name: str) -> tuple[bytes, dict[str, str]]:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": name, "arguments": {}, "_meta": META},
    }
    headers = {
        **MCP,
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": header_name,
    }
    return json.dumps(body).encode(), headers


def b64(value: str) -> str:
    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="


CORPUS: list[tuple[str, bytes, dict[str, str], int]] = [
    (
        "duplicate_method_key",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"admin_reset"}}',
        LEGACY,
        400,
    ),
    (
        "duplicate_name_key",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"admin_reset","arguments":{}}}',
        LEGACY,
        400,
    ),
    ("batch_hiding_denied_call", f"[{call('echo', 1)},{call('admin_reset', 2)}]".encode(), BATCH_ERA, 403),
    ("batch_in_2025_11_25", f"[{call('echo', 1)},{call('echo', 2)}]".encode(), LEGACY, 400),
    ("empty_batch", b"[]", BATCH_ERA, 400),
    (
        "method_in_another_case",
        b'{"jsonrpc":"2.0","id":1,"method":"Tools/Call","params":{"name":"admin_reset"}}',
        LEGACY,
        400,
    ),
    ("name_with_trailing_space", call("admin_reset ").encode(), LEGACY, 403),
    ("name_with_nul", call("echo\u0000admin_reset").encode(), LEGACY, 400),
    ("name_unicode_lookalike", call("\u0435cho").encode(), LEGACY, 403),  # Cyrillic small ie, not Latin e
    ("name_as_list", call(["echo"]).encode(), LEGACY, 400),
    ("name_as_object", call({"name": "echo"}).encode(), LEGACY, 400),
    ("params_as_list", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["echo"]}', LEGACY, 400),
    ("header_body_mismatch", *modern("admin_reset", "echo"), 400),
    ("base64_header_mismatch", *modern("admin_reset", b64("echo")), 400),
    ("body_over_limit", call("echo" + "x" * 5000).encode(), LEGACY, 413),
    (
        "invalid_utf8",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ech\xff"}}',
        LEGACY,
        400,
    ),
    ("bom", b"\xef\xbb\xbf" + call("echo").encode(), LEGACY, 400),
    (
        "deeply_nested",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":'
        + b"[" * 1500
        + b"]" * 1500
        + b"}}",
        LEGACY,
        400,
    ),
    (
        "nan_constant",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"x":NaN}}}',
        LEGACY,
        400,
    ),
    (
        "id_as_bool",
        b'{"jsonrpc":"2.0","id":true,"method":"tools/call","params":{"name":"echo"}}',
        LEGACY,
        400,
    ),
    ("unknown_tool_default_deny", call("not_in_rules").encode(), LEGACY, 403),
]


@pytest.fixture
async def gateway(issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory) -> Gateway:
    return await start_gateway_with(
        f"""
        public_url: http://127.0.0.1:8080
        issuers: [{{issuer: {issuer.issuer}, algorithms: [RS256], jwks: {{discover: true}}}}]
        routes:
          - path: /mcp
            upstream: {upstream.mcp_url}
            scopes: [mcp:access]
            max_body_bytes: 4096
            tools:
              "echo": [mcp:access]
              "admin_*": [admin]
        """
    )


@pytest.mark.parametrize(("case", "body", "headers", "status"), CORPUS, ids=[c[0] for c in CORPUS])
async def test_smuggled_request_is_refused_and_never_forwarded(
    case: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    issuer: TestIssuer,
    gateway: Gateway,
    upstream: Upstream,
) -> None:
    """Each smuggling attempt gets its 4xx with a JSON-RPC error body; the upstream saw nothing."""
    token = issuer.mint(audience=RESOURCE, scope="mcp:access")  # everything but admin
    async with aiohttp.ClientSession() as http:
        async with http.post(
            gateway.route_url(), data=body, headers={**headers, "Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == status, (case, await response.text())
            error = await response.json()
    assert error["jsonrpc"] == "2.0" and isinstance(error["error"]["code"], int)
    assert await upstream.requests() == []


async def test_allowed_call_passes_byte_for_byte(
    issuer: TestIssuer, gateway: Gateway, upstream: Upstream
) -> None:
    """The control case: an allowed call reaches the upstream exactly as sent."""
    token = issuer.mint(audience=RESOURCE, scope="mcp:access")
    body = call("echo").replace('"arguments": {}', '"arguments": {"text": "hi"}').encode()
    async with aiohttp.ClientSession() as http:
        async with http.post(
            gateway.route_url(), data=body, headers={**LEGACY, "Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status in (200, 400, 404)  # the upstream's answer (no session), not the gateway's
    [record] = await upstream.requests()
    assert base64.b64decode(record["body_b64"]) == body
