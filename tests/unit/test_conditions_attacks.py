"""Adversarial checks of rule conditions and observe mode (review of issue 17).

Each test is an attack a user could try; it passes when the gateway refuses it (or, for a
finding, once the bug is fixed).
"""

from __future__ import annotations

import time
from types import MappingProxyType
from typing import Any

from gateway.mcp.conditions import Facts, Subject, compile_condition, evaluate
from gateway.mcp.methods import Tool
from gateway.mcp.policy import Operation, RoutePolicy, decide
from gateway.principal import Identity
from tests.support.route_rules import policy_with_rules


def policy_of(rules: str) -> RoutePolicy:
    return policy_with_rules(rules)


def identity(scopes: str = "read", **claims: Any) -> Identity:
    return Identity(
        issuer="https://as.example",
        subject="alice",
        client_id=None,
        scopes=frozenset(scopes.split()),
        audience=("https://gw.example/mcp",),
        expires_at=0.0,
        token_id=None,
        claims=MappingProxyType(dict(claims)),
    )


def call(name: str, arguments: Any) -> Operation:
    return Operation("tools/call", Tool(name), (), arguments)


def test_observing_the_only_tools_rule_keeps_unnamed_tools_denied() -> None:
    """FINDING: with one tools rule, an unnamed tool is denied; putting that one rule in observe mode
    must not open every other tool (the enforced policy then has no tools rule at all, so the
    default default allows everything with the route scopes)."""
    written = policy_of(
        """
        tools:
          echo: {scopes: [read]}
        """
    )
    observed = policy_of(
        """
        tools:
          echo: {scopes: [read], mode: observe}
        """
    )
    facts = Facts(identity(), "/mcp")
    assert not decide(written, call("delete_everything", {}), frozenset({"read"}), facts).allowed
    assert not decide(observed, call("delete_everything", {}), frozenset({"read"}), facts).allowed


def test_one_callers_claims_never_answer_for_another() -> None:
    """Two callers with different groups, evaluated alternately: each gets its own answer."""
    condition = compile_condition('"eng" in claims.groups', "tools")
    subject = Subject("tools/call", "add", {})
    eng, ops = identity(groups=["eng"]), identity(groups=["ops"])
    for _ in range(3):
        assert evaluate(condition, Facts(eng, "/mcp"), subject).result == "true"
        assert evaluate(condition, Facts(ops, "/mcp"), subject).result == "false"


def test_a_previous_calls_arguments_are_not_read_by_the_next() -> None:
    """Same caller: a call with the field, then one without it: the second errors (denies)."""
    condition = compile_condition('arguments.text.endsWith("@example.com")', "tools")
    facts = Facts(identity(), "/mcp")
    good = Subject("tools/call", "echo", {"text": "a@example.com"})
    assert evaluate(condition, facts, good).result == "true"
    assert evaluate(condition, facts, Subject("tools/call", "echo", {})).result == "error"
    assert evaluate(condition, facts, Subject("tools/call", "echo", {"other": 1})).result == "error"


def test_numbers_the_upstream_reads_as_big_do_not_pass_a_bound() -> None:
    """`a < 100`: 100.0, 1e2, a huge int and a huge float are all refused (false or error)."""
    condition = compile_condition("arguments.a < 100", "tools")
    facts = Facts(identity(), "/mcp")
    for value in (100.0, 1e2, 10**30, 1e300, 2**63):
        outcome = evaluate(condition, facts, Subject("tools/call", "add", {"a": value}))
        assert outcome.result in ("false", "error"), value
    assert evaluate(condition, facts, Subject("tools/call", "add", {"a": -0.0})).result == "true"


def test_a_claim_of_the_wrong_type_denies() -> None:
    """`"eng" in claims.groups` with groups a string "eng" (or a map) denies, never allows."""
    condition = compile_condition('"eng" in claims.groups', "tools")
    subject = Subject("tools/call", "add", {})
    for groups in ("eng", "xengx"):
        outcome = evaluate(condition, Facts(identity(groups=groups), "/mcp"), subject)
        assert outcome.result != "true", groups


def test_an_error_reason_does_not_quote_a_claim_value() -> None:
    """A condition that errors on a secret-bearing claim: the reason (logged) omits the value."""
    condition = compile_condition("claims.secret > 5", "tools")
    canary = "CANARY-s3cr3t-value"
    outcome = evaluate(condition, Facts(identity(secret=canary), "/mcp"), Subject("tools/call", "x", {}))
    assert outcome.result == "error"
    assert canary not in outcome.reason


def test_a_large_argument_the_condition_does_not_read_costs_nothing() -> None:
    """A 4 MB argument next to the one read: one evaluation stays well under 50 ms."""
    condition = compile_condition('arguments.text == "hi"', "tools")
    facts = Facts(identity(), "/mcp")
    subject = Subject("tools/call", "echo", {"text": "hi", "blob": "x" * 4_000_000})
    started = time.perf_counter()
    assert evaluate(condition, facts, subject).result == "true"
    assert time.perf_counter() - started < 0.05
