"""Property: no call whose condition is not true reaches the upstream; every call whose condition
is true (and whose scopes are held) does.

Random conditions from a small CEL grammar over ``arguments``, ``claims`` and ``principal``, random
arguments (present, absent, of the wrong type) and random claims, sent through the real gateway
(config text → load → listener → policy → forward) in front of a tiny recording upstream. The
oracle is written here from the CEL spec (langdef.md: errors are absorbed by ``&&`` / ``||``
when the other side decides, a missing field or an operator on the wrong types is an error,
``==`` between different types is false), not from ``gateway``; the gateway must allow exactly
when the oracle says ``true`` (an error or ``false`` denies: fail closed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st

from tests.integration.test_policy_property import Harness, harness  # noqa: F401 -- the fixture

RESOURCE = "http://127.0.0.1:8080/mcp"


class Error(Exception):
    """What a CEL evaluation error is in the oracle."""


@dataclass(frozen=True)
class Atom:
    text: str
    kind: str  # lt, eq, starts, has, in
    path: tuple[str, ...]
    operand: Any


@dataclass(frozen=True)
class Not:
    inner: Any


@dataclass(frozen=True)
class Both:
    op: str  # "&&" or "||"
    left: Any
    right: Any


PATHS = {  # field: the values a request may carry for it (ints, strings, absent, wrong types)
    ("arguments", "n"): st.one_of(st.integers(-3, 12), st.sampled_from(["5", "x"])),
    ("arguments", "s"): st.sampled_from(["alpha", "al", "beta", "", "ALPHA", 7]),
    ("claims", "level"): st.one_of(st.integers(0, 5), st.just("3")),
    ("claims", "team"): st.sampled_from(["eng", "ops", "Eng", 1]),
    ("claims", "tags"): st.lists(st.sampled_from(["a", "b", "c"]), max_size=3),
}


def lookup(values: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = values
    for part in path:
        if not isinstance(value, dict):
            raise Error(f"{'.'.join(path)}: not an object")  # `arguments: null` included
        if part not in value:
            raise Error(f"{'.'.join(path)} is absent")
        value = value[part]
    return value


def _numeric(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def evaluate(node: Any, values: dict[str, Any]) -> bool:
    """The oracle: True, False, or raises Error."""
    if isinstance(node, Not):
        result = evaluate(node.inner, values)
        return not result
    if isinstance(node, Both):
        outcomes: list[bool | Error] = []
        for side in (node.left, node.right):
            try:
                outcomes.append(evaluate(side, values))
            except Error as exc:
                outcomes.append(exc)
        decisive = node.op == "||"  # true decides ||, false decides &&
        if decisive in outcomes:
            return decisive
        for outcome in outcomes:
            if isinstance(outcome, Error):
                raise outcome
        return not decisive
    if node.kind == "has":
        parent = lookup(values, node.path[:-1])
        if not isinstance(parent, dict):
            raise Error("has() on a value that is not an object")
        return node.path[-1] in parent
    value = lookup(values, node.path)
    if node.kind == "eq":
        return _numeric(value) and value == node.operand if _numeric(node.operand) else value == node.operand
    if node.kind == "lt":
        if not _numeric(value):
            raise Error("no overload for _<_")
        return bool(value < node.operand)
    if node.kind == "starts":
        if not isinstance(value, str):
            raise Error("no overload for startsWith")
        return value.startswith(node.operand)
    if node.kind == "in":
        if not isinstance(value, list):
            raise Error("no overload for @in")
        return node.operand in value
    raise AssertionError(node)


def render(node: Any) -> str:
    if isinstance(node, Not):
        return f"!({render(node.inner)})"
    if isinstance(node, Both):
        return f"({render(node.left)} {node.op} {render(node.right)})"
    return str(node.text)


@st.composite
def atoms(draw: st.DrawFn) -> Atom:
    path = draw(st.sampled_from(sorted(PATHS)))
    field = ".".join(path)
    kind = draw(st.sampled_from(["lt", "eq", "starts", "has", "in"]))
    if kind == "lt":
        bound = draw(st.integers(0, 10))
        return Atom(f"{field} < {bound}", kind, path, bound)
    if kind == "eq":
        operand = draw(st.one_of(st.integers(0, 5), st.sampled_from(["alpha", "eng", "3"])))
        return Atom(f"{field} == {json.dumps(operand)}", kind, path, operand)
    if kind == "starts":
        prefix = draw(st.sampled_from(["al", "e", "", "A"]))
        return Atom(f"{field}.startsWith({json.dumps(prefix)})", kind, path, prefix)
    if kind == "has":
        return Atom(f"has({field})", kind, path, None)
    tag = draw(st.sampled_from(["a", "b"]))
    return Atom(f"{json.dumps(tag)} in {field}", kind, path, tag)


conditions = st.recursive(
    atoms(),
    lambda inner: st.one_of(
        st.builds(Not, inner), st.builds(Both, st.sampled_from(["&&", "||"]), inner, inner)
    ),
    max_leaves=4,
)


@st.composite
def facts(draw: st.DrawFn) -> tuple[Any, dict[str, Any]]:
    """(arguments, claims): each field present (four times in five) with a drawn value, or absent;
    now and then arguments that are no object at all (null, a list, a string)."""
    arguments: dict[str, Any] = {}
    claims: dict[str, Any] = {}
    for (root, name), values in PATHS.items():
        if draw(st.integers(0, 4)) > 0:
            (arguments if root == "arguments" else claims)[name] = draw(values)
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([None, [], "n", 5])), claims
    return arguments, claims


def config_for(condition: str, issuer: str, upstream: str) -> str:
    return f"""
public_url: http://127.0.0.1:8080
issuers: [{{issuer: {issuer}, algorithms: [RS256], jwks: {{discover: true}}}}]
routes:
  - path: /mcp
    upstream: {upstream}
    tools:
      t:
        condition: {json.dumps(condition)}
"""


async def run_case(
    harness: Harness,  # noqa: F811 -- the imported fixture
    condition: Any,
    cases: list[tuple[Any, dict[str, Any]]],
) -> None:
    text = render(condition)
    url = await harness.gateway_for(config_for(text, harness.issuer.issuer, harness.upstream.url(sse=False)))
    for arguments, claims in cases:
        harness.upstream.clear()
        try:
            expected: bool | str = evaluate(condition, {"arguments": arguments, "claims": claims})
        except Error as exc:
            expected = f"error: {exc}"
        if not isinstance(arguments, dict) and "arguments." in text:
            # The gateway's rule on top of CEL (README, conditions): arguments that are no object
            # fail a condition that reads them as a whole, even where `||` would absorb the error.
            expected = "error: arguments is not an object"
        token = harness.issuer.mint(audience=RESOURCE, scope="s", claims=claims, lifetime_s=3600)
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "t", "arguments": arguments},
            }
        ).encode()
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        }
        async with harness.http.post(url + "/mcp", data=body, headers=headers) as response:
            status = response.status
            answer = await response.read()
        note(f"{text} with arguments={arguments} claims={claims}: oracle {expected}")
        note(f"gateway: {status} {answer[:200]!r}")
        if expected is True:
            event("allowed")
            assert status == 200, f"the condition is true, yet {status}"
            assert [record.body for record in harness.upstream.records] == [body]
        else:
            event("denied (error)" if isinstance(expected, str) else "denied (false)")
            assert status == 403, f"the condition is {expected}, yet {status}"
            assert harness.upstream.records == [], "the upstream received a call whose condition is not true"


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
@given(condition=conditions, cases=st.lists(facts(), min_size=1, max_size=5))
def test_no_call_whose_condition_is_not_true_reaches_the_upstream(
    harness: Harness,  # noqa: F811 -- the imported fixture
    condition: Any,
    cases: list[tuple[Any, dict[str, Any]]],
) -> None:
    """Per the oracle: true → forwarded as sent; false or an evaluation error → 403, nothing upstream."""
    harness.loop.run(run_case(harness, condition, cases))


def test_the_oracle_follows_cel_on_errors() -> None:
    """The oracle's own error rules, checked against hand-computed cases."""
    values = {"arguments": {"n": "x"}, "claims": {}}
    broken = Atom("arguments.n < 3", "lt", ("arguments", "n"), 3)
    absent = Atom("claims.team == 'eng'", "eq", ("claims", "team"), "eng")
    assert evaluate(
        Both("||", broken, Not(Atom("has(claims.team)", "has", ("claims", "team"), None))), values
    )
    assert (
        evaluate(Both("&&", broken, Atom("has(claims.team)", "has", ("claims", "team"), None)), values)
        is False
    )
    with pytest.raises(Error):
        evaluate(Both("&&", broken, absent), values)
    with pytest.raises(Error):
        evaluate(Not(absent), values)
