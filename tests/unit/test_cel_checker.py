"""The CEL checker: what a condition reads, and each mistake a config author can make."""

from __future__ import annotations

import cel
import pytest

from gateway.cel import (
    BOOL,
    DYN,
    INT,
    STRING,
    CelError,
    CelType,
    Checked,
    FieldPath,
    ListType,
    MapType,
    RecordType,
    check,
)
from gateway.cel.syntax import Comprehension, Ident, walk
from gateway.cel.types import DOUBLE, compatible

PRINCIPAL = RecordType(
    "principal",
    {
        "issuer": STRING,
        "subject": STRING,
        "client_id": STRING,
        "scopes": ListType(STRING),
        "actor": MapType(STRING, DYN),
    },
    optional=frozenset({"client_id", "actor"}),
    absent_when={"actor": "the token has no act claim"},
)
DECLARATIONS: dict[str, CelType] = {
    "claims": MapType(STRING, DYN),
    "principal": PRINCIPAL,
    "tool": STRING,
    "arguments": MapType(STRING, DYN),
    "method": STRING,
    "route": STRING,
}


def _checked(source: str) -> Checked:
    return check(source, DECLARATIONS)


def _problems(source: str) -> list[tuple[int, str]]:
    with pytest.raises(CelError) as caught:
        check(source, DECLARATIONS)
    return [(problem.offset, problem.message) for problem in caught.value.problems]


def _messages(source: str) -> list[str]:
    return [message for _, message in _problems(source)]


# --- types --------------------------------------------------------------------------------------


def test_type_names_read_well() -> None:
    """Types print as an author would write them."""
    assert [str(t) for t in (STRING, ListType(STRING), MapType(STRING, DYN), PRINCIPAL)] == [
        "string",
        "list(string)",
        "map(string, dyn)",
        "principal",
    ]


def test_record_declarations_are_checked_and_frozen() -> None:
    """A record's optional keys must be fields, and its fields cannot be changed afterwards."""
    with pytest.raises(ValueError, match="optional names no field: nope"):
        RecordType("r", {"a": INT}, optional=frozenset({"nope"}))
    fields = {"a": INT}
    record = RecordType("r", fields)
    fields["b"] = INT
    assert list(record.fields) == ["a"]
    assert hash(record) == hash(RecordType("r", {"a": INT}))


def test_dyn_is_compatible_with_everything() -> None:
    """DYN meets any type, also inside containers; distinct known types do not meet."""
    assert compatible(DYN, PRINCIPAL) and compatible(ListType(DYN), ListType(INT))
    assert not compatible(INT, DOUBLE) and not compatible(ListType(INT), ListType(STRING))
    assert compatible(PRINCIPAL, MapType(STRING, DYN)) and not compatible(PRINCIPAL, MapType(INT, DYN))


# --- what an expression reads -------------------------------------------------------------------


def test_selection_chains_are_paths() -> None:
    """`principal.actor.sub` is read as one path from its root, and the root is not read whole."""
    checked = _checked('principal.actor.sub == "x" && principal.subject != ""')
    assert checked.paths == (
        FieldPath(("principal", "actor", "sub"), 0, False),
        FieldPath(("principal", "subject"), 30, False),
    )
    assert (checked.roots, checked.whole) == (frozenset({"principal"}), frozenset())
    assert checked.result == BOOL


def test_index_by_a_string_literal_is_a_path() -> None:
    """`arguments["x-y"]` reads the field x-y like a selection does."""
    checked = _checked('arguments["x-y"].z == 1')
    assert checked.paths == (FieldPath(("arguments", "x-y", "z"), 0, False),)
    assert checked.whole == frozenset()


def test_has_is_a_test_only_path() -> None:
    """`has(arguments.repo)` reads only whether repo is present."""
    assert _checked("has(arguments.repo)").paths == (FieldPath(("arguments", "repo"), 4, True),)


@pytest.mark.parametrize(
    ("source", "whole"),
    [
        ("arguments == {}", {"arguments"}),
        ("arguments[tool] == 1", {"arguments", "tool"}),
        ("claims.size() > 2", {"claims"}),
        ('"x" in claims', {"claims"}),
        ("size(arguments) == 0 && arguments.a == 1", {"arguments"}),
        ("principal.scopes.size() > 0", set()),
        ("principal.scopes[0] == 'a'", set()),
        ("arguments.all(k, k != 'x')", {"arguments"}),
    ],
)
def test_whole_roots(source: str, whole: set[str]) -> None:
    """A root used other than as the start of a selection is read whole."""
    assert _checked(source).whole == frozenset(whole)


def test_roots_are_the_declared_variables_read() -> None:
    """Comprehension variables and type names are not roots; declared variables are."""
    checked = _checked("principal.scopes.exists(s, s == tool) && type(method) == string")
    assert checked.roots == frozenset({"principal", "tool", "method"})


def test_literal_regexes_are_collected() -> None:
    """Each literal pattern given to matches() is listed with its offset, for the caller to compile."""
    source = "tool.matches('^git_') || route.matches(\"[a-z]+\") || tool.matches(method)"
    checked = _checked(source)
    assert checked.regexes == (("^git_", source.index("'^git_'")), ("[a-z]+", source.index('"[a-z]+"')))


def test_a_path_through_a_comprehension_variable_is_not_a_path() -> None:
    """Selections from a comprehension variable are not paths of a declared root."""
    checked = _checked("arguments.items.all(i, i.name != '')")
    assert checked.paths == (FieldPath(("arguments", "items"), 0, False),)


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("argumnets.repo == 1", (0, "undeclared identifier 'argumnets'; did you mean 'arguments'?")),
        (
            "zzz",
            (
                0,
                "undeclared identifier 'zzz'; "
                "declared are: arguments, claims, method, principal, route, tool",
            ),
        ),
        (
            "principal.subjct == 'a'",
            (
                10,
                "principal has no field 'subjct' (did you mean 'subject'?); "
                "it has: issuer, subject, client_id, scopes, actor",
            ),
        ),
        ("tool.name == 'a'", (5, "tool is a string; it has no fields")),
        ("principal.scopes.first == 'a'", (17, "principal.scopes is a list(string); it has no fields")),
        ("tool['a'] == 'a'", (4, "tool is a string; it cannot be indexed by a string")),
        ("tool[0] == 'a'", (4, "tool is a string; it cannot be indexed")),
        (
            "principal.scopes['a'] == 'a'",
            (16, "principal.scopes is a list(string); it cannot be indexed by a string"),
        ),
        ("principal.scopes[tool] == 'a'", (16, "a list index must be an int; this is a string")),
        ("has(tool.x)", (0, "has() needs a map; tool is a string")),
        (
            "principal.actor == null",
            (
                16,
                "principal.actor is absent, not null, when the token has no act claim: "
                "write has(principal.actor)",
            ),
        ),
        (
            "null != principal.client_id",
            (
                5,
                "principal.client_id is absent, not null, when principal has no 'client_id': "
                "write has(principal.client_id)",
            ),
        ),
        ("1 == 'a'", (2, 'found no overload for _==_ on (int, string) in 1 == "a"')),
        ("tool == null", (5, "found no overload for _==_ on (string, null) in tool == null")),
        ("tool < 1", (5, "found no overload for _<_ on (string, int) in tool < 1")),
        ("[1] < [2]", (4, "found no overload for _<_ on (list(int), list(int)) in [1] < [2]")),
        ("1 + 2u == 3u", (2, "found no overload for _+_ on (int, uint) in 1 + 2u")),
        ("1.0 - 1 == 0.0", (4, "found no overload for _-_ on (double, int) in 1.0 - 1")),
        ("5.0 % 2.0 == 1.0", (4, "found no overload for _%_ on (double, double) in 5.0 % 2.0")),
        ("true + true", (5, "found no overload for _+_ on (bool, bool) in true + true")),
        ("-1u == 1u", (0, "found no overload for -_ on (uint) in -1u")),
        ("tool && true", (0, "'&&' needs a bool; tool is a string")),
        ("true || 1", (8, "'||' needs a bool; 1 is an int")),
        ("!method", (1, "'!' needs a bool; method is a string")),
        ("tool ? true : false", (0, "the condition of '? :' must be a bool; tool is a string")),
        (
            "1 in principal.scopes",
            (2, "found no overload for @in on (int, list(string)) in 1 in principal.scopes"),
        ),
        ("1 in claims", (2, "found no overload for @in on (int, map(string, dyn)) in 1 in claims")),
        ("'a' in tool", (4, "'in' needs a list or a map on its right; tool is a string")),
        ("{'a': 1}[1] == 1", (8, '{"a": 1} has string keys; the index is an int')),
        ("tool.startswith('a')", (5, "unknown method 'startswith'; did you mean 'startsWith'?")),
        (
            "tool.lowerAscii() == 'a'",
            (5, "lowerAscii is not available: the evaluator has no CEL extension libraries"),
        ),
        ("sise(tool) == 1", (0, "unknown function 'sise'; did you mean 'size'?")),
        ("startsWith(tool, 'a')", (0, "startsWith() is a method: write x.startsWith(...)")),
        ("matches(tool, 'a')", (0, "matches() is a method: write x.matches(...)")),
        ("tool.int() == 1", (5, "int() is a function, not a method: write int(x)")),
        ("all(claims, true)", (0, "all() is a macro used as list.all(x, ...)")),
        ("claims.all(1) == true", (7, "all() takes a variable name and an expression")),
        ("tool.startsWith('a', 'b')", (5, "startsWith() takes 1 argument, got 2")),
        ("tool.startsWith(1)", (16, "startsWith() needs a string argument; 1 is an int")),
        (
            "principal.scopes.contains('a')",
            (10, "contains() needs a string receiver; principal.scopes is a list(string)"),
        ),
        ("size(1) == 1", (5, "size() needs a string, bytes, list or map argument; 1 is an int")),
        (
            "int(true) == 1",
            (4, "int() needs an int, uint, double, string or timestamp argument; true is a bool"),
        ),
        ("int(1, 2) == 1", (0, "int() takes 1 argument, got 2")),
        ("timestamp(1) < timestamp('x')", (10, "timestamp() needs a string argument; 1 is an int")),
        ("tool.all(c, true)", (5, "all() needs a list or a map; tool is a string")),
        ("principal.scopes.all(s, s)", (24, "the predicate of all() must be a bool; s is a string")),
        (
            "principal.scopes.map(s, s, s).size() > 0",
            (24, "the predicate of map() must be a bool; s is a string"),
        ),
        (
            "claims.exists(tool, true)",
            (7, "the variable 'tool' of exists() shadows a declared variable; rename it"),
        ),
        ("tool", (0, "a condition must be a bool; this is a string")),
        ("principal.scopes.filter(s, s == 'a')", (0, "a condition must be a bool; this is a list(string)")),
        ("{1.5: 1}.size() > 0", (1, "a map key must be an int, uint, bool or string; this is double")),
    ],
)
def test_each_error_has_its_message(source: str, problem: tuple[int, str]) -> None:
    """Each mistake is reported at the offending node with a message naming the fragment."""
    assert _problems(source) == [problem]


def test_duration_plus_timestamp_is_refused_like_the_evaluator_does() -> None:
    """Only `timestamp + duration` is allowed: the evaluator refuses `duration + timestamp`."""
    now = "timestamp('2020-01-01T00:00:00Z')"
    _checked(f"{now} + duration('1s') > {now}")
    _checked("duration('1s') + duration('1s') > duration('1s')")
    _checked(f"{now} - {now} == duration('0s') && {now} - duration('1s') < {now}")
    assert _messages(f"duration('1s') + {now} > {now}")[0].startswith(
        "found no overload for _+_ on (duration, timestamp)"
    )


def test_nested_comprehensions_are_refused() -> None:
    """A comprehension in the body or the range of another is refused for its quadratic cost."""
    refused = "a comprehension inside another is refused: its cost could be the square of an argument's size"
    assert _problems("principal.scopes.all(s, principal.scopes.exists(t, t == s))") == [(41, refused)]
    assert _problems("principal.scopes.filter(s, s != '').all(t, t != '')") == [(17, refused)]


def test_a_variable_reused_in_its_own_scope_is_refused() -> None:
    """An inner comprehension that reuses the outer variable's name is reported."""
    messages = _messages("principal.scopes.all(s, [s].all(s, s != ''))")
    assert "the variable 's' is already in use here; rename it" in messages


def test_problems_are_collected_together() -> None:
    """All problems of a condition are reported at once, in source order."""
    assert [offset for offset, _ in _problems("tool.x == 1 && principal.subjct == 'a' && nope")] == [
        5,
        25,
        42,
    ]


def test_syntax_errors_become_one_problem() -> None:
    """A syntax error is reported as a problem with its offset."""
    assert _problems("tool ==") == [
        (7, "unexpected the end of the expression; expected a value, a name or '('")
    ]


def test_limits() -> None:
    """A condition over the length or node limit is refused with one problem naming the limit."""
    assert _problems("true && " * 200 + "true") == [
        (1024, "the condition is 1604 characters long; the limit is 1024")
    ]
    assert _problems(" || ".join(["tool == 'a'"] * 67)) == [
        (0, "the condition has 267 parts; the limit is 200")
    ]
    check("tool == 'a'", DECLARATIONS, max_nodes=3)
    with pytest.raises(CelError, match="the limit is 2"):
        check("tool == 'a'", DECLARATIONS, max_nodes=2)
    with pytest.raises(CelError, match="the limit is 10"):
        check("tool == 'abc'", DECLARATIONS, max_length=10)


@pytest.mark.parametrize(
    "source",
    [
        "claims.anything.at.all == 1",
        "claims.x + 1 == 2",
        "dyn(tool) + 1 == 2",
        "claims.x < 1.5",
        "claims.x in [1, 2]",
        "principal.actor.sub == null",
        "principal.subject == claims.sub",
        "claims.roles.exists(r, r == 'admin')",
        "claims.n == 1u && 1 == 1.0 && 1 < 2u",
        "principal.actor == claims.act || has(principal.actor)",
        "claims.groups + ['x'] == []",
        "size(principal.scopes) == principal.scopes.size()",
        "(claims.ok ? 1 : 'a') == 1",
        "principal.scopes.exists_one(s, s.endsWith(':write'))",
        "arguments.map(k, k.size() > 2, k).size() > 0",
        "principal['subject'].startsWith('u') && 'scopes' in principal",
        "uint(claims.n) > 1u && double('1.5') > 1.0 && string(1) == '1' && bytes('a') == b'a'",
        "type(claims.x) == int && type(claims.y) == list",
        "claims.x == null && arguments == null",
        "tool.matches('^git_') && tool.contains('_') && method.startsWith('tools/')",
    ],
)
def test_valid_conditions(source: str) -> None:
    """Conditions that are right, including gradual ones through DYN, are accepted as bool or dyn."""
    assert _checked(source).result in (BOOL, DYN)


def test_ternary_type() -> None:
    """A conditional's type is its branches' type when they agree, else dyn."""
    with pytest.raises(CelError, match="this is an int"):
        _checked("true ? 1 : 2")
    assert _checked("true ? 1 : 'a'").result == DYN


@pytest.mark.parametrize(
    "source",
    [
        "principal.actor.sub == 'x' && arguments['x-y'] == 1",
        "claims.roles.exists(r, r == tool)",
        "principal.scopes.all(s, true) || has(claims.a)",
        "type(method) == string && route.startsWith('/mcp')",
        "arguments.map(k, k.size() > 2, k).size() > 0",
    ],
)
def test_roots_agree_with_the_evaluator(source: str) -> None:
    """Our roots, plus the comprehension variables and type names used, are the evaluator's variables."""
    checked = _checked(source)
    nodes = list(walk(checked.expr))
    bound = {node.var for node in nodes if isinstance(node, Comprehension)}
    used = {node.name for node in nodes if isinstance(node, Ident)}
    assert checked.roots | (used & bound) | (used & {"string", "int"}) == set(cel.compile(source).variables())
