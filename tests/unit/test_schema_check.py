"""Conditions against the upstream's tools: an ``arguments.X`` a tool's inputSchema lacks is reported.

``mismatches`` is pure (rules and one tools/list result in, mismatches out); ``SchemaWatch`` sees
the upstream's answers on a route, never changes them, and reports each mismatch once.
"""

from __future__ import annotations

import json
from typing import Any

from structlog.testing import capture_logs

from gateway.mcp.answers import AnswerInspector
from gateway.mcp.policy import RoutePolicy
from gateway.mcp.schema_check import (
    MAX_REMEMBERED,
    SchemaWatch,
    mismatches,
    reads_tool_arguments,
    schema_watches,
    unchecked,
)
from tests.support.route_rules import policy_with_rules


def policy(rules: str) -> RoutePolicy:
    return policy_with_rules(rules)


def tool(name: str, *properties: str, **schema: Any) -> dict[str, Any]:
    """A tools/list item whose inputSchema has exactly ``properties`` (plus ``schema`` keys)."""
    return {
        "name": name,
        "inputSchema": {
            "type": "object",
            "properties": {p: {"type": "string"} for p in properties},
            **schema,
        },
    }


ECHO = policy(
    """
    tools:
      echo: {condition: 'arguments.txt == "x"'}
      add: {scopes: [calc], condition: 'arguments.a < 10 && arguments.b < 10'}
      "*": [other]
    """
)


def found(policy: RoutePolicy, tools: list[Any]) -> list[tuple[str, int, str, str]]:
    return [(m.rule.label, m.rule.line, m.tool, m.argument) for m in mismatches(policy, tools)]


def test_a_field_the_schema_lacks_is_a_mismatch() -> None:
    """echo takes `text`; a condition on arguments.txt is reported with its rule and line."""
    assert found(ECHO, [tool("echo", "text"), tool("add", "a", "b"), tool("whoami")]) == [
        ("tools['echo']", 8, "echo", "txt")
    ]


def test_fields_the_schema_has_are_no_mismatch() -> None:
    """A condition on fields the tool declares is fine; each missing field is reported, sorted."""
    assert found(ECHO, [tool("echo", "txt"), tool("add", "a", "b")]) == []
    assert found(ECHO, [tool("add")]) == [("tools['add']", 9, "add", "a"), ("tools['add']", 9, "add", "b")]


def test_the_first_matching_rule_decides_which_condition_is_checked() -> None:
    """A tool decided by a rule without a condition is not checked, even if a later glob has one."""
    rules = policy(
        """
        tools:
          get_a: [read]
          "get_*": {condition: 'arguments.id == "1"'}
        """
    )
    assert found(rules, [tool("get_a"), tool("get_b", "id"), tool("get_c", "name")]) == [
        ("tools['get_*']", 9, "get_c", "id")
    ]


def test_observed_rules_are_checked_too() -> None:
    """A `mode: observe` rule is about to be enforced: its condition is checked as written."""
    rules = policy(
        """
        tools:
          echo: {condition: 'arguments.txt == "x"', mode: observe}
        """
    )
    assert rules.shadow is not None
    assert found(rules, [tool("echo", "text")]) == [("tools['echo']", 8, "echo", "txt")]


def test_an_open_schema_is_said_to_be_unchecked_not_a_mismatch() -> None:
    """additionalProperties true (or a schema), no properties, or no inputSchema: nothing can be
    missing, and `unchecked` says why; additionalProperties false is still checked."""
    open_tools = [
        tool("echo", "text", additionalProperties=True),
        {"name": "add", "inputSchema": {"type": "object"}},
    ]
    assert found(ECHO, open_tools) == []
    assert [(note.tool, note.why) for note in unchecked(ECHO, open_tools)] == [
        ("echo", "its inputSchema allows any property (additionalProperties)"),
        ("add", "its inputSchema lists no properties"),
    ]
    assert [note.why for note in unchecked(ECHO, [{"name": "echo"}])] == ["it has no inputSchema object"]
    assert found(ECHO, [tool("echo", additionalProperties={"type": "string"})]) == []
    assert found(ECHO, [tool("echo", "text", additionalProperties=False)]) == [
        ("tools['echo']", 8, "echo", "txt")
    ]
    assert unchecked(ECHO, [tool("echo", "text")]) == ()


def test_items_that_are_not_tools_are_skipped() -> None:
    """A list item without a string name, or not an object, is no tool to check."""
    assert (
        found(ECHO, [{"name": 5, "inputSchema": {"properties": {}}}, "echo", None, {"title": "echo"}]) == []
    )


def test_a_route_without_argument_conditions_gets_no_watch() -> None:
    """Only a tools condition that reads arguments.X needs the watch (no cost otherwise)."""
    plain = policy(
        """
        tools:
          echo: {condition: 'claims.team == "eng"'}
        prompts:
          greet: {condition: 'arguments.name == "x"'}
        """
    )
    assert not reads_tool_arguments(plain)
    assert schema_watches("/mcp", plain, lambda _route, _rule: None) == ()
    assert reads_tool_arguments(ECHO)
    assert len(schema_watches("/mcp", ECHO, lambda _route, _rule: None)) == 1


def listing(*tools: dict[str, Any], rpc_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "result": {"tools": list(tools)}}


def test_the_watch_reports_each_mismatch_once_and_never_rewrites() -> None:
    """Two lists showing the same mismatch: one warning, one metric count, answers untouched."""
    counted: list[tuple[str, str]] = []
    watch = SchemaWatch("/mcp", ECHO, lambda route, rule: counted.append((route, rule)))
    with capture_logs() as events:
        for rpc_id in (1, 2):
            assert watch.rewrite(listing(tool("echo", "text"), tool("add", "a", "b"), rpc_id=rpc_id)) is None
        assert watch.rewrite({"jsonrpc": "2.0", "id": 3, "result": {"tools": "not a list"}}) is None
        assert watch.rewrite({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}) is None
    reported = [event for event in events if event["event"] == "condition_argument_not_in_schema"]
    assert reported == [
        {
            "event": "condition_argument_not_in_schema",
            "log_level": "warning",
            "route": "/mcp",
            "rule": "tools['echo']",
            "line": 8,
            "tool": "echo",
            "argument": "txt",
        }
    ]
    assert counted == [("/mcp", "tools['echo']")]


def test_the_watch_sees_json_bodies_through_the_inspector() -> None:
    """Through the answer inspector (its byte pre-check included) the body is relayed as sent."""
    counted: list[tuple[str, str]] = []
    watch = SchemaWatch("/mcp", ECHO, lambda route, rule: counted.append((route, rule)))
    body = json.dumps(listing(tool("echo", "text"))).encode()
    assert AnswerInspector(watch).json_body(body) is None  # None: the original bytes go out
    assert counted == [("/mcp", "tools['echo']")]


def test_the_watch_memory_is_bounded() -> None:
    """An upstream listing ever new tool names cannot grow the memory past MAX_REMEMBERED."""
    rules = policy(
        """
        tools:
          "*": {condition: 'arguments.id == "1"'}
        """
    )
    counted: list[tuple[str, str]] = []
    watch = SchemaWatch("/mcp", rules, lambda route, rule: counted.append((route, rule)))
    with capture_logs():
        watch.rewrite(listing(*(tool(f"t{index}") for index in range(MAX_REMEMBERED + 5))))
        watch.rewrite(listing(tool("t0"), tool("late")))
    assert len(counted) == MAX_REMEMBERED
