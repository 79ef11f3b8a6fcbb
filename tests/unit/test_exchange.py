"""RFC 8693 token exchange as a downstream credential: requests, cache, single flight, failures."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from gateway.auth.oauth_client import FormResponse
from gateway.config import ClientAuthMethod, ScopeMode, TokenExchangeCredential
from gateway.errors import (
    DEFAULT_RETRY_AFTER_S,
    AuthError,
    CredentialFailure,
    ExchangeRefused,
    ExchangeUnavailable,
)
from gateway.principal import Principal
from gateway.secret import PresentedToken, Secret
from gateway.upstream.exchange import (
    TokenExchanger,
    interpret_token_response,
    requested_scope,
    retry_after_seconds,
    safe_description,
    token_cache_until,
)
from tests.support.fake_as import ACCESS_TOKEN_TYPE, FakeAuthorizationServer, serving_fake_as

NOW = 1_800_000_000.0
SUBJECT = "opaque-subject-token-1"
SCOPES = frozenset({"mcp:access", "repo:read", "repo:write"})


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake() -> AsyncIterator[FakeAuthorizationServer]:
    async with serving_fake_as(FakeAuthorizationServer(subject_tokens={SUBJECT: SCOPES})) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def credential(fake: FakeAuthorizationServer, **overrides: Any) -> TokenExchangeCredential:
    base = TokenExchangeCredential(
        token_endpoint=fake.token_endpoint,
        client_id=fake.client_id,
        client_secret=Secret(fake.client_secret),
        audience="upstream-api",
        resource="https://upstream.internal/mcp",
    )
    return replace(base, **overrides)


def principal(
    token: str = SUBJECT, scopes: frozenset[str] = SCOPES, expires_at: float = NOW + 3600
) -> Principal:
    return Principal(
        issuer="https://as.example",
        subject="alice",
        client_id="mcp-client",
        scopes=scopes,
        audience=("https://gw.example/mcp",),
        expires_at=expires_at,
        token_id=None,
        token=PresentedToken(token),
    )


def bearer_of(headers: dict[str, str]) -> str:
    scheme, _, token = headers["Authorization"].partition(" ")
    assert scheme == "Bearer"
    return token


# --- pure decisions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "required", "caller", "expected"),
    [
        ("operation", ("repo:read",), {"mcp:access", "repo:read"}, "repo:read"),
        (
            "operation",
            ("repo:write", "mcp:access"),
            {"mcp:access", "repo:write", "x"},
            "mcp:access repo:write",
        ),
        ("operation", ("repo:admin",), {"repo:read"}, None),  # nothing in common: omitted
        ("operation", (), {"repo:read"}, None),
        ("caller", ("repo:read",), {"b", "a"}, "a b"),
        ("caller", (), set(), None),
        ("none", ("repo:read",), {"repo:read"}, None),
    ],
)
def test_requested_scope(
    mode: ScopeMode, required: tuple[str, ...], caller: set[str], expected: str | None
) -> None:
    """The scope parameter per mode: operation ∩ caller, all of the caller's, or none; sorted."""
    assert requested_scope(mode, required, frozenset(caller)) == expected


@pytest.mark.parametrize(
    ("expires_in", "margin", "subject_exp", "expected"),
    [
        (300.0, 30.0, NOW + 3600, NOW + 270),
        (300.0, 30.0, NOW + 60, NOW + 60),  # never beyond the subject token
        (None, 30.0, NOW + 3600, None),  # unknown lifetime: not cached
        (20.0, 30.0, NOW + 3600, None),  # shorter than the margin: used once, not cached
        (300.0, 0.0, NOW - 1, None),  # subject already expired
    ],
)
def test_token_cache_until(
    expires_in: float | None, margin: float, subject_exp: float, expected: float | None
) -> None:
    """An entry lives until expires_in minus the margin, capped by the subject token's expiry."""
    assert token_cache_until(NOW, expires_in, margin, subject_exp) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, DEFAULT_RETRY_AFTER_S), ("17", 17), (" 2 ", 2), ("0", 1), ("99999", 300), ("soon", 5), ("-3", 5)],
)
def test_retry_after_seconds(header: str | None, expected: int) -> None:
    """The AS's delay-seconds Retry-After is passed on, bounded; anything else gives the default."""
    assert retry_after_seconds(header) == expected


def test_safe_description_scrubs_secrets_and_bounds_length() -> None:
    """A description that echoes the token loses it, keeps only RFC 6749 characters, stops at 200."""
    text = safe_description(f"bad token {SUBJECT}\n" + "x" * 500, [SUBJECT])
    assert SUBJECT not in text and "\n" not in text and len(text) == 200


def _success(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "access_token": "abc.def-ghi",
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": 300,
    }
    document.update(overrides)
    return {key: value for key, value in document.items() if value is not ...}


@pytest.mark.parametrize(
    ("status", "body", "problem"),
    [
        (200, json.dumps(_success(issued_token_type=...)), "missing 'issued_token_type'"),
        (200, json.dumps(_success(token_type="N_A")), "not Bearer"),
        (200, json.dumps(_success(token_type="DPoP")), "not Bearer"),
        (200, json.dumps(_success(token_type=...)), "missing 'token_type'"),
        (200, json.dumps(_success(access_token=...)), "missing 'access_token'"),
        (200, json.dumps(_success(access_token="abc\r\nX-Injected: 1")), "b64token"),
        (
            200,
            json.dumps(_success(issued_token_type="urn:ietf:params:oauth:token-type:id_token")),
            "not an access",
        ),
        (200, json.dumps(_success(expires_in=-5)), "expires_in"),
        (200, json.dumps(_success(expires_in="300")), "expires_in"),
        (200, json.dumps(_success(scope=["a"])), "scope"),
        (200, '{"access_token": "a", "access_token": "b"}', "duplicate"),
        (200, "[]", "not a JSON object"),
        (200, "<html>", "malformed JSON"),
        (400, '{"error_description": "no code"}', "without an RFC 6749 error"),
        (401, "Unauthorized", "without an RFC 6749 error"),
        (500, "{}", "HTTP 500"),
        (302, "", "HTTP 302"),
        (403, '{"error": "access_denied"}', "HTTP 403"),
    ],
)
def test_unusable_answers_are_unavailable(status: int, body: str, problem: str) -> None:
    """A malformed or unusable answer is the AS's fault: ExchangeUnavailable (503), never a token."""
    with pytest.raises(ExchangeUnavailable) as caught:
        interpret_token_response(FormResponse(status, body.encode()))
    assert problem in caught.value.detail
    assert caught.value.status == 503 and caught.value.retry_after_s == DEFAULT_RETRY_AFTER_S
    # A JSON-RPC error body, not a Bearer challenge: the caller's token is fine.
    assert isinstance(caught.value, CredentialFailure) and not isinstance(caught.value, AuthError)


def test_valid_answer_is_a_token() -> None:
    """A complete §2.2.1 answer (token_type case-insensitive, JWT issued type) yields the token."""
    body = json.dumps(
        _success(token_type="bearer", issued_token_type="urn:ietf:params:oauth:token-type:jwt", scope="a")
    )
    issued = interpret_token_response(FormResponse(200, body.encode()))
    assert (
        issued.access_token.reveal() == "abc.def-ghi" and issued.expires_in == 300.0 and issued.scope == "a"
    )


# --- requests as the AS sees them -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_request_parameters_and_client_authentication(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession, method: ClientAuthMethod
) -> None:
    """Every RFC 8693 §2.1 parameter is sent, scope narrowed to the operation, with one client auth."""
    exchanger = TokenExchanger(credential(fake, auth_method=method), session, Clock())
    headers = await exchanger.headers(principal(), ("repo:read", "repo:admin"))
    assert headers == {"Authorization": f"Bearer {fake.issued[0]}"}
    [request] = fake.requests
    assert fake.violations == []
    assert request.auth_method == method and request.authenticated
    expected_form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": SUBJECT,
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "audience": "upstream-api",
        "resource": "https://upstream.internal/mcp",
        "scope": "repo:read",  # repo:admin is needed but the caller lacks it: never asked for
    }
    if method == "client_secret_post":
        expected_form |= {"client_id": fake.client_id, "client_secret": fake.client_secret}
        assert request.authorization is None
    else:
        assert request.authorization is not None and request.authorization.startswith("Basic ")
    assert dict(request.form) == expected_form


BOTH_TARGETS = {"audience": "upstream-api", "resource": "https://upstream.internal/mcp"}


@pytest.mark.parametrize(
    ("target", "mode", "required", "expected"),
    [
        (
            {"audience": "upstream-api", "resource": None},
            "operation",
            ("repo:read",),
            {"audience": "upstream-api", "scope": "repo:read"},
        ),
        ({"audience": None, "resource": "https://u/mcp"}, "operation", (), {"resource": "https://u/mcp"}),
        ({}, "caller", ("repo:read",), {**BOTH_TARGETS, "scope": "mcp:access repo:read repo:write"}),
        ({}, "none", ("repo:read",), BOTH_TARGETS),
    ],
)
async def test_target_and_scope_parameters(
    fake: FakeAuthorizationServer,
    session: aiohttp.ClientSession,
    target: dict[str, Any],
    mode: ScopeMode,
    required: tuple[str, ...],
    expected: dict[str, str],
) -> None:
    """audience/resource appear only when configured; scope follows the configured mode."""
    exchanger = TokenExchanger(credential(fake, scope=mode, **target), session, Clock())
    await exchanger.headers(principal(), required)
    form = fake.requests[0].form
    assert {name: form[name] for name in ("audience", "resource", "scope") if name in form} == expected


# --- cache and single flight --------------------------------------------------------------------


async def test_concurrent_and_sequential_calls_share_one_exchange(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """100 concurrent calls, then 20 sequential ones, for one subject token: exactly one exchange."""
    fake.delay_s = 0.05
    exchanger = TokenExchanger(credential(fake), session, Clock())
    results = await asyncio.gather(*(exchanger.headers(principal(), ("repo:read",)) for _ in range(100)))
    for _ in range(20):
        results.append(await exchanger.headers(principal(), ("repo:read",)))
    assert fake.exchange_calls == 1
    assert {bearer_of(headers) for headers in results} == {fake.issued[0]}


async def test_another_scope_set_is_another_exchange(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """A different narrowed scope is a different cache entry; the same set in another order is not."""
    exchanger = TokenExchanger(credential(fake), session, Clock())
    first = await exchanger.headers(principal(), ("repo:read", "mcp:access"))
    again = await exchanger.headers(principal(), ("mcp:access", "repo:read"))
    second = await exchanger.headers(principal(), ("repo:write",))
    assert fake.exchange_calls == 2
    assert first == again != second
    assert [request.form["scope"] for request in fake.requests] == ["mcp:access repo:read", "repo:write"]


async def test_cache_expires_before_the_exchanged_token(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """expires_in 300 with a 30 s margin: reused up to 270 s, exchanged again after."""
    clock = Clock()
    exchanger = TokenExchanger(credential(fake, refresh_margin_s=30), session, clock)
    await exchanger.headers(principal(), ("repo:read",))
    clock.now = NOW + 269
    await exchanger.headers(principal(), ("repo:read",))
    assert fake.exchange_calls == 1
    clock.now = NOW + 271
    headers = await exchanger.headers(principal(), ("repo:read",))
    assert fake.exchange_calls == 2 and bearer_of(headers) == fake.issued[1]


async def test_cache_never_outlives_the_subject_token(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """A subject token expiring in 60 s bounds the cached exchanged token to 60 s."""
    clock = Clock()
    exchanger = TokenExchanger(credential(fake), session, clock)
    caller = principal(expires_at=NOW + 60)
    await exchanger.headers(caller, ("repo:read",))
    clock.now = NOW + 59
    await exchanger.headers(caller, ("repo:read",))
    assert fake.exchange_calls == 1
    clock.now = NOW + 61
    await exchanger.headers(caller, ("repo:read",))
    assert fake.exchange_calls == 2


async def test_without_expires_in_nothing_is_cached(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """An answer without expires_in has an unknown lifetime: every request exchanges again."""
    fake.expires_in = None
    exchanger = TokenExchanger(credential(fake), session, Clock())
    for _ in range(3):
        await exchanger.headers(principal(), ("repo:read",))
    assert fake.exchange_calls == 3


async def test_cache_keys_hold_a_hash_of_the_subject_token(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """The cache is keyed by SHA-256 of the subject token, audience, resource and scope; never the token."""
    exchanger = TokenExchanger(credential(fake), session, Clock())
    await exchanger.headers(principal(), ("repo:read",))
    [key] = list(exchanger._cache.keys())
    assert tuple(key) == (
        hashlib.sha256(SUBJECT.encode()).hexdigest(),
        "upstream-api",
        "https://upstream.internal/mcp",
        "repo:read",
    )
    assert SUBJECT not in repr(key) and SUBJECT not in repr(list(exchanger._cache.values()))


async def test_cache_key_is_the_digest_taken_when_the_token_was_presented(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """The exchange keys its cache by the principal's token.sha256 itself: the token is not hashed again."""
    exchanger = TokenExchanger(credential(fake), session, Clock())
    caller = principal()
    await exchanger.headers(caller, ("repo:read",))
    [key] = list(exchanger._cache.keys())
    assert key.subject_sha256 is caller.token.sha256


async def test_cancelled_waiter_does_not_break_the_others(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """One waiter cancelled mid-exchange: the others still get the one shared token."""
    exchanger = TokenExchanger(credential(fake), session, Clock())
    fake.pause()
    waiters = [asyncio.create_task(exchanger.headers(principal(), ("repo:read",))) for _ in range(5)]
    await fake.wait_for_calls("token", 1)
    waiters[0].cancel()
    await asyncio.sleep(0)
    fake.resume()
    results = await asyncio.gather(*waiters[1:])
    assert waiters[0].cancelled()
    assert fake.exchange_calls == 1 and {bearer_of(headers) for headers in results} == {fake.issued[0]}


async def test_exchange_completes_and_caches_when_every_waiter_left(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """Even with all callers cancelled the exchange finishes; the next caller uses its result."""
    exchanger = TokenExchanger(credential(fake), session, Clock())
    fake.pause()
    waiters = [asyncio.create_task(exchanger.headers(principal(), ("repo:read",))) for _ in range(3)]
    await fake.wait_for_calls("token", 1)
    [shared] = exchanger._flights._running.values()
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert all(waiter.cancelled() for waiter in waiters) and not shared.done()
    fake.resume()
    assert (await shared).reveal() == fake.issued[0]
    headers = await exchanger.headers(principal(), ("repo:read",))
    assert fake.exchange_calls == 1 and bearer_of(headers) == fake.issued[0]


# --- failures: closed, never the client's token -------------------------------------------------


async def _refuse_port(fake: FakeAuthorizationServer) -> None:
    await fake.stop()


async def _answer_503(fake: FakeAuthorizationServer) -> None:
    fake.down_status, fake.retry_after = 503, "17"


async def _answer_500(fake: FakeAuthorizationServer) -> None:
    fake.down_status = 500


async def _answer_slowly(fake: FakeAuthorizationServer) -> None:
    fake.delay_s = 1.0


async def _answer_huge(fake: FakeAuthorizationServer) -> None:
    fake.exchange_response = (200, b'{"access_token": "' + b"a" * 100_000 + b'"}')


@pytest.mark.parametrize(
    ("breakage", "retry_after_s"),
    [(_refuse_port, 5), (_answer_503, 17), (_answer_500, 5), (_answer_slowly, 5), (_answer_huge, 5)],
    ids=["closed-port", "503-retry-after", "500", "timeout", "oversized-body"],
)
async def test_as_unavailable_fails_closed(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession, breakage: Any, retry_after_s: int
) -> None:
    """Closed port, 5xx, timeout or an oversized body: ExchangeUnavailable (503) with Retry-After."""
    await breakage(fake)
    exchanger = TokenExchanger(credential(fake, timeout_s=0.3), session, Clock())
    with capture_logs() as logs, pytest.raises(ExchangeUnavailable) as caught:
        await exchanger.headers(principal(), ("repo:read",))
    error = caught.value
    assert (error.status, error.reason, error.retry_after_s) == (503, "exchange_unavailable", retry_after_s)
    assert [log["event"] for log in logs] == ["token_exchange_unavailable"]
    assert SUBJECT not in repr(logs) and fake.client_secret not in repr(logs)


async def test_failed_exchange_is_shared_but_not_cached(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """Concurrent waiters all see the one failure; the next request tries the AS again."""
    exchanger = TokenExchanger(credential(fake), session, Clock())
    fake.down_status = 503
    fake.pause()
    waiters = [asyncio.create_task(exchanger.headers(principal(), ("repo:read",))) for _ in range(10)]
    await fake.wait_for_calls("token", 1)
    fake.resume()
    outcomes = await asyncio.gather(*waiters, return_exceptions=True)
    assert fake.exchange_calls == 1 and all(isinstance(outcome, ExchangeUnavailable) for outcome in outcomes)
    fake.down_status = None
    headers = await exchanger.headers(principal(), ("repo:read",))
    assert fake.exchange_calls == 2 and bearer_of(headers) == fake.issued[0]


async def test_invalid_target_is_refused_and_logged_without_tokens(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """invalid_target → ExchangeRefused (403); the log names the code and status, never a token."""
    fake.targets = {"some-other-api"}
    exchanger = TokenExchanger(credential(fake), session, Clock())
    with capture_logs() as logs, pytest.raises(ExchangeRefused) as caught:
        await exchanger.headers(principal(), ("repo:read",))
    error = caught.value
    assert (error.status, error.reason, error.error_code, error.as_status) == (
        403,
        "exchange_refused",
        "invalid_target",
        400,
    )
    [event] = logs
    assert event["event"] == "token_exchange_refused" and event["log_level"] == "warning"
    assert (event["as_error"], event["as_status"]) == ("invalid_target", 400)
    assert SUBJECT not in repr(logs) and fake.client_secret not in repr(logs)
    assert SUBJECT not in str(error) and SUBJECT not in error.detail


async def test_error_description_is_scrubbed_and_cut(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """An AS that echoes the subject token in a long error_description: logged scrubbed, ≤ 200 chars."""
    description = f"token {SUBJECT} rejected because " + "reasons " * 100
    fake.exchange_error = (400, {"error": "invalid_grant", "error_description": description})
    exchanger = TokenExchanger(credential(fake), session, Clock())
    with capture_logs() as logs, pytest.raises(ExchangeRefused):
        await exchanger.headers(principal(), ("repo:read",))
    logged = logs[0]["as_error_description"]
    assert logged.startswith("token *** rejected") and len(logged) == 200
    assert SUBJECT not in repr(logs)


async def _unknown_subject(fake: FakeAuthorizationServer) -> Principal:
    return principal(token="not-a-known-token")


async def _scope_not_grantable(fake: FakeAuthorizationServer) -> Principal:
    fake.subject_tokens[SUBJECT] = frozenset({"mcp:access"})
    return principal()


async def _wrong_client_secret(fake: FakeAuthorizationServer) -> Principal:
    fake.client_secret = "rotated"
    return principal()


async def _unauthorized_client(fake: FakeAuthorizationServer) -> Principal:
    fake.exchange_error = (400, {"error": "unauthorized_client"})
    return principal()


@pytest.mark.parametrize(
    ("setup", "code", "as_status"),
    [
        (_unknown_subject, "invalid_grant", 400),
        (_scope_not_grantable, "invalid_scope", 400),
        (_wrong_client_secret, "invalid_client", 401),
        (_unauthorized_client, "unauthorized_client", 400),
    ],
)
async def test_as_refusals(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession, setup: Any, code: str, as_status: int
) -> None:
    """Each RFC 6749 §5.2 refusal is ExchangeRefused with the AS's code and status; nothing cached."""
    exchanger = TokenExchanger(credential(fake), session, Clock())
    caller = await setup(fake)  # after the config is taken: a rotated secret leaves the gateway's stale
    for _ in range(2):
        with pytest.raises(ExchangeRefused) as caught:
            await exchanger.headers(caller, ("repo:read",))
        assert (caught.value.error_code, caught.value.as_status, caught.value.status) == (
            code,
            as_status,
            403,
        )
    assert fake.exchange_calls == 2


@pytest.mark.parametrize(
    "body",
    [
        _success(issued_token_type=...),
        _success(token_type="N_A"),
    ],
    ids=["missing-issued_token_type", "token_type-N_A"],
)
async def test_malformed_success_from_the_as(
    fake: FakeAuthorizationServer, session: aiohttp.ClientSession, body: dict[str, Any]
) -> None:
    """A 200 without issued_token_type, or with token_type N_A, is ExchangeUnavailable; no header."""
    fake.exchange_response = (200, json.dumps(body).encode())
    exchanger = TokenExchanger(credential(fake), session, Clock())
    with capture_logs() as logs, pytest.raises(ExchangeUnavailable) as caught:
        await exchanger.headers(principal(), ("repo:read",))
    assert "malformed token response" in caught.value.detail
    assert logs[0]["as_status"] == 200 and "abc.def-ghi" not in repr(logs)
