"""The functions and methods a condition may call: exactly those the evaluator supports.

The evaluator (the `common-expression-language` package) has no string extension library and only
reports an unknown function when it evaluates the call, so the checker refuses every other name at
load time, with a suggestion when the name looks like a typo of a known one.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from gateway.cel.types import (
    BOOL,
    BYTES,
    DOUBLE,
    DURATION,
    DYN,
    INT,
    STRING,
    TIMESTAMP,
    TYPE,
    UINT,
    CelType,
    ListType,
    MapType,
    RecordType,
)

__all__ = ["FUNCTIONS", "MACRO_NAMES", "METHODS", "Signature", "sized", "unknown_name_message"]


def sized(cel_type: CelType) -> bool:
    """Whether size() applies: strings, bytes, lists and maps (DYN may be any of them)."""
    return cel_type in (STRING, BYTES, DYN) or isinstance(cel_type, ListType | MapType | RecordType)


def _any(cel_type: CelType) -> bool:
    return True


def _one_of(*types: CelType) -> Callable[[CelType], bool]:
    allowed = frozenset((*types, DYN))
    return lambda cel_type: cel_type in allowed


@dataclass(frozen=True, slots=True)
class Signature:
    """One argument (global function) or receiver (method) accepted by `accepts`, then `args`."""

    accepts: Callable[[CelType], bool]
    wants: str  # what `accepts` takes, for messages: "a string", "a string, bytes, list or map"
    result: CelType
    args: tuple[CelType, ...] = ()


_SIZED = "a string, bytes, list or map"
_NUMBER_OR_STRING = "an int, uint, double or string"

# Global functions, each with exactly one argument.
FUNCTIONS: Final = {
    "size": Signature(sized, _SIZED, INT),
    "int": Signature(
        _one_of(INT, UINT, DOUBLE, STRING, TIMESTAMP), "an int, uint, double, string or timestamp", INT
    ),
    "uint": Signature(_one_of(INT, UINT, DOUBLE, STRING), _NUMBER_OR_STRING, UINT),
    "double": Signature(_one_of(INT, UINT, DOUBLE, STRING), _NUMBER_OR_STRING, DOUBLE),
    "string": Signature(
        _one_of(INT, UINT, DOUBLE, STRING, BYTES, BOOL, TIMESTAMP, DURATION), "a scalar value", STRING
    ),
    "bytes": Signature(_one_of(BYTES, STRING), "a string or bytes", BYTES),
    "dyn": Signature(_any, "any value", DYN),
    "type": Signature(_any, "any value", TYPE),
    "timestamp": Signature(_one_of(STRING), "a string", TIMESTAMP),
    "duration": Signature(_one_of(STRING), "a string", DURATION),
}

_STRING_TEST = Signature(_one_of(STRING), "a string", BOOL, (STRING,))
METHODS: Final = {
    "size": Signature(sized, _SIZED, INT),
    "startsWith": _STRING_TEST,
    "endsWith": _STRING_TEST,
    "contains": _STRING_TEST,
    "matches": _STRING_TEST,
}

MACRO_NAMES: Final = frozenset({"all", "exists", "exists_one", "filter", "map", "has"})

# Functions of CEL's extension libraries (cel-go ext/strings.go and friends) that authors reach for;
# the evaluator has none of them.
_EXTENSIONS: Final = frozenset(
    "charAt indexOf lastIndexOf lowerAscii upperAscii replace split substring trim join quote format"
    " reverse base64 sort sortBy distinct flatten range slice math greatest least ceil floor round"
    " abs sign existsOne transformList transformMap".split()
)


def unknown_name_message(name: str, *, method: bool) -> str:
    """Why `name` cannot be called, with a did-you-mean when a known name is close."""
    kind = "method" if method else "function"
    if name in _EXTENSIONS:
        return f"{name} is not available: the evaluator has no CEL extension libraries"
    known = sorted({*FUNCTIONS, *METHODS, *MACRO_NAMES} - {"has"})
    lowered = {candidate.lower(): candidate for candidate in known}
    guess = lowered.get(name.lower()) or next(iter(difflib.get_close_matches(name, known, n=1)), None)
    hint = f"; did you mean '{guess}'?" if guess else f"; the available ones are: {', '.join(known)}"
    return f"unknown {kind} '{name}'{hint}"
