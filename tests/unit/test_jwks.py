"""Parsing a JWKS into verification keys, where issuer metadata is looked up, and single-flight loads."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from prometheus_client import CollectorRegistry

from gateway.auth.jwks import (
    IssuerKeys,
    KeysUnavailable,
    authorization_server_metadata_urls,
    parse_jwks,
    retry_delay_s,
)
from gateway.config import IssuerConfig, JwksDiscover, JwksUrl
from gateway.metrics import GatewayMetrics
from tests.conftest import LogSink
from tests.support.issuer import SigningKey, TestIssuer

ALL = frozenset({"RS256", "PS256", "ES256", "EdDSA"})


def test_keys_bound_to_declared_algorithm_and_allowlist() -> None:
    """A JWK's own `alg` narrows it to that algorithm; the issuer's allowlist narrows further."""
    rsa, ec = SigningKey.generate("RS256", kid="r"), SigningKey.generate("ES256", kid="e")
    keyset, skipped = parse_jwks({"keys": [rsa.public_jwk(), ec.public_jwk()]}, frozenset({"RS256"}))
    assert [(key.kid, key.algorithms) for key in keyset.keys] == [("r", frozenset({"RS256"}))]
    assert [(key.kid, key.reason) for key in skipped] == [("e", "alg_not_allowed")]
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
    assert [(key.kid, key.reason) for key in skipped] == [
        ("p", "private_key_material"),
        ("s", "private_key_material"),
    ]


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


async def test_a_metadata_issuer_mismatch_logs_both_issuers(
    issuer: TestIssuer, session: aiohttp.ClientSession, gateway_logs: LogSink
) -> None:
    """Discovery refuses metadata whose issuer differs by a trailing slash, and its log event quotes
    the configured issuer and the one the metadata names, so the one-character typo is visible."""
    configured = issuer.issuer + "/"
    config = IssuerConfig(issuer=configured, algorithms=("RS256",), jwks=JwksDiscover(), http_timeout_s=2)
    keys = IssuerKeys(config, session, Clock())
    before = len(gateway_logs.lines())
    await keys._refresh_once()
    assert keys.keyset is None and issuer.metadata_fetches == 1 and issuer.jwks_fetches == 0
    [failed] = [event for event in gateway_logs.events()[before:] if event["event"] == "jwks_fetch_failed"]
    assert failed["issuer"] == configured
    assert f"metadata issuer {issuer.issuer!r} is not the configured issuer {configured!r}" in failed["error"]
    await keys.aclose()


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


# --- keys that may not be used: skipped with a fixed reason, the rest still work ------------------


def rsa_key(bits: int, kid: str, alg: str = "RS256") -> SigningKey:
    return SigningKey(
        kid=kid, alg=alg, private=rsa.generate_private_key(public_exponent=65537, key_size=bits)
    )


def ec_key(curve: ec.EllipticCurve, kid: str, alg: str) -> SigningKey:
    return SigningKey(kid=kid, alg=alg, private=ec.generate_private_key(curve))


@pytest.mark.parametrize(("bits", "used"), [(1024, False), (2047, False), (2048, True), (3072, True)])
def test_rsa_keys_under_2048_bits_are_skipped(bits: int, used: bool) -> None:
    """RFC 7518 §3.3: RSA keys need 2048 bits; a smaller one is skipped as rsa_key_too_small."""
    small = rsa_key(bits, kid="k", alg="PS256").public_jwk()
    for jwk in (small, {key: value for key, value in small.items() if key != "alg"}):
        keyset, skipped = parse_jwks({"keys": [jwk]}, ALL)
        assert bool(keyset.keys) is used
        assert [(key.kid, key.reason) for key in skipped] == ([] if used else [("k", "rsa_key_too_small")])


def test_a_skipped_key_leaves_the_other_keys_of_the_set_usable() -> None:
    """A 1024-bit key next to a 2048-bit one: only the big one is a candidate, with or without kid."""
    small, big = rsa_key(1024, kid="small"), SigningKey.generate("RS256", kid="big")
    keyset, skipped = parse_jwks({"keys": [small.public_jwk(), big.public_jwk()]}, ALL)
    assert [key.kid for key in keyset.keys] == ["big"]
    assert [(key.index, key.kid, key.reason, key.detail) for key in skipped] == [
        (0, "small", "rsa_key_too_small", "1024 bits")
    ]
    assert keyset.candidates("small", "RS256") == [] and not keyset.has_kid("small")
    assert [key.kid for key in keyset.candidates(None, "RS256")] == ["big"]


@pytest.mark.parametrize(
    ("curve", "crv_alg", "jwk_alg", "reason"),
    [
        (ec.SECP256R1(), "ES256", "ES384", "alg_mismatch"),
        (ec.SECP256R1(), "ES256", "ES512", "alg_mismatch"),
        (ec.SECP384R1(), "ES384", "ES256", "alg_mismatch"),
        (ec.SECP521R1(), "ES512", "ES384", "alg_mismatch"),
        (ec.SECP256R1(), "ES256", "RS256", "alg_mismatch"),
        (ec.SECP256R1(), "ES256", "EdDSA", "alg_mismatch"),
        (ec.SECP256K1(), "ES256K", "ES256K", "unsupported_key_type"),
    ],
    ids=lambda item: getattr(item, "name", item),
)
def test_ec_key_whose_alg_names_another_curve_is_not_used(
    curve: ec.EllipticCurve, crv_alg: str, jwk_alg: str, reason: str
) -> None:
    """An EC JWK is used only with the algorithm of its crv (RFC 7518 §3.4); `alg` for another: skipped."""
    jwk = ec_key(curve, kid="e", alg=crv_alg).public_jwk() | {"alg": jwk_alg}
    keyset, skipped = parse_jwks({"keys": [jwk]}, ALL | {"ES256", "ES384", "ES512", "RS256", "ES256K"})
    assert keyset.keys == ()
    assert [(key.kid, key.reason) for key in skipped] == [("e", reason)]


@pytest.mark.parametrize(
    ("curve", "alg"), [(ec.SECP256R1(), "ES256"), (ec.SECP384R1(), "ES384"), (ec.SECP521R1(), "ES512")]
)
def test_ec_key_without_alg_serves_only_its_curves_algorithm(curve: ec.EllipticCurve, alg: str) -> None:
    """No `alg`: a P-256 key verifies ES256 only, P-384 ES384 only, P-521 ES512 only."""
    jwk = ec_key(curve, kid="e", alg=alg).public_jwk()
    del jwk["alg"]
    keyset, skipped = parse_jwks({"keys": [jwk]}, frozenset({"ES256", "ES384", "ES512"}))
    assert skipped == [] and keyset.keys[0].algorithms == {alg}
    for other in {"ES256", "ES384", "ES512"} - {alg}:
        assert keyset.candidates("e", other) == []


def test_ec_crv_that_lies_about_the_key_is_unreadable() -> None:
    """A P-384 key's coordinates labelled crv P-256: the key cannot be built, so it is skipped."""
    jwk = ec_key(ec.SECP384R1(), kid="e", alg="ES384").public_jwk() | {"crv": "P-256", "alg": "ES256"}
    keyset, skipped = parse_jwks({"keys": [jwk]}, ALL)
    assert keyset.keys == () and [key.reason for key in skipped] == ["unreadable_key"]


@pytest.mark.parametrize(
    ("jwk", "reason"),
    [
        ("not a key", "not_an_object"),
        ({"kty": "RSA", "kid": 7}, "bad_kid"),
        ({"kty": "RSA", "alg": ["RS256"]}, "bad_alg"),
        ({"kty": "RSA", "alg": {"RS256": 1}}, "bad_alg"),
        ({"kty": "oct"}, "unsupported_key_type"),
        ({"kty": ["EC"], "crv": "P-256"}, "unsupported_key_type"),
        ({"kty": "EC", "crv": ["P-256"]}, "unsupported_key_type"),
        ({"kty": "RSA", "n": "AQAB"}, "unreadable_key"),
    ],
    ids=repr,
)
def test_malformed_jwks_entries_are_skipped_with_their_reason(jwk: object, reason: str) -> None:
    """A non-object, a non-string kid or alg (even unhashable), an unknown key type: skipped, no crash."""
    keyset, skipped = parse_jwks({"keys": [jwk, SigningKey.generate("ES256", kid="ok").public_jwk()]}, ALL)
    assert [key.kid for key in keyset.keys] == ["ok"]
    assert [key.reason for key in skipped] == [reason]


async def test_skipped_keys_are_logged_and_counted_once_per_load(
    issuer: TestIssuer, session: aiohttp.ClientSession, gateway_logs: LogSink
) -> None:
    """Each load logs jwks_key_skipped (kid, reason) and counts it by issuer and reason; good keys load."""
    issuer.keys.append(rsa_key(1024, kid="small-kid"))
    metrics = GatewayMetrics(CollectorRegistry())
    config = IssuerConfig(
        issuer=issuer.issuer, algorithms=("RS256",), jwks=JwksUrl(f"{issuer.base_url}/jwks")
    )
    keys = IssuerKeys(
        config,
        session,
        Clock(),
        on_key_skipped=functools.partial(metrics.jwks_key_skipped, issuer.issuer),
    )
    before = len(gateway_logs.lines())
    await keys._refresh_once()
    await keys._refresh_once()
    assert keys.keyset is not None and [key.kid for key in keys.keyset.keys] == [issuer.active.kid]
    events = [event for event in gateway_logs.events()[before:] if event["event"] == "jwks_key_skipped"]
    assert [(event["issuer"], event["kid"], event["reason"]) for event in events] == [
        (issuer.issuer, "small-kid", "rsa_key_too_small")
    ] * 2
    labels = {"issuer": issuer.issuer, "reason": "rsa_key_too_small"}
    assert metrics.registry.get_sample_value("mcp_gateway_jwks_keys_skipped_total", labels) == 2
    await keys.aclose()


# --- after a failed load: backoff with jitter, whatever the request rate --------------------------


@pytest.mark.parametrize(
    ("failures", "jitter", "delay"),
    [
        (0, 1.0, 0.0),
        (1, 0.0, 0.5),
        (1, 1.0, 1.0),
        (2, 1.0, 2.0),
        (3, 0.5, 3.0),
        (6, 1.0, 30.0),
        (500, 0.0, 15.0),
    ],
)
def test_retry_delay_doubles_to_its_cap_with_jitter(failures: int, jitter: float, delay: float) -> None:
    """Backoff after failed loads: 1 s, 2 s, 4 s … capped at 30 s, half fixed and half jittered."""
    assert retry_delay_s(failures, 1.0, 30.0, jitter) == delay


async def test_a_keyless_issuer_is_not_refetched_on_every_request(
    issuer: TestIssuer, session: aiohttp.ClientSession
) -> None:
    """JWKS down from the start: 100 requests within the backoff cost one fetch; the next step one more."""
    clock = Clock()
    issuer.down = True
    keys = IssuerKeys(keys_of(issuer, session, clock).issuer, session, clock, jitter=lambda: 1.0)
    for _ in range(100):
        with pytest.raises(KeysUnavailable):
            await keys.candidates(issuer.active.kid, "RS256")
    assert issuer.jwks_fetches == 1
    clock.now += 1.0  # the first step: min(1 s, cooldown 30 s)
    issuer.down = False
    assert len(await keys.candidates(issuer.active.kid, "RS256")) == 1
    assert issuer.jwks_fetches == 2
    await keys.aclose()


async def test_stale_keys_with_the_endpoint_down_are_refetched_once_per_backoff_step(
    issuer: TestIssuer, session: aiohttp.ClientSession
) -> None:
    """Cached keys past max age, JWKS answering 503: served from cache, one refetch per backoff step."""
    clock = Clock()
    keys = IssuerKeys(
        keys_of(issuer, session, clock, jwks_max_age_s=60).issuer, session, clock, jitter=lambda: 1.0
    )
    await keys.candidates(issuer.active.kid, "RS256")
    issuer.down = True
    clock.now += 61
    for step in (1.0, 2.0, 4.0):
        for _ in range(100):
            assert len(await keys.candidates(issuer.active.kid, "RS256")) == 1
            for load in list(keys._loads._running.values()):
                await load
        clock.now += step
    assert issuer.jwks_fetches == 1 + 3
    assert keys.next_load_in_s() == 0.0  # the third step is over: the background task loads now
    await keys._refresh_once()
    assert keys.next_load_in_s() == 8.0  # the fourth step
    await keys.aclose()


async def test_unknown_kid_refetches_keep_their_cooldown_and_the_backoff(
    issuer: TestIssuer, session: aiohttp.ClientSession
) -> None:
    """Made-up kids refetch once per cooldown; after a failed refetch, not before the backoff is over."""
    clock = Clock()
    keys = IssuerKeys(keys_of(issuer, session, clock).issuer, session, clock, jitter=lambda: 1.0)
    await keys.candidates(issuer.active.kid, "RS256")
    issuer.down = True
    for _ in range(50):
        assert await keys.candidates("made-up", "RS256") == []
    assert issuer.jwks_fetches == 1  # still inside the 30 s cooldown of the first load
    clock.now += 30
    for _ in range(50):
        assert await keys.candidates("made-up", "RS256") == []
    assert issuer.jwks_fetches == 2
    assert len(await keys.candidates(issuer.active.kid, "RS256")) == 1  # the cached keys still serve
    await keys.aclose()


async def test_a_load_that_crashes_is_a_logged_failed_load_and_the_refresh_task_lives_on(
    issuer: TestIssuer, session: aiohttp.ClientSession, gateway_logs: LogSink
) -> None:
    """An unexpected error inside a load is logged (jwks_load_crashed), counted failed; run() retries."""
    issuer.keys.append(rsa_key(1024, kid="small-kid"))
    results: list[str] = []
    crashes = [RuntimeError("boom")]

    def skipped(_reason: str) -> None:
        if crashes:
            raise crashes.pop()

    config = keys_of(issuer, session, Clock(), jwks_refresh_cooldown_s=0.05).issuer
    keys = IssuerKeys(config, session, on_fetch=results.append, on_key_skipped=skipped)
    before = len(gateway_logs.lines())
    task = asyncio.create_task(keys.run())
    async with asyncio.timeout(5):
        await keys.wait_ready()
    assert not task.done() and results == ["failed", "ok"]
    events = [event["event"] for event in gateway_logs.events()[before:]]
    assert "jwks_load_crashed" in events
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await keys.aclose()
