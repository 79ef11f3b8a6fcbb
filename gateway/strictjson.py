"""Strict JSON for untrusted input.

Two parsers must never read one document two ways: duplicate object keys are refused (one parser
keeps the first value, another the last), and so are invalid UTF-8, a byte-order mark, and the
non-standard constants NaN/Infinity that Python's json accepts by default.
"""

from __future__ import annotations

import json
from typing import Any


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


def loads_strict(data: bytes | str) -> Any:
    """Parse JSON, refusing duplicate keys, NaN/Infinity, invalid UTF-8 and a BOM."""
    if isinstance(data, bytes):
        if data.startswith(b"\xef\xbb\xbf"):
            raise StrictJSONError("byte-order mark before JSON")
        try:
            text = data.decode("utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            raise StrictJSONError("invalid UTF-8") from exc
    else:
        text = data
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)
    except StrictJSONError:
        raise
    except (ValueError, RecursionError) as exc:
        raise StrictJSONError("malformed JSON") from exc
