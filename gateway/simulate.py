"""``mcp-auth-gateway simulate``: recorded policy decisions replayed against a candidate config.

The input is a gateway's log: JSON lines, of which the ``policy_decision`` events
(``gateway.web.audit``) are read and everything else is counted and skipped. Each event is
turned back into the operation and the caller it was decided for, decided again by the
candidate's own ``gateway.mcp.policy.decide``, and compared with the decision recorded. What
changed is grouped by direction and by the candidate's deciding rule.

A decision is only replayed when the event holds everything the candidate reads: a condition
on ``arguments`` needs ``audit_arguments: true``, one on ``claims.X`` needs ``X`` among the claims
recorded, one on ``principal.subject`` needs ``logging.include_subject``, and a value the log
redaction masked is no value. Such an event is counted as undecidable, never guessed: a guess
could pass a CI gate on a loosening nobody has seen.

The core (``read_events``, ``simulate``, ``exit_status``, ``render_text``, ``to_json``) is pure;
``run`` reads the file and prints.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TextIO, cast

from .config import GatewayConfig
from .logs import REDACTED
from .mcp.conditions import ABSENT, Condition, Facts, NotAnObject, field_value, principal_value
from .mcp.methods import RESPONSE_METHOD, Prompt, Resource, Target, Tool
from .mcp.policy import ARGUMENT_METHODS, Decision, Operation, RoutePolicy, decide, requirement
from .principal import Identity

__all__ = [
    "EXIT_CHANGED",
    "EXIT_UNCHANGED",
    "EXIT_USAGE",
    "Change",
    "Example",
    "RecordedDecision",
    "SimulationReport",
    "Skipped",
    "Undecidable",
    "exit_status",
    "read_events",
    "render_text",
    "run",
    "simulate",
    "to_json",
]

EXIT_UNCHANGED: Final = 0
EXIT_CHANGED: Final = 1  # some decision changes (in the --fail-on direction), or --strict and undecidable
EXIT_USAGE: Final = 2  # bad arguments, unreadable or invalid config, unreadable decisions file

DECISION_EVENT: Final = "policy_decision"
MAX_EXAMPLES: Final = 3  # per group of changes
MAX_UNREADABLE_SHOWN: Final = 5

Direction = Literal["allow->deny", "deny->allow"]
TIGHTENS: Final[Direction] = "allow->deny"
LOOSENS: Final[Direction] = "deny->allow"
FailOn = Literal["allow", "deny", "any"]
# --fail-on names the candidate's new answer: `allow` fails on what it would newly allow.
FAILING_DIRECTIONS: Final[Mapping[str, frozenset[Direction]]] = {
    "allow": frozenset({LOOSENS}),
    "deny": frozenset({TIGHTENS}),
    "any": frozenset({LOOSENS, TIGHTENS}),
}
_TARGET_KINDS: Final[Mapping[str, type[Target]]] = {"tool": Tool, "prompt": Prompt, "resource": Resource}
# What `logging.include_subject: false` leaves out of an event (gateway.logs.SUBJECT_FIELDS).
_HIDDEN_PRINCIPAL_FIELDS: Final = frozenset({"subject", "client_id", "actor"})

# =========================================================================== reading the log


@dataclass(frozen=True, slots=True)
class RecordedDecision:
    """One ``policy_decision`` event, read back into what it was decided for."""

    line: int
    route: str
    method: str  # as the event names it ("(response)" for a client's response)
    target: str | None  # as the body spelled it
    operation: Operation
    identity: Identity  # subject "" when the event does not record it
    decision: Literal["allow", "deny"]
    rule: str  # the label of the rules that decided, as recorded
    subject_recorded: bool  # false: logging.include_subject was off (no subject, client id, actor)
    arguments_recorded: bool
    claims_recorded: frozenset[str]


@dataclass(frozen=True, slots=True)
class Skipped:
    """A log line that is not a decision to replay: not JSON, another event, or an unreadable one."""

    line: int
    kind: Literal["not_json", "other_event", "unreadable"]
    reason: str = ""


class MalformedEvent(ValueError):
    """A ``policy_decision`` event that lacks a field a replay needs, or has one of the wrong type."""


def read_events(lines: Iterable[str]) -> Iterator[RecordedDecision | Skipped]:
    """Each line of a log, lazily, as a decision to replay or as what was skipped (numbered from 1)."""
    for number, text in enumerate(lines, start=1):
        try:
            event = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: a line nested past the parser's stack
            yield Skipped(number, "not_json")
            continue
        if not isinstance(event, dict) or event.get("event") != DECISION_EVENT:
            yield Skipped(number, "other_event")
            continue
        try:
            yield recorded_decision(event, number)
        except MalformedEvent as exc:
            yield Skipped(number, "unreadable", str(exc))


def recorded_decision(event: Mapping[str, Any], line: int) -> RecordedDecision:
    """The operation and the caller one event records; MalformedEvent if it cannot be replayed."""
    route = _text(event, "route")
    method = _text(event, "method")
    decision = event.get("decision")
    if decision not in ("allow", "deny"):
        raise MalformedEvent("decision is not allow or deny")
    scopes = _texts(event, "scopes")
    target = _target(event)
    watched = tuple(Resource(uri) for uri in _texts(event, "watched", required=False))
    arguments_recorded = "arguments" in event
    recorded = event.get("arguments")
    # As operation_of reads the call: an object, or anything else (null too) NotAnObject.
    arguments = None
    if arguments_recorded:
        arguments = recorded if isinstance(recorded, dict) else NotAnObject(recorded)
    operation = (
        Operation(RESPONSE_METHOD)
        if method == RESPONSE_METHOD
        else Operation(method, target, watched, arguments if method in ARGUMENT_METHODS else None)
    )
    claims = event.get("claims", {})
    if not isinstance(claims, dict):
        raise MalformedEvent("claims is not an object")
    actor = event.get("actor")
    if actor is not None and not isinstance(actor, dict):
        raise MalformedEvent("actor is not an object")
    subject = event.get("subject")
    client_id = event.get("client_id")
    if not isinstance(subject, str | None) or not isinstance(client_id, str | None):
        raise MalformedEvent("subject or client_id is not a string")
    identity = Identity(
        issuer=_text(event, "issuer"),
        subject=subject or "",
        client_id=client_id,
        scopes=frozenset(scopes),
        audience=(),
        expires_at=0,
        token_id=None,
        claims={**claims, **({"act": actor} if actor is not None else {})},
    )
    rule = event.get("rule", "")
    return RecordedDecision(
        line=line,
        route=route,
        method=method,
        target=target.identifier if target is not None else None,
        operation=operation,
        identity=identity,
        decision=decision,
        rule=rule if isinstance(rule, str) else "",
        subject_recorded="subject" in event,
        arguments_recorded=arguments_recorded,
        # Recorded: the claims written, and those written as absent from the token.
        claims_recorded=frozenset(claims) | frozenset(_texts(event, "claims_absent", required=False)),
    )


def _text(event: Mapping[str, Any], key: str) -> str:
    value = event.get(key)
    if not isinstance(value, str):
        raise MalformedEvent(f"{key} is {'missing' if value is None else 'not a string'}")
    return value


def _texts(event: Mapping[str, Any], key: str, *, required: bool = True) -> tuple[str, ...]:
    value = event.get(key)
    if value is None and not required:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise MalformedEvent(f"{key} is {'missing' if value is None else 'not a list of strings'}")
    return tuple(value)


def _target(event: Mapping[str, Any]) -> Target | None:
    """The target as the body named it; a resource's rule key is derived again from its URI."""
    identifier = event.get("target")
    if identifier is None:
        return None
    if not isinstance(identifier, str):
        raise MalformedEvent("target is not a string")
    kind = _TARGET_KINDS.get(event.get("target_kind", ""))
    if kind is None:
        raise MalformedEvent("target_kind is missing or not tool, prompt or resource")
    return kind(identifier)


# =========================================================================== replaying


@dataclass(frozen=True, slots=True)
class Example:
    """One recorded decision shown for a group: where it is in the log and what it asked."""

    line: int
    method: str
    target: str | None
    subject: str | None  # None: not recorded
    recorded_rule: str
    why: str  # the candidate's reason (the missing scopes, the condition); "" for an undecidable one


@dataclass(frozen=True, slots=True)
class Change:
    """Decisions the candidate answers the other way, for one direction and deciding rule."""

    direction: Direction
    rule: str  # the candidate's deciding rules
    count: int
    examples: tuple[Example, ...]


@dataclass(frozen=True, slots=True)
class Undecidable:
    """Decisions the candidate cannot take again from what the events hold, for one rule and reason."""

    rule: str
    reason: str
    count: int
    examples: tuple[Example, ...]


@dataclass(frozen=True, slots=True)
class SimulationReport:
    """What replaying a log against a candidate config found."""

    enforce_observed: bool
    replayed: int  # decisions the candidate took again
    unchanged: int
    changes: tuple[Change, ...]
    undecidable: tuple[Undecidable, ...]
    missing_routes: tuple[tuple[str, int], ...]  # (route, events) not in the candidate config
    not_json: int
    other_events: int
    unreadable: int
    unreadable_shown: tuple[Skipped, ...]  # the first few, with their line and reason
    observing_routes: tuple[str, ...]  # candidate routes with observed rules

    @property
    def changed(self) -> int:
        return sum(change.count for change in self.changes)

    @property
    def undecided(self) -> int:
        return sum(group.count for group in self.undecidable)

    @property
    def decisions_read(self) -> int:
        return self.replayed + self.undecided + sum(count for _route, count in self.missing_routes)


class _Groups:
    """Counts and the first examples per key, while the log streams by."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.examples: dict[tuple[str, str], list[Example]] = {}

    def add(self, key: tuple[str, str], example: Example) -> None:
        self.counts[key] += 1
        shown = self.examples.setdefault(key, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(example)

    def ordered(self) -> list[tuple[tuple[str, str], int, tuple[Example, ...]]]:
        keys = sorted(self.counts, key=lambda key: (-self.counts[key], key))
        return [(key, self.counts[key], tuple(self.examples[key])) for key in keys]


def simulate(
    config: GatewayConfig, events: Iterable[RecordedDecision | Skipped], *, enforce_observed: bool = False
) -> SimulationReport:
    """Decide every recorded decision again with ``config`` and say what would change.

    The candidate's enforced rules decide (what it would do once deployed); with
    ``enforce_observed``, its rules as written, observed ones enforced.
    """
    changes, undecidable = _Groups(), _Groups()
    missing_routes: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    unreadable_shown: list[Skipped] = []
    replayed = unchanged = 0
    for item in events:
        if isinstance(item, Skipped):
            skipped[item.kind] += 1
            if item.kind == "unreadable" and len(unreadable_shown) < MAX_UNREADABLE_SHOWN:
                unreadable_shown.append(item)
            continue
        route = config.route_for_path(item.route)
        if route is None:
            missing_routes[item.route] += 1
            continue
        policy = (route.policy.shadow or route.policy) if enforce_observed else route.policy
        facts = Facts(item.identity, route.path)
        decision = decide(policy, item.operation, item.identity.scopes, facts)
        rule = " + ".join(deciding.label for deciding in decision.rules)
        gaps = _unreplayable(policy, item, decision, facts)
        if gaps:
            undecidable.add((rule, gaps), _example(item, ""))  # the group says why
            continue
        replayed += 1
        now = "allow" if decision.allowed else "deny"
        if now == item.decision:
            unchanged += 1
            continue
        direction: Direction = TIGHTENS if now == "deny" else LOOSENS
        changes.add((direction, rule), _example(item, _why(decision)))
    return SimulationReport(
        enforce_observed=enforce_observed,
        replayed=replayed,
        unchanged=unchanged,
        changes=tuple(
            Change(cast(Direction, direction), rule, count, examples)
            for (direction, rule), count, examples in changes.ordered()
        ),
        undecidable=tuple(
            Undecidable(rule, reason, count, examples)
            for (rule, reason), count, examples in undecidable.ordered()
        ),
        missing_routes=tuple(sorted(missing_routes.items())),
        not_json=skipped["not_json"],
        other_events=skipped["other_event"],
        unreadable=skipped["unreadable"],
        unreadable_shown=tuple(unreadable_shown),
        observing_routes=tuple(route.path for route in config.routes if route.policy.shadow is not None),
    )


def _unreplayable(policy: RoutePolicy, item: RecordedDecision, decision: Decision, facts: Facts) -> str:
    """Why the candidate's answer cannot be trusted for this event ("" when it can).

    Only conditions can read what an event may lack; they matter unless the answer is a denial
    whatever they say: scopes missing, no rule allowing, or a condition replayed faithfully
    that denies.
    """
    if not decision.conditions or decision.missing:
        return ""
    if requirement(policy, item.operation, facts).unconditional:
        return ""
    gaps: list[str] = []
    faithful_denial = False
    for check in decision.conditions:
        found = unrecorded_reads(check.rule.condition, item) if check.rule.condition is not None else ()
        gaps.extend(gap for gap in found if gap not in gaps)
        faithful_denial = faithful_denial or (check.denies and not found)
    return "" if faithful_denial else "; ".join(gaps)


def unrecorded_reads(condition: Condition, item: RecordedDecision) -> tuple[str, ...]:
    """What ``condition`` reads that the event does not hold, in words; empty: it replays exactly."""
    narrowed = condition.narrowed or {}
    gaps: list[str] = []
    # A completion's target is judged without arguments live too: only a call's are missing.
    if condition.reads_arguments and item.method in ARGUMENT_METHODS and not item.arguments_recorded:
        gaps.append("arguments not recorded (route audit_arguments: false)")
    if "claims" in condition.roots:
        names = narrowed.get("claims")
        if names is None:
            gaps.append("claims read whole (only named claims are recorded)")
        else:
            gaps.extend(
                f"claims.{name} not recorded (add it to the route's audit_claims)"
                for name in sorted(names - item.claims_recorded)
            )
    if "principal" in condition.roots and not item.subject_recorded:
        read = narrowed.get("principal", _HIDDEN_PRINCIPAL_FIELDS)
        gaps.extend(
            f"principal.{name} not recorded (logging.include_subject: false)"
            for name in sorted(read & _HIDDEN_PRINCIPAL_FIELDS)
        )
    gaps.extend(_redacted_reads(condition, item))
    return tuple(gaps)


def _redacted_reads(condition: Condition, item: RecordedDecision) -> list[str]:
    """The fields read whose recorded value the log redaction masked (``gateway.logs``)."""
    values: dict[str, Any] = {
        "claims": item.identity.claims,
        "principal": principal_value(item.identity),
    }
    if isinstance(item.operation.arguments, Mapping):
        values["arguments"] = item.operation.arguments
    narrowed = condition.narrowed or {}
    read = [path for path in condition.paths if path[0] in values]
    read += [(root,) for root in sorted(condition.roots) if root in values and root not in narrowed]
    masked = []
    for path in read:
        value = field_value(values, path)
        if value is not ABSENT and _holds_redaction(value):
            masked.append(f"{'.'.join(path)} redacted in the log")
    return list(dict.fromkeys(masked))


def _holds_redaction(value: Any) -> bool:
    if isinstance(value, str):
        return REDACTED in value
    if isinstance(value, Mapping):
        return any(_holds_redaction(item) for item in value.values())
    if isinstance(value, list):
        return any(_holds_redaction(item) for item in value)
    return False


def _why(decision: Decision) -> str:
    """The candidate's reason, in the words of the log."""
    if decision.allowed:
        return "allowed"
    if decision.missing:
        return f"missing scopes: {' '.join(decision.missing)}"
    denied = [check.label for check in decision.conditions if check.denies]
    return "; ".join(denied) or "no scope would allow it"


def _example(item: RecordedDecision, why: str) -> Example:
    return Example(
        line=item.line,
        method=item.method,
        target=item.target,
        subject=item.identity.subject if item.subject_recorded else None,
        recorded_rule=item.rule,
        why=why,
    )


def exit_status(report: SimulationReport, *, fail_on: FailOn = "any", strict: bool = False) -> int:
    """1 when a decision changes in a ``fail_on`` direction (or, ``strict``, when any event could
    not be replayed: undecidable, on a route the candidate lacks, unreadable); else 0."""
    failing = FAILING_DIRECTIONS[fail_on]
    if any(change.direction in failing for change in report.changes):
        return EXIT_CHANGED
    if strict and (report.undecidable or report.missing_routes or report.unreadable):
        return EXIT_CHANGED
    return EXIT_UNCHANGED


# =========================================================================== rendering


def _example_text(example: Example) -> str:
    target = f" {example.target}" if example.target is not None else ""
    subject = example.subject if example.subject is not None else "(subject not recorded)"
    why = f": {example.why}" if example.why else ""
    was = example.recorded_rule or "?"
    return f"    line {example.line}: {example.method}{target} by {subject}{why} (was {was})"


def render_text(report: SimulationReport) -> str:
    """The report for a terminal or a CI log."""
    rules = "rules as written, observed ones enforced" if report.enforce_observed else "enforced rules"
    lines = [
        f"{report.decisions_read} recorded decisions against the candidate's {rules}: "
        f"{report.unchanged} unchanged, {report.changed} changed, {report.undecided} undecidable"
    ]
    for direction in (TIGHTENS, LOOSENS):
        groups = [change for change in report.changes if change.direction == direction]
        if groups:
            lines.append(f"{direction.replace('->', ' -> ')}: {sum(group.count for group in groups)}")
        for change in groups:
            lines.append(f"  {change.rule}: {change.count}")
            lines.extend(_example_text(example) for example in change.examples)
    if report.undecidable:
        lines.append(f"undecidable (not replayed, never guessed): {report.undecided}")
    for group in report.undecidable:
        lines.append(f"  {group.rule}: {group.count}: {group.reason}")
        lines.extend(_example_text(example) for example in group.examples)
    for route, count in report.missing_routes:
        lines.append(f"route not in the candidate config: {route}: {count}")
    if report.observing_routes and not report.enforce_observed:
        lines.append(
            f"observed rules on {', '.join(report.observing_routes)} are not enforced here: "
            "--enforce-observed replays them enforced"
        )
    if report.decisions_read == 0 and not report.unreadable:
        lines.append("no policy_decision events found")
    if report.not_json or report.other_events:
        lines.append(f"skipped: {report.not_json} lines not JSON, {report.other_events} other events")
    if report.unreadable:
        shown = "; ".join(f"line {item.line}: {item.reason}" for item in report.unreadable_shown)
        lines.append(f"unreadable policy_decision events: {report.unreadable} ({shown})")
    return "\n".join(lines)


def _example_json(example: Example) -> dict[str, Any]:
    return {
        "line": example.line,
        "method": example.method,
        "target": example.target,
        "subject": example.subject,
        "recorded_rule": example.recorded_rule,
        "why": example.why,
    }


def to_json(report: SimulationReport) -> dict[str, Any]:
    """The report as one JSON object, for a CI step to read."""
    return {
        "enforce_observed": report.enforce_observed,
        "decisions": report.decisions_read,
        "replayed": report.replayed,
        "unchanged": report.unchanged,
        "changed": report.changed,
        "changes": [
            {
                "direction": change.direction,
                "rule": change.rule,
                "count": change.count,
                "examples": [_example_json(example) for example in change.examples],
            }
            for change in report.changes
        ],
        "undecidable": [
            {
                "rule": group.rule,
                "reason": group.reason,
                "count": group.count,
                "examples": [_example_json(example) for example in group.examples],
            }
            for group in report.undecidable
        ],
        "missing_routes": [{"route": route, "count": count} for route, count in report.missing_routes],
        "observing_routes": list(report.observing_routes),
        "skipped": {"not_json": report.not_json, "other_events": report.other_events},
        "unreadable": {
            "count": report.unreadable,
            "first": [{"line": item.line, "reason": item.reason} for item in report.unreadable_shown],
        },
    }


# =========================================================================== the command


def run(
    config: GatewayConfig,
    *,
    decisions: str,
    enforce_observed: bool = False,
    fail_on: FailOn = "any",
    strict: bool = False,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The ``simulate`` subcommand once the config is loaded: read the log, replay it, print."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        if decisions == "-":
            report = simulate(config, read_events(sys.stdin), enforce_observed=enforce_observed)
        else:
            # Undecodable bytes become lines that are not JSON, counted like any other.
            with open(decisions, encoding="utf-8", errors="replace") as file:
                report = simulate(config, read_events(file), enforce_observed=enforce_observed)
    except OSError as exc:
        print(f"--decisions {decisions}: cannot read: {exc.strerror or exc}", file=err)
        return EXIT_USAGE
    print(json.dumps(to_json(report), indent=2) if as_json else render_text(report), file=out)
    return exit_status(report, fail_on=fail_on, strict=strict)
