"""Rule conditions in the config: checked at load, reported as file:line: key.path, built into rules.

A misspelt variable or field, a type mismatch, a syntax error, a function the evaluator lacks, or a
condition on data its section never has is a config error, never a rule that silently denies.
"""

from __future__ import annotations

import pytest

from gateway.cli import policy_summary
from gateway.config import ConfigError
from gateway.mcp.conditions import MAX_CONDITION_LENGTH
from gateway.mcp.policy import observed_policy
from tests.support.route_rules import config_with_rules


def load(rules: str) -> object:
    return config_with_rules(rules)


def problems(rules: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load(rules)
    return [str(problem) for problem in raised.value.problems]


def test_a_rule_with_a_condition_is_built_with_it() -> None:
    """The mapping form gives the rule its scopes, its compiled condition and what it reads."""
    config = load(
        """
        tools:
          delete_branch:
            scopes: [repo:write]
            condition: 'arguments.repo in claims.repos && !has(principal.actor)'
          "*": [repo:read]
        """
    )
    (rule, other) = config.routes[0].policy.tools  # type: ignore[attr-defined]
    assert (rule.pattern, rule.scopes, rule.observe) == ("delete_branch", ("repo:write",), False)
    assert rule.condition.argument_fields == {"repo"}
    assert rule.condition.reads_arguments
    assert other.condition is None
    assert config.routes[0].audited_claims == ("repos",)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("condition", "fragment"),
    [
        ("argument.repo == 'x'", "'argument'"),  # no such variable (did you mean arguments?)
        ("principal.subjct == 'alice'", "subjct"),
        ("tool.name == 'x'", "tool"),  # a string has no fields
        ("principal.subject + 1 == 'a'", "+"),
        ("arguments.to.startswith('a')", "startsWith"),
        ("tool", "bool"),  # a string, not a bool
        ("arguments.repo ==", "column"),  # syntax
        ("principal.actor == null", "has(principal.actor)"),
        ("'a'.matches('(')", "regular expression"),
        ("resource == 'x'", "'resource'"),  # a tools rule has no resource
    ],
)
def test_a_bad_condition_is_a_config_error_naming_where(condition: str, fragment: str) -> None:
    """Each problem names the file, the line of the condition, its key path and what is wrong."""
    found = problems(
        f"""
        tools:
          delete_branch:
            condition: {condition!r}
        """
    )
    assert found, condition
    where = "/etc/gw.yaml:9: routes[0].tools.delete_branch.condition: "
    assert all(p.startswith(where) for p in found), found
    assert any(fragment in p for p in found), found


def test_resources_have_no_arguments_and_methods_no_target() -> None:
    """A resources rule cannot read arguments; a methods rule names no tool."""
    found = problems(
        """
        resources:
          "docs://*":
            condition: 'arguments.x == 1'
        methods:
          "tools/list":
            condition: 'tool == "x"'
        """
    )
    assert len(found) == 2, found
    assert found[0].startswith("/etc/gw.yaml:9: ") and "'arguments'" in found[0], found
    assert found[1].startswith("/etc/gw.yaml:12: ") and "'tool'" in found[1], found


def test_a_condition_past_the_size_limit_is_refused() -> None:
    """Expressions are bounded: one longer than the limit is a config error saying so."""
    long = " || ".join(f"arguments.n == {index}" for index in range(MAX_CONDITION_LENGTH // 10))
    assert len(long) > MAX_CONDITION_LENGTH
    (problem,) = problems(f"tools:\n  echo:\n    condition: '{long}'\n")
    assert str(MAX_CONDITION_LENGTH) in problem


def test_unknown_rule_keys_and_modes_are_reported() -> None:
    """A misspelt key in a rule mapping, or an unknown mode, is named with the keys it may be."""
    found = problems(
        """
        tools:
          echo:
            scope: [a]
          add:
            mode: shadow
        """
    )
    assert any("unknown key 'scope' (did you mean 'scopes'?)" in p for p in found), found
    assert any("routes[0].tools.add.mode" in p for p in found), found


def test_observed_rules_build_an_enforced_policy_and_a_shadow() -> None:
    """`mode: observe` rules are left out of the enforced rules and kept, enforced, in the shadow;
    an `observe:` block is the candidate that precedes its rule there."""
    config = load(
        """
        tools:
          new_tool:
            scopes: [x]
            mode: observe
          echo:
            scopes: [a]
            observe: {condition: 'arguments.text == "hi"'}
          "*": [b]
        """
    )
    policy = config.routes[0].policy  # type: ignore[attr-defined]
    assert [(rule.pattern, rule.scopes) for rule in policy.tools] == [("echo", ("a",)), ("*", ("b",))]
    assert policy.shadow is not None
    shadow = [(rule.pattern, rule.scopes, rule.condition is not None) for rule in policy.shadow.tools]
    assert shadow == [
        ("new_tool", ("x",), False),
        ("echo", ("a",), True),
        ("echo", ("a",), False),
        ("*", ("b",), False),
    ]
    assert observed_policy(policy.shadow, observe_route=False) is policy.shadow  # nothing observed there


def test_an_observed_route_enforces_no_rule_but_keeps_the_tasks_list_rule() -> None:
    """`mode: observe` on the route: no scope or rule is enforced, the written policy is the shadow,
    and a literal `tasks/list` methods rule (which no observe mode may loosen) stays."""
    config = load(
        """
        mode: observe
        scopes: [mcp]
        tools: {"*": [a]}
        methods: {"tasks/list": [admin]}
        """
    )
    policy = config.routes[0].policy  # type: ignore[attr-defined]
    assert policy.route_scopes == () and policy.tools == ()
    assert [(rule.pattern, rule.scopes) for rule in policy.methods] == [("tasks/list", ())]
    assert policy.shadow.route_scopes == ("mcp",)
    assert policy.first_challenge == ("mcp",)  # tokens are still asked for what the rules will need


def test_check_config_shows_conditions_and_observed_rules() -> None:
    """The route summary names each rule's condition, and what is observed but not enforced."""
    config = load(
        """
        tools:
          delete_branch:
            scopes: [repo:write]
            condition: 'arguments.repo in claims.repos'
            observe: {condition: '!has(principal.actor)'}
          purge: {scopes: [ops], mode: observe}
        """
    )
    lines = policy_summary(config.routes[0].policy)  # type: ignore[attr-defined]
    assert lines[0].startswith("tools: 'delete_branch': repo:write if arguments.repo in claims.repos; any")
    assert lines[4] == (
        "observed (mode: observe, logged as would_deny, not enforced): "
        "'delete_branch': repo:write if !has(principal.actor); 'purge': ops"
    )
