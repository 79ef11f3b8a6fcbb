"""``explain --json``: an explanation as one JSON-ready object (``gateway.explain`` builds it)."""

from __future__ import annotations

from typing import Any

from . import explain_conditions as conditions
from .explain_model import NOT_VERIFIED, DpopBinding, Explanation, Outcome
from .mcp.policy import DecidingRule, Rule


def _rule_line(rule: DecidingRule) -> int | None:
    return rule.line if isinstance(rule, Rule) else None


def _outcome_json(outcome: Outcome | None) -> dict[str, Any] | None:
    if outcome is None:
        return None
    return {
        "forwarded": outcome.forwarded,
        "summary": outcome.summary,
        "status": outcome.status,
        "jsonrpc_code": outcome.jsonrpc_code,
        "error": outcome.error,
        "scope": None if outcome.scope is None else list(outcome.scope),
        "www_authenticate": outcome.www_authenticate,
    }


def _binding_json(binding: DpopBinding | None) -> dict[str, Any] | None:
    if binding is None:
        return None
    return {
        "jkt": binding.jkt,
        "route_dpop": binding.route_dpop,
        "needs_proof": binding.needs_proof,
        "nonce": binding.nonce,
        "requirement": binding.requirement,
    }


def to_json(explanation: Explanation) -> dict[str, Any]:
    """The explanation as one JSON-ready object (the ``--json`` output)."""
    e = explanation
    token = e.caller.token
    return {
        "config": e.config,
        "route": e.route,
        "resource": e.resource,
        "caller": {
            "source": e.caller.source,
            "scopes": list(e.caller.scopes),
            **({"claims": dict(e.caller.claims)} if token is None and e.caller.claims else {}),
            "token": None
            if token is None
            else {
                "verified": False,
                "note": NOT_VERIFIED,
                "decoded": token.decoded,
                "claims": dict(token.claims),
                "problems": [
                    {"reason": p.reason, "error": p.error, "message": p.message} for p in token.problems
                ],
                "dpop_binding": _binding_json(token.binding),
            },
        },
        "protocol_version": e.protocol_version,
        "batch": e.is_batch,
        "refused": None
        if e.refusal is None
        else {
            "reason": e.refusal.reason,
            "detail": e.refusal.detail,
            "status": e.refusal.status,
            "jsonrpc_code": e.refusal.jsonrpc_code,
        },
        "messages": [
            {
                "index": m.index,
                "kind": m.kind,
                "id": m.id,
                "method": m.method,
                "target_kind": m.target.kind if m.target is not None else None,
                "target": m.target.identifier if m.target is not None else None,
                "decision": "ALLOW" if m.decision.allowed else "DENY",
                "rule": m.decision.label,
                "rules": [{"label": rule.label, "line": _rule_line(rule)} for rule in m.decision.rules],
                "required": list(m.decision.required),
                "missing": list(m.decision.missing),
                "unconditional": m.decision.unconditional,
                "list_filter": None
                if m.listing is None
                else conditions.listing_json(m.listing, m.listed_conditions),
                "conditions": conditions.conditions_json(m.conditions),
                "observed": conditions.observed_json(m.observed),
            }
            for m in e.messages
        ],
        "policy_outcome": _outcome_json(e.policy_outcome),
        "outcome": _outcome_json(e.outcome),
        "exit_status": e.exit_status,
    }
