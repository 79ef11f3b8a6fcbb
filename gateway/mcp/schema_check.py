"""Conditions that read ``arguments.X`` of a tool whose ``inputSchema`` has no ``X``.

A condition is checked at load against what a condition may read, but not against the tools the
upstream really has: ``arguments.txt`` for a tool whose argument is ``text`` loads fine and then
denies every call (the field is absent, so the condition fails closed). The upstream says what
each tool takes in its ``tools/list`` result (``inputSchema``, a JSON Schema object), so:

- ``mismatches`` compares one list result with a route's rules (pure);
- ``SchemaWatch`` is a ``MessageRewriter`` (``gateway.mcp.answers``) that sees every upstream
  answer on a route, never changes one, and reports each mismatch the first time a list shows it;
- ``check-config --upstream`` asks the upstream for its tools (``gateway.upstream.tools_probe``)
  and prints the same mismatches.

Observed rules (``mode: observe``) count too: they are the rules about to be enforced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import structlog

from .policy import RoutePolicy, Rule, first_match

log = structlog.get_logger("gateway.schema")

_TOOLS_MARKER: Final = b'"tools"'
# What one watch remembers (route, rule, tool, argument): the tool names come from the upstream,
# so the memory is bounded; past it, new mismatches are no longer reported (the metric stops too).
MAX_REMEMBERED: Final = 1024


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A rule's condition reads ``arguments.<argument>``, which ``tool``'s inputSchema lacks."""

    rule: Rule
    tool: str
    argument: str


@dataclass(frozen=True, slots=True)
class Unchecked:
    """A tool a condition reads arguments of, whose inputSchema cannot say which it lacks."""

    rule: Rule
    tool: str
    why: str  # e.g. "its inputSchema allows any property (additionalProperties)"


def argument_rules(policy: RoutePolicy) -> tuple[Rule, ...]:
    """The tools rules (observed ones too) whose condition names ``arguments.X`` fields."""
    return tuple(
        rule
        for rule in (policy.shadow or policy).tools
        if rule.condition is not None and rule.condition.argument_fields
    )


def reads_tool_arguments(policy: RoutePolicy) -> bool:
    """Whether a list result can show anything here: some tools condition reads arguments."""
    return bool(argument_rules(policy))


class _Checked(NamedTuple):
    """One list item to check: its deciding rule and the ``arguments.X`` fields it reads."""

    rule: Rule
    fields: frozenset[str]
    tool: str
    schema: Any  # the item's inputSchema, as listed


def _checked_rule(policy: RoutePolicy, item: object) -> _Checked | None:
    """For one list item: its first matching tools rule, if that rule's condition names
    arguments; with the item's name and inputSchema."""
    if not isinstance(item, Mapping):
        return None
    name = item.get("name")
    if not isinstance(name, str):
        return None
    rule = first_match((policy.shadow or policy).tools, name)
    if rule is None or rule.condition is None or not rule.condition.argument_fields:
        return None
    return _Checked(rule, rule.condition.argument_fields, name, item.get("inputSchema"))


def _open_schema(schema: Any) -> str | None:
    """Why this inputSchema cannot show an argument missing (None: its properties are all)."""
    if not isinstance(schema, Mapping):
        return "it has no inputSchema object"
    if not isinstance(schema.get("properties"), Mapping):
        return "its inputSchema lists no properties"
    extra = schema.get("additionalProperties")
    # Absent is read as closed: SDKs generate schemas without it for tools that take exactly
    # their listed arguments. Explicitly open (true, or a schema for the rest) is believed.
    if extra is True or isinstance(extra, Mapping):
        return "its inputSchema allows any property (additionalProperties)"
    if schema.get("patternProperties"):
        return "its inputSchema allows more properties (patternProperties)"
    return None


def mismatches(policy: RoutePolicy, tools: Sequence[object]) -> tuple[Mismatch, ...]:
    """For each tool of a ``tools/list`` result, each ``arguments.X`` its deciding rule's
    condition reads that the tool's ``inputSchema["properties"]`` lacks (fields sorted)."""
    found: list[Mismatch] = []
    for item in tools:
        checked = _checked_rule(policy, item)
        if checked is None:
            continue
        if _open_schema(checked.schema) is not None:
            continue
        properties = checked.schema["properties"]
        found.extend(
            Mismatch(checked.rule, checked.tool, field)
            for field in sorted(checked.fields)
            if field not in properties
        )
    return tuple(found)


def unchecked(policy: RoutePolicy, tools: Sequence[object]) -> tuple[Unchecked, ...]:
    """The tools a condition reads arguments of whose inputSchema cannot be checked, and why."""
    found: list[Unchecked] = []
    for item in tools:
        checked = _checked_rule(policy, item)
        if checked is None:
            continue
        why = _open_schema(checked.schema)
        if why is not None:
            found.append(Unchecked(checked.rule, checked.tool, why))
    return tuple(found)


def listed_tools(message: Mapping[str, Any]) -> list[object] | None:
    """The ``tools`` of a list-shaped result (any message whose result holds a tools list)."""
    result = message.get("result")
    if not isinstance(result, Mapping):
        return None
    tools = result.get("tools")
    return tools if isinstance(tools, list) else None


class SchemaWatch:
    """A ``MessageRewriter`` that reports, once per watch, each mismatch a tools list shows.

    One watch belongs to one served route (built with it at start-up, so a reload, which may
    change the rules, starts a new memory and reports again what is still wrong): the warning
    ``condition_argument_not_in_schema`` and ``on_mismatch(route, rule label)`` (the metric).
    It sees the upstream's list before the caller's list filter hides anything.
    """

    __slots__ = ("_on_mismatch", "_policy", "_reported", "_route", "markers")
    passive: Final = True  # watches only: what it cannot read goes out as it came

    def __init__(self, route: str, policy: RoutePolicy, on_mismatch: Callable[[str, str], None]) -> None:
        self._route = route
        self._policy = policy
        self._on_mismatch = on_mismatch
        self._reported: set[tuple[str, str, str]] = set()  # (rule label, tool, argument)
        self.markers: tuple[bytes, ...] = (_TOOLS_MARKER,)

    def rewrite(self, message: dict[str, Any]) -> dict[str, Any] | None:
        tools = listed_tools(message)
        if tools is not None:
            for mismatch in mismatches(self._policy, tools):
                self._report(mismatch)
        return None  # only watches: the answer goes out as the upstream sent it

    def _report(self, mismatch: Mismatch) -> None:
        key = (mismatch.rule.label, mismatch.tool, mismatch.argument)
        if key in self._reported or len(self._reported) >= MAX_REMEMBERED:
            return
        self._reported.add(key)
        log.warning(
            "condition_argument_not_in_schema",
            route=self._route,
            rule=mismatch.rule.label,
            line=mismatch.rule.line,
            tool=mismatch.tool,
            argument=mismatch.argument,
        )
        self._on_mismatch(self._route, mismatch.rule.label)


def schema_watches(
    route: str, policy: RoutePolicy, on_mismatch: Callable[[str, str], None]
) -> tuple[SchemaWatch, ...]:
    """The watch for a route, or none when no tools condition reads arguments (no cost then)."""
    return (SchemaWatch(route, policy, on_mismatch),) if reads_tool_arguments(policy) else ()
