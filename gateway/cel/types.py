"""The CEL types the checker reasons about, and when two of them can meet.

Typing is gradual (cel-spec langdef.md "Gradual Type Checking"): DYN stands for any value, is
compatible with every type, and anything reached through it is DYN again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

__all__ = [
    "BOOL",
    "BYTES",
    "DOUBLE",
    "DURATION",
    "DYN",
    "INT",
    "NULL",
    "NUMERIC",
    "STRING",
    "TIMESTAMP",
    "TYPE",
    "UINT",
    "CelType",
    "ListType",
    "MapType",
    "Primitive",
    "RecordType",
    "compatible",
    "describe",
]


@dataclass(frozen=True, slots=True)
class Primitive:
    """A scalar type, named as CEL's `type()` would name it."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class ListType:
    """`list(element)`."""

    element: CelType

    def __str__(self) -> str:
        return f"list({self.element})"


@dataclass(frozen=True, slots=True)
class MapType:
    """`map(key, value)`."""

    key: CelType
    value: CelType

    def __str__(self) -> str:
        return f"map({self.key}, {self.value})"


@dataclass(frozen=True, slots=True)
class RecordType:
    """A map with string keys known in advance; keys in `optional` may be absent at run time.

    `absent_when` says, per optional key, when it is absent ("the token has no act claim"), for the
    message that tells an author to test presence with has() rather than compare with null.
    """

    name: str
    fields: Mapping[str, CelType]
    optional: frozenset[str] = field(default_factory=frozenset)
    absent_when: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Copied and read-only, so a declaration cannot change after it was checked against.
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))
        object.__setattr__(self, "absent_when", MappingProxyType(dict(self.absent_when)))
        unknown = (self.optional | set(self.absent_when)) - set(self.fields)
        if unknown:
            raise ValueError(f"{self.name}: optional names no field: {', '.join(sorted(unknown))}")

    def __hash__(self) -> int:
        return hash((self.name, tuple(self.fields)))

    def __str__(self) -> str:
        return self.name


CelType = Primitive | ListType | MapType | RecordType

BOOL: Final = Primitive("bool")
INT: Final = Primitive("int")
UINT: Final = Primitive("uint")
DOUBLE: Final = Primitive("double")
STRING: Final = Primitive("string")
BYTES: Final = Primitive("bytes")
NULL: Final = Primitive("null")
TIMESTAMP: Final = Primitive("timestamp")
DURATION: Final = Primitive("duration")
TYPE: Final = Primitive("type")
DYN: Final = Primitive("dyn")

NUMERIC: Final = frozenset({INT, UINT, DOUBLE})


def compatible(a: CelType, b: CelType) -> bool:
    """Whether a value of type `a` may stand where `b` is expected (symmetric, DYN matches all)."""
    if a == DYN or b == DYN or a == b:
        return True
    match a, b:
        case ListType(element=x), ListType(element=y):
            return compatible(x, y)
        case MapType(key=k1, value=v1), MapType(key=k2, value=v2):
            return compatible(k1, k2) and compatible(v1, v2)
        case RecordType(), MapType() | RecordType():
            return _record_fits(a, b)
        case MapType(), RecordType():
            return _record_fits(b, a)
    return False


def _record_fits(record: RecordType, other: MapType | RecordType) -> bool:
    if isinstance(other, RecordType):
        return record.name == other.name
    return compatible(STRING, other.key) and all(compatible(t, other.value) for t in record.fields.values())


def describe(cel_type: CelType) -> str:
    """`a string`, `an int`, `a list(string)`: the type with its article, for messages."""
    text = str(cel_type)
    return f"{'an' if text[0] in 'aeiou' else 'a'} {text}"
