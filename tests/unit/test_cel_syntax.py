"""The CEL parser: literals, precedence, refused constructs, and agreement with the real evaluator."""

from __future__ import annotations

import cel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def _compiles(source: str) -> bool:
    try:
        cel.compile(source)
    except Exception:  # the library raises ValueError, and may raise others on odd input
        return False
    return True


def _parses(source: str) -> bool:
    try:
        parse(source)
    except CelSyntaxError:
        return False
    return True


def _identifiers(expr: Expr) -> set[str]:
    return {node.name for node in walk(expr) if isinstance(node, Ident)}


def _lit(source: str) -> Literal:
    expr = parse(source)
    assert isinstance(expr, Literal)
    return expr


# --- literals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "value", "kind"),
    [
        ("true", True, "bool"),
        ("false", False, "bool"),
        ("null", None, "null"),
        ("0", 0, "int"),
        ("42", 42, "int"),
        ("0x1F", 31, "int"),
        ("0xff", 255, "int"),
        ("9223372036854775807", 2**63 - 1, "int"),
        ("-9223372036854775808", -(2**63), "int"),
        ("-0x8000000000000000", -(2**63), "int"),
        ("1u", 1, "uint"),
        ("7U", 7, "uint"),
        ("0x1Fu", 31, "uint"),
        ("18446744073709551615u", 2**64 - 1, "uint"),
        ("1.5", 1.5, "double"),
        ("1e3", 1000.0, "double"),
        ("1E-2", 0.01, "double"),
        ("1.5e+2", 150.0, "double"),
        (".5", 0.5, "double"),
        ("-2.5", -2.5, "double"),
        ('"abc"', "abc", "string"),
        ("'abc'", "abc", "string"),
        ("'''a'b\nc'''", "a'b\nc", "string"),
        ('"""a"b\nc"""', 'a"b\nc', "string"),
        (r'r"a\nb"', "a\\nb", "string"),
        (r"R'\d+'", "\\d+", "string"),
        (r"r'''\x'''", "\\x", "string"),
        ('b"abc"', b"abc", "bytes"),
        ("B'é'", "é".encode(), "bytes"),
        (r'br"\n"', b"\\n", "bytes"),
        (r'b"\xff\377"', b"\xff\xff", "bytes"),
    ],
)
def test_literal_forms(source: str, value: object, kind: str) -> None:
    """Every literal spelling of the language definition parses to its value and kind."""
    literal = _lit(source)
    assert (literal.value, literal.kind) == (value, kind)
    assert type(literal.value) is type(value)


@pytest.mark.parametrize(
    ("escape", "value"),
    [
        (r"\n", "\n"),
        (r"\t", "\t"),
        (r"\\", "\\"),
        (r"\"", '"'),
        (r"\'", "'"),
        (r"\`", "`"),
        (r"\?", "?"),
        (r"\a", "\a"),
        (r"\b", "\b"),
        (r"\f", "\f"),
        (r"\r", "\r"),
        (r"\v", "\v"),
        (r"\x41", "A"),
        (r"\X4a", "J"),
        (r"\u00e9", "é"),
        (r"\U0001F600", "\U0001f600"),
        (r"\101", "A"),
        (r"\377", "ÿ"),
        (r"\000", "\x00"),
    ],
)
def test_string_escapes(escape: str, value: str) -> None:
    """Each escape sequence of the spec decodes to the character it names."""
    assert _lit(f'"<{escape}>"').value == f"<{value}>"


@pytest.mark.parametrize(
    ("source", "offset"),
    [
        (r'"\q"', 1),
        (r'"\x4"', 1),
        (r'"\400"', 1),
        (r'"\0"', 1),
        (r'"\uD800"', 1),
        (r'"\U00110000"', 1),
        (r'b"\u0041"', 2),
        ('"abc', 0),
        ('"a\nb"', 0),
        ("'''abc", 0),
        ("9223372036854775808", 0),
        ("18446744073709551616u", 0),
        ("0x8000000000000000", 0),
        ("1.5u", 0),
        ("1e999", 0),
    ],
)
def test_bad_literals(source: str, offset: int) -> None:
    """A malformed escape, an unterminated string or an out-of-range number is refused where it is."""
    with pytest.raises(CelSyntaxError) as caught:
        parse(source)
    assert caught.value.offset == offset


# --- shapes and precedence --------------------------------------------------------------------------


def test_or_binds_looser_than_and() -> None:
    """`a || b && c` groups as `a || (b && c)`."""
    assert parse("a || b && c") == Call(
        "_||_", None, (Ident("a", 0), Call("_&&_", None, (Ident("b", 5), Ident("c", 10)), 7)), 2
    )


def test_not_binds_tighter_than_equality() -> None:
    """`!a == b` is `(!a) == b`."""
    assert parse("!a == b") == Call("_==_", None, (Call("!_", None, (Ident("a", 1),), 0), Ident("b", 6)), 3)


def test_negative_literals_and_subtraction() -> None:
    """`-1 - -2` subtracts two negative literals."""
    assert parse("-1 - -2") == Call("_-_", None, (Literal(-1, "int", 0), Literal(-2, "int", 5)), 3)


def test_member_chain() -> None:
    """`a.b[0].c(d)` is a method call on an index of a selection."""
    inner = Index(Select(Ident("a", 0), "b", False, 2), Literal(0, "int", 4), 3)
    assert parse("a.b[0].c(d)") == Call("c", inner, (Ident("d", 9),), 7)


def test_ternary_is_right_associative() -> None:
    """`a ? b : c ? d : e` is `a ? b : (c ? d : e)`."""
    expr = parse("a ? b : c ? d : e")
    assert isinstance(expr, Call) and expr.function == "_?_:_"
    assert expr.args[:2] == (Ident("a", 0), Ident("b", 4))
    assert unparse(expr.args[2]) == "(c ? d : e)"


@pytest.mark.parametrize(
    ("source", "shape"),
    [
        ("a + b * c", "(a + (b * c))"),
        ("a - b - c", "((a - b) - c)"),
        ("a < b == c", "((a < b) == c)"),
        ("a in b && c", "((a in b) && c)"),
        ("a + b < c", "((a + b) < c)"),
        ("a * -b", "(a * -b)"),
        ("!!a", "!!a"),
        ("--a", "--a"),
        ("-a.b", "-a.b"),
        ("(a || b) && c", "((a || b) && c)"),
        ("a % b / c", "((a % b) / c)"),
        ("-1.size()", "-1.size()"),
        ("{'k': [1, 2u]}['k']", '{"k": [1, 2u]}["k"]'),
    ],
)
def test_precedence(source: str, shape: str) -> None:
    """Operators group by the precedence table of the language definition."""
    assert unparse(parse(source)) == shape


def test_lists_and_maps_allow_a_trailing_comma() -> None:
    """`[1, 2,]` and `{1: 2,}` are literals, as in the spec grammar."""
    assert parse("[1, 2,]") == CreateList((Literal(1, "int", 1), Literal(2, "int", 4)), 0)
    assert parse("{1: 2,}") == CreateMap(((Literal(1, "int", 1), Literal(2, "int", 4)),), 0)


def test_has_is_a_test_only_selection() -> None:
    """`has(a.b)` becomes a test-only selection."""
    assert parse("has(a.b)") == Select(Ident("a", 4), "b", True, 0)


@pytest.mark.parametrize(
    ("source", "macro", "body_size"),
    [
        ("x.all(v, v)", "all", 1),
        ("x.exists(v, v)", "exists", 1),
        ("x.exists_one(v, v)", "exists_one", 1),
        ("x.filter(v, v)", "filter", 1),
        ("x.map(v, v)", "map", 1),
        ("x.map(v, v, v)", "map", 2),
    ],
)
def test_macros(source: str, macro: str, body_size: int) -> None:
    """Each comprehension macro parses with its variable and body."""
    expr = parse(source)
    assert isinstance(expr, Comprehension)
    assert (expr.macro, expr.var, len(expr.body), expr.range) == (macro, "v", body_size, Ident("x", 0))


def test_a_macro_name_with_other_arguments_is_a_call() -> None:
    """`x.all(v)` is an ordinary method call (the checker refuses it), as in the evaluator."""
    assert parse("x.all(v)") == Call("all", Ident("x", 0), (Ident("v", 6),), 2)


def test_comments_and_whitespace() -> None:
    """Line comments and any whitespace separate tokens."""
    assert unparse(parse("a // first\n\t+\r\n b")) == "(a + b)"


# --- refused constructs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "offset", "message"),
    [
        ("Foo{a: 1}", 3, "message construction"),
        ("a.b{}", 3, "message construction"),
        (".x", 0, "leading-dot"),
        ("a.?b", 2, "optional syntax"),
        ("[?x]", 1, "optional syntax"),
        ("a[?x]", 2, "optional syntax"),
        ("{?a: 1}", 1, "optional syntax"),
        ("has(x)", 4, "has() takes a field selection, e.g. has(a.b)"),
        ("has(a[0])", 5, "has() takes a field selection"),
        ("x.all(1, true)", 6, "must be a variable name"),
        ("x.map(v.w, v)", 8, "must be a variable name"),
        ("if", 0, "reserved word"),
        ("a + let", 4, "reserved word"),
        ("namespace(1)", 0, "reserved word"),
        ("in", 0, "reserved word"),
        ("a.in", 2, "expected a field name"),
        ("a.true", 2, "expected a field name"),
        ("-!a", 1, "unexpected '!'"),
        ("!-a", 1, "unexpected '-'"),
        ("a ? b ? c : d : e", 6, "expected ':'"),
        ("1 +", 3, "unexpected the end of the expression"),
        ("a b", 2, "expected the end"),
        ("f(1,)", 4, "unexpected ')'"),
        ("a & b", 2, "unexpected character '&'"),
        ("é", 0, "unexpected character"),
    ],
)
def test_refused_constructs(source: str, offset: int, message: str) -> None:
    """Constructs a condition may not use are refused with a clear message at their offset."""
    with pytest.raises(CelSyntaxError) as caught:
        parse(source)
    assert (caught.value.offset, message in caught.value.message) == (offset, True), caught.value.message


def test_reserved_words_may_be_field_names() -> None:
    """`a.if` selects a field called `if`, as the evaluator allows."""
    assert parse("a.if") == Select(Ident("a", 0), "if", False, 2)


def test_nesting_limit() -> None:
    """More than 32 levels of nesting is refused; 32 is fine."""
    assert parse("(" * 31 + "1" + ")" * 31) == Literal(1, "int", 31)
    with pytest.raises(CelSyntaxError, match="nested too deeply"):
        parse("(" * 40 + "1" + ")" * 40)
    with pytest.raises(CelSyntaxError, match="nested too deeply"):
        parse("!" * 40 + "a")
    with pytest.raises(CelSyntaxError, match="nested too deeply"):
        parse("[" * 40 + "]" * 40)


# --- differential tests against the evaluator -------------------------------------------------------

VALID = [
    "true",
    "false && true || !false",
    "null == null",
    "1 + 2 * 3 - 4 / 2 % 3",
    "-9223372036854775808",
    "--9223372036854775807",
    "0x7fffffffffffffff",
    "18446744073709551615u",
    "1.5e3 + .25 - 2E-2",
    "'single' + \"double\"",
    "'''tri'ple''' + \"\"\"tri\"ple\"\"\"",
    r'r"raw\n" + R"\d"',
    r'"esc \n\t\\\"\'\`\?\a\b\f\r\v \x41\X42 \u00e9 \U0001F600 \101"',
    r'b"\xff\377" + B"abc" + br"\n"',
    "[1, 2, 3].size() == 3",
    "{'a': 1, 'b': 2}['a'] == 1",
    "[1,2,].size() > 0",
    "{1: 2,}[1] == 2",
    "a",
    "a.b.c",
    "a.b[0].c(d)",
    "a[b][c]",
    "a.b(c, d).e",
    "has(a.b)",
    "has(a.b.c) && a.b.c",
    "a ? b : c",
    "a ? b : c ? d : e",
    "(a ? b : c) ? d : e",
    "a || b && c",
    "!a == b",
    "!!a",
    "--a",
    "-1 - -2",
    "!-1",
    "-1.size()",
    "a in [1, 2]",
    "'k' in {'k': v}",
    "a < b && b <= c && c > d && d >= e && e != f",
    "1 < 2 < 3",
    "x.all(y, y > 0)",
    "x.exists(y, y == z)",
    "x.exists_one(y, y)",
    "x.filter(y, y > 1)",
    "x.map(y, y * 2)",
    "x.map(y, y > 1, y * 2)",
    "x.all(y, y).size()",
    "a.all(b, c).all(d, e)",
    "[1, 2].map(n, n + k)",
    "x.all(v)",
    "x.map(y, y, y, y)",
    "size(a) + a.size()",
    "int('3') + int(u) == double(d)",
    "type(1) == int",
    "string(1) == 'x' && bytes('a') == b'a'",
    "timestamp('2020-01-01T00:00:00Z') < timestamp(t)",
    "duration('1s') + duration(d)",
    "dyn(a) == b",
    "a.startsWith('x') || a.endsWith('y') || a.contains('z') || a.matches('^w+$')",
    "a.if",
    "a.exists(has, true)",
    "has(has.b)",
    "f()",
    "has(a, b)",
    "principal.actor.sub == 'x' && arguments['x-y'] == 1",
    "claims.scope.split(' ').exists(s, s == 'read')",
    "{a: 1}.a == 1",
    "a // comment\n && b",
    "   \t\r\n a",
    "[[1]].all(x, x.all(y, y > 0))",
    "a._b_ == _c",
    "00 + 01",
    "5.e1",
]

MALFORMED = [
    "",
    " ",
    "1 +",
    "a b",
    "1 1",
    "(1",
    "1)",
    "]",
    "[1",
    "{1:2",
    "{1}",
    "{1:}",
    "f(",
    "f(1,)",
    "a.",
    "a..b",
    "a.0",
    "a[]",
    "()",
    "&&",
    "a & b",
    "a | b",
    "a = b",
    "a === b",
    "a <> b",
    "1 ? 2",
    "a ? b ? c : d : e",
    "a.?b",
    "[?a]",
    "{?a: 1}",
    "has(x)",
    "has(a[0])",
    "x.all(1, true)",
    "x.exists(y.z, true)",
    "if",
    "let",
    "as",
    "in",
    "in x",
    "x in",
    "a.in",
    "a.true",
    "true()",
    "-!true",
    '"\\q"',
    '"\\x4"',
    '"\\400"',
    '"\\uD800"',
    "b'\\u0041'",
    '"abc',
    '"a\nb"',
    "'''abc",
    "9223372036854775808",
    "--9223372036854775808",
    "18446744073709551616u",
    "0x8000000000000000",
    "0X1f",
    "1.",
    "1.5u",
    "1e3u",
    "1e999",
    "12abc",
    "1.2.3",
    "rb'x'",
    "é",
    "#",
    "1 /* c */",
    "a.b(c)(d)",
]


@pytest.mark.parametrize("source", VALID)
def test_names_read_agree_with_the_evaluator(source: str) -> None:
    """For valid expressions, the names we find are exactly those the evaluator reports."""
    assert _compiles(source)
    assert _identifiers(parse(source)) == set(cel.compile(source).variables())


def test_corpora_are_large_enough() -> None:
    """The differential corpora cover at least 60 valid and 30 malformed expressions."""
    assert len(VALID) >= 60 and len(MALFORMED) >= 30


@pytest.mark.parametrize("source", MALFORMED)
def test_malformed_expressions_are_rejected_by_both(source: str) -> None:
    """Each malformed expression is refused by us and by the evaluator."""
    assert not _compiles(source)
    assert not _parses(source)


def _closed(source: str) -> bool:
    return not _compiles(source) or not cel.compile(source).variables()


@pytest.mark.parametrize("source", [source for source in VALID + MALFORMED if _closed(source)])
def test_closed_expressions_parse_iff_the_evaluator_compiles_them(source: str) -> None:
    """An expression without variables parses here exactly when the evaluator compiles it."""
    assert _parses(source) == _compiles(source)


# Deliberate differences, where we refuse and the evaluator accepts: message construction (`Foo{}`),
# leading-dot names (`.x`), `[,]` and `{,}` (its parser recovers from them), and nesting past 32.
ACCEPTED_ONLY_BY_THE_EVALUATOR = ["Foo{a: 1}", "x{}", ".x", ".x.y", "[,]", "{,}", "(" * 40 + "1" + ")" * 40]


@pytest.mark.parametrize("source", ACCEPTED_ONLY_BY_THE_EVALUATOR)
def test_deliberate_differences(source: str) -> None:
    """The constructs we refuse on purpose are indeed accepted by the evaluator."""
    assert _compiles(source)
    assert not _parses(source)


_SOUP = [
    *("a", "b", "x", "has", "all", "map", "size", "in", "if", "true", "null", "int"),
    *("0", "1", "2u", "1.5", ".5", "0x1f", "1e3", '"s"', "'t'", 'b"b"', 'r"\\n"', '"\\n"', '"\\q"'),
    *("(", ")", "[", "]", "{", "}", ".", ",", ":", "?", "!", "-", "+", "*", "/", "%"),
    *("==", "!=", "<", "<=", ">=", "&&", "||", " ", "//c\n", "u", "e", "x.y", "a[0]", "f(1)"),
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_SOUP), min_size=1, max_size=8))
def test_token_soups_rejected_by_the_evaluator_are_rejected(tokens: list[str]) -> None:
    """Whatever the evaluator's parser refuses, ours refuses too."""
    source = "".join(tokens)
    if not _compiles(source):
        assert not _parses(source), source


def _expressions() -> st.SearchStrategy[str]:
    leaves = st.sampled_from(["a", "b.c", "1", "2u", "1.5", "'s'", "true", "null", "[]", "{}"])

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        binary = st.tuples(inner, st.sampled_from(["+", "-", "&&", "||", "==", "<", " in ", "*"]), inner)
        return st.one_of(
            binary.map("".join),
            inner.map(lambda e: f"!{e}"),
            inner.map(lambda e: f"-{e}"),
            inner.map(lambda e: f"({e})"),
            inner.map(lambda e: f"[{e}]"),
            inner.map(lambda e: f"{e}.f"),
            inner.map(lambda e: f"{e}[0]"),
            inner.map(lambda e: f"{e}.all(v, v)"),
            inner.map(lambda e: f"has({e}.f)"),
            st.tuples(inner, inner, inner).map(lambda t: f"{t[0]} ? {t[1]} : {t[2]}"),
        )

    return st.recursive(leaves, extend, max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(_expressions())
def test_random_expressions_agree_with_the_evaluator(source: str) -> None:
    """For small random expressions, we reject what the evaluator rejects and read the same names."""
    if not _compiles(source):
        assert not _parses(source), source
    elif _parses(source):
        assert _identifiers(parse(source)) == set(cel.compile(source).variables())


_ESCAPES = [(r"\n", "\n"), (r"\\", "\\"), (r"\x41", "A"), (r"\101", "A"), (r"\u00e9", "é"), (r"\t", "\t")]
_ESCAPES += [(r"\U0001F600", "\U0001f600"), (r"\"", '"'), (r"\'", "'"), (r"\?", "?"), (r"\`", "`")]


@st.composite
def _string_literals(draw: st.DrawFn) -> tuple[str, str]:
    pieces = draw(
        st.lists(
            st.one_of(
                st.sampled_from(_ESCAPES),
                st.text(
                    st.characters(blacklist_characters="\\'\"\r\n", blacklist_categories=["Cs"]), max_size=3
                ).map(lambda t: (t, t)),
            ),
            max_size=6,
        )
    )
    quote = draw(st.sampled_from(["'", '"', "'''", '"""']))
    return quote + "".join(p[0] for p in pieces) + quote, "".join(p[1] for p in pieces)


@settings(max_examples=300, deadline=None)
@given(_string_literals())
def test_string_literal_values_agree_with_the_evaluator(literal: tuple[str, str]) -> None:
    """A string literal with escapes decodes to what the evaluator evaluates it to."""
    source, expected = literal
    assert _lit(source).value == expected == cel.evaluate(source)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.booleans())
def test_int_literal_values_agree_with_the_evaluator(number: int, as_hex: bool) -> None:
    """Decimal and hex int literals, negative ones included, have the value the evaluator gives."""
    digits = hex(abs(number)) if as_hex else str(abs(number))
    source = f"-{digits}" if number < 0 else digits
    assert _lit(source).value == number == cel.evaluate(source)


@pytest.mark.parametrize("source", ["true", "false", "2u", "0xffu", "1.25", "b'\\x00\\377'"])
def test_other_literal_values_agree_with_the_evaluator(source: str) -> None:
    """Bool, uint, double and bytes literals have the value the evaluator gives."""
    assert _lit(source).value == cel.evaluate(source)
