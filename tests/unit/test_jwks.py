"""Parsing a JWKS into verification keys, where issuer metadata is looked up, and single-flight loads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from gateway.auth.jwks import IssuerKeys, authorization_server_metadata_urls, parse_jwks
from gateway.config import IssuerConfig, JwksUrl
from tests.support.issuer import SigningKey, TestIssuer

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


# --- IssuerKeys: loads are single-flight ------------------------------------------------------


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def keys_of(issuer: TestIssuer, session: aiohttp.ClientSession, clock: Clock, **overrides: Any) -> IssuerKeys:
    config = IssuerConfig(
        issuer=issuer.issuer, algorithms=("RS256",), jwks=JwksUrl(f"{issuer.base_url}/jwks"), http_timeout_s=2
    )
    return IssuerKeys(replace(config, **overrides), session, clock)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def test_concurrent_first_uses_share_one_fetch(
    issuer: TestIssuer, session: aiohttp.ClientSession
) -> None:
    """Twenty requests before any key is loaded: one JWKS fetch, and every one gets the key."""
    keys = keys_of(issuer, session, Clock())
    found = await asyncio.gather(*(keys.candidates(issuer.active.kid, "RS256") for _ in range(20)))
    assert issuer.jwks_fetches == 1 and all(len(candidates) == 1 for candidates in found)
    await keys.aclose()


async def test_an_unknown_kid_flood_shares_one_refetch(
    issuer: TestIssuer, session: aiohttp.ClientSession
) -> None:
    """Twenty made-up kids at once, even with no cooldown: one refetch between them."""
    keys = keys_of(issuer, session, Clock(), jwks_refresh_cooldown_s=0)
    await keys.candidates(issuer.active.kid, "RS256")
    found = await asyncio.gather(*(keys.candidates(f"made-up-{n}", "RS256") for n in range(20)))
    assert issuer.jwks_fetches == 2 and found == [[]] * 20
    await keys.aclose()


async def test_a_cancelled_caller_leaves_the_load_running(
    issuer: TestIssuer, session: aiohttp.ClientSession
) -> None:
    """The client that triggered the first load goes away: the load still finishes for everybody."""
    keys = keys_of(issuer, session, Clock())
    leaving = asyncio.create_task(keys.candidates(issuer.active.kid, "RS256"))
    await asyncio.sleep(0)
    [load] = keys._loads._running.values()
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await load
    assert keys.ready and issuer.jwks_fetches == 1
    await keys.aclose()


async def test_stale_keys_are_refreshed_once_in_the_background(
    issuer: TestIssuer, session: aiohttp.ClientSession
) -> None:
    """Past jwks_max_age_s a request is served from the old keys at once and starts one refetch."""
    clock = Clock()
    keys = keys_of(issuer, session, clock, jwks_max_age_s=60)
    await keys.candidates(issuer.active.kid, "RS256")
    clock.now += 61
    old = keys.keyset
    for _ in range(5):  # all before the refetch can finish: they share it
        assert len(await keys.candidates(issuer.active.kid, "RS256")) == 1
    [refresh] = keys._loads._running.values()
    await refresh
    assert keys.keyset is not old and issuer.jwks_fetches == 2
    await keys.aclose()


async def test_aclose_cancels_a_running_load(issuer: TestIssuer, session: aiohttp.ClientSession) -> None:
    """Closing while a load runs cancels it; nothing is loaded afterwards."""
    keys = keys_of(issuer, session, Clock())
    waiter = asyncio.create_task(keys.candidates(issuer.active.kid, "RS256"))
    await asyncio.sleep(0)
    await keys.aclose()
    assert not keys.ready
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
