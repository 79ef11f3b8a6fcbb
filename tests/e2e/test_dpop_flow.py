"""DPoP (RFC 9449) end to end: a real authorization server binds the token, the gateway checks it.

oidc-provider (``authorization_server/server.js``, DPoP feature on) issues a DPoP-bound token
(``token_type: DPoP``, ``cnf.jkt``) to a client that sent a proof with its token request; the
client here is the project's own (pyjwt + cryptography, ``tests/support/dpop.py``). It uses
client credentials with the AS's confidential client: the one grant that needs no browser, and
the binding oidc-provider applies is the same for every grant (``applyDpopBinding``). Then the
client calls tools through the gateway, one fresh proof per request, on a ``dpop: allowed`` and a
``dpop: required`` route, in both protocol eras.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.conftest import Gateway, Upstream
from tests.e2e.conftest import AuthorizationServer
from tests.e2e.oauth_support import assert_upstream_never_saw_tokens, jwt_parts
from tests.e2e.test_authorization_server import basic_auth
from tests.integration.test_authentication import INITIALIZE
from tests.integration.test_dpop import (
    MCP,
    Answer,
    dpop_challenge_of,
    dpop_headers,
    modern_call,
    post,
    upstream_saw_no_dpop,
)
from tests.support.dpop import ProofKey

GATEWAY_CONFIG = """
    listen: {host: 127.0.0.1, port: {port}}
    public_url: {public_url}
    issuers:
      - issuer: ISSUER
        # RS256 for the AS's access tokens, ES256 for the client's proofs (the pinned DPoP algs).
        algorithms: [RS256, ES256]
        jwks: {discover: true}
    routes:
      - path: /mcp
        upstream: UPSTREAM
        scopes: [mcp:access]
        tools: {"*": [demo:read]}
      - path: /strict
        upstream: UPSTREAM
        scopes: [mcp:access]
        tools: {"*": [demo:read]}
        dpop: required
    """

ROUTES = ["/mcp", "/strict"]  # dpop: allowed (the default), dpop: required
KEY = ProofKey.generate("ES256")  # oidc-provider's default DPoP algs: ES256, Ed25519, EdDSA
OTHER = ProofKey.generate("ES256")


@pytest.fixture
async def gateway(
    authorization_server: AuthorizationServer, upstream: Upstream, start_public_gateway: Any
) -> Gateway:
    """The gateway in front of the SDK upstream, trusting the authorization server (discovered)."""
    config = GATEWAY_CONFIG.replace("ISSUER", authorization_server.issuer).replace(
        "UPSTREAM", upstream.mcp_url
    )
    started: Gateway = await start_public_gateway(config)
    return started


@dataclass(frozen=True)
class BoundToken:
    """What the token endpoint answered to a request that carried a DPoP proof."""

    access_token: str
    token_type: str
    claims: dict[str, Any]


async def dpop_token(authorization_server: AuthorizationServer, resource: str, key: ProofKey) -> BoundToken:
    """Client credentials for ``resource`` with a DPoP proof of ``key`` for the token endpoint
    (RFC 9449 §5: ``htm`` POST, ``htu`` the endpoint, no ``ath``)."""
    endpoint = (await authorization_server.metadata())["token_endpoint"]
    form = {"grant_type": "client_credentials", "resource": resource, "scope": "mcp:access demo:read"}
    headers = {
        **basic_auth(authorization_server.client_id, authorization_server.client_secret),
        "DPoP": key.proof("POST", endpoint, None),
    }
    async with aiohttp.ClientSession() as http, http.post(endpoint, data=form, headers=headers) as response:
        body = await response.json()
        assert response.status == 200, body
    _header, claims = jwt_parts(body["access_token"])
    return BoundToken(body["access_token"], body["token_type"], claims)


async def call_2026(gateway: Gateway, route: str, token: str, proof: str, scheme: str = "DPoP") -> Answer:
    """A stateless 2026-07-28 tools/call add(1, 2) on ``route``."""
    body, headers = modern_call("add", {"a": 1, "b": 2})
    auth = {"Authorization": f"{scheme} {token}", "DPoP": proof}
    return await post(gateway.route_url(route), body, {**headers, **auth})


@pytest.mark.parametrize("route", ROUTES)
async def test_the_authorization_server_binds_the_token_to_the_proof_key(
    authorization_server: AuthorizationServer, gateway: Gateway, route: str
) -> None:
    """A token request with a proof gets ``token_type: DPoP`` and ``cnf.jkt`` = the key's RFC 7638
    thumbprint (computed by the test, not by either server), for the route's resource."""
    bound = await dpop_token(authorization_server, gateway.route_url(route), KEY)
    assert bound.token_type == "DPoP"
    assert bound.claims["cnf"] == {"jkt": KEY.jkt}
    assert bound.claims["aud"] == gateway.route_url(route)


@pytest.mark.parametrize("route", ROUTES)
async def test_a_bound_token_calls_a_tool_in_the_2026_era(
    authorization_server: AuthorizationServer, gateway: Gateway, upstream: Upstream, route: str
) -> None:
    """2026-07-28, no session: two tools/calls, each with a fresh proof (``ath`` of the token,
    ``htu`` the route's public URL), are answered; the upstream saw no DPoP header and no token."""
    bound = await dpop_token(authorization_server, gateway.route_url(route), KEY)
    for _ in range(2):  # a second request needs its own proof (its jti is new)
        proof = KEY.proof("POST", gateway.route_url(route), bound.access_token)
        answer = await call_2026(gateway, route, bound.access_token, proof)
        assert answer.status == 200, answer.message
        assert answer.message["result"]["content"][0]["text"] == "3"
    records = await upstream.requests()
    assert len(records) == 2 and upstream_saw_no_dpop(records, bound.access_token)
    await assert_upstream_never_saw_tokens(upstream, [bound.access_token])  # nor its signature


@pytest.mark.parametrize("route", ROUTES)
async def test_a_bound_token_calls_a_tool_in_a_2025_session(
    authorization_server: AuthorizationServer, gateway: Gateway, upstream: Upstream, route: str
) -> None:
    """2025-11-25: initialize, notifications/initialized and tools/call in the session, each with
    a fresh proof; the upstream saw three requests, none with a DPoP header or the token."""
    bound = await dpop_token(authorization_server, gateway.route_url(route), KEY)
    url = gateway.route_url(route)

    def auth() -> dict[str, Any]:
        return dpop_headers(bound.access_token, KEY.proof("POST", url, bound.access_token))

    answer = await post(url, json.dumps(INITIALIZE).encode(), {**MCP, **auth()})
    assert answer.status == 200, answer.message
    session = {
        **MCP,
        "Mcp-Session-Id": answer.headers["Mcp-Session-Id"],
        "MCP-Protocol-Version": "2025-11-25",
    }
    initialized = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode()
    assert (await post(url, initialized, {**session, **auth()})).status == 202
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "add", "arguments": {"a": 2, "b": 2}},
    }
    answer = await post(url, json.dumps(call).encode(), {**session, **auth()})
    assert answer.status == 200, answer.message
    assert answer.message["result"]["content"][0]["text"] == "4"
    records = await upstream.requests()
    assert len(records) == 3 and upstream_saw_no_dpop(records, bound.access_token)
    await assert_upstream_never_saw_tokens(upstream, [bound.access_token])  # nor its signature


@pytest.mark.parametrize("route", ROUTES)
async def test_the_bound_token_as_bearer_is_refused(
    authorization_server: AuthorizationServer, gateway: Gateway, upstream: Upstream, route: str
) -> None:
    """The same AS-issued token sent as ``Bearer`` (even with a valid proof beside it) is 401 with
    the DPoP challenge; the upstream heard nothing."""
    bound = await dpop_token(authorization_server, gateway.route_url(route), KEY)
    proof = KEY.proof("POST", gateway.route_url(route), bound.access_token)
    answer = await call_2026(gateway, route, bound.access_token, proof, scheme="Bearer")
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"].startswith("DPoP ")
    assert await upstream.requests() == []


@pytest.mark.parametrize("route", ROUTES)
async def test_a_proof_from_another_key_is_refused(
    authorization_server: AuthorizationServer, gateway: Gateway, upstream: Upstream, route: str
) -> None:
    """A well-formed proof for the right request, but by a key other than the token's ``cnf.jkt``,
    is 401 ``WWW-Authenticate: DPoP error="invalid_dpop_proof"``; the upstream heard nothing."""
    bound = await dpop_token(authorization_server, gateway.route_url(route), KEY)
    proof = OTHER.proof("POST", gateway.route_url(route), bound.access_token)
    answer = await call_2026(gateway, route, bound.access_token, proof)
    assert answer.status == 401
    dpop, _bearer = dpop_challenge_of(answer.headers["WWW-Authenticate"])
    assert dpop["error"] == "invalid_dpop_proof"
    assert await upstream.requests() == []
