"""The SDK upstream fixture and client helpers work directly, without the gateway in between."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp_types import TextContent

from tests.support.mcp_client import Era, ProgressLog, session_client
from tests.support.processes import (
    clear_upstream_records,
    record_header,
    record_json,
    start_upstream,
    upstream_records,
)

TOKEN = "Bearer test-token"
TOOLS = {"echo", "add", "whoami", "slow_stream", "sleep"}
EXPECTED_VERSION = {"2025": "2025-11-25", "2026": "2026-07-28", "auto": "2026-07-28"}


def text_of(result: Any) -> str:
    content = result.content[0]
    assert isinstance(content, TextContent)
    return content.text


async def assert_basic_calls(client: Client) -> None:
    listed = await client.list_tools()
    assert TOOLS <= {tool.name for tool in listed.tools}
    assert text_of(await client.call_tool("echo", {"text": "hello"})) == "hello"
    assert text_of(await client.call_tool("add", {"a": 2, "b": 3})) == "5"


@pytest.mark.parametrize("era", ["2025", "2026", "auto"])
async def test_list_tools_and_echo(era: Era) -> None:
    """Each era negotiates its protocol version, lists the fixture's tools and calls echo and add."""
    async with (
        start_upstream() as (base, _),
        session_client(f"{base}/mcp", {"Authorization": TOKEN}, era=era) as client,
    ):
        assert client.protocol_version == EXPECTED_VERSION[era]
        await assert_basic_calls(client)


@pytest.mark.parametrize("mode", ["--json-response", "--stateless"])
@pytest.mark.parametrize("era", ["2025", "2026"])
async def test_server_modes(era: Era, mode: str) -> None:
    """Echo and add work against the fixture in JSON-response and stateless modes, in both eras."""
    async with (
        start_upstream(mode) as (base, _),
        session_client(f"{base}/mcp", {"Authorization": TOKEN}, era=era) as client,
    ):
        await assert_basic_calls(client)


@pytest.mark.parametrize("era", ["2025", "2026"])
async def test_slow_stream_progress_arrives_in_order_while_the_tool_runs(era: Era) -> None:
    """slow_stream's 200 progress notifications arrive in order, well before its result."""
    progress = ProgressLog()
    async with (
        start_upstream() as (base, _),
        session_client(f"{base}/mcp", {"Authorization": TOKEN}, era=era) as client,
    ):
        result = await client.call_tool(
            "slow_stream", {"count": 200, "delay_ms": 5}, progress_callback=progress
        )
        returned_at = time.monotonic()
    assert text_of(result) == "done 200"
    assert progress.values == [float(i) for i in range(1, 201)]
    assert progress.events[0] == (1.0, 200.0, "step 1")
    # 200 x 5 ms of server time: streamed progress starts long before the result.
    assert returned_at - progress.arrival_times[0] > 0.5


async def test_records_show_2025_session_traffic() -> None:
    """The recorder shows a 2025 session's requests in order, with one session id and their headers."""
    async with start_upstream() as (base, _):
        await clear_upstream_records(base)
        async with session_client(f"{base}/mcp", {"Authorization": TOKEN}, era="2025") as client:
            await client.call_tool("echo", {"text": "recorded"})
        records = await upstream_records(base)
    port = base.rsplit(":", 1)[1]
    by_method = [(r["method"], record_json(r).get("method") if r["body"] else None) for r in records]
    assert by_method[:3] == [("POST", "initialize"), ("POST", "notifications/initialized"), ("GET", None)]
    assert ("POST", "tools/call") in by_method
    assert by_method[-1] == ("DELETE", None)
    for record in records:
        assert record["path"] == "/mcp"
        assert record_header(record, "authorization") == TOKEN
        assert record_header(record, "host") == f"127.0.0.1:{port}"
    initialize, *rest = records
    assert record_header(initialize, "mcp-session-id") is None
    assert record_header(initialize, "mcp-protocol-version") is None
    session_ids = {record_header(r, "mcp-session-id") for r in rest}
    assert len(session_ids) == 1 and None not in session_ids
    call = next(r for r in records if r["body"] and record_json(r).get("method") == "tools/call")
    assert record_header(call, "mcp-protocol-version") == "2025-11-25"
    assert record_header(call, "accept") == "application/json, text/event-stream"
    assert record_header(call, "content-type") == "application/json"
    assert record_json(call)["params"] == {"name": "echo", "arguments": {"text": "recorded"}}
    assert call["status"] == 200 and call["completed"]


async def test_records_show_2026_stateless_traffic() -> None:
    """The recorder shows 2026 stateless POSTs with MCP headers and `_meta`, and no session id."""
    async with start_upstream() as (base, _):
        async with session_client(f"{base}/mcp", {"Authorization": TOKEN}, era="auto") as client:
            await client.call_tool("echo", {"text": "recorded"})
        records = await upstream_records(base)
    methods = [record_json(r)["method"] for r in records]
    assert methods == ["server/discover", "tools/call", "tools/list"]  # the SDK lists after a first call
    for record in records:
        assert record["method"] == "POST"
        assert record_header(record, "authorization") == TOKEN
        assert record_header(record, "mcp-session-id") is None
        assert record_header(record, "mcp-protocol-version") == "2026-07-28"
        assert record_header(record, "mcp-method") == record_json(record)["method"]
    call = records[1]
    assert record_header(call, "mcp-name") == "echo"
    meta = record_json(call)["params"]["_meta"]
    assert meta["io.modelcontextprotocol/protocolVersion"] == "2026-07-28"
    assert "io.modelcontextprotocol/clientCapabilities" in meta


@pytest.mark.parametrize("mode", [(), ("--json-response",)])
async def test_records_show_client_disconnect(mode: tuple[str, ...]) -> None:
    """A client that gives up mid-call shows as an unfinished call plus a disconnect record."""
    async with start_upstream(*mode) as (base, _):
        async with session_client(f"{base}/mcp", {"Authorization": TOKEN}, era="2026") as client:
            with anyio.move_on_after(0.3):
                await client.call_tool("sleep", {"seconds": 5})
        with anyio.fail_after(2):
            records = await upstream_records(base)
            while not any(r.get("event") == "disconnect" for r in records):
                await anyio.sleep(0.05)
                records = await upstream_records(base)
    (call,) = [r for r in records if "event" not in r]
    assert record_json(call)["params"]["name"] == "sleep"
    assert not call["completed"]
    assert {"event": "disconnect", "id": call["id"], "path": "/mcp"} in records
