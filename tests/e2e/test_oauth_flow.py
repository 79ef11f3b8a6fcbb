"""The whole MCP authorization flow, end to end, through the gateway.

A real authorization server (oidc-provider, ``authorization_server/server.js``), the gateway
with ``public_url`` equal to its own address, the SDK fixture upstream behind it, and the
official SDK client (mcp 2.3.0) holding nothing but an ``OAuthClientProvider``: no token, no
client id, no endpoint. Everything is discovered from the gateway's 401.

Each step is proven from two sides: the SDK client's own HTTP requests (an httpx2 response
hook) and the authorization server's request log (``GET /__log``).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import aiohttp
import pytest

from tests.conftest import Gateway, Upstream
from tests.e2e.conftest import AuthorizationServer
from tests.e2e.oauth_support import REDIRECT_URI, OAuthSession, jwt_parts, oauth_client
from tests.support.challenge import parse_bearer_challenge
from tests.support.mcp_client import ProgressLog

GATEWAY_CONFIG = """
    listen: {host: 127.0.0.1, port: {port}}
    public_url: {public_url}
    issuers:
      - issuer: ISSUER
        algorithms: [RS256]
        jwks: {discover: true}
    routes:
      - path: /mcp
        upstream: UPSTREAM
        scopes: [mcp:access]
        tools:
          "echo": [demo:read]
          "slow_stream": [demo:write]
          "*": [demo:read]
    """

ERAS = ["2025", "2026"]


@pytest.fixture
async def gateway(
    authorization_server_log: AuthorizationServer, upstream: Upstream, start_public_gateway: Any
) -> Gateway:
    """The gateway in front of the SDK upstream, trusting the authorization server (discovered)."""
    config = GATEWAY_CONFIG.replace("ISSUER", authorization_server_log.issuer).replace(
        "UPSTREAM", upstream.mcp_url
    )
    started: Gateway = await start_public_gateway(config)
    # Only what the client does from here on (the gateway's own discovery is not part of it).
    await authorization_server_log.clear_log()
    return started


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def http_records(log: list[dict[str, Any]], route: str) -> list[dict[str, Any]]:
    return [record for record in log if record.get("route") == route]


async def assert_upstream_never_saw(upstream: Upstream, session: OAuthSession) -> None:
    """No request reached the upstream with an Authorization header or any of the client's tokens."""
    records = await upstream.requests()
    assert records, "the upstream received nothing"
    for record in records:
        assert all(name.lower() != "authorization" for name, _ in record["headers"]), record
    everything = json.dumps(records)
    for token in session.storage.access_tokens:
        assert token not in everything
        assert token.rsplit(".", 1)[-1] not in everything  # not even the signature


@pytest.mark.parametrize("era", ERAS)
async def test_sdk_client_discovers_registers_and_authorizes_through_the_gateway(
    era: str, gateway: Gateway, authorization_server_log: AuthorizationServer, upstream: Upstream
) -> None:
    """401 → protected resource metadata → AS metadata → registration → authorization code with
    PKCE S256 and resource=<route> → token (aud = the route) → the MCP call is retried and works."""
    authorization_server = authorization_server_log
    route = gateway.route_url("/mcp")
    prm_url = gateway.url + "/.well-known/oauth-protected-resource/mcp"

    async with oauth_client(route, era=era) as session:  # type: ignore[arg-type]
        # 2025: connecting already sent initialize (and hit the 401); 2026 sends nothing until now.
        listed = await session.client.list_tools()
        wire = list(session.wire.records)

        # -- what the SDK client sent, in order, until its first MCP request succeeded --------
        first_ok = next(i for i, record in enumerate(wire) if record.url == route and record.status < 300)
        assert [(record.method, record.url, record.status) for record in wire[: first_ok + 1]] == [
            ("POST", route, 401),
            ("GET", prm_url, 200),
            ("GET", authorization_server.url("/.well-known/oauth-authorization-server"), 200),
            ("POST", authorization_server.url("/reg"), 201),
            ("POST", authorization_server.url("/token"), 200),
            ("POST", route, 200),
        ]
        challenge = parse_bearer_challenge(wire[0].www_authenticate or "")
        assert challenge == {"scope": "mcp:access", "resource_metadata": prm_url}
        async with aiohttp.ClientSession() as http, http.get(prm_url) as response:
            assert await response.json() == {  # what the SDK read: RFC 9728, resource = the route
                "resource": route,
                "authorization_servers": [authorization_server.issuer],
                "scopes_supported": ["mcp:access", "demo:read", "demo:write"],
                "bearer_methods_supported": ["header"],
                "dpop_signing_alg_values_supported": ["RS256"],  # dpop: allowed by default
                "resource_name": "/mcp",
            }
        assert "authorization" not in wire[0].request_headers
        assert wire[first_ok].request_headers["authorization"] == f"Bearer {session.storage.access_tokens[0]}"

        # -- what the authorization server saw --------------------------------------------------
        log = await authorization_server.log()
        [registration] = http_records(log, "registration")
        assert registration["status"] == 201
        assert registration["body"]["token_endpoint_auth_method"] == "none"
        assert registration["body"]["redirect_uris"] == [REDIRECT_URI]
        assert set(registration["body"]["grant_types"]) == {"authorization_code", "refresh_token"}
        client_id = registration["client_id"]
        assert session.storage.client_info is not None and session.storage.client_info.client_id == client_id

        [authorization] = http_records(log, "authorization")
        query = authorization["query"]
        assert query["response_type"] == "code"
        assert query["client_id"] == client_id
        assert query["redirect_uri"] == REDIRECT_URI
        assert query["code_challenge_method"] == "S256"
        assert query["resource"] == route
        assert query["scope"].split() == ["mcp:access", "offline_access"]  # the challenge, + refresh

        # the user: sign in (alice), then consent, then back to the redirect URI with code + iss
        interactions = [
            record for record in log if record["kind"] == "interaction" and record["method"] == "POST"
        ]
        assert [(record["prompt"], record["form"]) for record in interactions] == [
            ("login", {"prompt": "login", "login": "alice"}),
            ("consent", {"prompt": "consent", "decision": "approve"}),
        ]
        [back] = [record for record in log if record.get("location", "").startswith(REDIRECT_URI)]
        assert back["location_params"]["state"] == query["state"]
        assert back["location_params"]["iss"] == authorization_server.issuer

        [token_request] = http_records(log, "token")
        params = token_request["params"]
        assert params["grant_type"] == "authorization_code"
        assert params["code"] == back["location_params"]["code"]
        assert params["client_id"] == client_id
        assert params["resource"] == route
        assert s256(params["code_verifier"]) == query["code_challenge"]  # PKCE S256, checked here too
        assert token_request["status"] == 200
        assert token_request["token"]["refresh_token"] is True

        # -- the token the client holds: an RFC 9068 JWT for exactly this route ------------------
        header, claims = jwt_parts(session.storage.access_tokens[0])
        assert header["typ"] == "at+jwt" and header["alg"] == "RS256"
        assert claims["aud"] == route
        assert claims["iss"] == authorization_server.issuer
        assert claims["sub"] == "alice"
        assert claims["client_id"] == client_id
        assert claims["scope"] == "mcp:access"
        assert token_request["token"]["claims"] == claims  # the AS issued exactly what the client uses

        # mcp:access alone may list, and sees every tool a rule allows (list_visibility: step_up),
        # though each needs demo:read or demo:write: calling one gets the step-up challenge
        assert {"echo", "slow_stream"} <= {tool.name for tool in listed.tools}

        # -- a call that needs demo:read: 403, re-authorization, retried, answered -------------
        result = await session.client.call_tool("echo", {"text": "hello through the gateway"})
        assert not result.is_error
        assert result.structured_content == {"result": "hello through the gateway"}
        assert [token.scope for token in session.storage.history] == ["mcp:access", "mcp:access demo:read"]

    await assert_upstream_never_saw(upstream, session)


@pytest.mark.parametrize("era", ERAS)
async def test_step_up_to_the_scope_named_in_the_challenge(
    era: str, gateway: Gateway, authorization_server_log: AuthorizationServer, upstream: Upstream
) -> None:
    """slow_stream needs demo:write: 403 insufficient_scope with scope="mcp:access demo:write
    demo:read" (what the call needs, then what the client holds that the route uses);
    the SDK client (SEP-2350 step-up) re-authorizes for the union of what it had and what the
    challenge names, without discovering or registering again, and the retried call succeeds."""
    authorization_server = authorization_server_log
    route = gateway.route_url("/mcp")
    prm_url = gateway.url + "/.well-known/oauth-protected-resource/mcp"

    async with oauth_client(route, era=era) as session:  # type: ignore[arg-type]
        await session.client.list_tools()
        await session.client.call_tool("echo", {"text": "read first"})
        assert session.storage.tokens is not None
        assert session.storage.tokens.scope == "mcp:access demo:read"
        await authorization_server.clear_log()
        before = len(session.wire.records)

        progress = ProgressLog()
        result = await session.client.call_tool(
            "slow_stream", {"count": 3, "delay_ms": 1}, progress_callback=progress
        )
        assert result.structured_content == {"result": "done 3"}
        assert progress.values == [1, 2, 3]

        # the client's side: 403 with the step-up challenge, a token request, the retry
        wire = session.wire.records[before:]
        denied = next(i for i, record in enumerate(wire) if record.status == 403)
        assert [(record.method, record.url, record.status) for record in wire[denied : denied + 3]] == [
            ("POST", route, 403),
            ("POST", authorization_server.url("/token"), 200),
            ("POST", route, 200),
        ]
        assert parse_bearer_challenge(wire[denied].www_authenticate or "") == {
            "error": "insufficient_scope",
            "scope": "mcp:access demo:write demo:read",
            "resource_metadata": prm_url,
        }
        assert all("/.well-known/" not in record.url and not record.url.endswith("/reg") for record in wire)

        # the authorization server's side: one authorization for the union, consent only
        log = await authorization_server.log()
        [authorization] = http_records(log, "authorization")
        assert authorization["query"]["scope"].split() == [
            "mcp:access",
            "offline_access",
            "demo:read",
            "demo:write",
        ]
        assert authorization["query"]["resource"] == route
        assert authorization["query"]["code_challenge_method"] == "S256"
        consent = [record for record in log if record["kind"] == "interaction" and record["method"] == "GET"]
        assert [(record["prompt"], record["details"]) for record in consent] == [
            (
                "consent",
                {"missingOIDCScope": ["demo:write"], "missingResourceScopes": {route: ["demo:write"]}},
            )
        ]
        assert not http_records(log, "registration")

        header, claims = jwt_parts(session.storage.access_tokens[-1])
        assert header["typ"] == "at+jwt"
        assert claims["aud"] == route
        assert claims["scope"] == "mcp:access demo:read demo:write"
        assert (
            wire[denied + 2].request_headers["authorization"] == f"Bearer {session.storage.access_tokens[-1]}"
        )

        # what was granted before is kept: echo still works with the new token, no new authorization
        await session.client.call_tool("echo", {"text": "still allowed"})
        assert len(session.user.authorizations) == 3

    await assert_upstream_never_saw(upstream, session)


async def test_2026_first_call_gets_a_token_good_enough_for_it(
    gateway: Gateway, authorization_server_log: AuthorizationServer, upstream: Upstream
) -> None:
    """In the 2026-07-28 era the first thing on the wire may be ``tools/call echo``. Its
    ``Mcp-Method``/``Mcp-Name`` headers name the operation, so the gateway's 401 asks for what
    echo needs (a hint for the challenge only; the decision is still taken on the body), the
    client authorizes once for ``mcp:access demo:read``, and the call succeeds: no 403, no
    second authorization. (With SDK 2.3.0, a 401 naming only the route scope made this first
    call fail, since the SDK steps up only on the first response to a request.)
    """
    route = gateway.route_url("/mcp")
    async with oauth_client(route, era="2026") as session:
        result = await session.client.call_tool("echo", {"text": "first try"})
        assert result.structured_content == {"result": "first try"}
        assert [(record.method, record.url, record.status) for record in session.wire.records][:6] == [
            ("POST", route, 401),
            ("GET", gateway.url + "/.well-known/oauth-protected-resource/mcp", 200),
            ("GET", authorization_server_log.url("/.well-known/oauth-authorization-server"), 200),
            ("POST", authorization_server_log.url("/reg"), 201),
            ("POST", authorization_server_log.url("/token"), 200),
            ("POST", route, 200),
        ]
        assert len(session.user.authorizations) == 1
        assert [token.scope for token in session.storage.history] == ["mcp:access demo:read"]

    await assert_upstream_never_saw(upstream, session)
