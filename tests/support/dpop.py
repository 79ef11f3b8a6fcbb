"""A DPoP client's half (RFC 9449 §4): a key pair, its thumbprint, and proofs made with pyjwt.

Each knob a refusal test needs is a keyword: another ``typ``/``alg``, extra header members (a
private key in ``jwk``), claims changed or dropped, a signature from another key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.warnings import InsecureKeyLengthWarning


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def ath_of(token: str) -> str:
    """``ath``: base64url(SHA-256(token)), computed here independently of the gateway."""
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def compact(header: Mapping[str, Any], claims: Mapping[str, Any], signature: bytes = b"") -> str:
    """A compact JWS with exactly this header, these claims and signature (alg none, forgeries)."""
    parts = [json.dumps(dict(header)).encode(), json.dumps(dict(claims)).encode(), signature]
    return ".".join(b64url(part) for part in parts)


@dataclass(frozen=True)
class ProofKey:
    """The client's DPoP key pair (ES256 on P-256, or RS256)."""

    alg: str
    private: Any
    public_jwk: dict[str, Any]

    @classmethod
    def generate(cls, alg: str = "ES256", rsa_bits: int = 2048) -> ProofKey:
        if alg == "ES256":
            private: Any = ec.generate_private_key(ec.SECP256R1())
            jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
        else:
            private = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
            jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
        return cls(alg, private, jwk)

    @property
    def private_jwk(self) -> dict[str, Any]:
        algorithm = ECAlgorithm if self.alg == "ES256" else RSAAlgorithm
        return json.loads(algorithm.to_jwk(self.private))  # type: ignore[no-any-return]

    @property
    def jkt(self) -> str:
        """The RFC 7638 thumbprint, written out here rather than taken from the gateway."""
        members = ("crv", "kty", "x", "y") if self.public_jwk["kty"] == "EC" else ("e", "kty", "n")
        canonical = json.dumps({name: self.public_jwk[name] for name in members}, separators=(",", ":"))
        return b64url(hashlib.sha256(canonical.encode()).digest())

    def proof(
        self,
        method: str,
        url: str,
        token: str | None,
        *,
        iat: float | None = None,
        header: Mapping[str, Any] | None = None,
        claims: Mapping[str, Any] | None = None,
        drop: tuple[str, ...] = (),
        signer: ProofKey | None = None,
    ) -> str:
        """A proof for ``method url`` with ``token``'s ``ath``; signed by ``signer`` (default: us)."""
        payload: dict[str, Any] = {
            "jti": uuid.uuid4().hex,
            "htm": method,
            "htu": url,
            "iat": int(time.time() if iat is None else iat),
        }
        if token is not None:
            payload["ath"] = ath_of(token)
        payload.update(claims or {})
        for name in drop:
            payload.pop(name, None)
        jose = {"typ": "dpop+jwt", "jwk": self.public_jwk, **(header or {})}
        key = signer or self
        with warnings.catch_warnings():  # a weak key is what a refusal test may want
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            return jwt.encode(payload, key.private, algorithm=jose.pop("alg", key.alg), headers=jose)
