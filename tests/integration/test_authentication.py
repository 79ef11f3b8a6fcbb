"""Every bad token is turned away with the right challenge, and the upstream hears nothing."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from multidict import CIMultiDict

from tests.conftest import Gateway, GatewayFactory, Upstream, single_route_config
from tests.support.challenge import parse_bearer_challenge
from tests.support.issuer import SigningKey, TestIssuer

RESOURCE = "http://127.0.0.1:8080/mcp"
PRM_URL = "http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp"
INITIALIZE: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "0"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()), b64url(signature)]
    )


def claims_for(issuer: TestIssuer, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": issuer.issuer,
        "sub": "u",
        "aud": RESOURCE,
        "iat": now,
        "exp": now + 300,
        "scope": "mcp:access",
    }
    claims.update(overrides)
    return claims


def hs256_with_public_key(issuer: TestIssuer) -> str:
    """Algorithm confusion: HMAC keyed with the issuer's public RSA key PEM."""
    pem = issuer.active.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "at+jwt", "kid": issuer.active.kid}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims_for(issuer)).encode())}"
    import hashlib
    import hmac

    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def bad_signature(issuer: TestIssuer) -> str:
    token = issuer.mint(audience=RESOURCE)
    head, body, _sig = token.split(".")
    other = issuer.mint(audience=RESOURCE, subject="someone-else").split(".")[2]
    return f"{head}.{body}.{other}"


def foreign_key(issuer: TestIssuer) -> str:
    stranger = SigningKey.generate(kid=issuer.active.kid)  # same kid, key not published
    return issuer.mint(audience=RESOURCE, key=stranger)


# (case id, token factory, whether the challenge carries error="invalid_token")
BAD_TOKENS: list[tuple[str, Callable[[TestIssuer], str]]] = [
    ("malformed", lambda i: "not-a-jwt"),
    ("two_segments", lambda i: "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1In0"),
    ("garbage_base64", lambda i: "e!!.e!!.e!!"),
    ("bad_signature", bad_signature),
    ("alg_none", lambda i: unsigned({"alg": "none", "typ": "at+jwt"}, claims_for(i))),
    ("hs256_with_rsa_public_key", hs256_with_public_key),
    ("unknown_kid", lambda i: i.mint(audience=RESOURCE, key=SigningKey.generate(kid="nobody-knows-me"))),
    ("foreign_key_known_kid", foreign_key),
    ("expired", lambda i: i.mint(audience=RESOURCE, claims={"exp": int(time.time()) - 60})),
    ("not_yet_valid", lambda i: i.mint(audience=RESOURCE, claims={"nbf": int(time.time()) + 600})),
    ("issued_in_future", lambda i: i.mint(audience=RESOURCE, claims={"iat": int(time.time()) + 600})),
    ("missing_exp", lambda i: i.mint(audience=RESOURCE, drop=("exp",))),
    ("wrong_issuer", lambda i: i.mint(audience=RESOURCE, claims={"iss": i.issuer + "/other"})),
    ("issuer_trailing_slash", lambda i: i.mint(audience=RESOURCE, claims={"iss": i.issuer + "/"})),
    ("wrong_audience", lambda i: i.mint(audience="http://127.0.0.1:8080/other")),
    ("audience_path_case", lambda i: i.mint(audience="http://127.0.0.1:8080/MCP")),
    ("missing_audience", lambda i: i.mint(audience=None)),
    ("id_token_typ", lambda i: i.mint(audience=RESOURCE, headers={"typ": "JWT"})),
    ("jku_header", lambda i: i.mint(audience=RESOURCE, headers={"jku": "http://127.0.0.1:1/jwks"})),
    ("missing_sub", lambda i: i.mint(audience=RESOURCE, drop=("sub",))),
    ("duplicate_claim_keys", lambda i: _with_duplicate_iss(i)),
]


def _with_duplicate_iss(issuer: TestIssuer) -> str:
    header = b64url(json.dumps({"alg": "RS256", "typ": "at+jwt", "kid": issuer.active.kid}).encode())
    claims = json.dumps(claims_for(issuer))[:-1] + ', "iss": "https://evil.example"}'
    signing_input = f"{header}.{b64url(claims.encode())}"
    signature = jwt.get_algorithm_by_name("RS256").sign(signing_input.encode(), issuer.active.private)
    return f"{signing_input}.{b64url(signature)}"


async def post(
    gateway: Gateway, headers: dict[str, str], *, path: str = "/mcp", query: str = ""
) -> tuple[int, CIMultiDict[str], Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            gateway.route_url(path) + query, json=INITIALIZE, headers={**MCP_HEADERS, **headers}
        ) as response,
    ):
        body = await response.read()
        is_json = response.content_type == "application/json"
        return response.status, response.headers.copy(), json.loads(body) if body and is_json else body


@pytest.fixture
async def gateway(issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory) -> Gateway:
    return await start_gateway_with(single_route_config(issuer, upstream.mcp_url))


async def test_no_token_gets_401_with_resource_metadata_and_scope(
    gateway: Gateway, upstream: Upstream
) -> None:
    """No token: 401, a challenge naming the metadata URL and scope, no error param (RFC 6750 §3.1)."""
    status, headers, body = await post(gateway, {})
    assert status == 401
    challenge = parse_bearer_challenge(headers["WWW-Authenticate"])
    assert challenge == {"resource_metadata": PRM_URL, "scope": "mcp:access"}
    assert body["error"]["code"] == -32001 and body["id"] == None  # noqa: E711
    assert await upstream.requests() == []


@pytest.mark.parametrize(("case", "make_token"), BAD_TOKENS, ids=[case for case, _ in BAD_TOKENS])
async def test_bad_token_gets_401_invalid_token(
    case: str,
    make_token: Callable[[TestIssuer], str],
    issuer: TestIssuer,
    gateway: Gateway,
    upstream: Upstream,
) -> None:
    """Each kind of bad token: 401 error="invalid_token" with resource_metadata; nothing forwarded."""
    status, headers, _ = await post(gateway, {"Authorization": f"Bearer {make_token(issuer)}"})
    assert status == 401, case
    challenge = parse_bearer_challenge(headers["WWW-Authenticate"])
    assert challenge["error"] == "invalid_token"
    assert challenge["resource_metadata"] == PRM_URL
    assert "error_description" not in challenge
    assert await upstream.requests() == []


async def test_token_in_query_string_is_refused(
    issuer: TestIssuer, gateway: Gateway, upstream: Upstream, gateway_logs: Any
) -> None:
    """A valid token in the query string alone gets 401 as if absent, and is never logged."""
    token = issuer.mint(audience=RESOURCE)
    status, headers, _ = await post(gateway, {}, query=f"?access_token={token}")
    assert status == 401
    assert "error" not in parse_bearer_challenge(headers["WWW-Authenticate"])
    status, headers, _ = await post(
        gateway, {"Authorization": f"Bearer {token}"}, query=f"?access_token={token}"
    )
    assert status == 400
    assert parse_bearer_challenge(headers["WWW-Authenticate"])["error"] == "invalid_request"
    assert await upstream.requests() == []
    assert token not in gateway_logs.getvalue()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Authorization": "Bearer"}, 400),
        ({"Authorization": "Bearer    "}, 400),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401),
    ],
    ids=["empty_bearer", "blank_bearer", "basic_scheme"],
)
async def test_malformed_authorization_header(
    headers: dict[str, str], status: int, gateway: Gateway, upstream: Upstream
) -> None:
    """Empty Bearer → 400 invalid_request; a non-Bearer scheme → 401 without error."""
    got, response_headers, _ = await post(gateway, headers)
    assert got == status
    challenge = parse_bearer_challenge(response_headers["WWW-Authenticate"])
    assert challenge.get("error") == ("invalid_request" if status == 400 else None)
    assert await upstream.requests() == []


async def test_duplicate_authorization_headers_are_refused(
    issuer: TestIssuer, gateway: Gateway, upstream: Upstream
) -> None:
    """Two Authorization headers: 400 invalid_request, never forwarded."""
    token = issuer.mint(audience=RESOURCE)
    from multidict import CIMultiDict

    headers = CIMultiDict(MCP_HEADERS)
    headers.add("Authorization", f"Bearer {token}")
    headers.add("Authorization", f"Bearer {token}")
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.route_url(), json=INITIALIZE, headers=headers) as response,
    ):
        assert response.status == 400
    assert await upstream.requests() == []


async def test_lowercase_scheme_and_valid_token_pass(
    issuer: TestIssuer, gateway: Gateway, upstream: Upstream
) -> None:
    """The auth scheme is case-insensitive (RFC 9110 §11.1); the request reaches the upstream."""
    status, _, body = await post(gateway, {"Authorization": f"bearer {issuer.mint(audience=RESOURCE)}"})
    assert status == 200, body
    assert len(await upstream.requests()) == 1


async def test_uppercase_scheme_and_host_in_audience_accepted(issuer: TestIssuer, gateway: Gateway) -> None:
    """MCP canonical URI: an uppercase scheme and host in `aud` still match."""
    token = issuer.mint(audience="HTTP://127.0.0.1:8080/mcp")
    status, _, _ = await post(gateway, {"Authorization": f"Bearer {token}"})
    assert status == 200


async def test_audience_list_containing_resource_accepted(issuer: TestIssuer, gateway: Gateway) -> None:
    """`aud` may be a list; it only needs to contain this route's resource."""
    token = issuer.mint(audience=["https://elsewhere.example", RESOURCE])
    status, _, _ = await post(gateway, {"Authorization": f"Bearer {token}"})
    assert status == 200


async def test_missing_route_scope_gets_403_insufficient_scope(
    issuer: TestIssuer, gateway: Gateway, upstream: Upstream
) -> None:
    """A valid token without the route's scope: 403 insufficient_scope naming it (step-up)."""
    token = issuer.mint(audience=RESOURCE, scope="something:else")
    status, headers, body = await post(gateway, {"Authorization": f"Bearer {token}"})
    assert status == 403
    assert parse_bearer_challenge(headers["WWW-Authenticate"]) == {
        "error": "insufficient_scope",
        "scope": "mcp:access",
        "resource_metadata": PRM_URL,
    }
    assert body["id"] == 1
    assert await upstream.requests() == []


async def test_scp_list_claim_is_accepted(issuer: TestIssuer, gateway: Gateway) -> None:
    """Scopes may come from `scp` (a list) when `scope` is absent."""
    token = issuer.mint(audience=RESOURCE, scope=None, claims={"scp": ["mcp:access"]})
    status, _, _ = await post(gateway, {"Authorization": f"Bearer {token}"})
    assert status == 200
