"""Parsing a JWKS into verification keys, and where issuer metadata is looked up."""

from __future__ import annotations

from typing import Any

from gateway.auth.jwks import authorization_server_metadata_urls, parse_jwks
from tests.support.issuer import SigningKey

ALL = frozenset({"RS256", "PS256", "ES256", "EdDSA"})


def test_keys_bound_to_declared_algorithm_and_allowlist() -> None:
    """A JWK's own `alg` narrows it to that algorithm; the issuer's allowlist narrows further."""
    rsa, ec = SigningKey.generate("RS256", kid="r"), SigningKey.generate("ES256", kid="e")
    keyset, skipped = parse_jwks({"keys": [rsa.public_jwk(), ec.public_jwk()]}, frozenset({"RS256"}))
    assert [(key.kid, key.algorithms) for key in keyset.keys] == [("r", frozenset({"RS256"}))]
    assert len(skipped) == 1 and "no allowed algorithm" in skipped[0]
    assert keyset.candidates("r", "RS256") and not keyset.candidates("r", "PS256")


def test_rsa_key_without_alg_may_serve_rsa_algorithms_only() -> None:
    """Without `alg`, an RSA key fits RS*/PS* that are allowed, never ES* or HS*."""
    jwk = SigningKey.generate("RS256", kid="r").public_jwk()
    del jwk["alg"]
    keyset, _ = parse_jwks({"keys": [jwk]}, ALL | {"HS256"})
    assert keyset.keys[0].algorithms == {"RS256", "PS256"}


def test_encryption_private_and_symmetric_keys_are_skipped() -> None:
    """`use: enc` keys are ignored; private or symmetric material is refused loudly."""
    enc = SigningKey.generate("RS256", kid="enc").public_jwk() | {"use": "enc"}
    private: dict[str, Any] = SigningKey.generate("RS256", kid="p").public_jwk() | {"d": "AAAA"}
    symmetric = {"kty": "oct", "k": "c2VjcmV0", "kid": "s"}
    keyset, skipped = parse_jwks({"keys": [enc, private, symmetric]}, ALL)
    assert keyset.keys == ()
    assert len(skipped) == 2


def test_metadata_urls_for_issuers_with_and_without_path() -> None:
    """RFC 8414 inserts the well-known segment; OIDC appends it; both are tried in that order."""
    assert authorization_server_metadata_urls("https://as.example") == [
        "https://as.example/.well-known/oauth-authorization-server",
        "https://as.example/.well-known/openid-configuration",
    ]
    assert authorization_server_metadata_urls("https://as.example/tenant/1") == [
        "https://as.example/.well-known/oauth-authorization-server/tenant/1",
        "https://as.example/.well-known/openid-configuration/tenant/1",
        "https://as.example/tenant/1/.well-known/openid-configuration",
    ]
