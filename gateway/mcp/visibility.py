"""What a ``*/list`` result will show one caller, rule by rule: the explanation ``explain`` prints.

The gateway filters a list result item by item (``gateway.mcp.listing`` with
``policy.is_visible``); offline there are no items, only the route's rules. So this says, for each
rule of the listed kind, what happens to the items that rule decides, and then to the items no
rule matches, under the route's ``list_visibility``:

- ``step_up``: every item some rule could allow is shown, usable now or not; calling one the
  caller lacks scopes for gets the 403 ``insufficient_scope`` challenge naming them. Items no
  scope could ever allow stay hidden.
- ``usable``: only the items the caller may use with the scopes it holds now.

A rule's items need the route's scopes and the rule's (first match wins: ``policy.requirement``);
the items no rule matches are judged by ``policy.is_visible`` itself, on a name no rule matches.
Pure: frozen values in, frozen values out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .methods import LIST_METHODS, USE_METHOD, Prompt, Resource, Target, Tool
from .policy import DecidingRule, Operation, RoutePolicy, Rule, decide, is_visible

STEP_UP: Final = "step_up"
USABLE: Final = "usable"

# Names for "an item no rule matches": the first that no rule of the section matches stands for
# all such items. If every one is matched, the rules (a "*") leave no item unmatched.
_UNMATCHED_NAMES: Final[Mapping[type[Target], tuple[str, ...]]] = {
    Tool: ("\x00unmatched", "~", "0"),
    Prompt: ("\x00unmatched", "~", "0"),
    Resource: ("urn:x-gateway-explain:unmatched", "x-gateway-explain://unmatched", "file:///"),
}


@dataclass(frozen=True, slots=True)
class ListedBy:
    """What the list result does with the items one rule decides (or that no rule matches)."""

    rule: DecidingRule
    required: tuple[str, ...]  # what using one of them needs (route scopes first)
    missing: tuple[str, ...]  # of those, what the caller lacks
    shown: bool  # kept in the result for this caller
    never: bool = False  # no scope could allow them (hidden in every mode)


@dataclass(frozen=True, slots=True)
class ListFiltering:
    """How one ``*/list`` result will be filtered for the caller."""

    method: str
    section: str  # the rules that decide: tools, resources or prompts
    visibility: str  # the route's list_visibility: step_up or usable
    by_rule: tuple[ListedBy, ...]


def list_visibility_of(policy: RoutePolicy) -> str:
    """The route's ``list_visibility`` as written (``step_up``/``usable``); ``usable`` where the
    policy has no such setting (the gateway then shows only what the caller may use)."""
    value: Any = getattr(policy, "list_visibility", USABLE)
    return str(getattr(value, "value", value))


_SECTIONS: Final[Mapping[type[Target], str]] = {Tool: "tools", Resource: "resources", Prompt: "prompts"}


def list_filtering(policy: RoutePolicy, method: str, granted: frozenset[str]) -> ListFiltering | None:
    """How a ``method`` result is filtered for a caller holding ``granted``; None if it lists nothing."""
    listing = LIST_METHODS.get(method)
    if listing is None:
        return None
    kind = listing.target
    section = _SECTIONS[kind]
    visibility = list_visibility_of(policy)
    rules: tuple[Rule, ...] = getattr(policy, section)
    by_rule = [_listed_by_rule(policy, rule, granted, visibility) for rule in rules]
    unmatched = _unmatched_target(kind, rules)
    if unmatched is not None:
        decision = decide(policy, Operation(USE_METHOD[kind], unmatched), granted)
        by_rule.append(
            ListedBy(
                rule=decision.rules[0],
                required=decision.required,
                missing=decision.missing,
                shown=is_visible(policy, unmatched, granted),
                never=decision.unconditional,
            )
        )
    return ListFiltering(method, section, visibility, tuple(by_rule))


def _listed_by_rule(policy: RoutePolicy, rule: Rule, granted: frozenset[str], visibility: str) -> ListedBy:
    required = tuple(dict.fromkeys((*policy.route_scopes, *rule.scopes)))
    missing = tuple(scope for scope in required if scope not in granted)
    return ListedBy(rule, required, missing, shown=not missing or visibility == STEP_UP)


def _unmatched_target(kind: type[Target], rules: Sequence[Rule]) -> Target | None:
    for name in _UNMATCHED_NAMES[kind]:
        target = kind(name)
        key = target.rule_key
        if key is not None and not any(rule.matches(key) for rule in rules):
            return target
    return None


# =========================================================================== output


def _scopes(scopes: Sequence[str]) -> str:
    return " ".join(scopes) or "(none)"


def _effect(listed: ListedBy, visibility: str) -> str:
    if listed.never:
        return "hidden: no scope would allow them (a call gets a plain 403)"
    if not listed.missing:
        return "shown, and the caller may call them now"
    needs = _scopes(listed.missing)
    if listed.shown:
        return f"shown, but a call gets a 403 insufficient_scope step-up challenge for {needs}"
    return f"hidden until the caller holds {needs} (with list_visibility: step_up they would be shown)"


_MEANING: Final[Mapping[str, str]] = {
    STEP_UP: "items some rule allows are shown, usable now or after a step-up; items no scope "
    "would allow are hidden",
    USABLE: "only items the caller may use now are shown",
}


def describe(filtering: ListFiltering, where: Callable[[DecidingRule], str]) -> list[str]:
    """Text lines for ``explain``; ``where`` names a rule (its label and config line)."""
    meaning = _MEANING.get(filtering.visibility, "")
    lines = [
        f"  result filtered for this caller, by the rule that decides each item "
        f"(list_visibility: {filtering.visibility}: {meaning}):"
    ]
    for listed in filtering.by_rule:
        lines.append(f"    {where(listed.rule)}: {_effect(listed, filtering.visibility)}")
    return lines


def to_json(filtering: ListFiltering) -> dict[str, Any]:
    """The filtering as one JSON-ready object (``explain --json``)."""
    return {
        "section": filtering.section,
        "list_visibility": filtering.visibility,
        "by_rule": [
            {
                "rule": listed.rule.label,
                "line": listed.rule.line if isinstance(listed.rule, Rule) else None,
                "required": list(listed.required),
                "missing": list(listed.missing),
                "shown": listed.shown,
                "never": listed.never,
            }
            for listed in filtering.by_rule
        ],
    }
