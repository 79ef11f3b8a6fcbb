"""The end-to-end authorization server itself: what later gateway features will rely on.

Client credentials for the confidential ``gateway`` client, refresh tokens, opaque tokens and
introspection (RFC 7662), and the RFC 8693 token exchange grant with its errors. One test
shows an exchanged token (with its ``act`` claim) going through the gateway.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.conftest import Gateway, Upstream
from tests.e2e.conftest import AuthorizationServer
from tests.e2e.oauth_support import REDIRECT_URI, HeadlessUser, jwt_parts, user_token
from tests.support.issuer import MINTED_TOKENS
from tests.support.mcp_client import session_client

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"

RESOURCE = "http://127.0.0.1:1/first/mcp"
OTHER_RESOURCE = "http://127.0.0.1:2/second/mcp"
OPAQUE_RESOURCE = "http://127.0.0.1:3/opaque/mcp"


async def register_public_client(
    authorization_server: AuthorizationServer, grant_types: list[str] | None = None
) -> str:
    """Dynamic registration (RFC 7591) of a public native client; returns its client_id."""
    registration: dict[str, Any] = {
        "redirect_uris": [REDIRECT_URI],
        "token_endpoint_auth_method": "none",
        "application_type": "native",
        "grant_types": grant_types or ["authorization_code"],
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(authorization_server.url("/reg"), json=registration) as response:
            assert response.status == 201, await response.text()
            client_id: str = (await response.json())["client_id"]
            return client_id


def basic_auth(client_id: str, secret: str) -> dict[str, str]:
    """RFC 6749 §2.3.1 client_secret_basic (form-encode both, then Basic)."""
    credentials = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return {"Authorization": "Basic " + base64.b64encode(credentials).decode()}


async def token_request(
    authorization_server: AuthorizationServer,
    form: dict[str, Any],
    *,
    auth: str = "basic",
    secret: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST the token endpoint as the ``gateway`` client (``auth``: basic, post or none)."""
    data = list(form.items())
    headers = {}
    secret = authorization_server.client_secret if secret is None else secret
    if auth == "basic":
        headers = basic_auth(authorization_server.client_id, secret)
    elif auth == "post":
        data += [("client_id", authorization_server.client_id), ("client_secret", secret)]
    async with aiohttp.ClientSession() as http:
        async with http.post(authorization_server.url("/token"), data=data, headers=headers) as response:
            body: dict[str, Any] = await response.json()
            if "access_token" in body:
                MINTED_TOKENS.append(body["access_token"])
            return response.status, body


def exchange_form(subject_token: str, **extra: Any) -> dict[str, Any]:
    return {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        **extra,
    }


async def introspect(
    authorization_server: AuthorizationServer,
    token: str,
    *,
    headers: dict[str, str] | None = None,
    client_id: str | None = None,
) -> tuple[int, Any]:
    """RFC 7662 introspection, authenticated with ``headers``, or as the public ``client_id``."""
    form = {"token": token, **({"client_id": client_id} if client_id else {})}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            authorization_server.url("/token/introspection"), data=form, headers=headers
        ) as response:
            return response.status, await response.json()


async def test_metadata(authorization_server: AuthorizationServer) -> None:
    """The AS metadata names its endpoints, S256 PKCE, `iss` in responses, and the grants and scopes used."""
    metadata = await authorization_server.metadata()
    assert metadata["issuer"] == authorization_server.issuer
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["registration_endpoint"] == authorization_server.url("/reg")
    assert metadata["introspection_endpoint"] == authorization_server.url("/token/introspection")
    assert metadata["authorization_response_iss_parameter_supported"] is True
    assert {"authorization_code", "refresh_token", "client_credentials", TOKEN_EXCHANGE} <= set(
        metadata["grant_types_supported"]
    )
    assert {"openid", "offline_access", "mcp:access", "demo:read", "demo:write"} <= set(
        metadata["scopes_supported"]
    )
    assert {"none", "client_secret_basic", "client_secret_post"} <= set(
        metadata["token_endpoint_auth_methods_supported"]
    )


async def test_public_clients_must_use_pkce(authorization_server: AuthorizationServer) -> None:
    """An authorization request from a public client without PKCE is refused as invalid_request."""
    client_id = await register_public_client(authorization_server)
    user = HeadlessUser()
    await user.redirect_handler(
        authorization_server.url(
            f"/auth?response_type=code&client_id={client_id}&scope=mcp:access&state=s1&resource={RESOURCE}"
            f"&redirect_uri={REDIRECT_URI}"
        )
    )
    assert user.authorizations[0].result["error"] == "invalid_request"
    assert "PKCE" in user.authorizations[0].result["error_description"]


async def test_refused_consent_goes_back_as_access_denied(authorization_server: AuthorizationServer) -> None:
    """A user who refuses consent is sent back with access_denied and the state, and no code."""
    client_id = await register_public_client(authorization_server)
    user = HeadlessUser(approve=False)
    await user.redirect_handler(
        authorization_server.url(
            f"/auth?response_type=code&client_id={client_id}&scope=mcp:access&state=s2&resource={RESOURCE}"
            f"&redirect_uri={REDIRECT_URI}&code_challenge={'a' * 43}&code_challenge_method=S256"
        )
    )
    [authorization] = user.authorizations
    assert [form["prompt"] for form in authorization.forms] == ["login", "consent"]
    assert authorization.result["error"] == "access_denied"
    assert authorization.result["state"] == "s2"
    assert "code" not in authorization.result


async def test_refresh_tokens_keep_the_resource_and_rotate(authorization_server: AuthorizationServer) -> None:
    """A refresh keeps the resource, subject and scopes, and rotates a public client's refresh token."""
    client_id, tokens = await user_token(
        authorization_server.issuer, RESOURCE, "mcp:access demo:read offline_access"
    )
    assert tokens["scope"] == "mcp:access demo:read"
    status, refreshed = await token_request(
        authorization_server,
        {
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": client_id,
            "resource": RESOURCE,
        },
        auth="none",
    )
    assert status == 200, refreshed
    assert refreshed["refresh_token"] != tokens["refresh_token"]  # public clients: rotated
    _, claims = jwt_parts(refreshed["access_token"])
    assert (claims["aud"], claims["sub"], claims["scope"]) == (RESOURCE, "alice", "mcp:access demo:read")


async def test_client_credentials_for_a_resource(authorization_server: AuthorizationServer) -> None:
    """Client credentials give an at+jwt for the resource, the client as subject, with the scopes asked."""
    status, body = await token_request(
        authorization_server,
        {"grant_type": "client_credentials", "resource": RESOURCE, "scope": "mcp:access demo:read"},
    )
    assert status == 200, body
    header, claims = jwt_parts(body["access_token"])
    assert header["typ"] == "at+jwt"
    assert claims["aud"] == RESOURCE
    assert claims["sub"] == claims["client_id"] == authorization_server.client_id
    assert claims["scope"] == "mcp:access demo:read"


async def test_opaque_tokens_and_introspection(authorization_server: AuthorizationServer) -> None:
    """Resources under /opaque get opaque tokens; a confidential client can introspect them."""
    client_id, tokens = await user_token(
        authorization_server.issuer, OPAQUE_RESOURCE, "mcp:access demo:write"
    )
    opaque = tokens["access_token"]
    assert opaque.count(".") == 0

    gateway = basic_auth(authorization_server.client_id, authorization_server.client_secret)
    status, info = await introspect(authorization_server, opaque, headers=gateway)
    assert status == 200
    assert info["active"] is True
    assert info["sub"] == "alice"
    assert info["client_id"] == client_id
    assert info["aud"] == OPAQUE_RESOURCE
    assert info["scope"] == "mcp:access demo:write"
    assert info["iss"] == authorization_server.issuer
    assert info["token_type"] == "Bearer"

    assert (await introspect(authorization_server, "not-a-token", headers=gateway)) == (
        200,
        {"active": False},
    )
    status, refused = await introspect(authorization_server, opaque)  # no client authentication
    assert (status, refused["error"]) == (400, "invalid_request"), refused
    wrong = basic_auth(authorization_server.client_id, "wrong")
    status, refused = await introspect(authorization_server, opaque, headers=wrong)
    assert (status, refused["error"]) == (401, "invalid_client"), refused
    # A public client (even the one the token was issued to) learns nothing (allowedPolicy).
    assert (await introspect(authorization_server, opaque, client_id=client_id)) == (200, {"active": False})

    # Revoked (RFC 7009) by the client it was issued to: inactive from then on.
    async with aiohttp.ClientSession() as http:
        form = {"token": opaque, "client_id": client_id}
        async with http.post(authorization_server.url("/token/revocation"), data=form) as response:
            assert response.status == 200, await response.text()
    assert (await introspect(authorization_server, opaque, headers=gateway)) == (200, {"active": False})


@pytest.mark.parametrize("auth", ["basic", "post"])
async def test_token_exchange(authorization_server: AuthorizationServer, auth: str) -> None:
    """The gateway client trades bob's token for one for another resource, acting for him."""
    _, subject = await user_token(authorization_server.issuer, RESOURCE, "mcp:access demo:read", login="bob")
    status, body = await token_request(
        authorization_server,
        exchange_form(subject["access_token"], audience=OTHER_RESOURCE, scope="demo:read"),
        auth=auth,
    )
    assert status == 200, body
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "demo:read"
    assert 0 < body["expires_in"] <= 600
    assert "refresh_token" not in body
    header, claims = jwt_parts(body["access_token"])
    assert header["typ"] == "at+jwt" and header["alg"] == "RS256"
    assert claims["iss"] == authorization_server.issuer
    assert claims["aud"] == OTHER_RESOURCE
    assert claims["sub"] == "bob"
    assert claims["act"] == {"sub": authorization_server.client_id}
    assert claims["client_id"] == authorization_server.client_id
    assert claims["scope"] == "demo:read"


async def test_token_exchange_defaults_and_nesting(authorization_server: AuthorizationServer) -> None:
    """``resource`` works like ``audience``; no scope means the subject's (within the target's);
    exchanging an exchanged token nests the earlier actor (RFC 8693 §4.1)."""
    _, subject = await user_token(authorization_server.issuer, RESOURCE, "mcp:access demo:read")
    status, first = await token_request(
        authorization_server, exchange_form(subject["access_token"], resource=OTHER_RESOURCE)
    )
    assert status == 200, first
    assert first["scope"] == "mcp:access demo:read"
    status, second = await token_request(
        authorization_server, exchange_form(first["access_token"], audience=RESOURCE)
    )
    assert status == 200, second
    _, claims = jwt_parts(second["access_token"])
    assert claims["sub"] == "alice"
    assert claims["aud"] == RESOURCE
    assert claims["act"] == {
        "sub": authorization_server.client_id,
        "act": {"sub": authorization_server.client_id},
    }


async def test_token_exchange_errors(authorization_server: AuthorizationServer) -> None:
    """RFC 8693 §2.2.2: an invalid or unacceptable subject_token is invalid_request, a target the
    server will not issue for is invalid_target; a scope beyond the subject's is invalid_scope."""
    _, subject = await user_token(authorization_server.issuer, RESOURCE, "mcp:access demo:read")
    token = subject["access_token"]
    head, payload, signature = token.split(".")
    tampered = f"{head}.{payload}.{signature[:-4]}AAAA"

    cases: list[tuple[dict[str, Any], str]] = [
        (exchange_form(tampered, audience=OTHER_RESOURCE), "invalid_request"),
        (exchange_form("opaque-and-unknown", audience=OTHER_RESOURCE), "invalid_request"),
        (
            {"grant_type": TOKEN_EXCHANGE, "subject_token": token, "audience": OTHER_RESOURCE},
            "invalid_request",
        ),
        (
            exchange_form(token, audience=OTHER_RESOURCE, subject_token_type="urn:x:unknown"),
            "invalid_request",
        ),
        (exchange_form(token, audience=OTHER_RESOURCE, scope="demo:write"), "invalid_scope"),
        (exchange_form(token, audience=OTHER_RESOURCE, scope="demo:read openid"), "invalid_scope"),
        (exchange_form(token), "invalid_target"),
        (exchange_form(token, audience="https://elsewhere.example/mcp"), "invalid_target"),
        (exchange_form(token, audience=OTHER_RESOURCE, resource=RESOURCE), "invalid_target"),
    ]
    for form, expected in cases:
        status, body = await token_request(authorization_server, form)
        assert (status, body.get("error")) == (400, expected), (form, body)

    status, body = await token_request(
        authorization_server, exchange_form(token, audience=OTHER_RESOURCE), secret="wrong"
    )
    assert (status, body["error"]) == (401, "invalid_client")


async def test_token_exchange_needs_a_confidential_client(authorization_server: AuthorizationServer) -> None:
    """A token exchange by a public client is refused as unauthorized_client."""
    _, subject = await user_token(authorization_server.issuer, RESOURCE, "mcp:access demo:read")
    public_id = await register_public_client(authorization_server, ["authorization_code", TOKEN_EXCHANGE])
    async with aiohttp.ClientSession() as http:
        form = {**exchange_form(subject["access_token"], audience=OTHER_RESOURCE), "client_id": public_id}
        async with http.post(authorization_server.url("/token"), data=form) as response:
            body = await response.json()
    assert (response.status, body["error"]) == (400, "unauthorized_client")


async def test_exchanged_token_is_accepted_by_the_gateway(
    authorization_server: AuthorizationServer, upstream: Upstream, start_public_gateway: Any
) -> None:
    """A token for one resource, exchanged for the gateway's route, carries ``act`` and works."""
    config = """
        listen: {host: 127.0.0.1, port: {port}}
        public_url: {public_url}
        issuers: [{issuer: ISSUER, algorithms: [RS256], jwks: {discover: true}}]
        routes:
          - path: /mcp
            upstream: UPSTREAM
            scopes: [mcp:access]
            tools: {"echo": [demo:read]}
        """
    gateway: Gateway = await start_public_gateway(
        config.replace("ISSUER", authorization_server.issuer).replace("UPSTREAM", upstream.mcp_url)
    )
    route = gateway.route_url("/mcp")
    _, subject = await user_token(authorization_server.issuer, RESOURCE, "mcp:access demo:read")
    status, body = await token_request(
        authorization_server, exchange_form(subject["access_token"], audience=route)
    )
    assert status == 200, body
    async with session_client(
        route, {"Authorization": f"Bearer {body['access_token']}"}, era="2025"
    ) as client:
        result = await client.call_tool("echo", {"text": "on behalf of alice"})
    assert result.structured_content == {"result": "on behalf of alice"}
    records = await upstream.requests()
    assert records and all(body["access_token"] not in str(record) for record in records)
