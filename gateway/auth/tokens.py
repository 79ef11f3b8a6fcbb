"""Bearer-token extraction and JWT access-token validation.

The checks follow RFC 9068 §4 and RFC 8725: the algorithm comes from the issuer's configured
allowlist (never from the token alone), keys only from that issuer's JWKS, ``iss`` exact, ``aud``
containing the route's resource (RFC 8707; MCP 2025-06-18 "Token Audience Binding"), ``exp``,
``nbf`` and ``iat`` with leeway. Every check fails with its own reason, which becomes the log
field and the metrics label; the client only ever sees ``invalid_token``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeAlias
from urllib.parse import urlsplit

import cachetools
from jwt.algorithms import get_default_algorithms

from ..config import IssuerConfig
from ..errors import AuthUnavailable, InvalidAuthRequest, InvalidToken, MissingToken
from ..principal import Identity, Principal
from ..secret import PresentedToken
from ..strictjson import StrictJSONError, loads_strict
from .jwks import IssuerKeys, KeySet, KeysUnavailable

# RFC 6750 §2.1 b64token: what may follow "Bearer " in a header. Anything else a client sends is
# not a bearer token; anything else an AS issues (token exchange) is refused, so that it can
# never inject header syntax (CR, LF, commas) upstream.
B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# One JWS segment: the base64url alphabet only, unpadded (RFC 7515 §2, RFC 4648 §5). Python's
# decoder (and PyJWT's base64url_decode) also takes `+`, `/`, whitespace and stray characters, and
# ignores non-zero unused bits; each of those would give one token many spellings, each its own
# SHA-256 (the verified-token cache key, and what a deny list or a log search would match).
_B64URL_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), tokens separated by one SP.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_MAX_TOKEN_BYTES = 16 * 1024
_MAX_KID_CHARS = 256
_ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
# JWS header parameters that would make us fetch or trust key material named by the token
# itself (RFC 8725 §3.10), or whose semantics we do not implement (RFC 7515 §4.1.11 `crit`).
_REFUSED_HEADER_PARAMS = ("jku", "x5u", "jwk", "x5c", "crit", "b64")
_SIGNERS = get_default_algorithms()
# Signature-verified tokens kept (by SHA-256, never the token) so that a client reusing its token
# costs one hash, not one signature check, per request. Bounded; see JwtAuthenticator.
VERIFIED_CACHE_SIZE = 10_000
AuthScheme: TypeAlias = Literal["bearer", "dpop"]


# --- Extraction -------------------------------------------------------------------------------


def bearer_token_from(authorization: Sequence[str], query_has_token: bool) -> PresentedToken:
    """The token from ``Authorization: Bearer`` (MCP, OAuth 2.1 §5.1.1): ``presented_token_from``, no DPoP."""
    return presented_token_from(authorization, query_has_token, dpop=False)[1]


def presented_token_from(
    authorization: Sequence[str], query_has_token: bool, *, dpop: bool
) -> tuple[AuthScheme, PresentedToken]:
    """The scheme and token from ``Authorization: Bearer``, or ``DPoP`` too if ``dpop`` (RFC 9449 §7.1).

    A token in the query string is refused and never read further: 400 if a header token is
    also present (RFC 6750 §2: one method only), else 401 as if no token were sent. The token
    leaves as a ``PresentedToken``: it cannot print, and its SHA-256 is computed here, once.
    """
    if len(authorization) > 1:
        raise InvalidAuthRequest("duplicate_authorization_header")
    if query_has_token:
        if authorization:
            raise InvalidAuthRequest("token_in_query_and_header")
        raise MissingToken("token_in_query")
    if not authorization:
        raise MissingToken()
    scheme, _, credentials = authorization[0].strip().partition(" ")
    scheme = scheme.lower()  # RFC 9110 §11.1: scheme names are case-insensitive
    if scheme != "bearer" and (scheme != "dpop" or not dpop):
        raise MissingToken("unsupported_auth_scheme")
    token = credentials.strip()
    if not token:
        raise InvalidAuthRequest("empty_bearer_token")
    if len(token) > _MAX_TOKEN_BYTES or not B64TOKEN.fullmatch(token):
        raise InvalidToken("malformed")  # RFC 9449 §7.1: a DPoP token is a b64token too
    return ("dpop" if scheme == "dpop" else "bearer"), PresentedToken(token)


# --- Pure checks ------------------------------------------------------------------------------


def split_jws(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Decode a compact JWS strictly: header, claims, signing input, signature."""
    header_b64, payload_b64, signature_b64 = jws_segments(token)
    return (
        decode_jws_object(header_b64),
        decode_jws_object(payload_b64),
        f"{header_b64}.{payload_b64}".encode("ascii"),
        decode_jws_signature(signature_b64),
    )


def jws_segments(token: str) -> tuple[str, str, str]:
    """The three base64url segments of a compact JWS, not yet decoded."""
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("malformed", "not a three-part compact JWS")
    return parts[0], parts[1], parts[2]


def decode_jws_object(segment: str) -> dict[str, Any]:
    """A header or claims segment: canonical base64url of a strict JSON object."""
    try:
        value = loads_strict(_b64url_decode(segment))
    except (ValueError, StrictJSONError) as exc:
        raise InvalidToken("malformed", str(exc)) from None
    if not isinstance(value, dict):
        raise InvalidToken("malformed", "header or claims is not a JSON object")
    return value


def decode_jws_signature(segment: str) -> bytes:
    try:
        return _b64url_decode(segment)
    except ValueError as exc:
        raise InvalidToken("malformed", str(exc)) from None


def _b64url_decode(segment: str) -> bytes:
    """The bytes of a canonical unpadded base64url segment; any other spelling is refused."""
    if "=" in segment:  # JWS uses unpadded base64url (RFC 7515 §2)
        raise ValueError("padded base64url")
    if not _B64URL_SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("bad base64url")
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    # RFC 4648 §3.5: the last character's unused bits must be zero. Re-encoding is the exact test.
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != segment.encode("ascii"):
        raise ValueError("non-canonical base64url")
    return raw


def jws_issuer_hint(token: str) -> str | None:
    """The ``iss`` a token would name if read as a JWS leniently (any base64, plain JSON); else None.

    Used only to pick the path a token takes, never to accept it: a token that names one of our
    JWKS issuers this way is checked (strictly) as a JWT, even if strict decoding fails, so a
    respelling of a JWS can never take the introspection path instead.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else None


def check_header(header: Mapping[str, Any], issuer: IssuerConfig) -> tuple[str, str | None]:
    """The algorithm and ``kid`` to verify with, or a named rejection."""
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in issuer.algorithms:
        # Covers `none`, HS256 key confusion and any algorithm this issuer was not pinned to.
        raise InvalidToken("alg_not_allowed", f"alg={str(alg)[:20]!r}")
    for name in _REFUSED_HEADER_PARAMS:
        if name in header:
            raise InvalidToken("refused_header_param", name)
    if issuer.require_at_jwt_typ:
        typ = header.get("typ")
        # RFC 9068 §4 / RFC 8725 §3.11: explicit typing keeps ID tokens out.
        if not isinstance(typ, str) or typ.lower() not in _ACCESS_TOKEN_TYPES:
            # Many authorization servers issue plain `JWT`-typed access tokens: say what to write.
            raise InvalidToken(
                "bad_typ",
                f"typ={str(typ)[:20]!r}, not at+jwt (RFC 9068); if this issuer's access tokens are "
                "not typed that way, set require_at_jwt_typ: false on the issuer",
            )
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > _MAX_KID_CHARS):
        raise InvalidToken("malformed", "bad kid")
    return alg, kid


# How much of a token's `iss` a log line quotes: enough to spot a typo, bounded for an attacker.
_MAX_SHOWN_ISSUER_CHARS = 200


def issuer_mismatch(found: object, configured: Sequence[str]) -> str:
    """A log detail for a token refused for its ``iss``: the claim as found and what is configured.

    ``iss`` is not a secret (the token is, and is never quoted); it comes from an unverified token,
    so it is cut short and ``repr``-quoted: a control character cannot forge a log line. The usual
    cause is a one-character difference (a trailing ``/``, ``http`` vs ``https``), which a reader
    sees only with both strings side by side.
    """
    names = ", ".join(repr(name) for name in configured) or "none"
    if isinstance(found, str):
        cut = "…" if len(found) > _MAX_SHOWN_ISSUER_CHARS else ""
        problem = f"token iss {found[:_MAX_SHOWN_ISSUER_CHARS]!r}{cut} matches no configured issuer"
    elif found is None:
        problem = "the token has no iss claim"
    else:
        problem = f"token iss is a JSON {type(found).__name__}, not a string"
    return f"{problem} (configured: {names}; compared exactly, byte for byte)"


def audience_matches(audience: str, resource: str) -> bool:
    """RFC 9728 §6 code-point equality, except scheme and host, which compare case-insensitively.

    MCP "Canonical Server URI": implementations SHOULD accept an uppercase scheme and host.
    """
    if audience == resource:
        return True
    a, r = urlsplit(audience), urlsplit(resource)
    return (
        a.scheme.lower() == r.scheme.lower()
        and a.netloc.lower() == r.netloc.lower()
        and (a.path, a.query, a.fragment) == (r.path, r.query, r.fragment)
    )


def split_scope(scope: str) -> frozenset[str]:
    """A ``scope`` string read the one way RFC 6749 §3.3 allows: scope-tokens separated by single SPs.

    ``str.split()`` would also split on tab, LF, CR, NBSP, U+2028… and skip empty tokens, so
    ``"a\tb"`` would grant ``a`` and ``b`` here while another reader sees one scope. Anything but
    the grammar is refused, including an empty token (leading, trailing or double SP). The empty
    string is no scopes (it grants nothing, and some servers send it for a token without scopes).
    """
    if not scope:
        return frozenset()
    tokens = scope.split(" ")
    if not all(_SCOPE_TOKEN.fullmatch(token) for token in tokens):
        raise InvalidToken("bad_claim", "scope is not space-separated scope-tokens")
    return frozenset(tokens)


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """Scopes from ``scope`` (space-delimited string, RFC 9068 §2.2.3) or ``scp`` (list of strings)."""
    scope = claims.get("scope")
    if scope is not None:
        if not isinstance(scope, str):
            raise InvalidToken("bad_claim", "scope is not a string")
        return split_scope(scope)
    scp = claims.get("scp")
    if scp is None:
        return frozenset()
    if isinstance(scp, str):
        return split_scope(scp)
    if isinstance(scp, list) and all(isinstance(item, str) and _SCOPE_TOKEN.fullmatch(item) for item in scp):
        return frozenset(scp)
    raise InvalidToken("bad_claim", "scp is not a list of scope-tokens")


def finite_number(value: object) -> float | None:
    """``value`` as a float if it is a JSON number that is finite as a double; else None (bools too)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond any double
        return None
    return number if math.isfinite(number) else None


def _numeric_date(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise InvalidToken("missing_claim", name)
        return None
    number = finite_number(value)
    if number is None:  # RFC 7519 §2 NumericDate: a number; ±infinity would never expire
        raise InvalidToken("bad_claim", f"{name} is not a finite number")
    return number


def check_claims(claims: Mapping[str, Any], *, issuer: IssuerConfig, resource: str, now: float) -> Identity:
    """Every claim check on already signature-verified claims; pure, the clock is a parameter.

    Says who called; the shell, which holds the token, attaches it (``Identity.presented_with``).
    The checks are the time window's (``check_time_window``, which alone depends on ``now``)
    and the rest (``claims_identity``), in that order.
    """
    check_time_window(claims, issuer=issuer, now=now)
    return claims_identity(claims, issuer=issuer, resource=resource)


def check_time_window(claims: Mapping[str, Any], *, issuer: IssuerConfig, now: float) -> None:
    """The issuer, then ``exp``, ``nbf`` and ``iat`` against ``now`` with the issuer's leeway."""
    found = claims.get("iss")
    if found != issuer.issuer:  # exact, byte for byte (RFC 9068 §4)
        raise InvalidToken("bad_issuer", issuer_mismatch(found, (issuer.issuer,)))
    leeway = issuer.leeway_s
    expires_at = _numeric_date(claims, "exp", required=True) or 0.0  # required: never None
    if expires_at <= now - leeway:
        raise InvalidToken("expired")
    not_before = _numeric_date(claims, "nbf", required=False)
    if not_before is not None and not_before > now + leeway:
        raise InvalidToken("not_yet_valid")
    issued_at = _numeric_date(claims, "iat", required=False)
    if issued_at is not None and issued_at > now + leeway:
        raise InvalidToken("issued_in_future")


def claims_identity(claims: Mapping[str, Any], *, issuer: IssuerConfig, resource: str) -> Identity:
    """The checks that do not depend on the time (audience for ``resource``, subject, client id,
    scopes), and the identity they give; ``check_time_window`` is to have passed."""
    expires_at = _numeric_date(claims, "exp", required=True) or 0.0
    aud = claims.get("aud")
    audiences = (aud,) if isinstance(aud, str) else tuple(aud) if isinstance(aud, list) else None
    if not audiences or not all(isinstance(item, str) for item in audiences):
        raise InvalidToken("missing_audience")  # RFC 8725 §3.9: no aud, no acceptance
    if not any(audience_matches(item, resource) for item in audiences):
        raise InvalidToken("bad_audience")

    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise InvalidToken("missing_claim", "sub")
    client_id = claims.get("client_id", claims.get("azp"))
    if client_id is not None and not isinstance(client_id, str):
        raise InvalidToken("bad_claim", "client_id is not a string")
    token_id = claims.get("jti")
    return Identity(
        issuer=issuer.issuer,
        subject=subject,
        client_id=client_id,
        scopes=scopes_of(claims),
        audience=audiences,
        expires_at=expires_at,
        token_id=token_id if isinstance(token_id, str) else None,
        # A cached token's claims are already such a view: kept, so that every request presenting
        # the token shares one claims object (what per-token caches, e.g. conditions', key on).
        claims=claims if type(claims) is MappingProxyType else MappingProxyType(dict(claims)),
    )


# --- The async shell --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecodedJws:
    """A presented token split as a compact JWS whose unverified ``iss`` is one of our issuers.

    Decoded once; nothing in it is trusted until ``JwtAuthenticator.verify`` has checked it.
    """

    token: PresentedToken
    issuer_keys: IssuerKeys
    header: Mapping[str, Any] = field(repr=False)
    claims: Mapping[str, Any] = field(repr=False)
    signing_input: bytes = field(repr=False)  # with the signature, the whole token
    signature: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class _Verified:
    """A token whose signature checked out: its claims, and against which key set."""

    issuer_keys: IssuerKeys
    keyset: KeySet
    claims: Mapping[str, Any]
    usable_until: float  # exp + leeway: past this the cache drops it; check_time_window refuses it
    # ``claims_identity`` for each route's resource the token was presented to, with the issuer
    # config it was checked under: a pure function of those and the claims, so only the time
    # window is checked again on later requests. Bounded (a token has few routes). The claims
    # view is read-only at its top level only; nothing changes their nested values (minting
    # deep-copies them), and a change there would not be seen again.
    identities: dict[str, tuple[IssuerConfig, Identity]] = field(default_factory=dict)


_IDENTITIES_PER_TOKEN = 16


def _verified_until(_key: str, verified: _Verified, _now: float) -> float:
    return verified.usable_until


class JwtAuthenticator:
    """Validates JWT access tokens against the configured issuers.

    A verified token's claims are cached by the token's SHA-256 until its ``exp`` (plus leeway),
    LRU beyond ``cache_size``. A cached entry skips decoding and the signature check: the issuer
    and the time window are checked on every request, and the audience for *this* route and the
    other claims once per route (``claims_identity`` is pure: the entry keeps its result).
    An entry is used only while its issuer still serves the very key set that verified it, so a
    key removed from the JWKS stops its tokens at the next refetch (``jwks_max_age_s``, or
    earlier on an unknown ``kid``), exactly as without the cache.
    """

    def __init__(
        self,
        issuers: Mapping[str, IssuerKeys],
        clock: Callable[[], float] = time.time,
        cache_size: int = VERIFIED_CACHE_SIZE,
    ) -> None:
        self._issuers = issuers
        self._clock = clock
        self._verified: cachetools.TLRUCache[str, _Verified, float] = cachetools.TLRUCache(
            cache_size, _verified_until, timer=clock
        )

    async def authenticate(self, token: PresentedToken, resource: str) -> Principal:
        """The caller behind ``token`` for the route whose resource is ``resource``, or an error."""
        cached = self.cached(token, resource)
        if cached is not None:
            return cached
        return await self.verify(self.decode(token), resource)

    def known(self, token: PresentedToken) -> bool:
        """Whether ``token`` was verified before and is still cached (its checks still run on use)."""
        return token.sha256 in self._verified

    def cached(self, token: PresentedToken, resource: str) -> Principal | None:
        """The caller, if ``token`` was verified before against keys its issuer still serves."""
        verified = self._verified.get(token.sha256)
        if verified is None or verified.issuer_keys.keyset is not verified.keyset:
            return None
        issuer = verified.issuer_keys.issuer
        check_time_window(verified.claims, issuer=issuer, now=self._clock())
        known = verified.identities.get(resource)
        if known is not None and known[0] is issuer:
            return known[1].presented_with(token)
        identity = claims_identity(verified.claims, issuer=issuer, resource=resource)
        if resource in verified.identities or len(verified.identities) < _IDENTITIES_PER_TOKEN:
            verified.identities[resource] = (issuer, identity)  # a stale one is replaced
        return identity.presented_with(token)

    def decode(self, token: PresentedToken) -> DecodedJws:
        """``token`` as a JWS of one of our issuers; else ``malformed`` or ``unknown_issuer``."""
        header, claims, signing_input, signature = split_jws(token.reveal())
        # The unverified `iss` only picks which configured issuer's keys to try; the key that
        # verifies must then belong to that issuer (RFC 8725 §3.8).
        issuer_id = claims.get("iss")
        issuer_keys = self._issuers.get(issuer_id) if isinstance(issuer_id, str) else None
        if issuer_keys is None:
            raise InvalidToken("unknown_issuer", issuer_mismatch(issuer_id, tuple(self._issuers)))
        return DecodedJws(token, issuer_keys, header, claims, signing_input, signature)

    def known_jws(self, token: PresentedToken) -> DecodedJws | None:
        """``token`` decoded, if it is a JWS whose (unverified) ``iss`` is one of our issuers.

        None for anything else (an opaque token, another issuer's JWT). A token that names one
        of our issuers but fails strict decoding is refused here, not handed to introspection.
        """
        try:
            return self.decode(token)
        except InvalidToken:
            if jws_issuer_hint(token.reveal()) in self._issuers:
                raise
            return None

    async def verify(self, jws: DecodedJws, resource: str) -> Principal:
        """The caller, once the header, the signature (issuer's keys) and every claim check out."""
        issuer_keys = jws.issuer_keys
        issuer = issuer_keys.issuer
        alg, kid = check_header(jws.header, issuer)
        try:
            candidates = await issuer_keys.candidates(kid, alg)
        except KeysUnavailable:
            raise AuthUnavailable("keys_unavailable", issuer.issuer) from None
        if not candidates:
            raise InvalidToken("unknown_kid")
        keyset = issuer_keys.keyset  # read before verifying: a reload meanwhile only costs a miss
        signer = _SIGNERS[alg]
        if not any(signer.verify(jws.signing_input, key.key, jws.signature) for key in candidates):
            raise InvalidToken("bad_signature")
        identity = check_claims(jws.claims, issuer=issuer, resource=resource, now=self._clock())
        if keyset is not None:
            # Only tokens that passed every check are kept: a refused token is checked afresh.
            self._verified[jws.token.sha256] = _Verified(
                issuer_keys,
                keyset,
                identity.claims,
                identity.expires_at + issuer.leeway_s,
                {resource: (issuer, identity)},
            )
        return identity.presented_with(jws.token)
