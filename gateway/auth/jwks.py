"""Signing keys of each trusted issuer: fetched asynchronously, cached, rotated, single-flight.

Behaviour (RFC 8725 §3.8/§3.10, spec-notes C4):
- keys come only from the configured issuer's JWKS (configured URL, file, or discovered through
  the issuer's own RFC 8414 / OIDC metadata whose ``issuer`` must match exactly);
- an unknown ``kid`` triggers at most one refetch per cooldown, shared by all waiting requests;
- the last good key set is kept while the JWKS endpoint is down;
- keys are refreshed in the background after ``jwks_max_age_s``;
- after a failed load (endpoint down, no usable key, anything unexpected) the next one waits an
  exponential backoff with jitter (``retry_delay_s``: from ``min(1 s, cooldown)`` doubling up to
  ``jwks_refresh_cooldown_s``), whatever the request rate: a keyless issuer or stale keys during
  the authorization server's outage cost it one fetch per backoff step, not one per request;
- a key that may not be used is skipped, with a fixed reason (``SkipReason``) that is logged
  (``jwks_key_skipped``) and counted; the other keys of the set still work. RSA keys need 2048
  bits (RFC 7518 §3.3); an EC key serves only the algorithm of its curve (RFC 7518 §3.4), and a
  JWK whose ``alg`` names another curve's algorithm is not used at all.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import jwt
import structlog
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.exceptions import PyJWTError

from ..config import IssuerConfig, JwksFile, JwksUrl
from ..singleflight import SingleFlight
from ..strictjson import StrictJSONError, loads_strict
from ..telemetry.attributes import ISSUER
from ..telemetry.spans import span
from .oauth_client import FetchError, get_json_object, noop

log = structlog.get_logger("gateway.jwks")

# Which key types can verify which algorithms (RFC 7518 §3; RFC 8037 for EdDSA). A key is
# only ever used with an algorithm that fits its type and, if the JWK names one, that one alone
# (RFC 8725 §3.1: one algorithm per key).
_ALGORITHMS_FOR_KEY: Mapping[tuple[str, str | None], frozenset[str]] = {
    ("RSA", None): frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    ("EC", "P-256"): frozenset({"ES256"}),
    ("EC", "P-384"): frozenset({"ES384"}),
    ("EC", "P-521"): frozenset({"ES512"}),
    ("OKP", "Ed25519"): frozenset({"EdDSA"}),
    ("OKP", "Ed448"): frozenset({"EdDSA"}),
}
# RFC 7518 §3.3: "A key of size 2048 bits or larger MUST be used with these algorithms."
MIN_RSA_BITS: Final = 2048
_CURVE_NAMES: Final[Mapping[str, str]] = {"P-256": "secp256r1", "P-384": "secp384r1", "P-521": "secp521r1"}
_KID_LOG_CHARS: Final = 128

SkipReason: TypeAlias = Literal[
    "not_an_object",
    "private_key_material",
    "bad_kid",
    "bad_alg",
    "unsupported_key_type",  # a kty/crv pair no allowed algorithm is defined for
    "alg_mismatch",  # the JWK's `alg` does not fit its kty/crv (ES384 on a P-256 key, ES256 on RSA)
    "alg_not_allowed",  # fits, but the issuer is not configured for that algorithm
    "unreadable_key",
    "rsa_key_too_small",
]
"""Why a JWK is not used: a closed set, since it is a metrics label."""


@dataclass(frozen=True, slots=True)
class SkippedKey:
    """One JWK left out of a key set, and why (``detail`` is for the log line only)."""

    index: int
    kid: str | None
    reason: SkipReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str | None
    algorithms: frozenset[str]
    key: Any  # a cryptography public key object


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: tuple[VerificationKey, ...]

    def candidates(self, kid: str | None, alg: str) -> list[VerificationKey]:
        """Keys that may verify a token with this ``kid`` and ``alg``.

        A token without ``kid`` may be tried against every key fit for its algorithm: the set is
        the issuer's own and small, so this cannot be used to reach a foreign key.
        """
        return [key for key in self.keys if alg in key.algorithms and (kid is None or key.kid == kid)]

    def has_kid(self, kid: str) -> bool:
        return any(key.kid == kid for key in self.keys)


class KeysUnavailable(Exception):
    """No key set has ever been loaded for this issuer."""


def parse_jwks(
    document: Mapping[str, Any], allowed_algorithms: frozenset[str]
) -> tuple[KeySet, list[SkippedKey]]:
    """Turn a JWKS document into verification keys; returns the set and every key skipped, with why."""
    raw_keys = document.get("keys")
    if not isinstance(raw_keys, list):
        raise ValueError("JWKS has no 'keys' list")
    keys: list[VerificationKey] = []
    skipped: list[SkippedKey] = []
    for index, jwk in enumerate(raw_keys):
        if isinstance(jwk, dict) and jwk.get("use", "sig") != "sig":
            continue  # encryption keys are not ours to use
        verdict = verification_key(jwk, allowed_algorithms)
        if isinstance(verdict, VerificationKey):
            keys.append(verdict)
        else:
            reason, detail = verdict
            kid = jwk.get("kid") if isinstance(jwk, dict) else None
            kid = kid[:_KID_LOG_CHARS] if isinstance(kid, str) else None
            skipped.append(SkippedKey(index, kid, reason, detail))
    return KeySet(tuple(keys)), skipped


def verification_key(
    jwk: object, allowed_algorithms: frozenset[str]
) -> VerificationKey | tuple[SkipReason, str]:
    """One JWK as a key to verify with, or why it may not be used."""
    if not isinstance(jwk, dict):
        return "not_an_object", ""
    if any(private in jwk for private in ("d", "p", "q", "k")):
        # A JWKS endpoint that publishes private or symmetric key material is broken; trusting
        # it would also make HMAC confusion possible. Skip the key loudly.
        return "private_key_material", ""
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        return "bad_kid", "kid is not a string"
    kty, crv, declared = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
    if declared is not None and not isinstance(declared, str):
        return "bad_alg", "alg is not a string"
    shape = (kty if isinstance(kty, str) else "", crv if isinstance(crv, str) and kty != "RSA" else None)
    fits = _ALGORITHMS_FOR_KEY.get(shape)
    if fits is None:
        return "unsupported_key_type", f"kty={str(kty)[:16]!r} crv={str(crv)[:16]!r}"
    if declared is not None:
        # One algorithm per key (RFC 8725 §3.1); and a curve serves one algorithm (RFC 7518 §3.4),
        # so `crv: P-256` with `alg: ES384` is a contradiction, not a choice: the key is unused.
        if declared not in fits:
            return "alg_mismatch", f"alg={declared[:16]!r} on kty={kty!r} crv={crv!r}"
        fits = frozenset({declared})
    usable = fits & allowed_algorithms
    if not usable:
        return "alg_not_allowed", f"kty={kty!r} alg={declared!r}"
    try:
        # Pass an algorithm that fits so PyJWK does not guess one; we never use its choice.
        key_object = jwt.PyJWK(jwk, algorithm=sorted(usable)[0]).key
    except (PyJWTError, UnsupportedAlgorithm, ValueError, TypeError) as exc:
        # PyJWTError, not just PyJWKError: from_jwk raises InvalidKeyError itself (an RSA JWK
        # without `e`), which would otherwise end the whole load.
        return "unreadable_key", type(exc).__name__
    if isinstance(key_object, rsa.RSAPublicKey) and key_object.key_size < MIN_RSA_BITS:
        return "rsa_key_too_small", f"{key_object.key_size} bits"
    if isinstance(key_object, ec.EllipticCurvePublicKey):
        if key_object.curve.name != _CURVE_NAMES.get(str(crv)):  # not expected: PyJWK builds from crv
            return "alg_mismatch", f"curve {key_object.curve.name}"
    return VerificationKey(kid=kid, algorithms=frozenset(usable), key=key_object)


def authorization_server_metadata_urls(issuer: str) -> list[str]:
    """Metadata locations for an issuer, in the order MCP clients try them (MCP 2025-11-25).

    RFC 8414 §3.1 inserts the well-known segment before the issuer's path; OIDC Discovery 1.0 §4
    appends it (and RFC 8414 §5 allows the inserted OIDC form too).
    """
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")

    def at(new_path: str) -> str:
        return urlunsplit((parts.scheme, parts.netloc, new_path, "", ""))

    if not path:
        return [at("/.well-known/oauth-authorization-server"), at("/.well-known/openid-configuration")]
    return [
        at("/.well-known/oauth-authorization-server" + path),
        at("/.well-known/openid-configuration" + path),
        at(path + "/.well-known/openid-configuration"),
    ]


def metadata_issuer_mismatch(url: str, found: object, configured: str) -> str:
    """Why a metadata document was not used, with both issuer strings side by side.

    The usual cause is a one-character difference (a trailing ``/``, ``http`` vs ``https``, a
    host name vs an IP): the configured ``issuer`` must be written exactly as the authorization
    server writes its own. The found value is the server's, so it is cut short and quoted.
    """
    shown = repr(found[:200]) if isinstance(found, str) else "missing" if found is None else "not a string"
    return (
        f"{url}: metadata issuer {shown} is not the configured issuer {configured!r} "
        "(RFC 8414 §3.3: they must be identical; write the issuer as the server's metadata does)"
    )


def retry_delay_s(failures: int, base_s: float, cap_s: float, jitter: float) -> float:
    """Seconds before the next load after ``failures`` failed loads in a row (0 after a success).

    Exponential from ``base_s``, capped at ``cap_s``, with "equal jitter": half of the step is
    fixed and half is ``jitter`` (0..1) of it, so gateways that failed together do not retry in
    step, and none retries sooner than half a step.
    """
    if failures <= 0:
        return 0.0
    step = min(cap_s, base_s * 2.0 ** min(failures - 1, 32))
    return step / 2 + step / 2 * jitter


class IssuerKeys:
    """The cached key set of one issuer, with single-flight refresh and backoff after failures."""

    def __init__(
        self,
        issuer: IssuerConfig,
        session: aiohttp.ClientSession,
        clock: Callable[[], float] = time.monotonic,
        *,
        on_fetch: Callable[[str], None] | None = None,
        on_key_skipped: Callable[[str], None] | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.issuer = issuer
        self._session = session
        self._clock = clock
        # Told the result of every load: "ok", "failed" or "no_usable_keys" (metrics).
        self._on_fetch = on_fetch or noop
        # Told the reason of every key a load leaves out (metrics), once per load.
        self._on_key_skipped = on_key_skipped or noop
        self._allowed = frozenset(issuer.algorithms)
        self._keyset: KeySet | None = None
        self._loaded = asyncio.Event()  # set once, by the first key set that loads
        self._loaded_at = float("-inf")
        self._last_attempt = float("-inf")
        self._jitter = jitter
        self._failures = 0  # failed loads in a row
        self._retry_at = float("-inf")  # no load starts before this after a failure (backoff)
        self._retry_base_s = min(1.0, issuer.jwks_refresh_cooldown_s)
        # One flight, keyed None: the issuer has one key set. Every caller that needs a load while
        # one runs awaits that one; one caller's cancellation (client went away) never cancels it.
        self._loads: SingleFlight[None, None] = SingleFlight()
        self._jwks_uri: str | None = None  # discovered once, kept until a fetch fails

    @property
    def ready(self) -> bool:
        return self._keyset is not None

    async def wait_ready(self) -> None:
        """Until the first key set has loaded."""
        await self._loaded.wait()

    @property
    def keyset(self) -> KeySet | None:
        """The key set in use now; a new object after every (re)load."""
        return self._keyset

    async def candidates(self, kid: str | None, alg: str) -> list[VerificationKey]:
        """Keys for this token header; refetches once (per cooldown) for an unknown ``kid``."""
        keyset = self._keyset
        if keyset is None:
            # Keyless: join a running load, or start one unless still backing off from a failure
            # (then fail closed at once: the caller answers 503 with Retry-After).
            if self._loading or self._clock() >= self._retry_at:
                await self._refresh_once()
            keyset = self._keyset
            if keyset is None:
                raise KeysUnavailable(self.issuer.issuer)
        found = keyset.candidates(kid, alg)
        if found or kid is None or keyset.has_kid(kid):
            self._refresh_in_background_if_stale()
            return found
        # Unknown kid: the issuer may have rotated. Refetch at most once per cooldown, so a flood
        # of made-up kids costs the issuer one request per cooldown, not one per token.
        now = self._clock()
        if now - self._last_attempt >= self.issuer.jwks_refresh_cooldown_s and now >= self._retry_at:
            await self._refresh_once()
        return (self._keyset or keyset).candidates(kid, alg)

    def next_load_in_s(self) -> float:
        """Seconds until the background task should load: keys due for refresh, or backoff over."""
        due = max(self._retry_at, self._loaded_at + self.issuer.jwks_max_age_s)
        return max(0.0, due - self._clock())

    async def run(self) -> None:
        """Background task: load keys, retry with backoff until loaded, then keep them fresh.

        Sleeps until the next load is due and checks again, so a load a request started meanwhile
        moves the next one; ``_load`` never raises, so the task only ends when cancelled.
        """
        while True:
            wait_s = self.next_load_in_s()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
                continue
            await self._refresh_once()

    def refresh_in_background(self) -> None:
        """Start a load now (or join the running one), not awaited; the cached keys serve meanwhile
        and stay if it fails (a reload that keeps a JWKS file issuer re-reads the file)."""
        if self._clock() >= self._retry_at:
            self._loads.start(None, self._load)

    @property
    def _loading(self) -> bool:
        return len(self._loads) > 0

    def _refresh_in_background_if_stale(self) -> None:
        now = self._clock()
        if now - self._loaded_at >= self.issuer.jwks_max_age_s and now >= self._retry_at:
            self._loads.start(None, self._load)  # joins a load already running; not awaited

    async def _refresh_once(self) -> None:
        await self._loads.run(None, self._load)

    def _failed(self, result: str) -> None:
        self._failures += 1
        delay_s = retry_delay_s(
            self._failures,
            self._retry_base_s,
            max(self._retry_base_s, self.issuer.jwks_refresh_cooldown_s),
            self._jitter(),
        )
        self._retry_at = self._clock() + delay_s
        self._on_fetch(result)

    async def _load(self) -> None:
        self._last_attempt = self._clock()
        # A span of the request that needed the keys, if traced (the refresh task's loads: none).
        with span("fetch JWKS", {ISSUER: self.issuer.issuer}, kind="client") as traced:
            failures = self._failures
            try:
                await self._load_once()
            except Exception:
                # A surprise from a library must not end the refresh task (nor answer a request with
                # a traceback): it is one failed load, logged with its traceback, counted and backed
                # off; the cached keys stay, and a keyless issuer still fails closed with 503.
                log.exception(
                    "jwks_load_crashed", issuer=self.issuer.issuer, kept_cached_keys=self._keyset is not None
                )
                self._jwks_uri = None
                self._failed("failed")
            if self._failures > failures:
                traced.fail("jwks_load_failed")

    async def _load_once(self) -> None:
        try:
            document = await self._fetch_document()
            keyset, skipped = parse_jwks(document, self._allowed)
        except (FetchError, ValueError, OSError) as exc:
            log.warning(
                "jwks_fetch_failed",
                issuer=self.issuer.issuer,
                error=str(exc),
                kept_cached_keys=self._keyset is not None,
            )
            self._jwks_uri = None  # rediscover next time: the metadata may have moved the JWKS
            self._failed("failed")
            return
        for key in skipped:
            log.warning(
                "jwks_key_skipped",
                issuer=self.issuer.issuer,
                kid=key.kid,
                index=key.index,
                reason=key.reason,
                detail=key.detail,
            )
            self._on_key_skipped(key.reason)
        if not keyset.keys:
            log.warning(
                "jwks_has_no_usable_keys",
                issuer=self.issuer.issuer,
                kept_cached_keys=self._keyset is not None,
            )
            self._failed("no_usable_keys")
            return
        self._failures, self._retry_at = 0, float("-inf")
        self._keyset = keyset
        self._loaded.set()
        self._loaded_at = self._clock()
        log.info("jwks_loaded", issuer=self.issuer.issuer, keys=len(keyset.keys))
        self._on_fetch("ok")

    async def _fetch_document(self) -> dict[str, Any]:
        source = self.issuer.jwks
        timeout = self.issuer.http_timeout_s
        if isinstance(source, JwksFile):
            return await asyncio.to_thread(_read_jwks_file, source.path)
        if isinstance(source, JwksUrl):
            return await get_json_object(self._session, source.url, timeout_s=timeout)
        if self._jwks_uri is None:
            self._jwks_uri = await self._discover_jwks_uri()
        return await get_json_object(self._session, self._jwks_uri, timeout_s=timeout)

    async def _discover_jwks_uri(self) -> str:
        problems: list[str] = []
        for url in authorization_server_metadata_urls(self.issuer.issuer):
            try:
                metadata = await get_json_object(self._session, url, timeout_s=self.issuer.http_timeout_s)
            except FetchError as exc:
                problems.append(str(exc))
                continue
            # RFC 8414 §3.3 / OIDC Discovery §4.3: the document's issuer must be identical to the
            # one we asked about, or the document is not to be used.
            found = metadata.get("issuer")
            if found != self.issuer.issuer:
                problems.append(metadata_issuer_mismatch(url, found, self.issuer.issuer))
                continue
            jwks_uri = metadata.get("jwks_uri")
            if not isinstance(jwks_uri, str) or urlsplit(jwks_uri).scheme not in ("http", "https"):
                problems.append(f"{url}: no usable jwks_uri")
                continue
            return jwks_uri
        raise FetchError("metadata discovery failed: " + "; ".join(problems))

    async def aclose(self) -> None:
        await self._loads.aclose()


def _read_jwks_file(path: Path) -> dict[str, Any]:
    try:
        document = loads_strict(path.read_bytes())
    except StrictJSONError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError(f"{path}: not a JSON object")
    return document
