"""The list filter: only this POST's list responses change; unreadable ones fail closed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_config_text
from gateway.mcp.listing import ListFilter, filter_list_result
from gateway.mcp.messages import parse_post
from gateway.mcp.methods import LIST_METHODS

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


def filter_for(body: Any, version: str | None = None, granted: str = "read") -> ListFilter | None:
    headers = {} if version is None else {"MCP-Protocol-Version": version}
    if version == "2026-07-28":
        headers["Mcp-Method"] = "tools/list"
    post = parse_post(
        json.dumps(body).encode(), lambda name: [v for k, v in headers.items() if k.lower() == name.lower()]
    )
    return ListFilter.for_post(post, POLICY, frozenset(granted.split()))


def list_filter(body: Any, version: str | None = None, granted: str = "read") -> ListFilter:
    flt = filter_for(body, version, granted)
    assert flt is not None
    return flt


def loads(rewritten: bytes | str | None) -> Any:
    assert rewritten is not None
    return json.loads(rewritten)


def request(rpc_id: Any = 1, method: str = "tools/list", **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": params}


def response(rpc_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "result": result}


def test_no_filter_without_list_requests() -> None:
    """A POST with no list request gets no filter: its answer is relayed as is."""
    assert filter_for(request(method="tools/call", name="get_a")) is None


def test_hidden_and_malformed_items_removed_other_keys_kept() -> None:
    """Items the caller may not use, or without a string name, are dropped; the cursor stays."""
    rewritten = list_filter(request()).rewrite_json(
        json.dumps(response(1, {"tools": TOOLS, "nextCursor": "c2"})).encode()
    )
    assert loads(rewritten) == response(1, {"tools": [{"name": "get_a"}], "nextCursor": "c2"})


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
    assert loads(flt.rewrite_json(json.dumps(public).encode()))["result"] == {
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
    assert loads(flt.rewrite_json(json.dumps(batch).encode())) == [
        response(1, {"tools": [{"name": "get_a"}]}),
        response(2, {"tools": TOOLS}),
    ]


def test_unreadable_list_response_fails_closed() -> None:
    """A list response that cannot be parsed is replaced by an error, never relayed unfiltered."""
    flt = list_filter(request())
    for body in (b'{"jsonrpc":"2.0","id":1,"result":{"tools":[', b'{"id":1,"id":1}'):
        assert loads(flt.rewrite_json(body))["error"]["code"] == -32603
    assert (
        loads(flt.rewrite_json(json.dumps(response(1, ["not", "an", "object"])).encode()))["error"]["code"]
        == -32603
    )


def test_sse_event_data_is_rewritten_the_same_way() -> None:
    """The SSE path gets the same answer as the JSON path."""
    data = json.dumps(response(1, {"tools": TOOLS}))
    assert loads(list_filter(request()).rewrite_event_data(data)) == response(
        1, {"tools": [{"name": "get_a"}]}
    )


# --- filter_list_result ------------------------------------------------------------------------

LIST_CASES = [
    pytest.param(
        "tools/list",
        {
            "tools": [
                {"name": "echo", "inputSchema": {}},
                {"name": "rm_rf"},
                {"name": 7},
                {"title": "no name"},
                "x",
            ],
            "nextCursor": "c2",
            "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "s"}},
            "ttlMs": 1000,
            "cacheScope": "user",
            "resultType": "complete",
        },
        {"echo"},
        [{"name": "echo", "inputSchema": {}}],
        id="tools",
    ),
    pytest.param(
        "prompts/list",
        {"prompts": [{"name": "greet"}, {"name": "secret"}, {"name": None}], "nextCursor": "p"},
        {"greet"},
        [{"name": "greet"}],
        id="prompts",
    ),
    pytest.param(
        "resources/list",
        {
            "resources": [{"uri": "demo://a", "name": "a"}, {"uri": "demo://b", "name": "b"}, {"name": "c"}],
            "ttlMs": 5,
        },
        {"demo://b"},
        [{"uri": "demo://b", "name": "b"}],
        id="resources-by-uri-not-name",
    ),
    pytest.param(
        "resources/templates/list",
        {
            "resourceTemplates": [{"uriTemplate": "file:///{p}", "name": "f"}, {"uriTemplate": ["x"]}],
            "nextCursor": "t",
            "_meta": {},
        },
        {"file:///{p}"},
        [{"uriTemplate": "file:///{p}", "name": "f"}],
        id="templates",
    ),
]


@pytest.mark.parametrize(("method", "result", "visible", "kept"), LIST_CASES)
def test_filter_list_result_removes_hidden_and_malformed_items(
    method: str, result: dict[str, Any], visible: set[str], kept: list[Any]
) -> None:
    """Hidden items and items without a string key field are removed; every other key is kept."""
    original = json.loads(json.dumps(result))
    filtered = filter_list_result(method, result, visible.__contains__)
    list_key = LIST_METHODS[method].result_key
    assert filtered is not None
    assert filtered[list_key] == kept
    assert {k: v for k, v in filtered.items() if k != list_key} == {
        k: v for k, v in result.items() if k != list_key
    }
    assert result == original  # the input is not mutated


@pytest.mark.parametrize("method", list(LIST_METHODS))
def test_filter_list_result_returns_none_when_nothing_is_removed(method: str) -> None:
    """None tells the caller to forward the original bytes unchanged."""
    list_key, name_key = LIST_METHODS[method].result_key, LIST_METHODS[method].item_key
    result = {list_key: [{name_key: "a"}, {name_key: "b"}], "nextCursor": "n"}
    assert filter_list_result(method, result, lambda _name: True) is None
    assert filter_list_result(method, {list_key: [], "nextCursor": "n"}, lambda _name: False) is None
    assert filter_list_result(method, {"nextCursor": "n"}, lambda _name: False) is None


@pytest.mark.parametrize("method", list(LIST_METHODS))
def test_filter_list_result_fails_closed_on_a_non_array(method: str) -> None:
    """A list key holding something other than an array is replaced by an empty array."""
    list_key, name_key = LIST_METHODS[method].result_key, LIST_METHODS[method].item_key
    result = {list_key: {"a": {name_key: "a"}}, "nextCursor": "n"}
    assert filter_list_result(method, result, lambda _name: True) == {list_key: [], "nextCursor": "n"}


def test_filter_list_result_passes_exact_names_to_the_predicate() -> None:
    """The predicate sees each name exactly as listed (no strip, no normalisation)."""
    seen: list[str] = []
    result = {"tools": [{"name": "echo "}, {"name": "\u0435cho"}]}

    def visible(name: str) -> bool:
        seen.append(name)
        return name == "echo"

    assert filter_list_result("tools/list", result, visible) == {"tools": []}
    assert seen == ["echo ", "\u0435cho"]


def test_filter_list_result_unknown_method_is_a_caller_bug() -> None:
    """Filtering a method that is not a list method raises instead of passing the result through."""
    with pytest.raises(KeyError):
        filter_list_result("tools/call", {"content": []}, lambda _name: True)
