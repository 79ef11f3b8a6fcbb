"""One structured audit event per policy decision.

Who (subject, client id), where (route), what (method, target), the outcome, the rule that
decided and the scopes that were missing. Never the token; tool arguments only when the route
asks for them (``audit_arguments: true``), and even then through the log redaction step.
"""

from __future__ import annotations

from typing import Any

import structlog

from ..config import RouteConfig
from ..mcp.messages import McpMessage
from ..mcp.policy import Decision
from ..principal import Principal

log = structlog.get_logger("gateway.audit")


def audit_decision(route: RouteConfig, principal: Principal, message: McpMessage, decision: Decision) -> None:
    fields: dict[str, Any] = {
        "subject": principal.subject,
        "client_id": principal.client_id,
        "issuer": principal.issuer,
        "route": route.path,
        "method": message.method if message.kind != "response" else "(response)",
        "target": message.target.identifier if message.target is not None else None,
        "decision": "allow" if decision.allowed else "deny",
        "rule": decision.label,
        "missing_scopes": list(decision.missing),
    }
    if route.audit_arguments and message.params is not None and "arguments" in message.params:
        fields["arguments"] = message.params["arguments"]
    log.info("policy_decision", **fields)
