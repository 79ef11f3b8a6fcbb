"""RFC 8693 token exchange: the caller's access token traded for one meant for the upstream.

The gateway is an OAuth client of the authorization server's token endpoint. For each request
it asks (RFC 8693 §2.1) for an access token whose audience/resource is the upstream, with the
scopes the operation needs, on behalf of the caller whose token it just validated.

Failure is closed in every case: if no exchanged token can be had, the request is refused
(503 ``exchange_unavailable`` or 403 ``exchange_refused``). The caller's own token is never
forwarded instead.

Layout: small pure functions decide (what to ask, how to authenticate, what an answer means,
how long to keep it); ``TokenExchanger`` is the thin async shell around one HTTP POST, a bounded
cache and a single-flight table. ``client_authentication``, ``post_form`` and ``SingleFlight``
are shared with ``gateway.auth.introspection`` (RFC 7662), which talks to the same kind of endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import re
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, NamedTuple, TypeVar
from urllib.parse import quote_plus, urlencode

import aiohttp
import cachetools
import structlog

from ..auth.oauth_client import FetchError, read_bounded
from ..config import ClientAuthMethod, ScopeMode, TokenExchangeCredential
from ..errors import RequestRejected
from ..principal import Principal
from ..secret import Secret
from ..strictjson import StrictJSONError, loads_strict

__all__ = [
    "GRANT_TYPE_TOKEN_EXCHANGE",
    "TOKEN_TYPE_ACCESS_TOKEN",
    "ExchangeKey",
    "ExchangeRefused",
    "ExchangeUnavailable",
    "ExchangedToken",
    "FormResponse",
    "SingleFlight",
    "TokenExchanger",
    "cache_key",
    "cache_until",
    "client_authentication",
    "exchange_form",
    "interpret_token_response",
    "post_form",
    "requested_scope",
    "retry_after_seconds",
    "safe_description",
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

MAX_RESPONSE_BYTES: Final = 64 * 1024  # a token or introspection response is a few KiB at most
MAX_ISSUED_TOKEN_CHARS: Final = 16 * 1024
DEFAULT_RETRY_AFTER_S: Final = 5
MAX_RETRY_AFTER_S: Final = 300
DESCRIPTION_LOG_CHARS: Final = 200
_MAX_ERROR_CODE_CHARS: Final = 128

# RFC 6750 §2.1 b64token: what may follow "Bearer " in a header. Anything else from the AS is
# refused, so an AS response can never inject header syntax (CR, LF, commas) upstream.
_B64TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# RFC 6749 §5.2: `error` and `error_description` use %x20-21 / %x23-5B / %x5D-7E only.
_ERROR_CHARS: Final = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+")
_NOT_ERROR_CHARS: Final = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


# =========================================================================== errors


class ExchangeUnavailable(RequestRejected):
    """No usable answer from the AS (unreachable, timeout, 5xx, malformed): 503, retry later.

    ``retry_after_s`` is the value for the response's ``Retry-After`` header (RFC 9110 §10.2.3).
    """

    status = 503
    reason = "exchange_unavailable"
    jsonrpc_code = -32000  # implementation-defined server error (JSON-RPC 2.0 §5.1)
    message = "Upstream credential temporarily unavailable"

    def __init__(self, detail: str = "", *, retry_after_s: int = DEFAULT_RETRY_AFTER_S) -> None:
        super().__init__(None, detail)
        self.retry_after_s = retry_after_s


class ExchangeRefused(RequestRejected):
    """The AS answered the exchange with an RFC 6749 §5.2 error (400/401): 403.

    ``error_code`` is the AS's ``error`` (e.g. ``invalid_target``), ``as_status`` its HTTP status
    and ``description`` its ``error_description``, sanitised and cut to 200 characters (or None).
    """

    status = 403
    reason = "exchange_refused"
    jsonrpc_code = -32003  # implementation-defined server error: forbidden
    message = "Upstream credential refused by the authorization server"

    def __init__(self, error_code: str, as_status: int, description: str | None = None) -> None:
        super().__init__(None, f"as_error={error_code} as_status={as_status}")
        self.error_code = error_code
        self.as_status = as_status
        self.description = description


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


def client_authentication(
    method: ClientAuthMethod, client_id: str, client_secret: Secret
) -> tuple[dict[str, str], dict[str, str]]:
    """Headers and form fields that authenticate the gateway as an OAuth client.

    RFC 6749 §2.3.1: with HTTP Basic, the id and secret are each form-urlencoded (Appendix B)
    before being joined by ":" and base64-encoded; with ``client_secret_post`` they are plain
    form parameters. Exactly one method is used per request (RFC 6749 §2.3).
    """
    if method == "client_secret_post":
        return {}, {"client_id": client_id, "client_secret": client_secret.reveal()}
    user_pass = f"{quote_plus(client_id)}:{quote_plus(client_secret.reveal())}"
    encoded = base64.b64encode(user_pass.encode("ascii")).decode("ascii")
    return {"Authorization": f"Basic {encoded}"}, {}


def cache_key(
    subject_token: Secret, audience: str | None, resource: str | None, scope: str | None
) -> ExchangeKey:
    """The cache and single-flight key: a SHA-256 of the subject token, never the token."""
    digest = hashlib.sha256(subject_token.reveal().encode("utf-8")).hexdigest()
    return ExchangeKey(digest, audience, resource, scope)


def cache_until(
    sent_at: float, expires_in: float | None, refresh_margin_s: float, subject_expires_at: float
) -> float | None:
    """Until when an exchanged token may be reused, or None not to cache it at all.

    RFC 8693 §2.2.1 ``expires_in`` counts from the response; measuring from when the request was
    sent errs early. Without ``expires_in`` the lifetime is unknown, so nothing is cached. An
    entry never outlives the subject token it was exchanged for: once that expires, the
    caller's authority to act through the gateway has ended too.
    """
    if expires_in is None:
        return None
    until = min(sent_at + expires_in - refresh_margin_s, subject_expires_at)
    return until if until > sent_at else None


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


@dataclass(frozen=True, slots=True)
class FormResponse:
    """What the shell hands to the pure interpreters: status, bounded body, ``Retry-After``."""

    status: int
    body: bytes
    retry_after: str | None = None


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
    if len(token) > MAX_ISSUED_TOKEN_CHARS or not _B64TOKEN.fullmatch(token):
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


# =========================================================================== I/O helpers


async def post_form(
    session: aiohttp.ClientSession,
    url: str,
    fields: Mapping[str, str],
    headers: Mapping[str, str],
    *,
    timeout_s: float,
    max_bytes: int = MAX_RESPONSE_BYTES,
) -> FormResponse:
    """POST ``application/x-www-form-urlencoded`` (RFC 6749 §3.2 / RFC 7662 §2.1).

    No redirects followed (a 3xx is returned as is), one total timeout, the body bounded. Raises
    ``FetchError`` with a message fit for the log: it names the URL, never the form's contents.
    """
    try:
        async with session.post(
            url,
            data=urlencode(fields),
            headers={
                **headers,
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            body = await read_bounded(response, max_bytes)
            return FormResponse(response.status, body, response.headers.get("Retry-After"))
    except TimeoutError as exc:
        raise FetchError(f"POST {url}: timed out after {timeout_s}s") from exc
    except aiohttp.ClientError as exc:
        raise FetchError(f"POST {url}: {type(exc).__name__}") from exc


K = TypeVar("K")
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """At most one running call per key; every caller that arrives meanwhile awaits that call.

    The call runs in its own task and each caller awaits it through ``asyncio.shield``: one
    caller going away (client disconnected, request cancelled) never cancels the shared call.
    Its outcome, result or exception, goes to every waiter; nothing is remembered afterwards.
    """

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        return len(self._running)

    async def run(self, key: K, call: Callable[[], Coroutine[Any, Any, V]]) -> V:
        task = self._running.get(key)
        if task is None:
            task = asyncio.create_task(call())
            self._running[key] = task
            task.add_done_callback(functools.partial(self._finished, key))
        return await asyncio.shield(task)

    def _finished(self, key: K, task: asyncio.Task[V]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved: a call whose waiters all left must not warn

    async def aclose(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


# =========================================================================== the shell


def _ignore_result(_result: str) -> None:
    pass


def _ignore_hit() -> None:
    pass


@dataclass(frozen=True, slots=True)
class _Cached:
    token: Secret
    until: float


def _time_to_use(_key: ExchangeKey, value: _Cached, _now: float) -> float:
    return value.until


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
    ) -> None:
        self._config = config
        self._session = session
        self._clock = clock  # wall clock: compared with `exp` of the subject token
        # Metrics hooks: each exchange sent ("ok", "refused", "unavailable"), each cache hit.
        self._on_result = on_result or _ignore_result
        self._on_cache_hit = on_cache_hit or _ignore_hit
        # Bounded (LRU beyond cache_size) and per-entry expiry; an entry whose time is already
        # up is never stored.
        self._cache: cachetools.TLRUCache[ExchangeKey, _Cached, float] = cachetools.TLRUCache(
            config.cache_size, _time_to_use, timer=clock
        )
        self._flights: SingleFlight[ExchangeKey, Secret] = SingleFlight()

    async def headers(self, principal: Principal, required_scopes: tuple[str, ...]) -> dict[str, str]:
        """``{"Authorization": "Bearer <exchanged>"}`` for this caller and operation, or an error."""
        config = self._config
        scope = requested_scope(config.scope, required_scopes, principal.scopes)
        key = cache_key(principal.token, config.audience, config.resource, scope)
        cached = self._cache.get(key)
        if cached is not None:
            token = cached.token
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
        until = cache_until(sent_at, issued.expires_in, config.refresh_margin_s, principal.expires_at)
        if until is not None:
            self._cache[key] = _Cached(issued.access_token, until)
        log.debug(
            "token_exchanged",
            endpoint=endpoint,
            subject=principal.subject,
            scope=scope,
            expires_in=issued.expires_in,
            cached_for_s=None if until is None else round(until - sent_at, 3),
        )
        return issued.access_token
