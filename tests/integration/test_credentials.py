"""What the upstream receives instead of the client's token: nothing, a static secret, or a token
the gateway minted (RFC 9068, verifiable with the gateway's published keys)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from tests.conftest import GatewayFactory, Upstream
from tests.support.issuer import TestIssuer
from tests.support.mcp_client import session_client

RESOURCE = "http://127.0.0.1:8080/mcp"
UPSTREAM_AUDIENCE = "https://upstream.internal/mcp"


def upstream_auth(records: list[dict[str, Any]], name: str = "authorization") -> list[str]:
    return [value for record in records for key, value in record["headers"] if key.lower() == name]


def config(issuer: TestIssuer, upstream: Upstream, credential: str, extra: str = "") -> str:
    return f"""
        public_url: http://127.0.0.1:8080
        issuers: [{{issuer: {issuer.issuer}, algorithms: [RS256], jwks: {{discover: true}}}}]
        {extra}
        routes:
          - path: /mcp
            upstream: {upstream.mcp_url}
            scopes: [mcp:access]
            tools: {{"echo": [demo:read], "*": [demo:write]}}
            credential: {credential}
        """


async def call_echo(url: str, token: str, era: str = "2025") -> None:
    async with session_client(url, {"Authorization": f"Bearer {token}"}, era=era) as client:  # type: ignore[arg-type]
        result = await client.call_tool("echo", {"text": "hi"})
        assert result.content[0].text == "hi"  # type: ignore[union-attr]


async def test_static_credential_reaches_upstream_instead_of_client_token(
    issuer: TestIssuer,
    upstream: Upstream,
    start_gateway_with: GatewayFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The upstream gets the configured API key on every request and never the client's token."""
    monkeypatch.setenv("UPSTREAM_KEY", "upstream-api-key-123")
    gateway = await start_gateway_with(
        config(issuer, upstream, "{static: {header: X-Api-Key, value: {env: UPSTREAM_KEY}}}")
    )
    token = issuer.mint(audience=RESOURCE, scope="mcp:access demo:read")
    await call_echo(gateway.route_url(), token)
    records = await upstream.requests()
    assert records and upstream_auth(records, "x-api-key") == ["upstream-api-key-123"] * len(records)
    assert upstream_auth(records) == []
    assert token not in json.dumps(records)


@pytest.fixture
def signing_keys(tmp_path: Path) -> Path:
    for name in ("k1", "k2"):
        subprocess.run(
            [
                "openssl",
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                str(tmp_path / f"{name}.pem"),
            ],
            check=True,
        )
    return tmp_path


@pytest.mark.parametrize("era", ["2025", "2026"])
async def test_minted_token_verifies_against_the_gateway_jwks(
    era: str, issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory, signing_keys: Path
) -> None:
    """The upstream gets an at+jwt with sub = the user, act = the client, aud = the upstream,
    scope narrowed to the operation, verifiable with the JWKS the gateway publishes."""
    minting = (
        f"minting: {{keys: [{{kid: k2, alg: ES256, file: {signing_keys}/k2.pem}}, "
        f"{{kid: k1, alg: ES256, file: {signing_keys}/k1.pem}}]}}"
    )
    gateway = await start_gateway_with(
        config(issuer, upstream, f"{{minted: {{audience: {UPSTREAM_AUDIENCE}, ttl_s: 120}}}}", minting)
    )
    client_token = issuer.mint(
        audience=RESOURCE,
        scope="mcp:access demo:read demo:write other",
        subject="alice",
        client_id="claude-desktop",
    )
    await call_echo(gateway.route_url(), client_token, era)

    async with aiohttp.ClientSession() as http:
        async with http.get(
            gateway.url + "/.well-known/oauth-authorization-server/upstream-tokens"
        ) as response:
            metadata = await response.json()
        assert metadata["issuer"] == "http://127.0.0.1:8080/upstream-tokens"
        jwks_path = metadata["jwks_uri"].removeprefix("http://127.0.0.1:8080")
        async with http.get(gateway.url + jwks_path) as response:
            jwks = jwt.PyJWKSet.from_dict(await response.json())
    assert sorted((key.key_id for key in jwks.keys), key=str) == ["k1", "k2"]  # key_id: str | None

    records = await upstream.requests()
    call = next(r for r in records if '"tools/call"' in r["body"])
    [authorization] = upstream_auth([call])
    minted = authorization.removeprefix("Bearer ")
    assert minted != client_token and client_token not in json.dumps(records)
    header = jwt.get_unverified_header(minted)
    assert (header["typ"], header["kid"]) == ("at+jwt", "k2")
    claims = jwt.decode(
        minted,
        jwks[header["kid"]].key,
        algorithms=["ES256"],
        audience=UPSTREAM_AUDIENCE,
        issuer="http://127.0.0.1:8080/upstream-tokens",
    )
    assert claims["sub"] == "alice"
    assert claims["client_id"] == "claude-desktop"
    assert claims["act"] == {"sub": "claude-desktop"}
    assert claims["scope"] == "mcp:access demo:read"  # narrowed to what echo needs
    assert 0 < claims["exp"] - claims["iat"] <= 120
    # Every forwarded request carried a minted token, never the client's.
    assert all(
        value.startswith("Bearer ") and value != f"Bearer {client_token}" for value in upstream_auth(records)
    )


@pytest.mark.parametrize(("reuse", "same_token"), [("", True), (", reuse_s: 0", False)])
async def test_minted_token_reuse_as_the_upstream_sees_it(
    issuer: TestIssuer,
    upstream: Upstream,
    start_gateway_with: GatewayFactory,
    signing_keys: Path,
    reuse: str,
    same_token: bool,
) -> None:
    """By default one caller token's calls reach the upstream with one minted token (until
    `reuse_s` or half its life); another caller token gets its own; `reuse_s: 0`: one per call."""
    minting = f"minting: {{keys: [{{kid: k1, alg: ES256, file: {signing_keys}/k1.pem}}]}}"
    gateway = await start_gateway_with(
        config(issuer, upstream, f"{{minted: {{audience: {UPSTREAM_AUDIENCE}{reuse}}}}}", minting)
    )
    alice = issuer.mint(audience=RESOURCE, scope="mcp:access demo:read", subject="alice")
    bob = issuer.mint(audience=RESOURCE, scope="mcp:access demo:read", subject="bob")
    for token in (alice, alice, bob):
        await call_echo(gateway.route_url(), token, era="2026")
    calls = [r for r in await upstream.requests() if '"tools/call"' in r["body"]]
    first, second, third = (upstream_auth([call])[0] for call in calls)
    assert (first == second) is same_token
    assert third not in (first, second)
    subjects = [
        jwt.decode(t.removeprefix("Bearer "), options={"verify_signature": False})["sub"]
        for t in (first, third)
    ]
    assert subjects == ["alice", "bob"]


async def test_token_minted_by_the_gateway_is_refused_by_the_gateway(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory, signing_keys: Path
) -> None:
    """MCP: a server accepts only tokens for itself; a minted upstream token presented back is 401."""
    minting = f"minting: {{keys: [{{kid: k1, alg: ES256, file: {signing_keys}/k1.pem}}]}}"
    gateway = await start_gateway_with(
        config(issuer, upstream, f"{{minted: {{audience: {UPSTREAM_AUDIENCE}}}}}", minting)
    )
    await call_echo(gateway.route_url(), issuer.mint(audience=RESOURCE, scope="mcp:access demo:read"))
    minted = upstream_auth(await upstream.requests())[0].removeprefix("Bearer ")
    await upstream.clear()
    async with aiohttp.ClientSession() as http:
        async with http.post(
            gateway.route_url(),
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"Authorization": f"Bearer {minted}", "Accept": "application/json, text/event-stream"},
        ) as response:
            assert response.status == 401
    assert await upstream.requests() == []
