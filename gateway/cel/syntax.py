"""CEL source text to a frozen syntax tree: tokenizer and recursive-descent parser.

Follows the grammar of the CEL language definition (cel-spec doc/langdef.md, "Syntax"). The gateway
evaluates with a Rust library that exposes no syntax tree, so this parser exists to check conditions
statically at load time and to know which fields an expression reads. It deliberately refuses the
parts of the language a policy condition has no use for: message construction (`Foo{a: 1}`),
leading-dot names (`.x`) and optional syntax (`a.?b`, `[?x]`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final
from typing import Literal as TypingLiteral

from gateway.cel.lexer import INT_MAX, CelSyntaxError, LiteralValue, Token, tokenize

__all__ = [
    "Call",
    "CelSyntaxError",
    "Comprehension",
    "CreateList",
    "CreateMap",
    "Expr",
    "Ident",
    "Index",
    "Literal",
    "LiteralKind",
    "Select",
    "children",
    "parse",
    "unparse",
    "walk",
]

LiteralKind = TypingLiteral["bool", "int", "uint", "double", "string", "bytes", "null"]

MAX_DEPTH: Final = 32

# langdef.md "Syntax": reserved words may not be used as identifiers (they may be field names).
RESERVED: Final = frozenset(
    "as break const continue else for function if import let loop package namespace return var void"
    " while".split()
)
# Lexical keywords: never an identifier, not even after a dot.
KEYWORDS: Final = frozenset({"true", "false", "null", "in"})
MACROS: Final = {"all": (2,), "exists": (2,), "exists_one": (2,), "filter": (2,), "map": (2, 3)}


@dataclass(frozen=True, slots=True)
class Literal:
    """A constant: `true`, `1`, `2u`, `1.5`, `"s"`, `b"s"`, `null`."""

    value: LiteralValue
    kind: LiteralKind
    offset: int


@dataclass(frozen=True, slots=True)
class Ident:
    """A bare name: a declared variable, a comprehension variable or a type name."""

    name: str
    offset: int


@dataclass(frozen=True, slots=True)
class Select:
    """`operand.field`; with `test_only` it is the `has(operand.field)` macro."""

    operand: Expr
    field: str
    test_only: bool
    offset: int


@dataclass(frozen=True, slots=True)
class Index:
    """`operand[index]`."""

    operand: Expr
    index: Expr
    offset: int


@dataclass(frozen=True, slots=True)
class Call:
    """A function, method (`target` set) or operator call, operators named as in CEL (`_&&_`)."""

    function: str
    target: Expr | None
    args: tuple[Expr, ...]
    offset: int


@dataclass(frozen=True, slots=True)
class CreateList:
    """`[a, b]`."""

    items: tuple[Expr, ...]
    offset: int


@dataclass(frozen=True, slots=True)
class CreateMap:
    """`{k: v}`."""

    entries: tuple[tuple[Expr, Expr], ...]
    offset: int


@dataclass(frozen=True, slots=True)
class Comprehension:
    """A macro over a list or map: `range.macro(var, *body)`."""

    macro: str
    range: Expr
    var: str
    body: tuple[Expr, ...]
    offset: int


Expr = Literal | Ident | Select | Index | Call | CreateList | CreateMap | Comprehension


def children(expr: Expr) -> tuple[Expr, ...]:
    """The direct sub-expressions of `expr`, in source order."""
    match expr:
        case Select(operand=operand):
            return (operand,)
        case Index(operand=operand, index=index):
            return (operand, index)
        case Call(target=target, args=args):
            return args if target is None else (target, *args)
        case CreateList(items=items):
            return items
        case CreateMap(entries=entries):
            return tuple(part for entry in entries for part in entry)
        case Comprehension(range=range_, body=body):
            return (range_, *body)
    return ()


# --- parser ---------------------------------------------------------------------------------------

_RELATIONS: Final = {
    "==": "_==_",
    "!=": "_!=_",
    "<": "_<_",
    "<=": "_<=_",
    ">": "_>_",
    ">=": "_>=_",
    "in": "@in",
}
_ADDITIONS: Final = {"+": "_+_", "-": "_-_"}
_MULTIPLICATIONS: Final = {"*": "_*_", "/": "_/_", "%": "_%_"}


def parse(source: str) -> Expr:
    """Parse one CEL expression; raises CelSyntaxError with the offset of the first problem."""
    parser = _Parser(source, tokenize(source))
    expr = parser.expression()
    parser.expect_end()
    return expr


class _Parser:
    def __init__(self, source: str, tokens: list[Token]) -> None:
        self.source = source
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    # token helpers
    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def at(self, text: str) -> bool:
        token = self.peek()
        return token.kind in ("punct", "ident") and token.text == text

    def advance(self) -> Token:
        token = self.peek()
        self.pos += 1
        return token

    def expect(self, text: str, what: str) -> Token:
        if not self.at(text):
            raise self.unexpected(f"expected {text!r} {what}")
        return self.advance()

    def expect_end(self) -> None:
        if self.peek().kind != "eof":
            raise self.unexpected("expected the end of the expression")

    def unexpected(self, expected: str) -> CelSyntaxError:
        token = self.peek()
        found = "the end of the expression" if token.kind == "eof" else repr(token.text)
        return CelSyntaxError(f"unexpected {found}; {expected}", token.offset)

    def nested(self, offset: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise CelSyntaxError("nested too deeply", offset)

    # grammar, lowest precedence first
    def expression(self) -> Expr:
        self.nested(self.peek().offset)
        condition = self.binary_level(0)
        if self.at("?"):
            question = self.advance()
            then = self.binary_level(0)
            self.expect(":", "in a conditional a ? b : c")
            otherwise = self.expression()
            condition = Call("_?_:_", None, (condition, then, otherwise), question.offset)
        self.depth -= 1
        return condition

    def binary_level(self, level: int) -> Expr:
        """Left-associative operators: || then && then relations then + - then * / %."""
        if level == len(_LEVELS):
            return self.unary()
        operators = _LEVELS[level]
        left = self.binary_level(level + 1)
        while self.peek().kind in ("punct", "ident") and self.peek().text in operators:
            operator = self.advance()
            right = self.binary_level(level + 1)
            left = Call(operators[operator.text], None, (left, right), operator.offset)
        return left

    def unary(self) -> Expr:
        # langdef.md: Unary = Member | "!" {"!"} Member | "-" {"-"} Member (no mixing of ! and -).
        operator = self.peek().text if self.peek().kind == "punct" else ""
        if operator not in ("!", "-") or self.negative_number():
            return self.member()
        ops: list[Token] = []
        # As in the evaluator, a run of minuses is all operators: only a lone one joins a number.
        while self.at(operator):
            ops.append(self.advance())
            self.nested(ops[-1].offset)
        expr = self.member()
        for op in reversed(ops):
            expr = Call(f"{op.text}_", None, (expr,), op.offset)
            self.depth -= 1
        return expr

    def negative_number(self) -> bool:
        return self.at("-") and self.peek(1).kind in ("int", "double")

    def member(self) -> Expr:
        expr = self.primary()
        while True:
            if self.at("."):
                expr = self.selection(expr)
            elif self.at("["):
                bracket = self.advance()
                self.refuse_optional("[?x]")
                index = self.expression()
                self.expect("]", "to close the index")
                expr = Index(expr, index, bracket.offset)
            elif self.at("{"):
                raise CelSyntaxError(
                    f"message construction ('{unparse(expr)}{{...}}') is not supported; "
                    "write a map literal {'key': value}",
                    self.peek().offset,
                )
            else:
                return expr

    def selection(self, operand: Expr) -> Expr:
        self.advance()
        self.refuse_optional("a.?b")
        name = self.peek()
        if name.kind != "ident" or name.text in KEYWORDS:
            raise self.unexpected("expected a field name after '.'")
        self.advance()
        if not self.at("("):
            return Select(operand, name.text, False, name.offset)
        args = self.arguments()
        if name.text in MACROS and len(args) in MACROS[name.text]:
            return _comprehension(name, operand, args)
        return Call(name.text, operand, args, name.offset)

    def refuse_optional(self, example: str) -> None:
        if self.at("?"):
            raise CelSyntaxError(f"optional syntax ({example}) is not supported", self.peek().offset)

    def arguments(self) -> tuple[Expr, ...]:
        self.expect("(", "to start the arguments")
        args: list[Expr] = []
        if not self.at(")"):
            args.append(self.expression())
            while self.at(","):
                self.advance()
                args.append(self.expression())
        self.expect(")", "to close the arguments")
        return tuple(args)

    def primary(self) -> Expr:
        token = self.peek()
        if token.kind in ("int", "uint", "double", "string", "bytes"):
            self.advance()
            return _literal(token, negative=False)
        if self.negative_number():
            minus = self.advance()
            return _literal(self.advance(), negative=True, offset=minus.offset)
        if token.kind == "ident":
            return self.name(token)
        if self.at("("):
            self.advance()
            expr = self.expression()
            self.expect(")", "to close the parenthesis")
            return expr
        if self.at("["):
            return self.list_literal()
        if self.at("{"):
            return self.map_literal()
        if self.at(".") and self.peek(1).kind == "ident":
            raise CelSyntaxError("leading-dot identifiers ('.x') are not supported", token.offset)
        raise self.unexpected("expected a value, a name or '('")

    def name(self, token: Token) -> Expr:
        self.advance()
        constants: dict[str, tuple[LiteralValue, LiteralKind]] = {
            "true": (True, "bool"),
            "false": (False, "bool"),
            "null": (None, "null"),
        }
        if token.text in constants:
            value, kind = constants[token.text]
            return Literal(value, kind, token.offset)
        if token.text in RESERVED or token.text == "in":
            raise CelSyntaxError(f"{token.text!r} is a reserved word and cannot be a name", token.offset)
        if not self.at("("):
            return Ident(token.text, token.offset)
        args = self.arguments()
        if token.text == "has" and len(args) == 1:
            return _has(args[0], token.offset)
        return Call(token.text, None, args, token.offset)

    def list_literal(self) -> Expr:
        bracket = self.advance()
        items: list[Expr] = []
        while not self.at("]"):
            self.refuse_optional("[?x]")
            items.append(self.expression())
            if not self.at(","):
                break
            self.advance()
        self.expect("]", "to close the list")
        return CreateList(tuple(items), bracket.offset)

    def map_literal(self) -> Expr:
        brace = self.advance()
        entries: list[tuple[Expr, Expr]] = []
        while not self.at("}"):
            self.refuse_optional("{?k: v}")
            key = self.expression()
            self.expect(":", "between a map key and its value")
            entries.append((key, self.expression()))
            if not self.at(","):
                break
            self.advance()
        self.expect("}", "to close the map")
        return CreateMap(tuple(entries), brace.offset)


_LEVELS: Final = ({"||": "_||_"}, {"&&": "_&&_"}, _RELATIONS, _ADDITIONS, _MULTIPLICATIONS)


def _literal(token: Token, *, negative: bool, offset: int | None = None) -> Literal:
    value, kind = token.value, _LITERAL_KINDS[token.kind]
    if negative and isinstance(value, int | float):
        value = -value
    if kind == "int" and isinstance(value, int) and value > INT_MAX:
        raise CelSyntaxError(f"{token.text} is out of range for int", token.offset)
    return Literal(value, kind, token.offset if offset is None else offset)


_LITERAL_KINDS: Final[dict[str, LiteralKind]] = {
    "int": "int", "uint": "uint", "double": "double", "string": "string", "bytes": "bytes",
}  # fmt: skip


def _has(arg: Expr, offset: int) -> Expr:
    if not isinstance(arg, Select) or arg.test_only:
        raise CelSyntaxError("has() takes a field selection, e.g. has(a.b)", arg.offset)
    return Select(arg.operand, arg.field, True, offset)


def _comprehension(name: Token, operand: Expr, args: tuple[Expr, ...]) -> Comprehension:
    var = args[0]
    if not isinstance(var, Ident):
        raise CelSyntaxError(
            f"the first argument of {name.text}() must be a variable name, e.g. x.{name.text}(v, ...)",
            var.offset,
        )
    return Comprehension(name.text, operand, var.name, args[1:], name.offset)


# --- rendering ------------------------------------------------------------------------------------

_INFIX: Final = {name: text for level in _LEVELS for text, name in level.items()}


def unparse(expr: Expr) -> str:
    """CEL text for `expr`, for naming a fragment in a message (fully parenthesised operators)."""
    match expr:
        case Literal(value=value, kind=kind):
            return _render_literal(value, kind)
        case Ident(name=name):
            return name
        case Select(operand=operand, field=field, test_only=test_only):
            text = f"{unparse(operand)}.{field}"
            return f"has({text})" if test_only else text
        case Index(operand=operand, index=index):
            return f"{unparse(operand)}[{unparse(index)}]"
        case Call(function="_?_:_", args=(condition, then, otherwise)):
            return f"({unparse(condition)} ? {unparse(then)} : {unparse(otherwise)})"
        case Call(function=function, target=None, args=(left, right)) if function in _INFIX:
            return f"({unparse(left)} {_INFIX[function]} {unparse(right)})"
        case Call(function="!_" | "-_" as function, args=(operand,)):
            return f"{function[0]}{unparse(operand)}"
        case Call(function=function, target=target, args=args):
            prefix = "" if target is None else f"{unparse(target)}."
            return f"{prefix}{function}({', '.join(unparse(arg) for arg in args)})"
        case CreateList(items=items):
            return f"[{', '.join(unparse(item) for item in items)}]"
        case CreateMap(entries=entries):
            return "{" + ", ".join(f"{unparse(k)}: {unparse(v)}" for k, v in entries) + "}"
        case Comprehension(macro=macro, range=range_, var=var, body=body):
            return f"{unparse(range_)}.{macro}({', '.join([var, *map(unparse, body)])})"
    raise AssertionError(expr)  # pragma: no cover - the match covers every node


def _render_literal(value: LiteralValue, kind: LiteralKind) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, bytes):
        return "b" + repr(value)[1:]
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return f"{value}u" if kind == "uint" else repr(value)


def walk(expr: Expr) -> Iterator[Expr]:
    """Every node of `expr`, parents before children, without recursion."""
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(children(node)))
