"""Per-route downstream credentials: what each strategy adds, and that no secret ever prints."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import (
    Credential,
    MintedCredential,
    MintingConfig,
    NoCredential,
    RouteConfig,
    ScopeMode,
    SigningKeyConfig,
    StaticCredential,
    TokenExchangeCredential,
)
from gateway.mcp.policy import RoutePolicy
from gateway.principal import Principal
from gateway.secret import PresentedToken, Secret
from gateway.upstream.credentials import (
    CredentialConfigError,
    CredentialStrategy,
    MintedCredentialStrategy,
    NoCredentialStrategy,
    StaticCredentialStrategy,
    build_strategy,
    downstream_scopes,
)
from gateway.upstream.minting import TokenMinter

API_KEY = "sk-live-4f9a1c0e-never-print-me"
CLIENT_TOKEN = "client-token-must-not-go-upstream"
AUDIENCE = "https://upstream.internal/mcp"
ISSUER = "https://mcp.example.com/upstream-tokens"
GRANTED = frozenset({"mcp:access", "repo:read", "repo:write", "admin"})


def caller(scopes: frozenset[str] = GRANTED) -> Principal:
    return Principal(
        issuer="https://auth.example.com",
        subject="alice",
        client_id="mcp-client",
        scopes=scopes,
        audience=("https://mcp.example.com/mcp",),
        expires_at=time.time() + 3600,
        token_id=None,
        token=PresentedToken(CLIENT_TOKEN),
        claims=MappingProxyType({"sub": "alice"}),
    )


def route(credential: Credential) -> RouteConfig:
    return RouteConfig(
        path="/mcp",
        upstream="http://127.0.0.1:9000/mcp",
        policy=RoutePolicy(route_scopes=("mcp:access",)),
        resource="https://mcp.example.com/mcp",
        credential=credential,
    )


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    path = tmp_path / "k1.pem"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


@pytest.fixture
def minter(key_path: Path) -> TokenMinter:
    return TokenMinter(
        MintingConfig(issuer=ISSUER, keys=(SigningKeyConfig("k1", "ES256", key_path),), active_kid="k1")
    )


def bearer_claims(headers: dict[str, str], minter: TokenMinter) -> dict[str, Any]:
    scheme, _, token = headers["Authorization"].partition(" ")
    assert scheme == "Bearer"
    key = jwt.PyJWKSet.from_dict(minter.jwks())["k1"]
    claims: dict[str, Any] = jwt.decode(
        token, key=key, algorithms=["ES256"], audience=AUDIENCE, issuer=ISSUER
    )
    return claims


# --- scope narrowing (pure) --------------------------------------------------------------------

SCOPE_CASES: list[tuple[ScopeMode, tuple[str, ...], frozenset[str], tuple[str, ...] | None]] = [
    # mode, required (route scopes first), granted, downstream scopes
    ("operation", ("mcp:access", "repo:read"), GRANTED, ("mcp:access", "repo:read")),
    ("operation", ("repo:read", "mcp:access"), GRANTED, ("repo:read", "mcp:access")),  # required order
    ("operation", ("mcp:access", "repo:read", "mcp:access"), GRANTED, ("mcp:access", "repo:read")),
    ("operation", ("mcp:access", "repo:admin"), GRANTED, ("mcp:access",)),  # never more than granted
    ("operation", ("mcp:access",), GRANTED, ("mcp:access",)),  # the route's scopes alone
    ("operation", (), GRANTED, ()),  # nothing needed: an empty scope, not all of the caller's
    ("caller", ("mcp:access",), GRANTED, ("admin", "mcp:access", "repo:read", "repo:write")),
    ("caller", (), frozenset(), ()),
    ("none", ("mcp:access", "repo:read"), GRANTED, None),
]


@pytest.mark.parametrize(("mode", "required", "granted", "expected"), SCOPE_CASES)
def test_downstream_scopes(
    mode: ScopeMode, required: tuple[str, ...], granted: frozenset[str], expected: tuple[str, ...] | None
) -> None:
    """`operation` keeps the held required scopes in order, `caller` all granted ones, `none` no claim."""
    assert downstream_scopes(mode, granted, required) == expected


# --- strategies --------------------------------------------------------------------------------


async def test_no_credential_adds_nothing() -> None:
    """A route without a credential adds no header upstream."""
    strategy = build_strategy(route(NoCredential()), None, None)
    assert isinstance(strategy, NoCredentialStrategy)
    assert await strategy.headers(caller(), ("mcp:access",)) == {}


async def test_static_credential_sends_the_secret_value() -> None:
    """A static credential sends its secret in its header, the same for every caller and operation."""
    strategy = build_strategy(route(StaticCredential("X-Api-Key", Secret(API_KEY))), None, None)
    assert isinstance(strategy, StaticCredentialStrategy)
    assert await strategy.headers(caller(), ("mcp:access",)) == {"X-Api-Key": API_KEY}
    # The same for every caller and operation.
    assert await strategy.headers(caller(frozenset()), ()) == {"X-Api-Key": API_KEY}


@pytest.mark.parametrize("value", [API_KEY + "\r\nX-Injected: 1", API_KEY + "\n", "a\0b"])
def test_static_value_with_a_line_break_is_refused_without_showing_it(value: str) -> None:
    """A static value with CR, LF or NUL is refused; the error names the header, never the value."""
    with pytest.raises(CredentialConfigError) as caught:
        StaticCredentialStrategy(StaticCredential("X-Api-Key", Secret(value)))
    assert API_KEY not in str(caught.value)
    assert "X-Api-Key" in str(caught.value)


@pytest.mark.parametrize(("mode", "required", "granted", "expected"), SCOPE_CASES)
async def test_minted_credential_per_scope_mode(
    minter: TokenMinter,
    mode: ScopeMode,
    required: tuple[str, ...],
    granted: frozenset[str],
    expected: tuple[str, ...] | None,
) -> None:
    """A minted token replaces the client's: caller's sub, client_id, `act`, the mode's scope, the ttl."""
    credential = MintedCredential(audience=AUDIENCE, ttl_s=120, scope=mode)
    strategy = build_strategy(route(credential), minter, None)
    assert isinstance(strategy, MintedCredentialStrategy)

    headers = await strategy.headers(caller(granted), required)

    assert list(headers) == ["Authorization"]
    assert CLIENT_TOKEN not in headers["Authorization"]  # never passthrough
    claims = bearer_claims(headers, minter)
    assert claims.get("scope") == (None if expected is None else " ".join(expected))
    assert (claims["sub"], claims["client_id"], claims["act"]) == (
        "alice",
        "mcp-client",
        {"sub": "mcp-client"},
    )
    assert claims["exp"] - claims["iat"] <= 120


async def test_minted_credential_with_reuse_off_is_fresh_per_request(minter: TokenMinter) -> None:
    """With `reuse_s: 0` every request gets a freshly minted token with its own `jti`."""
    strategy = build_strategy(route(MintedCredential(audience=AUDIENCE, reuse_s=0)), minter, None)
    first = await strategy.headers(caller(), ("mcp:access",))
    second = await strategy.headers(caller(), ("mcp:access",))
    assert first != second
    assert bearer_claims(first, minter)["jti"] != bearer_claims(second, minter)["jti"]


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_minted_credential_is_reused_per_caller_token_and_scopes(minter: TokenMinter) -> None:
    """A minted token is reused only for the same caller token and the same operation scopes."""
    strategy = MintedCredentialStrategy(MintedCredential(audience=AUDIENCE, reuse_s=60), minter)
    alice = caller()
    first = await strategy.headers(alice, ("mcp:access", "repo:read"))
    assert await strategy.headers(alice, ("mcp:access", "repo:read")) == first
    # Other scopes for the operation, or another caller token: another token.
    other_scopes = await strategy.headers(alice, ("mcp:access", "repo:write"))
    assert bearer_claims(other_scopes, minter)["scope"] == "mcp:access repo:write"
    assert other_scopes != first
    other_caller = dataclasses.replace(alice, token=PresentedToken("another-client-token"))
    assert await strategy.headers(other_caller, ("mcp:access", "repo:read")) != first


@pytest.mark.parametrize(
    ("ttl_s", "reuse_s", "reused_until_s"),
    [
        (300, 60, 60),  # reuse_s ends it
        (60, 60, 30),  # the middle of the minted token's life ends it first
    ],
)
async def test_minted_credential_reuse_ends_at_reuse_s_or_half_life(
    minter: TokenMinter, ttl_s: float, reuse_s: float, reused_until_s: float
) -> None:
    """A minted token is reused until `reuse_s` or half its lifetime, whichever comes first."""
    clock = Clock()
    credential = MintedCredential(audience=AUDIENCE, ttl_s=ttl_s, reuse_s=reuse_s)
    strategy = MintedCredentialStrategy(credential, minter, clock=clock)
    alice = caller()
    first = await strategy.headers(alice, ("mcp:access",))
    issued_at = bearer_claims(first, minter)["iat"]
    clock.now = issued_at + reused_until_s - 0.5
    assert await strategy.headers(alice, ("mcp:access",)) == first
    clock.now = issued_at + reused_until_s + 0.5
    assert await strategy.headers(alice, ("mcp:access",)) != first


# --- the factory -------------------------------------------------------------------------------


class FakeExchanger:
    def __init__(self, credential: TokenExchangeCredential) -> None:
        self.credential = credential

    async def headers(self, principal: Principal, required_scopes: tuple[str, ...]) -> dict[str, str]:
        return {"Authorization": "Bearer exchanged"}


EXCHANGE = TokenExchangeCredential(
    token_endpoint="https://auth.example.com/token",
    client_id="gateway",
    client_secret=Secret(API_KEY),
    audience=AUDIENCE,
)


async def test_token_exchange_uses_the_plugged_in_factory() -> None:
    """A `token_exchange` route gets its strategy from the exchanger factory, given its credential."""
    made: list[TokenExchangeCredential] = []

    def factory(credential: TokenExchangeCredential) -> CredentialStrategy:
        made.append(credential)
        return FakeExchanger(credential)

    strategy = build_strategy(route(EXCHANGE), None, factory)

    assert isinstance(strategy, FakeExchanger)
    assert made == [EXCHANGE]
    assert await strategy.headers(caller(), ()) == {"Authorization": "Bearer exchanged"}


def test_a_minted_route_without_a_minter_is_a_clear_error() -> None:
    """A minted route with no token minter is refused with an error naming the route."""
    with pytest.raises(CredentialConfigError, match=r"route /mcp: a minted credential needs a token minter"):
        build_strategy(route(MintedCredential(audience=AUDIENCE)), None, FakeExchanger)


def test_a_token_exchange_route_without_a_factory_is_a_clear_error(minter: TokenMinter) -> None:
    """A `token_exchange` route with no exchanger factory is refused with an error naming the route."""
    with pytest.raises(CredentialConfigError, match=r"route /mcp: token_exchange needs an exchanger factory"):
        build_strategy(route(EXCHANGE), minter, None)


# --- nothing secret prints ---------------------------------------------------------------------


def test_repr_and_str_of_strategies_never_show_a_secret(minter: TokenMinter, key_path: Path) -> None:
    """No strategy's repr or str shows the API key, the client's token or the signing key."""
    strategies: list[object] = [
        build_strategy(route(NoCredential()), minter, None),
        build_strategy(route(StaticCredential("X-Api-Key", Secret(API_KEY))), minter, None),
        build_strategy(route(MintedCredential(audience=AUDIENCE, scope="caller")), minter, None),
    ]
    pem_line = key_path.read_text().splitlines()[1]  # a line of the private key
    for strategy in strategies:
        for shown in (repr(strategy), str(strategy), f"{strategy!r}", f"{[strategy]}"):
            assert API_KEY not in shown
            assert CLIENT_TOKEN not in shown
            assert pem_line not in shown
    assert repr(strategies[1]) == "StaticCredentialStrategy(header='X-Api-Key', value=***)"
    assert "audience='https://upstream.internal/mcp'" in repr(strategies[2])
    assert "TokenMinter(" in repr(strategies[2])
