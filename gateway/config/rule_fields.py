"""A route's rules as the config writes them: scopes, patterns, conditions and modes.

A rule is ``pattern: [scopes]``, or, to say more, ``pattern: {scopes: [...], condition: "<CEL>"}``,
with ``mode: observe`` for a new rule that is decided and logged but not enforced, or an
``observe: {scopes, condition}`` block for the candidate replacement of an enforced rule, and
``limits: [names]`` for the rate limits a call the rule allows counts against (``load`` checks
the names against ``rate_limits``). A
condition is checked against the variables of its section at load (``gateway.mcp.conditions``):
a syntax error, an unknown variable or field, or a type mismatch is reported here with its
column, so a misspelt field never silently denies everything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from ..mcp.conditions import Condition, ConditionError, compile_condition
from ..mcp.policy import Default, GlobError, Rule, compile_glob, shadowing_rule
from .reader import (
    INVALID,
    Cursor,
    Parsed,
    Parser,
    accepts,
    list_of,
    non_empty_text,
    one_of,
    or_env,
    shown_as,
    text,
    unknown_key_message,
    wrong_type,
)
from .yamlsource import YamlMapping, YamlNode, YamlRejected

# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


@accepts({"type": "string", "pattern": f"^{_SCOPE_TOKEN.pattern}$"})
def parse_scope(node: YamlNode, at: Cursor) -> Parsed[str]:
    value = text(node, at)
    if value is INVALID:
        return INVALID
    if not _SCOPE_TOKEN.fullmatch(value):
        return at.problem(
            node.line,
            "a scope must be a non-empty token of printable ASCII "
            "without spaces, '\"' or '\\' (RFC 6749 §3.3)",
        )
    return value


SCOPES: Final = list_of(parse_scope, unique="scope")
# Names of `rate_limits.limits`, as routes and rules refer to them (checked against them in load).
LIMIT_NAMES: Final = list_of(non_empty_text, unique="limit")
RULE_MODES: Final = ("enforce", "observe")
_parse_mode: Final = one_of(*RULE_MODES)
_RULE_KEYS: Final = ("scopes", "condition", "mode", "limits", "observe")


def _condition_problem(source: str, offset: int, message: str) -> str:
    """A checker's finding as a config message: what is wrong, and where in the expression."""
    if not source:
        return message
    snippet = source[offset : offset + 24].splitlines()[0] if source[offset:] else ""
    where = f"column {offset + 1}" + (f", at {snippet!r}" if snippet else "")
    return f"{message} ({where})"


def parse_condition(section: str) -> Parser[Condition]:
    """A CEL condition over the variables a ``section`` rule may read, checked and compiled."""

    def parse(node: YamlNode, at: Cursor) -> Parsed[Condition]:
        source = non_empty_text(node, at)
        if source is INVALID:
            return INVALID
        try:
            return compile_condition(source, section)
        except ConditionError as exc:
            for problem in exc.problems:
                at.problem(node.line, _condition_problem(source, problem.offset, problem.message))
            return INVALID

    return Parser(parse, {"type": "string", "minLength": 1})


_CANDIDATE_SCHEMA: Final = {
    "type": "object",
    "properties": {"scopes": SCOPES.schema, "condition": {"type": "string", "minLength": 1}},
    "additionalProperties": False,
}
_RULE_OBJECT_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "scopes": SCOPES.schema,
        "condition": {"type": "string", "minLength": 1},
        "mode": _parse_mode.schema,
        "limits": LIMIT_NAMES.schema,
        "observe": _CANDIDATE_SCHEMA,
    },
    "additionalProperties": False,
}

# One rule as written: (scopes, condition, observed, rate limit names).
RuleSpec = tuple[tuple[str, ...], Condition | None, bool, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class _RuleKeys:
    """The keys of one rule mapping (or of its ``observe`` block), each None when not written."""

    scopes: tuple[str, ...] | None = None
    condition: Condition | None = None
    mode: str | None = None
    limits: tuple[str, ...] | None = None
    observe: YamlNode | None = None  # read by _rule_value


def _rule_keys(section: str, node: YamlMapping, at: Cursor, keys: tuple[str, ...]) -> Parsed[_RuleKeys]:
    """The values of a rule mapping's ``keys``; unknown keys are reported."""
    complete = True
    for entry in node.entries:
        if entry.key not in keys:
            at.key(entry.key).problem(entry.key_line, unknown_key_message(entry.key, list(keys)))
            complete = False
    parsers: dict[str, Parser[Any]] = {
        "scopes": SCOPES,
        "condition": parse_condition(section),
        "mode": _parse_mode,
        "limits": LIMIT_NAMES,
    }
    values: dict[str, Any] = {}
    for key in keys:
        present = node.get(key)
        if present is None:
            continue
        value = present.value if key == "observe" else parsers[key](present.value, at.key(key))
        if value is INVALID:
            complete = False
        values[key] = value
    return _RuleKeys(**values) if complete else INVALID


def _rule_value(section: str, node: YamlNode, at: Cursor) -> Parsed[tuple[RuleSpec, ...]]:
    """The rules one entry writes: a scope list, or the mapping that says more. A mapping with
    ``observe: {scopes, condition}`` writes two: that candidate, observed, and then the rule as
    enforced (what the candidate leaves out it takes from the rule)."""
    if not isinstance(node, YamlMapping):
        listed = SCOPES(node, at)
        return INVALID if listed is INVALID else ((listed, None, False, ()),)
    written = _rule_keys(section, node, at, _RULE_KEYS)
    if written is INVALID:
        return INVALID
    scopes = written.scopes or ()
    observed = written.mode == "observe"
    limits = written.limits or ()
    enforced: RuleSpec = (scopes, written.condition, observed, limits)
    block = written.observe
    if block is None:
        return (enforced,)
    block_at = at.key("observe")
    if observed:
        return block_at.problem(
            node.line, "a rule in mode: observe is itself the candidate: no observe block"
        )
    if isinstance(block, YamlRejected):
        return INVALID
    if not isinstance(block, YamlMapping):
        return block_at.problem(block.line, wrong_type(block, "a mapping of scopes, condition"))
    written_limits = block.get("limits")
    if written_limits is not None:
        # Observed rules are only logged, never counted; the candidate counts against the rule's
        # limits once it replaces the rule, so a second list would have nothing to mean.
        block_at.key("limits").problem(
            written_limits.key_line, "an observe block has no limits: the candidate takes the rule's limits"
        )
        block = YamlMapping(tuple(entry for entry in block.entries if entry.key != "limits"), block.line)
    candidate = _rule_keys(section, block, block_at, ("scopes", "condition"))
    if candidate is INVALID or written_limits is not None:
        return INVALID
    replacement = (
        candidate.scopes if candidate.scopes is not None else scopes,
        candidate.condition if candidate.condition is not None else written.condition,
        True,
        limits,
    )
    return (replacement, enforced)


def rule_map(section: str) -> Parser[tuple[Rule, ...]]:
    """An ordered map ``glob: [scopes]`` (or ``glob: {scopes, condition, mode, limits}``); first match
    wins, so a pattern after one that covers it can never match and is reported, as are
    malformed globs, scope tokens and conditions.

    An observed rule (``mode: observe``) is not enforced, so an enforced rule after it with the
    same pattern is not shadowed: it decides until the observed one is enforced in its place.
    """

    def parse(node: YamlNode, at: Cursor) -> Parsed[tuple[Rule, ...]]:
        if isinstance(node, YamlRejected):
            return INVALID
        if not isinstance(node, YamlMapping):
            return at.problem(node.line, wrong_type(node, "a mapping of pattern: [scopes]"))
        rules: list[Rule] = []
        complete = True
        for entry in node.entries:
            entry_at = at.key(entry.key)
            value = _rule_value(section, entry.value, entry_at)
            try:
                regex = compile_glob(entry.key)
            except GlobError as exc:
                entry_at.problem(entry.key_line, f"invalid pattern: {exc}")
                complete = False
                continue
            observed = value is not INVALID and value[0][2]
            covering = rules if observed else [rule for rule in rules if not rule.observe]
            shadow = shadowing_rule(covering, entry.key)
            if shadow is not None:
                hint = (
                    "; to observe a rule that would replace it, write the observed one first"
                    if observed and not shadow.observe
                    else ""
                )
                entry_at.problem(
                    entry.key_line,
                    f"pattern is shadowed by {shadow.pattern!r} at line {shadow.line} "
                    f"(the first match wins, so this one can never apply){hint}",
                )
                complete = False
            if value is INVALID:
                complete = False
                continue
            for scopes, condition, observe, limits in value:
                rules.append(
                    Rule(section, entry.key, scopes, regex, entry.key_line, condition, observe, limits)
                )
        return tuple(rules) if complete else INVALID

    return Parser(
        parse,
        {"type": "object", "additionalProperties": {"anyOf": [SCOPES.schema, _RULE_OBJECT_SCHEMA]}},
    )


@accepts(or_env({"enum": [default.value for default in Default]}))
def parse_default(node: YamlNode, at: Cursor) -> Parsed[Default]:
    value = text(node, at)
    if value is INVALID:
        return INVALID
    try:
        return Default(value)
    except ValueError:
        return at.problem(node.line, f"{shown_as(node, value)} is not one of: deny, allow")


RULE_SECTIONS: Final = ("tools", "resources", "prompts", "methods")
# Route keys that become the route's RoutePolicy rather than RouteConfig fields of their own.
POLICY_KEYS: Final = frozenset(
    {"scopes", *RULE_SECTIONS, "default", "list_visibility", "challenge_scopes", "mode"}
)
