"""Rule conditions: CEL over who calls, what they call and with which arguments.

A rule (``tools: {delete_branch: {scopes: [...], condition: "..."}}``) may carry a condition. It
is checked once, at load, by ``gateway.cel`` (syntax, types, names: an unknown field is a config
error, never a silent deny) and compiled by ``common-expression-language``, a Rust evaluator:
~1 µs for a typical expression, where the pure-Python ``cel-python`` took ~500 µs (measured
with the same expression, README "Conditions"). Its regular expressions are linear-time.

What a condition may read depends on its rule section (``VARIABLES``): ``claims``, ``principal``,
``method`` and ``route`` everywhere; ``tool`` / ``prompt`` / ``resource`` (the name or the URI's
normal form, as the rules match it); ``arguments`` on tools and prompts, and only where a call
carries them: a list, or a completion that reveals a prompt, has none, and a condition that
reads them is then ``unknown`` (a list shows the item, since some call of it could be allowed).

Evaluation fails closed: an error (an absent field, a type mismatch) or a result that is not
``true`` denies, with the reason. Only the fields an expression reads are handed to the
evaluator (the cost of converting values dominates the evaluation), so a 4 MB argument the
condition never looks at costs nothing.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ..cel import (
    BOOL,
    DYN,
    STRING,
    CelError,
    CelProblem,
    CelType,
    ListType,
    MapType,
    RecordType,
    check,
)
from ..principal import Identity

MAX_CONDITION_LENGTH: Final = 1024  # characters; past it a condition is a config error
MAX_CONDITION_NODES: Final = 200

_CLAIMS: Final = MapType(STRING, DYN)
PRINCIPAL_TYPE: Final = RecordType(
    "principal",
    {
        "issuer": STRING,
        "subject": STRING,
        "client_id": STRING,
        "scopes": ListType(STRING),
        "actor": MapType(STRING, DYN),  # the token's `act` claim (RFC 8693 §4.1)
    },
    optional=frozenset({"client_id", "actor"}),
    absent_when={"client_id": "the token names no client", "actor": "the token has no act claim"},
)
_COMMON: Final[dict[str, CelType]] = {
    "claims": _CLAIMS,
    "principal": PRINCIPAL_TYPE,
    "method": STRING,
    "route": STRING,
}
# The variables a condition may read, by the rule section it is written in.
VARIABLES: Final[Mapping[str, Mapping[str, CelType]]] = {
    "tools": {**_COMMON, "tool": STRING, "arguments": MapType(STRING, DYN)},
    "prompts": {**_COMMON, "prompt": STRING, "arguments": MapType(STRING, DYN)},
    "resources": {**_COMMON, "resource": STRING},
    "methods": dict(_COMMON),
}
TARGET_VARIABLE: Final = {"tools": "tool", "prompts": "prompt", "resources": "resource"}


class ConditionError(ValueError):
    """A condition that cannot be used; ``problems`` say where in it and why."""

    def __init__(self, problems: tuple[CelProblem, ...]) -> None:
        self.problems = problems
        super().__init__("; ".join(problem.message for problem in problems))


@dataclass(frozen=True, slots=True)
class Condition:
    """One rule's compiled condition and what it reads."""

    source: str
    section: str
    program: Any = None  # cel.Program; not compared (the source says what it is)
    roots: frozenset[str] = frozenset()
    # For each variable read only through fields, those first-level fields (the rest is never
    # converted); a variable missing here is handed whole.
    narrowed: Mapping[str, frozenset[str]] | None = None
    paths: tuple[tuple[str, ...], ...] = ()  # every field path it reads, for explain and reasons
    argument_fields: frozenset[str] = frozenset()  # `arguments.X` it names (checked against inputSchema)
    # The variables each call sets (the caller's are kept per token): computed once, not per call.
    call_roots: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "call_roots", tuple(sorted(self.roots - CALLER_VARIABLES)))

    @property
    def reads_arguments(self) -> bool:
        return "arguments" in self.roots

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Condition) and (other.source, other.section) == (self.source, self.section)

    def __hash__(self) -> int:
        return hash((self.source, self.section))


def compile_condition(source: str, section: str) -> Condition:
    """Check and compile a condition written in a ``section`` rule; ConditionError if unusable."""
    try:
        checked = check(
            source, VARIABLES[section], max_length=MAX_CONDITION_LENGTH, max_nodes=MAX_CONDITION_NODES
        )
    except CelError as exc:
        raise ConditionError(exc.problems) from None
    if checked.result not in (BOOL, DYN):
        raise ConditionError((CelProblem(0, f"a condition must be a bool; this is a {checked.result}"),))
    engine = _engine()
    bad_regexes = tuple(
        CelProblem(offset, f"invalid regular expression {pattern!r} for matches()")
        for pattern, offset in checked.regexes
        if not _regex_compiles(engine, pattern)
    )
    if bad_regexes:
        raise ConditionError(bad_regexes)
    try:
        program = engine.compile(source)
    except ValueError as exc:  # the checker accepted what the engine does not: refuse, never guess
        raise ConditionError((CelProblem(0, str(exc).splitlines()[0]),)) from None
    narrowed = {
        root: frozenset(
            path[1] for path in (p.path for p in checked.paths) if path[0] == root and len(path) > 1
        )
        for root in checked.roots
        if root not in checked.whole and VARIABLES[section][root] != STRING
    }
    paths = tuple(dict.fromkeys(path.path for path in checked.paths))
    return Condition(
        source=source,
        section=section,
        program=program,
        roots=checked.roots,
        narrowed=narrowed,
        paths=paths,
        argument_fields=frozenset(path[1] for path in paths if path[0] == "arguments" and len(path) > 1),
    )


def _engine() -> Any:
    """The CEL evaluator, imported on first use: a config without conditions never loads it."""
    return importlib.import_module("cel")


def _regex_compiles(engine: Any, pattern: str) -> bool:
    """Whether the evaluator's own regex engine (Rust ``regex``) takes the pattern."""
    try:
        engine.compile('"".matches(p)').execute({"p": pattern})
    except Exception:  # the engine's error types are not part of its API
        return False
    return True


# --- evaluation ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Facts:
    """What a condition may know about one request besides its operation: who asks, where."""

    identity: Identity
    route: str


@dataclass(frozen=True, slots=True)
class Subject:
    """What one condition is asked about: the method, the target's rule key, the arguments."""

    method: str
    target: str | None = None  # the tool or prompt name, the resource URI's normal form
    # None: the operation carries none (a list item, a completion's target); a call always has
    # a mapping (``{}`` when it sends none) or NotAnObject.
    arguments: Mapping[str, Any] | NotAnObject | None = None


Result = Literal["true", "false", "error", "unknown"]


@dataclass(frozen=True, slots=True)
class ConditionOutcome:
    """How a condition came out for one operation, and why (for the log and ``explain``)."""

    result: Result
    reason: str = ""


UNKNOWN_WITHOUT_ARGUMENTS: Final = ConditionOutcome(
    "unknown", "reads arguments, which only a call carries: decided at call time"
)
UNKNOWN_WITHOUT_CALLER: Final = ConditionOutcome("unknown", "no caller to evaluate it for")


class _Absent:
    """A variable the operation does not have (``arguments`` of a list)."""


ABSENT: Final = _Absent()


@dataclass(frozen=True, slots=True)
class NotAnObject:
    """A call's ``params.arguments`` that is not a JSON object (``null``, a list, a string): a
    condition that reads it fails (fail closed), as an upstream SDK would refuse the call."""

    value: Any


def principal_value(identity: Identity) -> dict[str, Any]:
    """``principal`` as conditions see it: optional fields absent (not null) when the token lacks them."""
    value: dict[str, Any] = {
        "issuer": identity.issuer,
        "subject": identity.subject,
        "scopes": sorted(identity.scopes),
    }
    if identity.client_id is not None:
        value["client_id"] = identity.client_id
    actor = identity.claims.get("act")
    if isinstance(actor, Mapping):
        value["actor"] = dict(actor)
    return value


def variable_value(name: str, facts: Facts, subject: Subject, section: str) -> Any:
    """One variable's whole value for this operation (ABSENT if it has none)."""
    if name == "claims":
        return facts.identity.claims
    if name == "principal":
        return principal_value(facts.identity)
    if name == "method":
        return subject.method
    if name == "route":
        return facts.route
    if name == "arguments":
        return ABSENT if subject.arguments is None else subject.arguments
    if name == TARGET_VARIABLE.get(section):
        return ABSENT if subject.target is None else subject.target
    raise KeyError(name)  # the checker only lets declared variables through


def _narrowed(value: Any, fields: frozenset[str] | None) -> Any:
    """A mapping cut to ``fields`` (only what the condition reads is converted), else as is."""
    if type(value) is not dict and not isinstance(value, Mapping):  # the exact type first: no ABC check
        return value
    if fields is None:
        return dict(value)
    return {field: value[field] for field in fields if field in value}


def activation(condition: Condition, facts: Facts, subject: Subject) -> dict[str, Any] | None:
    """The evaluator's input: each variable read, narrowed to the fields read; None if one is absent."""
    narrowed = condition.narrowed or {}
    values: dict[str, Any] = {}
    for name in condition.roots:
        value = variable_value(name, facts, subject, condition.section)
        if value is ABSENT:
            return None
        values[name] = _narrowed(value, narrowed.get(name))
    return values


# What is the same for every call of one token (its claims, the principal they make): converted
# for the evaluator once per token and condition, not per call. Converting a value costs the
# evaluator ~1-3 µs, running a typical condition under 1 µs.
CALLER_VARIABLES: Final = frozenset({"claims", "principal"})
_CALLER_CONTEXTS_MAX: Final = 4096


class CallerContexts:
    """The evaluator's contexts holding a caller's variables, by (condition, claims object).

    The claims mapping is the verified token's own (``Identity.claims``, shared by every request
    that presents the token while its verification is cached), so an entry is valid exactly while
    that object is the caller's claims: it is kept in the entry and compared by identity. Per
    call, the call's own variables (arguments, target, method, route) are set on the context
    just before it is evaluated, with no await in between.
    """

    def __init__(self, size: int = _CALLER_CONTEXTS_MAX) -> None:
        self._size = size
        self._entries: dict[tuple[int, int], tuple[Condition, Mapping[str, Any], Any]] = {}

    def context(self, condition: Condition, facts: Facts) -> Any:
        """The evaluator's context with this caller's variables for ``condition``."""
        claims = facts.identity.claims
        key = (id(condition), id(claims))
        entry = self._entries.get(key)
        if entry is not None and entry[0] is condition and entry[1] is claims:
            return entry[2]
        narrowed = condition.narrowed or {}
        caller = {
            name: _narrowed(
                claims if name == "claims" else principal_value(facts.identity), narrowed.get(name)
            )
            for name in condition.roots & CALLER_VARIABLES
        }
        if len(self._entries) >= self._size:
            self._entries.clear()  # bounded; rebuilt as callers come back
        context = _engine().Context(caller)
        self._entries[key] = (condition, claims, context)
        return context


CALLER_CONTEXTS: Final = CallerContexts()
TRUE: Final = ConditionOutcome("true")
FALSE: Final = ConditionOutcome("false")


def evaluate(condition: Condition, facts: Facts | None, subject: Subject) -> ConditionOutcome:
    """Run a condition; anything but ``true`` denies (fail closed), with the reason."""
    if facts is None:
        return UNKNOWN_WITHOUT_CALLER
    if isinstance(subject.arguments, NotAnObject) and condition.reads_arguments:
        kind = "null" if subject.arguments.value is None else type(subject.arguments.value).__name__
        return ConditionOutcome("error", f"arguments is not an object ({kind})")
    narrowed = condition.narrowed or {}
    call: dict[str, Any] = {}
    for name in condition.call_roots:
        value = variable_value(name, facts, subject, condition.section)
        if value is ABSENT:
            return UNKNOWN_WITHOUT_ARGUMENTS
        call[name] = _narrowed(value, narrowed.get(name))
    context = CALLER_CONTEXTS.context(condition, facts)
    try:
        if call:
            context.update(call)
        result = condition.program.execute(context)
    except Exception as exc:  # every evaluation error denies: absent key, overload, overflow, …
        return ConditionOutcome("error", _error_reason(condition, activation(condition, facts, subject), exc))
    if result is True:
        return TRUE
    if result is False:
        return FALSE
    return ConditionOutcome("error", f"evaluated to {type(result).__name__}, not a bool")


def _error_reason(condition: Condition, values: Mapping[str, Any] | None, exc: Exception) -> str:
    """The first field the expression reads that the operation lacks, else what went wrong in
    the evaluator's words, without any of the values it quotes."""
    for path in condition.paths:
        if values is not None and field_value(values, path) is ABSENT:
            return f"{'.'.join(path)} is absent"
    return evaluator_words(exc)


# The evaluator quotes the value a function refused (`Function 'duration' error: Parsing Error:
# Error { input: "<the argument>" … }`, a regex's text for `matches`): an argument, or a claim,
# must not reach the audit event, the trail or a span through an error (audit_arguments decides).
_FUNCTION_ERROR: Final = re.compile(r"Function '([A-Za-z_][A-Za-z0-9_.]*)' error")


def evaluator_words(exc: Exception) -> str:
    """An evaluation error as a reason: the function that refused its argument, or the error's
    first words when they quote nothing, else its class."""
    text = str(exc)
    if (function := _FUNCTION_ERROR.match(text)) is not None:
        return f"{function[1]}() refused its argument"
    first = text.split(":", 1)[0].split(". ", 1)[0].strip()
    if not first or '"' in first or "'" in first or "`" in first or len(first) > 80:
        return type(exc).__name__
    return first


def field_value(values: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path`` (``("arguments", "repo")``), or ABSENT."""
    value: Any = values
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return ABSENT
        value = value[part]
    return value


def read_fields(condition: Condition, facts: Facts, subject: Subject) -> tuple[tuple[str, Any], ...]:
    """Each field path the condition reads and its value here (ABSENT if missing), for ``explain``."""
    values = {name: variable_value(name, facts, subject, condition.section) for name in condition.roots}
    shown: list[tuple[str, Any]] = []
    for path in condition.paths or tuple((name,) for name in sorted(condition.roots)):
        shown.append((".".join(path), field_value(values, path)))
    return tuple(shown)
