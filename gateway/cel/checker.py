"""Static checking of a CEL condition against the variables the gateway declares.

Run once when the config is loaded, so that a misspelt field, a call the evaluator does not have or
a comparison that can never be true is reported to the author instead of silently denying every
request. The result also says exactly which fields the expression reads (`paths`, `whole`), so the
evaluator can be handed only those.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from gateway.cel.functions import FUNCTIONS, MACRO_NAMES, METHODS, Signature, unknown_name_message
from gateway.cel.operators import check_operator
from gateway.cel.syntax import (
    Call,
    CelSyntaxError,
    Comprehension,
    CreateList,
    CreateMap,
    Expr,
    Ident,
    Index,
    Literal,
    Select,
    parse,
    unparse,
    walk,
)
from gateway.cel.types import (
    BOOL,
    BYTES,
    DOUBLE,
    DYN,
    INT,
    NULL,
    STRING,
    TYPE,
    UINT,
    CelType,
    ListType,
    MapType,
    Primitive,
    RecordType,
    compatible,
    describe,
)

__all__ = ["CelError", "CelProblem", "Checked", "FieldPath", "check"]

_LITERAL_TYPES: Final = {
    "bool": BOOL, "int": INT, "uint": UINT, "double": DOUBLE,
    "string": STRING, "bytes": BYTES, "null": NULL,
}  # fmt: skip
# Type names are values in CEL (`type(x) == string`); the evaluator knows these, not `dyn`.
_TYPE_NAMES: Final = frozenset(
    {"bool", "int", "uint", "double", "string", "bytes", "list", "map", "null_type", "type"}
)
_PREDICATE_MACROS: Final = frozenset({"all", "exists", "exists_one", "filter"})
_NESTED_COMPREHENSION: Final = (
    "a comprehension inside another is refused: its cost could be the square of an argument's size"
)


@dataclass(frozen=True, slots=True)
class CelProblem:
    """One thing wrong with a condition, at a 0-based character offset into its source."""

    offset: int
    message: str


class CelError(ValueError):
    """A condition failed to parse or check; `problems` lists everything found, in source order."""

    def __init__(self, problems: tuple[CelProblem, ...]) -> None:
        super().__init__("; ".join(f"at {p.offset}: {p.message}" for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class FieldPath:
    """A static chain of selections from a declared variable: `principal.actor.sub`."""

    path: tuple[str, ...]
    offset: int
    test_only: bool


@dataclass(frozen=True, slots=True)
class Checked:
    """A condition that passed: its tree, its type and what it reads.

    `whole` holds the declared variables read other than through a field path (`claims.size()`);
    any other root in `roots` is read only through its `paths`.
    """

    expr: Expr
    result: CelType
    roots: frozenset[str]
    paths: tuple[FieldPath, ...]
    whole: frozenset[str]
    regexes: tuple[tuple[str, int], ...]


def check(
    source: str, declarations: Mapping[str, CelType], *, max_length: int = 1024, max_nodes: int = 200
) -> Checked:
    """Parse and type-check a condition; raises CelError listing every problem found."""
    if len(source) > max_length:
        message = f"the condition is {len(source)} characters long; the limit is {max_length}"
        raise CelError((CelProblem(max_length, message),))
    try:
        expr = parse(source)
    except CelSyntaxError as error:
        raise CelError((CelProblem(error.offset, error.message),)) from None
    nodes = sum(1 for _ in walk(expr))
    if nodes > max_nodes:
        message = f"the condition has {nodes} parts; the limit is {max_nodes}"
        raise CelError((CelProblem(0, message),))
    checker = _Checker(declarations)
    result = checker.visit(expr)
    if result not in (BOOL, DYN):
        checker.report(0, f"a condition must be a bool; this is {describe(result)}")
    if checker.problems:
        ordered = sorted(checker.problems, key=lambda problem: problem.offset)
        raise CelError(tuple(dict.fromkeys(ordered)))
    return Checked(
        expr=expr,
        result=result,
        roots=frozenset(checker.roots),
        paths=tuple(checker.paths),
        whole=frozenset(checker.whole),
        regexes=tuple(checker.regexes),
    )


def _fragment(expr: Expr) -> str:
    text = unparse(expr)
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    return text if len(text) <= 60 else text[:57] + "..."


def _did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


class _Checker:
    """One pass over the tree; errors are collected and the offending node typed DYN to go on."""

    def __init__(self, declarations: Mapping[str, CelType]) -> None:
        self.declarations = declarations
        self.problems: list[CelProblem] = []
        self.roots: set[str] = set()
        self.whole: set[str] = set()
        self.paths: list[FieldPath] = []
        self.regexes: list[tuple[str, int]] = []
        self.scope: dict[str, CelType] = {}
        self.comprehension_depth = 0
        # Nodes that select a key of a record that may be absent, with why it may be (for `== null`).
        self.absent: dict[int, str] = {}

    def report(self, offset: int, message: str) -> CelType:
        self.problems.append(CelProblem(offset, message))
        return DYN

    def visit(self, expr: Expr) -> CelType:
        match expr:
            case Literal(kind=kind):
                return _LITERAL_TYPES[kind]
            case Ident():
                return self.ident(expr)
            case Select() | Index():
                chain = self.static_chain(expr)
                if chain is not None:
                    return self.field_path(*chain, top=expr)
                return self.select(expr) if isinstance(expr, Select) else self.index(expr)
            case CreateList(items=items):
                return self.list_literal(items)
            case CreateMap(entries=entries):
                return self.map_literal(entries)
            case Comprehension():
                return self.comprehension(expr)
            case Call():
                return self.call(expr)
        raise AssertionError(expr)  # pragma: no cover - the match covers every node

    # --- names and field paths ----------------------------------------------------------------

    def ident(self, expr: Ident) -> CelType:
        if expr.name in self.scope:
            return self.scope[expr.name]
        if expr.name in self.declarations:
            self.roots.add(expr.name)
            self.whole.add(expr.name)
            return self.declarations[expr.name]
        if expr.name in _TYPE_NAMES:
            return TYPE
        names = sorted(self.declarations)
        hint = _did_you_mean(expr.name, names) or (f"; declared are: {', '.join(names)}" if names else "")
        return self.report(expr.offset, f"undeclared identifier '{expr.name}'{hint}")

    def static_chain(self, expr: Select | Index) -> tuple[Ident, list[tuple[str, Expr]]] | None:
        """The declared root and the steps of `expr`, if it is selections from a declared variable."""
        steps: list[tuple[str, Expr]] = []
        node: Expr = expr
        while True:
            if isinstance(node, Select) and (node is expr or not node.test_only):
                steps.append((node.field, node))
                node = node.operand
            elif isinstance(node, Index) and isinstance(node.index, Literal) and node.index.kind == "string":
                steps.append((str(node.index.value), node))
                node = node.operand
            else:
                break
        if isinstance(node, Ident) and node.name not in self.scope and node.name in self.declarations:
            return node, steps[::-1]
        return None

    def field_path(self, root: Ident, steps: list[tuple[str, Expr]], top: Select | Index) -> CelType:
        test_only = isinstance(top, Select) and top.test_only
        self.roots.add(root.name)
        self.paths.append(FieldPath((root.name, *(name for name, _ in steps)), root.offset, test_only))
        cel_type = self.declarations[root.name]
        operand: Expr = root
        for name, node in steps:
            if isinstance(cel_type, RecordType) and name in cel_type.optional and node is top:
                why = cel_type.absent_when.get(name, f"{_fragment(operand)} has no '{name}'")
                self.absent[id(node)] = why
            if test_only and isinstance(top, Select) and node is top:
                return self.presence(top, cel_type, operand)
            cel_type = self.field(cel_type, name, node, operand)
            operand = node
        return cel_type

    def presence(self, expr: Select, operand_type: CelType, operand: Expr) -> CelType:
        """Type `has(operand.field)`: the operand must be able to have keys; records must know it."""
        if isinstance(operand_type, ListType) or (
            isinstance(operand_type, Primitive) and operand_type != DYN
        ):
            message = f"has() needs a map; {_fragment(operand)} is {describe(operand_type)}"
            self.report(expr.offset, message)
        else:
            self.field(operand_type, expr.field, expr, operand)
        return BOOL

    def field(self, cel_type: CelType, name: str, node: Expr, operand: Expr) -> CelType:
        """The type of `operand.name` (or `operand["name"]`), reporting a field that cannot exist."""
        where = _fragment(operand)
        offset = node.offset
        if cel_type == DYN:
            return DYN
        if isinstance(cel_type, RecordType):
            if name in cel_type.fields:
                return cel_type.fields[name]
            names = list(cel_type.fields)
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            return self.report(offset, f"{where} has no field '{name}'{hint}; it has: {', '.join(names)}")
        if isinstance(cel_type, MapType):
            if compatible(cel_type.key, STRING):
                return cel_type.value
            return self.report(offset, f"{where} is {describe(cel_type)}; its keys are not strings")
        if isinstance(node, Index):
            return self.report(offset, f"{where} is {describe(cel_type)}; it cannot be indexed by a string")
        return self.report(offset, f"{where} is {describe(cel_type)}; it has no fields")

    def select(self, expr: Select) -> CelType:
        operand_type = self.visit(expr.operand)
        if expr.test_only:
            return self.presence(expr, operand_type, expr.operand)
        return self.field(operand_type, expr.field, expr, expr.operand)

    def index(self, expr: Index) -> CelType:
        operand_type = self.visit(expr.operand)
        index_type = self.visit(expr.index)
        where = _fragment(expr.operand)
        if operand_type == DYN:
            return DYN
        if isinstance(operand_type, ListType):
            if index_type in (INT, UINT, DYN):
                return operand_type.element
            return self.report(expr.offset, f"a list index must be an int; this is {describe(index_type)}")
        if isinstance(operand_type, MapType):
            if compatible(index_type, operand_type.key):
                return operand_type.value
            message = f"{where} has {operand_type.key} keys; the index is {describe(index_type)}"
            return self.report(expr.offset, message)
        if isinstance(operand_type, RecordType):
            if isinstance(expr.index, Literal) and expr.index.kind == "string":
                return self.field(operand_type, str(expr.index.value), expr, expr.operand)
            if compatible(index_type, STRING):
                return DYN
            return self.report(expr.offset, f"{where} has string keys; the index is {describe(index_type)}")
        return self.report(expr.offset, f"{where} is {describe(operand_type)}; it cannot be indexed")

    # --- literals -----------------------------------------------------------------------------

    def list_literal(self, items: tuple[Expr, ...]) -> CelType:
        types = [self.visit(item) for item in items]
        return ListType(_common(types))

    def map_literal(self, entries: tuple[tuple[Expr, Expr], ...]) -> CelType:
        keys = [self.visit(key) for key, _ in entries]
        values = [self.visit(value) for _, value in entries]
        for (key, _), key_type in zip(entries, keys, strict=True):
            if key_type not in (INT, UINT, BOOL, STRING, DYN):
                self.report(key.offset, f"a map key must be an int, uint, bool or string; this is {key_type}")
        return MapType(_common(keys), _common(values))

    # --- comprehensions -----------------------------------------------------------------------

    def comprehension(self, expr: Comprehension) -> CelType:
        if self.comprehension_depth:
            self.report(expr.offset, _NESTED_COMPREHENSION)
        self.comprehension_depth += 1
        try:
            range_type = self.visit(expr.range)
            var_type = self.iteration_type(expr, range_type)
            body_types = self.comprehension_body(expr, var_type)
        finally:
            self.comprehension_depth -= 1
        if expr.macro in ("all", "exists", "exists_one"):
            return BOOL
        if expr.macro == "filter":
            return ListType(var_type)
        return ListType(body_types[-1])

    def iteration_type(self, expr: Comprehension, range_type: CelType) -> CelType:
        if isinstance(range_type, ListType):
            return range_type.element
        if isinstance(range_type, MapType):
            return range_type.key
        if isinstance(range_type, RecordType):
            return STRING
        if range_type == DYN:
            return DYN
        where = _fragment(expr.range)
        return self.report(
            expr.offset, f"{expr.macro}() needs a list or a map; {where} is {describe(range_type)}"
        )

    def comprehension_body(self, expr: Comprehension, var_type: CelType) -> list[CelType]:
        if expr.var in self.declarations:
            message = f"the variable '{expr.var}' of {expr.macro}() shadows a declared variable; rename it"
            self.report(expr.offset, message)
        elif expr.var in self.scope:
            self.report(expr.offset, f"the variable '{expr.var}' is already in use here; rename it")
        outer = dict(self.scope)
        self.scope[expr.var] = var_type
        try:
            types = [self.visit(part) for part in expr.body]
        finally:
            self.scope = outer
        predicate_count = 1 if expr.macro in _PREDICATE_MACROS or len(expr.body) == 2 else 0
        for part, part_type in zip(expr.body[:predicate_count], types, strict=False):
            if part_type not in (BOOL, DYN):
                where = _fragment(part)
                message = f"the predicate of {expr.macro}() must be a bool; {where} is {describe(part_type)}"
                self.report(part.offset, message)
        return types

    # --- calls --------------------------------------------------------------------------------

    def call(self, expr: Call) -> CelType:
        target_type = None if expr.target is None else self.visit(expr.target)
        arg_types = [self.visit(arg) for arg in expr.args]
        operator = check_operator(expr, arg_types, self.absent)
        if operator is not None:
            result, problems = operator
            self.problems.extend(CelProblem(offset, message) for offset, message in problems)
            return result
        if expr.function == "matches":
            self.regexes.extend(
                (str(arg.value), arg.offset)
                for arg in expr.args
                if isinstance(arg, Literal) and arg.kind == "string"
            )
        if expr.target is None or target_type is None:
            return self.function(expr, arg_types)
        return self.method(expr, expr.target, target_type, arg_types)

    def function(self, expr: Call, arg_types: list[CelType]) -> CelType:
        name = expr.function
        signature = FUNCTIONS.get(name)
        if signature is None:
            if name in METHODS:
                return self.report(expr.offset, f"{name}() is a method: write x.{name}(...)")
            if name in MACRO_NAMES:
                shape = "has(a.b)" if name == "has" else f"list.{name}(x, ...)"
                return self.report(expr.offset, f"{name}() is a macro used as {shape}")
            return self.report(expr.offset, unknown_name_message(name, method=False))
        if len(arg_types) != 1:
            return self.report(expr.offset, f"{name}() takes 1 argument, got {len(arg_types)}")
        return self.accept(expr, signature, arg_types[0], expr.args[0], ())

    def method(self, expr: Call, target: Expr, target_type: CelType, arg_types: list[CelType]) -> CelType:
        name = expr.function
        signature = METHODS.get(name)
        if signature is None:
            if name in FUNCTIONS:
                return self.report(expr.offset, f"{name}() is a function, not a method: write {name}(x)")
            if name in MACRO_NAMES:
                return self.report(expr.offset, f"{name}() takes a variable name and an expression")
            return self.report(expr.offset, unknown_name_message(name, method=True))
        if len(arg_types) != len(signature.args):
            count = len(signature.args)
            plural = "argument" if count == 1 else "arguments"
            return self.report(expr.offset, f"{name}() takes {count} {plural}, got {len(arg_types)}")
        rest = tuple(zip(expr.args, arg_types, strict=True))
        return self.accept(expr, signature, target_type, target, rest)

    def accept(
        self,
        expr: Call,
        signature: Signature,
        subject_type: CelType,
        subject: Expr,
        rest: tuple[tuple[Expr, CelType], ...],
    ) -> CelType:
        """Check the receiver (or only argument) and any further arguments against `signature`."""
        role = "receiver" if expr.target is not None else "argument"
        if not signature.accepts(subject_type):
            where = _fragment(subject)
            message = f"{expr.function}() needs {signature.wants} {role}; {where} is {describe(subject_type)}"
            return self.report(subject.offset, message)
        for (arg, arg_type), wanted in zip(rest, signature.args, strict=True):
            if not compatible(arg_type, wanted):
                where = _fragment(arg)
                message = (
                    f"{expr.function}() needs {describe(wanted)} argument; {where} is {describe(arg_type)}"
                )
                self.report(arg.offset, message)
        return signature.result


def _common(types: list[CelType]) -> CelType:
    """The element type of a literal list or map: the one type all entries share, else DYN."""
    distinct = set(map(str, types))
    return types[0] if len(distinct) == 1 else DYN
