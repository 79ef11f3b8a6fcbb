"""Condition evaluation: fail closed, narrowed to what is read, and nothing shared between callers.

The evaluator's context for a caller's claims is kept per token (``CallerContexts``); these tests
check that a second caller never sees the first one's claims, that a call never sees a previous
call's arguments, and that one token's requests do share the context.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

from gateway.mcp.conditions import (
    CallerContexts,
    Facts,
    NotAnObject,
    Subject,
    compile_condition,
    evaluate,
    read_fields,
)
from gateway.principal import Identity


def identity(claims: dict[str, Any], subject: str = "alice") -> Identity:
    return Identity(
        issuer="https://as.example",
        subject=subject,
        client_id=None,
        scopes=frozenset({"read"}),
        audience=(),
        expires_at=0.0,
        token_id=None,
        claims=MappingProxyType(claims),
    )


CALL = Subject("tools/call", "delete_branch", {"repo": "acme/site"})
REPOS = compile_condition("arguments.repo in claims.repos", "tools")


def test_each_caller_is_judged_by_its_own_claims() -> None:
    """Alice may, Bob may not, Alice again may: the cached contexts never mix callers."""
    alice = Facts(identity({"repos": ["acme/site"]}), "/mcp")
    bob = Facts(identity({"repos": ["bob/other"]}, "bob"), "/mcp")
    assert [evaluate(REPOS, caller, CALL).result for caller in (alice, bob, alice, bob)] == [
        "true",
        "false",
        "true",
        "false",
    ]


def test_a_call_never_reads_the_arguments_of_the_call_before() -> None:
    """A call without `repo` after one with it: the condition fails on the absent field."""
    caller = Facts(identity({"repos": ["acme/site"]}), "/mcp")
    assert evaluate(REPOS, caller, CALL).result == "true"
    missing = evaluate(REPOS, caller, Subject("tools/call", "delete_branch", {}))
    assert (missing.result, missing.reason) == ("error", "arguments.repo is absent")


def test_one_tokens_requests_share_one_context_and_a_full_cache_starts_over() -> None:
    """The same claims object (a cached token) reuses its context; past the bound the cache is
    emptied rather than grown, and still answers right."""
    contexts = CallerContexts(size=2)
    claims = {"repos": ["acme/site"]}
    first = Facts(identity(claims), "/mcp")
    same_token = dataclasses.replace(first.identity)  # another request: a new Identity, the same claims
    again = Facts(same_token, "/mcp")
    assert same_token is not first.identity and same_token.claims is first.identity.claims
    assert contexts.context(REPOS, first) is contexts.context(REPOS, again)
    others = [Facts(identity({"repos": [f"r{n}"]}), "/mcp") for n in range(3)]
    for other in others:
        contexts.context(REPOS, other)
    assert len(contexts._entries) <= 2


def test_arguments_that_are_no_object_fail_a_condition_that_reads_them() -> None:
    """`arguments: null` (or a list) is no object: the condition errors, it is not 'unknown'."""
    caller = Facts(identity({"repos": ["acme/site"]}), "/mcp")
    for sent in (None, ["acme/site"], "acme/site"):
        outcome = evaluate(REPOS, caller, Subject("tools/call", "delete_branch", NotAnObject(sent)))
        assert outcome.result == "error" and "not an object" in outcome.reason


def test_explain_reads_each_field_with_its_value() -> None:
    """read_fields names each path the condition reads and its value here."""
    caller = Facts(identity({"repos": ["acme/site"]}), "/mcp")
    assert read_fields(REPOS, caller, CALL) == (
        ("arguments.repo", "acme/site"),
        ("claims.repos", ["acme/site"]),
    )


def test_a_condition_reads_only_the_fields_it_names() -> None:
    """A large argument the condition never reads is not handed to the evaluator."""
    condition = compile_condition('arguments.to.endsWith("@example.com")', "tools")
    assert condition.narrowed == {"arguments": frozenset({"to"})}
    caller = Facts(identity({}), "/mcp")
    big = {"to": "a@example.com", "body": "x" * 4_000_000}
    assert evaluate(condition, caller, Subject("tools/call", "send", big)).result == "true"


def test_an_evaluation_error_never_quotes_the_value_it_refused() -> None:
    """The evaluator's message quotes a refused argument (`duration`, `int`, a regex for
    `matches`): the reason, which goes to the audit event, the trail and spans, names the
    function or the error, never the value (arguments are recorded only with audit_arguments)."""
    canary = "argument-canary-5f2d"
    caller = Facts(identity({"pattern": "("}), "/mcp")
    cases = {
        'duration(arguments.text) < duration("1h")': "duration() refused its argument",
        "int(arguments.text) == 1": "int() refused its argument",
        "arguments.text.matches(arguments.text)": None,  # `(` in the canary below: a bad regex
        "arguments.text < 3": None,
    }
    for text, reason in cases.items():
        condition = compile_condition(text, "tools")
        outcome = evaluate(condition, caller, Subject("tools/call", "t", {"text": canary + "("}))
        assert outcome.result == "error", text
        assert canary not in outcome.reason and "(" not in outcome.reason.replace("()", ""), outcome.reason
        if reason is not None:
            assert outcome.reason == reason
