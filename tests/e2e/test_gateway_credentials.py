"""The gateway as an OAuth client of the real authorization server: it exchanges the user's token
for one meant for the upstream (RFC 8693), and checks opaque tokens by introspection (RFC 7662)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import Gateway, Upstream
from tests.e2e.conftest import AuthorizationServer
from tests.e2e.oauth_support import jwt_parts, user_token
from tests.support.issuer import MINTED_TOKENS
from tests.support.mcp_client import session_client

UPSTREAM_RESOURCE = "http://127.0.0.1:9/upstream/mcp"  # what the upstream calls itself (never dialled)


def authorizations(records: list[dict[str, Any]]) -> list[str]:
    return [value for record in records for key, value in record["headers"] if key.lower() == "authorization"]


async def test_upstream_gets_the_exchanged_token_for_its_own_audience(
    authorization_server: AuthorizationServer,
    upstream: Upstream,
    start_public_gateway: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """token_exchange credential: the upstream receives the AS's token with aud = the upstream,
    sub = the user, act = the gateway client, scope = what the operation needs; never the user's token."""
    monkeypatch.setenv("E2E_GATEWAY_SECRET", authorization_server.client_secret)
    config = f"""
        listen: {{host: 127.0.0.1, port: {{port}}}}
        public_url: {{public_url}}
        issuers: [{{issuer: {authorization_server.issuer}, algorithms: [RS256], jwks: {{discover: true}}}}]
        routes:
          - path: /mcp
            upstream: {upstream.mcp_url}
            scopes: [mcp:access]
            tools: {{"echo": [demo:read], "*": [demo:write]}}
            credential:
              token_exchange:
                token_endpoint: {authorization_server.url("/token")}
                client_id: {authorization_server.client_id}
                client_secret: {{env: E2E_GATEWAY_SECRET}}
                audience: {UPSTREAM_RESOURCE}
        """
    gateway: Gateway = await start_public_gateway(config)
    route = gateway.route_url("/mcp")
    _, tokens = await user_token(authorization_server.issuer, route, "mcp:access demo:read demo:write")
    user = tokens["access_token"]
    MINTED_TOKENS.append(user)
    async with session_client(route, {"Authorization": f"Bearer {user}"}, era="2026") as client:
        first = await client.call_tool("echo", {"text": "one"})
        second = await client.call_tool("echo", {"text": "two"})
    assert [first.structured_content, second.structured_content] == [{"result": "one"}, {"result": "two"}]

    records = await upstream.requests()
    calls = [r for r in records if '"tools/call"' in r["body"]]
    assert len(calls) == 2
    exchanged = {value.removeprefix("Bearer ") for value in authorizations(calls)}
    assert len(exchanged) == 1  # one exchange, cached for the second call
    [token] = exchanged
    MINTED_TOKENS.append(token)
    header, claims = jwt_parts(token)
    assert header["typ"] == "at+jwt"
    assert claims["iss"] == authorization_server.issuer
    assert claims["aud"] == UPSTREAM_RESOURCE
    assert claims["sub"] == "alice"
    assert claims["act"] == {"sub": authorization_server.client_id}
    assert set(claims["scope"].split()) == {"mcp:access", "demo:read"}  # narrowed to echo
    assert user not in json.dumps(records)
    exchanges = [
        entry
        for entry in await authorization_server.log()
        if entry.get("path") == "/token"
        and "token-exchange" in json.dumps(entry)
        and entry.get("params", {}).get("subject_token") == user  # the log is shared by the session
    ]
    # One exchange per scope set (cached per token, audience and scope): the two echo calls share
    # one; the tools/list the SDK sends by itself needs only the route scope, so it gets its own.
    scopes = sorted(entry["params"]["scope"] for entry in exchanges)
    assert scopes == ["demo:read mcp:access", "mcp:access"], scopes


async def test_opaque_tokens_are_checked_by_introspection(
    authorization_server: AuthorizationServer,
    upstream: Upstream,
    start_public_gateway: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An introspection issuer: the AS's opaque token works; a revoked one is refused (401)."""
    monkeypatch.setenv("E2E_GATEWAY_SECRET", authorization_server.client_secret)
    config = f"""
        listen: {{host: 127.0.0.1, port: {{port}}}}
        public_url: {{public_url}}
        issuers:
          - issuer: {authorization_server.issuer}
            introspection:
              endpoint: {authorization_server.url("/token/introspection")}
              client_id: {authorization_server.client_id}
              client_secret: {{env: E2E_GATEWAY_SECRET}}
              cache_max_s: 0
        routes:
          - path: /opaque/mcp
            upstream: {upstream.mcp_url}
            scopes: [mcp:access]
            tools: {{"echo": [demo:read]}}
        """
    gateway: Gateway = await start_public_gateway(config)
    route = gateway.route_url("/opaque/mcp")
    client_id, tokens = await user_token(authorization_server.issuer, route, "mcp:access demo:read")
    opaque = tokens["access_token"]
    assert opaque.count(".") == 0  # the AS issues opaque tokens for /opaque resources
    MINTED_TOKENS.append(opaque)
    async with session_client(route, {"Authorization": f"Bearer {opaque}"}, era="2025") as client:
        result = await client.call_tool("echo", {"text": "opaque"})
    assert result.structured_content == {"result": "opaque"}
    assert opaque not in json.dumps(await upstream.requests())

    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.post(
            authorization_server.url("/token/revocation"), data={"token": opaque, "client_id": client_id}
        ) as response:
            assert response.status == 200
        await upstream.clear()
        async with http.post(
            route,
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"Authorization": f"Bearer {opaque}", "Accept": "application/json, text/event-stream"},
        ) as response:
            assert response.status == 401
            assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert await upstream.requests() == []
