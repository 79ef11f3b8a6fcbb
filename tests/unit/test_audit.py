"""The audit event of one policy decision: who, where, what, and the rules that decided."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from gateway.config import parse_config_text
from gateway.mcp.messages import parse_post
from gateway.mcp.policy import decide, operation_of
from gateway.principal import Principal
from gateway.secret import PresentedToken
from gateway.web.audit import audit_decision

CONFIG = """
public_url: https://gw.example
issuers: [{issuer: https://as.example, algorithms: [RS256], jwks: {discover: true}}]
routes:
  - path: /mcp
    upstream: http://127.0.0.1:9000/mcp
    scopes: [mcp]
    audit_arguments: true
    prompts: {"summarise": [read]}
    methods: {"completion/complete": [complete]}
"""
ROUTE = parse_config_text(CONFIG, Path("/tmp/audit.yaml"), {}).routes[0]
CALLER = Principal(
    issuer="https://as.example",
    subject="alice",
    client_id="cli-1",
    scopes=frozenset({"mcp", "complete"}),
    audience=("https://gw.example/mcp",),
    expires_at=0.0,
    token_id=None,
    token=PresentedToken("never-in-the-audit-log"),
)


def audited(message: dict[str, object]) -> list[MutableMapping[str, Any]]:
    post = parse_post(json.dumps(message).encode(), lambda _name: [])
    (parsed,) = post.messages
    decision = decide(ROUTE.policy, operation_of(parsed), CALLER.scopes)
    with capture_logs() as events:
        audit_decision(ROUTE, CALLER, parsed, decision)
    return events


def test_a_completion_is_audited_with_both_rules_and_its_target() -> None:
    """The event names the target as the body spells it and every deciding rule, joined by ` + `."""
    ref = {"type": "ref/prompt", "name": "summarise"}
    message = {"jsonrpc": "2.0", "id": 1, "method": "completion/complete", "params": {"ref": ref}}
    assert audited(message) == [
        {
            "event": "policy_decision",
            "log_level": "info",
            "subject": "alice",
            "client_id": "cli-1",
            "issuer": "https://as.example",
            "scopes": ["complete", "mcp"],
            "route": "/mcp",
            "method": "completion/complete",
            "target": "summarise",
            "target_kind": "prompt",
            "decision": "deny",
            "rule": "methods['completion/complete'] + prompts['summarise']",
            "missing_scopes": ["read"],
        }
    ]


def test_a_response_and_an_untargeted_call_are_audited_without_a_target() -> None:
    """A client's response is `(response)`; a call that names nothing has target None, default rule."""
    response = audited({"jsonrpc": "2.0", "id": 7, "result": {}})
    listing = audited({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    assert [(e["method"], e["target"], e["rule"]) for e in response + listing] == [
        ("(response)", None, "no methods rule: route scopes"),
        ("tools/list", None, "no methods rule: route scopes"),
    ]


def test_tool_arguments_are_audited_when_the_route_asks() -> None:
    """`audit_arguments: true` adds the call's arguments to the event."""
    params = {"name": "echo", "arguments": {"text": "hi"}}
    (event,) = audited({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": params})
    assert (event["target"], event["rule"], event["arguments"]) == (
        "echo",
        "no tools rule matches",
        {"text": "hi"},
    )


QUIET_ROUTE = parse_config_text(
    CONFIG.replace("    audit_arguments: true\n", ""), Path("/tmp/audit.yaml"), {}
).routes[0]
CALL = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "t", "arguments": {"a": 1}}}


async def test_with_nothing_to_record_first_the_event_is_built_in_the_next_turn() -> None:
    """No trail, no arguments: the event is built while the call goes upstream (the loop's next
    turn), with the same fields it would have had at once."""
    (parsed,) = parse_post(json.dumps(CALL).encode(), lambda _name: []).messages
    decision = decide(QUIET_ROUTE.policy, operation_of(parsed), CALLER.scopes)
    with capture_logs() as at_once:
        audit_decision(QUIET_ROUTE, CALLER, parsed, decision)
        assert at_once == []
        await asyncio.sleep(0)
    [event] = at_once
    assert (event["event"], event["target"], event["decision"]) == ("policy_decision", "t", "deny")
    assert "arguments" not in event


async def test_audited_arguments_are_logged_before_the_call_returns() -> None:
    """``audit_arguments: true``: the event, with the call's arguments, is logged at once, before
    anything can forward the message."""
    (parsed,) = parse_post(json.dumps(CALL).encode(), lambda _name: []).messages
    decision = decide(ROUTE.policy, operation_of(parsed), CALLER.scopes)
    with capture_logs() as events:
        audit_decision(ROUTE, CALLER, parsed, decision)
        [event] = events
    assert (event["event"], event["arguments"]) == ("policy_decision", {"a": 1})
