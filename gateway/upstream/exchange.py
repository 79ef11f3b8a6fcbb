"""RFC 8693 token exchange: the caller's access token traded for one meant for the upstream.

The gateway is an OAuth client of the authorization server's token endpoint. For each request
it asks (RFC 8693 §2.1) for an access token whose audience/resource is the upstream, with the
scopes the operation needs, on behalf of the caller whose token it just validated.

Failure is closed in every case: if no exchanged token can be had, the request is refused
(503 ``exchange_unavailable`` or 403 ``exchange_refused``). The caller's own token is never
forwarded instead.

Layout: small pure functions decide (what to ask, how to authenticate, what an answer means,
how long to keep it); ``TokenExchanger`` is the thin async shell around one HTTP POST
(``gateway.auth.oauth_client``), a bounded cache and a single-flight table (``gateway.singleflight``).
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import aiohttp
import cachetools
import structlog

from ..auth.oauth_client import (
    Cached,
    FetchError,
    FormResponse,
    cache_until,
    client_authentication,
    noop,
    post_form,
    time_to_use,
)
from ..auth.tokens import B64TOKEN
from ..config import ScopeMode, TokenExchangeCredential
from ..errors import DEFAULT_RETRY_AFTER_S, ExchangeRefused, ExchangeUnavailable
from ..principal import Principal
from ..secret import Secret
from ..singleflight import SingleFlight
from ..strictjson import StrictJSONError, loads_strict
from ..telemetry.attributes import CACHE_HIT
from ..telemetry.spans import span
from .credentials import IssuedCredential, OnIssued

__all__ = [
    "GRANT_TYPE_TOKEN_EXCHANGE",
    "TOKEN_TYPE_ACCESS_TOKEN",
    "ExchangeKey",
    "ExchangeRefused",
    "ExchangeUnavailable",
    "ExchangedToken",
    "TokenExchanger",
    "exchange_form",
    "interpret_token_response",
    "requested_scope",
    "retry_after_seconds",
    "safe_description",
    "token_cache_until",
    "unverified_jti",
]

log = structlog.get_logger("gateway.exchange")

# RFC 8693 §2.1 and §3.
# URNs, not credentials (hence the S105 waivers).
GRANT_TYPE_TOKEN_EXCHANGE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
TOKEN_TYPE_ACCESS_TOKEN: Final = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
TOKEN_TYPE_JWT: Final = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105
# Issued token types that may be sent as a bearer access token. A JWT is one when the AS says
# so with token_type Bearer (RFC 8693 §3); ID tokens, refresh tokens and SAML assertions are not.
USABLE_ISSUED_TOKEN_TYPES: Final = frozenset({TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT})

MAX_ISSUED_TOKEN_CHARS: Final = 16 * 1024
MAX_RETRY_AFTER_S: Final = 300
DESCRIPTION_LOG_CHARS: Final = 200
_MAX_ERROR_CODE_CHARS: Final = 128

# RFC 6749 §5.2: `error` and `error_description` use %x20-21 / %x23-5B / %x5D-7E only.
_ERROR_CHARS: Final = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+")
_NOT_ERROR_CHARS: Final = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


# =========================================================================== errors


# =========================================================================== pure decisions


@dataclass(frozen=True, slots=True)
class ExchangedToken:
    """A successful RFC 8693 §2.2.1 response, validated."""

    access_token: Secret
    issued_token_type: str
    expires_in: float | None
    scope: str | None


class ExchangeKey(NamedTuple):
    """What an exchanged token is cached under: never the subject token itself, only its hash."""

    subject_sha256: str
    audience: str | None
    resource: str | None
    scope: str | None


def requested_scope(mode: ScopeMode, required: Iterable[str], caller: frozenset[str]) -> str | None:
    """The ``scope`` parameter (RFC 8693 §2.1, RFC 6749 §3.3), or None to omit it.

    ``operation``: the operation's required scopes the caller actually holds (never more than the
    caller has); ``caller``: every scope of the caller; ``none``: no scope parameter. Sorted, so
    the same set always yields the same string and the same cache entry.
    """
    if mode == "none":
        return None
    chosen = caller if mode == "caller" else caller.intersection(required)
    return " ".join(sorted(chosen)) or None


def exchange_form(subject_token: str, config: TokenExchangeCredential, scope: str | None) -> dict[str, str]:
    """The RFC 8693 §2.1 request parameters (client authentication not included)."""
    form = {
        "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": TOKEN_TYPE_ACCESS_TOKEN,
        "requested_token_type": TOKEN_TYPE_ACCESS_TOKEN,
    }
    # RFC 8693 §2.1: audience is a logical name, resource (RFC 8707) a URI; either or both.
    if config.audience is not None:
        form["audience"] = config.audience
    if config.resource is not None:
        form["resource"] = config.resource
    if scope is not None:
        form["scope"] = scope
    return form


def token_cache_until(
    sent_at: float, expires_in: float | None, refresh_margin_s: float, subject_expires_at: float
) -> float | None:
    """Until when an exchanged token may be reused, or None not to cache it at all.

    RFC 8693 §2.2.1 ``expires_in`` counts from the response; measuring from when the request was
    sent errs early. Without ``expires_in`` the lifetime is unknown, so nothing is cached. An
    entry never outlives the subject token it was exchanged for: once that expires, the
    caller's authority to act through the gateway has ended too.
    """
    lifetime_s = None if expires_in is None else expires_in - refresh_margin_s
    return cache_until(sent_at, lifetime_s, not_after=subject_expires_at)


def retry_after_seconds(value: str | None) -> int:
    """The AS's ``Retry-After`` if it is delay-seconds (RFC 9110 §10.2.3), bounded; else the default."""
    if value is None or not value.strip().isdigit():
        return DEFAULT_RETRY_AFTER_S
    return max(1, min(int(value.strip()), MAX_RETRY_AFTER_S))


def safe_description(text: str, never_echo: Iterable[str]) -> str:
    """An AS ``error_description`` fit for a log line: no secrets, RFC 6749 §5.2 characters, ≤ 200."""
    for secret in never_echo:
        if secret:
            text = text.replace(secret, "***")
    return _NOT_ERROR_CHARS.sub("?", text)[:DESCRIPTION_LOG_CHARS]


def unverified_jti(token: str) -> str | None:
    """The ``jti`` an exchanged token names if it is a JWT (RFC 7519 §4.1.7), read without
    verifying anything: the gateway only forwards the token, and uses this to correlate its
    audit record with the upstream's log, never to decide."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        claims = loads_strict(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError, StrictJSONError):
        return None
    jti = claims.get("jti") if isinstance(claims, dict) else None
    return jti if isinstance(jti, str) else None


class _Malformed(ValueError):
    """A response that does not follow the spec; the message names the problem (no values)."""


def interpret_token_response(response: FormResponse, *, never_echo: Iterable[str] = ()) -> ExchangedToken:
    """Turn the AS's answer into a token or the right refusal; never anything in between.

    * 200 with a valid RFC 8693 §2.2.1 body → the token.
    * 400/401 with an RFC 6749 §5.2 error body → ``ExchangeRefused`` (RFC 8693 §2.2.2).
    * anything else (5xx, redirects, other statuses, a malformed or unusable 200, a 400 without
      a proper error) → ``ExchangeUnavailable``: the AS, not the caller, is at fault.
    """
    retry_after = retry_after_seconds(response.retry_after)
    if response.status in (400, 401):
        try:
            code, description = _error_of(response.body)
        except _Malformed as exc:
            raise ExchangeUnavailable(
                f"HTTP {response.status} without an RFC 6749 error: {exc}", retry_after_s=retry_after
            ) from None
        shown = None if description is None else safe_description(description, never_echo)
        raise ExchangeRefused(code, response.status, shown)
    if response.status != 200:
        raise ExchangeUnavailable(f"HTTP {response.status}", retry_after_s=retry_after)
    try:
        return _token_of(response.body)
    except _Malformed as exc:
        raise ExchangeUnavailable(f"malformed token response: {exc}", retry_after_s=retry_after) from None


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        document = loads_strict(body)
    except StrictJSONError as exc:
        raise _Malformed(str(exc)) from None
    if not isinstance(document, dict):
        raise _Malformed("not a JSON object")
    return document


def _error_of(body: bytes) -> tuple[str, str | None]:
    """RFC 6749 §5.2: ``error`` REQUIRED (restricted ASCII), ``error_description`` OPTIONAL."""
    document = _json_object(body)
    code = document.get("error")
    if not isinstance(code, str) or len(code) > _MAX_ERROR_CODE_CHARS or not _ERROR_CHARS.fullmatch(code):
        raise _Malformed("missing or invalid 'error'")
    description = document.get("error_description")
    return code, description if isinstance(description, str) else None


def _token_of(body: bytes) -> ExchangedToken:
    """RFC 8693 §2.2.1: access_token, issued_token_type, token_type REQUIRED; expires_in, scope OPTIONAL."""
    document = _json_object(body)
    token = document.get("access_token")
    if not isinstance(token, str) or not token:
        raise _Malformed("missing 'access_token'")
    if len(token) > MAX_ISSUED_TOKEN_CHARS or not B64TOKEN.fullmatch(token):
        raise _Malformed("'access_token' is not an RFC 6750 b64token")
    issued_type = document.get("issued_token_type")
    if not isinstance(issued_type, str):
        raise _Malformed("missing 'issued_token_type'")
    if issued_type not in USABLE_ISSUED_TOKEN_TYPES:
        raise _Malformed(f"issued_token_type {issued_type[:80]!r} is not an access token")
    token_type = document.get("token_type")
    if not isinstance(token_type, str):
        raise _Malformed("missing 'token_type'")
    # RFC 6749 §7.1 / RFC 6750: Bearer, case-insensitively. RFC 8693 §2.2.1 "N_A" means the
    # issued token is not an access token; DPoP and other bound types need proof we cannot give.
    if token_type.lower() != "bearer":
        raise _Malformed(f"token_type {token_type[:20]!r} is not Bearer")
    expires_in = document.get("expires_in")
    if expires_in is not None and (
        isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0
    ):
        raise _Malformed("'expires_in' is not a positive number")
    scope = document.get("scope")
    if scope is not None and not isinstance(scope, str):
        raise _Malformed("'scope' is not a string")
    return ExchangedToken(
        access_token=Secret(token),
        issued_token_type=issued_type,
        expires_in=None if expires_in is None else float(expires_in),
        scope=scope,
    )


# =========================================================================== the shell


class TokenExchanger:
    """The ``token_exchange`` downstream credential of one route (RFC 8693)."""

    def __init__(
        self,
        config: TokenExchangeCredential,
        session: aiohttp.ClientSession,
        clock: Callable[[], float] = time.time,
        *,
        on_result: Callable[[str], None] | None = None,
        on_cache_hit: Callable[[], None] | None = None,
        on_issued: OnIssued | None = None,
    ) -> None:
        self._config = config
        self._on_issued = on_issued  # each token the AS issues (for the audit trail)
        self._session = session
        self._clock = clock  # wall clock: compared with `exp` of the subject token
        # Metrics hooks: each exchange sent ("ok", "refused", "unavailable"), each cache hit.
        self._on_result = on_result or noop
        self._on_cache_hit = on_cache_hit or noop
        # Bounded (LRU beyond cache_size) and per-entry expiry; an entry whose time is already
        # up is never stored.
        self._cache: cachetools.TLRUCache[ExchangeKey, Cached[Secret], float] = cachetools.TLRUCache(
            config.cache_size, time_to_use, timer=clock
        )
        self._flights: SingleFlight[ExchangeKey, Secret] = SingleFlight()

    async def headers(self, principal: Principal, required_scopes: tuple[str, ...]) -> dict[str, str]:
        """``{"Authorization": "Bearer <exchanged>"}`` for this caller and operation, or an error."""
        config = self._config
        scope = requested_scope(config.scope, required_scopes, principal.scopes)
        # Never the subject token itself, only the SHA-256 computed when it was presented.
        key = ExchangeKey(principal.token.sha256, config.audience, config.resource, scope)
        cached = self._cache.get(key)
        # A span of the request, if traced: whether the cache answered; a refusal fails it.
        with span("exchange token", {CACHE_HIT: cached is not None}):
            if cached is not None:
                token = cached.value
                self._on_cache_hit()
            else:
                token = await self._flights.run(key, lambda: self._exchange(key, principal, scope))
        return {"Authorization": f"Bearer {token.reveal()}"}

    async def aclose(self) -> None:
        await self._flights.aclose()

    async def _exchange(self, key: ExchangeKey, principal: Principal, scope: str | None) -> Secret:
        config = self._config
        subject = principal.token.reveal()
        auth_headers, auth_fields = client_authentication(
            config.auth_method, config.client_id, config.client_secret
        )
        form = {**exchange_form(subject, config, scope), **auth_fields}
        endpoint = config.token_endpoint
        sent_at = self._clock()
        try:
            response = await post_form(
                self._session, endpoint, form, auth_headers, timeout_s=config.timeout_s
            )
        except FetchError as exc:
            log.warning("token_exchange_unavailable", endpoint=endpoint, problem=str(exc))
            self._on_result("unavailable")
            raise ExchangeUnavailable(str(exc)) from exc
        try:
            issued = interpret_token_response(response, never_echo=(subject, config.client_secret.reveal()))
        except ExchangeRefused as exc:
            self._on_result("refused")
            log.warning(
                "token_exchange_refused",
                endpoint=endpoint,
                as_status=exc.as_status,
                as_error=exc.error_code,
                as_error_description=exc.description,
                subject=principal.subject,
            )
            raise
        except ExchangeUnavailable as exc:
            self._on_result("unavailable")
            log.warning(
                "token_exchange_unavailable",
                endpoint=endpoint,
                as_status=response.status,
                problem=exc.detail,
                retry_after_s=exc.retry_after_s,
            )
            raise
        self._on_result("ok")
        if self._on_issued is not None:  # before it is cached: a refusal here sends nothing
            self._on_issued(principal, _exchanged(config, issued, scope, sent_at))
        until = token_cache_until(sent_at, issued.expires_in, config.refresh_margin_s, principal.expires_at)
        if until is not None:
            self._cache[key] = Cached(issued.access_token, until)
        log.debug(
            "token_exchanged",
            endpoint=endpoint,
            subject=principal.subject,
            scope=scope,
            expires_in=issued.expires_in,
            cached_for_s=None if until is None else round(until - sent_at, 3),
        )
        return issued.access_token


def _exchanged(
    config: TokenExchangeCredential, issued: ExchangedToken, requested: str | None, sent_at: float
) -> IssuedCredential:
    token = issued.access_token.reveal()
    return IssuedCredential(
        kind="exchanged",
        audience=config.audience,
        resource=config.resource,
        # RFC 8693 §2.2.1: an omitted scope is the one requested.
        scope=issued.scope if issued.scope is not None else requested,
        expires_at=None if issued.expires_in is None else sent_at + issued.expires_in,
        jti=unverified_jti(token),
        sha256=IssuedCredential.digest(token),
    )
