"""Downstream tokens minted by the gateway: verified with PyJWT against the published JWKS."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.config import ConfigError, MintingConfig, SigningKeyConfig, parse_config_text
from gateway.errors import InvalidToken
from gateway.principal import Principal
from gateway.secret import PresentedToken
from gateway.upstream.minting import MintingError, SigningKeyError, TokenMinter, minted_claims

ISSUER = "https://mcp.example.com/upstream-tokens"
AUDIENCE = "https://upstream.internal/mcp"
NOW = 1_800_000_000.25  # a fixed instant with a fraction, to check rounding
ALGORITHMS = ("ES256", "RS256", "EdDSA")
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


# --- helpers ----------------------------------------------------------------------------------


def write_key(folder: Path, alg: str, name: str) -> Path:
    """A fresh unencrypted PKCS#8 PEM private key for ``alg``."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if alg == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif alg == "RS256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    path = folder / f"{name}.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def minting_config(folder: Path, *specs: tuple[str, str], active: str | None = None) -> MintingConfig:
    """``specs`` are (kid, alg); the first key is active unless ``active`` says otherwise."""
    keys = tuple(SigningKeyConfig(kid=kid, alg=alg, path=write_key(folder, alg, kid)) for kid, alg in specs)
    return MintingConfig(issuer=ISSUER, keys=keys, active_kid=active or keys[0].kid)


def principal(
    *,
    expires_at: float = NOW + 3600,
    client_id: str | None = "mcp-client",
    scopes: frozenset[str] = frozenset({"mcp:access", "repo:read"}),
    **claims: Any,
) -> Principal:
    return Principal(
        issuer="https://auth.example.com",
        subject="alice",
        client_id=client_id,
        scopes=scopes,
        audience=("https://mcp.example.com/mcp",),
        expires_at=expires_at,
        token_id="incoming-jti",
        token=PresentedToken("the-client-token"),
        claims=MappingProxyType({"sub": "alice", **claims}),
    )


def fixed_clock(value: float = NOW) -> Callable[[], float]:
    return lambda: value


def verify(token: str, jwks: dict[str, Any], *, at: float = NOW) -> dict[str, Any]:
    """Verify ``token`` against ``jwks`` as an upstream would: kid lookup, pinned alg, iss, aud."""
    header = jwt.get_unverified_header(token)
    key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims: dict[str, Any] = jwt.decode(
        token,
        key=key,
        algorithms=[key.algorithm_name],
        audience=AUDIENCE,
        issuer=ISSUER,
        # PyJWT checks exp against the real clock; the minter's clock is fixed, so check at `at`.
        options={"verify_exp": False, "verify_iat": False, "require": ["exp", "iat", "jti", "sub"]},
    )
    assert claims["iat"] <= at < claims["exp"]
    return claims


# --- the token ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_minted_token_verifies_with_every_claim(tmp_path: Path, alg: str) -> None:
    """Each alg's token verifies from the JWKS: at+jwt, exactly the caller's claims, a 128-bit jti."""
    minter = TokenMinter(minting_config(tmp_path, ("k1", alg)), clock=fixed_clock())
    caller = principal(auth_time=NOW - 60, acr="urn:mfa", amr=["pwd", "otp"])

    token = minter.mint(caller, audience=AUDIENCE, scopes=("mcp:access", "repo:read"), ttl_s=300)

    header = jwt.get_unverified_header(token)
    assert header == {"typ": "at+jwt", "alg": alg, "kid": "k1"}
    claims = verify(token, minter.jwks())
    assert claims["iss"] == ISSUER
    assert claims["aud"] == AUDIENCE
    assert claims["sub"] == "alice"
    assert claims["client_id"] == "mcp-client"
    assert claims["act"] == {"sub": "mcp-client"}
    assert claims["scope"] == "mcp:access repo:read"
    assert claims["iat"] == int(NOW)
    assert claims["exp"] == int(NOW) + 300
    assert (claims["auth_time"], claims["acr"], claims["amr"]) == (NOW - 60, "urn:mfa", ["pwd", "otp"])
    assert len(base64.urlsafe_b64decode(claims["jti"] + "==")) == 16  # 128 random bits
    assert set(claims) == {
        "iss",
        "aud",
        "sub",
        "client_id",
        "act",
        "iat",
        "exp",
        "jti",
        "scope",
        "auth_time",
        "acr",
        "amr",
    }
    assert "the-client-token" not in token


def test_incoming_act_is_nested_under_the_client(tmp_path: Path) -> None:
    """RFC 8693 §4.1: the current actor is outermost; the prior delegation chain is kept inside."""
    minter = TokenMinter(minting_config(tmp_path, ("k1", "ES256")), clock=fixed_clock())
    prior = {"sub": "agent-7", "act": {"sub": "orchestrator"}}

    claims = verify(
        minter.mint(principal(act=prior), audience=AUDIENCE, scopes=None, ttl_s=60), minter.jwks()
    )

    assert claims["act"] == {"sub": "mcp-client", "act": {"sub": "agent-7", "act": {"sub": "orchestrator"}}}


@pytest.mark.parametrize(
    ("scopes", "expected"),
    [
        (("mcp:access",), "mcp:access"),
        (("mcp:access", "repo:read"), "mcp:access repo:read"),
        ((), ""),  # an explicit, empty scope: not the same as no claim at all
        (None, ...),  # omitted
    ],
)
def test_scope_claim(tmp_path: Path, scopes: tuple[str, ...] | None, expected: object) -> None:
    """The scope claim joins the scopes; an empty tuple gives an empty claim and None no claim."""
    minter = TokenMinter(minting_config(tmp_path, ("k1", "EdDSA")), clock=fixed_clock())
    claims = verify(minter.mint(principal(), audience=AUDIENCE, scopes=scopes, ttl_s=60), minter.jwks())
    assert claims.get("scope", ...) == expected


def test_absent_authentication_claims_are_not_invented(tmp_path: Path) -> None:
    """auth_time, acr, amr and scope are left out when neither the caller nor the call has them."""
    minter = TokenMinter(minting_config(tmp_path, ("k1", "ES256")), clock=fixed_clock())
    claims = verify(minter.mint(principal(), audience=AUDIENCE, scopes=None, ttl_s=60), minter.jwks())
    assert not {"auth_time", "acr", "amr", "scope"} & claims.keys()


def test_jti_is_unique_across_1000_mints(tmp_path: Path) -> None:
    """1000 mints give 1000 different jtis and 1000 different tokens."""
    minter = TokenMinter(minting_config(tmp_path, ("k1", "EdDSA")), clock=fixed_clock())
    caller = principal()
    tokens = [minter.mint(caller, audience=AUDIENCE, scopes=None, ttl_s=60) for _ in range(1000)]
    jtis = {jwt.decode(token, options={"verify_signature": False})["jti"] for token in tokens}
    assert len(jtis) == 1000
    assert len(set(tokens)) == 1000  # no cached signature either


# --- lifetime ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_expires_at", "ttl_s", "expected_exp"),
    [
        (NOW + 3600, 300, int(NOW) + 300),  # the ttl decides
        (NOW + 120.9, 300, int(NOW + 120.9)),  # the client's token decides, rounded down
        (NOW + 3600, 2.5, int(NOW) + 2),  # a fractional ttl never stretches the lifetime
        (NOW + 300, 300, int(NOW) + 300),
    ],
)
def test_exp_never_after_the_client_token_nor_the_ttl(
    tmp_path: Path, client_expires_at: float, ttl_s: float, expected_exp: int
) -> None:
    """`exp` is the earlier of the client token's expiry and now plus the ttl, rounded down."""
    minter = TokenMinter(minting_config(tmp_path, ("k1", "ES256")), clock=fixed_clock())

    claims = verify(
        minter.mint(principal(expires_at=client_expires_at), audience=AUDIENCE, scopes=None, ttl_s=ttl_s),
        minter.jwks(),
    )

    assert claims["exp"] == expected_exp
    assert claims["exp"] <= client_expires_at
    assert claims["exp"] <= NOW + ttl_s
    assert claims["exp"] - claims["iat"] <= ttl_s


@pytest.mark.parametrize("client_expires_at", [NOW - 10, NOW, NOW + 0.5])
def test_a_client_token_at_its_end_gets_no_downstream_token(tmp_path: Path, client_expires_at: float) -> None:
    """Within the validation leeway the client's token may be (about to be) expired: a token born
    expired is refused here, as expired, rather than by the upstream."""
    minter = TokenMinter(minting_config(tmp_path, ("k1", "ES256")), clock=fixed_clock())
    with pytest.raises(InvalidToken) as caught:
        minter.mint(principal(expires_at=client_expires_at), audience=AUDIENCE, scopes=None, ttl_s=300)
    reason: str = caught.value.reason
    assert reason == "expired"


def test_the_clock_is_read_on_every_mint(tmp_path: Path) -> None:
    """The clock is read at every mint, so `iat` moves with it."""
    now = [NOW]
    minter = TokenMinter(minting_config(tmp_path, ("k1", "ES256")), clock=lambda: now[0])
    first = minter.mint(principal(), audience=AUDIENCE, scopes=None, ttl_s=60)
    now[0] += 100
    second = minter.mint(principal(), audience=AUDIENCE, scopes=None, ttl_s=60)
    assert verify(second, minter.jwks(), at=now[0])["iat"] - verify(first, minter.jwks())["iat"] == 100


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("client_id", [None, ""])
def test_a_caller_without_a_client_gets_no_token(tmp_path: Path, client_id: str | None) -> None:
    """RFC 9068 §2.2 makes client_id required, and act needs an actor: fail closed."""
    minter = TokenMinter(minting_config(tmp_path, ("k1", "ES256")), clock=fixed_clock())
    with pytest.raises(MintingError) as caught:
        minter.mint(principal(client_id=client_id), audience=AUDIENCE, scopes=None, ttl_s=60)
    assert caught.value.status == 500
    assert "the-client-token" not in str(caught.value)


@pytest.mark.parametrize("act", ["agent-7", ["agent-7"], 7])
def test_a_malformed_incoming_act_is_refused(act: object) -> None:
    """An incoming `act` that is not an object is refused with a minting error."""
    with pytest.raises(MintingError, match="act"):
        minted_claims(
            principal(act=act), issuer=ISSUER, audience=AUDIENCE, scopes=None, ttl_s=60, now=NOW, jti="j"
        )


def test_minted_claims_is_pure() -> None:
    """`minted_claims` returns fresh claims: changing them never changes the principal's."""
    caller = principal(act={"sub": "agent"}, amr=["pwd"])
    args: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "scopes": ("a",), "ttl_s": 60, "now": NOW}
    first = minted_claims(caller, jti="j", **args)
    first["act"]["act"]["sub"] = "changed"  # the result shares nothing with the principal
    first["amr"].append("x")
    assert minted_claims(caller, jti="j", **args) == {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "client_id": "mcp-client",
        "act": {"sub": "mcp-client", "act": {"sub": "agent"}},
        "iat": int(NOW),
        "exp": int(NOW) + 60,
        "jti": "j",
        "scope": "a",
        "amr": ["pwd"],
    }


# --- keys: rotation, publication, loading ------------------------------------------------------


def test_rotation_active_key_signs_and_every_key_is_published(tmp_path: Path) -> None:
    """The active kid signs, and every configured key is published, so older tokens still verify."""
    before = minting_config(tmp_path, ("k1", "ES256"), ("k2", "RS256"), active="k1")
    old_minter = TokenMinter(before, clock=fixed_clock())
    old_token = old_minter.mint(principal(), audience=AUDIENCE, scopes=None, ttl_s=300)

    rotated = TokenMinter(replace(before, active_kid="k2"), clock=fixed_clock())
    new_token = rotated.mint(principal(), audience=AUDIENCE, scopes=None, ttl_s=300)

    jwks = rotated.jwks()
    assert [(key["kid"], key["alg"], key["use"]) for key in jwks["keys"]] == [
        ("k1", "ES256", "sig"),
        ("k2", "RS256", "sig"),
    ]
    assert jwt.get_unverified_header(new_token)["kid"] == "k2"
    assert jwt.get_unverified_header(new_token)["alg"] == "RS256"
    assert verify(new_token, jwks)["sub"] == "alice"
    assert verify(old_token, jwks)["sub"] == "alice"  # issued before the rotation, still valid


def test_a_token_does_not_verify_under_another_kid(tmp_path: Path) -> None:
    """A token's signature does not verify under another published key."""
    minter = TokenMinter(minting_config(tmp_path, ("k1", "ES256"), ("k2", "ES256")), clock=fixed_clock())
    token = minter.mint(principal(), audience=AUDIENCE, scopes=None, ttl_s=60)
    other = jwt.PyJWKSet.from_dict(minter.jwks())["k2"]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, key=other, algorithms=["ES256"], audience=AUDIENCE, options={"verify_exp": False})


def test_jwks_has_public_members_only(tmp_path: Path) -> None:
    """The JWKS carries only public members for EC, RSA and Ed25519, with full-size EC coordinates."""
    minter = TokenMinter(
        minting_config(tmp_path, ("ec", "ES256"), ("rsa", "RS256"), ("ed", "EdDSA")), clock=fixed_clock()
    )
    jwks = minter.jwks()
    assert set(jwks) == {"keys"}
    members = {key["kid"]: set(key) for key in jwks["keys"]}
    assert members == {
        "ec": {"kty", "crv", "x", "y", "kid", "alg", "use"},
        "rsa": {"kty", "n", "e", "kid", "alg", "use"},
        "ed": {"kty", "crv", "x", "kid", "alg", "use"},
    }
    for key in jwks["keys"]:
        assert not PRIVATE_MEMBERS & key.keys()
    ec_key, _, ed_key = jwks["keys"]
    assert (ec_key["crv"], ed_key["crv"]) == ("P-256", "Ed25519")
    # RFC 7518 §6.2.1.2: EC coordinates are always full size (32 bytes for P-256).
    assert all(len(base64.urlsafe_b64decode(ec_key[c] + "==")) == 32 for c in ("x", "y"))


def test_jwks_is_a_copy(tmp_path: Path) -> None:
    """Changing a returned JWKS leaves the minter's own unchanged."""
    minter = TokenMinter(minting_config(tmp_path, ("k1", "ES256")), clock=fixed_clock())
    minter.jwks()["keys"].clear()
    assert len(minter.jwks()["keys"]) == 1


@pytest.mark.parametrize(
    ("issuer", "metadata_path", "jwks_path"),
    [
        (
            "https://mcp.example.com/upstream-tokens",
            "/.well-known/oauth-authorization-server/upstream-tokens",
            "/upstream-tokens/jwks.json",
        ),
        (
            "https://x.example/gw/upstream-tokens",  # public_url with a base path
            "/.well-known/oauth-authorization-server/gw/upstream-tokens",
            "/gw/upstream-tokens/jwks.json",
        ),
        ("https://tokens.example", "/.well-known/oauth-authorization-server", "/jwks.json"),
    ],
)
def test_metadata_and_paths(tmp_path: Path, issuer: str, metadata_path: str, jwks_path: str) -> None:
    """Metadata and JWKS paths follow the issuer's path, and jwks_uri is absolute under the issuer."""
    config = replace(minting_config(tmp_path, ("k1", "ES256")), issuer=issuer)
    minter = TokenMinter(config, clock=fixed_clock())
    assert minter.metadata_path == metadata_path
    assert minter.jwks_path == jwks_path
    assert minter.metadata() == {"issuer": issuer, "jwks_uri": issuer + "/jwks.json"}
    origin = issuer.split("/", 3)[:3]
    assert minter.metadata()["jwks_uri"] == "/".join(origin) + jwks_path  # absolute, same place


@pytest.mark.parametrize(
    ("alg", "wrong_alg", "message"),
    [
        ("ES256", "RS256", "RS256 needs an RSA private key"),
        ("RS256", "EdDSA", "EdDSA needs an Ed25519 private key"),
        ("EdDSA", "ES256", "ES256 needs an EC P-256 private key"),
    ],
)
def test_a_key_of_the_wrong_type_is_refused(tmp_path: Path, alg: str, wrong_alg: str, message: str) -> None:
    """A key whose type does not fit its alg is refused at construction, naming the type needed."""
    path = write_key(tmp_path, alg, "k1")
    config = MintingConfig(issuer=ISSUER, keys=(SigningKeyConfig("k1", wrong_alg, path),), active_kid="k1")
    with pytest.raises(SigningKeyError, match=message):
        TokenMinter(config)


@pytest.mark.parametrize(("alg", "wrong_alg"), [("ES256", "RS256"), ("RS256", "EdDSA"), ("EdDSA", "ES256")])
def test_check_config_and_the_minter_refuse_a_key_for_the_same_reason(
    tmp_path: Path, alg: str, wrong_alg: str
) -> None:
    """One key loader: the config problem and the minter's error give the same reason."""
    path = write_key(tmp_path, alg, "k1")
    text = (
        "public_url: https://mcp.example.com\n"
        "issuers: [{issuer: https://auth.example.com, algorithms: [RS256], jwks: {discover: true}}]\n"
        f"minting: {{keys: [{{kid: k1, alg: {wrong_alg}, file: {path.name}}}]}}\n"
        "routes: [{path: /mcp, upstream: http://127.0.0.1:9000/mcp}]\n"
    )
    with pytest.raises(ConfigError) as in_config:
        parse_config_text(text, tmp_path / "gateway.yaml", {})
    config = MintingConfig(issuer=ISSUER, keys=(SigningKeyConfig("k1", wrong_alg, path),), active_kid="k1")
    with pytest.raises(SigningKeyError) as in_minter:
        TokenMinter(config)
    [problem] = in_config.value.problems
    assert problem.key_path == "minting.keys[0].file"
    assert str(in_minter.value) == f"signing key 'k1' ({str(path)!r}): {problem.message}"


def test_other_key_problems_are_refused_at_construction(tmp_path: Path) -> None:
    """An unknown active kid, no keys, a shared kid, a missing file or a short RSA key is refused."""
    key = SigningKeyConfig("k1", "ES256", write_key(tmp_path, "ES256", "k1"))
    missing = SigningKeyConfig("k2", "ES256", tmp_path / "missing.pem")
    small = tmp_path / "small.pem"
    small.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(  # noqa: S505 (refused on purpose)
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cases = [
        (MintingConfig(ISSUER, (key,), "nope"), "no signing key has the active kid 'nope'"),
        (MintingConfig(ISSUER, (), "k1"), "at least one signing key"),
        (MintingConfig(ISSUER, (key, replace(key)), "k1"), "share a kid"),
        (MintingConfig(ISSUER, (key, missing), "k1"), "'k2'.*cannot load a private key: FileNotFoundError"),
        (
            MintingConfig(ISSUER, (SigningKeyConfig("k3", "RS256", small),), "k3"),
            "at least 2048 bits",
        ),
    ]
    for config, message in cases:
        with pytest.raises(SigningKeyError, match=message):
            TokenMinter(config)


def test_repr_names_keys_never_material(tmp_path: Path) -> None:
    """The minter's repr names its issuer and kids, never key material."""
    config = minting_config(tmp_path, ("k1", "ES256"), ("k2", "EdDSA"), active="k2")
    minter = TokenMinter(config)
    assert repr(minter) == f"TokenMinter(issuer={ISSUER!r}, active_kid='k2', kids=[k1, k2])"
    pem_body = config.keys[0].path.read_text().splitlines()[1]
    assert pem_body not in repr(minter)
