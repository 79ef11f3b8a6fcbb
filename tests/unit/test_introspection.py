"""RFC 7662 introspection of opaque tokens: claim checks, per-route audience, cache, failures."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from gateway.auth.introspection import (
    IntrospectionUnavailable,
    Introspector,
    answer_cache_until,
    claims_from,
    identity_from,
    interpret_introspection,
)
from gateway.auth.oauth_client import FormResponse
from gateway.config import ClientAuthMethod, IntrospectionConfig, IssuerConfig
from gateway.errors import AuthUnavailable, InvalidToken
from gateway.secret import PresentedToken, Secret
from tests.support.fake_as import FakeAuthorizationServer, serving_fake_as

NOW = 1_800_000_000.0
TOKEN = "opaque-access-token-1"
PRESENTED = PresentedToken(TOKEN)
ROUTE_A = "https://gw.example/a/mcp"
ROUTE_B = "https://gw.example/b/mcp"


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake() -> AsyncIterator[FakeAuthorizationServer]:
    async with serving_fake_as() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def issuer_for(fake: FakeAuthorizationServer, **overrides: Any) -> IssuerConfig:
    introspection = IntrospectionConfig(
        endpoint=fake.introspection_endpoint,
        client_id=fake.client_id,
        client_secret=Secret(fake.client_secret),
        # Room for a loaded CI machine: a call that must succeed timed out at 0.5 s there. The
        # failure cases, which a timeout cannot turn into a pass, keep a short one.
        timeout_s=5.0,
    )
    return IssuerConfig(
        issuer=fake.issuer,
        algorithms=(),
        jwks=None,
        leeway_s=30,
        introspection=replace(introspection, **overrides),
    )


def active(fake: FakeAuthorizationServer, **overrides: Any) -> dict[str, Any]:
    """An RFC 7662 §2.2 answer for an active token; ``...`` drops a member."""
    document: dict[str, Any] = {
        "active": True,
        "iss": fake.issuer,
        "sub": "alice",
        "aud": [ROUTE_A, ROUTE_B],
        "client_id": "mcp-client",
        "username": "alice@example.com",
        "scope": "mcp:access repo:read",
        "token_type": "Bearer",
        "exp": int(NOW + 600),
        "iat": int(NOW - 10),
        "jti": "j-1",
        "ext_claim": "dropped",
    }
    document.update(overrides)
    return {key: value for key, value in document.items() if value is not ...}


# --- the happy path and what the AS sees -----------------------------------------------------------


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_active_token_becomes_principal(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession, method: ClientAuthMethod
) -> None:
    """An active answer gives a Principal; the AS got token, the hint and one client authentication."""
    fake.introspection[TOKEN] = active(fake)
    introspector = Introspector(issuer_for(fake, auth_method=method), session, Clock())
    caller = await introspector.authenticate(PRESENTED, ROUTE_A)
    assert (caller.issuer, caller.subject, caller.client_id, caller.token_id) == (
        fake.issuer,
        "alice",
        "mcp-client",
        "j-1",
    )
    assert caller.scopes == {"mcp:access", "repo:read"} and caller.expires_at == NOW + 600
    assert caller.audience == (ROUTE_A, ROUTE_B) and caller.token.reveal() == TOKEN
    assert caller.claims["username"] == "alice@example.com" and "ext_claim" not in caller.claims
    [request] = fake.requests
    assert fake.violations == []
    assert request.auth_method == method and request.authenticated
    expected = {"token": TOKEN, "token_type_hint": "access_token"}
    if method == "client_secret_post":
        expected |= {"client_id": fake.client_id, "client_secret": fake.client_secret}
    assert dict(request.form) == expected


async def test_answer_without_iss_means_the_configured_issuer(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """iss is optional in RFC 7662; when absent, the configured issuer is assumed."""
    fake.introspection[TOKEN] = active(fake, iss=...)
    caller = await Introspector(issuer_for(fake), session, Clock()).authenticate(PRESENTED, ROUTE_A)
    assert caller.issuer == fake.issuer and caller.claims["iss"] == fake.issuer


# --- refusals: 401 invalid_token with a precise reason -----------------------------------------------


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"active": False}, "inactive"),
        ({"aud": "https://gw.example/other/mcp"}, "bad_audience"),
        ({"aud": ...}, "missing_audience"),
        ({"exp": int(NOW - 120)}, "expired"),
        ({"exp": ...}, "missing_claim"),
        ({"nbf": int(NOW + 120)}, "not_yet_valid"),
        ({"iss": "https://someone-else.example"}, "bad_issuer"),
        ({"sub": ...}, "missing_claim"),
        ({"scope": ["a"]}, "bad_claim"),
        ({"username": 7}, "bad_claim"),
        ({"token_type": "refresh_token"}, "bad_token_type"),
        ({"token_type": "DPoP"}, "bad_token_type"),
        ({"cnf": {"x5t#S256": "abc"}}, "sender_constrained"),  # a DPoP cnf.jkt is checked with its proof
    ],
)
async def test_refused_tokens(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession, answer: dict[str, Any], reason: str
) -> None:
    """Inactive, wrong audience, expired, wrong iss, missing sub, non-bearer: 401 invalid_token."""
    fake.introspection[TOKEN] = {"active": False} if answer == {"active": False} else active(fake, **answer)
    introspector = Introspector(issuer_for(fake), session, Clock())
    with pytest.raises(InvalidToken) as caught:
        await introspector.authenticate(PRESENTED, ROUTE_A)
    assert (caught.value.reason, caught.value.status, caught.value.oauth_error) == (
        reason,
        401,
        "invalid_token",
    )


# --- caching --------------------------------------------------------------------------------------


async def test_one_call_serves_repeated_requests_and_routes(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """Repeated tokens on two routes: one introspection; each route's audience is checked every time."""
    fake.introspection[TOKEN] = active(fake, aud=[ROUTE_A])
    introspector = Introspector(issuer_for(fake), session, Clock())
    for _ in range(3):
        assert (await introspector.authenticate(PRESENTED, ROUTE_A)).subject == "alice"
        with pytest.raises(InvalidToken) as caught:
            await introspector.authenticate(PRESENTED, ROUTE_B)
        reason: str = caught.value.reason
        assert reason == "bad_audience"
    assert fake.introspection_calls == 1


async def test_concurrent_requests_share_one_introspection(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """50 concurrent requests with one token, on two routes: one call to the AS."""
    fake.introspection[TOKEN] = active(fake)
    fake.delay_s = 0.05
    introspector = Introspector(issuer_for(fake), session, Clock())
    callers = await asyncio.gather(
        *(introspector.authenticate(PRESENTED, ROUTE_A if i % 2 else ROUTE_B) for i in range(50))
    )
    assert fake.introspection_calls == 1 and {caller.subject for caller in callers} == {"alice"}


async def test_positive_cache_ends_at_exp_or_cache_max(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """An active answer is reused until the earlier of exp and cache_max_s."""
    clock = Clock()
    fake.introspection[TOKEN] = active(fake, exp=int(NOW + 20))
    introspector = Introspector(issuer_for(fake, cache_max_s=60), session, clock)
    await introspector.authenticate(PRESENTED, ROUTE_A)
    clock.now = NOW + 19
    await introspector.authenticate(PRESENTED, ROUTE_A)
    assert fake.introspection_calls == 1
    clock.now = NOW + 21  # past exp: asked again
    fake.introspection[TOKEN] = active(fake, exp=int(NOW + 600))
    await introspector.authenticate(PRESENTED, ROUTE_A)
    assert fake.introspection_calls == 2
    clock.now = NOW + 21 + 59
    await introspector.authenticate(PRESENTED, ROUTE_A)
    assert fake.introspection_calls == 2
    clock.now = NOW + 21 + 61  # past cache_max_s: asked again (revocation shows within a minute)
    await introspector.authenticate(PRESENTED, ROUTE_A)
    assert fake.introspection_calls == 3


@pytest.mark.parametrize(("cache_max_s", "negative_s"), [(60.0, 10.0), (3.0, 3.0)])
async def test_negative_cache_is_short(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession, cache_max_s: float, negative_s: float
) -> None:
    """An inactive answer is reused for min(cache_max_s, 10 s), then asked again."""
    clock = Clock()
    introspector = Introspector(issuer_for(fake, cache_max_s=cache_max_s), session, clock)
    for _ in range(3):
        with pytest.raises(InvalidToken):
            await introspector.authenticate(PresentedToken("unknown-token"), ROUTE_A)
    assert fake.introspection_calls == 1
    clock.now = NOW + negative_s - 0.5
    with pytest.raises(InvalidToken):
        await introspector.authenticate(PresentedToken("unknown-token"), ROUTE_A)
    assert fake.introspection_calls == 1
    clock.now = NOW + negative_s + 0.5
    with pytest.raises(InvalidToken):
        await introspector.authenticate(PresentedToken("unknown-token"), ROUTE_A)
    assert fake.introspection_calls == 2


async def test_cache_max_zero_disables_caching(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """cache_max_s 0: every request is introspected."""
    fake.introspection[TOKEN] = active(fake)
    introspector = Introspector(issuer_for(fake, cache_max_s=0), session, Clock())
    for _ in range(3):
        await introspector.authenticate(PRESENTED, ROUTE_A)
    assert fake.introspection_calls == 3


async def test_cache_keys_are_token_hashes(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """The cache holds SHA-256 hashes as keys, never the raw token."""
    fake.introspection[TOKEN] = active(fake)
    introspector = Introspector(issuer_for(fake), session, Clock())
    await introspector.authenticate(PRESENTED, ROUTE_A)
    with pytest.raises(InvalidToken):
        await introspector.authenticate(PresentedToken("other-token"), ROUTE_A)
    keys = list(introspector._cache.keys())
    assert sorted(keys) == sorted(hashlib.sha256(t.encode()).hexdigest() for t in (TOKEN, "other-token"))
    assert TOKEN not in keys and not any(TOKEN in key for key in keys)
    assert TOKEN not in repr(list(introspector._cache.values()))


async def test_the_presented_digest_is_the_cache_key_and_the_token_rides_on(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """The introspector keys its cache by the token's sha256 as presented and hands that token on."""
    fake.introspection[TOKEN] = active(fake)
    introspector = Introspector(issuer_for(fake), session, Clock())
    caller = await introspector.authenticate(PRESENTED, ROUTE_A)
    [key] = list(introspector._cache.keys())
    assert key is PRESENTED.sha256 and caller.token is PRESENTED


# --- failures: 503, closed -------------------------------------------------------------------------


async def _answer_500(fake: FakeAuthorizationServer) -> None:
    fake.down_status = 500


async def _answer_503(fake: FakeAuthorizationServer) -> None:
    fake.down_status = 503


async def _refuse_port(fake: FakeAuthorizationServer) -> None:
    await fake.stop()


async def _answer_slowly(fake: FakeAuthorizationServer) -> None:
    fake.delay_s = 1.0


async def _wrong_gateway_secret(fake: FakeAuthorizationServer) -> None:
    fake.client_secret = "rotated"  # the AS answers 401 invalid_client to the gateway


async def _active_missing(fake: FakeAuthorizationServer) -> None:
    fake.introspection_response = (200, b'{"sub": "alice"}')


async def _active_as_string(fake: FakeAuthorizationServer) -> None:
    fake.introspection_response = (200, b'{"active": "true"}')


async def _not_json(fake: FakeAuthorizationServer) -> None:
    fake.introspection_response = (200, b"<html>")


async def _duplicate_active(fake: FakeAuthorizationServer) -> None:
    fake.introspection_response = (200, b'{"active": false, "active": true}')


async def _oversized(fake: FakeAuthorizationServer) -> None:
    fake.introspection_response = (200, b'{"active": true, "x": "' + b"a" * 100_000 + b'"}')


@pytest.mark.parametrize(
    "breakage",
    [
        _answer_500,
        _answer_503,
        _refuse_port,
        _answer_slowly,
        _wrong_gateway_secret,
        _active_missing,
        _active_as_string,
        _not_json,
        _duplicate_active,
        _oversized,
    ],
)
async def test_as_failures_are_503(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession, breakage: Any
) -> None:
    """Down, 5xx, timeout, gateway not authorized, malformed or oversized answer: 503, nothing cached."""
    fake.introspection[TOKEN] = active(fake)
    introspector = Introspector(issuer_for(fake, timeout_s=0.5), session, Clock())  # _answer_slowly: 1 s
    await breakage(fake)
    with pytest.raises(IntrospectionUnavailable) as caught:
        await introspector.authenticate(PRESENTED, ROUTE_A)
    assert isinstance(caught.value, AuthUnavailable) and caught.value.status == 503
    assert caught.value.reason == "introspection_unavailable" and TOKEN not in str(caught.value)
    assert len(introspector._cache) == 0


async def test_failure_is_not_cached(fake: FakeAuthorizationServer, session: aiohttp.ClientSession) -> None:
    """After a 503 from the AS, the next request introspects again and can succeed."""
    fake.introspection[TOKEN] = active(fake)
    fake.down_status = 503
    introspector = Introspector(issuer_for(fake), session, Clock())
    with pytest.raises(IntrospectionUnavailable):
        await introspector.authenticate(PRESENTED, ROUTE_A)
    fake.down_status = None
    assert (await introspector.authenticate(PRESENTED, ROUTE_A)).subject == "alice"
    assert fake.introspection_calls == 2


# --- pure pieces ----------------------------------------------------------------------------------


def test_interpretation_ignores_members_of_inactive_answers() -> None:
    """RFC 7662 §2.2: an inactive answer is inactive, whatever else it says."""
    result = interpret_introspection(FormResponse(200, b'{"active": false, "sub": "x"}'), "https://as")
    assert not result.active and result.refusal == "inactive" and dict(result.claims) == {}


def test_claims_keep_only_standard_members() -> None:
    """Only RFC 7662 §2.2 members become claims; iss is filled in when absent."""
    result = claims_from({"active": True, "sub": "a", "roles": ["admin"], "exp": 1}, "https://as")
    assert dict(result.claims) == {"sub": "a", "exp": 1, "iss": "https://as"}


@pytest.mark.parametrize(
    ("document", "cache_max_s", "expected"),
    [
        ({"active": True, "exp": NOW + 30}, 60.0, NOW + 30),
        ({"active": True, "exp": NOW + 600}, 60.0, NOW + 60),
        ({"active": True}, 60.0, NOW + 60),
        ({"active": False}, 60.0, NOW + 10),
        ({"active": False}, 4.0, NOW + 4),
        ({"active": True}, 0.0, None),  # cache_max_s 0: nothing kept
    ],
)
def test_answer_cache_until(document: dict[str, Any], cache_max_s: float, expected: float | None) -> None:
    """Positive: min(exp, now + cache_max_s); negative: now + min(cache_max_s, 10)."""
    config = IntrospectionConfig("https://as/introspect", "gw", Secret("s"), cache_max_s=cache_max_s)
    result = interpret_introspection(FormResponse(200, json.dumps(document).encode()), "https://as")
    assert answer_cache_until(result, NOW, config) == expected


# --- the one strict reading of scope and NumericDate members -------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        {"scope": "mcp:access\trepo:admin"},
        {"scope": "mcp:access\nrepo:admin"},
        {"scope": "mcp:access\u00a0repo:admin"},
        {"scope": "mcp:access\u2028repo:admin"},
        {"scope": "mcp:access  repo:admin"},
        {"exp": "1900000000"},
        {"exp": True},
        {"nbf": False},
        {"iat": "0"},
    ],
    ids=repr,
)
async def test_scope_and_dates_outside_their_grammar_are_refused(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession, answer: dict[str, Any]
) -> None:
    """An active answer whose scope has a tab, LF, NBSP, U+2028 or double space, or a non-number date: 401."""
    fake.introspection[TOKEN] = active(fake, **answer)
    introspector = Introspector(issuer_for(fake), session, Clock())
    with pytest.raises(InvalidToken) as caught:
        await introspector.authenticate(PRESENTED, ROUTE_A)
    assert (caught.value.reason, caught.value.status) == ("bad_claim", 401)


@pytest.mark.parametrize("literal", ["1e400", "-1e400", "1" + "0" * 400])
async def test_an_answer_with_a_number_beyond_a_double_is_not_read(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession, literal: str
) -> None:
    """exp 1e400 (infinity as a double) is no strict JSON: like any unreadable answer, 503, nothing cached."""
    document = json.dumps(active(fake, exp=...))[:-1] + f', "exp": {literal}}}'
    fake.introspection_response = (200, document.encode())
    introspector = Introspector(issuer_for(fake), session, Clock())
    with pytest.raises(IntrospectionUnavailable):
        await introspector.authenticate(PRESENTED, ROUTE_A)
    assert len(introspector._cache) == 0


@pytest.mark.parametrize("exp", [10**400, float("inf"), float("nan"), "soon", True])
def test_unusable_exp_never_breaks_the_cache_and_is_refused(exp: object) -> None:
    """An exp no double holds (or not a number) leaves caching to cache_max_s; the claims check refuses it."""
    config = IntrospectionConfig("https://as/introspect", "gw", Secret("s"), cache_max_s=60.0)
    result = claims_from({"active": True, "sub": "a", "aud": ROUTE_A, "exp": exp}, "https://as")
    assert answer_cache_until(result, NOW, config) == NOW + 60
    issuer = IssuerConfig(issuer="https://as", algorithms=(), jwks=None, leeway_s=30, introspection=config)
    with pytest.raises(InvalidToken) as caught:
        identity_from(result, issuer=issuer, resource=ROUTE_A, now=NOW)
    reason: str = caught.value.reason
    assert reason == "bad_claim"
