"""Which path a presented token takes, and that it is hashed only once on the way, whichever path."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.auth.authenticator import Authenticator
from gateway.auth.introspection import Introspector
from gateway.auth.jwks import IssuerKeys
from gateway.auth.tokens import JwtAuthenticator, bearer_token_from
from gateway.config import IntrospectionConfig, IssuerConfig, JwksFile
from gateway.errors import InvalidToken
from gateway.secret import PresentedToken, Secret
from tests.support.fake_as import FakeAuthorizationServer, serving_fake_as
from tests.support.issuer import SigningKey, TestIssuer

JWT_ISSUER = "https://as.jwt.example"
RESOURCE = "https://gw.example/a/mcp"
OPAQUE = "opaque-access-token-7"


@pytest.fixture
def issuer() -> TestIssuer:
    return TestIssuer(keys=[SigningKey.generate("ES256", kid="k1")], base_url=JWT_ISSUER)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def jwks_file(issuer: TestIssuer, tmp_path: Path) -> Path:
    """The JWT issuer's JWKS, written before any event loop runs (no blocking call on one)."""
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(issuer.jwks()))
    return path


@pytest.fixture
async def keys(jwks_file: Path, session: aiohttp.ClientSession) -> AsyncIterator[IssuerKeys]:
    """The JWT issuer's keys, from a JWKS file."""
    config = IssuerConfig(issuer=JWT_ISSUER, algorithms=("ES256",), jwks=JwksFile(jwks_file), leeway_s=30)
    issuer_keys = IssuerKeys(config, session)
    yield issuer_keys
    await issuer_keys.aclose()


@pytest.fixture
async def fake() -> AsyncIterator[FakeAuthorizationServer]:
    async with serving_fake_as() as server:
        yield server


def introspector(fake: FakeAuthorizationServer, session: aiohttp.ClientSession) -> Introspector:
    introspection = IntrospectionConfig(
        endpoint=fake.introspection_endpoint,
        client_id=fake.client_id,
        client_secret=Secret(fake.client_secret),
        timeout_s=2,
    )
    config = IssuerConfig(issuer=fake.issuer, algorithms=(), jwks=None, introspection=introspection)
    return Introspector(config, session)


def active(fake: FakeAuthorizationServer) -> dict[str, Any]:
    return {"active": True, "iss": fake.issuer, "sub": "bob", "aud": RESOURCE, "exp": int(time.time() + 600)}


def hashes_of(monkeypatch: pytest.MonkeyPatch, token: str) -> list[None]:
    """One entry per SHA-256 anyone takes of ``token`` from now on: hashlib is watched, the gateway is not."""
    real = hashlib.sha256
    taken: list[None] = []

    def sha256(data: bytes = b"", **kwargs: Any) -> Any:
        if isinstance(data, bytes) and data == token.encode():
            taken.append(None)
        return real(data, **kwargs)

    monkeypatch.setattr(hashlib, "sha256", sha256)
    return taken


async def test_an_opaque_token_is_hashed_once_per_request_in_introspection_mode(
    monkeypatch: pytest.MonkeyPatch,
    keys: IssuerKeys,
    fake: FakeAuthorizationServer,
    session: aiohttp.ClientSession,
) -> None:
    """Header to Principal with introspection configured: one SHA-256 per request, the presented one."""
    fake.introspection[OPAQUE] = active(fake)
    authenticator = Authenticator(JwtAuthenticator({JWT_ISSUER: keys}), introspector(fake, session))
    taken = hashes_of(monkeypatch, OPAQUE)
    for request in range(1, 4):
        token = bearer_token_from([f"Bearer {OPAQUE}"], query_has_token=False)
        principal = await authenticator.authenticate(token, RESOURCE)
        assert principal.subject == "bob" and principal.token is token
        assert len(taken) == request
    assert fake.introspection_calls == 1


async def test_a_jwt_is_hashed_once_per_request_in_introspection_mode(
    monkeypatch: pytest.MonkeyPatch,
    issuer: TestIssuer,
    keys: IssuerKeys,
    fake: FakeAuthorizationServer,
    session: aiohttp.ClientSession,
) -> None:
    """A JWT of a JWKS issuer is verified locally, then served from the cache: one SHA-256 per request."""
    jwt = issuer.mint(audience=RESOURCE, subject="alice")
    authenticator = Authenticator(JwtAuthenticator({JWT_ISSUER: keys}), introspector(fake, session))
    taken = hashes_of(monkeypatch, jwt)
    for request in range(1, 4):
        token = bearer_token_from([f"Bearer {jwt}"], query_has_token=False)
        principal = await authenticator.authenticate(token, RESOURCE)
        assert principal.subject == "alice" and principal.token is token
        assert len(taken) == request
    assert fake.introspection_calls == 0


async def test_a_jws_of_an_unknown_issuer_goes_to_introspection(
    keys: IssuerKeys, fake: FakeAuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """A JWS whose iss is no JWKS issuer is, for the gateway, an opaque token of the introspection issuer."""
    foreign = TestIssuer(keys=[SigningKey.generate("ES256", kid="f1")], base_url="https://elsewhere.example")
    token = foreign.mint(audience=RESOURCE)
    fake.introspection[token] = active(fake)
    authenticator = Authenticator(JwtAuthenticator({JWT_ISSUER: keys}), introspector(fake, session))
    principal = await authenticator.authenticate(PresentedToken(token), RESOURCE)
    assert principal.issuer == fake.issuer and fake.introspection_calls == 1


async def test_without_introspection_an_opaque_token_is_malformed(keys: IssuerKeys) -> None:
    """With no introspection issuer, a token that is no JWS is refused as malformed."""
    authenticator = Authenticator(JwtAuthenticator({JWT_ISSUER: keys}), None)
    with pytest.raises(InvalidToken) as refused:
        await authenticator.authenticate(PresentedToken(OPAQUE), RESOURCE)
    reason: str = refused.value.reason
    assert reason == "malformed"


async def test_without_introspection_an_unknown_issuer_is_refused(keys: IssuerKeys) -> None:
    """With no introspection issuer, a JWS naming no configured issuer is unknown_issuer."""
    foreign = TestIssuer(keys=[SigningKey.generate("ES256", kid="f1")], base_url="https://elsewhere.example")
    authenticator = Authenticator(JwtAuthenticator({JWT_ISSUER: keys}), None)
    with pytest.raises(InvalidToken) as refused:
        await authenticator.authenticate(PresentedToken(foreign.mint(audience=RESOURCE)), RESOURCE)
    reason: str = refused.value.reason
    assert reason == "unknown_issuer"


async def test_an_unknown_issuer_refusal_names_the_token_iss_and_the_configured_issuers(
    keys: IssuerKeys,
) -> None:
    """unknown_issuer's log detail (the `rejected` event) quotes the token's iss and every configured
    JWKS issuer, so a mismatch is visible at a glance; the token itself is not in it."""
    foreign = TestIssuer(keys=[SigningKey.generate("ES256", kid="f1")], base_url="https://as.jwt.example/")
    token = foreign.mint(audience=RESOURCE)
    authenticator = Authenticator(JwtAuthenticator({JWT_ISSUER: keys}), None)
    with pytest.raises(InvalidToken) as refused:
        await authenticator.authenticate(PresentedToken(token), RESOURCE)
    detail = refused.value.detail
    assert "token iss 'https://as.jwt.example/'" in detail and f"configured: {JWT_ISSUER!r}" in detail
    assert token not in detail and all(part not in detail for part in token.split("."))
