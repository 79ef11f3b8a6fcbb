"""What the upstream answers reaches the client only as the gateway read it: hidden list items never.

A scripted hostile upstream (tests/support/canned_upstream.py) sends what no SDK server would:
list results under other ids, in batches and escaped keys, compressed or oddly typed bodies,
redirects, 401 challenges, cookies and CORS headers. Each case checks the status the client gets
and that the hidden tool's name is nowhere in what it received. A real resumable SDK upstream
(the conformance fixture, with its in-memory event store) shows the same for a ``tools/list``
answer replayed on a GET stream after ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from tests.conftest import Gateway, GatewayFactory, LogSink, single_route_config, spawn_upstream
from tests.integration.test_authentication import MCP_HEADERS
from tests.support.canned_upstream import Canned, CannedUpstream, canned_upstream
from tests.support.issuer import TestIssuer
from tests.support.sse import parse_sse_events

RESOURCE = "http://127.0.0.1:8080/mcp"
HIDDEN = "secret_tool"
JSON_TYPE = ("Content-Type", "application/json")
SSE_TYPE = ("Content-Type", "text/event-stream")
PLAIN_TYPE = ("Content-Type", "text/plain")
TOOLS = [{"name": "visible", "inputSchema": {}}, {"name": HIDDEN, "inputSchema": {}}]
CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "visible", "arguments": {}}}
LIST = {"jsonrpc": "2.0", "id": 7, "method": "tools/list"}


def listing(rpc_id: Any = 1, **extra: Any) -> bytes:
    """A tools/list-shaped response showing the hidden tool."""
    return json.dumps({"jsonrpc": "2.0", "id": rpc_id, "result": {"tools": TOOLS, **extra}}).encode()


def event(data: bytes, *, fields: bytes = b"event: message\n") -> bytes:
    return fields + b"data: " + data + b"\n\n"


async def start(
    start_gateway_with: GatewayFactory, issuer: TestIssuer, upstream: CannedUpstream
) -> tuple[Gateway, dict[str, str]]:
    # Lists show only what the caller may use: the hidden tool needs a scope the caller lacks.
    config = single_route_config(
        issuer, upstream.url, tools={"visible": [], "secret*": ["admin"]}, list_visibility="usable"
    )
    gateway = await start_gateway_with(config)
    return gateway, {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"}


async def call(
    gateway: Gateway,
    auth: dict[str, str],
    body: Any = CALL,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    query: str = "",
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    sent = {**MCP_HEADERS, **auth, **(headers or {})}
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method,
            gateway.route_url() + query,
            json=body if method == "POST" else None,
            headers=sent,
            allow_redirects=False,  # what the client is sent, not where it would go next
        ) as response,
    ):
        return response.status, response.headers, await response.read()


def assert_hidden_gone(raw: bytes, *, visible: bool = True) -> None:
    assert HIDDEN.encode() not in raw, raw[:300]
    if visible:
        assert b"visible" in raw, raw[:300]  # the answer itself did arrive


# --- list-shaped answers, however they come -------------------------------------------------------

ESCAPED_LISTING = listing(1).replace(b'"tools"', b'"\\u0074ools"')
SPLIT_EVENT = event(listing("1"))


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(Canned(200, [JSON_TYPE], listing(1)), id="json-answer-to-a-call"),
        pytest.param(Canned(200, [JSON_TYPE], listing("1")), id="json-id-as-string"),
        pytest.param(Canned(200, [JSON_TYPE], b"[" + listing(2) + b"]"), id="json-batch-other-id"),
        pytest.param(Canned(200, [JSON_TYPE], ESCAPED_LISTING), id="json-escaped-key"),
        pytest.param(
            Canned(200, [("Content-Type", "application/json; charset=utf-8")], listing(1)), id="json-charset"
        ),
        pytest.param(Canned(200, [SSE_TYPE], event(listing(1))), id="sse-answer-to-a-call"),
        pytest.param(Canned(200, [SSE_TYPE], event(listing(99))), id="sse-any-id"),
        pytest.param(Canned(200, [SSE_TYPE], event(b"[" + listing(1) + b"]")), id="sse-array-event"),
        pytest.param(Canned(200, [SSE_TYPE], (SPLIT_EVENT[:30], SPLIT_EVENT[30:])), id="sse-chunked-split"),
        pytest.param(Canned(200, [SSE_TYPE], event(ESCAPED_LISTING)), id="sse-escaped-key"),
        pytest.param(Canned(200, [SSE_TYPE], b"\xef\xbb\xbf" + event(listing(1))), id="sse-bom"),
        pytest.param(Canned(500, [JSON_TYPE], listing(1)), id="json-error-status"),
    ],
)
async def test_list_shaped_answers_are_filtered_whatever_request_they_answer(
    answer: Canned, issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """A tools/call answered with a tools list (any id, batch, escapes, SSE array): the hidden tool goes."""
    async with canned_upstream(answer) as upstream:
        gateway, auth = await start(start_gateway_with, issuer, upstream)
        status, _, raw = await call(gateway, auth)
    assert status == answer.status
    assert_hidden_gone(raw)
    assert len(upstream.requests) == 1


async def test_list_answer_with_a_string_id_is_marked_private_in_2026(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """MCP 2026-07-28: the answer to tools/list 7 echoed as "7" is filtered and cacheScope private."""
    answer = Canned(200, [JSON_TYPE], listing("7", cacheScope="public", ttlMs=1000))
    async with canned_upstream(answer) as upstream:
        gateway, auth = await start(start_gateway_with, issuer, upstream)
        meta = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        modern = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list"}
        status, _, raw = await call(gateway, auth, {**LIST, "params": {"_meta": meta}}, headers=modern)
    assert status == 200
    assert_hidden_gone(raw)
    assert json.loads(raw)["result"]["cacheScope"] == "private"


async def test_get_stream_list_shaped_events_are_filtered(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """A GET stream (the gateway knows no request there) carrying a tools list: filtered by shape."""
    stream = (
        b"id: 1\ndata:\n\n"
        + event(listing(3), fields=b"id: 2\nevent: message\n")
        + event(b'{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}')
    )
    async with canned_upstream(Canned(200, [SSE_TYPE], stream)) as upstream:
        gateway, auth = await start(start_gateway_with, issuer, upstream)
        status, headers, raw = await call(
            gateway, auth, method="GET", headers={"Accept": "text/event-stream"}
        )
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    assert_hidden_gone(raw)
    events = parse_sse_events(raw)
    ids = [e.get("id") for e in events]
    assert ids[2] is None and ids[0] != ids[1]  # event ids sealed to the caller, one per upstream id
    assert all(event_id and event_id.startswith("ephemeral.") for event_id in ids[:2])
    assert upstream.requests[0].method == "GET"


async def test_sse_event_some_readers_split_differently_is_replaced(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """A data line hidden behind U+2028 in an id line (read by splitlines() SSE readers): error event."""
    sneaky = "id: 5\u2028data: ".encode() + listing(1) + b"\n\n"
    async with canned_upstream(Canned(200, [SSE_TYPE], sneaky)) as upstream:
        gateway, auth = await start(start_gateway_with, issuer, upstream)
        status, _, raw = await call(gateway, auth)
    assert status == 200
    assert_hidden_gone(raw, visible=False)
    [only] = parse_sse_events(raw)
    assert json.loads(only["data"])["error"]["code"] == -32603


@pytest.mark.parametrize("ending", [b"\r", b"\n", b""])
async def test_sse_stream_ending_inside_an_event_never_shows_it(
    ending: bytes, issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """A last event without its blank line (the Python SDK dispatches one ended by CR): dropped."""
    stream = event(b'{"jsonrpc":"2.0","method":"notifications/message","params":{}}') + b"data: " + listing(1)
    async with canned_upstream(Canned(200, [SSE_TYPE], stream + ending)) as upstream:
        gateway, auth = await start(start_gateway_with, issuer, upstream)
        status, _, raw = await call(gateway, auth)
    assert status == 200
    assert_hidden_gone(raw, visible=False)
    assert raw.startswith(b"event: message\ndata: ")


# --- answers the client must not see at all -------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        pytest.param(
            Canned(200, [JSON_TYPE, ("Content-Encoding", "gzip")], gzip.compress(listing(1))),
            "upstream_content_encoding",
            id="gzip-json",
        ),
        pytest.param(
            Canned(200, [SSE_TYPE, ("Content-Encoding", "gzip")], (gzip.compress(event(listing(1))),)),
            "upstream_content_encoding",
            id="gzip-sse-chunked",
        ),
        pytest.param(
            Canned(200, [SSE_TYPE, ("Content-Encoding", "deflate")], b"x\x9c", close_delimited=True),
            "upstream_content_encoding",
            id="deflate-close-delimited",
        ),
        pytest.param(
            Canned(
                200, [SSE_TYPE, ("Transfer-Encoding", "gzip, chunked")], (gzip.compress(event(listing(1))),)
            ),
            "upstream_content_encoding",
            id="gzip-transfer-coding",
        ),
        pytest.param(
            Canned(200, [SSE_TYPE, ("Transfer-Encoding", "chunked, identity")], (event(listing(1)),)),
            "upstream_content_encoding",
            id="chunked-not-last",
        ),
        pytest.param(
            Canned(
                200,
                [SSE_TYPE, ("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
                (event(listing(1)),),
            ),
            "upstream_content_encoding",
            id="chunked-twice",
        ),
        pytest.param(
            Canned(200, [("Content-Type", "application/json-rpc")], listing(1)),
            "upstream_content_type",
            id="json-rpc-type",
        ),
        pytest.param(Canned(200, [PLAIN_TYPE], listing(1)), "upstream_content_type", id="plain"),
        pytest.param(Canned(200, [], listing(1)), "upstream_content_type", id="no-type"),
        pytest.param(Canned(200, [], (listing(1),)), "upstream_content_type", id="no-type-chunked"),
        pytest.param(
            Canned(200, [("Content-Type", "text/plain"), JSON_TYPE], listing(1)),
            "upstream_content_type",
            id="two-types",
        ),
        pytest.param(
            Canned(200, [("Content-Type", "application/json; q=text/event-stream")], listing(1)),
            "upstream_content_type",
            id="names-both",
        ),
        pytest.param(
            Canned(200, [("Content-Type", "text/event-stream; charset=utf-16")], event(listing(1))),
            "upstream_content_type",
            id="sse-utf16-charset",
        ),
        pytest.param(
            Canned(200, [JSON_TYPE], listing(1)[:-1] + b',"result":{"tools":[]}}'),
            "upstream_unreadable_answer",
            id="duplicate-result-key",
        ),
        pytest.param(Canned(200, [JSON_TYPE], listing(1)[:-3]), "upstream_unreadable_answer", id="truncated"),
        pytest.param(
            Canned(302, [("Location", "http://127.0.0.1:1/elsewhere"), JSON_TYPE], listing(1)),
            "upstream_redirect",
            id="302",
        ),
        pytest.param(Canned(307, [("Location", "/mcp2")]), "upstream_redirect", id="307"),
        pytest.param(Canned(308, [("Location", "/mcp2")]), "upstream_redirect", id="308"),
        pytest.param(
            Canned(
                401,
                [("WWW-Authenticate", 'Bearer resource_metadata="http://evil.example/prm"'), JSON_TYPE],
                b'{"error":"invalid_token"}',
            ),
            "upstream_auth_refused",
            id="401-challenge",
        ),
        pytest.param(
            Canned(403, [("WWW-Authenticate", 'Bearer error="insufficient_scope", scope="admin"')]),
            "upstream_auth_refused",
            id="403-step-up",
        ),
    ],
)
async def test_answers_that_cannot_be_inspected_or_relayed_are_502(
    answer: Canned, reason: str, issuer: TestIssuer, start_gateway_with: GatewayFactory, gateway_logs: LogSink
) -> None:
    """Compressed, oddly typed, unreadable, redirected or auth-refused answers: 502 JSON-RPC error."""
    async with canned_upstream(answer) as upstream:
        gateway, auth = await start(start_gateway_with, issuer, upstream)
        status, headers, raw = await call(gateway, auth)
    assert status == 502
    assert json.loads(raw) == {
        "jsonrpc": "2.0",
        "id": 1,
        "error": {"code": -32000, "message": "Upstream MCP server unavailable"},
    }
    assert "WWW-Authenticate" not in headers and "Location" not in headers
    assert "Content-Encoding" not in headers
    assert len(upstream.requests) == 1  # a redirect is not followed
    lines = [e for e in gateway_logs.events() if e.get("event") == "request" and e.get("status") == 502]
    assert lines and lines[-1]["reason"] == reason


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(Canned(202, []), id="202-no-body"),
        pytest.param(Canned(202, [("Content-Encoding", "gzip")]), id="202-encoding-no-body"),
        pytest.param(Canned(200, [("Content-Type", "text/plain")], ()), id="200-empty-chunked"),
        pytest.param(Canned(404, [("Content-Type", "text/plain")], b"Session not found"), id="404-text"),
        pytest.param(Canned(405, [("Allow", "POST")], b"Method Not Allowed"), id="405-allow"),
        pytest.param(Canned(400, [("Content-Type", "application/jsonl")], listing(1)), id="400-other-json"),
    ],
)
async def test_bodiless_and_error_answers_pass(
    answer: Canned, issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """Empty 2xx answers and error bodies of other types (never read as results) are relayed as sent."""
    async with canned_upstream(answer) as upstream:
        gateway, auth = await start(start_gateway_with, issuer, upstream)
        status, headers, raw = await call(gateway, auth)
    assert status == answer.status
    assert raw == (answer.body if isinstance(answer.body, bytes) else b"")
    if answer.status == 405:
        assert headers["Allow"] == "POST"


# --- response headers by allowlist ----------------------------------------------------------------

UPSTREAM_HEADERS = [
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-cache"),
    ("Mcp-Session-Id", "upstream-session-1"),
    ("MCP-Protocol-Version", "2025-11-25"),
    ("Retry-After", "7"),
    ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ("tracestate", "vendor=1"),
    ("Set-Cookie", "sid=upstream; Path=/"),
    ("WWW-Authenticate", 'Bearer resource_metadata="http://evil.example/prm"'),
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Credentials", "true"),
    ("Location", "http://evil.example/"),
    ("Content-Location", "http://evil.example/"),
    ("Server", "upstream-banner/1.0"),
    ("X-Powered-By", "Express"),
    ("X-Request-Id", "from-upstream"),
    ("Link", '<http://evil.example/prm>; rel="oauth-protected-resource"'),
    ("Strict-Transport-Security", "max-age=1"),
    ("Content-Encoding", "identity"),
    ("X-Anything", "else"),
]
RELAYED = (
    "Content-Type",
    "Cache-Control",
    "MCP-Protocol-Version",
    "Retry-After",
    "traceparent",
    "tracestate",
)
EMPTY_RESULT = b'{"jsonrpc":"2.0","id":1,"result":{}}'


async def test_response_headers_reach_the_client_by_allowlist(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """Content type, caching, MCP, Retry-After and trace headers pass; cookies, challenges, CORS… never."""
    async with canned_upstream(Canned(200, UPSTREAM_HEADERS, EMPTY_RESULT)) as upstream:
        gateway, auth = await start(start_gateway_with, issuer, upstream)
        status, headers, _ = await call(gateway, auth, headers={"Origin": "http://127.0.0.1:8080"})
    assert status == 200
    for name in RELAYED:
        assert headers.getall(name) == [value for key, value in UPSTREAM_HEADERS if key == name], name
    for name in (
        {key for key, _ in UPSTREAM_HEADERS} - set(RELAYED) - {"Mcp-Session-Id", "X-Request-Id", "Server"}
    ):
        if name != "Access-Control-Allow-Origin":
            assert name not in headers, name
    # The gateway's own: its CORS answer for the allowed origin, its request id, its server.
    assert headers.getall("Access-Control-Allow-Origin") == ["http://127.0.0.1:8080"]
    assert headers["X-Request-Id"] != "from-upstream"
    assert "upstream-banner" not in headers.get("Server", "")
    # Sealed by the gateway: never the upstream's own session id.
    assert headers.getall("Mcp-Session-Id") and headers["Mcp-Session-Id"] != "upstream-session-1"


@pytest.mark.parametrize(
    ("upstream_value", "client_value"),
    [
        ("no-store", "no-store"),
        ("public, max-age=60", "private"),
        ("max-age=60, s-maxage=600", "private"),
        ("max-age=60, must-revalidate", "private"),
    ],
)
async def test_cache_control_never_lets_a_shared_cache_share_an_answer(
    upstream_value: str, client_value: str, issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """RFC 9111 §3.5: public, s-maxage or must-revalidate on an authenticated answer become private."""
    answer = Canned(200, [JSON_TYPE, ("Cache-Control", upstream_value)], EMPTY_RESULT)
    async with canned_upstream(answer) as upstream:
        gateway, auth = await start(start_gateway_with, issuer, upstream)
        _, headers, _ = await call(gateway, auth)
    assert headers.getall("Cache-Control") == [client_value]


@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
async def test_client_query_string_is_never_forwarded(
    method: str, issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """MCP endpoints take no query: ?x=1 stays at the gateway, whatever the method."""
    async with canned_upstream(Canned(202)) as upstream:
        gateway, auth = await start(start_gateway_with, issuer, upstream)
        status, _, _ = await call(gateway, auth, method=method, query="?debug=1&x=%2Fetc")
    assert status == 202
    assert [r.target for r in upstream.requests] == ["/mcp"]


# --- a real resumable SDK upstream: the replay after Last-Event-ID ---------------------------------

GATED_TOOL = "test_audio_content"  # the conformance fixture's tool this token may not use
CLIENT_INFO = {"name": "t", "version": "0"}


@pytest.fixture(scope="module")
def resumable_upstream() -> Iterator[str]:
    """The conformance fixture server (official SDK, in-memory event store): its base URL."""
    yield from spawn_upstream(module="tests.conformance.fixture_server")


@pytest.fixture
async def replay_gateway(
    resumable_upstream: str, issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> AsyncIterator[tuple[Gateway, dict[str, str]]]:
    config = single_route_config(
        issuer, resumable_upstream + "/mcp", tools={GATED_TOOL: ["audio"], "*": []}, list_visibility="usable"
    )
    gateway = await start_gateway_with(config)
    yield gateway, {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"}


async def test_tools_list_replayed_after_last_event_id_is_filtered(
    replay_gateway: tuple[Gateway, dict[str, str]],
) -> None:
    """GET + Last-Event-ID replays a tools/list answer from the SDK's event store: still filtered."""
    gateway, auth = replay_gateway
    version = {"MCP-Protocol-Version": "2025-11-25"}
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": CLIENT_INFO},
    }
    async with aiohttp.ClientSession() as http:
        headers = {**MCP_HEADERS, **auth}
        async with http.post(gateway.route_url(), json=initialize, headers=headers) as response:
            assert response.status == 200
            session = {**auth, **version, "Mcp-Session-Id": response.headers["Mcp-Session-Id"]}
            await response.read()
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        async with http.post(
            gateway.route_url(), json=initialized, headers={**MCP_HEADERS, **session}
        ) as response:
            assert response.status == 202
        tools_list = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        headers = {**MCP_HEADERS, **session}
        async with http.post(gateway.route_url(), json=tools_list, headers=headers) as response:
            assert response.status == 200
            posted = parse_sse_events(await response.read())
        priming = next(e for e in posted if e.get("id") and not e.get("data"))
        answered = next(e for e in posted if e.get("data"))
        assert GATED_TOOL not in answered["data"] and "test_simple_text" in answered["data"]

        replay = {**session, "Accept": "text/event-stream", "Last-Event-ID": priming["id"]}
        async with http.get(gateway.route_url(), headers=replay) as response:
            assert response.status == 200
            replayed = b""
            async with asyncio.timeout(10):  # the stream stays open after the replay
                while not replayed.endswith(b"\r\n\r\n") or b'"result"' not in replayed:
                    replayed += await response.content.readany()
    [message] = [json.loads(e["data"]) for e in parse_sse_events(replayed) if e.get("data")]
    names = {tool["name"] for tool in message["result"]["tools"]}
    assert "test_simple_text" in names  # the replay did carry the list
    assert GATED_TOOL not in names


async def test_another_user_cannot_resume_from_an_event_id(
    resumable_upstream: str, issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """Event ids reach the client sealed to it: Bob, on his own valid session, sending Alice's
    event ids (as she saw them, or the upstream's raw counters) gets 404 and none of her events;
    Alice resumes from hers."""
    gateway = await start_gateway_with(single_route_config(issuer, resumable_upstream + "/mcp"))
    version = {"MCP-Protocol-Version": "2025-11-25"}

    async def session_of(http: aiohttp.ClientSession, subject: str) -> dict[str, str]:
        auth = {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE, subject=subject)}"}
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": CLIENT_INFO},
        }
        async with http.post(
            gateway.route_url(), json=initialize, headers={**MCP_HEADERS, **auth}
        ) as response:
            session = {**auth, **version, "Mcp-Session-Id": response.headers["Mcp-Session-Id"]}
            await response.read()
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        async with http.post(
            gateway.route_url(), json=initialized, headers={**MCP_HEADERS, **session}
        ) as response:
            assert response.status == 202
        return session

    secret_call = {
        "jsonrpc": "2.0",
        "id": 5,
        "method": "prompts/get",
        "params": {"name": "test_prompt_with_arguments", "arguments": {"arg1": "ALICE-SECRET", "arg2": "x"}},
    }
    async with aiohttp.ClientSession() as http:
        alice = await session_of(http, "alice")
        async with http.post(
            gateway.route_url(), json=secret_call, headers={**MCP_HEADERS, **alice}
        ) as response:
            events = parse_sse_events(await response.read())
        sealed_ids = [event["id"] for event in events if event.get("id")]
        assert sealed_ids and all(event_id.startswith("ephemeral.") for event_id in sealed_ids)
        bob = await session_of(http, "bob")
        for event_id in [*sealed_ids, *map(str, range(0, 8))]:
            headers = {**bob, "Accept": "text/event-stream", "Last-Event-ID": event_id}
            async with http.get(gateway.route_url(), headers=headers) as response:
                body = await response.read()
                assert response.status == 404, event_id
                assert b"ALICE-SECRET" not in body and b"Session not found" in body
        headers = {**alice, "Accept": "text/event-stream", "Last-Event-ID": sealed_ids[0]}
        async with http.get(gateway.route_url(), headers=headers) as response:
            assert response.status == 200
            replayed = b""
            async with asyncio.timeout(10):
                while b"ALICE-SECRET" not in replayed:
                    replayed += await response.content.readany()
