"""One structured audit event per policy decision, complete enough to be decided again.

Who (issuer, subject, client id, actor, the scopes held), where (route), what (method, target
and its kind, watched resources), the outcome, the rules that decided, the scopes that were
missing and how each condition came out. ``mcp-auth-gateway simulate`` replays these events
against a candidate config (``gateway.simulate``), so an event also carries the claims the
route's conditions read (``RoutePolicy.claims_read``, plus the route key ``audit_claims``; those
the token lacks in ``claims_absent``) and,
when the route asks for them (``audit_arguments: true``), the call's arguments, through the log
redaction step. Never the token. With observed rules, the decision as written is there too
(``observed``), and a ``would_deny`` event says what enforcing it would have refused.

With an audit trail (``audit:``, ``gateway.audit_trail.trail``), each ``policy_decision`` is also
chained into it with the same fields, and each downstream credential the gateway obtains is a
``credential_issued`` record (``audit_credential``): who, which route, minted or exchanged, for
which audience or resource, with which scope, until when, its ``jti``, and the SHA-256 of the
token (never the token).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import structlog

from ..audit_trail.chain import format_time
from ..audit_trail.trail import AuditTrail
from ..config import RouteConfig
from ..logs import log_now, log_soon, log_soon_built
from ..mcp.messages import McpMessage
from ..mcp.policy import ARGUMENT_METHODS, Decision
from ..principal import Identity
from ..upstream.credentials import IssuedCredential

log = structlog.get_logger("gateway.audit")

RESPONSE_LABEL: Final = "(response)"


def caller_fields(route: RouteConfig, principal: Identity) -> dict[str, Any]:
    """Who asked, as an event records it (``logging.include_subject`` may drop subject, client id)."""
    fields: dict[str, Any] = {
        "subject": principal.subject,
        "client_id": principal.client_id,
        "issuer": principal.issuer,
        "scopes": sorted(principal.scopes),
    }
    actor = principal.claims.get("act")
    if actor is not None and isinstance(actor, Mapping):  # most tokens have none: no ABC check
        fields["actor"] = dict(actor)
    recorded = route.audited_claims
    if recorded:
        claims = principal.claims
        fields["claims"] = {name: claims[name] for name in recorded if name in claims}
        absent = [name for name in recorded if name not in claims]
        if absent:  # recorded as absent (a claim not in "claims" and not here was not recorded)
            fields["claims_absent"] = absent
    return fields


def decision_fields(decision: Decision) -> dict[str, Any]:
    """The outcome, the rules and scopes behind it, and each condition's result."""
    fields: dict[str, Any] = {
        "decision": "allow" if decision.allowed else "deny",
        "rule": decision.label,
        "missing_scopes": list(decision.missing),
    }
    # A condition that came out true is what the allowing rule needs: only the others are told.
    if any(check.outcome.result != "true" for check in decision.conditions):
        fields["conditions"] = [
            {"rule": check.rule.label, "result": check.outcome.result, "reason": check.outcome.reason}
            for check in decision.conditions
        ]
    return fields


def audit_decision(
    route: RouteConfig,
    principal: Identity,
    message: McpMessage,
    decision: Decision,
    observed: Decision | None = None,
    trail: AuditTrail | None = None,
) -> None:
    """Log ``policy_decision`` (and ``would_deny`` when the observed rules would have refused),
    and chain it into ``trail`` (which raises ``AuditUnavailable`` if it must refuse)."""
    # The observed rules' decision, when enforcing them would have refused what was allowed.
    refused = observed if observed is not None and decision.allowed and not observed.allowed else None
    recorded = trail is not None and trail.enabled
    if not recorded and not logs_arguments(route, message):
        # Nothing needs the events before the call goes upstream (no trail to chain them into
        # first, no arguments to log before anything forwards them): built and rendered in the
        # loop's next turn, while the upstream works. Every input is immutable or, like the
        # token's claims and the message's params, never changed by a later step.
        event = (route, principal, message)
        log_soon_built(log, "info", "policy_decision", decision_event, *event, decision, observed)
        if refused is not None:
            log_soon_built(log, "warning", "would_deny", would_deny_event, *event, refused)
        return
    fields = decision_event(route, principal, message, decision, observed)
    # Audited arguments are the message's own: logged before anything forwards it. Else rendered
    # in the loop's next turn (the fields are the event's own: lists and dicts built here).
    emit = log_now if "arguments" in fields else log_soon
    emit(log, "info", "policy_decision", fields)
    if trail is not None and recorded:
        trail.record("policy_decision", fields)
    if refused is not None:
        emit(log, "warning", "would_deny", would_deny_event(route, principal, message, refused))


def logs_arguments(route: RouteConfig, message: McpMessage) -> bool:
    """Whether the message's decision event carries its arguments (``audit_arguments: true``)."""
    return route.audit_arguments and message.method in ARGUMENT_METHODS and message.params is not None


def decision_event(
    route: RouteConfig,
    principal: Identity,
    message: McpMessage,
    decision: Decision,
    observed: Decision | None,
) -> dict[str, Any]:
    """The ``policy_decision`` event's fields (and the trail's record of it)."""
    target = message.target
    fields: dict[str, Any] = {
        **caller_fields(route, principal),
        "route": route.path,
        "method": _method_label(message),
        "target": target.identifier if target is not None else None,
        **decision_fields(decision),
    }
    if target is not None:
        fields["target_kind"] = target.kind
    if message.watched:
        fields["watched"] = [resource.identifier for resource in message.watched]
    params = message.params
    if logs_arguments(route, message) and params is not None:
        fields["arguments"] = params.get("arguments", {})
    if observed is not None:
        fields["observed"] = decision_fields(observed)
    return fields


def would_deny_event(
    route: RouteConfig, principal: Identity, message: McpMessage, observed: Decision
) -> dict[str, Any]:
    """The ``would_deny`` event's fields: what enforcing the observed rules would have refused."""
    target = message.target
    return {
        "subject": principal.subject,
        "client_id": principal.client_id,
        "route": route.path,
        "method": _method_label(message),
        "target": target.identifier if target is not None else None,
        **{key: value for key, value in decision_fields(observed).items() if key != "decision"},
    }


def _method_label(message: McpMessage) -> str | None:
    return message.method if message.kind != "response" else RESPONSE_LABEL


def audit_observed_route_scopes(
    route: RouteConfig, principal: Identity, method: str, missing: tuple[str, ...]
) -> None:
    """A GET stream or DELETE the written route scopes would refuse, while they are observed."""
    log.warning(
        "would_deny",
        subject=principal.subject,
        client_id=principal.client_id,
        route=route.path,
        method=method,
        target=None,
        rule="route scopes",
        missing_scopes=list(missing),
    )


def audit_credential(
    trail: AuditTrail, route: RouteConfig, principal: Identity, issued: IssuedCredential
) -> None:
    """Chain ``credential_issued`` for a token just minted or exchanged for ``principal``."""
    trail.record(
        "credential_issued",
        {
            "subject": principal.subject,
            "client_id": principal.client_id,
            "issuer": principal.issuer,
            "route": route.path,
            "kind": issued.kind,  # minted or exchanged
            "audience": issued.audience,
            "resource": issued.resource,
            "scope": issued.scope,
            "expires_at": None if issued.expires_at is None else format_time(issued.expires_at),
            "jti": issued.jti,
            "credential_sha256": issued.sha256,
        },
    )
