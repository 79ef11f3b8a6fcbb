"""The caller as later steps see it: an identity from the claims, plus the token it presented."""

from __future__ import annotations

import dataclasses
import hashlib
from types import MappingProxyType

import pytest

from gateway.principal import Identity, Principal
from gateway.secret import PresentedToken, Secret

CANARY = "canary-token-5f1e"

IDENTITY = Identity(
    issuer="https://as.example",
    subject="alice",
    client_id="c",
    scopes=frozenset({"a", "b"}),
    audience=("https://gw.example/mcp",),
    expires_at=1_800_000_000.0,
    token_id="j1",
    claims=MappingProxyType({"sub": "alice"}),
)


def test_presented_with_keeps_every_identity_field_and_adds_the_token() -> None:
    """Attaching the token changes nothing the claims said: every Identity field carries over."""
    token = PresentedToken(CANARY)
    principal = IDENTITY.presented_with(token)
    assert isinstance(principal, Principal) and principal.token is token
    for field in dataclasses.fields(Identity):
        assert getattr(principal, field.name) == getattr(IDENTITY, field.name), field.name


def test_a_principal_never_prints_its_token() -> None:
    """repr and str of the principal and of its token show no part of the token."""
    principal = IDENTITY.presented_with(PresentedToken(CANARY))
    for shown in (repr(principal), str(principal), repr(principal.token), str(principal.token)):
        assert CANARY not in shown
    assert repr(principal.token) == "PresentedToken('***')"


def test_presented_token_digest_is_its_sha256() -> None:
    """The digest is the hex SHA-256 of the token; the token itself is still there to reveal."""
    token = PresentedToken(CANARY)
    assert token.sha256 == hashlib.sha256(CANARY.encode()).hexdigest() and token.reveal() == CANARY
    assert isinstance(token, Secret)


def test_a_presented_token_is_no_dictionary_key() -> None:
    """Like every Secret, it cannot be hashed: caches must key on its sha256 instead."""
    with pytest.raises(TypeError):
        {PresentedToken(CANARY): 1}
