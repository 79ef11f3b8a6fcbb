"""What the gateway's spans are named and what they say: pure functions over parsed values.

The names and attributes follow the OpenTelemetry semantic conventions for MCP (GenAI semantic
conventions, ``docs/gen-ai/mcp.md``): a span per MCP message named ``{mcp.method.name} {target}``,
the target being the tool or prompt name (never a resource URI: high cardinality), with
``mcp.method.name``, ``gen_ai.tool.name`` / ``gen_ai.prompt.name``, ``mcp.resource.uri``,
``jsonrpc.request.id`` (absent for a notification or a null id), ``gen_ai.operation.name`` =
``execute_tool`` for ``tools/call`` only, ``mcp.protocol.version``, ``mcp.session.id`` and
``network.transport`` = ``tcp``. A POST that is no single MCP message (a 2025-03-26 batch, a
client's response, a body that was never read), a GET stream and a DELETE are named as HTTP
server spans are: ``{method} {route}``.

``error.type``: a tool result with ``isError: true`` is ``tool_error`` and a JSON-RPC error
answer its code, as the conventions say; a request the gateway refuses carries the refusal's
``reason`` (``insufficient_scope``, ``invalid_token``, ``rate_limited``: the metrics label and the
log field), with the HTTP status and the JSON-RPC code of the answer next to it.

Every string a client chose (a tool name, a request id, a URI, audited arguments) goes through
the log redaction step (``gateway.logs.redact``) first: a token pasted into a tool name is masked
in a span as it is in a log line. Pure: no OpenTelemetry, no aiohttp.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any, Final, TypeAlias
from urllib.parse import urlsplit

from ..errors import GatewayError
from ..logs import redact, redact_text
from ..mcp.messages import HANDSHAKE_VERSIONS, MODERN_VERSION, McpMessage
from ..mcp.methods import KNOWN_METHODS
from ..mcp.policy import ARGUMENT_METHODS, Decision

__all__ = [
    "AttributeValue",
    "Attributes",
    "answer_error",
    "decision_attributes",
    "http_span_name",
    "message_attributes",
    "message_span_name",
    "protocol_version",
    "refusal_attributes",
    "server_address",
]

AttributeValue: TypeAlias = str | bool | int | float | tuple[str, ...]
Attributes: TypeAlias = dict[str, AttributeValue]

# Semantic-convention attribute names used by more than one span.
MCP_METHOD: Final = "mcp.method.name"
MCP_SESSION_ID: Final = "mcp.session.id"
MCP_PROTOCOL_VERSION: Final = "mcp.protocol.version"
ERROR_TYPE: Final = "error.type"
RPC_STATUS_CODE: Final = "rpc.response.status_code"
HTTP_STATUS_CODE: Final = "http.response.status_code"
# The gateway's own attributes, in a namespace of their own.
OWN: Final = "mcp_gateway."
TOKEN_CACHE_HIT: Final = OWN + "token.cache_hit"
TOKEN_SCHEME: Final = OWN + "token.scheme"
ISSUER: Final = OWN + "issuer"
RESULT: Final = OWN + "result"
CACHE_HIT: Final = OWN + "cache_hit"
REASON: Final = OWN + "reason"

TOOL_ERROR: Final = "tool_error"
EXECUTE_TOOL: Final = "execute_tool"
_KNOWN_VERSIONS: Final = frozenset((*HANDSHAKE_VERSIONS, MODERN_VERSION))


# A string the client chose, in a span name or attribute, is cut to this many characters: a
# 60 KB tool name would otherwise be copied onto three spans and into every export.
MAX_CLIENT_TEXT: Final = 256


def client_text(text: str) -> str:
    """A client-chosen string as a span may show it: redacted as a log line is, and bounded."""
    shown = redact_text(text)
    return shown if len(shown) <= MAX_CLIENT_TEXT else shown[: MAX_CLIENT_TEXT - 1] + "…"


def method_name(method: str) -> str:
    """``mcp.method.name``: a method MCP defines as it is, any other as client text."""
    return method if method in KNOWN_METHODS else client_text(method)


def message_span_name(message: McpMessage) -> str | None:
    """``{mcp.method.name} {target}`` for a tool or prompt, ``{mcp.method.name}`` otherwise;
    None for a client's response (it names no method)."""
    if message.method is None:
        return None
    target = message.target
    method = method_name(message.method)
    if target is not None and target.kind != "resource":
        return f"{method} {client_text(target.identifier)}"
    return method


def http_span_name(http_method: str, route_path: str) -> str:
    """``{http.request.method} {http.route}``: the route is a configured path, low-cardinality."""
    return f"{http_method} {route_path}"


def message_attributes(message: McpMessage, *, with_arguments: bool = False) -> Attributes:
    """The convention's attributes of one message; its arguments (``gen_ai.tool.call.arguments``,
    a JSON string, redacted) only ``with_arguments`` (the route's ``audit_arguments``)."""
    attributes: Attributes = {}
    if message.method is not None:
        attributes[MCP_METHOD] = method_name(message.method)
    if message.method == "tools/call":
        attributes["gen_ai.operation.name"] = EXECUTE_TOOL
    target = message.target
    if target is not None:
        key = {"tool": "gen_ai.tool.name", "prompt": "gen_ai.prompt.name", "resource": "mcp.resource.uri"}
        attributes[key[target.kind]] = client_text(target.identifier)
    # Not for a notification, nor for a null id (the conventions: SHOULD NOT capture it).
    if message.id is not None and message.kind != "notification":
        attributes["jsonrpc.request.id"] = client_text(str(message.id))
    if with_arguments and message.method in ARGUMENT_METHODS and message.params is not None:
        arguments = redact(message.params.get("arguments", {}))
        attributes["gen_ai.tool.call.arguments"] = json.dumps(arguments, ensure_ascii=False, default=str)
    return attributes


def protocol_version(header: str | None) -> str | None:
    """The request's ``MCP-Protocol-Version`` if it is one the gateway knows (else nothing: a
    header is the client's text, and only a known value may become an attribute)."""
    return header if header in _KNOWN_VERSIONS else None


def refusal_attributes(exc: GatewayError) -> Attributes:
    """A request the gateway answered itself with an error: its reason, status and JSON-RPC code."""
    return {ERROR_TYPE: exc.reason, HTTP_STATUS_CODE: exc.status, RPC_STATUS_CODE: str(exc.jsonrpc_code)}


def answer_error(message: Mapping[str, Any]) -> Attributes | None:
    """What a JSON-RPC message of the upstream's answer says went wrong, or None: an error
    response is its code (``error.type`` and ``rpc.response.status_code``), a result with
    ``isError: true`` (a ``CallToolResult``) is ``tool_error``. Requests and notifications the
    upstream sends are none."""
    if "method" in message:
        return None
    error = message.get("error")
    if isinstance(error, Mapping):
        code = error.get("code")
        # JSON-RPC 2.0 §5.1: an integer; anything else is reported as the convention's fallback.
        text = str(code) if type(code) is int else "_OTHER"
        return {ERROR_TYPE: text, RPC_STATUS_CODE: text}
    result = message.get("result")
    if isinstance(result, Mapping) and result.get("isError") is True:
        return {ERROR_TYPE: TOOL_ERROR}
    return None


def decision_attributes(decision: Decision, observed: Decision | None = None) -> Attributes:
    """A policy decision: allow or deny, the rule(s) that decided, the scopes missing; with
    observed rules, what they would have decided."""
    attributes: Attributes = {
        OWN + "policy.outcome": "allow" if decision.allowed else "deny",
        OWN + "policy.rule": decision.label,
    }
    if decision.missing:
        attributes[OWN + "policy.missing_scopes"] = tuple(decision.missing)
    if observed is not None:
        attributes[OWN + "policy.observed_outcome"] = "allow" if observed.allowed else "deny"
    return attributes


def server_address(url: str) -> Attributes:
    """``server.address`` and ``server.port`` of an upstream URL (its scheme's port if none)."""
    return dict(_server_address(url))


@functools.lru_cache(maxsize=256)  # a route's upstream: parsed once, not per request
def _server_address(url: str) -> Attributes:
    parts = urlsplit(url)
    attributes: Attributes = {}
    if parts.hostname:
        attributes["server.address"] = parts.hostname
        attributes["server.port"] = parts.port or (443 if parts.scheme == "https" else 80)
    return attributes
