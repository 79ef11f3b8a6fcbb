"""The gateway's signing keys for minted tokens: what makes a key, and a key set, usable.

One loader for both callers: the config parser checks every key at start-up
(``parse_signing_key``, an entry of ``minting.keys``), so that a bad key is a config problem
with its file and line; ``upstream.minting`` loads the same keys to sign with, from a
``MintingConfig`` that may also have been built in code.  Each caller words its own messages
(a file position there, the kid here); the rules are only here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

from .model import SigningKeyConfig
from .reader import (
    INVALID,
    Cursor,
    FieldSpec,
    Parsed,
    accepts,
    non_empty_text,
    one_of,
    read_section,
    section_schema,
)
from .yamlsource import YamlNode

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    SigningKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

__all__ = [
    "MINTING_ALGORITHMS",
    "KeyFileUnreadable",
    "UnusableSigningKey",
    "kid_problem",
    "load_signing_key",
    "parse_signing_key",
]

MINTING_ALGORITHMS: Final = ("ES256", "RS256", "EdDSA")


class UnusableSigningKey(ValueError):
    """The PEM file cannot sign with its alg; the message says why, never with key material."""


class KeyFileUnreadable(UnusableSigningKey):
    """No private key could be loaded from the file; ``error`` names the exception type."""

    def __init__(self, error: str) -> None:
        super().__init__(f"cannot load a private key: {error}")
        self.error = error


def load_signing_key(path: Path, alg: str) -> SigningKey:
    """Read one unencrypted PEM private key and check that it can sign with ``alg``."""
    # Imported here: the config is parsed (check-config, explain) without loading cryptography
    # unless minting is configured.
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileUnreadable(type(exc).__name__) from None
    # RFC 7518 §3.4 (ES256: P-256), §3.3 (RS256: at least 2048 bits); RFC 8037 §3.1 (EdDSA: Ed25519 here).
    if alg == "ES256":
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            return key
        raise UnusableSigningKey("ES256 needs an EC P-256 private key")
    if alg == "RS256":
        if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
            return key
        raise UnusableSigningKey("RS256 needs an RSA private key of at least 2048 bits")
    if alg == "EdDSA":
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key
        raise UnusableSigningKey("EdDSA needs an Ed25519 private key")
    raise UnusableSigningKey(f"unsupported alg {alg!r} (ES256, RS256 or EdDSA)")


def kid_problem(kids: Sequence[str], active_kid: str) -> Literal["shared_kid", "unknown_active_kid"] | None:
    """What is wrong with a key set's kids, if anything.

    RFC 7515 §4.1.4: a token's ``kid`` picks the key that verifies it, so no two keys may share
    one; and new tokens are signed with the key whose kid is ``active_kid``.
    """
    if len(set(kids)) != len(kids):
        return "shared_kid"
    if active_kid not in kids:
        return "unknown_active_kid"
    return None


# =========================================================================== the config entry


_SIGNING_KEY_FIELDS: Final = (
    FieldSpec("kid", non_empty_text, required=True),
    FieldSpec("alg", one_of(*MINTING_ALGORITHMS), required=True),
    FieldSpec("file", non_empty_text, required=True),
)


@accepts(section_schema(_SIGNING_KEY_FIELDS))
def parse_signing_key(node: YamlNode, at: Cursor) -> Parsed[SigningKeyConfig]:
    """A PEM private key, loaded and checked at start-up rather than at its first use."""
    section = read_section(node, at, _SIGNING_KEY_FIELDS)
    if section is INVALID or not section.complete:
        return INVALID
    path = Path(os.path.abspath(at.base_dir / section.values["file"]))
    file_at, file_line = at.key("file"), section.nodes["file"].line
    if not path.is_file():
        return file_at.problem(file_line, f"key file {str(path)!r} does not exist")
    try:
        load_signing_key(path, section.values["alg"])
    except KeyFileUnreadable as exc:
        return file_at.problem(file_line, f"cannot load a private key from {str(path)!r}: {exc.error}")
    except UnusableSigningKey as exc:
        return file_at.problem(file_line, str(exc))
    return SigningKeyConfig(kid=section.values["kid"], alg=section.values["alg"], path=path)
