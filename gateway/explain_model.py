"""What ``explain`` says about one POST: the frozen values ``gateway.explain`` builds and renders."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .config import PinningConfig
from .errors import TokenReason
from .mcp import visibility
from .mcp.conditions import ConditionOutcome
from .mcp.methods import Target
from .mcp.policy import Decision, Rule

EXIT_FORWARDED = 0
EXIT_REFUSED = 1  # denied by the policy, or refused before it (token, body)
EXIT_USAGE = 2  # bad arguments, unreadable or invalid config, unknown route

NOT_VERIFIED = "token signature NOT verified (offline explain)"


@dataclass(frozen=True, slots=True)
class TokenProblem:
    """Why the gateway would refuse the token (401, ``error``) before any policy decision."""

    reason: TokenReason  # the gateway's own reason, as its log line names it
    message: str
    error: str = "invalid_token"  # the OAuth error code of the 401: invalid_dpop_proof for DPoP ones


@dataclass(frozen=True, slots=True)
class TokenSummary:
    """What an unverified token says about its caller."""

    decoded: bool
    claims: Mapping[str, Any]  # iss, sub, client_id, aud, exp as present in the token
    problems: tuple[TokenProblem, ...]
    binding: DpopBinding | None = None  # None: not DPoP-bound


@dataclass(frozen=True, slots=True)
class DpopBinding:
    """A DPoP-bound token (``cnf.jkt``, RFC 9449 §6) and what the route asks of a request with it."""

    jkt: str  # the RFC 7638 thumbprint of the key the token is bound to
    route_dpop: str  # the route's ``dpop`` mode
    nonce: bool  # the route's ``dpop_nonce``

    @property
    def needs_proof(self) -> bool:
        """Whether the route takes the token at all: only with ``Authorization: DPoP`` and a proof."""
        return self.route_dpop != "off"

    @property
    def requirement(self) -> str:
        if not self.needs_proof:
            return "refused on this route (dpop: off): a DPoP-bound token is not accepted as Bearer"
        nonce = " carrying a server nonce (DPoP-Nonce)" if self.nonce else ""
        return (
            f"a request needs Authorization: DPoP and a DPoP proof of this key{nonce} "
            f"(route dpop: {self.route_dpop}); sent as Bearer it is refused"
        )


@dataclass(frozen=True, slots=True)
class Caller:
    source: str  # "scopes" or "token"
    scopes: tuple[str, ...]
    token: TokenSummary | None = None
    # What conditions read as ``claims``: the token's whole payload, or ``--claims`` with --scopes.
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def problems(self) -> tuple[TokenProblem, ...]:
        return self.token.problems if self.token is not None else ()


@dataclass(frozen=True, slots=True)
class ConditionExplanation:
    """One matched rule's condition for one message: each field it reads, and how it came out."""

    rule: Rule
    source: str
    fields: tuple[tuple[str, Any], ...]  # (path, value or conditions.ABSENT)
    outcome: ConditionOutcome


@dataclass(frozen=True, slots=True)
class ObservedExplanation:
    """The decision as the rules are written (``mode: observe`` ones enforced): logged, not enforced."""

    decision: Decision
    conditions: tuple[ConditionExplanation, ...]  # those the enforced decision did not already show


@dataclass(frozen=True, slots=True)
class ListedCondition:
    """What a listed rule's condition does to the items it decides in a ``*/list`` result."""

    rule: Rule
    source: str
    effect: str  # e.g. "shown: its condition reads arguments, decided at each call"


@dataclass(frozen=True, slots=True)
class MessageExplanation:
    index: int  # 1-based position in the body
    kind: str  # request, notification, response
    id: str | int | None
    method: str
    target: Target | None
    decision: Decision  # its ``rules`` are the configured rules that decided, with their lines
    # A */list request the policy allows: how its result will be filtered for the caller.
    listing: visibility.ListFiltering | None = None
    conditions: tuple[ConditionExplanation, ...] = ()  # every matched rule's condition, evaluated
    observed: ObservedExplanation | None = None  # only on a route that observes rules
    listed_conditions: tuple[ListedCondition, ...] = ()  # the listing's rules that have one


@dataclass(frozen=True, slots=True)
class Refusal:
    """The body refused before any decision."""

    reason: str
    detail: str
    status: int
    jsonrpc_code: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """The gateway's answer: forwarded, or an HTTP error as it would be rendered."""

    forwarded: bool
    summary: str  # one line, e.g. 'HTTP 403 insufficient_scope, scope="a b"'
    status: int | None = None
    jsonrpc_code: int | None = None
    error: str | None = None  # the OAuth error code in the challenge, if any
    scope: tuple[str, ...] | None = None  # the challenge's ``scope``, if any
    www_authenticate: str | None = None


@dataclass(frozen=True, slots=True)
class Explanation:
    config: str  # the config file as named on the command line
    route: str
    resource: str
    caller: Caller
    protocol_version: str | None
    version_header: bool  # whether MCP-Protocol-Version was sent (else the version is assumed)
    is_batch: bool
    refusal: Refusal | None
    messages: tuple[MessageExplanation, ...]
    policy_outcome: Outcome | None  # what the body and policy alone lead to; None if never reached
    outcome: Outcome  # the answer, token refusal included
    pinning: PinningConfig | None = None  # the route's tool pins, for each call's pin status

    @property
    def exit_status(self) -> int:
        return EXIT_FORWARDED if self.outcome.forwarded else EXIT_REFUSED
