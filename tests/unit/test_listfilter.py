"""The list filter: only this POST's list responses change; unreadable ones fail closed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.config import parse_config_text
from gateway.mcp.listing import ListFilter
from gateway.mcp.messages import parse_post

CONFIG = """
public_url: https://gw.example
issuers: [{issuer: https://as.example, algorithms: [RS256], jwks: {discover: true}}]
routes:
  - path: /mcp
    upstream: http://127.0.0.1:9000/mcp
    tools: {"get_*": [read], "set_*": [write]}
"""
POLICY = parse_config_text(CONFIG, Path("/tmp/c.yaml"), {}).routes[0].policy
TOOLS = [{"name": "get_a"}, {"name": "set_a"}, {"name": 5}, {"title": "no name"}]


def list_filter(body: Any, version: str | None = None, granted: str = "read") -> ListFilter | None:
    headers = {} if version is None else {"MCP-Protocol-Version": version}
    if version == "2026-07-28":
        headers["Mcp-Method"] = "tools/list"
    post = parse_post(
        json.dumps(body).encode(), lambda name: [v for k, v in headers.items() if k.lower() == name.lower()]
    )
    return ListFilter.for_post(post, POLICY, frozenset(granted.split()))


def request(rpc_id: Any = 1, method: str = "tools/list", **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": params}


def response(rpc_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "result": result}


def test_no_filter_without_list_requests() -> None:
    """A POST with no list request gets no filter: its answer is relayed as is."""
    assert list_filter(request(method="tools/call", name="get_a")) is None


def test_hidden_and_malformed_items_removed_other_keys_kept() -> None:
    """Items the caller may not use, or without a string name, are dropped; the cursor stays."""
    rewritten = list_filter(request()).rewrite_json(
        json.dumps(response(1, {"tools": TOOLS, "nextCursor": "c2"})).encode()
    )
    assert json.loads(rewritten) == response(1, {"tools": [{"name": "get_a"}], "nextCursor": "c2"})


def test_unchanged_when_everything_is_visible() -> None:
    """Nothing to hide: None, so the original bytes go out untouched."""
    body = json.dumps(response(1, {"tools": [{"name": "get_a"}]})).encode()
    assert list_filter(request()).rewrite_json(body) is None


def test_2026_results_are_marked_private() -> None:
    """MCP 2026-07-28: a filtered result varies by caller, so cacheScope becomes private."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    flt = list_filter(request(_meta=meta), "2026-07-28")
    public = response(1, {"tools": [{"name": "get_a"}], "cacheScope": "public", "ttlMs": 60000})
    assert json.loads(flt.rewrite_json(json.dumps(public).encode()))["result"] == {
        "tools": [{"name": "get_a"}],
        "cacheScope": "private",
        "ttlMs": 60000,
    }


def test_other_messages_pass_untouched() -> None:
    """Notifications, other ids, errors, and an id `true` (not 1) are not rewritten."""
    flt = list_filter(request())
    for message in (
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"tools": TOOLS}},
        response(2, {"tools": TOOLS}),
        response(True, {"tools": TOOLS}),
        {"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": "x"}},
    ):
        assert flt.rewrite_json(json.dumps(message).encode()) is None


def test_batch_response_filters_only_list_elements() -> None:
    """2025-03-26 batch: the list response is filtered, the other element is untouched."""
    flt = list_filter([request(1), request(2, "tools/call", name="get_a")], "2025-03-26")
    batch = [response(1, {"tools": TOOLS}), response(2, {"tools": TOOLS})]
    assert json.loads(flt.rewrite_json(json.dumps(batch).encode())) == [
        response(1, {"tools": [{"name": "get_a"}]}),
        response(2, {"tools": TOOLS}),
    ]


def test_unreadable_list_response_fails_closed() -> None:
    """A list response that cannot be parsed is replaced by an error, never relayed unfiltered."""
    flt = list_filter(request())
    for body in (b'{"jsonrpc":"2.0","id":1,"result":{"tools":[', b'{"id":1,"id":1}'):
        assert json.loads(flt.rewrite_json(body))["error"]["code"] == -32603
    assert (
        json.loads(flt.rewrite_json(json.dumps(response(1, ["not", "an", "object"])).encode()))["error"][
            "code"
        ]
        == -32603
    )


def test_sse_event_data_is_rewritten_the_same_way() -> None:
    """The SSE path gets the same answer as the JSON path."""
    data = json.dumps(response(1, {"tools": TOOLS}))
    assert json.loads(list_filter(request()).rewrite_event_data(data)) == response(
        1, {"tools": [{"name": "get_a"}]}
    )
