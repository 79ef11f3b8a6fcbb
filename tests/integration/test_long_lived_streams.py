"""Long-lived server-to-client streams cross the gateway unbuffered and outlive its timeouts.

The route is configured with ``response_timeout_s: 1``. That bound is meant for "no response
headers yet"; it must not cut a stream that has started and is merely quiet. Each stream below
is left idle for longer than that (``IDLE_S``), then the upstream pushes a notification, which
must reach the official SDK client within ``DELIVERY_S`` over the very same HTTP request:

- 2026-07-28: the ``subscriptions/listen`` POST (its response is the event stream);
- 2025: the session's standalone GET SSE stream.

A gateway that buffered the stream would deliver nothing (not even the listen acknowledgment)
until the upstream ends it; a gateway with a ~1 s read timeout would end it while idle. The
2025 client silently re-opens a dropped GET stream, so the tests also count the streams the
upstream saw: exactly one, still open. The notifications come from the fixture's ``notify`` tool,
called on a separate request of the same client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import mcp_types
from mcp.client.subscriptions import ResourceUpdated, ToolsListChanged

from tests.conftest import Gateway, GatewayFactory, Upstream, single_route_config
from tests.support.issuer import TestIssuer
from tests.support.mcp_client import session_client
from tests.support.processes import record_header, record_json
from tests.support.upstream_server import COUNTER_URI

RESOURCE = "http://127.0.0.1:8080/mcp"
RESPONSE_TIMEOUT_S = 1
IDLE_S = 2.5  # quiet time on an open stream, well past the route's response timeout
DELIVERY_S = 2.0  # a pushed notification must cross the gateway within this


def text_of(result: object) -> str:
    return result.content[0].text  # type: ignore[attr-defined,no-any-return]


async def start_short_timeout_gateway(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> tuple[Gateway, dict[str, str]]:
    gateway = await start_gateway_with(
        single_route_config(issuer, upstream.mcp_url, response_timeout_s=RESPONSE_TIMEOUT_S)
    )
    assert gateway.config.routes[0].response_timeout_s == RESPONSE_TIMEOUT_S
    return gateway, {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"}


async def eventually(check: Callable[[], Awaitable[Any]], what: str, *, within: float) -> Any:
    """Poll `check` until it returns something truthy, and return that; fail after `within` seconds."""
    try:
        async with asyncio.timeout(within):
            while True:
                if value := await check():
                    return value
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"no {what} within {within}s") from None


def disconnected_ids(records: list[dict[str, Any]]) -> set[int]:
    return {record["id"] for record in records if record.get("event") == "disconnect"}


def assert_still_streaming(
    records: list[dict[str, Any]], matching: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Exactly one upstream request matches, it was answered 200 and it is still open."""
    streams = [record for record in records if "event" not in record and matching(record)]
    assert len(streams) == 1, f"expected one long-lived stream upstream, saw {len(streams)}: {streams}"
    stream = streams[0]
    assert stream["status"] == 200, stream
    assert not stream["completed"], "the upstream already finished the stream"
    assert stream["id"] not in disconnected_ids(records), "the stream was cut between gateway and upstream"
    return stream


def is_listen(record: dict[str, Any]) -> bool:
    return bool(record["method"] == "POST") and record_header(record, "mcp-method") == "subscriptions/listen"


def is_get(record: dict[str, Any]) -> bool:
    return bool(record["method"] == "GET")


async def test_2026_listen_stream_stays_open_past_response_timeout_and_delivers_events(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """A 2026-07-28 `subscriptions/listen` stream idles past the timeout, then gets two events."""
    gateway, headers = await start_short_timeout_gateway(issuer, upstream, start_gateway_with)
    # read_timeout bounds the wait for the listen acknowledgment: a buffering gateway never
    # delivers it, so entering `listen` would raise TimeoutError.
    async with session_client(gateway.route_url(), headers, era="2026", read_timeout_seconds=5) as client:
        async with client.listen(tools_list_changed=True, resource_subscriptions=[COUNTER_URI]) as sub:
            assert sub.honored.tools_list_changed is True
            assert sub.honored.resource_subscriptions == [COUNTER_URI]

            await asyncio.sleep(IDLE_S)
            listen = assert_still_streaming(await upstream.records(), is_listen)

            result = await client.call_tool("notify", {"kind": "tools"})
            assert text_of(result) == "notified tools"
            event = await asyncio.wait_for(anext(sub), DELIVERY_S)
            assert event == ToolsListChanged()

            await asyncio.sleep(1.5)  # quiet again, past the timeout once more
            result = await client.call_tool("notify", {"kind": "resource", "uri": COUNTER_URI})
            assert text_of(result) == "notified resource"
            event = await asyncio.wait_for(anext(sub), DELIVERY_S)
            assert event == ResourceUpdated(uri=COUNTER_URI)

            # Both events came over the one listen request the client opened.
            assert assert_still_streaming(await upstream.records(), is_listen)["id"] == listen["id"]

        # Leaving `listen` closes the stream; the gateway must pass that on (2026-07-28: closing
        # the stream is cancellation), so the upstream frees its subscription.
        async def upstream_saw_close() -> bool:
            return listen["id"] in disconnected_ids(await upstream.records())

        await eventually(upstream_saw_close, "close of the upstream listen stream", within=2)

    body = record_json(listen)
    assert body["method"] == "subscriptions/listen"
    assert body["params"]["notifications"] == {
        "toolsListChanged": True,
        "resourceSubscriptions": [COUNTER_URI],
    }
    assert record_header(listen, "mcp-protocol-version") == "2026-07-28"
    assert "text/event-stream" in (record_header(listen, "accept") or "")
    assert record_header(listen, "authorization") is None, "the client's token reached the upstream"
    requests = await upstream.requests()
    assert all(record_header(record, "authorization") is None for record in requests)


async def test_2025_standalone_get_stream_stays_open_past_response_timeout_and_delivers_events(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """The 2025 session's GET SSE stream idles past the timeout, then carries two notifications."""
    gateway, headers = await start_short_timeout_gateway(issuer, upstream, start_gateway_with)
    received: list[mcp_types.ServerNotification] = []
    failures: list[Exception] = []

    async def on_message(message: mcp_types.ServerNotification | Exception) -> None:
        (failures if isinstance(message, Exception) else received).append(message)  # type: ignore[arg-type]

    def received_of(kind: type[Any]) -> list[Any]:
        return [note for note in received if isinstance(note, kind)]

    async def arrived(kind: type[Any]) -> list[Any]:
        return received_of(kind)

    async with session_client(gateway.route_url(), headers, era="2025", message_handler=on_message) as client:
        # The SDK opens the GET stream in the background once the handshake is done.
        async def get_stream_open() -> bool:
            return any(is_get(record) and record["status"] == 200 for record in await upstream.requests())

        await eventually(get_stream_open, "GET stream at the upstream", within=2)

        await asyncio.sleep(IDLE_S)
        stream = assert_still_streaming(await upstream.records(), is_get)

        result = await client.call_tool("notify", {"kind": "tools"})
        assert text_of(result) == "notified tools"
        await eventually(
            lambda: arrived(mcp_types.ToolListChangedNotification), "tools/list_changed", within=DELIVERY_S
        )

        await asyncio.sleep(1.5)
        result = await client.call_tool("notify", {"kind": "resource", "uri": COUNTER_URI})
        assert text_of(result) == "notified resource"
        updates = await eventually(
            lambda: arrived(mcp_types.ResourceUpdatedNotification), "resources/updated", within=DELIVERY_S
        )
        assert [str(note.params.uri) for note in updates] == [COUNTER_URI]

        # Both arrived on the first and only GET stream: none was dropped and re-opened.
        assert assert_still_streaming(await upstream.records(), is_get)["id"] == stream["id"]

    assert len(received_of(mcp_types.ToolListChangedNotification)) == 1
    assert not failures, failures
    assert record_header(stream, "mcp-session-id"), "the GET stream was not tied to the session"
    assert "text/event-stream" in (record_header(stream, "accept") or "")
    assert record_header(stream, "authorization") is None, "the client's token reached the upstream"


async def test_auto_era_probes_server_discover_through_gateway(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """The SDK's default mode probes `server/discover` via the gateway, adopts 2026-07-28 and works."""
    gateway, headers = await start_short_timeout_gateway(issuer, upstream, start_gateway_with)
    async with session_client(gateway.route_url(), headers, era="auto") as client:
        assert client.protocol_version == "2026-07-28"
        tools = await client.list_tools()
        assert {"echo", "notify"} <= {tool.name for tool in tools.tools}
        result = await client.call_tool("echo", {"text": "auto through the gateway"})
        assert text_of(result) == "auto through the gateway"

    requests = await upstream.requests()
    methods = [record_json(record)["method"] for record in requests]
    assert methods[0] == "server/discover", methods
    discover = requests[0]
    assert discover["status"] == 200 and discover["completed"]
    assert record_header(discover, "mcp-method") == "server/discover"
    assert record_header(discover, "mcp-protocol-version") == "2026-07-28"
    # Discovery succeeded through the gateway, so the client never fell back to the handshake.
    assert "initialize" not in methods
    assert {"tools/list", "tools/call"} <= set(methods)
    assert all(record_header(record, "authorization") is None for record in requests)
