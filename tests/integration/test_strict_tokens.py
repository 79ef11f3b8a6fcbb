"""Keys and claims read the one strict way, through the running gateway in front of the SDK upstream.

Each bad case gets 401 ``invalid_token`` and the upstream records nothing; its legitimate
neighbour (a 2048-bit key, an EC key on its own curve, a scope with plain spaces, a finite
``exp``, a canonical spelling) still reaches the upstream.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import Gateway, GatewayFactory, LogSink, Upstream
from tests.integration.test_authentication import RESOURCE, post
from tests.integration.test_metrics import scrape, value
from tests.support.challenge import parse_bearer_challenge
from tests.support.issuer import SigningKey, TestIssuer, serving
from tests.support.jws import (
    json_segment,
    padded,
    set_unused_bits,
    sign,
    standard_alphabet,
    with_tildes,
    with_unused_bits,
)


@dataclass
class StrictIssuer(TestIssuer):
    """A test issuer whose JWKS also publishes keys the gateway must not use, and one without `alg`."""

    __test__ = False

    small_rsa: SigningKey = field(
        # The weak key is the point: the gateway must not trust it.
        default_factory=lambda: SigningKey("small-rsa", "RS256", rsa.generate_private_key(65537, 1024))  # noqa: S505
    )
    # A P-256 key published as ES384: its crv and its alg disagree.
    mislabelled_ec: SigningKey = field(
        default_factory=lambda: SigningKey("p256-as-es384", "ES384", ec.generate_private_key(ec.SECP256R1()))
    )
    unlabelled_ec: SigningKey = field(
        default_factory=lambda: SigningKey("p256-no-alg", "ES256", ec.generate_private_key(ec.SECP256R1()))
    )
    good_ec: SigningKey = field(default_factory=lambda: SigningKey.generate("ES256", kid="p256"))

    def jwks(self) -> dict[str, Any]:
        unlabelled = self.unlabelled_ec.public_jwk()
        del unlabelled["alg"]
        extra = [
            self.small_rsa.public_jwk(),
            self.mislabelled_ec.public_jwk(),
            unlabelled,
            self.good_ec.public_jwk(),
        ]
        return {"keys": super().jwks()["keys"] + extra}


@pytest.fixture
async def issuer() -> AsyncIterator[StrictIssuer]:
    async with serving(StrictIssuer()) as served:
        assert isinstance(served, StrictIssuer)
        yield served


@pytest.fixture
async def gateway(issuer: StrictIssuer, upstream: Upstream, start_gateway_with: GatewayFactory) -> Gateway:
    """One route; the issuer is pinned to RS256, ES256 and ES384 so that curve checks are what bites."""
    return await start_gateway_with(f"""
        listen: {{host: 127.0.0.1, port: 0}}
        public_url: http://127.0.0.1:8080
        issuers:
          - issuer: {issuer.issuer}
            algorithms: [RS256, ES256, ES384]
            jwks: {{discover: true}}
            leeway_s: 5
            jwks_refresh_cooldown_s: 0.2
        admin: {{host: 127.0.0.1, port: 0}}
        routes:
          - path: /mcp
            upstream: {upstream.mcp_url}
            scopes: [mcp:access]
            tools: {{"*": []}}
            resources: {{"*": []}}
            prompts: {{"*": []}}
        """)


def claims_of(issuer: TestIssuer, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer.issuer,
        "sub": "u",
        "aud": RESOURCE,
        "iat": now,
        "exp": now + 300,
        "scope": "mcp:access",
    }
    claims.update(overrides)
    return claims


def signed(
    key: SigningKey, claims: dict[str, Any] | str, *, alg: str | None = None, kid: str | None = "same"
) -> str:
    """``claims`` (a dict, or exact JSON text) signed by ``key`` with canonical segments."""
    header: dict[str, Any] = {"alg": alg or key.alg, "typ": "at+jwt"}
    if kid is not None:
        header["kid"] = key.kid if kid == "same" else kid
    return sign(json_segment(header), json_segment(claims), key.private, alg or key.alg)


def with_raw_number(issuer: TestIssuer, name: str, literal: str) -> str:
    """Claims JSON whose ``name`` is the number literal exactly as written (``1e400``)."""
    claims = claims_of(issuer)
    claims.pop(name, None)
    return json.dumps(claims)[:-1] + f', "{name}": {literal}}}'


def respelled(token: str, position: int, spell: Callable[[str], str | None]) -> str:
    parts = token.split(".")
    new = spell(parts[position])
    assert new is not None and new != parts[position]
    parts[position] = new
    return ".".join(parts)


def resigned(issuer: TestIssuer, position: int, spell: Callable[[str], str | None]) -> str:
    """A header or payload spelled non-canonically and then signed by the issuer's real key:
    the signature is valid over exactly these characters, so only the spelling check can refuse it."""
    key = issuer.active
    header_text = with_unused_bits({"alg": key.alg, "typ": "at+jwt", "kid": key.kid})
    for attempt in range(50):  # until the segment has a character the respelling changes
        # `?>~` in varying alignment: base64 of printable ASCII rarely has a `-` or `_` otherwise
        payload_text = with_unused_bits(claims_of(issuer, jti="j" * (attempt + 1), note="?>~" * 4))
        segments = [json_segment(header_text), json_segment(payload_text)]
        new = spell(segments[position])
        if new is not None:
            segments[position] = new
            return sign(segments[0], segments[1], key.private, key.alg)
    raise AssertionError("no respellable segment in 50 tries")


def signature_respelled(issuer: TestIssuer, spell: Callable[[str], str | None]) -> str:
    for attempt in range(50):  # RS256 is deterministic: vary the payload until the respelling applies
        token = issuer.mint(audience=RESOURCE, claims={"jti": f"j{attempt}"})
        if spell(token.rsplit(".", 1)[1]) is not None:
            return respelled(token, 2, spell)
    raise AssertionError("no respellable signature in 50 tries")


BAD: list[tuple[str, Callable[[StrictIssuer], str]]] = [
    # RFC 7518 §3.3: RSA keys under 2048 bits are skipped, whatever the token says
    ("rsa_1024_with_its_kid", lambda i: signed(i.small_rsa, claims_of(i))),
    ("rsa_1024_without_kid", lambda i: signed(i.small_rsa, claims_of(i), kid=None)),
    ("rsa_1024_with_the_good_keys_kid", lambda i: signed(i.small_rsa, claims_of(i), kid=i.active.kid)),
    # RFC 7518 §3.4: an EC key serves the algorithm of its curve only
    ("p256_key_labelled_es384_token_es384", lambda i: signed(i.mislabelled_ec, claims_of(i), alg="ES384")),
    ("p256_key_labelled_es384_token_es256", lambda i: signed(i.mislabelled_ec, claims_of(i), alg="ES256")),
    ("p256_key_without_alg_token_es384", lambda i: signed(i.unlabelled_ec, claims_of(i), alg="ES384")),
    ("p256_good_key_token_es384", lambda i: signed(i.good_ec, claims_of(i), alg="ES384")),
    # RFC 6749 §3.3: scope-tokens separated by SP only
    ("scope_tab", lambda i: i.mint(audience=RESOURCE, scope="mcp:access\tadmin")),
    ("scope_lf", lambda i: i.mint(audience=RESOURCE, scope="mcp:access\nadmin")),
    ("scope_cr", lambda i: i.mint(audience=RESOURCE, scope="mcp:access\radmin")),
    ("scope_nbsp", lambda i: i.mint(audience=RESOURCE, scope="mcp:access\u00a0admin")),
    ("scope_u2028", lambda i: i.mint(audience=RESOURCE, scope="mcp:access\u2028admin")),
    ("scope_double_space", lambda i: i.mint(audience=RESOURCE, scope="mcp:access  admin")),
    ("scope_leading_space", lambda i: i.mint(audience=RESOURCE, scope=" mcp:access")),
    ("scp_item_with_tab", lambda i: i.mint(audience=RESOURCE, scope=None, claims={"scp": ["mcp:access\tx"]})),
    # RFC 7519 §2 NumericDate: finite numbers
    ("exp_1e400", lambda i: signed(i.active, with_raw_number(i, "exp", "1e400"))),
    ("exp_int_beyond_double", lambda i: signed(i.active, with_raw_number(i, "exp", "1" + "0" * 400))),
    ("nbf_minus_1e400", lambda i: signed(i.active, with_raw_number(i, "nbf", "-1e400"))),
    ("iat_minus_1e400", lambda i: signed(i.active, with_raw_number(i, "iat", "-1e400"))),
    ("exp_string", lambda i: i.mint(audience=RESOURCE, claims={"exp": str(int(time.time()) + 300)})),
    ("exp_true", lambda i: i.mint(audience=RESOURCE, claims={"exp": True})),
    # RFC 7515 §2 / RFC 4648 §3.5: one spelling per token
    ("signature_unused_bits", lambda i: signature_respelled(i, set_unused_bits)),
    ("signature_tildes", lambda i: signature_respelled(i, with_tildes)),
    ("signature_standard_alphabet", lambda i: signature_respelled(i, standard_alphabet)),
    ("signature_padded", lambda i: signature_respelled(i, padded)),
    ("header_unused_bits_resigned", lambda i: resigned(i, 0, set_unused_bits)),
    ("header_tildes_resigned", lambda i: resigned(i, 0, with_tildes)),
    ("payload_unused_bits_resigned", lambda i: resigned(i, 1, set_unused_bits)),
    ("payload_standard_alphabet_resigned", lambda i: resigned(i, 1, standard_alphabet)),
    ("payload_tildes_resigned", lambda i: resigned(i, 1, with_tildes)),
]

GOOD: list[tuple[str, Callable[[StrictIssuer], str]]] = [
    ("rsa_2048", lambda i: i.mint(audience=RESOURCE)),
    ("rsa_2048_hand_signed", lambda i: signed(i.active, claims_of(i))),
    ("p256_es256", lambda i: signed(i.good_ec, claims_of(i))),
    ("p256_without_alg_es256", lambda i: signed(i.unlabelled_ec, claims_of(i), alg="ES256")),
    ("scope_single_spaces", lambda i: i.mint(audience=RESOURCE, scope="other mcp:access x!#[]~")),
    ("scp_list", lambda i: i.mint(audience=RESOURCE, scope=None, claims={"scp": ["mcp:access", "x"]})),
    ("exp_finite_float", lambda i: signed(i.active, with_raw_number(i, "exp", f"{time.time() + 300:.3f}"))),
    ("nbf_large_finite_negative", lambda i: signed(i.active, with_raw_number(i, "nbf", "-1e300"))),
    ("unused_bits_zero_resigned", lambda i: resigned(i, 1, lambda segment: segment)),
]


@pytest.mark.parametrize(("case", "make_token"), BAD, ids=[case for case, _ in BAD])
async def test_non_strict_keys_and_tokens_get_401_invalid_token(
    case: str,
    make_token: Callable[[StrictIssuer], str],
    issuer: StrictIssuer,
    gateway: Gateway,
    upstream: Upstream,
) -> None:
    """Small RSA key, EC curve/alg mismatch, bad scope whitespace, infinite dates, respelled segments: 401."""
    status, headers, body = await post(gateway, {"Authorization": f"Bearer {make_token(issuer)}"})
    assert status == 401, (case, body)
    challenge = parse_bearer_challenge(headers["WWW-Authenticate"])
    assert challenge["error"] == "invalid_token"
    assert body["error"]["code"] == -32001
    assert await upstream.requests() == []


@pytest.mark.parametrize(("case", "make_token"), GOOD, ids=[case for case, _ in GOOD])
async def test_the_strict_spelling_of_each_still_passes(
    case: str,
    make_token: Callable[[StrictIssuer], str],
    issuer: StrictIssuer,
    gateway: Gateway,
    upstream: Upstream,
) -> None:
    """The good neighbour of each bad case (2048-bit key, EC on its curve, canonical token) is forwarded."""
    status, _, body = await post(gateway, {"Authorization": f"Bearer {make_token(issuer)}"})
    assert status == 200, (case, body)
    assert len(await upstream.requests()) == 1


async def test_the_skipped_keys_are_logged_with_kid_and_reason(
    issuer: StrictIssuer, gateway: Gateway, gateway_logs: LogSink
) -> None:
    """At load the gateway logs jwks_key_skipped for the 1024-bit key and the mislabelled EC key."""
    skipped = {
        (event["kid"], event["reason"])
        for event in gateway_logs.events()
        if event["event"] == "jwks_key_skipped" and event.get("issuer") == issuer.issuer
    }
    assert skipped == {("small-rsa", "rsa_key_too_small"), ("p256-as-es384", "alg_mismatch")}
    assert gateway.admin_url is not None
    _, _, samples = await scrape(gateway.admin_url)
    for reason in ("rsa_key_too_small", "alg_mismatch"):
        assert value(samples, "mcp_gateway_jwks_keys_skipped_total", issuer=issuer.issuer, reason=reason) >= 1


async def test_the_request_log_names_why_each_kind_was_refused(
    issuer: StrictIssuer, gateway: Gateway, upstream: Upstream, gateway_logs: LogSink
) -> None:
    """Operators see the precise reason: unknown_kid (skipped key), malformed (spelling, 1e400), bad_claim."""
    cases = {
        "unknown_kid": signed(issuer.small_rsa, claims_of(issuer)),
        "malformed": signature_respelled(issuer, with_tildes),
        "bad_claim": issuer.mint(audience=RESOURCE, scope="mcp:access\tadmin"),
    }
    for reason, token in cases.items():
        before = len(gateway_logs.lines())
        status, _, _ = await post(gateway, {"Authorization": f"Bearer {token}"})
        assert status == 401
        lines = [event for event in gateway_logs.events()[before:] if event["event"] == "request"]
        assert [event.get("reason") for event in lines] == [reason]
    assert await upstream.requests() == []
