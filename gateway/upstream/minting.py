"""The gateway as an issuer of short-lived downstream tokens (``credential: {minted: …}``).

The MCP authorization spec forbids passing the client's token to the upstream ("token
passthrough"). A minted route gives the upstream a token of its own instead: an RFC 9068 JWT
access token, signed by the gateway, for the upstream's audience, naming the same user (``sub``)
and saying that the MCP client acts for that user (``act``, RFC 8693 §4.1). It never outlives the
client's token.

The upstream verifies these tokens like any others: against the keys the gateway publishes
(``jwks()``, served at ``jwks_path``), discovered from ``metadata()`` (RFC 8414, served at
``metadata_path``). Every configured key is published, so a key can be rotated without
invalidating tokens already handed out: add the new key, make it ``active_kid``, and drop the
old one only once its last token has expired.

Building the claims is a pure function (``minted_claims``); ``TokenMinter`` adds the keys, the
clock and the randomness.
"""

from __future__ import annotations

import base64
import copy
import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..config import MintingConfig, SigningKeyConfig
from ..config.signing import UnusableSigningKey, kid_problem, load_signing_key
from ..errors import InvalidToken, MintingError
from ..principal import Principal

__all__ = [
    "AT_JWT_TYP",
    "WELL_KNOWN_AS",
    "MintingError",
    "SigningKeyError",
    "TokenMinter",
    "jwks_path_for",
    "metadata_path_for",
    "minted_claims",
    "public_jwk",
]

# RFC 9068 §2.1: JWT access tokens are typed "at+jwt" (the "application/" prefix omitted).
AT_JWT_TYP: Final = "at+jwt"
# RFC 8414 §3: the well-known URI suffix for authorization server metadata.
WELL_KNOWN_AS: Final = "/.well-known/oauth-authorization-server"
JWKS_FILE: Final = "jwks.json"

# Claims about the user's authentication, copied unchanged from the client's token when present
# (RFC 9068 §2.2.1: auth_time, acr, amr), so the upstream can still require e.g. MFA.
_AUTHENTICATION_CLAIMS: Final = ("auth_time", "acr", "amr")

SigningKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


class SigningKeyError(ValueError):
    """A configured signing key cannot be used (unreadable, wrong type for its alg, unknown kid).

    Raised at start-up; the message names the kid and file, never key material.
    """


# =========================================================================== pure parts


def minted_claims(
    principal: Principal,
    *,
    issuer: str,
    audience: str,
    scopes: tuple[str, ...] | None,
    ttl_s: float,
    now: float,
    jti: str,
) -> dict[str, Any]:
    """The claims of one downstream token (RFC 9068 §2.2); pure: clock and ``jti`` are parameters.

    Raises ``MintingError`` if the caller's token names no client or carries a malformed ``act``,
    and ``InvalidToken("expired")`` if it expires before a token of at least one second could be
    issued (a token born expired would only be refused by the upstream).
    """
    client_id = principal.client_id
    if not client_id:
        # RFC 9068 §2.2: client_id is REQUIRED; and without a client there is no actor for act.
        raise MintingError(detail="the caller's token names no client (client_id/azp)")

    # RFC 8693 §4.1: act names the current actor (the MCP client); a prior chain of delegation
    # in the client's token is kept as the actor's own act, most recent actor outermost.
    actor: dict[str, Any] = {"sub": client_id}
    incoming_act = principal.claims.get("act")
    if incoming_act is not None:
        if not isinstance(incoming_act, Mapping):
            raise MintingError(detail="the caller's token has an act claim that is not a JSON object")
        actor["act"] = copy.deepcopy(dict(incoming_act))

    # RFC 7519 §2 NumericDate, kept integral; §4.1.4 exp: never after the client's token expires.
    issued_at = math.floor(now)
    expires_at = min(math.floor(issued_at + ttl_s), math.floor(principal.expires_at))
    if expires_at <= issued_at:
        raise InvalidToken("expired", detail="the caller's token expires before a downstream token could")

    claims: dict[str, Any] = {
        "iss": issuer,  # RFC 9068 §2.2 / RFC 7519 §4.1.1
        "aud": audience,  # RFC 9068 §2.2 / RFC 7519 §4.1.3: the upstream, and only it
        "sub": principal.subject,  # RFC 9068 §2.2: the same resource owner as the client's token
        "client_id": client_id,  # RFC 9068 §2.2 / RFC 8693 §4.3
        "act": actor,
        "iat": issued_at,  # RFC 7519 §4.1.6
        "exp": expires_at,  # RFC 7519 §4.1.4
        "jti": jti,  # RFC 7519 §4.1.7
    }
    if scopes is not None:
        claims["scope"] = " ".join(scopes)  # RFC 9068 §2.2.3 / RFC 8693 §4.2: space-delimited
    for name in _AUTHENTICATION_CLAIMS:
        if name in principal.claims:
            claims[name] = copy.deepcopy(principal.claims[name])
    return claims


def _b64url_uint(value: int, length: int | None = None) -> str:
    """RFC 7518 §2 Base64urlUInt: big-endian, unpadded; ``length`` pads to a fixed size (§6.2.1.2)."""
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return _b64url(value.to_bytes(size, "big"))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_jwk(public_key: PublicKey, *, kid: str, alg: str) -> dict[str, Any]:
    """A public key as a JWK (RFC 7517 §4) with kid, alg and use "sig"; built from the public key
    alone, so no private member can ever appear."""
    members: dict[str, Any]
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        # RFC 7518 §6.2.1: x and y are the full coordinate size (32 bytes for P-256).
        numbers = public_key.public_numbers()
        size = (public_key.curve.key_size + 7) // 8
        members = {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64url_uint(numbers.x, size),
            "y": _b64url_uint(numbers.y, size),
        }
    elif isinstance(public_key, rsa.RSAPublicKey):
        # RFC 7518 §6.3.1: modulus and exponent.
        rsa_numbers = public_key.public_numbers()
        members = {"kty": "RSA", "n": _b64url_uint(rsa_numbers.n), "e": _b64url_uint(rsa_numbers.e)}
    else:
        # RFC 8037 §2: an OKP key's x is the raw public key.
        raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        members = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}
    # RFC 7517 §4.2 use, §4.4 alg, §4.5 kid.
    return {**members, "kid": kid, "alg": alg, "use": "sig"}


def metadata_path_for(issuer: str) -> str:
    """RFC 8414 §3.1: the well-known suffix inserted between the issuer's host and its path
    (any terminating "/" removed first)."""
    return WELL_KNOWN_AS + urlsplit(issuer).path.rstrip("/")


def jwks_path_for(issuer: str) -> str:
    """The JWKS is published under the issuer's own path (the choice is ours: RFC 8414 §2 jwks_uri)."""
    return urlsplit(issuer).path.rstrip("/") + "/" + JWKS_FILE


# =========================================================================== keys


def _load_signing_key(config: SigningKeyConfig) -> SigningKey:
    """Read one PEM private key and check that it can sign with its configured alg."""
    try:
        return load_signing_key(config.path, config.alg)
    except UnusableSigningKey as exc:
        raise SigningKeyError(f"signing key {config.kid!r} ({str(config.path)!r}): {exc}") from None


# =========================================================================== the minter


@dataclass(frozen=True, slots=True)
class MintedToken:
    value: str = field(repr=False)
    issued_at: float
    expires_at: float
    jti: str | None = None


class TokenMinter:
    """Signs downstream tokens with the active key and publishes every configured key."""

    def __init__(self, config: MintingConfig, clock: Callable[[], float] = time.time) -> None:
        if not config.keys:
            raise SigningKeyError("minting needs at least one signing key")
        problem = kid_problem([key.kid for key in config.keys], config.active_kid)
        if problem == "shared_kid":
            raise SigningKeyError("two signing keys share a kid")
        if problem == "unknown_active_kid":
            raise SigningKeyError(f"no signing key has the active kid {config.active_kid!r}")
        self._issuer = config.issuer
        self._clock = clock
        self._keys: dict[str, tuple[str, SigningKey]] = {
            key.kid: (key.alg, _load_signing_key(key)) for key in config.keys
        }
        self._active_kid = config.active_kid
        self._jwks: dict[str, Any] = {
            "keys": [
                public_jwk(private.public_key(), kid=kid, alg=alg)
                for kid, (alg, private) in self._keys.items()
            ]
        }
        self.metadata_path: str = metadata_path_for(config.issuer)
        self.jwks_path: str = jwks_path_for(config.issuer)
        self._jwks_uri = config.issuer.rstrip("/") + "/" + JWKS_FILE

    @property
    def issuer(self) -> str:
        return self._issuer

    @property
    def active_kid(self) -> str:
        return self._active_kid

    def mint(
        self, principal: Principal, *, audience: str, scopes: tuple[str, ...] | None, ttl_s: float
    ) -> str:
        """A fresh signed token for ``audience`` on behalf of ``principal`` (new ``jti`` every call)."""
        return self.mint_token(principal, audience=audience, scopes=scopes, ttl_s=ttl_s).value

    def mint_token(
        self, principal: Principal, *, audience: str, scopes: tuple[str, ...] | None, ttl_s: float
    ) -> MintedToken:
        """``mint``, with the token's lifetime, for callers that keep it for reuse."""
        claims = minted_claims(
            principal,
            issuer=self._issuer,
            audience=audience,
            scopes=scopes,
            ttl_s=ttl_s,
            now=self._clock(),
            jti=secrets.token_urlsafe(16),  # 128 random bits, URL-safe (RFC 7519 §4.1.7: unique)
        )
        alg, key = self._keys[self._active_kid]
        # RFC 9068 §2.1: typ at+jwt; RFC 7515 §4.1.4: kid selects the verification key.
        value = jwt.encode(claims, key, algorithm=alg, headers={"typ": AT_JWT_TYP, "kid": self._active_kid})
        return MintedToken(value, issued_at=claims["iat"], expires_at=claims["exp"], jti=claims["jti"])

    def jwks(self) -> dict[str, Any]:
        """The JWK Set (RFC 7517 §5) of every configured key, active or not, public members only."""
        return copy.deepcopy(self._jwks)

    def metadata(self) -> dict[str, Any]:
        """Minimal RFC 8414 §2 issuer metadata: the issuer and where its keys are."""
        return {"issuer": self._issuer, "jwks_uri": self._jwks_uri}

    def __repr__(self) -> str:
        kids = ", ".join(self._keys)
        return f"TokenMinter(issuer={self._issuer!r}, active_kid={self._active_kid!r}, kids=[{kids}])"
