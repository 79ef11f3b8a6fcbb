"""Pure token checks: extraction, header, claims, audience matching and scopes."""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Callable
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
from tests.support.jws import b64url, json_segment, padded, set_unused_bits, standard_alphabet, with_tildes

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


@pytest.mark.parametrize(
    ("iss", "shown"),
    [
        ("https://as.example/", "token iss 'https://as.example/' matches no configured issuer"),
        (..., "the token has no iss claim"),
        (7, "token iss is a JSON int, not a string"),
        ("https://as.example\nlevel=error", "token iss 'https://as.example\\nlevel=error'"),
    ],
)
def test_a_bad_issuer_detail_names_the_token_iss_and_the_configured_issuer(iss: object, shown: str) -> None:
    """bad_issuer's log detail quotes the token's iss (escaped: it is unverified) next to the
    configured issuer, so a one-character difference shows; nothing else of the token."""
    with pytest.raises(InvalidToken) as caught:
        check_claims(claims(iss=iss), issuer=ISSUER, resource=RESOURCE, now=NOW)
    assert caught.value.reason == "bad_issuer"
    assert shown in caught.value.detail and "configured: 'https://as.example'" in caught.value.detail
    assert "alice" not in caught.value.detail and "\n" not in caught.value.detail


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
    assert scopes_of({"scope": "a b"}) == {"a", "b"}
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


@pytest.mark.parametrize(("typ", "seen"), [("JWT", "typ='JWT'"), (None, "typ='None'")])
def test_bad_typ_says_what_it_saw_and_the_setting_that_allows_it(typ: str | None, seen: str) -> None:
    """bad_typ's log detail names the typ it saw and `require_at_jwt_typ: false`, the way out for an
    authorization server that types its access tokens `JWT` or not at all."""
    header = {"alg": "RS256"} if typ is None else {"alg": "RS256", "typ": typ}
    with pytest.raises(InvalidToken) as caught:
        check_header(header, ISSUER)
    assert caught.value.reason == "bad_typ"
    assert seen in caught.value.detail and "require_at_jwt_typ: false" in caught.value.detail


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


# --- one token, one spelling (RFC 7515 §2, RFC 4648 §3.5) --------------------------------------

# Each segment has unused bits and a `-` or `_`, so that every respelling below applies to it.
HEADER = {"alg": "RS256", "x": ">?~"}
PAYLOAD = {"iss": "https://as.example", "x": ">>>"}
SIGNATURE = b"\xfb\xffsignature"
CANONICAL = f"{json_segment(HEADER)}.{json_segment(PAYLOAD)}.{b64url(SIGNATURE)}"


def respelled(position: int, spell: Callable[[str], str | None]) -> str:
    parts = CANONICAL.split(".")
    new = spell(parts[position])
    assert new is not None and new != parts[position]
    parts[position] = new
    return ".".join(parts)


def test_split_jws_reads_the_canonical_spelling() -> None:
    """The canonical token of these tests decodes: the refusals below are about spelling only."""
    header, claims, _, signature = split_jws(CANONICAL)
    assert (header, claims, signature) == (HEADER, PAYLOAD, SIGNATURE)


@pytest.mark.parametrize("position", [0, 1, 2], ids=["header", "payload", "signature"])
@pytest.mark.parametrize(
    "spell",
    [
        set_unused_bits,
        standard_alphabet,
        with_tildes,
        padded,
        lambda segment: segment[:3] + "\n" + segment[3:],
        lambda segment: segment[:3] + " " + segment[3:],
        lambda segment: segment + "A" * ((1 - len(segment)) % 4),  # a length no base64 has (4n + 1)
    ],
    ids=["unused_bits", "standard_alphabet", "tildes", "padding", "newline", "space", "length_4n_plus_1"],
)
def test_split_jws_refuses_every_other_spelling(position: int, spell: Callable[[str], str | None]) -> None:
    """Another spelling of the same bytes (unused bits, +/, ~, =, whitespace) is malformed, in any segment."""
    with pytest.raises(InvalidToken) as caught:
        split_jws(respelled(position, spell))
    reason: str = caught.value.reason
    assert reason == "malformed"


def test_python_decoder_alone_would_accept_those_spellings() -> None:
    """Why the check exists: base64.urlsafe_b64decode reads the respelled signature as the same bytes."""
    signature = CANONICAL.split(".")[2]
    for spell in (set_unused_bits, with_tildes, standard_alphabet):
        other = spell(signature)
        assert other is not None
        assert base64.urlsafe_b64decode(other + "=" * (-len(other) % 4)) == SIGNATURE


# --- scope: split on SP only (RFC 6749 §3.3) -----------------------------------------------------


@pytest.mark.parametrize(
    "scope",
    [
        "mcp:access\tadmin",
        "mcp:access\nadmin",
        "mcp:access\radmin",
        "mcp:access\x0badmin",
        "mcp:access\x0cadmin",
        "mcp:access\u00a0admin",
        "mcp:access\u2028admin",
        "mcp:access\u3000admin",
        "mcp:access\x00admin",
        "mcp:access\x7fadmin",
        "mcp:access  admin",
        " mcp:access",
        "mcp:access ",
        " ",
        'mcp:"access"',
        "mcp:\\access",
        "mcp:accès",
    ],
    ids=repr,
)
def test_scope_outside_the_grammar_is_refused(scope: str) -> None:
    """Any separator but one SP, an empty scope-token, a control, quote, backslash or non-ASCII: bad_claim."""
    for name in ("scope", "scp"):
        with pytest.raises(InvalidToken) as caught:
            scopes_of({name: scope})
        reason: str = caught.value.reason
        assert reason == "bad_claim"
    with pytest.raises(InvalidToken):
        check_claims(claims(scope=scope), issuer=ISSUER, resource=RESOURCE, now=NOW)


@pytest.mark.parametrize("item", ["mcp:access\tadmin", "", "a b", "\u00a0"], ids=repr)
def test_scp_list_items_must_be_single_scope_tokens(item: str) -> None:
    """Each `scp` element is one scope-token: no whitespace, not empty."""
    with pytest.raises(InvalidToken) as caught:
        scopes_of({"scp": ["mcp:access", item]})
    reason: str = caught.value.reason
    assert reason == "bad_claim"


def test_scope_grammar_accepts_every_printable_scope_token_character() -> None:
    """All of %x21 / %x23-5B / %x5D-7E is allowed; the empty string means no scopes."""
    every = "".join(chr(c) for c in range(0x21, 0x7F) if c not in (0x22, 0x5C))
    assert scopes_of({"scope": f"{every} mcp:access"}) == {every, "mcp:access"}
    assert scopes_of({"scp": [every]}) == {every}
    assert scopes_of({"scope": ""}) == frozenset() == scopes_of({"scp": []})


# --- NumericDate claims are finite numbers (RFC 7519 §2) ------------------------------------------


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize(
    "value",
    [math.inf, -math.inf, math.nan, 10**400, -(10**400), True, False, "1800000000", [1], {}],
    ids=[
        "inf",
        "-inf",
        "nan",
        "int_beyond_double",
        "-int_beyond_double",
        "true",
        "false",
        "string",
        "list",
        "obj",
    ],
)
def test_numeric_dates_must_be_finite_numbers(name: str, value: Any) -> None:
    """exp/nbf/iat as ±infinity, NaN, an int no double holds, a bool, a string: bad_claim, never a crash."""
    with pytest.raises(InvalidToken) as caught:
        check_claims(claims(**{name: value}), issuer=ISSUER, resource=RESOURCE, now=NOW)
    assert caught.value.reason == "bad_claim"


def test_numeric_date_can_be_a_large_finite_number() -> None:
    """A far-future exp that a double holds (1e300) is a number like any other, not refused."""
    identity = check_claims(claims(exp=1e300, nbf=-1e300), issuer=ISSUER, resource=RESOURCE, now=NOW)
    assert identity.expires_at == 1e300


def test_token_with_exp_1e400_is_malformed_before_any_claim_check() -> None:
    """`exp: 1e400` in the payload text is refused by the strict JSON read itself (it reads as infinity)."""
    for literal in ("1e400", "-1e400", "1" + "0" * 400):
        payload = json_segment('{"iss":"https://as.example","exp":' + literal + "}")
        with pytest.raises(InvalidToken) as caught:
            split_jws(f"eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln")
        reason: str = caught.value.reason
        assert reason == "malformed"
