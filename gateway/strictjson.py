"""Strict JSON for untrusted input.

Two parsers must never read one document two ways: duplicate object keys are refused (one parser
keeps the first value, another the last), and so are invalid UTF-8, a byte-order mark, the
non-standard constants NaN/Infinity that Python's json accepts by default, and numbers no IEEE 754
double can hold: ``1e400`` parses as infinity here and in JavaScript, and an integer of 400 digits
is exact for Python but infinity for every double-based parser (RFC 8259 §6 interoperability).
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

# No integer literal shorter than this can exceed the largest double (about 1.8e308, 309 digits),
# so only longer ones pay for the range check.
_LONGEST_SAFE_INT_LITERAL = len(str(int(sys.float_info.max))) - 1


class StrictJSONError(ValueError):
    """The document is not strict JSON; the message says why (never echoes the input)."""


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise StrictJSONError(f"duplicate object key {key[:64]!r}")
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400, -1e400: overflowed to ±infinity
        raise StrictJSONError("number out of range")
    return value


def _finite_int(text: str) -> int:
    value = int(text)
    if len(text) > _LONGEST_SAFE_INT_LITERAL and abs(value) > sys.float_info.max:
        raise StrictJSONError("number out of range")
    return value


# One decoder for every call: ``json.loads`` with hooks builds a decoder and its scanner per call
# (a third of the time for a request body). ``json`` shares its own default decoder the same way.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_refuse_duplicates,
    parse_constant=_refuse_constant,
    parse_float=_finite_float,
    parse_int=_finite_int,
)


def loads_strict(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON, refusing duplicate keys, NaN/Infinity, numbers beyond a double, invalid UTF-8, a BOM."""
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            raise StrictJSONError("invalid UTF-8") from exc
    else:
        text = data
    if text.startswith("\ufeff"):  # the UTF-8 byte-order mark, decoded
        raise StrictJSONError("byte-order mark before JSON")
    try:
        return _DECODER.decode(text)
    except StrictJSONError:
        raise
    except (ValueError, RecursionError) as exc:
        raise StrictJSONError("malformed JSON") from exc
