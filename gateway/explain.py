"""``mcp-auth-gateway explain``: what the gateway would answer to one POST, and why, offline.

Nothing is decided here: the body goes through the gateway's own strict parser
(``gateway.mcp.messages.parse_post``), every message through ``gateway.mcp.policy.operation_of`` and
``decide``, a token through ``gateway.auth.tokens`` (the same format check, ``split_jws``,
``check_header``, ``check_claims``, ``scopes_of``) and a challenge through ``gateway.web.metadata``.
How one POST's decisions combine is the pipeline's own ``policy.refusal``; the challenge is the
error's own ``headers``, as the error middleware renders it.

A token's signature is never verified (no network, no keys): the explanation says so. The core
(``caller_from_scopes``, ``caller_from_token``, ``explain``) is pure; ``render_text``,
``to_json`` and ``run`` are the edges.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TextIO, cast

from . import explain_conditions as conditions
from .auth.dpop import bound_key
from .auth.tokens import audience_matches, bearer_token_from, check_claims, check_header, scopes_of, split_jws
from .config import GatewayConfig, RouteConfig
from .errors import BodyTooLarge, DpopReason, InsufficientScope, InvalidDpopProof, InvalidToken, PolicyDenied
from .explain_json import to_json as to_json
from .explain_model import EXIT_FORWARDED as EXIT_FORWARDED
from .explain_model import EXIT_REFUSED as EXIT_REFUSED
from .explain_model import EXIT_USAGE as EXIT_USAGE
from .explain_model import NOT_VERIFIED as NOT_VERIFIED
from .explain_model import Caller as Caller
from .explain_model import DpopBinding as DpopBinding
from .explain_model import Explanation as Explanation
from .explain_model import MessageExplanation as MessageExplanation
from .explain_model import Outcome as Outcome
from .explain_model import Refusal as Refusal
from .explain_model import TokenProblem as TokenProblem
from .explain_model import TokenSummary as TokenSummary
from .mcp import visibility
from .mcp.messages import PROTOCOL_VERSION_HEADER, HeaderValues, McpRejected, parse_post
from .mcp.policy import (
    DecidingRule,
    Decision,
    DefaultRule,
    Rule,
    combine,
    decide,
    kept_scopes,
    operation_of,
    refusal,
)

# The model lives in gateway.explain_model; re-exported here for the command's callers.
from .pinning.lock import tool_status
from .web.metadata import advertised_scopes, quoted_string, route_challenge

__all__ = [
    "EXIT_FORWARDED",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "NOT_VERIFIED",
    "Caller",
    "Explanation",
    "caller_from_scopes",
    "caller_from_token",
    "combine_decisions",
    "explain",
    "render_text",
    "run",
    "to_json",
]

# =========================================================================== the caller


def caller_from_scopes(scopes: str, claims: Mapping[str, Any] | None = None) -> Caller:
    """A caller holding the space-separated ``scopes`` (order kept, repeats dropped), and
    ``claims`` for conditions to read (``--claims``)."""
    return Caller("scopes", tuple(dict.fromkeys(scopes.split())), claims=MappingProxyType(dict(claims or {})))


def caller_from_token(token: str, config: GatewayConfig, route: RouteConfig, now: float) -> Caller:
    """Decode ``token`` without verifying it, and list every reason the gateway would refuse it.

    The problems come in the gateway's own order, so the first is the reason it would log.
    """
    try:
        bearer_token_from([f"Bearer {token}"], query_has_token=False)
        header, claims, _, _ = split_jws(token)
    except InvalidToken as exc:
        problem = TokenProblem(exc.reason, _with_detail("the token cannot be decoded", exc.detail))
        return Caller("token", (), TokenSummary(False, {}, (problem,)))

    problems: list[TokenProblem] = []
    issuer = next((item for item in config.issuers if item.issuer == claims.get("iss")), None)
    if issuer is None:
        configured = ", ".join(item.issuer for item in config.issuers)
        problems.append(
            TokenProblem(
                "unknown_issuer",
                f"iss {_shown(claims.get('iss'))} is not a configured issuer ({configured})",
            )
        )
    else:
        try:
            check_header(header, issuer)
        except InvalidToken as exc:
            problems.append(TokenProblem(exc.reason, _with_detail("token header refused", exc.detail)))
        try:
            check_claims(claims, issuer=issuer, resource=route.resource, now=now)
        except InvalidToken as exc:
            problems.append(TokenProblem(exc.reason, _claim_problem(exc, claims, route)))
    audience_problem = _audience_problem(claims, route)
    if audience_problem is not None and all(p.reason != audience_problem.reason for p in problems):
        problems.append(audience_problem)
    try:
        scopes = tuple(sorted(scopes_of(claims)))
    except InvalidToken as exc:
        scopes = ()
        problem = TokenProblem(exc.reason, _with_detail("bad claim", exc.detail))  # as check_claims says it
        if problem not in problems:
            problems.append(problem)

    binding = _binding(claims, route, problems)
    shown = {
        "iss": claims.get("iss"),
        "sub": claims.get("sub"),
        "client_id": claims.get("client_id", claims.get("azp")),
        "aud": claims.get("aud"),
        "exp": claims.get("exp"),
    }
    summary = TokenSummary(True, shown, tuple(problems), binding)
    return Caller("token", scopes, summary, claims=MappingProxyType(dict(claims)))


def _binding(
    claims: Mapping[str, Any], route: RouteConfig, problems: list[TokenProblem]
) -> DpopBinding | None:
    """The token's DPoP binding, adding the refusals the route's ``dpop`` mode makes of it (as
    ``pipeline.check_binding`` and ``authenticate`` do: a proof is assumed to be sent)."""
    dpop_error = "invalid_dpop_proof" if route.dpop != "off" else "invalid_token"
    try:
        jkt = bound_key(claims)
    except InvalidToken as exc:  # a cnf the gateway cannot check (mTLS): refused either way
        problems.append(TokenProblem(exc.reason, _with_detail("token binding refused", exc.detail)))
        return None
    if jkt is None:
        if route.dpop == "required":
            message = "this route has dpop: required and the token is not DPoP-bound (no cnf.jkt)"
            problems.append(TokenProblem("dpop_required", message, dpop_error))
        return None
    if route.dpop == "off":
        message = f"the token is DPoP-bound (cnf.jkt {_shown(jkt)}) and this route has dpop: off"
        problems.append(TokenProblem("dpop_bound_token_as_bearer", message, dpop_error))
    return DpopBinding(jkt, route.dpop, route.dpop_nonce)


def _audiences(claims: Mapping[str, Any]) -> tuple[str, ...] | None:
    aud = claims.get("aud")
    audiences = (aud,) if isinstance(aud, str) else tuple(aud) if isinstance(aud, list) else None
    if not audiences or not all(isinstance(item, str) for item in audiences):
        return None
    return audiences


def _audience_problem(claims: Mapping[str, Any], route: RouteConfig) -> TokenProblem | None:
    audiences = _audiences(claims)
    if audiences is None:
        return TokenProblem("missing_audience", "the token has no usable aud claim")
    if not any(audience_matches(item, route.resource) for item in audiences):
        shown = ", ".join(_shown(item) for item in audiences)
        return TokenProblem(
            "bad_audience", f"aud ({shown}) does not contain this route's resource {route.resource}"
        )
    return None


def _claim_problem(exc: InvalidToken, claims: Mapping[str, Any], route: RouteConfig) -> str:
    if exc.reason in ("bad_audience", "missing_audience"):
        problem = _audience_problem(claims, route)
        if problem is not None:
            return problem.message
    return _with_detail(exc.reason.replace("_", " "), exc.detail)


def _with_detail(text: str, detail: str) -> str:
    return f"{text} ({detail})" if detail else text


# =========================================================================== the explanation


def header_lookup(headers: Sequence[tuple[str, str]]) -> HeaderValues:
    """Case-insensitive: every value given for a header, as the gateway reads a request."""

    def header(name: str) -> list[str]:
        return [value for key, value in headers if key.lower() == name.lower()]

    return header


def explain(
    config: GatewayConfig,
    config_name: str,
    route: RouteConfig,
    caller: Caller,
    body: bytes,
    headers: Sequence[tuple[str, str]] = (),
) -> Explanation:
    """What the gateway would answer to this POST on ``route`` from ``caller``, and why."""
    token_outcome = _token_outcome(config, route, caller)
    if token_outcome is not None and caller.token is not None and not caller.token.decoded:
        evaluated = None  # no scopes to decide with: the 401 is the whole answer
    else:
        evaluated = _evaluate(config, route, caller, body, headers)
    outcome = token_outcome or (evaluated.outcome if evaluated is not None else None)
    if outcome is None:  # unreachable: an undecodable token always has a problem
        raise ValueError("nothing to explain")
    return Explanation(
        config=config_name,
        route=route.path,
        resource=route.resource,
        caller=caller,
        protocol_version=evaluated.protocol_version if evaluated else None,
        version_header=bool(header_lookup(headers)(PROTOCOL_VERSION_HEADER)),  # a list, maybe empty
        is_batch=evaluated.is_batch if evaluated else False,
        refusal=evaluated.refusal if evaluated else None,
        messages=evaluated.messages if evaluated else (),
        policy_outcome=evaluated.outcome if evaluated else None,
        outcome=outcome,
        pinning=route.pinning,
    )


@dataclass(frozen=True, slots=True)
class _Evaluated:
    """The body and the policy, as if the token had been accepted."""

    outcome: Outcome
    protocol_version: str | None = None
    is_batch: bool = False
    refusal: Refusal | None = None
    messages: tuple[MessageExplanation, ...] = ()


def _evaluate(
    config: GatewayConfig,
    route: RouteConfig,
    caller: Caller,
    body: bytes,
    headers: Sequence[tuple[str, str]],
) -> _Evaluated:
    granted = frozenset(caller.scopes)
    if len(body) > route.max_body_bytes:
        detail = f"{len(body)} bytes > max_body_bytes {route.max_body_bytes}"
        refusal = Refusal(BodyTooLarge.reason, detail, BodyTooLarge.status, BodyTooLarge.jsonrpc_code)
        return _Evaluated(_refused_outcome(refusal), refusal=refusal)
    try:
        post = parse_post(body, header_lookup(headers))
    except McpRejected as exc:
        refusal = Refusal(exc.reason, exc.detail, exc.status, exc.jsonrpc_code)
        return _Evaluated(_refused_outcome(refusal), refusal=refusal)
    messages: list[MessageExplanation] = []
    facts = conditions.caller_facts(caller, route.path)
    shadow = route.policy.shadow
    for index, message in enumerate(post.messages, start=1):
        operation = operation_of(message)
        decision = decide(route.policy, operation, granted, facts)
        listing = (
            visibility.list_filtering(route.policy, operation.method, granted) if decision.allowed else None
        )
        messages.append(
            MessageExplanation(
                index=index,
                kind=message.kind,
                id=message.id,
                method=operation.method,
                target=message.target,
                decision=decision,
                listing=listing,
                conditions=conditions.explain_checks(decision, operation, facts),
                observed=None
                if shadow is None
                else conditions.explain_observed(shadow, operation, granted, facts),
                listed_conditions=()
                if listing is None
                else conditions.listed_conditions(listing, route.policy, facts),
            )
        )
    return _Evaluated(
        combine_decisions(config, route, [message.decision for message in messages], granted),
        protocol_version=post.protocol_version,
        is_batch=post.is_batch,
        messages=tuple(messages),
    )


def combine_decisions(
    config: GatewayConfig, route: RouteConfig, decisions: Sequence[Decision], granted: frozenset[str]
) -> Outcome:
    """The answer to one POST's decisions: the pipeline's own ``refusal`` (naming the caller's
    scopes the route uses, as a step-up challenge does), rendered by the error itself."""
    refused = refusal(combine(decisions), kept_scopes(route.policy, granted))
    if refused is None:
        return Outcome(forwarded=True, summary="forwarded")
    if isinstance(refused, PolicyDenied):
        return Outcome(
            forwarded=False,
            summary=f"HTTP {refused.status} ({_unconditional_why(decisions)})",
            status=refused.status,
            jsonrpc_code=refused.jsonrpc_code,
        )
    return _challenge(config, route, refused)


def _unconditional_why(decisions: Sequence[Decision]) -> str:
    """Why no scope would help: a rule's condition is false (or failed), or no rule allows it."""
    if any(not decided.allowed and decided.condition_denied and not decided.missing for decided in decisions):
        return "a rule's condition does not hold: no scope would help"
    return "no rule allows this"


def _token_outcome(config: GatewayConfig, route: RouteConfig, caller: Caller) -> Outcome | None:
    if not caller.problems:
        return None
    first = caller.problems[0]  # the first check the gateway would fail
    reason = first.reason
    error = InvalidDpopProof(cast(DpopReason, reason)) if first.error == "invalid_dpop_proof" else None
    outcome = _challenge(config, route, error or InvalidToken(reason))
    return Outcome(
        forwarded=False,
        summary=f"HTTP {outcome.status} {outcome.error} ({reason}), before any policy decision",
        status=outcome.status,
        jsonrpc_code=outcome.jsonrpc_code,
        error=outcome.error,
        scope=outcome.scope,
        www_authenticate=outcome.www_authenticate,
    )


def _challenge(config: GatewayConfig, route: RouteConfig, exc: InsufficientScope | InvalidToken) -> Outcome:
    """The answer the error middleware gives for an auth error on ``route`` (its own headers)."""
    shown = advertised_scopes(exc.scopes or route.scopes)  # what the challenge names
    summary = f"HTTP {exc.status} {exc.oauth_error}"
    if shown:
        summary += f", scope={quoted_string(' '.join(shown))}"
    return Outcome(
        forwarded=False,
        summary=summary,
        status=exc.status,
        jsonrpc_code=exc.jsonrpc_code,
        error=exc.oauth_error,
        scope=shown,
        www_authenticate=exc.headers(route_challenge(config, route))["WWW-Authenticate"],
    )


def _refused_outcome(refusal: Refusal) -> Outcome:
    return Outcome(
        forwarded=False,
        summary=(
            f"refused before policy: {refusal.reason} "
            f"(HTTP {refusal.status}, JSON-RPC {refusal.jsonrpc_code})"
        ),
        status=refusal.status,
        jsonrpc_code=refusal.jsonrpc_code,
    )


# =========================================================================== output


def _shown(value: object) -> str:
    """A value from the token or body, safe for a terminal (control characters escaped)."""
    if isinstance(value, str):
        return value if value.isprintable() and value else repr(value)
    return json.dumps(value, ensure_ascii=True)


def _scopes(scopes: Sequence[str]) -> str:
    return " ".join(_shown(scope) for scope in scopes) or "(none)"


def _rule_text(rule: DecidingRule, config: str) -> str:
    if isinstance(rule, Rule):
        return f"{rule.label} at {config}:{rule.line}"
    if isinstance(rule, DefaultRule) and not rule.written:
        return rule.label  # says itself that no rule matched
    return f"{rule.label} (no rule matched)"


def render_text(explanation: Explanation) -> str:
    e = explanation
    lines = [f"route {e.route} (resource {e.resource}) in {e.config}"]
    if e.caller.token is None:
        lines.append(f"caller scopes (from --scopes): {_scopes(e.caller.scopes)}")
        if e.caller.claims:
            lines.append(f"caller claims (from --claims): {_shown(dict(e.caller.claims))}")
    else:
        lines.append(f"caller from --token: {NOT_VERIFIED}")
        for name, value in e.caller.token.claims.items():
            if value is not None:
                lines.append(f"  {name}: {_shown(value)}")
        if e.caller.token.decoded:
            lines.append(f"  scopes: {_scopes(e.caller.scopes)}")
        if (binding := e.caller.token.binding) is not None:
            lines.append(f"  DPoP-bound: cnf.jkt {_shown(binding.jkt)}")
            lines.append(f"    {binding.requirement}")
        for problem in e.caller.problems:
            lines.append(
                f"  WARNING: {problem.message}: the gateway would refuse this token with HTTP 401 "
                f"{problem.error} ({problem.reason}) before any policy decision"
            )
    if e.protocol_version is not None:
        shape = f"batch of {len(e.messages)}" if e.is_batch else "single message"
        assumed = "" if e.version_header else " (assumed: no MCP-Protocol-Version header)"
        lines.append(f"body: protocol {e.protocol_version}{assumed}, {shape}")
    if e.refusal is not None and e.refusal.detail:
        lines.append(f"body refused: {e.refusal.reason} ({_shown(e.refusal.detail)})")
    for m in e.messages:
        target = f"  {m.target.kind} {_shown(m.target.identifier)}" if m.target is not None else ""
        rpc_id = f"  (id {_shown(m.id)})" if m.id is not None else f"  ({m.kind})"
        lines.append(f"message {m.index}: {_shown(m.method)}{target}{rpc_id}")
        lines.append(f"  decision: {'ALLOW' if m.decision.allowed else 'DENY'}")
        lines.append(f"  rule: {' + '.join(_rule_text(rule, e.config) for rule in m.decision.rules)}")
        lines.append(f"  required: {_scopes(m.decision.required)}")
        lines.append(f"  missing: {_scopes(m.decision.missing)}")
        pinning = e.pinning
        if pinning is not None and pinning.mode != "off" and m.target is not None and m.target.kind == "tool":
            lines.append(f"  pin ({pinning.mode}): {tool_status(pinning.tools, m.target.identifier)}")
        where = functools.partial(_rule_text, config=e.config)
        lines.extend(conditions.condition_lines(m.conditions, where))
        if m.observed is not None:
            lines.extend(conditions.observed_lines(m.observed, m.conditions, where))
        if m.listing is not None:
            lines.extend(conditions.listing_lines(m.listing, m.listed_conditions, where))
    if e.policy_outcome is not None and e.policy_outcome is not e.outcome:
        lines.append(f"with an accepted token: {e.policy_outcome.summary}")
    lines.append(f"outcome: {e.outcome.summary}")
    if e.outcome.www_authenticate is not None:
        lines.append(f"  WWW-Authenticate: {e.outcome.www_authenticate}")
    return "\n".join(lines)


# =========================================================================== the command


def parse_header_args(values: Sequence[str]) -> list[tuple[str, str]] | str:
    """``Name: value`` strings as pairs, or the first malformed one."""
    headers: list[tuple[str, str]] = []
    for value in values:
        name, colon, rest = value.partition(":")
        if not colon or not name.strip() or name != name.strip():
            return value
        headers.append((name, rest.strip()))
    return headers


def run(
    config: GatewayConfig,
    *,
    config_name: str,
    route_path: str,
    scopes: str | None,
    token: str | None,
    request: str,
    headers: Sequence[str] = (),
    claims: str | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The ``explain`` subcommand once the config is loaded: read the arguments, explain, print."""
    out = out or sys.stdout
    err = err or sys.stderr
    route = config.route_for_path(route_path)
    if route is None:
        known = ", ".join(item.path for item in config.routes)
        print(f"unknown route {route_path!r}; routes in {config_name}: {known}", file=err)
        return EXIT_USAGE
    parsed_headers = parse_header_args(headers)
    if isinstance(parsed_headers, str):
        print(f"--header {parsed_headers!r}: expected 'Name: value'", file=err)
        return EXIT_USAGE
    if request.startswith("@"):  # never valid JSON, so unambiguous: the body from a file
        try:
            with open(request[1:], "rb") as file:
                body = file.read()
        except OSError as exc:
            print(f"--request {request}: cannot read: {exc.strerror or exc}", file=err)
            return EXIT_USAGE
    else:
        body = os.fsencode(request)  # the argument's bytes, as the shell passed them
    parsed_claims = conditions.claims_argument(claims, with_token=token is not None)
    if isinstance(parsed_claims, str):
        print(parsed_claims, file=err)
        return EXIT_USAGE
    if token is not None:
        caller = caller_from_token(token, config, route, now=time.time())
    else:
        caller = caller_from_scopes(scopes or "", parsed_claims)
    explanation = explain(config, config_name, route, caller, body, parsed_headers)
    if as_json:
        print(json.dumps(to_json(explanation), indent=2), file=out)
    else:
        print(render_text(explanation), file=out)
    return explanation.exit_status
