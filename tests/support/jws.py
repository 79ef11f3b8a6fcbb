"""Hand-built compact JWS for tests: exact segment spellings, keys PyJWT would warn about.

``TestIssuer.mint`` goes through ``jwt.encode``, which always writes canonical base64url and
warns (an error under ``filterwarnings=error``) on an RSA key under 2048 bits. These helpers sign
whatever segments a test spells, with any key, and record each token in ``MINTED_TOKENS`` so the
session's log check covers them too.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt

from tests.support.issuer import MINTED_TOKENS

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64url(data: bytes) -> str:
    """Canonical base64url: URL alphabet, no padding, unused bits zero."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def json_segment(value: dict[str, Any] | str) -> str:
    """A header or payload segment: a dict as compact JSON, or JSON text exactly as given."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return b64url(text.encode())


def with_unused_bits(value: dict[str, Any]) -> str:
    """``value`` as JSON whose base64url has unused bits (length not a multiple of 3 bytes)."""
    text = json.dumps(value, separators=(",", ":"))
    while len(text.encode()) % 3 == 0:
        text = "{ " + text[1:]  # insignificant whitespace, same JSON
    return text


def sign(header_segment: str, payload_segment: str, private: Any, alg: str) -> str:
    """A compact JWS over exactly these two segments, signed with ``private``; recorded."""
    signing_input = f"{header_segment}.{payload_segment}"
    signature = jwt.get_algorithm_by_name(alg).sign(signing_input.encode(), private)
    token = f"{signing_input}.{b64url(signature)}"
    MINTED_TOKENS.append(token)
    return token


def set_unused_bits(segment: str) -> str | None:
    """The same bytes spelled with a non-zero unused low bit in the last character; None if none."""
    if len(segment) % 4 == 0:
        return None  # a whole number of 3-byte groups: no unused bits
    last = ALPHABET.index(segment[-1])
    return segment[:-1] + ALPHABET[last | 1]


def standard_alphabet(segment: str) -> str | None:
    """The same bytes in the standard base64 alphabet (``+``, ``/``); None if nothing changes."""
    respelled = segment.replace("-", "+").replace("_", "/")
    return respelled if respelled != segment else None


def with_tildes(segment: str) -> str:
    """Four ``~`` inside: b64token characters that Python's decoder skips, so the same bytes."""
    return segment[:2] + "~~~~" + segment[2:]


def padded(segment: str) -> str | None:
    """The same bytes with ``=`` padding; None if no padding is due."""
    return segment + "=" * (-len(segment) % 4) if len(segment) % 4 else None
