"""What the gateway puts on the upstream request in place of the client's token.

The MCP authorization spec forbids token passthrough: the client's token was issued for the
gateway (its ``aud`` is the route's resource, RFC 8707) and must never reach the upstream. Each
route names instead how the upstream request is authenticated (``credential:`` in the config),
and ``build_strategy`` turns that choice into a ``CredentialStrategy``:

* ``none``: nothing is added;
* ``static``: one fixed header, e.g. an API key the upstream expects;
* ``minted``: a short-lived JWT signed by the gateway for the upstream (``gateway.upstream.minting``);
* ``token_exchange``: RFC 8693 at the authorization server (``gateway.upstream.exchange``, plugged in
  through a factory).

Strategies hold secrets (a static value, a minter's keys) but never show them: their ``repr``
names the kind of credential and the header, never a value.

Each credential the gateway obtains (a token minted, a token exchanged; not one reused from a
cache) is reported to ``on_issued`` as an ``IssuedCredential`` (for the audit trail): what it is
for and until when, never the token itself, only its SHA-256.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, assert_never

import cachetools

from ..config import (
    MintedCredential,
    NoCredential,
    RouteConfig,
    ScopeMode,
    StaticCredential,
    TokenExchangeCredential,
)
from ..principal import Principal
from .minting import MintedToken, TokenMinter

__all__ = [
    "CredentialConfigError",
    "CredentialStrategy",
    "ExchangerFactory",
    "IssuedCredential",
    "MintedCredentialStrategy",
    "NoCredentialStrategy",
    "OnIssued",
    "StaticCredentialStrategy",
    "build_strategy",
    "downstream_scopes",
]


class CredentialStrategy(Protocol):
    """How one route authenticates to its upstream."""

    async def headers(self, principal: Principal, required_scopes: tuple[str, ...]) -> dict[str, str]:
        """Headers to add to the upstream request for this caller and operation.

        ``required_scopes`` is every scope the request needs (``Decision.required``: the route's
        scopes first; for a batch, the union over its messages; for GET/DELETE, the route's).
        """
        ...


ExchangerFactory = Callable[[TokenExchangeCredential], CredentialStrategy]


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    """A downstream token the gateway just obtained for a caller, as the audit trail records it.

    Never the token: ``sha256`` (hex, of the token as sent) lets an upstream's own log of the
    token it received be matched to this record without the record being usable as a credential.
    """

    kind: Literal["minted", "exchanged"]
    audience: str | None
    resource: str | None
    scope: str | None  # space-separated as issued (None: no scope claim, or none asked for)
    expires_at: float | None  # Unix time; None when the authorization server did not say
    jti: str | None  # the token's JWT ID when it has one
    sha256: str

    @staticmethod
    def digest(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8")).hexdigest()


# Told of each credential issued (not those reused from a cache), with the caller it is for.
OnIssued = Callable[[Principal, IssuedCredential], None]


MINTED_CACHE_SIZE = 10_000


class CredentialConfigError(ValueError):
    """A route's credential cannot be built from what the gateway has (raised at start-up)."""


def downstream_scopes(
    mode: ScopeMode, granted: frozenset[str], required: tuple[str, ...]
) -> tuple[str, ...] | None:
    """The scopes a downstream token carries; pure.

    * ``operation``: the caller's scopes narrowed to this operation's (least privilege; the
      same narrowing RFC 8693 §2.1 ``scope`` asks of an exchange): ``required`` ∩ ``granted``,
      in ``required`` order, without repeats. Possibly empty, which is not the same as no
      ``scope`` claim at all.
    * ``caller``: all of the caller's scopes, sorted (stable tokens, readable logs).
    * ``none``: no scope claim (``None``).
    """
    if mode == "operation":
        return tuple(scope for scope in dict.fromkeys(required) if scope in granted)
    if mode == "caller":
        return tuple(sorted(granted))
    if mode == "none":
        return None
    assert_never(mode)


class NoCredentialStrategy:
    """``credential: none``: the upstream request carries no credential."""

    __slots__ = ()

    async def headers(self, principal: Principal, required_scopes: tuple[str, ...]) -> dict[str, str]:
        return {}

    def __repr__(self) -> str:
        return "NoCredentialStrategy()"


class StaticCredentialStrategy:
    """``credential: {static: …}``: one fixed header, the same for every caller."""

    __slots__ = ("_credential",)

    def __init__(self, credential: StaticCredential) -> None:
        # RFC 9110 §5.5: a field value never contains CR, LF or NUL; refuse at start-up rather than
        # let a stray newline from a secret file split the upstream request. The message does not
        # show the value.
        if any(char in credential.value.reveal() for char in "\r\n\0"):
            raise CredentialConfigError(
                f"the value for header {credential.header!r} contains a line break or NUL character"
            )
        self._credential = credential

    async def headers(self, principal: Principal, required_scopes: tuple[str, ...]) -> dict[str, str]:
        return {self._credential.header: self._credential.value.reveal()}

    def __repr__(self) -> str:
        return f"StaticCredentialStrategy(header={self._credential.header!r}, value=***)"


class MintedCredentialStrategy:
    """``credential: {minted: …}``: a gateway-signed RFC 9068 token, sent as an RFC 6750 §2.1
    bearer token.

    Signing is the costly part, so a token is reused for the same caller token and scopes for up
    to ``reuse_s`` and never past the middle of its own life: the upstream always receives a
    token with at least half its lifetime left. Keyed by the caller token's SHA-256 (the minted
    claims derive from nothing else), bounded, LRU.
    """

    __slots__ = ("_credential", "_minter", "_on_issued", "_reuse")

    def __init__(
        self,
        credential: MintedCredential,
        minter: TokenMinter,
        clock: Callable[[], float] = time.time,
        cache_size: int = MINTED_CACHE_SIZE,
        on_issued: OnIssued | None = None,
    ) -> None:
        self._credential = credential
        self._minter = minter
        self._on_issued = on_issued
        self._reuse: cachetools.TLRUCache[tuple[str, tuple[str, ...] | None], MintedToken, float] | None = (
            cachetools.TLRUCache(cache_size, self._reusable_until, timer=clock)
            if credential.reuse_s > 0
            else None
        )

    def _reusable_until(self, _key: object, token: MintedToken, _now: float) -> float:
        halfway = token.issued_at + (token.expires_at - token.issued_at) / 2
        return min(token.issued_at + self._credential.reuse_s, halfway)

    async def headers(self, principal: Principal, required_scopes: tuple[str, ...]) -> dict[str, str]:
        credential = self._credential
        scopes = downstream_scopes(credential.scope, principal.scopes, required_scopes)
        key = (principal.token.sha256, scopes)
        token = self._reuse.get(key) if self._reuse is not None else None
        if token is None:
            token = self._minter.mint_token(
                principal, audience=credential.audience, scopes=scopes, ttl_s=credential.ttl_s
            )
            if self._on_issued is not None:  # before it is kept: a refusal here sends nothing
                self._on_issued(principal, _minted(credential, scopes, token))
            if self._reuse is not None:
                self._reuse[key] = token
        return {"Authorization": f"Bearer {token.value}"}

    def __repr__(self) -> str:
        credential = self._credential
        return (
            f"MintedCredentialStrategy(audience={credential.audience!r}, ttl_s={credential.ttl_s!r}, "
            f"scope={credential.scope!r}, reuse_s={credential.reuse_s!r}, minter={self._minter!r})"
        )


def _minted(
    credential: MintedCredential, scopes: tuple[str, ...] | None, token: MintedToken
) -> IssuedCredential:
    return IssuedCredential(
        kind="minted",
        audience=credential.audience,
        resource=None,
        scope=None if scopes is None else " ".join(scopes),
        expires_at=token.expires_at,
        jti=token.jti,
        sha256=IssuedCredential.digest(token.value),
    )


def build_strategy(
    route: RouteConfig,
    minter: TokenMinter | None,
    exchanger_factory: ExchangerFactory | None,
    on_issued: OnIssued | None = None,
) -> CredentialStrategy:
    """The strategy for ``route.credential``; raises ``CredentialConfigError`` when a minted route
    has no minter or a token-exchange route has no exchanger factory. ``on_issued`` hears of each
    token minted (an exchanger factory wires its own)."""
    credential = route.credential
    if isinstance(credential, NoCredential):
        return NoCredentialStrategy()
    if isinstance(credential, StaticCredential):
        return StaticCredentialStrategy(credential)
    if isinstance(credential, MintedCredential):
        if minter is None:
            raise CredentialConfigError(
                f"route {route.path}: a minted credential needs a token minter "
                "(a top-level `minting` section with signing keys)"
            )
        return MintedCredentialStrategy(credential, minter, on_issued=on_issued)
    if isinstance(credential, TokenExchangeCredential):
        if exchanger_factory is None:
            raise CredentialConfigError(f"route {route.path}: token_exchange needs an exchanger factory")
        return exchanger_factory(credential)
    assert_never(credential)
