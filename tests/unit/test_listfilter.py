"""The list filter: every list-shaped result is filtered by its key's kind; unreadable ones fail closed.

The route lists only what the caller may use now (``list_visibility: usable``), so that hiding by
scope shows; what ``step_up`` (the default) shows is tests/unit/test_policy.py's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_config_text
from gateway.errors import UpstreamError
from gateway.mcp.answers import AnswerInspector
from gateway.mcp.listing import LIST_KEYS, ListFilter, filter_list_result, sdk_id
from gateway.mcp.messages import parse_post
from gateway.mcp.methods import LIST_METHODS

CONFIG = """
public_url: https://gw.example
issuers: [{issuer: https://as.example, algorithms: [RS256], jwks: {discover: true}}]
routes:
  - path: /mcp
    upstream: http://127.0.0.1:9000/mcp
    tools: {"get_*": [read], "set_*": [write]}
    prompts: {"greet": [read], "*": [admin]}
    resources: {"demo://pub/*": [read], "*": [admin]}
    list_visibility: usable
"""
POLICY = parse_config_text(CONFIG, Path("/tmp/c.yaml"), {}).routes[0].policy
TOOLS = [{"name": "get_a"}, {"name": "set_a"}, {"name": 5}, {"title": "no name"}]
VISIBLE_TOOLS = [{"name": "get_a"}]


def list_filter(body: Any, version: str | None = None, granted: str = "read") -> ListFilter:
    headers = {} if version is None else {"MCP-Protocol-Version": version}
    if version == "2026-07-28":
        headers["Mcp-Method"] = "tools/list"
    post = parse_post(
        json.dumps(body).encode(), lambda name: [v for k, v in headers.items() if k.lower() == name.lower()]
    )
    return ListFilter.for_post(post, POLICY, frozenset(granted.split()))


def stream_filter(granted: str = "read") -> ListFilter:
    """The filter of a GET stream: no request of its own to know."""
    return ListFilter(POLICY, frozenset(granted.split()))


def rewrite_json(flt: ListFilter, body: bytes) -> bytes | None:
    return AnswerInspector(flt).json_body(body)


def loads(rewritten: bytes | str | None) -> Any:
    assert rewritten is not None
    return json.loads(rewritten)


def request(rpc_id: Any = 1, method: str = "tools/list", **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": params}


def response(rpc_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "result": result}


def dumps(message: Any) -> bytes:
    return json.dumps(message).encode()


def test_hidden_and_malformed_items_removed_other_keys_kept() -> None:
    """Items the caller may not use, or without a string name, are dropped; the cursor stays."""
    rewritten = rewrite_json(list_filter(request()), dumps(response(1, {"tools": TOOLS, "nextCursor": "c2"})))
    assert loads(rewritten) == response(1, {"tools": VISIBLE_TOOLS, "nextCursor": "c2"})


def test_unchanged_when_everything_is_visible() -> None:
    """Nothing to hide: None, so the original bytes go out untouched."""
    assert rewrite_json(list_filter(request()), dumps(response(1, {"tools": VISIBLE_TOOLS}))) is None


def test_answers_to_other_requests_are_filtered_by_their_shape() -> None:
    """A POST without a list request, or a GET stream: a list-shaped response is still filtered."""
    body = dumps(response(9, {"tools": TOOLS}))
    for flt in (list_filter(request(method="tools/call", name="get_a")), stream_filter()):
        assert loads(rewrite_json(flt, body)) == response(9, {"tools": VISIBLE_TOOLS})


@pytest.mark.parametrize(
    "message",
    [
        response(2, {"tools": TOOLS}),
        response("1", {"tools": TOOLS}),
        response(True, {"tools": TOOLS}),
        response(None, {"tools": TOOLS}),
        {"jsonrpc": "2.0", "result": {"tools": TOOLS}},
        {**response(1, {"tools": TOOLS}), "method": "tools/list"},
        {**response(1, {"tools": TOOLS}), "error": {"code": 1, "message": "x"}},
        {"result": {"tools": TOOLS}},
    ],
    ids=["other-id", "string-id", "true-id", "null-id", "no-id", "with-method", "with-error", "no-jsonrpc"],
)
def test_list_shaped_result_is_filtered_whatever_else_the_message_says(message: dict[str, Any]) -> None:
    """Whatever its id, and with a method or an error beside it, a listed hidden item goes."""
    rewritten = loads(rewrite_json(list_filter(request()), dumps(message)))
    assert rewritten["result"]["tools"] == VISIBLE_TOOLS
    assert {k: v for k, v in rewritten.items() if k != "result"} == {
        k: v for k, v in message.items() if k != "result"
    }


def test_every_list_key_is_filtered_by_the_kind_it_names() -> None:
    """One result holding every list key: each list goes by its own kind and naming field."""
    result = {
        "tools": [{"name": "get_a"}, {"name": "set_a"}],
        "prompts": [{"name": "greet"}, {"name": "secret"}],
        "resources": [{"uri": "demo://pub/a", "name": "a"}, {"uri": "demo://priv/b", "name": "b"}],
        "resourceTemplates": [{"uriTemplate": "demo://pub/{x}"}, {"uriTemplate": "demo://priv/{x}"}],
        "resource_templates": [{"uriTemplate": "demo://pub/{y}"}, {"uri_template": "demo://pub/{y}"}],
        "nextCursor": "n",
    }
    assert set(LIST_KEYS) == set(result) - {"nextCursor"}
    rewritten = loads(rewrite_json(stream_filter(), dumps(response(3, result))))
    assert rewritten["result"] == {
        "tools": [{"name": "get_a"}],
        "prompts": [{"name": "greet"}],
        "resources": [{"uri": "demo://pub/a", "name": "a"}],
        "resourceTemplates": [{"uriTemplate": "demo://pub/{x}"}],
        "resource_templates": [{"uriTemplate": "demo://pub/{y}"}],
        "nextCursor": "n",
    }


def test_list_key_spelled_with_escapes_is_filtered() -> None:
    """A key written as JSON escapes has no literal marker: the \\u pre-check still parses it."""
    body = b'{"jsonrpc":"2.0","id":1,"result":{"\\u0074ools":[{"name":"set_a"},{"name":"get_a"}]}}'
    assert b'"tools"' not in body
    assert loads(rewrite_json(stream_filter(), body))["result"] == {"tools": VISIBLE_TOOLS}


def test_2026_results_are_marked_private() -> None:
    """MCP 2026-07-28: a list result varies by caller, so cacheScope becomes private, any id."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    flt = list_filter(request(_meta=meta), "2026-07-28")
    for rpc_id in (1, 7):
        public = response(rpc_id, {"tools": VISIBLE_TOOLS, "cacheScope": "public", "ttlMs": 60000})
        assert loads(rewrite_json(flt, dumps(public)))["result"] == {
            "tools": VISIBLE_TOOLS,
            "cacheScope": "private",
            "ttlMs": 60000,
        }
    # The answer to the list request itself, even one without items.
    assert loads(rewrite_json(flt, dumps(response(1, {}))))["result"] == {"cacheScope": "private"}
    assert rewrite_json(flt, dumps(response(7, {"content": []}))) is None


def test_other_messages_pass_untouched() -> None:
    """Notifications and requests (list keys in params), errors, results without a list key."""
    flt = list_filter(request())
    for message in (
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"tools": TOOLS}},
        {"jsonrpc": "2.0", "id": 5, "method": "sampling/createMessage", "params": {"tools": TOOLS}},
        {"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": "x", "data": {"tools": TOOLS}}},
        response(2, {"content": [{"type": "text", "text": '"tools"'}], "structuredContent": {"tools": []}}),
        response(2, ["tools"]),
    ):
        assert rewrite_json(flt, dumps(message)) is None


def test_batch_response_filters_every_list_shaped_element() -> None:
    """2025-03-26 batch: list-shaped elements are filtered, any other element is untouched."""
    flt = list_filter([request(1), request(2, "tools/call", name="get_a")], "2025-03-26")
    batch = [response(1, {"tools": TOOLS}), response(2, {"content": []}), response(3, {"tools": TOOLS}), 4]
    assert loads(rewrite_json(flt, dumps(batch))) == [
        response(1, {"tools": VISIBLE_TOOLS}),
        response(2, {"content": []}),
        response(3, {"tools": VISIBLE_TOOLS}),
        4,
    ]


def test_unreadable_answer_fails_closed() -> None:
    """A body that could hold a list but is not strict JSON is a 502; a non-object list result an error."""
    flt = list_filter(request())
    for body in (
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":[',
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":[],"tools":[{"name":"set_a"}]}}',
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"set_a"}]},"x":NaN}',
        b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"set_a"}]}}',
    ):
        with pytest.raises(UpstreamError) as caught:
            rewrite_json(flt, body)
        assert caught.value.reason == "upstream_unreadable_answer" and caught.value.status == 502
    assert loads(rewrite_json(flt, dumps(response(1, ["not", "an", "object"]))))["error"]["code"] == -32603


def test_body_without_a_marker_is_not_parsed() -> None:
    """No list key and no escape in the bytes: relayed as is, without being parsed at all."""
    assert rewrite_json(stream_filter(), b'{"jsonrpc":"2.0","id":1,"result":{"content":[') is None


@pytest.mark.parametrize("rpc_id", [1, "1", " 1 ", "+1", "1.0", 1.0, "0x1", "1e0"])
def test_ids_echoed_as_sdks_read_them_answer_the_list_request(rpc_id: Any) -> None:
    """An id an SDK client coerces to the list request's id counts as its answer (error on garbage)."""
    flt = list_filter(request(1))
    assert loads(rewrite_json(flt, dumps(response(rpc_id, "garbage"))))["error"]["code"] == -32603


@pytest.mark.parametrize("rpc_id", [2, "2", "one", True, None, 1.5, "1.5", "Infinity"])
def test_other_ids_with_a_non_object_result_pass(rpc_id: Any) -> None:
    """A non-object result that answers no list request cannot list anything: untouched."""
    assert rewrite_json(list_filter(request(1)), dumps(response(rpc_id, "garbage"))) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (7, 7),
        ("7", 7),
        ("07", 7),
        (" 7 ", 7),
        ("7.0", 7),
        (7.0, 7),
        ("0x7", 7),
        ("", 0),
        ("abc", "abc"),
        ("7.5", "7.5"),
        (7.5, None),
        (True, None),
        (None, None),
        ([7], None),
    ],
)
def test_sdk_id(value: Any, expected: Any) -> None:
    """Table: ids as the Python (int()) and TypeScript (Number()) SDK clients compare them."""
    assert sdk_id(value) == expected


def test_sse_event_data_is_rewritten_the_same_way() -> None:
    """The SSE path gets the same answer as the JSON path, an array of messages too."""
    inspector = AnswerInspector(stream_filter())
    data = json.dumps(response(1, {"tools": TOOLS}))
    assert loads(inspector.event_data(data)) == response(1, {"tools": VISIBLE_TOOLS})
    batch = json.dumps([response(1, {"tools": TOOLS})])
    assert loads(inspector.event_data(batch)) == [response(1, {"tools": VISIBLE_TOOLS})]


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
