"""The verified-token cache: a hit skips the signature check, never a claim check or a key change."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.auth.jwks import IssuerKeys
from gateway.auth.tokens import JwtAuthenticator
from gateway.config import IssuerConfig, JwksFile
from gateway.errors import InvalidToken
from gateway.secret import PresentedToken
from tests.support.issuer import SigningKey, TestIssuer

ISSUER = "https://as.cache.example"
RESOURCE = "https://gw.example/a/mcp"
OTHER_RESOURCE = "https://gw.example/b/mcp"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer() -> TestIssuer:
    return TestIssuer(keys=[SigningKey.generate("ES256", kid="k1")], base_url=ISSUER)


@pytest.fixture
def jwks_file(issuer: TestIssuer, tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(issuer.jwks()))  # before any event loop runs: not a blocking call on one
    return path


@pytest.fixture
async def keys(jwks_file: Path) -> AsyncIterator[IssuerKeys]:
    config = IssuerConfig(
        issuer=ISSUER, algorithms=("ES256",), jwks=JwksFile(jwks_file), leeway_s=30, jwks_refresh_cooldown_s=0
    )
    async with aiohttp.ClientSession() as session:
        issuer_keys = IssuerKeys(config, session)
        yield issuer_keys
        await issuer_keys.aclose()


async def refused_reason(authenticator: JwtAuthenticator, token: PresentedToken, resource: str) -> str:
    with pytest.raises(InvalidToken) as refused:
        await authenticator.authenticate(token, resource)
    return refused.value.reason


async def test_a_verified_token_is_cached_and_its_claims_still_checked_per_route(
    issuer: TestIssuer, keys: IssuerKeys
) -> None:
    """A verified token is served from the cache, but its audience is still checked per route."""
    authenticator = JwtAuthenticator({ISSUER: keys})
    token = PresentedToken(issuer.mint(audience=RESOURCE, scope="mcp:access tools:echo", subject="alice"))
    assert authenticator.cached(token, RESOURCE) is None

    first = await authenticator.authenticate(token, RESOURCE)
    hit = authenticator.cached(token, RESOURCE)
    assert hit is not None
    assert (hit.subject, hit.scopes, hit.token.reveal()) == ("alice", first.scopes, token.reveal())
    # Every request of the token shares one claims object: what per-token caches key on.
    assert hit.claims is first.claims and authenticator.cached(token, RESOURCE).claims is first.claims  # type: ignore[union-attr]
    # The audience is checked against the route asking, on a hit as on a miss.
    with pytest.raises(InvalidToken) as refused:
        authenticator.cached(token, OTHER_RESOURCE)
    reason: str = refused.value.reason
    assert reason == "bad_audience"
    assert await refused_reason(authenticator, token, OTHER_RESOURCE) == "bad_audience"


async def test_a_cached_token_is_refused_once_expired(issuer: TestIssuer, keys: IssuerKeys) -> None:
    """A cached token is served until `exp` plus the leeway, then refused as expired."""
    clock = Clock()
    authenticator = JwtAuthenticator({ISSUER: keys}, clock=clock)
    token = PresentedToken(issuer.mint(audience=RESOURCE, lifetime_s=60))
    await authenticator.authenticate(token, RESOURCE)
    clock.now += 60 + 29  # inside the 30 s leeway: still served from the cache
    assert authenticator.cached(token, RESOURCE) is not None
    clock.now += 2
    assert authenticator.cached(token, RESOURCE) is None
    assert await refused_reason(authenticator, token, RESOURCE) == "expired"


async def test_a_refused_token_is_not_cached(issuer: TestIssuer, keys: IssuerKeys) -> None:
    """A refused token is never cached, not even for the resource it was minted for."""
    authenticator = JwtAuthenticator({ISSUER: keys})
    token = PresentedToken(issuer.mint(audience=OTHER_RESOURCE))
    assert await refused_reason(authenticator, token, RESOURCE) == "bad_audience"
    assert authenticator.cached(token, OTHER_RESOURCE) is None


async def test_a_removed_key_stops_its_cached_tokens_at_the_next_key_load(
    issuer: TestIssuer, keys: IssuerKeys
) -> None:
    """Rotation that retires the old key: tokens it signed fail at once, cache or no cache."""
    authenticator = JwtAuthenticator({ISSUER: keys})
    old_token = PresentedToken(issuer.mint(audience=RESOURCE))
    await authenticator.authenticate(old_token, RESOURCE)
    assert authenticator.cached(old_token, RESOURCE) is not None

    issuer.keys[:] = [SigningKey.generate("ES256", kid="k2")]
    assert isinstance(keys.issuer.jwks, JwksFile)
    await asyncio.to_thread(keys.issuer.jwks.path.write_text, json.dumps(issuer.jwks()))
    # A token with the new, unknown kid makes the gateway reload the issuer's keys.
    await authenticator.authenticate(PresentedToken(issuer.mint(audience=RESOURCE)), RESOURCE)

    assert authenticator.cached(old_token, RESOURCE) is None
    assert await refused_reason(authenticator, old_token, RESOURCE) == "unknown_kid"


async def test_the_cache_is_bounded(issuer: TestIssuer, keys: IssuerKeys) -> None:
    """The cache keeps at most `cache_size` tokens, dropping the least recently used."""
    authenticator = JwtAuthenticator({ISSUER: keys}, cache_size=2)
    tokens = [PresentedToken(issuer.mint(audience=RESOURCE, subject=f"user-{n}")) for n in range(3)]
    for token in tokens:
        await authenticator.authenticate(token, RESOURCE)
    # Least recently used goes first; the newest two stay.
    assert authenticator.cached(tokens[0], RESOURCE) is None
    assert all(authenticator.cached(token, RESOURCE) is not None for token in tokens[1:])


async def test_a_cached_tokens_identity_is_kept_per_route_and_a_refusal_never_is(
    issuer: TestIssuer, keys: IssuerKeys
) -> None:
    """A token for two routes is served for each from its cache entry, the claim checks that do
    not depend on the time done once per route (the identity is the same object on each hit);
    a route outside its audience is refused on every request, never remembered as served."""
    clock = Clock()
    authenticator = JwtAuthenticator({ISSUER: keys}, clock=clock)
    token = PresentedToken(
        issuer.mint(audience=[RESOURCE, OTHER_RESOURCE], scope="mcp:access tools:echo", lifetime_s=60)
    )
    await authenticator.authenticate(token, RESOURCE)
    for resource in (RESOURCE, OTHER_RESOURCE):
        first, again = authenticator.cached(token, resource), authenticator.cached(token, resource)
        assert first is not None and again is not None
        assert first.scopes == {"mcp:access", "tools:echo"} and again.scopes is first.scopes
        assert first.audience == (RESOURCE, OTHER_RESOURCE)
    for _ in range(2):
        with pytest.raises(InvalidToken) as refused:
            authenticator.cached(token, "https://gw.example/c/mcp")
        assert refused.value.reason == "bad_audience"
    clock.now += 60 + 31  # past exp and the leeway: the kept identities serve nothing
    assert authenticator.cached(token, RESOURCE) is None
    assert await refused_reason(authenticator, token, OTHER_RESOURCE) == "expired"


async def test_kept_identities_are_bounded_and_never_serve_another_issuer_config(
    issuer: TestIssuer, keys: IssuerKeys
) -> None:
    """Past its bound of kept routes a token is still checked per route, afresh each time; an
    identity kept under one issuer config object is not used under another (it is checked
    again), though a reload builds a new authenticator anyway."""
    resources = [f"https://gw.example/r{n}/mcp" for n in range(20)]
    authenticator = JwtAuthenticator({ISSUER: keys})
    token = PresentedToken(issuer.mint(audience=resources, scope="mcp:access"))
    await authenticator.authenticate(token, resources[0])
    for resource in resources:
        hits = authenticator.cached(token, resource), authenticator.cached(token, resource)
        assert all(hit is not None and hit.audience == tuple(resources) for hit in hits)
    kept = authenticator.cached(token, resources[0])
    late = [authenticator.cached(token, resources[-1]) for _ in range(2)]
    assert kept is not None and late[0] is not None and late[1] is not None
    assert late[0].scopes == late[1].scopes and late[0].scopes is not late[1].scopes  # not kept

    original = keys.issuer
    keys.issuer = dataclasses.replace(original, leeway_s=original.leeway_s + 1)
    try:
        rechecked = authenticator.cached(token, resources[0])
        assert rechecked is not None and rechecked.scopes is not kept.scopes
        assert authenticator.cached(token, resources[0]).scopes is rechecked.scopes  # type: ignore[union-attr]
    finally:
        keys.issuer = original
