"""Streamable HTTP details through the gateway: routes, metadata, headers, limits and failures."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import aiohttp
import pytest

from tests.conftest import Gateway, GatewayFactory, Upstream, single_route_config
from tests.integration.test_authentication import INITIALIZE, MCP_HEADERS, post
from tests.support.challenge import parse_bearer_challenge
from tests.support.issuer import TestIssuer
from tests.support.mcp_client import session_client

RESOURCE = "http://127.0.0.1:8080/mcp"


def header_values(record: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in record["headers"] if key.lower() == name.lower()]


@pytest.fixture
async def gateway(issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory) -> Gateway:
    return await start_gateway_with(single_route_config(issuer, upstream.mcp_url, max_body_bytes=2048))


@pytest.fixture
def auth(issuer: TestIssuer) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"}


async def test_protected_resource_metadata_per_route_and_root(gateway: Gateway) -> None:
    """RFC 9728: path-inserted metadata, the root form for a single route, CORS, no token needed."""
    async with aiohttp.ClientSession() as http:
        for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
            async with http.get(gateway.url + path, headers={"Authorization": "Bearer garbage"}) as response:
                assert response.status == 200
                assert response.content_type == "application/json"
                assert response.headers["Access-Control-Allow-Origin"] == "*"
                document = await response.json()
            assert document == {
                "resource": RESOURCE,
                "authorization_servers": [gateway.config.issuers[0].issuer],
                "scopes_supported": ["mcp:access"],
                "bearer_methods_supported": ["header"],
                "dpop_signing_alg_values_supported": ["RS256", "ES256"],  # dpop: allowed by default
                "resource_name": "/mcp",
            }
        async with http.get(gateway.url + "/mcp/.well-known/oauth-protected-resource") as response:
            assert response.status == 404  # path-appended is not RFC 9728
        async with http.options(
            gateway.url + "/.well-known/oauth-protected-resource/mcp",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
        ) as response:
            assert response.status == 204 and response.headers["Access-Control-Allow-Origin"] == "*"


async def test_two_routes_with_different_resources(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """A token for one route's resource is refused on the other; the root metadata is not served."""
    gateway = await start_gateway_with(
        f"""
        public_url: http://127.0.0.1:8080
        issuers: [{{issuer: {issuer.issuer}, algorithms: [RS256], jwks: {{discover: true}}}}]
        routes:
          - {{path: /a/mcp, upstream: {upstream.mcp_url}}}
          - {{path: /b/mcp, upstream: {upstream.mcp_url}, resource_name: Team B}}
        """
    )
    token_a = issuer.mint(audience="http://127.0.0.1:8080/a/mcp")
    assert (await post(gateway, {"Authorization": f"Bearer {token_a}"}, path="/a/mcp"))[0] == 200
    await upstream.clear()
    status, headers, _ = await post(gateway, {"Authorization": f"Bearer {token_a}"}, path="/b/mcp")
    assert status == 401
    challenge = parse_bearer_challenge(headers["WWW-Authenticate"])
    assert (
        challenge["resource_metadata"] == "http://127.0.0.1:8080/.well-known/oauth-protected-resource/b/mcp"
    )
    assert await upstream.requests() == []
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/.well-known/oauth-protected-resource/b/mcp") as response:
            document = await response.json()
            assert (
                document["resource"] == "http://127.0.0.1:8080/b/mcp"
                and document["resource_name"] == "Team B"
            )
        async with http.get(gateway.url + "/.well-known/oauth-protected-resource") as response:
            assert response.status == 404


async def test_headers_go_upstream_by_allowlist_with_upstream_host(
    gateway: Gateway, upstream: Upstream, auth: dict[str, str]
) -> None:
    """MCP and tracing headers pass; Cookie, X-* and hop-by-hop do not; Host is the upstream's."""
    extra = {
        "Cookie": "sid=secret",
        "X-Api-Key": "client-secret",
        "Proxy-Authorization": "Basic eA==",
        "Mcp-Param-Region": "us-west1",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "MCP-Protocol-Version": "2025-11-25",
        "Host": "gateway.example",
    }
    status, _, _ = await post(gateway, {**auth, **extra})
    assert status == 200
    [record] = await upstream.requests()
    names = {name.lower() for name, _ in record["headers"]}
    assert not names & {"authorization", "cookie", "x-api-key", "proxy-authorization"}
    assert header_values(record, "mcp-param-region") == ["us-west1"]
    assert header_values(record, "traceparent") == [extra["traceparent"]]
    assert header_values(record, "mcp-protocol-version") == ["2025-11-25"]
    assert header_values(record, "host") == [upstream.base_url.removeprefix("http://")]
    assert json.loads(record["body"]) == INITIALIZE


async def test_session_get_stream_and_delete_pass_through(
    gateway: Gateway, upstream: Upstream, auth: dict[str, str]
) -> None:
    """initialize → session id; notification → 202; GET stream opens; DELETE ends; then 404."""
    async with aiohttp.ClientSession() as http:
        async with http.post(
            gateway.route_url(), json=INITIALIZE, headers={**MCP_HEADERS, **auth}
        ) as response:
            assert response.status == 200
            session_id = response.headers["Mcp-Session-Id"]
            await response.read()
        session = {**auth, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        async with http.post(gateway.route_url(), json=note, headers={**MCP_HEADERS, **session}) as response:
            assert response.status == 202
            assert await response.read() == b""
        get_headers = {**session, "Accept": "text/event-stream"}
        async with http.get(gateway.route_url(), headers=get_headers) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            assert response.headers["X-Accel-Buffering"] == "no"
            assert len(response.headers["X-Request-Id"]) == 16  # set before the stream started
        # Event ids reach clients sealed to them: an id the gateway did not seal for this caller
        # is answered as an unknown session would be, and never reaches the upstream.
        async with http.get(
            gateway.route_url(), headers={**get_headers, "Last-Event-ID": "evt-1"}
        ) as response:
            assert response.status == 404
        async with http.delete(gateway.route_url(), headers=session) as response:
            assert response.status in (200, 204)
        ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
        async with http.post(gateway.route_url(), json=ping, headers={**MCP_HEADERS, **session}) as response:
            assert response.status == 404  # terminated session, from the upstream
        # Every request still needs a token: the session id alone gets nothing (MCP C11).
        async with http.post(
            gateway.route_url(), json=ping, headers={**MCP_HEADERS, "Mcp-Session-Id": session_id}
        ) as response:
            assert response.status == 401
    methods = [(r["method"], header_values(r, "last-event-id")) for r in await upstream.requests()]
    assert all(last_event_ids == [] for _, last_event_ids in methods)
    assert [m for m, _ in methods].count("DELETE") == 1
    assert len(methods) == 5  # neither the unsealed resumption nor the token-less ping arrived


async def test_json_response_upstream_round_trips(
    issuer: TestIssuer, json_upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """An upstream answering application/json is relayed as JSON with its session id."""
    gateway = await start_gateway_with(single_route_config(issuer, json_upstream.mcp_url))
    status, headers, body = await post(gateway, {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"})
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert body["result"]["serverInfo"]["name"] == "upstream-fixture"
    assert "Mcp-Session-Id" in headers


async def test_body_over_limit_gets_413_and_is_not_forwarded(
    gateway: Gateway, upstream: Upstream, auth: dict[str, str]
) -> None:
    """A body past the route's max_body_bytes: 413 with a JSON-RPC error; upstream untouched."""
    big = {**INITIALIZE, "params": {**INITIALIZE["params"], "padding": "x" * 4096}}
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.route_url(), json=big, headers={**MCP_HEADERS, **auth}) as response:
            assert response.status == 413
            assert (await response.json())["error"]["code"] == -32600

        async def chunks() -> Any:  # no Content-Length: the limit is enforced while reading
            for _ in range(5):
                yield b" " * 1000

        async with http.post(gateway.route_url(), data=chunks(), headers={**MCP_HEADERS, **auth}) as response:
            assert response.status == 413
    assert await upstream.requests() == []


async def test_foreign_origin_gets_403_before_token_check(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory, auth: dict[str, str]
) -> None:
    """Origin not allowed: 403 even without a token (DNS rebinding); an allowed one passes with CORS."""
    config = single_route_config(issuer, upstream.mcp_url) + "allowed_origins: [https://app.example]\n"
    gateway = await start_gateway_with(config)
    assert (await post(gateway, {"Origin": "http://evil.example"}))[0] == 403
    assert (await post(gateway, {"Origin": "http://evil.example", **auth}))[0] == 403
    assert await upstream.requests() == []
    status, headers, _ = await post(gateway, {"Origin": "https://app.example", **auth})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Mcp-Session-Id" in headers["Access-Control-Expose-Headers"]


async def test_other_http_methods_get_405(gateway: Gateway, upstream: Upstream, auth: dict[str, str]) -> None:
    """PUT/PATCH on an MCP route: 405 with Allow, from the gateway."""
    async with aiohttp.ClientSession() as http:
        for method in ("PUT", "PATCH"):
            async with http.request(method, gateway.route_url(), headers=auth) as response:
                assert response.status == 405
                assert response.headers["Allow"] == "GET, POST, DELETE"
    assert await upstream.requests() == []


async def test_unknown_path_is_404(gateway: Gateway, auth: dict[str, str]) -> None:
    """Only configured routes are proxied."""
    assert (await post(gateway, auth, path="/other"))[0] == 404


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_upstream_refusing_connections_gives_502_jsonrpc_error(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """Nothing listening upstream: 502 with a JSON-RPC error carrying the request id."""
    gateway = await start_gateway_with(single_route_config(issuer, f"http://127.0.0.1:{free_port()}/mcp"))
    status, _, body = await post(gateway, {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"})
    assert status == 502
    assert body == {
        "jsonrpc": "2.0",
        "id": 1,
        "error": {"code": -32000, "message": "Upstream MCP server unavailable"},
    }


async def test_upstream_not_answering_connect_gives_504_within_connect_timeout(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """An upstream that accepts TCP but never answers: 504 after response_timeout_s, not a hang."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/mcp"
        gateway = await start_gateway_with(single_route_config(issuer, url, response_timeout_s=0.5))
        started = time.monotonic()
        status, _, body = await post(gateway, {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"})
        assert status == 504
        assert body["error"]["code"] == -32000
        assert time.monotonic() - started < 10
    finally:
        silent.close()


async def test_client_disconnect_cancels_the_upstream_request(
    gateway: Gateway, upstream: Upstream, auth: dict[str, str]
) -> None:
    """A client that goes away mid-call: the upstream sees its request's connection close."""
    async with session_client(gateway.route_url(), auth, era="2026") as client:
        call = asyncio.create_task(client.call_tool("sleep", {"seconds": 30}))
        for _ in range(100):
            if any("sleep" in r.get("body", "") for r in await upstream.requests()):
                break
            await asyncio.sleep(0.05)
        call.cancel()
    for _ in range(100):
        if any(r.get("event") == "disconnect" for r in await upstream.records()):
            break
        await asyncio.sleep(0.05)
    disconnected = [r for r in await upstream.records() if r.get("event") == "disconnect"]
    sleeping = [r for r in await upstream.requests() if "sleep" in r.get("body", "")]
    assert sleeping and disconnected and disconnected[0]["id"] == sleeping[0]["id"]


async def test_upstream_resetting_the_connection_gives_502(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """An upstream that accepts and drops the connection: 502 JSON-RPC error, no hang."""

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.transport.abort()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp"
        gateway = await start_gateway_with(single_route_config(issuer, url))
        status, _, body = await post(gateway, {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"})
        assert status == 502
        assert body["error"] == {"code": -32000, "message": "Upstream MCP server unavailable"}
    finally:
        server.close()
        await server.wait_closed()


async def test_health_and_readiness(gateway: Gateway) -> None:
    """/healthz answers without a token; /readyz is 200 once the issuer's keys are loaded."""
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz"):
            async with http.get(gateway.url + path) as response:
                assert response.status == 200


async def test_metadata_with_a_base_path_in_public_url(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """public_url with a path: metadata served at the RFC 9728 path-inserted URL of the resource."""
    gateway = await start_gateway_with(
        f"""
        public_url: http://127.0.0.1:8080/base
        issuers: [{{issuer: {issuer.issuer}, algorithms: [RS256], jwks: {{discover: true}}}}]
        routes: [{{path: /mcp, upstream: {upstream.mcp_url}}}]
        """
    )
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/.well-known/oauth-protected-resource/base/mcp") as response:
            assert response.status == 200
            assert (await response.json())["resource"] == "http://127.0.0.1:8080/base/mcp"
    token = issuer.mint(audience="http://127.0.0.1:8080/base/mcp")
    _, headers, _ = await post(gateway, {})
    assert parse_bearer_challenge(headers["WWW-Authenticate"])["resource_metadata"] == (
        "http://127.0.0.1:8080/.well-known/oauth-protected-resource/base/mcp"
    )
    assert (await post(gateway, {"Authorization": f"Bearer {token}"}))[0] == 200


async def test_upstream_breaking_mid_stream_breaks_the_client_stream(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """Upstream dies after sending part of an SSE stream: the client sees a broken stream, not a clean end."""

    async def half_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1c\r\nevent: message\ndata: {}\n\n\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.transport.abort()

    server = await asyncio.start_server(half_stream, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp"
        gateway = await start_gateway_with(single_route_config(issuer, url))
        headers = {**MCP_HEADERS, "Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"}
        async with aiohttp.ClientSession() as http:
            async with http.post(gateway.route_url(), json=INITIALIZE, headers=headers) as response:
                assert response.status == 200
                first = await response.content.readuntil(b"\n\n")
                assert first == b"event: message\ndata: {}\n\n"
                with pytest.raises(aiohttp.ClientPayloadError):
                    await response.read()
    finally:
        server.close()
        await server.wait_closed()


async def test_client_query_string_never_reaches_the_sdk_upstream(
    gateway: Gateway, upstream: Upstream, auth: dict[str, str]
) -> None:
    """MCP endpoints take no query: the SDK upstream records none, whatever the client appended."""
    status, _, _ = await post(gateway, auth, query="?session=other&debug=1")
    assert status == 200
    async with (
        aiohttp.ClientSession() as http,
        http.get(gateway.route_url() + "?x=1", headers={**auth, "Accept": "text/event-stream"}) as response,
    ):
        await response.read()
    records = await upstream.requests()
    assert [r["method"] for r in records] == ["POST", "GET"]
    assert [r["query_string"] for r in records] == ["", ""]
