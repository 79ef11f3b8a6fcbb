"""gateway.auth.dpop: every RFC 9449 §4.3 check refuses with its own reason; replays are caught."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth.dpop import (
    DpopNonces,
    DpopVerifier,
    ProofContext,
    access_token_hash,
    bound_key,
    check_proof,
    jwk_thumbprint,
    normalised_http_uri,
    route_htu,
)
from gateway.auth.tokens import presented_token_from
from gateway.config import ConfigError, parse_config_text
from gateway.errors import DpopNonceRequired, InvalidDpopProof, InvalidToken, MissingToken
from gateway.sealing import StateSealer
from gateway.secret import PresentedToken
from gateway.upstream.proxy import upstream_request_headers
from gateway.web.metadata import route_challenge
from tests.support.dpop import ProofKey, ath_of, b64url, compact

NOW = 1_800_000_000.0
HTU = "https://gw.example/base/mcp"
TOKEN = "access-token-for-dpop-tests"
KEY = ProofKey.generate("ES256")
OTHER = ProofKey.generate("ES256")
RSA_KEY = ProofKey.generate("RS256")
WEAK_RSA = ProofKey.generate("RS256", rsa_bits=1024)


def context(**changes: object) -> ProofContext:
    base = ProofContext(
        method="POST",
        htu=HTU,
        token=PresentedToken(TOKEN),
        jkt=KEY.jkt,
        algorithms=("RS256", "ES256"),
        iat_window_s=300.0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def proof(**kwargs: object) -> str:
    return KEY.proof("POST", HTU, TOKEN, iat=NOW, **kwargs)  # type: ignore[arg-type]


def hs256_proof() -> str:
    """HMAC keyed with the public jwk's JSON: the key-confusion attempt."""
    header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": KEY.public_jwk}
    claims = {"jti": "j", "htm": "POST", "htu": HTU, "iat": NOW, "ath": ath_of(TOKEN)}
    unsigned = compact(header, claims).rsplit(".", 1)[0]
    mac = hmac.new(str(KEY.public_jwk).encode(), unsigned.encode(), hashlib.sha256).digest()
    return f"{unsigned}.{b64url(mac)}"


def alg_none_proof() -> str:
    header = {"typ": "dpop+jwt", "alg": "none", "jwk": KEY.public_jwk}
    return compact(header, {"jti": "j", "htm": "POST", "htu": HTU, "iat": NOW, "ath": ath_of(TOKEN)})


REFUSALS: list[tuple[str, Callable[[], list[str]], ProofContext, str]] = [
    ("missing proof", lambda: [], context(), "dpop_proof_missing"),
    ("two proofs", lambda: [proof(), proof()], context(), "dpop_proof_duplicate"),
    ("two folded into one", lambda: [f"{proof()}, {proof()}"], context(), "dpop_proof_malformed"),
    ("not a JWS", lambda: ["not.a.jws"], context(), "dpop_proof_malformed"),
    ("typ JWT", lambda: [proof(header={"typ": "JWT"})], context(), "dpop_bad_typ"),
    ("no typ", lambda: [proof(header={"typ": None})], context(), "dpop_bad_typ"),
    ("alg none", lambda: [alg_none_proof()], context(), "dpop_alg_not_allowed"),
    ("alg HS256", lambda: [hs256_proof()], context(algorithms=("HS256", "ES256")), "dpop_alg_not_allowed"),
    ("alg not pinned", lambda: [proof()], context(algorithms=("RS256",)), "dpop_alg_not_allowed"),
    ("private key in jwk", lambda: [proof(header={"jwk": KEY.private_jwk})], context(), "dpop_private_key"),
    (
        "symmetric k in jwk",
        lambda: [proof(header={"jwk": {**KEY.public_jwk, "k": "AA"}})],
        context(),
        "dpop_private_key",
    ),
    ("no jwk", lambda: [proof(header={"jwk": None})], context(), "dpop_proof_malformed"),
    (
        "RSA jwk for ES256",
        lambda: [proof(header={"jwk": RSA_KEY.public_jwk})],
        context(),
        "dpop_proof_malformed",
    ),
    ("bad signature", lambda: [proof(signer=OTHER)], context(), "dpop_bad_signature"),
    (
        "RSA key under 2048 bits",
        lambda: [WEAK_RSA.proof("POST", HTU, TOKEN, iat=NOW)],
        context(jkt=WEAK_RSA.jkt),
        "dpop_proof_malformed",
    ),
    ("htm mismatch", lambda: [proof(claims={"htm": "GET"})], context(), "dpop_htm_mismatch"),
    ("htm lower-case", lambda: [proof(claims={"htm": "post"})], context(), "dpop_htm_mismatch"),
    (
        "htu other host",
        lambda: [proof(claims={"htu": "https://evil.example/base/mcp"})],
        context(),
        "dpop_htu_mismatch",
    ),
    (
        "htu other route",
        lambda: [proof(claims={"htu": "https://gw.example/base/other"})],
        context(),
        "dpop_htu_mismatch",
    ),
    ("htu with query", lambda: [proof(claims={"htu": HTU + "?a=1"})], context(), "dpop_htu_mismatch"),
    ("htu with empty query", lambda: [proof(claims={"htu": HTU + "?"})], context(), "dpop_htu_mismatch"),
    ("htu with fragment", lambda: [proof(claims={"htu": HTU + "#f"})], context(), "dpop_htu_mismatch"),
    (
        "htu http not https",
        lambda: [proof(claims={"htu": "http://gw.example/base/mcp"})],
        context(),
        "dpop_htu_mismatch",
    ),
    ("no htu", lambda: [proof(drop=("htu",))], context(), "dpop_htu_mismatch"),
    ("iat too old", lambda: [proof(claims={"iat": NOW - 301})], context(), "dpop_iat_out_of_window"),
    ("iat in the future", lambda: [proof(claims={"iat": NOW + 301})], context(), "dpop_iat_out_of_window"),
    (
        "iat narrower window",
        lambda: [proof(claims={"iat": NOW - 20})],
        context(iat_window_s=10.0),
        "dpop_iat_out_of_window",
    ),
    ("no iat", lambda: [proof(drop=("iat",))], context(), "dpop_proof_malformed"),
    ("no jti", lambda: [proof(drop=("jti",))], context(), "dpop_proof_malformed"),
    (
        "ath of another token",
        lambda: [proof(claims={"ath": ath_of("other")})],
        context(),
        "dpop_ath_mismatch",
    ),
    ("no ath", lambda: [proof(drop=("ath",))], context(), "dpop_ath_mismatch"),
    ("thumbprint mismatch", lambda: [proof()], context(jkt=OTHER.jkt), "dpop_jkt_mismatch"),
]


@pytest.mark.parametrize(("case", "proofs", "ctx", "reason"), REFUSALS, ids=[case[0] for case in REFUSALS])
def test_each_refusal_has_its_reason(
    case: str, proofs: Callable[[], list[str]], ctx: ProofContext, reason: str
) -> None:
    """Each broken proof is refused as invalid_dpop_proof, with the reason naming what broke."""
    with pytest.raises(InvalidDpopProof) as caught:
        check_proof(proofs(), ctx, NOW)
    assert (caught.value.reason, caught.value.status, caught.value.oauth_error) == (
        reason,
        401,
        "invalid_dpop_proof",
    )


@pytest.mark.parametrize("key", [KEY, RSA_KEY], ids=["ES256", "RS256"])
@pytest.mark.parametrize("htu", [HTU, "HTTPS://GW.Example:443/base/mcp"], ids=["exact", "normalised"])
def test_a_valid_proof_is_accepted(key: ProofKey, htu: str) -> None:
    """A proof for this method, URL (scheme/host case and default port aside), token and key passes."""
    checked = check_proof([key.proof("POST", htu, TOKEN, iat=NOW - 299)], context(jkt=key.jkt), NOW)
    assert checked.usable_until == NOW - 299 + 300


def test_a_key_seen_before_still_needs_its_own_signature_and_checks() -> None:
    """Public keys are reused by thumbprint once a proof with them passed: a later proof that
    names the same jwk but is signed by another key is still refused, a later valid one passes,
    and a token bound to another key still refuses the known key."""
    check_proof([proof()], context(), NOW)  # KEY's public key is now known
    forged = KEY.proof("POST", HTU, TOKEN, iat=NOW, signer=OTHER)
    with pytest.raises(InvalidDpopProof) as refused:
        check_proof([forged], context(), NOW)
    assert refused.value.reason == "dpop_bad_signature"
    assert check_proof([proof()], context(), NOW).usable_until == NOW + 300
    with pytest.raises(InvalidDpopProof) as other_binding:
        check_proof([proof()], context(jkt=OTHER.jkt), NOW)
    assert other_binding.value.reason == "dpop_jkt_mismatch"


def test_thumbprint_is_rfc7638() -> None:
    """RFC 7638 §3.1's own example key gives its published thumbprint."""
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
        "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQ"
        "MicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRw"
        "r3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert jwk_thumbprint(KEY.public_jwk) == KEY.jkt


def test_ath_is_the_base64url_sha256_of_the_token() -> None:
    """§4.2: ath = base64url(SHA-256(ASCII(token))), unpadded."""
    assert access_token_hash(TOKEN) == ath_of(TOKEN)
    assert "=" not in access_token_hash(TOKEN)


@pytest.mark.parametrize(
    ("uri", "normalised"),
    [
        ("https://GW.example/base/mcp", "https://gw.example/base/mcp"),
        ("http://127.0.0.1:80/mcp", "http://127.0.0.1/mcp"),
        ("http://127.0.0.1:8080/mcp", "http://127.0.0.1:8080/mcp"),
        ("https://gw.example", "https://gw.example/"),
        ("https://[::1]:8443/mcp", "https://[::1]:8443/mcp"),
        ("https://gw.example/mcp?", None),
        ("https://gw.example/mcp#", None),
        ("https://user@gw.example/mcp", None),
        ("ftp://gw.example/mcp", None),
        ("https://gw.example:99999/mcp", None),
    ],
)
def test_htu_normalisation(uri: str, normalised: str | None) -> None:
    """§4.3 item 9: scheme and host case and the default port do not matter; query or fragment refuse.
    A normalised URI is its own normal form (check_proof_claims takes an htu equal to the route's
    as it is)."""
    assert normalised_http_uri(uri) == normalised
    if normalised is not None:
        assert normalised_http_uri(normalised) == normalised


def test_route_htu_is_public_url_plus_path() -> None:
    """The route's htu comes from public_url (base path kept), never from the request."""
    assert route_htu("https://GW.example:443/base", "/mcp") == HTU


def test_bound_key() -> None:
    """cnf.jkt is the binding; no cnf is unbound; any other cnf (mTLS) is refused outright."""
    assert bound_key({"cnf": {"jkt": "abc"}}) == "abc"
    assert bound_key({"sub": "u"}) is None
    with pytest.raises(InvalidToken) as caught:
        bound_key({"cnf": {"x5t#S256": "abc"}})
    assert caught.value.reason == "sender_constrained"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def test_a_replayed_jti_is_refused_until_its_window_ends() -> None:
    """§11.1: the same proof twice on a route is refused; the jti is kept until iat + window."""
    clock = Clock()
    verifier = DpopVerifier(clock)
    first = proof()
    verifier.verify("/mcp", [first], context())
    with pytest.raises(InvalidDpopProof) as caught:
        verifier.verify("/mcp", [first], context())
    assert caught.value.reason == "dpop_replayed"
    clock.now = NOW + 300.5  # past iat + window: the proof is refused for its age, not remembered
    with pytest.raises(InvalidDpopProof) as caught:
        verifier.verify("/mcp", [first], context())
    assert caught.value.reason == "dpop_iat_out_of_window"


def test_a_proof_for_another_route_is_refused() -> None:
    """A proof accepted on one route is no proof for another: its htu names the first."""
    verifier = DpopVerifier(Clock())
    used = proof()
    verifier.verify("/mcp", [used], context())
    with pytest.raises(InvalidDpopProof) as caught:
        verifier.verify("/other", [used], context(htu="https://gw.example/base/other"))
    assert caught.value.reason == "dpop_htu_mismatch"


def test_a_full_replay_cache_refuses_rather_than_forgets() -> None:
    """Full of unexpired jti, a new proof is refused; once they expire there is room again."""
    clock = Clock()
    verifier = DpopVerifier(clock, cache_size=2)
    verifier.verify("/mcp", [proof()], context())
    verifier.verify("/mcp", [proof()], context())
    with pytest.raises(InvalidDpopProof) as caught:
        verifier.verify("/mcp", [proof()], context())
    assert caught.value.reason == "dpop_replay_cache_full"
    verifier.verify(
        "/other",
        [proof(claims={"htu": "https://gw.example/base/other"})],
        context(htu="https://gw.example/base/other"),
    )
    clock.now = NOW + 301
    verifier.verify("/mcp", [KEY.proof("POST", HTU, TOKEN, iat=clock.now)], context())


def test_a_refused_proof_is_not_remembered() -> None:
    """Only an accepted proof's jti is kept: a refused one cannot fill the cache."""
    verifier = DpopVerifier(Clock(), cache_size=1)
    for _ in range(3):
        with pytest.raises(InvalidDpopProof):
            verifier.verify("/mcp", [proof(signer=OTHER)], context())
    verifier.verify("/mcp", [proof()], context())


def test_real_clock_default() -> None:
    """Without a clock the verifier reads the wall clock: a proof made now passes."""
    DpopVerifier().verify("/mcp", [KEY.proof("POST", HTU, TOKEN, iat=time.time())], context())


def test_the_dpop_header_is_not_forwarded() -> None:
    """Request headers go upstream by allowlist, and DPoP (and Authorization) are not on it."""
    incoming = CIMultiDictProxy(
        CIMultiDict({"DPoP": proof(), "Authorization": f"DPoP {TOKEN}", "Accept": "*/*"})
    )
    assert dict(upstream_request_headers(incoming, {})) == {"Accept": "*/*"}


@pytest.mark.parametrize("scheme", ["DPoP", "dpop", "DPOP"])
def test_the_dpop_scheme_is_a_token_only_where_dpop_is_on(scheme: str) -> None:
    """RFC 9110 §11.1: scheme names are case-insensitive; with dpop off the scheme is no token."""
    scheme_name, token = presented_token_from([f"{scheme} {TOKEN}"], False, dpop=True)
    assert (scheme_name, token.reveal()) == ("dpop", TOKEN)
    with pytest.raises(MissingToken) as caught:
        presented_token_from([f"{scheme} {TOKEN}"], False, dpop=False)
    assert caught.value.reason == "unsupported_auth_scheme"


CONFIG = """
public_url: https://gw.example/base
issuers: [{issuer: https://as.example, algorithms: [ES256, RS256], jwks: {discover: true}}]
routes:
  - {path: /allowed, upstream: http://127.0.0.1:9000/mcp, scopes: [mcp:access]}
  - {path: /required, upstream: http://127.0.0.1:9000/mcp, scopes: [mcp:access], dpop: required}
  - {path: /off, upstream: http://127.0.0.1:9000/mcp, scopes: [mcp:access], dpop: "off"}
"""
METADATA = "https://gw.example/.well-known/oauth-protected-resource/base"


@pytest.mark.parametrize(
    ("route", "error", "expected"),
    [
        (
            "/allowed",
            "invalid_token",
            f'Bearer error="invalid_token", scope="mcp:access", resource_metadata="{METADATA}/allowed"',
        ),
        (
            "/allowed",
            "invalid_dpop_proof",
            f'DPoP error="invalid_dpop_proof", scope="mcp:access", resource_metadata="{METADATA}/allowed", '
            f'algs="ES256 RS256", Bearer scope="mcp:access", resource_metadata="{METADATA}/allowed"',
        ),
        (
            "/required",
            None,
            f'DPoP scope="mcp:access", resource_metadata="{METADATA}/required", algs="ES256 RS256"',
        ),
        (
            "/allowed",
            "use_dpop_nonce",
            f'DPoP error="use_dpop_nonce", scope="mcp:access", resource_metadata="{METADATA}/allowed", '
            f'algs="ES256 RS256", Bearer scope="mcp:access", resource_metadata="{METADATA}/allowed"',
        ),
        (
            "/off",
            "invalid_token",
            f'Bearer error="invalid_token", scope="mcp:access", resource_metadata="{METADATA}/off"',
        ),
    ],
)
def test_challenges_per_mode(route: str, error: str | None, expected: str) -> None:
    """A proof refusal names DPoP, then Bearer while Bearer is allowed; required: DPoP only; off: Bearer."""
    config = parse_config_text(CONFIG, Path("/tmp/x.yaml"), {})
    routes = {route.path: route for route in config.routes}
    assert route_challenge(config, routes[route])((), error) == expected
    assert routes["/allowed"].dpop == "allowed" and config.issuers[0].dpop_iat_window_s == 300


# --- the server nonce (§8, §9) ------------------------------------------------------------------

SEALER = StateSealer([("k1", b"n" * 32)], "k1")
NONCES = DpopNonces(SEALER)


def altered(nonce: str) -> str:
    """One character of the sealed payload changed (mid-string: still canonical base64url)."""
    middle = len(nonce) // 2
    return nonce[:middle] + ("A" if nonce[middle] != "A" else "B") + nonce[middle + 1 :]


def nonce_refusal(nonce: object, route: str = "/mcp", now: float = NOW, nonces: DpopNonces = NONCES) -> str:
    """The reason ``nonces`` refuse ``nonce`` with; the refusal must carry a fresh, valid nonce."""
    with pytest.raises(DpopNonceRequired) as caught:
        nonces.check(nonce, route, now, 300.0)
    refusal = caught.value
    assert refusal.status == 401 and refusal.oauth_error == "use_dpop_nonce"
    assert refusal.headers(None) == {"DPoP-Nonce": refusal.nonce}
    nonces.check(refusal.nonce, route, now, 300.0)  # the one to retry with is accepted
    return refusal.reason


def test_an_issued_nonce_is_accepted_within_its_age() -> None:
    """A nonce is accepted on its route up to max_age_s after its issue, by any sealer with the key."""
    nonce = NONCES.issue("/mcp", NOW)
    NONCES.check(nonce, "/mcp", NOW, 300.0)
    NONCES.check(nonce, "/mcp", NOW + 300.0, 300.0)
    same_key = DpopNonces(StateSealer([("k0", b"o" * 32), ("k1", b"n" * 32)], "k0"))  # another replica
    same_key.check(nonce, "/mcp", NOW + 1, 300.0)
    assert all(char.isascii() and char.isprintable() and char not in '" \\' for char in nonce)  # NQCHAR


def test_a_missing_nonce_is_asked_for() -> None:
    """No nonce claim: use_dpop_nonce (dpop_nonce_missing) with a fresh nonce."""
    assert nonce_refusal(None) == "dpop_nonce_missing"


def test_an_expired_nonce_is_refused() -> None:
    """Older than max_age_s (or as far in the future): dpop_nonce_expired."""
    assert nonce_refusal(NONCES.issue("/mcp", NOW - 300.5)) == "dpop_nonce_expired"
    assert nonce_refusal(NONCES.issue("/mcp", NOW + 300.5)) == "dpop_nonce_expired"


@pytest.mark.parametrize(
    ("case", "nonce"),
    [
        ("altered", altered(NONCES.issue("/mcp", NOW))),
        ("another route's", NONCES.issue("/other", NOW)),
        ("another key's", DpopNonces(StateSealer([("k1", b"x" * 32)], "k1")).issue("/mcp", NOW)),
        ("a session id sealed alike", SEALER.seal("session", f"{NOW:.3f}", ("/mcp",))),
        ("not a string", 12345),
        ("made up", "k1.bm90LWEtbm9uY2U"),
        ("empty", ""),
    ],
)
def test_a_nonce_not_ours_is_refused(case: str, nonce: object) -> None:
    """Tampered, for another route, sealed with another key or as another kind: dpop_nonce_invalid."""
    assert nonce_refusal(nonce) == "dpop_nonce_invalid", case


def test_the_verifier_checks_the_nonce_before_remembering_the_jti() -> None:
    """With nonces, a proof without one is refused (use_dpop_nonce) and not remembered; a fresh proof
    with the nonce given passes; without nonces the nonce claim is not looked at."""
    verifier = DpopVerifier(Clock())
    bare = proof()
    with pytest.raises(DpopNonceRequired) as caught:
        verifier.verify("/mcp", [bare], context(), NONCES)
    verifier.verify("/mcp", [proof(claims={"nonce": caught.value.nonce})], context(), NONCES)
    verifier.verify("/mcp", [bare], context())  # not remembered by the refusal above
    with pytest.raises(InvalidDpopProof) as bad:  # every other check still comes first
        verifier.verify("/mcp", [proof(claims={"htm": "GET"})], context(), NONCES)
    assert bad.value.reason == "dpop_htm_mismatch" and not isinstance(bad.value, DpopNonceRequired)


def test_dpop_nonce_is_a_route_key_that_needs_dpop_on() -> None:
    """dpop_nonce defaults to false, is read per route, and with dpop: off is a config error."""
    config = parse_config_text(
        CONFIG.replace("dpop: required}", "dpop: required, dpop_nonce: true}"), Path("/x.yaml"), {}
    )
    assert [(route.path, route.dpop_nonce) for route in config.routes] == [
        ("/allowed", False),
        ("/required", True),
        ("/off", False),
    ]
    with pytest.raises(ConfigError, match="dpop_nonce needs dpop allowed or required"):
        parse_config_text(
            CONFIG.replace('dpop: "off"}', 'dpop: "off", dpop_nonce: true}'), Path("/x.yaml"), {}
        )


def test_a_remembered_header_is_still_checked_against_each_issuers_algorithms() -> None:
    """A header accepted for one issuer (ES256 pinned) is refused for another that pins RS256
    only, after and before being accepted again: what is remembered is per algorithm list; and
    a proof whose header was accepted still needs its own valid signature."""
    accepted = proof()
    assert check_proof([accepted], context(), NOW).jti
    with pytest.raises(InvalidDpopProof) as caught:
        check_proof([proof()], context(algorithms=("RS256",)), NOW)
    assert caught.value.reason == "dpop_alg_not_allowed"
    assert check_proof([proof()], context(), NOW).jti
    header, claims, _signature = accepted.split(".")
    forged = f"{header}.{claims}.{OTHER.proof('POST', HTU, TOKEN, iat=NOW).split('.')[2]}"
    with pytest.raises(InvalidDpopProof) as caught:
        check_proof([forged], context(), NOW)
    assert caught.value.reason == "dpop_bad_signature"
