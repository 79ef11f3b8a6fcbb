"""Per-route authorization rules and the pure decision over them.

A route's rules are ordered maps from a glob to the scopes it needs, one map per kind of target:
``tools`` (``tools/call`` by tool name), ``resources`` (``resources/read``, ``resources/subscribe``,
``resources/unsubscribe`` by URI, in every protocol era; templates by their URI template),
``prompts`` (``prompts/get`` by name), and ``methods`` (every other JSON-RPC method). The first
matching pattern decides; the route's own ``scopes`` always apply as well. A completion, and a
2026-07-28 ``subscriptions/listen`` for the resources it watches, also need what using their
targets needs. Resource patterns match a URI's normal form (``gateway.mcp.uris``), the way the
upstream's template hands it to its handler; a URI without one matches no rule and is never
allowed. The same rules decide what a ``*/list`` result shows, so a caller never sees what it may
not use (and never uses what it cannot see).

A rule may also carry a condition (``gateway.mcp.conditions``): the matched rule allows only when
it is true, a false or failing one denies with no scope to ask for. Rules in ``mode: observe``
(or a whole route) are decided too, on the ``shadow`` policy, but only logged (``observed_policy``).

Nothing here does I/O: the decision takes frozen values and returns a frozen value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Final, TypeAlias

from ..errors import InsufficientScope, PolicyDenied
from .conditions import Condition, ConditionOutcome, Facts, NotAnObject, Subject, evaluate
from .globs import GLOB_CHARACTERS, GlobError, compile_glob, shadowing_rule
from .messages import McpMessage
from .methods import (
    LIFECYCLE_METHODS,
    METHODS,
    RESPONSE_METHOD,
    USE_METHOD,
    Prompt,
    Resource,
    Target,
    Tool,
    target_type,
)

__all__ = ["GlobError", "compile_glob", "shadowing_rule"]  # re-exported: the rules' glob language


class Default(Enum):
    """What happens to a request that no rule matches."""

    DENY = "deny"
    ALLOW = "allow"  # allowed with the route's scopes alone


class ListVisibility(Enum):
    """Which items a ``*/list`` result shows a caller (the route key ``list_visibility``)."""

    # Every item some rule allows, whether or not the caller holds its scopes yet: a host that
    # only calls what it has listed can then call it and get the 403 step-up challenge that
    # names the missing scopes. Items no rule allows (no scope would help) stay hidden.
    STEP_UP = "step_up"
    USABLE = "usable"  # only what the caller may use with the scopes it holds now


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``pattern: [scopes]`` entry; ``line`` points into the config for explanations."""

    section: str  # "tools", "resources", "prompts" or "methods"
    pattern: str
    scopes: tuple[str, ...]
    regex: re.Pattern[str]
    line: int = 0
    condition: Condition | None = None  # also needed: this CEL condition is true (``conditions``)
    observe: bool = False  # ``mode: observe``: decided and logged, never enforced (``shadow``)
    limits: tuple[str, ...] = ()  # names of rate limits a call this rule allows counts against

    def matches(self, name: str) -> bool:
        return self.regex.fullmatch(name) is not None

    @property
    def label(self) -> str:
        """How logs and ``explain`` name this rule, e.g. ``tools['get_*']``."""
        return f"{self.section}[{self.pattern!r}]"


@dataclass(frozen=True, slots=True)
class DefaultRule:
    """No rule matched: the route's ``default`` (or, without one, the default default) decided."""

    default: Default
    written: bool = True  # False: the route has no ``default:``; the default default decided
    section: str = ""  # the rule section that had no match (for the unwritten default's label)

    @property
    def label(self) -> str:
        """How logs and ``explain`` name it: ``default: deny`` as written; without a written
        default, what decided: ``no tools rule matches`` (denied) or ``no methods rule: route
        scopes`` (allowed with the route's scopes)."""
        if self.written:
            return f"default: {self.default.value}"
        if self.default is Default.DENY:
            return f"no {self.section} rule matches"
        return f"no {self.section} rule: route scopes"


@dataclass(frozen=True, slots=True)
class Unreadable:
    """The target has no normal form (a URI that reads differently to different readers): no
    rule may match it and no default allows it."""

    @property
    def label(self) -> str:
        """How logs and ``explain`` name it."""
        return "ambiguous uri"


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """A route's rules; the scopes every request on the route needs are kept here, and only here."""

    route_scopes: tuple[str, ...] = ()
    tools: tuple[Rule, ...] = ()
    resources: tuple[Rule, ...] = ()
    prompts: tuple[Rule, ...] = ()
    methods: tuple[Rule, ...] = ()
    # None: deny unmatched tools/resources/prompts (if the route has any such rule, else allow
    # them), allow everything else with the route scopes.
    default: Default | None = None
    list_visibility: ListVisibility = ListVisibility.STEP_UP
    # The scopes a 401 names (the route key ``challenge_scopes``); None: the route scopes.
    challenge: tuple[str, ...] | None = None
    # With ``mode: observe`` rules (or route): the policy as written, every rule enforced, which
    # each request is also decided by and a denial there logged as ``would_deny``; this policy
    # is then the one enforced (``observed_policy``). None: nothing is observed.
    shadow: RoutePolicy | None = None
    # Whether using a tool, resource or prompt needs a rule naming it; None: whether the route
    # has such rules. An enforced policy keeps the written one's, so leaving its observed rules
    # out never opens what no rule names.
    restricts: bool | None = None
    # Tool names written as literal (non-glob) patterns: the only tool names a metric label takes.
    literal_tools: frozenset[str] = field(init=False, repr=False, compare=False)
    # The token claims some condition reads by name (``claims.repos``): what audit events record.
    claims_read: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        literal = frozenset(
            rule.pattern for rule in self.tools if not GLOB_CHARACTERS.intersection(rule.pattern)
        )
        object.__setattr__(self, "literal_tools", literal)  # frozen: derived once, at build time
        names: dict[str, None] = {}
        for condition in self.conditions:
            names.update(dict.fromkeys(sorted((condition.narrowed or {}).get("claims", ()))))
        object.__setattr__(self, "claims_read", tuple(names))

    def rules_for(self, target: Target) -> tuple[Rule, ...]:
        match target:
            case Tool():
                return self.tools
            case Prompt():
                return self.prompts
            case Resource():
                return self.resources

    @property
    def all_rules(self) -> tuple[Rule, ...]:
        return self.tools + self.resources + self.prompts + self.methods

    @property
    def conditions(self) -> tuple[Condition, ...]:
        """Every rule's condition, observed rules' included."""
        return tuple(rule.condition for rule in (self.shadow or self).all_rules if rule.condition is not None)

    @property
    def restricts_use(self) -> bool:
        """Whether using a tool, resource or prompt needs a rule naming it (when no ``default``
        is written): once the route has any tools, resources or prompts rule."""
        if self.restricts is not None:
            return self.restricts
        return bool(self.tools or self.resources or self.prompts)

    @property
    def first_challenge(self) -> tuple[str, ...]:
        """What a 401 without a better hint names: ``challenge_scopes``, else the route scopes
        (as written: while rules are observed, tokens are asked for what they will need)."""
        written = self.shadow or self
        return written.challenge if written.challenge is not None else written.route_scopes


@dataclass(frozen=True, slots=True)
class Operation:
    """What a message asks to do, as the policy sees it (built from the parsed, strict body)."""

    method: str
    target: Target | None = None
    watched: tuple[Target, ...] = ()  # subscriptions/listen: the resources whose updates it asks for
    # A call's ``params.arguments`` (tools/call, prompts/get; ``{}`` when it sends none); None for
    # an operation that carries none (a list item's use, a completion's target).
    arguments: Any = None


@dataclass(frozen=True, slots=True)
class LiteralRuleRequired:
    """A method that lists every user's handles (``tasks/list``): only a ``methods`` rule that
    names it literally allows it, since the gateway cannot tell whose items the upstream lists."""

    method: str

    @property
    def label(self) -> str:
        """How logs and ``explain`` name it."""
        return f"methods[{self.method!r}] must be written out to allow it"


DecidingRule: TypeAlias = Rule | DefaultRule | Unreadable | LiteralRuleRequired


@dataclass(frozen=True, slots=True)
class ConditionCheck:
    """One matched rule's condition and how it came out for this operation."""

    rule: Rule
    outcome: ConditionOutcome

    @property
    def denies(self) -> bool:
        """False or failed (fail closed); ``unknown`` (no arguments to read, a list) does not."""
        return self.outcome.result in ("false", "error")

    @property
    def label(self) -> str:
        """How logs name it: ``tools['send_email'] condition false`` (with the reason of an error)."""
        reason = f" ({self.outcome.reason})" if self.outcome.reason else ""
        return f"{self.rule.label} condition {self.outcome.result}{reason}"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    required: tuple[str, ...]  # every scope the operation needs (route scopes first)
    missing: tuple[str, ...]  # required scopes the caller lacks
    # The rules that decided, for audit and explain: one, or a completion's own rule and then
    # its target's.
    rules: tuple[DecidingRule, ...]
    # True when no scope could help (no rule matched and the default denies, or a condition
    # denied a caller that holds the scopes): the answer is a plain 403, not a step-up challenge.
    unconditional: bool = False
    conditions: tuple[ConditionCheck, ...] = ()  # every matched rule's condition, evaluated

    @property
    def condition_denied(self) -> bool:
        return any(check.denies for check in self.conditions)

    @property
    def label(self) -> str:
        """How the log names the deciding rules, e.g. ``methods['completion/complete'] + prompts['x']``,
        and a condition that denied."""
        rules = " + ".join(rule.label for rule in self.rules)
        denied = [check.label for check in self.conditions if check.denies]
        return "; ".join([rules, *denied]) if denied and not self.missing else rules


# --- Decisions ----------------------------------------------------------------------------------


def _union(*groups: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for group in groups:
        for scope in group:
            seen.setdefault(scope, None)
    return tuple(seen)


def first_match(rules: tuple[Rule, ...], name: str) -> Rule | None:
    for rule in rules:
        if rule.matches(name):
            return rule
    return None


def _target_decides(operation: Operation) -> bool:
    """Whether the target's rules decide (a call on it), rather than the method rules."""
    # A 2026-07-28 resources/subscribe without a uri names no target (that version removed it).
    return operation.target is not None and target_type(operation.method) is not None


def _unmatched_rule(policy: RoutePolicy, operation: Operation) -> DefaultRule:
    """What decides an operation no rule matches: the written default, or the default default."""
    decides = _target_decides(operation)
    section = SECTION_OF[type(operation.target)] if decides and operation.target is not None else "methods"
    if policy.default is not None and operation.method not in LIFECYCLE_METHODS:
        return DefaultRule(policy.default, written=True, section=section)
    # The default default: once a route has tools, resources or prompts rules, using one needs a
    # rule that names it; a route with none (only `scopes`) lets its scopes govern everything,
    # as whoever wrote just that expects, rather than refusing every call.
    denies = decides and policy.restricts_use
    return DefaultRule(Default.DENY if denies else Default.ALLOW, written=False, section=section)


# The rule section that decides each kind of target.
SECTION_OF: Final[dict[type, str]] = {Tool: "tools", Resource: "resources", Prompt: "prompts"}


@dataclass(frozen=True, slots=True)
class Requirement:
    """What an operation needs: scopes, the rules that say so, whether no scope can help, and how
    the conditions of the matched rules came out."""

    scopes: tuple[str, ...]
    rules: tuple[DecidingRule, ...]
    unconditional: bool
    conditions: tuple[ConditionCheck, ...] = ()


def requirement(policy: RoutePolicy, operation: Operation, facts: Facts | None = None) -> Requirement:
    """What ``operation`` needs on this route; ``facts`` (the caller) to evaluate conditions with
    (without them a condition is ``unknown``, which denies nothing: a challenge hint)."""
    target = operation.target
    key: str | None = None  # the target's rule key, when the target's rules decide
    if target is not None and _target_decides(operation):
        key = target.rule_key
        if key is None:  # fail closed, whatever the default: parse_post refuses these first
            return Requirement(policy.route_scopes, (Unreadable(),), True)
        rule = first_match(policy.rules_for(target), key)
    else:
        rule = first_match(policy.methods, operation.method)
        spec = METHODS.get(operation.method)
        written_out = rule is not None and rule.pattern == operation.method
        if spec is not None and spec.needs_literal_rule and not written_out:
            return Requirement(policy.route_scopes, (LiteralRuleRequired(operation.method),), True)
    if rule is None:
        unmatched = _unmatched_rule(policy, operation)
        if unmatched.default is Default.DENY:
            return Requirement(policy.route_scopes, (unmatched,), True)
    scopes = _union(policy.route_scopes, rule.scopes if rule is not None else ())
    rules: tuple[DecidingRule, ...] = (rule if rule is not None else unmatched,)
    conditions: tuple[ConditionCheck, ...] = ()
    if rule is not None and rule.condition is not None:
        subject = Subject(operation.method, key, operation.arguments)
        conditions = (ConditionCheck(rule, evaluate(rule.condition, facts, subject)),)
    revealed = operation.watched
    spec = METHODS.get(operation.method)
    if spec is not None and spec.completes and target is not None:
        revealed = (target, *revealed)
    for shown in revealed:
        # Completions reveal data of the prompt or resource they name (spec-notes E5), a
        # subscriptions/listen stream the updates of the resources it names: each needs
        # whatever using that target needs, on top of the method's own rule. Its condition is
        # judged as a list item's is: without arguments, since none are sent to use it.
        use = Operation(USE_METHOD[type(shown)], shown)
        needed = requirement(policy, use, facts)
        rules += needed.rules
        conditions += needed.conditions
        if needed.unconditional:
            return Requirement(policy.route_scopes, rules, True, conditions)
        scopes = _union(scopes, needed.scopes)
    return Requirement(scopes, rules, False, conditions)


def operation_of(message: McpMessage) -> Operation:
    """The operation a strictly parsed message asks for; a client's response is ``RESPONSE_METHOD``."""
    if message.kind == "response":
        return Operation(RESPONSE_METHOD)
    arguments: Mapping[str, Any] | NotAnObject | None = None
    if message.method in ARGUMENT_METHODS:
        params = message.params or {}
        sent = params.get("arguments", _NO_ARGUMENTS)  # absent: none sent, which is no arguments
        arguments = sent if isinstance(sent, Mapping) else NotAnObject(sent)  # null is not absent
    return Operation(message.method or "", message.target, message.watched, arguments)


# The methods whose ``params.arguments`` conditions read; a call without any has none (``{}``).
ARGUMENT_METHODS: Final = frozenset({"tools/call", "prompts/get"})
_NO_ARGUMENTS: Final[Mapping[str, Any]] = {}


def decide(
    policy: RoutePolicy, operation: Operation, granted: frozenset[str], facts: Facts | None = None
) -> Decision:
    """Allow or deny one operation for a caller holding ``granted`` scopes (``facts``: who the
    caller is, for conditions). A condition that denies a caller who holds the scopes leaves no
    scope to ask for: a plain 403; one who lacks them is challenged for them first."""
    needed = requirement(policy, operation, facts)
    missing = tuple(scope for scope in needed.scopes if scope not in granted)
    condition_denied = any(check.denies for check in needed.conditions)
    return Decision(
        allowed=not needed.unconditional and not missing and not condition_denied,
        required=needed.scopes,
        missing=missing,
        rules=needed.rules,
        unconditional=needed.unconditional or (condition_denied and not missing),
        conditions=needed.conditions,
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    """How the decisions of one POST combine: one denied message refuses the whole POST."""

    allowed: bool
    unconditional: bool  # some message no scope could allow: a plain 403
    challenge_scopes: tuple[str, ...]  # MCP 2026-07-28: every scope needed, in one challenge
    labels: tuple[str, ...]  # the rules that denied, as the log names them
    required: tuple[str, ...] = ()  # every scope the whole POST needs (downstream narrowing)


def combine(decisions: Iterable[Decision]) -> Verdict:
    decisions = tuple(decisions)
    denied = [decision for decision in decisions if not decision.allowed]
    return Verdict(
        allowed=not denied,
        unconditional=any(decision.unconditional for decision in denied),
        challenge_scopes=_union(*(decision.required for decision in denied)),
        labels=tuple(decision.label for decision in denied),
        required=_union(*(decision.required for decision in decisions)),
    )


def refusal(verdict: Verdict, kept: tuple[str, ...] = ()) -> PolicyDenied | InsufficientScope | None:
    """The error a POST's verdict is answered with, or None when it is forwarded; pure.

    Any unconditional denial: a plain 403. Otherwise a 403 ``insufficient_scope`` challenge that
    names the required scopes of every denied message (MCP 2026-07-28 step-up) and then ``kept``
    (``kept_scopes``: what the caller holds that the route uses). The pipeline raises it;
    ``explain`` shows it.
    """
    if verdict.allowed:
        return None
    if verdict.unconditional:
        return PolicyDenied(detail="; ".join(verdict.labels))
    return InsufficientScope(detail=", ".join(verdict.labels), scopes=_union(verdict.challenge_scopes, kept))


def kept_scopes(policy: RoutePolicy, granted: frozenset[str]) -> tuple[str, ...]:
    """The caller's scopes that this route's rules use, for a step-up challenge to name too.

    MCP 2025-11-25 recommends a step-up challenge also name the granted scopes the client still
    needs, "so clients do not lose permissions"; 2026-07-28 lets clients add the challenged
    scopes to theirs. A client that replaces its scopes with the challenged ones (TypeScript SDK
    1.x) would otherwise lose the first tool's scope when it steps up to a second, and go back
    and forth between two authorizations. Scopes the route never uses are not named: the token
    asked for stays as narrow as the route's needs.
    """
    return tuple(scope for scope in scopes_supported(policy) if scope in granted)


def challenge_scopes(policy: RoutePolicy, method: str | None, name: str | None) -> tuple[str, ...]:
    """The scopes a 401 challenge should name (RFC 6750 §3 `scope`).

    A 2026-07-28 request names its operation in ``Mcp-Method`` / ``Mcp-Name`` headers. Before the
    caller is authenticated the body is not read, so those headers are used here as a HINT for
    the challenge only: a client then gets a token good enough for its first call instead of a
    401 followed by a 403 step-up. No decision is ever taken on them (that is `decide`, on the
    body). Without a usable hint, or for an operation no scope would allow: ``first_challenge``
    (the route key ``challenge_scopes``, else the route scopes); with one, those and the
    operation's scopes.
    """
    first = policy.first_challenge
    if not method:
        return first
    kind = target_type(method)
    if kind is not None and name is None:
        return first
    target = kind(name) if kind is not None and name is not None else None
    needed = requirement(policy, Operation(method, target))
    return first if needed.unconditional else _union(needed.scopes, first)


def is_visible(
    policy: RoutePolicy, target: Target, granted: frozenset[str], facts: Facts | None = None
) -> bool:
    """Whether a list item may be shown: with ``list_visibility: usable`` exactly when using it
    would be allowed now; with ``step_up`` (the default) also when some scopes would allow it
    (the caller then gets a step-up challenge for them), never when no scope would.

    A condition is evaluated with what a list knows (the caller, the item): one that is false
    hides the item; one that reads ``arguments`` cannot be decided before a call, so it shows
    the item (some call of it could be allowed) and the call decides.

    A resource or template is judged by its normal form, so ``DOCS://x`` is shown or hidden as
    ``docs://x`` is; one without a normal form (``docs://a%2Fb``) is hidden: fail closed.
    """
    decision = decide(policy, Operation(USE_METHOD[type(target)], target), granted, facts)
    if policy.list_visibility is ListVisibility.STEP_UP:
        return not decision.unconditional and not decision.condition_denied
    return decision.allowed


def scopes_supported(policy: RoutePolicy) -> tuple[str, ...]:
    """Every scope the rules can ask for, route scopes first (for the protected resource metadata);
    observed rules' too, so tokens asked for during a roll-out already carry them."""
    written = policy.shadow or policy
    return _union(written.route_scopes, *(rule.scopes for rule in written.all_rules))


# --- Observe mode -------------------------------------------------------------------------------


def observed_policy(written: RoutePolicy, *, observe_route: bool) -> RoutePolicy:
    """The policy to enforce for one written with ``mode: observe`` rules (or route), holding the
    written one, with every rule enforced, as its ``shadow``; without any, ``written`` itself.

    An observed rule is left out of the enforced rules, so what it matches falls to the rules
    after it (an enforced rule of the same pattern after it keeps deciding until the observed one
    is enforced), and, with none, to what the written route does with what no rule names: a
    route whose only tools rule is observed still refuses every other tool. A route in observe
    mode enforces no scope, rule or condition, only what the gateway never lets through: a
    ``tasks/list`` still needs its literal ``methods`` rule, an ambiguous URI is still refused.
    The route still needs a valid token.
    """
    if not observe_route and not any(rule.observe for rule in written.all_rules):
        return written
    shadow = _each_rule(written, lambda rule: replace(rule, observe=False))
    if observe_route:
        literal_only = tuple(
            replace(rule, scopes=(), condition=None, observe=False)
            for rule in written.methods
            if (spec := METHODS.get(rule.pattern)) is not None and spec.needs_literal_rule
        )
        return RoutePolicy(
            methods=literal_only,
            list_visibility=written.list_visibility,
            challenge=written.challenge,
            shadow=shadow,
        )
    enforced = _each_rule(written, lambda rule: None if rule.observe else rule)
    return replace(enforced, shadow=shadow, restricts=written.restricts_use)


def _each_rule(policy: RoutePolicy, change: Callable[[Rule], Rule | None]) -> RoutePolicy:
    """``policy`` with every rule changed (None: left out)."""

    def changed(rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        return tuple(rule for rule in map(change, rules) if rule is not None)

    return replace(
        policy,
        tools=changed(policy.tools),
        resources=changed(policy.resources),
        prompts=changed(policy.prompts),
        methods=changed(policy.methods),
    )
