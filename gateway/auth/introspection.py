"""RFC 7662 token introspection: opaque access tokens checked at the issuer.

For an issuer configured with ``introspection`` the gateway POSTs each unknown token to the
introspection endpoint, authenticated as a client (RFC 7662 §2.1), and reads the answer strictly
(§2.2). An active token then goes through exactly the checks a JWT gets (``tokens.check_claims``:
issuer, exp/nbf/iat with leeway, ``aud`` containing the route's resource, ``sub``…).

Answers are cached by SHA-256 of the token (never the token), for at most ``cache_max_s`` and
never past the token's ``exp``; "inactive" answers for a few seconds only (RFC 7662 §4 on the
trade-off between caching and revocation). The per-route checks run on every request, so one
cached answer serves several routes, each with its own audience. Anything short of a clear
answer fails closed with 503.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import aiohttp
import cachetools
import structlog

from ..config import IntrospectionConfig, IssuerConfig
from ..errors import IntrospectionUnavailable, InvalidToken, TokenReason
from ..principal import Identity, Principal
from ..secret import PresentedToken
from ..singleflight import SingleFlight
from ..strictjson import StrictJSONError, loads_strict
from ..telemetry.attributes import ISSUER, RESULT
from ..telemetry.spans import span
from .oauth_client import (
    Cached,
    FetchError,
    FormResponse,
    cache_until,
    client_authentication,
    noop,
    post_form,
    time_to_use,
)
from .tokens import check_claims, finite_number

__all__ = [
    "IntrospectionResult",
    "IntrospectionUnavailable",
    "Introspector",
    "answer_cache_until",
    "claims_from",
    "identity_from",
    "interpret_introspection",
    "introspection_form",
]

log = structlog.get_logger("gateway.introspection")

CACHE_SIZE: Final = 10_000
NEGATIVE_CACHE_MAX_S: Final = 10.0
# RFC 7662 §2.2 members carried into the claims (``active`` and ``token_type`` are checked, not
# kept). Extension members are dropped: later steps only ever see the standard claims.
# `cnf` too: a DPoP binding (RFC 9449 §6.2), checked with the proof by gateway.auth.dpop.
CLAIM_MEMBERS: Final = (
    "scope", "client_id", "username", "exp", "iat", "nbf", "sub", "aud", "iss", "jti", "cnf",
)  # fmt: skip
# ``token_type`` values that denote a bearer access token (RFC 7662 §2.2 refers to RFC 6749
# §7.1 token types; some servers answer with the token's kind or the RFC 8693 URN instead).
_BEARER_TOKEN_TYPES: Final = frozenset(
    {"bearer", "access_token", "urn:ietf:params:oauth:token-type:access_token"}
)


# =========================================================================== pure decisions


@dataclass(frozen=True, slots=True)
class IntrospectionResult:
    """The AS's answer about one token: accepted claims, or why the token is refused."""

    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    refusal: TokenReason | None = None  # an InvalidToken reason: "inactive", "bad_token_type", …

    @property
    def active(self) -> bool:
        return self.refusal is None


INACTIVE: Final = IntrospectionResult(refusal="inactive")


def introspection_form(token: str) -> dict[str, str]:
    """RFC 7662 §2.1: ``token`` REQUIRED, ``token_type_hint`` OPTIONAL."""
    return {"token": token, "token_type_hint": "access_token"}


def interpret_introspection(response: FormResponse, issuer: str) -> IntrospectionResult:
    """Read the endpoint's answer strictly; anything but a well-formed 200 is ``IntrospectionUnavailable``."""
    if response.status != 200:
        # Including 401/403 to the gateway itself (its client credentials are wrong): an
        # operator's problem, not the caller's, and not a reason to accept or reject the token.
        raise IntrospectionUnavailable(detail=f"introspection HTTP {response.status}")
    try:
        document = loads_strict(response.body)
    except StrictJSONError as exc:
        raise IntrospectionUnavailable(detail=f"introspection response: {exc}") from None
    if not isinstance(document, dict):
        raise IntrospectionUnavailable(detail="introspection response is not a JSON object")
    active = document.get("active")
    if not isinstance(active, bool):  # RFC 7662 §2.2: REQUIRED, a boolean
        raise IntrospectionUnavailable(detail="introspection response without boolean 'active'")
    if not active:
        # RFC 7662 §2.2: an inactive token's response SHOULD say nothing else; ignore the rest.
        return INACTIVE
    return claims_from(document, issuer)


def claims_from(document: Mapping[str, Any], issuer: str) -> IntrospectionResult:
    """The claims of an active token, for ``check_claims``; or a refusal for an unusable token kind."""
    token_type = document.get("token_type")
    cnf = document.get("cnf")
    dpop_bound = isinstance(cnf, dict) and isinstance(cnf.get("jkt"), str)
    if token_type is not None and (
        not isinstance(token_type, str)
        or token_type.lower() not in (_BEARER_TOKEN_TYPES | {"dpop"} if dpop_bound else _BEARER_TOKEN_TYPES)
    ):
        # A refresh token is not an access token; `DPoP` (RFC 9449 §6.2) only with its cnf.jkt.
        return IntrospectionResult(refusal="bad_token_type")
    if cnf is not None and not dpop_bound:
        # Another binding (RFC 8705 §3.2 mTLS): it cannot be checked here, so the token is refused.
        return IntrospectionResult(refusal="sender_constrained")
    username = document.get("username")
    if username is not None and not isinstance(username, str):
        return IntrospectionResult(refusal="bad_claim")
    claims = {name: document[name] for name in CLAIM_MEMBERS if name in document}
    # `iss` is OPTIONAL in RFC 7662 §2.2; the configured endpoint speaks for its issuer, so an
    # absent `iss` means that issuer. A present one must still match exactly (check_claims).
    claims.setdefault("iss", issuer)
    return IntrospectionResult(claims=MappingProxyType(claims))


def answer_cache_until(result: IntrospectionResult, now: float, config: IntrospectionConfig) -> float | None:
    """Until when an answer may be reused, or None (``cache_max_s`` 0) to keep nothing.

    Active: until the earlier of the token's ``exp`` and ``cache_max_s`` from now. Refused:
    ``min(cache_max_s, 10 s)``, enough to absorb a burst of retries with a bad token while a
    token that just became valid (clock skew at the AS) is not refused for long.
    """
    if not result.active:
        return cache_until(now, min(config.cache_max_s, NEGATIVE_CACHE_MAX_S))
    # A missing or unusable `exp` does not bound the cache; check_claims refuses the token anyway.
    expires_at = finite_number(result.claims.get("exp"))
    if expires_at is None:
        expires_at = math.inf
    return cache_until(now, config.cache_max_s, not_after=expires_at)


def identity_from(
    result: IntrospectionResult, *, issuer: IssuerConfig, resource: str, now: float
) -> Identity:
    """The per-request decision on a (possibly cached) answer: refusal, or every claim check."""
    if result.refusal is not None:
        raise InvalidToken(result.refusal)
    return check_claims(result.claims, issuer=issuer, resource=resource, now=now)


# =========================================================================== the shell


class Introspector:
    """Authenticates opaque tokens of one issuer at its RFC 7662 introspection endpoint."""

    def __init__(
        self,
        issuer: IssuerConfig,
        session: aiohttp.ClientSession,
        clock: Callable[[], float] = time.time,
        *,
        on_result: Callable[[str], None] | None = None,
        on_cache_hit: Callable[[], None] | None = None,
    ) -> None:
        if issuer.introspection is None:
            raise ValueError(f"issuer {issuer.issuer} has no introspection endpoint configured")
        self.issuer = issuer
        self._config: IntrospectionConfig = issuer.introspection
        self._session = session
        self._clock = clock  # wall clock: compared with `exp`
        self._cache: cachetools.TLRUCache[str, Cached[IntrospectionResult], float] = cachetools.TLRUCache(
            CACHE_SIZE, time_to_use, timer=clock
        )
        self._flights: SingleFlight[str, IntrospectionResult] = SingleFlight()
        # Metrics hooks: each call's result ("active", the refusal, "unavailable"), each cache hit.
        self._on_result = on_result or noop
        self._on_cache_hit = on_cache_hit or noop

    def known(self, token: PresentedToken) -> bool:
        """Whether the AS's answer about ``token`` is cached (using it asks the AS nothing)."""
        return token.sha256 in self._cache

    async def authenticate(self, token: PresentedToken, resource: str) -> Principal:
        """The caller behind ``token`` for the route whose resource is ``resource``, or an error."""
        key = token.sha256
        cached = self._cache.get(key)
        if cached is not None:
            result = cached.value
            self._on_cache_hit()
        else:
            result = await self._flights.run(key, lambda: self._introspect(key, token))
        identity = identity_from(result, issuer=self.issuer, resource=resource, now=self._clock())
        return identity.presented_with(token)

    async def aclose(self) -> None:
        await self._flights.aclose()

    async def _introspect(self, key: str, token: PresentedToken) -> IntrospectionResult:
        config = self._config
        headers, auth_fields = client_authentication(
            config.auth_method, config.client_id, config.client_secret
        )
        asked_at = self._clock()
        # A span of the request whose token it is, if traced; an unavailable AS fails it.
        with span("introspect token", {ISSUER: self.issuer.issuer}, kind="client") as traced:
            try:
                response = await post_form(
                    self._session,
                    config.endpoint,
                    {**introspection_form(token.reveal()), **auth_fields},
                    headers,
                    timeout_s=config.timeout_s,
                )
                result = interpret_introspection(response, self.issuer.issuer)
            except FetchError as exc:
                log.warning("introspection_unavailable", issuer=self.issuer.issuer, problem=str(exc))
                self._on_result("unavailable")
                raise IntrospectionUnavailable(detail=str(exc)) from exc
            except IntrospectionUnavailable as exc:
                log.warning("introspection_unavailable", issuer=self.issuer.issuer, problem=exc.detail)
                self._on_result("unavailable")
                raise
            traced.set(RESULT, "active" if result.refusal is None else result.refusal)
        self._on_result("active" if result.refusal is None else result.refusal)
        until = answer_cache_until(result, asked_at, config)
        if until is not None:
            self._cache[key] = Cached(result, until)
        log.debug(
            "token_introspected", issuer=self.issuer.issuer, active=result.active, refusal=result.refusal
        )
        return result
