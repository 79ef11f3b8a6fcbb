"""The canonical bytes a record is hashed and signed over: JCS, RFC 8785.

The hash chain only works if every writer and every verifier turn one record into the same bytes.
RFC 8785 fixes that form: object keys sorted by their UTF-16 code units at every level (§3.2.3),
no insignificant whitespace, strings escaped minimally (§3.2.2.2), numbers written as ECMAScript
does (§3.2.2.3). The serialisation is Trail of Bits' ``rfc8785`` package, which implements exactly
that: the key order is UTF-16 (Python's ``sort_keys`` orders by code point, which differs for
characters beyond U+FFFF) and the number form is ECMAScript's (``json.dumps`` writes ``1.0`` and
``1e-07`` where JCS wants ``1`` and ``1e-7``).

That package is pure Python (about 150 µs for a decision event), and a record is serialised on
the request path. For the values records mostly hold, the standard library's C encoder writes
the same bytes: with ASCII keys (code-point and UTF-16 order agree), no float, integers within
±(2**53 - 1) (written alike), and its minimal escaping (``"``, ``\\``, the control characters,
short forms for ``\\b \\f \\n \\r \\t``, ``\\u00xx`` lower-case for the others: §3.2.2.2's).
``canonical_json`` takes that path when one walk over the value shows it applies, and the
package's otherwise; the unit tests hold both to the RFC's examples and to each other.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, Final, TypeAlias

import rfc8785

JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"

HASH_HEX_LENGTH = 64
# RFC 8785 §3.2.2.3 / I-JSON (RFC 7493 §2.2): integers beyond this have no exact JSON number.
MAX_EXACT_INTEGER: Final = 2**53 - 1


class NotCanonicalizable(ValueError):
    """The value has no RFC 8785 form: NaN or infinity, an integer beyond ±(2**53 - 1), a non-str key."""


_FAST_ENCODER: Final = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)


def _encoder_agrees(value: object) -> bool:
    """Whether the standard library's encoder writes ``value`` exactly as RFC 8785 does."""
    # A loop, not recursion: this runs for every record, on the event loop. Exact types only
    # (``type(x) is``): a subclass might encode itself otherwise.
    pending: list[Any] = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is str or item is None or kind is bool:
            continue
        if kind is int:
            if not -MAX_EXACT_INTEGER <= item <= MAX_EXACT_INTEGER:
                return False
        elif kind is dict:
            for key in item:
                if type(key) is not str or not key.isascii():
                    return False
            pending.extend(item.values())
        elif kind is list:
            pending.extend(item)
        else:
            return False  # a float, a tuple, anything else: the package decides
    return True


def canonical_json(value: JSONValue) -> bytes:
    """The RFC 8785 bytes of ``value`` (UTF-8, no trailing newline)."""
    if _encoder_agrees(value):
        try:
            return _FAST_ENCODER.encode(value).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no UTF-8 form, the package says so
            pass
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise NotCanonicalizable(str(exc)) from exc


def sha256_hex(value: JSONValue) -> str:
    """Lower-case hex SHA-256 of the canonical bytes of ``value``."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def json_safe(value: object) -> JSONValue:
    """``value`` in a shape RFC 8785 can write, so an audited event always has a canonical form.

    What the gateway records comes from JSON (token claims, tool arguments) or its own frozen
    values: tuples and sets become lists (sets sorted), non-string keys strings; what JSON has no
    exact number for (an integer past ±(2**53 - 1), NaN, infinity) becomes its decimal string, so
    it is still recorded, visibly not a number; anything else, its ``str``.
    """
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        return value if -MAX_EXACT_INTEGER <= value <= MAX_EXACT_INTEGER else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted((json_safe(item) for item in value), key=str)
    return str(value)


def json_safe_object(value: Mapping[str, object]) -> dict[str, JSONValue]:
    """``json_safe`` of a mapping (an event), typed as the object it stays."""
    return {str(key): json_safe(item) for key, item in value.items()}
