"""``explain`` for rule conditions: each condition's fields and result, observed decisions, lists.

The gateway decides a message with its caller as ``Facts`` (``gateway.mcp.conditions``); offline
the caller is what ``--token`` decodes to (its whole payload as ``claims``) or ``--scopes`` with
an optional ``--claims`` object. Nothing is decided here either: the checks are ``decide``'s own
``ConditionCheck``s, and each field shown is ``read_fields``'s value of it for the same subject
``requirement`` evaluated the condition on. On a route with ``mode: observe`` rules the decision
as written (``RoutePolicy.shadow``) is shown too, as the gateway logs it (``would_deny``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from .explain_model import Caller, ConditionExplanation, ListedCondition, ObservedExplanation
from .mcp import visibility
from .mcp.conditions import ABSENT, TARGET_VARIABLE, Facts, Subject, evaluate, read_fields, variable_value
from .mcp.globs import GLOB_CHARACTERS
from .mcp.methods import METHODS, USE_METHOD, Prompt, Resource, Target, Tool, target_type
from .mcp.policy import DecidingRule, Decision, Operation, RoutePolicy, Rule, decide
from .principal import Identity

RuleText = Callable[[DecidingRule], str]  # how explain names a rule: label and config line

READS_ARGUMENTS: Final = "shown: its condition reads arguments, decided at each call"
_MAX_VALUE_CHARS: Final = 200  # a value shown longer than this is cut (a 4 MB argument)
_KINDS: Final[Mapping[str, type[Target]]] = {"tools": Tool, "prompts": Prompt, "resources": Resource}

# =========================================================================== the caller


def claims_argument(text: str | None, *, with_token: bool) -> dict[str, Any] | str:
    """``--claims`` (a JSON object; none: no claims), or what is wrong with it."""
    if text is None:
        return {}
    if with_token:
        return "--claims goes with --scopes: a --token carries its own claims"
    try:
        claims = json.loads(text)
    except ValueError as exc:
        return f"--claims: not JSON ({exc})"
    if not isinstance(claims, dict):
        return "--claims: must be a JSON object of claims"
    return claims


def _string(claims: Mapping[str, Any], *names: str) -> str | None:
    return next((value for name in names if isinstance(value := claims.get(name), str)), None)


def caller_facts(caller: Caller, route_path: str) -> Facts:
    """What conditions know of the caller: its claims, scopes, and the identity they name
    (``iss``, ``sub``: "" when absent; ``client_id`` or ``azp``), on ``route_path``."""
    claims = caller.claims
    aud = claims.get("aud")
    audience = (
        (aud,)
        if isinstance(aud, str)
        else tuple(item for item in aud if isinstance(item, str))
        if isinstance(aud, list)
        else ()
    )
    exp = claims.get("exp")
    identity = Identity(
        issuer=_string(claims, "iss") or "",
        subject=_string(claims, "sub") or "",
        client_id=_string(claims, "client_id", "azp"),
        scopes=frozenset(caller.scopes),
        audience=audience,
        expires_at=float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else 0.0,
        token_id=_string(claims, "jti"),
        claims=claims,
    )
    return Facts(identity, route_path)


# =========================================================================== the checks


def _subjects(operation: Operation) -> list[Subject]:
    """What each of a decision's rules was asked about, in ``requirement``'s order: the
    operation itself, then each target it reveals (a completion's, a listen's), used without
    arguments."""
    target = operation.target
    decides = target is not None and target_type(operation.method) is not None
    key = target.rule_key if decides and target is not None else None
    subjects = [Subject(operation.method, key, operation.arguments)]
    revealed: tuple[Target, ...] = operation.watched
    spec = METHODS.get(operation.method)
    if spec is not None and spec.completes and target is not None:
        revealed = (target, *revealed)
    subjects.extend(Subject(USE_METHOD[type(shown)], shown.rule_key, None) for shown in revealed)
    return subjects


def explain_checks(
    decision: Decision, operation: Operation, facts: Facts
) -> tuple[ConditionExplanation, ...]:
    """Each condition ``decide`` evaluated for ``operation``, with every field it read."""
    subjects = _subjects(operation)
    used: set[int] = set()
    explained = []
    for check in decision.conditions:
        index = next(
            (i for i, rule in enumerate(decision.rules) if rule is check.rule and i not in used),
            0,
        )
        used.add(index)
        subject = subjects[index] if index < len(subjects) else subjects[0]
        condition = check.rule.condition
        if condition is None:  # decide only checks rules that have one
            continue
        fields = read_fields(condition, facts, subject)
        if condition.paths:  # read_fields shows the paths; a variable also read whole is shown too
            whole = sorted(
                root for root in condition.roots if all(path[0] != root for path in condition.paths)
            )
            fields += tuple((root, variable_value(root, facts, subject, condition.section)) for root in whole)
        explained.append(ConditionExplanation(check.rule, condition.source, fields, check.outcome))
    return tuple(explained)


def explain_observed(
    shadow: RoutePolicy, operation: Operation, granted: frozenset[str], facts: Facts
) -> ObservedExplanation:
    """The decision as written (every observed rule enforced), as the audit's ``observed``."""
    decision = decide(shadow, operation, granted, facts)
    return ObservedExplanation(decision, explain_checks(decision, operation, facts))


def _base_effects(filtering: visibility.ListFiltering) -> list[str]:
    """What the list filtering says of each rule's items, without the rule's name."""
    lines = visibility.describe(filtering, lambda _rule: "")
    return [line.strip().removeprefix(": ") for line in lines[1:]]


def listed_conditions(
    filtering: visibility.ListFiltering, policy: RoutePolicy, facts: Facts
) -> tuple[ListedCondition, ...]:
    """For each shown rule of a list that has a condition, what the condition does to its items.

    One that reads arguments cannot be decided before a call: the items stay shown. One that
    reads the item's name under a glob is decided item by item. Any other is decided now, for
    this caller: false (or an error) hides the items, as ``is_visible`` does.
    """
    kind = _KINDS[filtering.section]
    found = []
    for listed, base in zip(filtering.by_rule, _base_effects(filtering), strict=True):
        rule = listed.rule
        if not isinstance(rule, Rule) or rule.condition is None or not listed.shown:
            continue
        condition = rule.condition
        literal = not GLOB_CHARACTERS.intersection(rule.pattern)
        if condition.reads_arguments:
            effect = (
                READS_ARGUMENTS
                if not listed.missing
                else f"{base}; its condition reads arguments, decided at each call"
            )
        elif TARGET_VARIABLE.get(rule.section) in condition.roots and not literal:
            effect = f"{base}, each one only if its condition is true for it (decided item by item)"
        else:
            subject = Subject(USE_METHOD[kind], rule.pattern if literal else None, None)
            outcome = evaluate(condition, facts, subject)
            reason = f" ({outcome.reason})" if outcome.reason else ""
            if outcome.result == "true":
                effect = f"{base} (its condition is true for this caller)"
            else:
                effect = f"hidden: its condition is {outcome.result} for this caller{reason}"
        found.append(ListedCondition(rule, condition.source, effect))
    return tuple(found)


# =========================================================================== text


def _text(value: str) -> str:
    """A config or token string, safe for a terminal (control characters escaped)."""
    return value if value.isprintable() else repr(value)


def shown_value(value: Any) -> str:
    """A field's value as explain prints it: JSON, ``(absent)`` when the operation lacks it."""
    if value is ABSENT:
        return "(absent)"
    text = json.dumps(value, ensure_ascii=True, sort_keys=True, default=str)
    return text if len(text) <= _MAX_VALUE_CHARS else text[:_MAX_VALUE_CHARS] + "..."


def condition_lines(
    conditions: Sequence[ConditionExplanation], where: RuleText, indent: str = "  "
) -> list[str]:
    """Each condition: its rule and source, each field it reads and its value, the result."""
    lines = []
    for explained in conditions:
        lines.append(f"{indent}condition of {where(explained.rule)}: {_text(explained.source)}")
        for path, value in explained.fields:
            lines.append(f"{indent}  {path} = {shown_value(value)}")
        reason = f" ({_text(explained.outcome.reason)})" if explained.outcome.reason else ""
        lines.append(f"{indent}  result: {explained.outcome.result}{reason}")
    return lines


def observed_lines(
    observed: ObservedExplanation, enforced: Sequence[ConditionExplanation], where: RuleText
) -> list[str]:
    """``observed (mode: observe): would deny: …`` and the conditions only it evaluated."""
    decision = observed.decision
    rules = " + ".join(where(rule) for rule in decision.rules)
    if decision.allowed:
        head = f"  observed (mode: observe): would allow: {rules}"
    else:
        details = [rules]
        if decision.missing:
            details.append(f"missing: {' '.join(decision.missing)}")
        details.extend(check.label for check in decision.conditions if check.denies)
        head = f"  observed (mode: observe): would deny: {'; '.join(details)}"
    extra = [explained for explained in observed.conditions if explained not in enforced]
    return [head, *condition_lines(extra, where, indent="    ")]


def listing_lines(
    filtering: visibility.ListFiltering, conditions: Sequence[ListedCondition], where: RuleText
) -> list[str]:
    """The list filtering's lines, each rule with a condition saying what the condition does."""
    lines = visibility.describe(filtering, where)
    effects = {id(item.rule): item for item in conditions}
    out = [lines[0]]
    for listed, line in zip(filtering.by_rule, lines[1:], strict=True):
        item = effects.get(id(listed.rule))
        if item is None:
            out.append(line)
            continue
        out.append(f"    {where(listed.rule)}: {item.effect}")
        out.append(f"      condition: {_text(item.source)}")
    return out


# =========================================================================== JSON


def _rule_json(rule: DecidingRule) -> dict[str, Any]:
    return {"label": rule.label, "line": rule.line if isinstance(rule, Rule) else None}


def conditions_json(conditions: Sequence[ConditionExplanation]) -> list[dict[str, Any]]:
    """The conditions as JSON (``explain --json``): an absent field has ``absent: true``."""
    return [
        {
            **_rule_json(explained.rule),
            "source": explained.source,
            "fields": [
                {"path": path, "value": None if value is ABSENT else value, "absent": value is ABSENT}
                for path, value in explained.fields
            ],
            "result": explained.outcome.result,
            "reason": explained.outcome.reason,
        }
        for explained in conditions
    ]


def observed_json(observed: ObservedExplanation | None) -> dict[str, Any] | None:
    """The observed decision as JSON, every condition it evaluated included."""
    if observed is None:
        return None
    decision = observed.decision
    return {
        "decision": "ALLOW" if decision.allowed else "DENY",
        "rule": decision.label,
        "rules": [_rule_json(rule) for rule in decision.rules],
        "missing": list(decision.missing),
        "conditions": conditions_json(observed.conditions),
    }


def listing_json(
    filtering: visibility.ListFiltering, conditions: Sequence[ListedCondition]
) -> dict[str, Any]:
    """``visibility.to_json`` with, on each rule that has a condition, its source and effect."""
    document = visibility.to_json(filtering)
    effects = {id(item.rule): item for item in conditions}
    for listed, entry in zip(filtering.by_rule, document["by_rule"], strict=True):
        item = effects.get(id(listed.rule))
        entry["condition"] = None if item is None else {"source": item.source, "effect": item.effect}
    return document
