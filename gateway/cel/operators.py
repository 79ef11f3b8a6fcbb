"""Typing rules for CEL's operators, restricted to the overloads the evaluator implements.

The evaluator does no numeric coercion in arithmetic (`1 + 2u` fails when evaluated) but compares
numbers across int, uint and double, so the rules below allow mixes in comparisons only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from gateway.cel.syntax import Call, Expr, Literal, unparse
from gateway.cel.types import (
    BOOL,
    BYTES,
    DOUBLE,
    DURATION,
    DYN,
    INT,
    NULL,
    NUMERIC,
    STRING,
    TIMESTAMP,
    UINT,
    CelType,
    ListType,
    MapType,
    RecordType,
    compatible,
    describe,
)

__all__ = ["OperatorResult", "check_operator"]

Problems = list[tuple[int, str]]
OperatorResult = tuple[CelType, Problems]

_SYMBOLS: Final = {
    "_&&_": "&&", "_||_": "||", "!_": "!", "-_": "-", "_==_": "==", "_!=_": "!=",
    "_<_": "<", "_<=_": "<=", "_>_": ">", "_>=_": ">=", "_+_": "+", "_-_": "-",
    "_*_": "*", "_/_": "/", "_%_": "%", "@in": "in", "_?_:_": "?:",
}  # fmt: skip
_SAME_NUMERIC: Final[dict[tuple[CelType, CelType], CelType]] = {
    (INT, INT): INT,
    (UINT, UINT): UINT,
    (DOUBLE, DOUBLE): DOUBLE,
}
# The evaluator refuses `duration + timestamp` ("Unsupported operation"), so only this order is here.
_ARITHMETIC: Final[Mapping[str, Mapping[tuple[CelType, CelType], CelType]]] = {
    "_+_": {
        **_SAME_NUMERIC,
        (STRING, STRING): STRING,
        (BYTES, BYTES): BYTES,
        (TIMESTAMP, DURATION): TIMESTAMP,
        (DURATION, DURATION): DURATION,
    },
    "_-_": {
        **_SAME_NUMERIC,
        (TIMESTAMP, TIMESTAMP): DURATION,
        (TIMESTAMP, DURATION): TIMESTAMP,
        (DURATION, DURATION): DURATION,
    },
    "_*_": _SAME_NUMERIC,
    "_/_": _SAME_NUMERIC,
    "_%_": {(INT, INT): INT, (UINT, UINT): UINT},
}
_ORDERED: Final = frozenset({STRING, BYTES, BOOL, TIMESTAMP, DURATION})


def check_operator(expr: Call, types: Sequence[CelType], absent: Mapping[int, str]) -> OperatorResult | None:
    """The type of operator call `expr` whose operands have `types`, or None if it is no operator.

    `absent` maps the id of a node that selects an optional record key to when that key is absent.
    """
    name = expr.function
    if expr.target is not None or name not in _SYMBOLS:
        return None
    if name in ("_&&_", "_||_", "!_"):
        return BOOL, _need_bools(expr, types)
    if name == "_?_:_":
        return _conditional(expr, types)
    if name in ("_==_", "_!=_"):
        return BOOL, _equality(expr, types, absent)
    if name in ("_<_", "_<=_", "_>_", "_>=_"):
        return BOOL, ([] if _orderable(*types) else [_no_overload(expr, types)])
    if name == "@in":
        return BOOL, _membership(expr, types)
    if name == "-_":
        ok = types[0] in (INT, DOUBLE, DURATION, DYN)
        return (types[0] if ok else DYN), ([] if ok else [_no_overload(expr, types)])
    return _arithmetic(expr, types)


def _fragment(expr: Expr) -> str:
    text = unparse(expr)
    return text[1:-1] if text.startswith("(") and text.endswith(")") else text


def _no_overload(expr: Call, types: Sequence[CelType]) -> tuple[int, str]:
    listed = ", ".join(map(str, types))
    return expr.offset, f"found no overload for {expr.function} on ({listed}) in {_fragment(expr)}"


def _need_bools(expr: Call, types: Sequence[CelType]) -> Problems:
    symbol = _SYMBOLS[expr.function]
    return [
        (arg.offset, f"'{symbol}' needs a bool; {_fragment(arg)} is {describe(arg_type)}")
        for arg, arg_type in zip(expr.args, types, strict=True)
        if arg_type not in (BOOL, DYN)
    ]


def _conditional(expr: Call, types: Sequence[CelType]) -> OperatorResult:
    condition, then, otherwise = types
    problems: Problems = []
    if condition not in (BOOL, DYN):
        where = _fragment(expr.args[0])
        problems.append(
            (expr.args[0].offset, f"the condition of '? :' must be a bool; {where} is {describe(condition)}")
        )
    return (then if then == otherwise else DYN), problems


def _equality(expr: Call, types: Sequence[CelType], absent: Mapping[int, str]) -> Problems:
    for arg, other in ((expr.args[0], expr.args[1]), (expr.args[1], expr.args[0])):
        if isinstance(other, Literal) and other.kind == "null" and id(arg) in absent:
            where = _fragment(arg)
            hint = f"{where} is absent, not null, when {absent[id(arg)]}: write has({where})"
            return [(expr.offset, hint)]
    return [] if _equatable(*types) else [_no_overload(expr, types)]


def _equatable(a: CelType, b: CelType) -> bool:
    if compatible(a, b) or (a in NUMERIC and b in NUMERIC):
        return True
    containers = (ListType, MapType, RecordType)
    return (a == NULL and isinstance(b, containers)) or (b == NULL and isinstance(a, containers))


def _orderable(a: CelType, b: CelType) -> bool:
    def ordered(t: CelType) -> bool:
        return t in NUMERIC or t in _ORDERED

    if a == DYN or b == DYN:
        return (a == DYN or ordered(a)) and (b == DYN or ordered(b))
    return (a in NUMERIC and b in NUMERIC) or (a == b and a in _ORDERED)


def _membership(expr: Call, types: Sequence[CelType]) -> Problems:
    element, container = types
    if container == DYN:
        return []
    if isinstance(container, ListType):
        ok = compatible(element, container.element) or (element in NUMERIC and container.element in NUMERIC)
    elif isinstance(container, MapType):
        ok = compatible(element, container.key)
    elif isinstance(container, RecordType):
        ok = compatible(element, STRING)
    else:
        where = _fragment(expr.args[1])
        return [(expr.offset, f"'in' needs a list or a map on its right; {where} is {describe(container)}")]
    return [] if ok else [_no_overload(expr, types)]


def _arithmetic(expr: Call, types: Sequence[CelType]) -> OperatorResult:
    left, right = types
    if expr.function == "_+_" and isinstance(left, ListType) and isinstance(right, ListType):
        return ListType(left.element if left.element == right.element else DYN), []
    table = _ARITHMETIC[expr.function]
    if (left, right) in table:
        return table[(left, right)], []
    if left == DYN or right == DYN:
        lists = expr.function == "_+_" and isinstance(left if right == DYN else right, ListType)
        known = [
            pair for pair in table if (left == DYN or pair[0] == left) and (right == DYN or pair[1] == right)
        ]
        if known or lists or left == right:
            return DYN, []
    return DYN, [_no_overload(expr, types)]
