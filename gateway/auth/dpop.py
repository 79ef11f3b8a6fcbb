"""DPoP (RFC 9449) at the resource server: is this request's proof valid for its token?

``check_proof`` is every §4.3 check, one small step each, pure (the clock is a parameter):
one ``DPoP`` header; a compact JWS typed ``dpop+jwt``; an ``alg`` from the token issuer's pinned
(asymmetric) list; a public ``jwk`` in the header that verifies the signature; ``htm`` and
``htu`` naming this request (the route's public URL, never the ``Host`` header); ``iat`` within
the issuer's ``dpop_iat_window_s``; ``ath`` the hash of this token; and the key's RFC 7638
thumbprint the token's ``cnf.jkt`` (§6). ``DpopVerifier`` adds the one piece of state: the
``jti`` values seen (§11.1), per route, each until its proof's ``iat`` window ends, and, on a
``dpop_nonce`` route, the server nonce (§8, §9) ``DpopNonces`` issues: a sealed timestamp, no state.

Every refusal is an ``InvalidDpopProof`` with its own reason (log and metrics); the client sees
``invalid_dpop_proof`` only.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import cachetools
from jwt.algorithms import get_default_algorithms
from jwt.exceptions import InvalidKeyError

from ..errors import DpopNonceRequired, InvalidDpopProof, InvalidToken
from ..sealing import StateSealer
from ..secret import PresentedToken
from .jwks import MIN_RSA_BITS
from .tokens import decode_jws_object, decode_jws_signature, finite_number, jws_segments

DPOP_TYP: Final = "dpop+jwt"
# RFC 9449 §4.3 item 5: the key in the proof "MUST NOT contain a private key". Every private
# member of RFC 7518 §6.2.2 (EC), §6.3.2 (RSA), RFC 8037 §2 (OKP) and the symmetric `k` (§6.4.1).
PRIVATE_JWK_MEMBERS: Final = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
# The key type (and curve) each asymmetric alg needs (RFC 7518 §3.1, RFC 8037 §3.1). A key of
# another kind is refused before PyJWT is asked to load it.
_KEY_KINDS: Final[Mapping[str, tuple[str, frozenset[str] | None]]] = {
    **{alg: ("RSA", None) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
# RFC 7638 §3.2: the required members of each key type, the only ones hashed.
_THUMBPRINT_MEMBERS: Final = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}
_SIGNERS = get_default_algorithms()
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
MAX_PROOF_BYTES: Final = 8 * 1024  # a proof with an RSA-4096 key is about 1.5 KiB
MAX_JTI_CHARS: Final = 256
# jti values remembered per route. Full (after dropping the expired), a new proof is refused
# (`dpop_replay_cache_full`) rather than an unexpired jti forgotten: forgetting would let a
# captured proof be replayed, refusing only delays valid clients until entries expire.
REPLAY_CACHE_SIZE: Final = 100_000


@dataclass(frozen=True, slots=True)
class ProofContext:
    """What a proof must match: this request, this token, the token issuer's DPoP settings."""

    method: str
    htu: str  # the route's public URL, normalised (route_htu)
    token: PresentedToken
    jkt: str  # the token's cnf.jkt
    algorithms: tuple[str, ...]  # the token issuer's pinned algorithms
    iat_window_s: float


@dataclass(frozen=True, slots=True)
class CheckedProof:
    """A proof that passed every check: what the replay cache remembers, and until when."""

    jti: str
    usable_until: float  # iat + window: past this the proof is refused anyway
    nonce: object = None  # the proof's `nonce` claim as sent (§4.2), checked on dpop_nonce routes


# --- pure checks ------------------------------------------------------------------------------


def normalised_http_uri(uri: str) -> str | None:
    """``uri`` per RFC 9449 §4.3 item 9 (RFC 3986 §6.2.2-6.2.3): scheme and host lower-case,
    the default port dropped, an empty path as ``/``. None for anything that is no plain
    absolute http(s) URI or that carries a query, fragment or userinfo (§4.2: htu has none)."""
    if "?" in uri or "#" in uri or any(char.isspace() for char in uri):
        return None
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or "@" in parts.netloc:
        return None
    host = f"[{host}]" if ":" in host else host  # urlsplit drops an IPv6 literal's brackets
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path or '/'}"


@functools.lru_cache(maxsize=256)  # per route: asked on every DPoP request, the answer never changes
def route_htu(public_url: str, route_path: str) -> str:
    """The ``htu`` a proof for a route must carry: ``public_url`` (with its base path) + the path.

    From the config only: the request's ``Host`` header is the client's to choose (§4.3 item 9).
    """
    normalised = normalised_http_uri(public_url.rstrip("/") + route_path)
    if normalised is None:  # the config refuses such a public_url; this is a programming error
        raise ValueError("public_url does not make an htu")
    return normalised


def access_token_hash(token: str) -> str:
    """``ath``: base64url (unpadded) of the SHA-256 of the access token's ASCII (§4.2)."""
    digest = hashlib.sha256(token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url: the required members, sorted, no whitespace."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None or not all(isinstance(jwk.get(name), str) for name in members):
        raise InvalidDpopProof("dpop_proof_malformed", "jwk lacks its RFC 7638 members")
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def bound_key(claims: Mapping[str, Any]) -> str | None:
    """The token's DPoP binding, ``cnf.jkt`` (§6.1, §6.2), or None for an unbound token.

    A ``cnf`` without a string ``jkt`` (an mTLS ``x5t#S256`` binding, RFC 8705) is a binding
    this gateway cannot check: the token is refused, never taken as a bearer token.
    """
    cnf = claims.get("cnf")
    if cnf is None:
        return None
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    if not isinstance(jkt, str) or not jkt:
        raise InvalidToken("sender_constrained", "cnf without jkt: an mTLS or other binding")
    return jkt


def one_proof(proofs: Sequence[str]) -> str:
    """The single ``DPoP`` header value (§4.3 items 1-2: exactly one, and one JWT)."""
    if not proofs:
        raise InvalidDpopProof("dpop_proof_missing")
    if len(proofs) > 1:
        raise InvalidDpopProof("dpop_proof_duplicate", f"{len(proofs)} headers named DPoP")
    proof = proofs[0].strip()
    if len(proof) > MAX_PROOF_BYTES or "," in proof:  # a comma: two values folded into one line
        raise InvalidDpopProof("dpop_proof_malformed", "not one compact JWS")
    return proof


# What a proof header comes to (its alg, the public key it carries, that key's thumbprint), by
# the header's base64url segment and the issuer's algorithms: a client signs every proof with the
# same key, so its proofs share one header, and decoding it, checking it, hashing the key and
# building an EC or RSA key object (with its point or modulus checks) cost a quarter of a proof's
# check beside the signature. The segment is the header's exact bytes, so an equal segment passes
# the same checks. Bounded; only headers that passed are kept (a refusal raises, uncached).
_CHECKED_HEADERS: cachetools.LRUCache[tuple[str, tuple[str, ...]], tuple[str, Any, str]] = (
    cachetools.LRUCache(maxsize=10_000)
)


def check_proof_header(header: Mapping[str, Any], algorithms: Sequence[str]) -> tuple[str, Any, str]:
    """The proof's alg, the public key in its header and that key's RFC 7638 thumbprint, or a
    named refusal (§4.3 items 4-6)."""
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() != DPOP_TYP:  # RFC 7515 §4.1.9: case-insensitive
        raise InvalidDpopProof("dpop_bad_typ", f"typ={str(typ)[:20]!r}")
    alg = header.get("alg")
    # Only the issuer's pinned algorithms, all asymmetric (the config refuses none and HS*);
    # _KEY_KINDS lists asymmetric algs only, a second guard against a MAC keyed with the jwk.
    if not isinstance(alg, str) or alg not in algorithms or alg not in _KEY_KINDS:
        raise InvalidDpopProof("dpop_alg_not_allowed", f"alg={str(alg)[:20]!r}")
    if "crit" in header:  # RFC 7515 §4.1.11: no extension is understood here
        raise InvalidDpopProof("dpop_proof_malformed", "crit")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise InvalidDpopProof("dpop_proof_malformed", "no jwk header")
    if private := [name for name in PRIVATE_JWK_MEMBERS if name in jwk]:
        raise InvalidDpopProof("dpop_private_key", f"jwk has {', '.join(private)}")
    kty, curves = _KEY_KINDS[alg]
    if jwk.get("kty") != kty or (curves is not None and jwk.get("crv") not in curves):
        raise InvalidDpopProof("dpop_proof_malformed", f"jwk kty/crv does not fit {alg}")
    thumbprint = jwk_thumbprint(jwk)
    try:
        key = _SIGNERS[alg].from_jwk(jwk)
    except (InvalidKeyError, ValueError, TypeError, KeyError) as exc:
        raise InvalidDpopProof("dpop_proof_malformed", f"jwk: {type(exc).__name__}") from None
    if kty == "RSA" and key.key_size < MIN_RSA_BITS:  # as for JWKS keys (gateway.auth.jwks)
        raise InvalidDpopProof("dpop_proof_malformed", f"RSA key of {key.key_size} bits")
    return alg, key, thumbprint


def _checked_header(segment: str, algorithms: tuple[str, ...]) -> tuple[str, Any, str]:
    """``check_proof_header`` of the header ``segment``, remembered (``_CHECKED_HEADERS``)."""
    if (known := _CHECKED_HEADERS.get((segment, algorithms))) is not None:
        return known
    try:
        header = decode_jws_object(segment)
    except InvalidToken as exc:
        raise InvalidDpopProof("dpop_proof_malformed", exc.detail) from None
    checked = check_proof_header(header, algorithms)
    _CHECKED_HEADERS[segment, algorithms] = checked
    return checked


def check_proof_claims(claims: Mapping[str, Any], context: ProofContext, now: float) -> CheckedProof:
    """``jti``, ``htm``, ``htu``, ``iat`` and ``ath`` of a signature-verified proof (§4.3 items 7-12)."""
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
        raise InvalidDpopProof("dpop_proof_malformed", "jti")
    if claims.get("htm") != context.method:  # RFC 9110 §9.1: methods are case-sensitive
        raise InvalidDpopProof("dpop_htm_mismatch", f"htm={str(claims.get('htm'))[:10]!r}")
    htu = claims.get("htu")
    # A client sends the route's URL as the gateway spells it, mostly: equal is normalised already.
    if not isinstance(htu, str) or (htu != context.htu and normalised_http_uri(htu) != context.htu):
        raise InvalidDpopProof("dpop_htu_mismatch", f"htu={str(htu)[:200]!r}, expected {context.htu!r}")
    iat = finite_number(claims.get("iat"))
    if iat is None:
        raise InvalidDpopProof("dpop_proof_malformed", "iat is not a number")
    if abs(now - iat) > context.iat_window_s:  # §11.1: an old (or future) proof is refused
        raise InvalidDpopProof("dpop_iat_out_of_window", f"iat is {now - iat:.0f}s from now")
    ath = claims.get("ath")
    expected = access_token_hash(context.token.reveal())
    if not isinstance(ath, str) or not hmac.compare_digest(ath.encode("ascii", "replace"), expected.encode()):
        raise InvalidDpopProof("dpop_ath_mismatch")  # §4.3 item 11: the proof is for this token
    return CheckedProof(jti, iat + context.iat_window_s, claims.get("nonce"))


def check_proof(proofs: Sequence[str], context: ProofContext, now: float) -> CheckedProof:
    """Every RFC 9449 §4.3 check of a request's ``DPoP`` headers but the replay one; pure."""
    proof = one_proof(proofs)
    try:
        header_b64, claims_b64, signature_b64 = jws_segments(proof)
        signature = decode_jws_signature(signature_b64)
    except InvalidToken as exc:
        raise InvalidDpopProof("dpop_proof_malformed", exc.detail) from None
    alg, key, thumbprint = _checked_header(header_b64, context.algorithms)
    try:
        claims = decode_jws_object(claims_b64)
    except InvalidToken as exc:
        raise InvalidDpopProof("dpop_proof_malformed", exc.detail) from None
    signing_input = f"{header_b64}.{claims_b64}".encode("ascii")
    if not _SIGNERS[alg].verify(signing_input, key, signature):
        raise InvalidDpopProof("dpop_bad_signature")
    checked = check_proof_claims(claims, context, now)
    # §6.1 / §7.1: the key that signed the proof is the one the token was bound to.
    if not hmac.compare_digest(thumbprint.encode("ascii"), context.jkt.encode("ascii", "replace")):
        raise InvalidDpopProof("dpop_jkt_mismatch")
    return checked


# --- the server nonce -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DpopNonces:
    """RFC 9449 §8 server nonces with no shared store: a nonce is the time it was issued, sealed
    (AES-SIV, ``gateway.sealing``) to its route with the gateway's state key.

    So any worker or replica holding the same ``state_keys`` (or, without them, the workers of
    one ``serve --workers N``) accepts the nonce another issued, and nothing is remembered. A
    nonce is good for ``max_age_s`` from its issue (the issuer's ``iat`` window): it only proves
    the proof was made after the client last heard from this gateway (§8, §11.1). It does not
    make a proof single-use; the ``jti`` cache still does that.
    """

    sealer: StateSealer

    def issue(self, route: str, now: float) -> str:
        """A fresh nonce for ``route``; its characters (key id, ``.``, base64url) are NQCHARs (§8.1)."""
        return self.sealer.seal("dpop-nonce", f"{now:.3f}", (route,))

    def check(self, nonce: object, route: str, now: float, max_age_s: float) -> None:
        """Accept a nonce this gateway (or one with its key) issued for ``route`` within ``max_age_s``;
        else ``DpopNonceRequired`` carrying a fresh one for the retry (§9)."""
        if nonce is None:
            raise DpopNonceRequired("dpop_nonce_missing", self.issue(route, now))
        opened = self.sealer.open("dpop-nonce", nonce, (route,)) if isinstance(nonce, str) else None
        issued = _seconds(opened)
        if issued is None:  # forged, altered, another route's, or sealed with another key
            raise DpopNonceRequired("dpop_nonce_invalid", self.issue(route, now))
        if abs(now - issued) > max_age_s:  # a future one only from a replica whose clock is ahead
            raise DpopNonceRequired("dpop_nonce_expired", self.issue(route, now), f"{now - issued:.0f}s old")


def _seconds(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# --- the replay cache -------------------------------------------------------------------------


def _remembered_until(_jti: str, usable_until: float, _now: float) -> float:
    return usable_until


class DpopVerifier:
    """Checks proofs and remembers their ``jti`` per route, each while its proof could be used.

    In memory, per process and per gateway generation: a fleet, or a reload, does not share it
    (README "DPoP"). Bounded per route by ``cache_size``; full, it refuses new proofs.
    """

    def __init__(self, clock: Callable[[], float] = time.time, cache_size: int = REPLAY_CACHE_SIZE) -> None:
        self._clock = clock
        self._cache_size = cache_size
        self._seen: dict[str, cachetools.TLRUCache[str, float, float]] = {}

    def now(self) -> float:
        """The verifier's clock, for the nonces issued beside its checks."""
        return self._clock()

    def verify(
        self, route: str, proofs: Sequence[str], context: ProofContext, nonces: DpopNonces | None = None
    ) -> None:
        """Accept the request's proof for ``route``, once; else ``InvalidDpopProof``. With
        ``nonces`` (a ``dpop_nonce`` route) the proof must carry a nonce they accept (§9)."""
        now = self._clock()
        checked = check_proof(proofs, context, now)
        if nonces is not None:  # before the jti is remembered: the client retries with a new proof
            nonces.check(checked.nonce, route, now, context.iat_window_s)
        seen = self._seen.get(route)
        if seen is None:
            seen = cachetools.TLRUCache(self._cache_size, _remembered_until, timer=self._clock)
            self._seen[route] = seen
        if checked.jti in seen:  # §11.1: a proof is used once
            raise InvalidDpopProof("dpop_replayed")
        seen.expire()
        if len(seen) >= self._cache_size:
            raise InvalidDpopProof("dpop_replay_cache_full", f"{len(seen)} jti on {route}")
        seen[checked.jti] = checked.usable_until
