"""The canonical bytes a record is hashed and signed over: JCS, RFC 8785.

The hash chain only works if every writer and every verifier turn one record into the same bytes.
RFC 8785 fixes that form: object keys sorted by their UTF-16 code units at every level (§3.2.3),
no insignificant whitespace, strings escaped minimally (§3.2.2.2), numbers written as ECMAScript
does (§3.2.2.3). The serialisation is Trail of Bits' ``rfc8785`` package, which implements exactly
that: the key order is UTF-16 (Python's ``sort_keys`` orders by code point, which differs for
characters beyond U+FFFF) and the number form is ECMAScript's (``json.dumps`` writes ``1.0`` and
``1e-07`` where JCS wants ``1`` and ``1e-7``).
"""

from __future__ import annotations

import hashlib
from typing import TypeAlias

import rfc8785

JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"

HASH_HEX_LENGTH = 64


class NotCanonicalizable(ValueError):
    """The value has no RFC 8785 form: NaN or infinity, an integer beyond ±(2**53 - 1), a non-str key."""


def canonical_json(value: JSONValue) -> bytes:
    """The RFC 8785 bytes of ``value`` (UTF-8, no trailing newline)."""
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise NotCanonicalizable(str(exc)) from exc


def sha256_hex(value: JSONValue) -> str:
    """Lower-case hex SHA-256 of the canonical bytes of ``value``."""
    return hashlib.sha256(canonical_json(value)).hexdigest()
