"""The edge limits attacked (issue 14 item 1): what an adversarial review tried against them.

Raw sockets play pipelining, resetting, flooding and non-reading clients; the SDK upstream and
the raw stalling upstream of ``test_edge_limits`` play the servers behind. Gauges are read from
the admin listener and must be back at rest after every kind of end.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import httpx2
import pytest

from tests.conftest import Gateway, GatewayFactory, Upstream
from tests.integration.test_authentication import INITIALIZE, MCP_HEADERS, RESOURCE
from tests.integration.test_edge_limits import (
    EVENT,
    SSE_HEAD,
    chunk,
    config_with_limits,
    content_length,
    metric_is,
    port_of,
    post_head,
    post_initialize,
    raw_connection,
    read_message,
    stalling_upstream,
    start,
)
from tests.integration.test_key_loading import metric
from tests.integration.test_lifecycle import eventually
from tests.support.issuer import TestIssuer

MODERN = "2026-07-28"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
GAUGES_AT_REST = {
    "mcp_gateway_connections_open": 0,
    "mcp_gateway_buffered_body_bytes": 0,
    "mcp_gateway_requests_in_flight": 0,
}


async def read_until_closed(reader: asyncio.StreamReader, within: float) -> tuple[bytes, bool]:
    """Everything the gateway sends, and whether it closed the connection within ``within`` s."""
    received = b""
    try:
        async with asyncio.timeout(within):
            while data := await reader.read(65536):
                received += data
    except TimeoutError:
        return received, False
    except ConnectionError:
        pass
    return received, True


def sleep_call(token: str, seconds: float) -> bytes:
    """A raw 2026-07-28 ``tools/call`` of the upstream's ``sleep`` tool, head and body."""
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {
                "name": "sleep",
                "arguments": {"seconds": seconds},
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": MODERN,
                    "io.modelcontextprotocol/clientCapabilities": {},
                },
            },
        }
    ).encode()
    head = post_head(
        token,
        b"MCP-Protocol-Version: " + MODERN.encode() + b"\r\nMcp-Method: tools/call\r\nMcp-Name: sleep\r\n"
        b"Content-Length: %d\r\n" % len(body),
    )
    return head + body


async def read_body_after(head: bytes, reader: asyncio.StreamReader) -> bytes:
    """The body that follows ``head`` on a raw connection, chunked or with a Content-Length."""
    if b"transfer-encoding: chunked" in head.lower():
        return await reader.readuntil(b"\r\n0\r\n\r\n")
    return await reader.readexactly(content_length(head))


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a client that crashes does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def at_rest(gateway: Gateway, *, streams: bool = False) -> bool:
    """Whether every gauge of held resources is back to 0 (``streams``: the route's SSE ones too)."""
    for name, expected in GAUGES_AT_REST.items():
        if not await metric_is(gateway, name, expected):
            return False
    return not streams or await sse_streams_open(gateway) == 0


async def sse_streams_open(gateway: Gateway) -> float:
    return await metric(gateway, "mcp_gateway_sse_streams_open", route="/mcp")


# --- the header timer ---------------------------------------------------------------------------


async def test_a_partial_request_pipelined_behind_a_complete_one_is_bounded_by_the_keepalive(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """A complete request and the start of a next one in one packet: the listener cannot tell
    the second's bytes from the first's (aiohttp parses them), so the half request is bounded by
    keepalive_timeout_s (1 s here), not header_timeout_s; it is closed all the same."""
    gateway = await start(start_gateway_with, issuer, upstream, header_timeout_s=30, keepalive_timeout_s=1.0)
    async with raw_connection(gateway) as (reader, writer):
        writer.write(HEALTHZ + b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        received, closed = await read_until_closed(reader, within=5.0)
    assert received.startswith(b"HTTP/1.1 200")
    assert closed, "the unfinished second request was kept past keepalive_timeout_s"


async def test_a_next_request_started_during_a_long_one_gets_the_header_timeout(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """While a tool call runs (1 s, header_timeout_s 0.3), the client sends the first line of a
    next request and nothing more: bytes that came during a request start the header timer when
    it ends, so the half request is closed at header_timeout_s, not keepalive_timeout_s (60 s)."""
    gateway = await start(start_gateway_with, issuer, upstream, header_timeout_s=0.3, keepalive_timeout_s=60)
    async with raw_connection(gateway) as (reader, writer):
        writer.write(sleep_call(issuer.mint(audience=RESOURCE), 1.0))
        await asyncio.sleep(0.2)
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        received, closed = await read_until_closed(reader, within=4.0)
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    assert closed, "the half request sent during a long one was not timed out"


async def test_headers_received_before_the_deadline_are_served_when_the_loop_runs_late(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """Complete headers reach the socket before the header deadline (header_timeout_s 1.0, sent
    at about 0.5 s), then the loop is busy past it (a busy wait stands in for a CPU-bound moment).
    When it runs again, aiohttp parses the headers a loop iteration before their handler starts,
    in the iteration the timer is due: bytes that came just now get a short grace, so a request
    whose headers were in on time is answered."""
    gateway = await start(start_gateway_with, issuer, upstream, header_timeout_s=1.0)
    opened = time.monotonic()
    async with raw_connection(gateway) as (reader, writer):
        await eventually(lambda: metric_is(gateway, "mcp_gateway_connections_open", 1), "open")
        await asyncio.sleep(0.5)
        writer.write(HEALTHZ)  # into the kernel at once: the transport's buffer is empty
        sent_after_s = time.monotonic() - opened
        while time.monotonic() - opened < 1.3:  # the loop is late, as under load
            pass
        received, _ = await read_until_closed(reader, within=3.0)
    assert sent_after_s < 1.0  # the premise: the headers were in before the deadline
    assert received.startswith(b"HTTP/1.1 200"), received[:100]


async def test_a_long_tool_call_and_a_next_request_on_its_connection_are_not_cut_by_the_header_timer(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """A tool call sleeping four header timeouts (1.2 s, header_timeout_s 0.3) gets its
    200 with the result; a second request on the same connection right after it gets 200 too,
    and no connection was counted as timed out."""
    gateway = await start(start_gateway_with, issuer, upstream, header_timeout_s=0.3)
    async with raw_connection(gateway) as (reader, writer):
        writer.write(sleep_call(issuer.mint(audience=RESOURCE), 1.2))
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            body = await read_body_after(head, reader)
            assert b"Slept" in body or b"result" in body, body[:300]
            writer.write(HEALTHZ)
            assert (await read_message(reader)).startswith(b"HTTP/1.1 200")
    assert await metric(gateway, "mcp_gateway_connections_timed_out_total", phase="headers") == 0


async def test_an_sse_answer_outlives_the_header_timeout(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """An SSE answer held open by the upstream for six header timeouts (header_timeout_s
    0.2) is not cut: heartbeats keep arriving and nothing is counted as timed out."""
    async with stalling_upstream(SSE_HEAD, chunk(EVENT)) as up:
        config = config_with_limits(issuer, up.url, {"header_timeout_s": 0.2}, sse_heartbeat_s=0.3)
        gateway = await start_gateway_with(config)
        async with aiohttp.ClientSession() as http:
            response = await post_initialize(http, gateway, issuer)
            received = b""
            async with asyncio.timeout(10):
                while received.count(b": keep-alive\n\n") < 4:
                    received += await response.content.readany()
            assert not response.content.at_eof()
            response.close()
    assert await metric(gateway, "mcp_gateway_connections_timed_out_total", phase="headers") == 0


async def test_two_complete_requests_in_one_packet_and_http_1_0_are_answered(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """Two pipelined requests in one packet get two 200s in order; an HTTP/1.0 request
    without keep-alive gets its answer and the connection closed; the open-connection gauge
    returns to 0."""
    gateway = await start(start_gateway_with, issuer, upstream, header_timeout_s=0.5)
    async with raw_connection(gateway) as (reader, writer):
        writer.write(HEALTHZ + HEALTHZ)
        async with asyncio.timeout(5):
            assert (await read_message(reader)).startswith(b"HTTP/1.1 200")
            assert (await read_message(reader)).startswith(b"HTTP/1.1 200")
    async with raw_connection(gateway) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
        received, closed = await read_until_closed(reader, within=5.0)
    assert received.startswith(b"HTTP/1.0 200") or received.startswith(b"HTTP/1.1 200"), received[:100]
    assert closed
    await eventually(lambda: at_rest(gateway), "gauges at rest")


async def test_expect_100_continue_is_not_granted_before_the_token_is_checked(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """An anonymous POST with ``Expect: 100-continue`` and a 100 kB body: aiohttp's own expect
    handler would answer ``100 Continue`` before any middleware, inviting anyone to send a body;
    the gateway defers it to ``read_body``, after authentication. The first answer is the 401,
    and nothing goes upstream."""
    gateway = await start(start_gateway_with, issuer, upstream, header_timeout_s=2)
    await upstream.clear()
    async with raw_connection(gateway) as (reader, writer):
        writer.write(
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: 100000\r\n\r\n"
        )
        async with asyncio.timeout(5):
            first = await reader.readuntil(b"\r\n\r\n")
    assert await upstream.requests() == []
    assert first.startswith(b"HTTP/1.1 401"), first[:100]


# --- counting: every gauge back to rest after every kind of end ---------------------------------


async def test_connection_and_body_gauges_return_to_rest_after_every_kind_of_close(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """After a reset mid-headers, a reset mid-body (declared and chunked), a header
    timeout, a keep-alive timeout and a refused connection over the cap (max_connections 2), the
    open connections, held body bytes and requests in flight are all back to 0."""
    gateway = await start(
        start_gateway_with,
        issuer,
        upstream,
        header_timeout_s=0.3,
        keepalive_timeout_s=0.3,
        body_timeout_s=30,
        max_connections=2,
    )
    token = issuer.mint(audience=RESOURCE)
    port = port_of(gateway)

    async def scenario(name: str, actions: Any) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await actions(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await eventually(lambda: at_rest(gateway), f"gauges at rest after {name}")

    async def reset_mid_headers(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"POST /mcp HTTP/1.1\r\nHost: x\r\n")
        await eventually(lambda: metric_is(gateway, "mcp_gateway_connections_open", 1), "open")
        reset(w)

    async def reset_mid_declared_body(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(post_head(token, b"Content-Length: 500\r\n") + b'{"jsonrpc"')
        await eventually(lambda: metric_is(gateway, "mcp_gateway_buffered_body_bytes", 500), "held")
        reset(w)

    async def reset_mid_chunked_body(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(post_head(token, b"Transfer-Encoding: chunked\r\n") + chunk(b'{"jsonrpc": "2.0",'))
        await eventually(lambda: metric_is(gateway, "mcp_gateway_buffered_body_bytes", 18), "held")
        reset(w)

    async def header_timeout(r: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
        assert (await read_until_closed(r, within=5.0))[1]

    async def keepalive_timeout(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(HEALTHZ)
        assert (await read_message(r)).startswith(b"HTTP/1.1 200")
        assert (await read_until_closed(r, within=5.0))[1]

    for name, actions in [
        ("a reset mid-headers", reset_mid_headers),
        ("a reset mid-body (Content-Length)", reset_mid_declared_body),
        ("a reset mid-body (chunked)", reset_mid_chunked_body),
        ("a header timeout", header_timeout),
        ("a keep-alive timeout", keepalive_timeout),
    ]:
        await scenario(name, actions)
    # Over the cap: two connections fill it (max_connections 2), a third is refused.
    async with raw_connection(gateway), raw_connection(gateway):
        await eventually(lambda: metric_is(gateway, "mcp_gateway_connections_open", 2), "two open")
        refused_reader, refused_writer = await asyncio.open_connection("127.0.0.1", port)
        answer, _ = await read_until_closed(refused_reader, within=5.0)
        refused_writer.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
    await eventually(lambda: at_rest(gateway), "gauges at rest after a refusal")
    assert await metric(gateway, "mcp_gateway_connections_timed_out_total", phase="headers") >= 1


async def test_a_stream_cut_by_the_client_frees_its_stream_slot_and_gauges(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """Max_streams 1; an SSE answer the client resets mid-stream frees the slot (the next
    request is relayed, 200), and connections, in-flight requests and open SSE streams go to 0;
    a request whose upstream is unreachable (502) frees it too."""
    async with stalling_upstream(SSE_HEAD, chunk(EVENT)) as up:
        gateway = await start_gateway_with(config_with_limits(issuer, up.url, {"max_streams": 1}))
        token = issuer.mint(audience=RESOURCE)
        body = json.dumps(INITIALIZE).encode()
        async with raw_connection(gateway) as (reader, writer):
            writer.write(post_head(token, b"Content-Length: %d\r\n" % len(body)) + body)
            async with asyncio.timeout(5):
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
                await reader.readuntil(b"\n\n")
            reset(writer)
        await eventually(lambda: at_rest(gateway, streams=True), "stream released")
        async with aiohttp.ClientSession() as http:
            response = await post_initialize(http, gateway, issuer)
            assert response.status == 200
            response.close()
        assert up.requests == 2
        await eventually(lambda: at_rest(gateway, streams=True), "released again")


async def test_an_unreachable_upstream_frees_the_stream_slot(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """Max_streams 1 and an upstream port nobody listens on: three requests in a row are
    each answered 502 (never 503 too_many_streams), and the gauges return to rest."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{unused.getsockname()[1]}/mcp"
    gateway = await start_gateway_with(
        config_with_limits(issuer, dead, {"max_streams": 1}, circuit_breaker={"failures": 100})
    )
    async with aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(3):
            response = await post_initialize(http, gateway, issuer)
            statuses.append(response.status)
            response.release()
    assert statuses == [502] * 3
    await eventually(lambda: at_rest(gateway), "gauges at rest")


# --- the connection cap and its refusals --------------------------------------------------------


def flood(port: int, count: int, request: bytes) -> list[str]:
    """``count`` connections made at once from another thread, each sending ``request`` at once;
    what each got back: ``503``, ``other``, ``reset`` or ``nothing``."""
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        with contextlib.suppress(OSError):
            sock.sendall(request)
        sockets.append(sock)
    outcomes = []
    for sock in sockets:
        received = b""
        try:
            while data := sock.recv(65536):
                received += data
        except ConnectionResetError:
            outcomes.append("503" if received.startswith(b"HTTP/1.1 503") else "reset")
            continue
        except TimeoutError:
            pass
        finally:
            sock.close()
        if received.startswith(b"HTTP/1.1 503"):
            outcomes.append("503")
        else:
            outcomes.append("other" if received else "nothing")
    return outcomes


@pytest.mark.parametrize(
    "request_bytes",
    [HEALTHZ, b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n" + b"x" * 60000],
    ids=["headers", "headers-and-60kB-body"],
)
async def test_a_flood_past_the_lingering_refusals_still_reads_its_503(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory, request_bytes: bytes
) -> None:
    """Max_connections 1, one connection holding it; 150 more at once from another
    thread, each sending its request (and a 60 kB body) at once. Past 64 lingering refusals the
    rest are answered and closed at once, with the request unread (a reset): on Linux loopback
    every client still reads its 503 first."""
    gateway = await start(start_gateway_with, issuer, upstream, max_connections=1, header_timeout_s=30)
    async with raw_connection(gateway):
        await eventually(lambda: metric_is(gateway, "mcp_gateway_connections_open", 1), "cap full")
        outcomes = await asyncio.to_thread(flood, port_of(gateway), 150, request_bytes)
    counts = {kind: outcomes.count(kind) for kind in set(outcomes)}
    assert counts == {"503": 150}, counts


async def test_a_refused_client_that_sends_a_large_body_at_once_reads_the_503(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """With the cap full, an aiohttp client and an httpx2 client each POST 2 MB at once:
    both read the 503 with Retry-After (not a reset), and the upstream gets nothing."""
    gateway = await start(start_gateway_with, issuer, upstream, max_connections=1, header_timeout_s=30)
    await upstream.clear()
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"}
    big = b'{"pad": "' + b"x" * 2_000_000 + b'"}'
    async with raw_connection(gateway):
        await eventually(lambda: metric_is(gateway, "mcp_gateway_connections_open", 1), "cap full")
        async with aiohttp.ClientSession() as http:
            async with http.post(gateway.route_url(), data=io.BytesIO(big), headers=headers) as response:
                aiohttp_answer = (response.status, response.headers.get("Retry-After"))
        async with httpx2.AsyncClient() as client:
            answer = await client.post(gateway.route_url(), content=big, headers=headers)
            httpx_answer = (answer.status_code, answer.headers.get("Retry-After"))
    assert aiohttp_answer == (503, "1")
    assert httpx_answer == (503, "1")
    assert await upstream.requests() == []


# --- the body budget ----------------------------------------------------------------------------


async def test_body_budget_with_chunked_empty_and_oversized_declared_bodies(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """A chunked initialize (no Content-Length) passes and its bytes are released; a
    ``Content-Length: 0`` POST is a 400 holding nothing; a declared length over the route's
    max_body_bytes is a 413 before any byte is held; a declared body over the budget is a 503.
    The upstream sees the chunked request only and the budget gauge ends at 0."""
    gateway = await start(start_gateway_with, issuer, upstream, max_buffered_body_bytes=2000)
    await upstream.clear()
    token = issuer.mint(audience=RESOURCE)
    body = json.dumps(INITIALIZE).encode()
    async with raw_connection(gateway) as (reader, writer):
        writer.write(post_head(token, b"Transfer-Encoding: chunked\r\n") + chunk(body) + b"0\r\n\r\n")
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    statuses = []
    for framing in (b"Content-Length: 0\r\n", b"Content-Length: 99999999\r\n", b"Content-Length: 2001\r\n"):
        async with raw_connection(gateway) as (reader, writer):
            writer.write(post_head(token, framing))
            async with asyncio.timeout(5):
                statuses.append((await reader.readuntil(b"\r\n\r\n")).split(b" ", 2)[1])
    assert statuses == [b"400", b"413", b"503"]
    assert len(await upstream.requests()) == 1
    await eventually(lambda: at_rest(gateway), "gauges at rest")


async def test_a_long_sse_answer_does_not_keep_its_request_body_in_the_budget(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """Budget 1 000 bytes; a POST with a 900-byte body whose answer is an SSE stream the upstream
    keeps open. Once the upstream has answered, the body no longer counts: another caller's POST
    passes while the stream is open, and the gauge says 0."""
    async with stalling_upstream(SSE_HEAD, chunk(EVENT)) as up:
        config = config_with_limits(issuer, up.url, {"max_buffered_body_bytes": 1000})
        gateway = await start_gateway_with(config)
        headers = {**MCP_HEADERS, "Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"}
        body = json.dumps({**INITIALIZE, "pad": ""}).encode()
        padded = body[:-2] + b"x" * (900 - len(body)) + b'"}'
        assert len(padded) == 900
        async with aiohttp.ClientSession() as http:
            async with http.post(gateway.route_url(), data=padded, headers=headers) as stream:
                assert stream.status == 200
                await stream.content.readuntil(b"\n\n")  # the stream is open, its body forwarded
                async with http.post(gateway.route_url(), data=body, headers=headers) as other:
                    other_status = other.status
                held = await metric(gateway, "mcp_gateway_buffered_body_bytes")
    assert held == 0, "a forwarded body stays in the budget while its stream is open"
    assert other_status == 200


# --- SSE heartbeat ------------------------------------------------------------------------------


class PausingUpstream:
    """A raw SSE upstream that sends ``parts`` with ``pause_s`` between them, then holds the stream."""

    def __init__(self, pause_s: float, *parts: bytes) -> None:
        self.pause_s = pause_s
        self.parts = parts
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_message(reader)
            writer.write(SSE_HEAD)
            for part in self.parts:
                writer.write(chunk(part))
                await writer.drain()
                await asyncio.sleep(self.pause_s)
            await reader.read()  # until the gateway closes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def pausing_upstream(pause_s: float, *parts: bytes) -> AsyncIterator[PausingUpstream]:
    upstream = PausingUpstream(pause_s, *parts)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp"
    try:
        yield upstream
    finally:
        server.close()
        await server.wait_closed()


async def test_a_heartbeat_never_lands_inside_an_event_split_across_chunks(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """One event sent in three pieces with three heartbeat periods of silence between
    them (sse_heartbeat_s 0.1, pauses 0.35 s): the client gets heartbeats only before the event
    starts and after it ends, and the event whole."""
    first, second, third = EVENT[:10], EVENT[10:40], EVENT[40:]
    async with pausing_upstream(0.35, first, second, third, EVENT) as up:
        config = config_with_limits(issuer, up.url, {}, sse_heartbeat_s=0.1)
        gateway = await start_gateway_with(config)
        async with aiohttp.ClientSession() as http:
            response = await post_initialize(http, gateway, issuer)
            received = b""
            async with asyncio.timeout(10):
                while received.count(EVENT) < 2:
                    received += await response.content.readany()
            response.close()
    beat = b": keep-alive\n\n"
    assert received.replace(beat, b"") == EVENT * 2
    assert EVENT in received.split(beat), received


async def test_a_get_stream_gets_heartbeats(issuer: TestIssuer, start_gateway_with: GatewayFactory) -> None:
    """A standalone GET stream (the upstream's server-initiated stream) silent after its
    headers gets heartbeat comments at sse_heartbeat_s (0.15)."""
    async with pausing_upstream(0.0) as up:
        config = config_with_limits(issuer, up.url, {}, sse_heartbeat_s=0.15)
        gateway = await start_gateway_with(config)
        headers = {
            "Accept": "text/event-stream",
            "Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}",
            "MCP-Protocol-Version": "2025-11-25",
        }
        async with (
            aiohttp.ClientSession() as http,
            http.get(gateway.route_url(), headers=headers) as response,
        ):
            assert response.status == 200, await response.text()
            received = b""
            async with asyncio.timeout(10):
                while received.count(b": keep-alive\n\n") < 3:
                    received += await response.content.readany()
    assert received == b": keep-alive\n\n" * 3


class FloodingUpstream:
    """A raw SSE upstream that sends events as fast as the gateway reads them, forever."""

    def __init__(self) -> None:
        self.url = ""
        self.sent = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        notice = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"pad": "x" * 16000}}
        event = chunk(b"event: message\ndata: " + json.dumps(notice).encode() + b"\n\n")
        try:
            await read_message(reader)
            writer.write(SSE_HEAD)
            while True:
                writer.write(event)
                self.sent += len(event)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_an_sse_stream_whose_client_stops_reading_still_ends_at_its_max_lifetime(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """An upstream that streams events without pause, and a client that reads the answer's head
    and then nothing (a small receive buffer): the relay blocks in ``response.write`` once the
    buffers are full, where the lifetime (checked between upstream chunks) cannot reach it; the
    send timeout (0.5 s) cuts the connection, freeing the stream, its slot and its upstream."""
    up = FloodingUpstream()
    server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    up.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp"
    try:
        config = config_with_limits(issuer, up.url, {"send_timeout_s": 0.5}, sse_max_lifetime_s=0.5)
        gateway = await start_gateway_with(config)
        reader, writer = await initialize_on_a_small_buffer(gateway, issuer)
        async with asyncio.timeout(5):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        cast(asyncio.Transport, writer.transport).pause_reading()  # the client reads nothing more
        try:
            await eventually(lambda: sse_streams_open(gateway), "stream open")
            # The client's buffers fill; send_timeout_s later its connection is cut.
            await eventually(lambda: at_rest(gateway, streams=True), "the stream cut", within=5)
            timed_out = await metric(gateway, "mcp_gateway_connections_timed_out_total", phase="send")
        finally:
            reset(writer)
    finally:
        server.close()
        await server.wait_closed()
    assert timed_out == 1


async def initialize_on_a_small_buffer(
    gateway: Gateway, issuer: TestIssuer
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection with a 4 KiB receive buffer, which has sent one initialize."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port_of(gateway)))
    reader, writer = await asyncio.open_connection(sock=sock)
    body = json.dumps(INITIALIZE).encode()
    writer.write(post_head(issuer.mint(audience=RESOURCE), b"Content-Length: %d\r\n" % len(body)) + body)
    return reader, writer


async def test_a_large_json_answer_the_client_never_reads_is_not_held_forever(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """An 8 MB JSON answer (read whole and filtered) to a client that reads its head and then
    nothing: the request has finished (in flight 0) while its answer sits in the transport's
    buffer; the send timeout (0.5 s) cuts the connection, and with it the memory it held."""
    answer = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"pad": "x" * 8_000_000}}).encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(answer)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await read_message(reader)
            writer.write(head + answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp"
    limits = {"header_timeout_s": 0.5, "keepalive_timeout_s": 0.5, "send_timeout_s": 0.5}
    try:
        gateway = await start_gateway_with(
            config_with_limits(issuer, url, limits, upstream_idle_timeout_s=0.5)
        )
        reader, writer = await initialize_on_a_small_buffer(gateway, issuer)
        try:
            async with asyncio.timeout(10):
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            cast(asyncio.Transport, writer.transport).pause_reading()  # the client reads nothing more
            await eventually(lambda: metric_is(gateway, "mcp_gateway_requests_in_flight", 0), "finished")
            # send_timeout_s after the client stopped taking the answer, the connection is cut.
            await eventually(lambda: at_rest(gateway), "the connection cut", within=5)
            timed_out = await metric(gateway, "mcp_gateway_connections_timed_out_total", phase="send")
        finally:
            reset(writer)
    finally:
        server.close()
        await server.wait_closed()
    assert timed_out == 1


# --- listen addresses ---------------------------------------------------------------------------


async def test_the_listener_serves_on_ipv6_loopback(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """``listen: {host: "::1"}`` binds the IPv6 loopback; /healthz answers 200 there."""
    from gateway.server import start_gateway

    gateway = await start(start_gateway_with, issuer, upstream)
    runner, port = await start_gateway(gateway.config, host="::1", port=0)
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://[::1]:{port}/healthz") as response:
            assert response.status == 200
    finally:
        await runner.cleanup()
