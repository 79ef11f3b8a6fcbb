"""Strict MCP POST parsing (anti-smuggling).

Valid bodies are the ones the official SDK client sends (tests/support/NOTES_SDK.md, captured
from mcp 2.3.0): compact JSON, ``_meta`` envelope and ``Mcp-*`` headers in 2026-07-28.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import RequestRejected
from gateway.mcp.messages import (
    HANDSHAKE_VERSIONS,
    MAX_DEPTH,
    MODERN_VERSION,
    McpMessage,
    McpRejected,
    decode_header_value,
    exceeds_depth,
    parse_post,
)
from gateway.mcp.methods import Resource, Tool

LEGACY = "2025-11-25"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
    "io.modelcontextprotocol/clientInfo": {"name": "gateway-tests", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
SAFE_MESSAGES = {"Parse error", "Invalid Request", "Invalid params", "Header mismatch"}


# --- helpers ----------------------------------------------------------------------------------


def lookup(headers: Mapping[str, str]) -> Callable[[str], list[str]]:
    """A case-insensitive header lookup (each header once), as the caller provides it."""
    folded = {name.lower(): value for name, value in headers.items()}
    return lambda name: [folded[name.lower()]] if name.lower() in folded else []


def dump(value: Any) -> bytes:
    """Compact JSON, as the SDK client sends it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def call(method: str, params: dict[str, Any] | None = None, rpc_id: Any = 1) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": rpc_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def legacy(method: str, params: dict[str, Any] | None = None, rpc_id: Any = 1) -> bytes:
    return dump(call(method, params, rpc_id))


def modern(method: str, params: dict[str, Any] | None = None, rpc_id: Any = 1) -> bytes:
    return dump(call(method, {**(params or {}), "_meta": META}, rpc_id))


def b64(value: str) -> str:
    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="


def h_legacy(**extra: str) -> dict[str, str]:
    return {"MCP-Protocol-Version": LEGACY, "Mcp-Session-Id": "87d405e5", **extra}


def h_modern(method: str, name: str | None = None) -> dict[str, str]:
    headers = {"MCP-Protocol-Version": MODERN_VERSION, "Mcp-Method": method}
    if name is not None:
        headers["Mcp-Name"] = name
    return headers


def rejection(body: bytes, headers: Mapping[str, str]) -> McpRejected:
    with pytest.raises(McpRejected) as info:
        parse_post(body, lookup(headers))
    return info.value


def shape(message: McpMessage) -> tuple[Any, ...]:
    target = message.target
    return (
        message.kind,
        message.method,
        message.id,
        target.identifier if target is not None else None,
        target.kind if target is not None else None,
    )


# --- valid bodies, both eras --------------------------------------------------------------------

MRTR_RETRY = {
    "name": "deploy",
    "arguments": {"env": "prod"},
    "inputResponses": {"confirm": {"action": "accept", "content": {"ok": True}}},
    "requestState": "opaque-state",
}

VALID = [
    pytest.param(
        dump(
            call(
                "initialize",
                {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "gateway-tests", "version": "0"},
                },
            )
        ),
        {},
        "2025-03-26",
        ("request", "initialize", 1, None, None),
        id="2025-initialize-no-version-header",
    ),
    pytest.param(
        dump({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        h_legacy(),
        LEGACY,
        ("notification", "notifications/initialized", None, None, None),
        id="2025-notification",
    ),
    pytest.param(
        legacy("tools/list", rpc_id=2),
        h_legacy(),
        LEGACY,
        ("request", "tools/list", 2, None, None),
        id="2025-tools-list",
    ),
    pytest.param(
        legacy("tools/call", {"name": "echo", "arguments": {"text": "héllo"}}, 3),
        h_legacy(),
        LEGACY,
        ("request", "tools/call", 3, "echo", "tool"),
        id="2025-tools-call",
    ),
    pytest.param(
        legacy("resources/read", {"uri": "demo://greeting"}, 4),
        h_legacy(),
        LEGACY,
        ("request", "resources/read", 4, "demo://greeting", "resource"),
        id="2025-resources-read",
    ),
    pytest.param(
        legacy("resources/subscribe", {"uri": "demo://counter"}, "s-1"),
        h_legacy(),
        LEGACY,
        ("request", "resources/subscribe", "s-1", "demo://counter", "resource"),
        id="2025-resources-subscribe-string-id",
    ),
    pytest.param(
        legacy("resources/unsubscribe", {"uri": "demo://counter"}, 0),
        h_legacy(),
        LEGACY,
        ("request", "resources/unsubscribe", 0, "demo://counter", "resource"),
        id="2025-resources-unsubscribe-id-zero",
    ),
    pytest.param(
        legacy("prompts/get", {"name": "greet", "arguments": {"name": "x"}}, 5),
        h_legacy(),
        LEGACY,
        ("request", "prompts/get", 5, "greet", "prompt"),
        id="2025-prompts-get",
    ),
    pytest.param(
        legacy(
            "completion/complete",
            {"ref": {"type": "ref/prompt", "name": "greet"}, "argument": {"name": "name", "value": "x"}},
            7,
        ),
        h_legacy(),
        LEGACY,
        ("request", "completion/complete", 7, "greet", "prompt"),
        id="2025-complete-prompt-ref",
    ),
    pytest.param(
        legacy(
            "completion/complete",
            {
                "ref": {"type": "ref/resource", "uri": "file:///{path}"},
                "argument": {"name": "path", "value": "a"},
            },
            8,
        ),
        h_legacy(),
        LEGACY,
        ("request", "completion/complete", 8, "file:///{path}", "resource"),
        id="2025-complete-resource-ref",
    ),
    pytest.param(
        dump({"jsonrpc": "2.0", "id": 0, "result": {"model": "m", "role": "assistant", "content": {}}}),
        h_legacy(),
        LEGACY,
        ("response", None, 0, None, None),
        id="2025-client-response-result",
    ),
    pytest.param(
        dump({"jsonrpc": "2.0", "id": "srv-1", "error": {"code": -1, "message": "User rejected"}}),
        h_legacy(),
        LEGACY,
        ("response", None, "srv-1", None, None),
        id="2025-client-response-error",
    ),
    pytest.param(
        dump({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 3}}),
        h_legacy(),
        LEGACY,
        ("notification", "notifications/cancelled", None, None, None),
        id="2025-cancel-notification",
    ),
    pytest.param(
        legacy("tools/call", {"name": "echo"}),
        {"MCP-Protocol-Version": "2024-11-05"},
        "2024-11-05",
        ("request", "tools/call", 1, "echo", "tool"),
        id="2024-tools-call",
    ),
    pytest.param(
        legacy("tools/call", {"name": "echo", "arguments": {}}),
        h_legacy(**{"Mcp-Method": "tools/list", "Mcp-Name": "other"}),
        LEGACY,
        ("request", "tools/call", 1, "echo", "tool"),
        id="2025-mcp-headers-ignored-target-from-body",
    ),
    pytest.param(
        legacy("tools/call", MRTR_RETRY, 9),
        h_legacy(),
        LEGACY,
        ("request", "tools/call", 9, "deploy", "tool"),
        id="2025-tools-call-with-extra-params",
    ),
    pytest.param(
        modern("server/discover"),
        h_modern("server/discover"),
        MODERN_VERSION,
        ("request", "server/discover", 1, None, None),
        id="2026-server-discover",
    ),
    pytest.param(
        modern("tools/list"),
        h_modern("tools/list"),
        MODERN_VERSION,
        ("request", "tools/list", 1, None, None),
        id="2026-tools-list",
    ),
    pytest.param(
        modern("tools/call", {"name": "echo", "arguments": {"text": "héllo"}}, 2),
        h_modern("tools/call", "echo"),
        MODERN_VERSION,
        ("request", "tools/call", 2, "echo", "tool"),
        id="2026-tools-call",
    ),
    pytest.param(
        modern("tools/call", {"name": "café_lookup", "arguments": {}}, 2),
        h_modern("tools/call", b64("café_lookup")),
        MODERN_VERSION,
        ("request", "tools/call", 2, "café_lookup", "tool"),
        id="2026-tools-call-base64-mcp-name",
    ),
    pytest.param(
        modern("tools/call", {"name": "echo", "arguments": {}}, 2),
        h_modern("tools/call", b64("echo")),
        MODERN_VERSION,
        ("request", "tools/call", 2, "echo", "tool"),
        id="2026-tools-call-ascii-name-in-base64",
    ),
    pytest.param(
        modern("resources/read", {"uri": "demo://greeting"}, 3),
        h_modern("resources/read", "demo://greeting"),
        MODERN_VERSION,
        ("request", "resources/read", 3, "demo://greeting", "resource"),
        id="2026-resources-read",
    ),
    pytest.param(
        modern("prompts/get", {"name": "greet", "arguments": {"name": "x"}}, 4),
        h_modern("prompts/get", "greet"),
        MODERN_VERSION,
        ("request", "prompts/get", 4, "greet", "prompt"),
        id="2026-prompts-get",
    ),
    pytest.param(
        modern(
            "completion/complete",
            {"ref": {"type": "ref/prompt", "name": "greet"}, "argument": {"name": "name", "value": "x"}},
            6,
        ),
        h_modern("completion/complete"),
        MODERN_VERSION,
        ("request", "completion/complete", 6, "greet", "prompt"),
        id="2026-complete-no-mcp-name",
    ),
    pytest.param(
        modern("tools/call", MRTR_RETRY, 10),
        h_modern("tools/call", "deploy"),
        MODERN_VERSION,
        ("request", "tools/call", 10, "deploy", "tool"),
        id="2026-mrtr-retry-input-responses",
    ),
    pytest.param(
        dump({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}}),
        h_modern("notifications/cancelled"),
        MODERN_VERSION,
        ("notification", "notifications/cancelled", None, None, None),
        id="2026-notification-needs-no-meta",
    ),
]


@pytest.mark.parametrize(("body", "headers", "version", "expected"), VALID)
def test_valid_single_messages(
    body: bytes, headers: dict[str, str], version: str, expected: tuple[Any, ...]
) -> None:
    """Realistic SDK bodies of every kind, in both eras, parse to the right kind, id and target."""
    post = parse_post(body, lookup(headers))
    assert post.protocol_version == version
    assert post.is_batch is False
    assert [shape(message) for message in post.messages] == [expected]


def test_params_is_a_read_only_view() -> None:
    """params is exposed for audit as a read-only mapping holding the body's values."""
    post = parse_post(modern("tools/call", MRTR_RETRY), lookup(h_modern("tools/call", "deploy")))
    params = post.messages[0].params
    assert params is not None and params["inputResponses"] == MRTR_RETRY["inputResponses"]
    with pytest.raises(TypeError):
        params["name"] = "other"  # type: ignore[index]


@pytest.mark.parametrize(
    ("headers", "version"),
    [
        pytest.param({}, "2025-03-26", id="no-header"),
        pytest.param({"MCP-Protocol-Version": "2025-03-26"}, "2025-03-26", id="explicit-2025-03-26"),
    ],
)
def test_batch_allowed_only_in_2025_03_26(headers: dict[str, str], version: str) -> None:
    """MCP 2025-03-26 allows JSON-RPC batches; each element is classified on its own."""
    body = dump(
        [
            call("tools/call", {"name": "echo", "arguments": {}}, 1),
            {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1}},
            call("resources/read", {"uri": "demo://greeting"}, "two"),
        ]
    )
    post = parse_post(body, lookup(headers))
    assert post.is_batch and post.protocol_version == version
    assert [shape(message) for message in post.messages] == [
        ("request", "tools/call", 1, "echo", "tool"),
        ("notification", "notifications/progress", None, None, None),
        ("request", "resources/read", "two", "demo://greeting", "resource"),
    ]


# --- targets are kept exactly -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "same_as_echo"),
    [
        pytest.param("echo ", False, id="trailing-space"),
        pytest.param("\u0435cho", False, id="cyrillic-ie-lookalike"),
        pytest.param("\uff45\uff43\uff48\uff4f", False, id="fullwidth-lookalike"),
        pytest.param("e\u0301cho", False, id="combining-accent-not-normalised"),
        pytest.param("echo", True, id="plain"),
    ],
)
def test_names_are_kept_exactly(name: str, same_as_echo: bool) -> None:
    """No strip and no Unicode normalisation: look-alikes stay different from the ASCII name."""
    post = parse_post(legacy("tools/call", {"name": name, "arguments": {}}), lookup(h_legacy()))
    assert post.messages[0].target == Tool(name)
    assert (post.messages[0].target == Tool("echo")) is same_as_echo


@pytest.mark.parametrize("method", ["Tools/Call", "TOOLS/CALL", "prompts/Get", "Initialize"])
def test_case_variants_of_mcp_methods_are_refused(method: str) -> None:
    """A method that differs from an MCP method only by case is refused, never passed on."""
    assert rejection(legacy(method, {"name": "echo"}), h_legacy()).reason == "method_case_variant"


def test_unknown_methods_are_kept_verbatim() -> None:
    """A method that is not an MCP method in any case is a request with no target, not normalised."""
    post = parse_post(legacy("vendor/Custom", {"name": "echo"}), lookup(h_legacy()))
    assert shape(post.messages[0]) == ("request", "vendor/Custom", 1, None, None)


def test_trailing_space_in_2026_needs_the_base64_header() -> None:
    """HTTP strips edge spaces, so "echo " travels base64-encoded; a plain "echo" header mismatches."""
    body = modern("tools/call", {"name": "echo ", "arguments": {}})
    post = parse_post(body, lookup(h_modern("tools/call", b64("echo "))))
    assert post.messages[0].target == Tool("echo ")
    assert rejection(body, h_modern("tools/call", "echo")).reason == "header_mismatch"


def test_empty_version_header_is_modern() -> None:
    """A present but empty MCP-Protocol-Version is not a handshake version: modern checks apply."""
    assert rejection(legacy("tools/list"), {"MCP-Protocol-Version": ""}).reason == "header_mismatch"


def test_unknown_version_is_checked_like_modern() -> None:
    """An unknown future version gets the 2026 header/body agreement checks, not the legacy pass."""
    meta = {**META, "io.modelcontextprotocol/protocolVersion": "2027-01-01"}
    body = dump(call("tools/list", {"_meta": meta}))
    headers = {"MCP-Protocol-Version": "2027-01-01", "Mcp-Method": "tools/list"}
    assert parse_post(body, lookup(headers)).protocol_version == "2027-01-01"
    assert rejection(body, {"MCP-Protocol-Version": "2027-01-01"}).reason == "header_mismatch"


# --- the smuggling corpus ---------------------------------------------------------------------

DEEP = b"[" * 100_000
NAME_CALL = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":%s,"arguments":{}}}'
MODERN_CALL = modern("tools/call", {"name": "echo", "arguments": {}})

SMUGGLING = [
    # -- JSON itself
    pytest.param(b"", h_legacy(), "empty_body", id="empty-body"),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"rm"}}',
        h_legacy(),
        "invalid_json",
        id="duplicate-method-key",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"safe","name":"rm_rf"}}',
        h_legacy(),
        "invalid_json",
        id="duplicate-name-in-params",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"q","arguments":'
        b'{"filter":{"deep":{"path":"/a","path":"/etc/shadow"}}}}}',
        h_legacy(),
        "invalid_json",
        id="duplicate-key-deep-in-arguments",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/list"}',
        h_legacy(),
        "invalid_json",
        id="duplicate-id",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ech\xff"}}',
        h_legacy(),
        "invalid_json",
        id="invalid-utf8",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\xc0\xafetc"}}',
        h_legacy(),
        "invalid_json",
        id="overlong-utf8-slash",
    ),
    pytest.param(b"\xef\xbb\xbf" + legacy("tools/list"), h_legacy(), "invalid_json", id="bom"),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"n":NaN}}}',
        h_legacy(),
        "invalid_json",
        id="nan",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"n":-Infinity}}}',
        h_legacy(),
        "invalid_json",
        id="infinity",
    ),
    pytest.param(
        legacy("tools/list") + b'{"x":1}', h_legacy(), "invalid_json", id="trailing-second-document"
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ec\x00ho"}}',
        h_legacy(),
        "invalid_json",
        id="raw-nul-byte-in-string",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list"', h_legacy(), "invalid_json", id="truncated"
    ),
    pytest.param(DEEP, {}, "too_deep", id="100000-deep-unclosed"),
    pytest.param(b"[" * 65 + b"]" * 65, {}, "too_deep", id="65-deep-array"),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":'
        + b'{"a":' * 70
        + b"1"
        + b"}" * 70
        + b"}}",
        h_legacy(),
        "too_deep",
        id="deep-objects-in-arguments",
    ),
    # -- top level and batches
    pytest.param(b'"tools/call"', h_legacy(), "invalid_message", id="top-level-string"),
    pytest.param(b"null", h_legacy(), "invalid_message", id="top-level-null"),
    pytest.param(
        dump([call("tools/list")]),
        {"MCP-Protocol-Version": "2025-06-18"},
        "batch_not_allowed",
        id="batch-2025-06-18",
    ),
    pytest.param(dump([call("tools/list")]), h_legacy(), "batch_not_allowed", id="batch-2025-11-25"),
    pytest.param(dump([call("tools/list")]), h_modern("tools/list"), "batch_not_allowed", id="batch-2026"),
    pytest.param(
        dump([call("tools/list")]),
        {"MCP-Protocol-Version": "2024-11-05"},
        "batch_not_allowed",
        id="batch-2024",
    ),
    pytest.param(b"[]", {}, "empty_batch", id="empty-batch"),
    pytest.param(dump([call("tools/list"), 1]), {}, "invalid_batch", id="batch-with-number"),
    pytest.param(dump([call("tools/list"), "x"]), {}, "invalid_batch", id="batch-with-string"),
    pytest.param(
        dump([call("tools/list"), [call("tools/call", {"name": "rm"}, 2)]]),
        {},
        "invalid_batch",
        id="nested-batch",
    ),
    pytest.param(
        dump([call("tools/list", rpc_id=1), call("tools/call", {"name": "x"}, 1)]),
        {},
        "duplicate_id",
        id="batch-repeated-id",
    ),
    pytest.param(
        dump([call("tools/list", rpc_id=1), call("tools/call", {"name": "x"}, "1")]),
        {},
        "duplicate_id",
        id="batch-id-1-and-string-1",
    ),
    # -- envelope
    pytest.param(
        dump({**call("tools/list"), "jsonrpc": "1.0"}), h_legacy(), "invalid_message", id="jsonrpc-1.0"
    ),
    pytest.param(
        dump({**call("tools/list"), "jsonrpc": 2.0}), h_legacy(), "invalid_message", id="jsonrpc-number"
    ),
    pytest.param(
        dump({"id": 1, "method": "tools/list"}), h_legacy(), "invalid_message", id="jsonrpc-missing"
    ),
    pytest.param(legacy("tools/list", rpc_id=True), h_legacy(), "invalid_message", id="id-bool"),
    pytest.param(legacy("tools/list", rpc_id=1.5), h_legacy(), "invalid_message", id="id-float"),
    pytest.param(
        b'{"jsonrpc":"2.0","id":1.0,"method":"tools/list"}', h_legacy(), "invalid_message", id="id-1.0"
    ),
    pytest.param(legacy("tools/list", rpc_id=None), h_legacy(), "invalid_message", id="id-null"),
    pytest.param(legacy("tools/list", rpc_id={"a": 1}), h_legacy(), "invalid_message", id="id-object"),
    pytest.param(legacy("", rpc_id=1), h_legacy(), "invalid_message", id="method-empty"),
    pytest.param(legacy("Tools/Call", {"name": "x"}), h_legacy(), "method_case_variant", id="method-case"),
    pytest.param(
        legacy("tools/call ", {"name": "x"}),
        h_legacy(),
        "method_not_printable_ascii",
        id="method-trailing-space",
    ),
    pytest.param(
        legacy("t\u043e\u043els/call", {"name": "x"}),
        h_legacy(),
        "method_not_printable_ascii",
        id="method-cyrillic-o",
    ),
    pytest.param(dump({**call("x"), "method": 7}), h_legacy(), "invalid_message", id="method-number"),
    pytest.param(
        legacy("tools/call\u0000", {"name": "x"}), h_legacy(), "invalid_message", id="method-with-nul"
    ),
    pytest.param(
        dump({"jsonrpc": "2.0", "id": 1, "result": {}, "error": {"code": 1, "message": "m"}}),
        h_legacy(),
        "invalid_message",
        id="response-result-and-error",
    ),
    pytest.param(dump({"jsonrpc": "2.0", "id": 1}), h_legacy(), "invalid_message", id="response-neither"),
    pytest.param(
        dump({"jsonrpc": "2.0", "id": 1, "error": "boom"}),
        h_legacy(),
        "invalid_message",
        id="response-error-string",
    ),
    pytest.param(
        dump({**call("tools/call", {"name": "x"}), "result": {}}),
        h_legacy(),
        "invalid_message",
        id="request-and-response-at-once",
    ),
    pytest.param(
        dump({"jsonrpc": "2.0", "result": {}}), h_legacy(), "invalid_message", id="response-without-id"
    ),
    # -- params and targets
    pytest.param(legacy("tools/call", ["echo", {}]), h_legacy(), "invalid_params", id="params-list"),  # type: ignore[arg-type]
    pytest.param(
        dump({**call("tools/list"), "params": None}), h_legacy(), "invalid_params", id="params-null"
    ),
    pytest.param(
        dump({**call("tools/list"), "params": "x"}), h_legacy(), "invalid_params", id="params-string"
    ),
    pytest.param((NAME_CALL % '["echo"]').encode(), h_legacy(), "invalid_name", id="name-list"),
    pytest.param((NAME_CALL % '{"n":"echo"}').encode(), h_legacy(), "invalid_name", id="name-object"),
    pytest.param((NAME_CALL % "7").encode(), h_legacy(), "invalid_name", id="name-number"),
    pytest.param((NAME_CALL % "null").encode(), h_legacy(), "invalid_name", id="name-null"),
    pytest.param(legacy("tools/call", {"arguments": {}}), h_legacy(), "invalid_name", id="name-missing"),
    pytest.param(legacy("tools/call"), h_legacy(), "invalid_name", id="tools-call-without-params"),
    pytest.param((NAME_CALL % '"echo\\u0000rm"').encode(), h_legacy(), "invalid_name", id="name-escaped-nul"),
    pytest.param((NAME_CALL % '"echo\\r\\nrm"').encode(), h_legacy(), "invalid_name", id="name-crlf"),
    pytest.param((NAME_CALL % '"echo\\u007f"').encode(), h_legacy(), "invalid_name", id="name-del"),
    pytest.param(
        (NAME_CALL % '"echo\\ud800"').encode(), h_legacy(), "invalid_name", id="name-lone-surrogate"
    ),
    pytest.param(legacy("prompts/get", {"name": 1}), h_legacy(), "invalid_name", id="prompt-name-number"),
    pytest.param(legacy("resources/read", {"uri": ["a"]}), h_legacy(), "invalid_uri", id="uri-list"),
    pytest.param(
        legacy("resources/read", {"uri": "file:///etc/passwd\u0000.txt"}),
        h_legacy(),
        "invalid_uri",
        id="uri-nul",
    ),
    pytest.param(legacy("resources/subscribe", {}), h_legacy(), "invalid_uri", id="subscribe-no-uri"),
    # -- one reading of a URI (gateway.mcp.uris): the SDK's template would decode these
    pytest.param(
        legacy("resources/read", {"uri": "docs://files/pub%2F..%2Fprivate"}),
        h_legacy(),
        "ambiguous_uri",
        id="uri-escaped-slash",
    ),
    pytest.param(
        legacy("resources/read", {"uri": "docs://files/%2e%2e/private"}),
        h_legacy(),
        "ambiguous_uri",
        id="uri-escaped-dot-segment",
    ),
    pytest.param(
        legacy("resources/unsubscribe", {"uri": "docs://files/%2570rivate"}),
        h_legacy(),
        "ambiguous_uri",
        id="uri-double-encoded",
    ),
    pytest.param(
        modern("resources/subscribe", {"uri": "docs://files/%FF"}),
        h_modern("resources/subscribe"),
        "ambiguous_uri",
        id="2026-subscribe-uri-not-utf8",
    ),
    pytest.param(
        legacy("completion/complete", {"ref": {"type": "ref/resource", "uri": "docs://files/{a/../b}"}}),
        h_legacy(),
        "ambiguous_uri",
        id="ref-resource-not-a-template",
    ),
    pytest.param(
        legacy("completion/complete", {"ref": {"type": "ref/tool", "name": "x"}}),
        h_legacy(),
        "invalid_ref",
        id="ref-unknown-type",
    ),
    pytest.param(
        legacy("completion/complete", {"ref": {"type": "ref/prompt", "uri": "x"}}),
        h_legacy(),
        "invalid_ref",
        id="ref-prompt-without-name",
    ),
    pytest.param(
        legacy("completion/complete", {"ref": {"type": "ref/resource", "uri": 5}}),
        h_legacy(),
        "invalid_ref",
        id="ref-resource-uri-number",
    ),
    pytest.param(
        legacy("completion/complete", {"ref": "ref/prompt"}), h_legacy(), "invalid_ref", id="ref-string"
    ),
    pytest.param(legacy("completion/complete", {}), h_legacy(), "invalid_ref", id="ref-missing"),
    # -- 2026-07-28 header/body agreement
    pytest.param(MODERN_CALL, h_modern("tools/call", "other_tool"), "header_mismatch", id="mcp-name-differs"),
    pytest.param(MODERN_CALL, h_modern("tools/call"), "header_mismatch", id="mcp-name-missing"),
    pytest.param(MODERN_CALL, h_modern("tools/list", "echo"), "header_mismatch", id="mcp-method-differs"),
    pytest.param(
        MODERN_CALL, h_modern("Tools/Call", "echo"), "header_mismatch", id="mcp-method-case-differs"
    ),
    pytest.param(
        MODERN_CALL,
        {"MCP-Protocol-Version": MODERN_VERSION, "Mcp-Name": "echo"},
        "header_mismatch",
        id="mcp-method-missing",
    ),
    pytest.param(
        modern("tools/list"),
        {"MCP-Protocol-Version": MODERN_VERSION},
        "header_mismatch",
        id="mcp-method-missing-list",
    ),
    pytest.param(
        dump({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}}),
        {"MCP-Protocol-Version": MODERN_VERSION},
        "header_mismatch",
        id="notification-mcp-method-missing",
    ),
    pytest.param(
        MODERN_CALL, h_modern("tools/call", "=?base64?ZWNo*G8=?="), "header_mismatch", id="base64-bad-char"
    ),
    pytest.param(
        MODERN_CALL, h_modern("tools/call", "=?base64?ZWNobw?="), "header_mismatch", id="base64-no-padding"
    ),
    pytest.param(
        MODERN_CALL,
        h_modern("tools/call", "=?base64?ZWNobx==?="),
        "header_mismatch",
        id="base64-non-canonical",
    ),
    pytest.param(
        MODERN_CALL, h_modern("tools/call", "=?base64?/w==?="), "header_mismatch", id="base64-invalid-utf8"
    ),
    pytest.param(
        MODERN_CALL,
        h_modern("tools/call", "=?BASE64?ZWNobw==?="),
        "header_mismatch",
        id="base64-sentinel-case",
    ),
    pytest.param(MODERN_CALL, h_modern("tools/call", "echo, echo"), "header_mismatch", id="mcp-name-twice"),
    pytest.param(
        MODERN_CALL,
        h_modern("tools/call", "echo, other_tool"),
        "header_mismatch",
        id="mcp-name-twice-different",
    ),
    pytest.param(
        MODERN_CALL, h_modern("tools/call, tools/call", "echo"), "header_mismatch", id="mcp-method-twice"
    ),
    pytest.param(
        MODERN_CALL,
        {**h_modern("tools/call", "echo"), "MCP-Protocol-Version": f"{MODERN_VERSION}, {MODERN_VERSION}"},
        "header_mismatch",
        id="version-twice",
    ),
    pytest.param(
        legacy("tools/list"),
        {"MCP-Protocol-Version": "2025-11-25, 2025-03-26"},
        "header_mismatch",
        id="legacy-version-twice",
    ),
    pytest.param(
        dump(
            call("tools/list", {"_meta": {**META, "io.modelcontextprotocol/protocolVersion": "2025-11-25"}})
        ),
        h_modern("tools/list"),
        "header_mismatch",
        id="meta-version-differs",
    ),
    pytest.param(legacy("tools/list"), h_modern("tools/list"), "invalid_params", id="meta-missing"),
    pytest.param(
        dump(call("tools/list", {"_meta": "2026-07-28"})),
        h_modern("tools/list"),
        "invalid_params",
        id="meta-string",
    ),
    pytest.param(
        modern("resources/read", {"uri": "demo://secret"}),
        h_modern("resources/read", "demo://greeting"),
        "header_mismatch",
        id="mcp-name-differs-resource",
    ),
    pytest.param(
        modern("prompts/get", {"name": "greet"}),
        h_modern("prompts/get", b64("gre\u0435t")),
        "header_mismatch",
        id="mcp-name-base64-lookalike",
    ),
    pytest.param(
        dump({"jsonrpc": "2.0", "id": 1, "result": {}}),
        h_modern("tools/call"),
        "response_not_allowed",
        id="2026-response",
    ),
]


@pytest.mark.parametrize(("body", "headers", "reason"), SMUGGLING)
def test_smuggling_corpus(body: bytes, headers: dict[str, str], reason: str) -> None:
    """Every ambiguous or inconsistent body is refused with its own reason, code and a fixed message."""
    exc = rejection(body, headers)
    assert exc.reason == reason
    assert isinstance(exc, RequestRejected) and exc.status == 400
    assert exc.message in SAFE_MESSAGES
    assert exc.jsonrpc_code == {
        "invalid_json": -32700,
        "header_mismatch": -32020,
        "invalid_params": -32602,
        "invalid_name": -32602,
        "invalid_uri": -32602,
        "ambiguous_uri": -32602,
        "invalid_ref": -32602,
    }.get(reason, -32600)


def test_corpus_is_big_enough() -> None:
    """The smuggling corpus keeps at least 25 bodies and covers every reason the parser can give."""
    assert len(SMUGGLING) >= 25
    reasons = {param.values[2] for param in SMUGGLING}
    assert reasons == {
        "empty_body",
        "invalid_json",
        "too_deep",
        "invalid_message",
        "batch_not_allowed",
        "empty_batch",
        "invalid_batch",
        "duplicate_id",
        "invalid_params",
        "invalid_name",
        "invalid_uri",
        "ambiguous_uri",
        "invalid_ref",
        "header_mismatch",
        "response_not_allowed",
        "method_case_variant",
        "method_not_printable_ascii",
    }


@pytest.mark.parametrize("body", [DEEP, b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000])
def test_deep_nesting_is_refused_fast(body: bytes) -> None:
    """A 100000-deep body is refused as too_deep in well under a second, without a RecursionError."""
    started = time.perf_counter()
    assert rejection(body, {}).reason == "too_deep"
    assert time.perf_counter() - started < 0.25


def test_depth_limit_boundary_and_strings() -> None:
    """64 levels pass, 65 do not; brackets inside strings (escaped quotes included) do not count."""
    inner = "[" * 200 + '\\"[' + "{" * 100
    ok = b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"s":"%s","a":%s}}' % (
        inner.encode(),
        b"[" * (MAX_DEPTH - 2) + b"]" * (MAX_DEPTH - 2),
    )
    assert parse_post(ok, lookup({})).messages[0].method == "x"
    too_deep = ok.replace(b'"a":[', b'"a":[[', 1).replace(b"]}}", b"]]}}")
    assert rejection(too_deep, {}).reason == "too_deep"


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\u00e9\n'),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(alphabet='[{"\\x'), children, max_size=3)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(_JSON_VALUES, st.integers(min_value=0, max_value=8))
def test_depth_prescan_agrees_with_the_parsed_depth(value: Any, limit: int) -> None:
    """The byte-level pre-scan gives the same answer as the real depth, for any valid JSON."""
    for body in (json.dumps(value).encode(), dump(value)):
        assert exceeds_depth(body, limit) == (_depth(value) > limit)


# --- ids in error bodies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "headers", "rpc_id"),
    [
        pytest.param((NAME_CALL % "7").encode(), h_legacy(), 1, id="bad-name-keeps-id"),
        pytest.param(
            legacy("tools/call", {"name": "x"}, "abc"), h_modern("tools/call", "y"), "abc", id="mismatch"
        ),
        pytest.param(
            dump({**call("tools/list", rpc_id=5), "jsonrpc": "1.0"}), h_legacy(), 5, id="bad-jsonrpc"
        ),
        pytest.param(legacy("tools/list", rpc_id=True), h_legacy(), None, id="bool-id-is-not-an-id"),
        pytest.param(b'{"id":1,', h_legacy(), None, id="unparsable"),
        pytest.param(dump([call("tools/list", rpc_id=3)]), h_legacy(), None, id="batch-refused-as-a-whole"),
        pytest.param(
            dump([call("tools/list", rpc_id=3), call("tools/call", {}, 4)]), {}, 4, id="bad-batch-element"
        ),
        pytest.param(
            MODERN_CALL.replace(b'"id":1', b'"id":9'),
            {**h_modern("tools/call", "echo"), "MCP-Protocol-Version": "a, b"},
            9,
            id="duplicated-version",
        ),
    ],
)
def test_rejection_carries_the_request_id(body: bytes, headers: dict[str, str], rpc_id: object) -> None:
    """McpRejected.rpc_id is the offending message's id when it could be read, else None."""
    assert rejection(body, headers).rpc_id == rpc_id


def test_rejection_never_echoes_the_body() -> None:
    """Neither the client-facing message nor the log detail repeats body bytes."""
    secret = "tok_sk_live_0123456789"
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"%s":1,"%s":2}}' % (
        secret.encode(),
        secret.encode(),
    )
    exc = rejection(body, h_legacy())
    assert exc.reason == "invalid_json"
    assert secret not in exc.message and secret not in exc.detail and secret not in str(exc)


# --- header value codec -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "decoded"),
    [
        pytest.param("echo", "echo", id="plain"),
        pytest.param(b64("café"), "café", id="utf8"),
        pytest.param(b64(""), "", id="empty"),
        pytest.param("=?base64?Y2Fmw6k?=", None, id="missing-padding"),
        pytest.param("=?base64?Y2Fm w6k=?=", None, id="space"),
        pytest.param("=?base64?Y2Fmw6k=?", "=?base64?Y2Fmw6k=?", id="not-a-sentinel-is-literal"),
        pytest.param("=?base64?_-8=?=", None, id="urlsafe-alphabet"),
    ],
)
def test_decode_header_value(header: str, decoded: str | None) -> None:
    """The =?base64?…?= form decodes strictly; anything else is compared literally."""
    assert decode_header_value(header) == decoded


def test_versions_constants() -> None:
    """The handshake versions and the modern one are the ones the SDK client knows."""
    assert HANDSHAKE_VERSIONS == ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
    assert MODERN_VERSION == "2026-07-28" and MODERN_VERSION not in HANDSHAKE_VERSIONS


def test_float_values_in_arguments_are_fine() -> None:
    """Finite floats in arguments are ordinary JSON and pass; only NaN/Infinity literals are refused."""
    post = parse_post(
        legacy("tools/call", {"name": "add", "arguments": {"a": 1.5, "b": -2e3}}), lookup(h_legacy())
    )
    params = post.messages[0].params
    assert params is not None and math.isclose(params["arguments"]["a"], 1.5)


@pytest.mark.parametrize("name", ["MCP-Protocol-Version", "Mcp-Method", "Mcp-Name", "Mcp-Session-Id"])
def test_repeated_mcp_header_is_refused(name: str) -> None:
    """A header the body is checked against, sent twice, is refused: which copy would the upstream read?"""
    body = modern("tools/call", {"name": "echo", "arguments": {}})
    single = h_modern("tools/call", "echo")

    def values(header: str) -> list[str]:
        found = [value for key, value in single.items() if key.lower() == header.lower()] or ["x"]
        return (
            found * 2
            if header.lower() == name.lower()
            else [v for k, v in single.items() if k.lower() == header.lower()]
        )

    with pytest.raises(McpRejected) as caught:
        parse_post(body, values)
    assert caught.value.reason == "header_mismatch"


def test_comma_inside_mcp_name_is_part_of_the_value() -> None:
    """A resource URI with a comma, sent once in Mcp-Name, matches the body (no false repeat)."""
    uri = "demo://a,b"
    body = modern("resources/read", {"uri": uri})
    post = parse_post(body, lookup(h_modern("resources/read", uri)))
    assert post.messages[0].target == Resource(uri)


@pytest.mark.parametrize("method", ["resources/subscribe", "resources/unsubscribe"])
def test_methods_removed_in_2026_pass_without_a_target(method: str) -> None:
    """2026-07-28 removed resources/(un)subscribe: no uri needed, no target; the upstream answers
    -32601 (SEP-2575). In a 2025 revision they still need a clean uri."""
    body = modern(method, {})
    post = parse_post(body, lookup(h_modern(method)))
    assert (post.messages[0].method, post.messages[0].target) == (method, None)
    assert rejection(legacy(method, {}), h_legacy()).reason == "invalid_uri"


@pytest.mark.parametrize("method", ["resources/subscribe", "resources/unsubscribe"])
def test_methods_removed_in_2026_are_decided_on_the_uri_they_name(method: str) -> None:
    """The version header is the client's claim: a 2026-07-28 (un)subscribe that names a uri gets
    that target (the rules decide on it), checked as strictly as in a 2025 revision."""
    post = parse_post(modern(method, {"uri": "demo://secret"}), lookup(h_modern(method)))
    assert post.messages[0].target == Resource("demo://secret")
    for uri, reason in (
        (7, "invalid_uri"),
        ("demo://x\u0000", "invalid_uri"),
        ("demo://%2e%2e", "ambiguous_uri"),
    ):
        assert rejection(modern(method, {"uri": uri}), h_modern(method)).reason == reason


@pytest.mark.parametrize(
    "method",
    [
        pytest.param("tools/call ", id="trailing-space"),
        pytest.param(" tools/call", id="leading-space"),
        pytest.param("tools /call", id="inner-space"),
        pytest.param("tools/call\u00a0", id="no-break-space"),
        pytest.param("tools/call\u200b", id="zero-width-space"),
        pytest.param("tools/call\ufeff", id="byte-order-mark"),
        pytest.param("t\u043e\u043els/call", id="cyrillic-o"),
        pytest.param("\uff54ools/call", id="fullwidth-t"),
        pytest.param("tools\u2215call", id="division-slash"),
        pytest.param("tools/cal\u0142", id="l-with-stroke"),
        pytest.param("vendor/\u00fcber", id="non-ascii-unknown-method"),
    ],
)
def test_methods_with_a_space_or_a_non_ascii_character_are_refused(method: str) -> None:
    """No MCP method has a space or a non-ASCII character: a name that has one is refused (an
    upstream that strips or folds names could run it as tools/call), in both eras."""
    assert rejection(legacy(method, {"name": "echo"}), h_legacy()).reason == "method_not_printable_ascii"
    refused = rejection(modern(method, {"name": "echo"}), h_modern(method, "echo"))
    assert (refused.reason, refused.status, refused.jsonrpc_code) == (
        "method_not_printable_ascii",
        400,
        -32600,
    )


@pytest.mark.parametrize("method", ["tools/caII", "tools/cal1", "tools//call", "tools/call/", "tools.call"])
def test_ascii_look_alikes_stay_unknown_methods(method: str) -> None:
    """An ASCII near-miss is no MCP method in any case: passed on as an unknown method, no target."""
    post = parse_post(legacy(method, {"name": "echo"}), lookup(h_legacy()))
    assert shape(post.messages[0]) == ("request", method, 1, None, None)


def test_resource_target_keeps_the_raw_spelling_and_matches_its_normal_form() -> None:
    """The body's spelling is the target's identifier (the log, Mcp-Name); rules see the normal form."""
    uri = "DOCS://files/%70rivate"
    post = parse_post(modern("resources/read", {"uri": uri}), lookup(h_modern("resources/read", uri)))
    target = post.messages[0].target
    assert isinstance(target, Resource)
    assert (target.identifier, target.rule_key) == (uri, "docs://files/private")
    # Mcp-Name must equal the body's raw value, not its normal form.
    normal_header = h_modern("resources/read", "docs://files/private")
    assert rejection(modern("resources/read", {"uri": uri}), normal_header).reason == "header_mismatch"


def test_listen_names_the_resources_whose_updates_it_asks_for() -> None:
    """2026-07-28 subscriptions/listen: each uri in resourceSubscriptions is read as strictly as a
    resources/read uri (the stream would carry its updates); without the key it names none."""
    method = "subscriptions/listen"

    def listen(notifications: Any) -> bytes:
        return modern(method, {"notifications": notifications})

    post = parse_post(listen({"resourceSubscriptions": ["demo://a", "DEMO://%62"]}), lookup(h_modern(method)))
    assert post.messages[0].watched == (Resource("demo://a"), Resource("DEMO://%62"))
    assert post.messages[0].target is None
    for notifications in ({"toolsListChanged": True}, {"resourceSubscriptions": None}, "x"):
        assert parse_post(listen(notifications), lookup(h_modern(method))).messages[0].watched == ()
    for uris, reason in (
        ("demo://a", "invalid_uri"),
        ([1], "invalid_uri"),
        (["demo://%2F"], "ambiguous_uri"),
    ):
        assert rejection(listen({"resourceSubscriptions": uris}), h_modern(method)).reason == reason
