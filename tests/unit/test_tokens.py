"""Pure token checks: extraction, header, claims, audience matching and scopes."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from gateway.auth.tokens import (
    audience_matches,
    bearer_token_from,
    check_claims,
    check_header,
    scopes_of,
    split_jws,
)
from gateway.config import IssuerConfig, JwksDiscover
from gateway.errors import InvalidAuthRequest, InvalidToken, MissingToken
from gateway.secret import PresentedToken

ISSUER = IssuerConfig(
    issuer="https://as.example", algorithms=("RS256", "ES256"), jwks=JwksDiscover(), leeway_s=30
)
RESOURCE = "https://gw.example/mcp"
NOW = 1_800_000_000.0


def claims(**overrides: Any) -> dict[str, Any]:
    base = {
        "iss": ISSUER.issuer,
        "sub": "alice",
        "aud": RESOURCE,
        "exp": NOW + 300,
        "iat": NOW,
        "client_id": "c",
        "scope": "a b",
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not ...}


@pytest.mark.parametrize(
    ("headers", "query", "error", "reason"),
    [
        ([], False, MissingToken, "missing_token"),
        ([], True, MissingToken, "token_in_query"),
        (["Bearer abc"], True, InvalidAuthRequest, "token_in_query_and_header"),
        (["Bearer a", "Bearer b"], False, InvalidAuthRequest, "duplicate_authorization_header"),
        (["Bearer"], False, InvalidAuthRequest, "empty_bearer_token"),
        (["Basic dTpw"], False, MissingToken, "unsupported_auth_scheme"),
        (["Bearer a b"], False, InvalidToken, "malformed"),
        (["Bearer " + "a" * 20000], False, InvalidToken, "malformed"),
    ],
)
def test_bearer_extraction_refusals(
    headers: list[str], query: bool, error: type[Exception], reason: str
) -> None:
    """Each malformed way of presenting a token has its own error and reason."""
    with pytest.raises(error) as caught:
        bearer_token_from(headers, query)
    assert caught.value.reason == reason  # type: ignore[attr-defined]


def test_bearer_extraction_accepts_any_scheme_case() -> None:
    """`bearer`, `Bearer` and `BEARER` all work (RFC 9110 §11.1)."""
    for scheme in ("bearer", "Bearer", "BEARER"):
        assert bearer_token_from([f"{scheme} tok.en-_~+/="], False).reveal() == "tok.en-_~+/="


def test_bearer_token_is_a_presented_token_that_cannot_print() -> None:
    """The header's token leaves extraction typed, with its SHA-256 taken once; repr shows ***."""
    token = bearer_token_from(["Bearer canary-token-123"], False)
    assert isinstance(token, PresentedToken)
    assert token.sha256 == hashlib.sha256(b"canary-token-123").hexdigest()
    assert "canary" not in repr(token) and "canary" not in str(token) and "canary" not in f"{[token]}"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"iss": "https://as.example/"}, "bad_issuer"),
        ({"exp": NOW - 31}, "expired"),
        ({"exp": ...}, "missing_claim"),
        ({"exp": "soon"}, "bad_claim"),
        ({"exp": True}, "bad_claim"),
        ({"nbf": NOW + 31}, "not_yet_valid"),
        ({"iat": NOW + 31}, "issued_in_future"),
        ({"aud": ...}, "missing_audience"),
        ({"aud": []}, "missing_audience"),
        ({"aud": [1]}, "missing_audience"),
        ({"aud": "https://gw.example/other"}, "bad_audience"),
        ({"aud": "https://gw.example/MCP"}, "bad_audience"),
        ({"aud": "https://gw.example/mcp/"}, "bad_audience"),
        ({"sub": ...}, "missing_claim"),
        ({"sub": 7}, "missing_claim"),
        ({"scope": ["a"]}, "bad_claim"),
        ({"client_id": 5}, "bad_claim"),
    ],
)
def test_check_claims_rejections(overrides: dict[str, Any], reason: str) -> None:
    """Every claim rule fails with its own reason."""
    with pytest.raises(InvalidToken) as caught:
        check_claims(claims(**overrides), issuer=ISSUER, resource=RESOURCE, now=NOW)
    assert caught.value.reason == reason


def test_check_claims_within_leeway_accepted() -> None:
    """exp/nbf/iat within the configured leeway pass; the principal carries the claims."""
    principal = check_claims(
        claims(exp=NOW - 29, nbf=NOW + 29, iat=NOW + 29, aud=["x", "HTTPS://GW.EXAMPLE/mcp"], jti="j1"),
        issuer=ISSUER,
        resource=RESOURCE,
        now=NOW,
    ).presented_with(PresentedToken("secret-token"))
    assert (principal.subject, principal.client_id, principal.scopes, principal.token_id) == (
        "alice",
        "c",
        frozenset({"a", "b"}),
        "j1",
    )
    assert "secret-token" not in repr(principal)


@pytest.mark.parametrize(
    ("audience", "matches"),
    [
        (RESOURCE, True),
        ("HTTPS://GW.EXAMPLE/mcp", True),
        ("https://gw.example/MCP", False),
        ("https://gw.example/mcp/", False),
        ("https://gw.example/mcp?x=1", False),
        ("https://gw.example:443/mcp", False),
        ("http://gw.example/mcp", False),
    ],
)
def test_audience_matching(audience: str, matches: bool) -> None:
    """Code-point equality, except scheme and host case (MCP canonical server URI)."""
    assert audience_matches(audience, RESOURCE) is matches


def test_scopes_from_scope_or_scp() -> None:
    """`scope` is space-delimited; `scp` may be a list or a string; neither means no scopes."""
    assert scopes_of({"scope": "a  b"}) == {"a", "b"}
    assert scopes_of({"scp": ["a", "b"]}) == {"a", "b"}
    assert scopes_of({"scp": "a b"}) == {"a", "b"}
    assert scopes_of({}) == frozenset()


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"alg": "none", "typ": "at+jwt"}, "alg_not_allowed"),
        ({"alg": "HS256", "typ": "at+jwt"}, "alg_not_allowed"),
        ({"alg": "PS256", "typ": "at+jwt"}, "alg_not_allowed"),
        ({"typ": "at+jwt"}, "alg_not_allowed"),
        ({"alg": "RS256", "typ": "JWT"}, "bad_typ"),
        ({"alg": "RS256"}, "bad_typ"),
        ({"alg": "RS256", "typ": "at+jwt", "jku": "https://evil"}, "refused_header_param"),
        ({"alg": "RS256", "typ": "at+jwt", "jwk": {}}, "refused_header_param"),
        ({"alg": "RS256", "typ": "at+jwt", "x5u": "https://evil"}, "refused_header_param"),
        ({"alg": "RS256", "typ": "at+jwt", "crit": ["exp"]}, "refused_header_param"),
        ({"alg": "RS256", "typ": "at+jwt", "kid": 5}, "malformed"),
        ({"alg": "RS256", "typ": "at+jwt", "kid": "k" * 300}, "malformed"),
    ],
)
def test_check_header_rejections(header: dict[str, Any], reason: str) -> None:
    """The algorithm is pinned per issuer; key-locating and critical headers are refused."""
    with pytest.raises(InvalidToken) as caught:
        check_header(header, ISSUER)
    assert caught.value.reason == reason


def test_check_header_accepts_application_at_jwt() -> None:
    """Both spellings of the RFC 9068 type are accepted."""
    assert check_header({"alg": "ES256", "typ": "application/at+jwt", "kid": "k"}, ISSUER) == ("ES256", "k")


@pytest.mark.parametrize(
    "token",
    [
        "a.b",
        "a.b.c.d",
        "eyJhbGciOiJSUzI1NiJ9=.e30.c2ln",  # padded
        "bm90IGpzb24.e30.c2ln",  # header not JSON
        "W10.e30.c2ln",  # header is a list
        "eyJhIjoxLCJhIjoyfQ.e30.c2ln",  # duplicate keys in header
    ],
)
def test_split_jws_refuses_malformed(token: str) -> None:
    """Compact JWS is decoded strictly: three unpadded segments, JSON objects, no duplicate keys."""
    with pytest.raises(InvalidToken) as caught:
        split_jws(token)
    reason: str = caught.value.reason
    assert reason == "malformed"
