"""What an anonymous or greedy client can hold of a gateway, and for how long (``limits:``).

Raw sockets play the slow clients (headers a byte at a time, a body that stalls, a connection
that says nothing); an aiohttp client plays the normal one, in front of the SDK upstream, whose
records show what reached it. Timeouts are set to fractions of a second so that each case takes
about one. Metrics are read from the admin listener and must match the scenario exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import load_config
from gateway.eventloop import uvloop_installed
from gateway.web.limits import connection_cap
from tests.conftest import Gateway, GatewayFactory, Upstream, single_route_config
from tests.integration.test_authentication import INITIALIZE, MCP_HEADERS, RESOURCE
from tests.integration.test_key_loading import metric
from tests.integration.test_lifecycle import eventually
from tests.support.issuer import TestIssuer
from tests.support.processes import start_gateway_process


def config_with_limits(issuer: TestIssuer, upstream_url: str, limits: dict[str, Any], **route: Any) -> str:
    """The usual one-route config with an admin listener and the given ``limits:``."""
    return (
        single_route_config(issuer, upstream_url, **route).rstrip()
        + f"\n        admin: {{host: 127.0.0.1, port: 0}}\n        limits: {json.dumps(limits)}\n"
    )


async def start(
    start_gateway_with: GatewayFactory, issuer: TestIssuer, upstream: Upstream, **limits: Any
) -> Gateway:
    return await start_gateway_with(config_with_limits(issuer, upstream.mcp_url, limits))


def port_of(gateway: Gateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


async def metric_is(gateway: Gateway, name: str, expected: float) -> bool:
    return await metric(gateway, name) == expected


async def initialize(gateway: Gateway, issuer: TestIssuer, http: aiohttp.ClientSession) -> int:
    """One normal MCP request (initialize); its status."""
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"}
    async with http.post(gateway.route_url(), json=INITIALIZE, headers=headers) as response:
        await response.read()
        return response.status


async def closed_by_peer(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the gateway closes the connection within ``within`` seconds (EOF or reset)."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


@contextlib.asynccontextmanager
async def raw_connection(
    gateway: Gateway,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_message(reader: asyncio.StreamReader) -> bytes:
    """One message (an answer, or a request as an upstream reads it) with a Content-Length or
    none, head and body, off a raw connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    return head + await reader.readexactly(content_length(head))


def content_length(head: bytes) -> int:
    """A message head's Content-Length (0 without one)."""
    lengths = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    return int(lengths[0].split(b":", 1)[1]) if lengths else 0


async def trickle_headers(writer: asyncio.StreamWriter, token: str) -> None:
    """A slowloris: a valid request's headers, one short line every 50 ms, never finished."""
    writer.write(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    lines = [b"Authorization: Bearer " + token.encode() + b"\r\n"] + [
        b"X-Pad-%d: a\r\n" % n for n in range(400)
    ]
    with contextlib.suppress(ConnectionError):
        for line in lines:
            writer.write(line)
            await writer.drain()
            await asyncio.sleep(0.05)


async def test_slow_and_silent_clients_are_closed_at_the_header_timeout_while_a_normal_client_is_served(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """Three slowloris connections (a header line every 50 ms) and two that send nothing are
    closed at header_timeout_s (0.5 s); meanwhile a normal client's requests all get 200, the
    upstream sees those only, and the metric counts exactly five timeouts."""
    gateway = await start(start_gateway_with, issuer, upstream, header_timeout_s=0.5)
    await upstream.clear()
    token = issuer.mint(audience=RESOURCE)
    async with contextlib.AsyncExitStack() as stack:
        slow = [await stack.enter_async_context(raw_connection(gateway)) for _ in range(5)]
        trickles = [asyncio.create_task(trickle_headers(writer, token)) for _, writer in slow[:3]]
        async with aiohttp.ClientSession() as http:
            statuses = [await initialize(gateway, issuer, http) for _ in range(5)]
            closed = await asyncio.gather(*(closed_by_peer(reader, within=5.0) for reader, _ in slow))
        for task in trickles:
            task.cancel()
    assert statuses == [200] * 5
    assert closed == [True] * 5
    assert len(await upstream.requests()) == 5
    assert await metric(gateway, "mcp_gateway_connections_timed_out_total", phase="headers") == 5


async def test_a_later_request_on_a_kept_alive_connection_has_the_header_timeout_too(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """After one answered request, the first bytes of a next one start the header timer: the
    connection is closed at header_timeout_s (0.5 s), long before keepalive_timeout_s (60 s)."""
    gateway = await start(start_gateway_with, issuer, upstream, header_timeout_s=0.5, keepalive_timeout_s=60)
    async with raw_connection(gateway) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await read_message(reader)).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.8)  # idle longer than the header timeout: idle is keep-alive's business
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # ... and the rest never comes
        assert await closed_by_peer(reader, within=5.0)
    assert await metric(gateway, "mcp_gateway_connections_timed_out_total", phase="headers") == 1


async def test_an_idle_kept_alive_connection_is_closed_at_the_keepalive_timeout(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """Idle after an answer, a connection is closed at keepalive_timeout_s (0.5 s); one that
    keeps sending requests stays open. aiohttp's own default would keep it for an hour."""
    gateway = await start(start_gateway_with, issuer, upstream, header_timeout_s=30, keepalive_timeout_s=0.5)
    async with raw_connection(gateway) as (reader, writer):
        for _ in range(3):  # busy: each answer restarts the idle time
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert (await read_message(reader)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(0.2)
        assert await closed_by_peer(reader, within=5.0)
    assert await metric(gateway, "mcp_gateway_connections_timed_out_total", phase="headers") == 0


# --- request bodies ---------------------------------------------------------------------------


def post_head(token: str, framing: bytes) -> bytes:
    return (
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Accept: application/json, text/event-stream\r\nAuthorization: Bearer "
        + token.encode()
        + b"\r\n"
        + framing
        + b"\r\n"
    )


@pytest.mark.parametrize(
    "framing, first_bytes",
    [
        (b"Content-Length: 200\r\n", b'{"jsonrpc": "2.0",'),
        (b"Transfer-Encoding: chunked\r\n", b"12\r\n" + b"x" * 18),
    ],
    ids=["content-length", "chunked"],
)
async def test_a_body_that_stalls_gets_408_at_the_body_timeout_and_the_upstream_nothing(
    issuer: TestIssuer,
    upstream: Upstream,
    start_gateway_with: GatewayFactory,
    framing: bytes,
    first_bytes: bytes,
) -> None:
    """A valid caller whose body stops after a few bytes gets 408 with a JSON-RPC error at
    body_timeout_s (0.4 s), the connection is closed, and nothing reaches the upstream."""
    gateway = await start(start_gateway_with, issuer, upstream, body_timeout_s=0.4)
    await upstream.clear()
    async with raw_connection(gateway) as (reader, writer):
        writer.write(post_head(issuer.mint(audience=RESOURCE), framing) + first_bytes)
        async with asyncio.timeout(5):
            answer = await read_message(reader)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["code"] == -32600 and "timed out" in error["message"]
        assert b"connection: close" in answer.lower()
        assert await closed_by_peer(reader, within=5.0)  # after the 2 s drain of what else comes
    assert await upstream.requests() == []


@pytest.mark.parametrize(
    "pause_s, status", [(0.0, b"400"), (0.3, b"408")], ids=["with-headers", "after-headers"]
)
async def test_a_broken_chunked_body_is_refused_never_left_hanging(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory, pause_s: float, status: bytes
) -> None:
    """A chunk size that is not hex. In the headers' packet: aiohttp's own 400 at once. After the
    handler has started reading: aiohttp's C parser drops the request's body stream without
    ending it (aiohttp 3.14 ``_http_parser.pyx``), so the read ends at body_timeout_s (0.5 s)
    with 408, never later. Either way the upstream gets nothing."""
    gateway = await start(start_gateway_with, issuer, upstream, body_timeout_s=0.5)
    await upstream.clear()
    async with raw_connection(gateway) as (reader, writer):
        writer.write(post_head(issuer.mint(audience=RESOURCE), b"Transfer-Encoding: chunked\r\n"))
        await asyncio.sleep(pause_s)
        writer.write(b"zz\r\n{}\r\n")
        async with asyncio.timeout(5):
            answer = await reader.read(65536)
    assert answer.startswith((b"HTTP/1.1 " + status, b"HTTP/1.0 " + status)), answer[:200]
    assert await upstream.requests() == []


# --- process limits: connections, streams, buffered bodies ------------------------------------


async def test_connections_past_the_cap_get_a_clean_503_and_service_resumes(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """With max_connections 4 and four silent connections open, a normal request gets 503 with
    Retry-After and a JSON-RPC body (the upstream nothing); once they are closed it gets 200.
    The refusal is counted exactly once."""
    gateway = await start(start_gateway_with, issuer, upstream, max_connections=4, header_timeout_s=30)
    await upstream.clear()
    async with aiohttp.ClientSession() as http:
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(4):
                await stack.enter_async_context(raw_connection(gateway))
            await eventually(
                lambda: metric_is(gateway, "mcp_gateway_connections_open", 4), "four connections open"
            )
            headers = {**MCP_HEADERS, "Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"}
            async with http.post(gateway.route_url(), json=INITIALIZE, headers=headers) as response:
                refused = (response.status, response.headers.get("Retry-After"), await response.json())
        assert refused[:2] == (503, "1")
        assert (
            refused[2]["error"]["code"] == -32000 and "too many connections" in refused[2]["error"]["message"]
        )
        assert await upstream.requests() == []
        assert await metric(gateway, "mcp_gateway_connections_refused_total", reason="at_capacity") == 1
        await eventually(lambda: metric_is(gateway, "mcp_gateway_connections_open", 0), "connections closed")
        assert await initialize(gateway, issuer, http) == 200


class StallingUpstream:
    """An upstream that answers every request with ``head`` and ``parts`` and then says nothing
    until ``release`` is set, when it ends the chunked body (a raw HTTP/1.1 server: no library
    would stall on purpose)."""

    def __init__(self, head: bytes, *parts: bytes) -> None:
        self.head = head
        self.parts = parts
        self.requests = 0
        self.release = asyncio.Event()
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_message(reader)
            self.requests += 1
            writer.write(self.head)
            for part in self.parts:
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.05)
            await self.release.wait()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def stalling_upstream(head: bytes, *parts: bytes) -> AsyncIterator[StallingUpstream]:
    upstream = StallingUpstream(head, *parts)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp"
    try:
        yield upstream
    finally:
        upstream.release.set()
        server.close()
        await server.wait_closed()


JSON_CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def post_initialize(
    http: aiohttp.ClientSession, gateway: Gateway, issuer: TestIssuer
) -> aiohttp.ClientResponse:
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"}
    return await http.post(gateway.route_url(), json=INITIALIZE, headers=headers)


async def test_requests_past_max_streams_get_503_before_the_upstream_sees_them(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """With max_streams 2 and two answers being relayed (the upstream holds them open), a third
    request gets 503 with Retry-After and never reaches the upstream; once they end, it passes."""
    async with stalling_upstream(
        SSE_HEAD, chunk(b'event: message\ndata: {"jsonrpc":"2.0","method":"x"}\n\n')
    ) as up:
        gateway = await start_gateway_with(config_with_limits(issuer, up.url, {"max_streams": 2}))
        async with aiohttp.ClientSession() as http:
            held = [await post_initialize(http, gateway, issuer) for _ in range(2)]
            assert [response.status for response in held] == [200, 200]
            third = await post_initialize(http, gateway, issuer)
            assert (third.status, third.headers.get("Retry-After")) == (503, "1")
            assert (await third.json())["error"]["code"] == -32000
            third.release()
            assert up.requests == 2
            assert (
                await metric(gateway, "mcp_gateway_requests_overloaded_total", reason="too_many_streams") == 1
            )
            up.release.set()  # the two streams end
            for response in held:
                assert b"data:" in await response.read()
                response.release()
            fourth = await post_initialize(http, gateway, issuer)
            assert fourth.status == 200 and up.requests == 3
            fourth.release()


async def test_bodies_past_the_buffered_body_budget_get_503(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """Budget 1 000 bytes: one caller's 900-byte body arriving slowly holds 900 (the gauge says
    so); another's 300-byte body gets 503 with Retry-After and the upstream nothing; when the
    first ends, the second passes."""
    gateway = await start(
        start_gateway_with, issuer, upstream, max_buffered_body_bytes=1000, body_timeout_s=30
    )
    await upstream.clear()
    body = json.dumps(INITIALIZE).encode()
    padded = body[:-1] + b"," + b'"pad": "' + b"x" * (300 - len(body) - 10) + b'"}'
    assert len(padded) <= 300
    async with aiohttp.ClientSession() as http, raw_connection(gateway) as (_, writer):
        writer.write(post_head(issuer.mint(audience=RESOURCE), b"Content-Length: 900\r\n") + b"{")
        await eventually(lambda: metric_is(gateway, "mcp_gateway_buffered_body_bytes", 900), "900 bytes held")
        headers = {**MCP_HEADERS, "Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"}
        async with http.post(gateway.route_url(), data=padded, headers=headers) as response:
            assert (response.status, response.headers.get("Retry-After")) == (503, "1")
        assert await upstream.requests() == []
        reason = "body_budget_exhausted"
        assert await metric(gateway, "mcp_gateway_requests_overloaded_total", reason=reason) == 1
        writer.close()  # the slow caller leaves: its hold is released
        await eventually(lambda: metric_is(gateway, "mcp_gateway_buffered_body_bytes", 0), "hold released")
        async with http.post(gateway.route_url(), data=padded, headers=headers) as response:
            assert response.status == 200
    assert len(await upstream.requests()) == 1


# --- upstream bodies and SSE streams ------------------------------------------------------------


async def test_a_json_answer_that_stalls_is_a_504_at_the_upstream_idle_timeout(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """A chunked JSON answer that stops mid-body: 504 at upstream_idle_timeout_s (0.4 s), long
    before response_timeout_s (60 s); none of the partial body reaches the client."""
    async with stalling_upstream(JSON_CHUNKED, chunk(b'{"jsonrpc":"2.0","id":1,"res')) as up:
        config = config_with_limits(issuer, up.url, {}, upstream_idle_timeout_s=0.4, response_timeout_s=60)
        gateway = await start_gateway_with(config)
        async with aiohttp.ClientSession() as http, asyncio.timeout(10):
            response = await post_initialize(http, gateway, issuer)
            body = await response.read()
    assert response.status == 504, body
    assert b"res" not in body and json.loads(body)["error"]["code"] == -32000
    assert (
        await metric(gateway, "mcp_gateway_upstream_errors_total", route="/mcp", reason="upstream_timeout")
        == 1
    )


async def test_an_error_page_that_stalls_is_cut_at_the_upstream_idle_timeout(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """A 500 answer of no MCP type, relayed as it streams: after upstream_idle_timeout_s of
    silence the client's connection is aborted, so the truncated body never looks complete."""
    head = b"HTTP/1.1 500 Oops\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with stalling_upstream(head, chunk(b"<html>" + b"x" * 2_000_000)) as up:
        config = config_with_limits(issuer, up.url, {}, upstream_idle_timeout_s=0.4)
        gateway = await start_gateway_with(config)
        async with aiohttp.ClientSession() as http, asyncio.timeout(10):
            response = await post_initialize(http, gateway, issuer)
            assert response.status == 500
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
    assert (
        await metric(gateway, "mcp_gateway_upstream_errors_total", route="/mcp", reason="upstream_timeout")
        == 1
    )


EVENT = b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/message","params":{}}\n\n'


async def test_a_silent_sse_stream_gets_heartbeats_and_is_never_timed_out(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """An SSE answer silent after one event: with sse_heartbeat_s 0.2 the client gets comment
    lines meanwhile and the stream stays open past upstream_idle_timeout_s (0.3 s), which does
    not apply to SSE; the event arrives whole, before any heartbeat."""
    async with stalling_upstream(SSE_HEAD, chunk(EVENT)) as up:
        config = config_with_limits(issuer, up.url, {}, sse_heartbeat_s=0.2, upstream_idle_timeout_s=0.3)
        gateway = await start_gateway_with(config)
        async with aiohttp.ClientSession() as http:
            response = await post_initialize(http, gateway, issuer)
            received = b""
            async with asyncio.timeout(10):
                while received.count(b": keep-alive\n\n") < 3:
                    received += await response.content.readany()
            assert not response.content.at_eof()
            response.close()
    assert received.startswith(EVENT) and received[len(EVENT) :] == b": keep-alive\n\n" * 3


async def test_an_sse_stream_ends_cleanly_at_its_max_lifetime(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """sse_max_lifetime_s 0.5: the stream that the upstream would hold forever ends with a clean
    end of body after its events (the client can reconnect); a half-sent event is not relayed."""
    partial = b'event: message\ndata: {"half'
    async with stalling_upstream(SSE_HEAD, chunk(EVENT), chunk(partial)) as up:
        config = config_with_limits(issuer, up.url, {}, sse_max_lifetime_s=0.5)
        gateway = await start_gateway_with(config)
        async with aiohttp.ClientSession() as http, asyncio.timeout(10):
            response = await post_initialize(http, gateway, issuer)
            received = await response.read()  # a clean end: no ClientPayloadError
    assert received == EVENT


# --- a flood under a low open-file limit (the real process) -------------------------------------


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize(
    "loop, open_files, flood",
    [("asyncio", 256, 400), ("asyncio", 40, 100), ("uvloop", 40, 100)],
    ids=["asyncio-past-the-cap", "asyncio-out-of-descriptors", "uvloop-out-of-descriptors"],
)
async def test_a_connection_flood_under_a_low_open_file_limit_stays_quiet_and_recovers(
    tmp_path: Path, issuer: TestIssuer, upstream: Upstream, loop: str, open_files: int, flood: int
) -> None:
    """``ulimit -n`` 256 (cap 64) or 40 (the cap cannot keep the process from running out of
    descriptors), and more stalled connections than that: normal requests meanwhile get 200 or
    a clean 503, never a hang or a reset; the process idles (under 0.3 s of CPU in 1 s); the log
    holds at most one event per kind; once the header timeout has closed the flood, 200 again."""
    if loop == "uvloop" and not uvloop_installed():
        pytest.skip("uvloop is not installed")
    config_path = tmp_path / "gateway.yaml"
    limits = {"header_timeout_s": 2.0}
    text = textwrap.dedent(config_with_limits(issuer, upstream.mcp_url, limits))
    await asyncio.to_thread(config_path.write_text, text)
    log_path = tmp_path / "gateway.log"
    async with start_gateway_process(config_path, log_path, "--loop", loop, open_files=open_files) as gateway:
        listening = next(e for e in await gateway.events() if e["event"] == "listening")
        assert (listening["open_files"], listening["max_connections"]) == (
            open_files,
            connection_cap(open_files),
        )
        port = int(gateway.url.rsplit(":", 1)[1])
        writers = []
        for _ in range(flood):
            with contextlib.suppress(ConnectionError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                writers.append(writer)
        before = await asyncio.to_thread(cpu_seconds, gateway.proc.pid)
        await asyncio.sleep(1.0)
        assert await asyncio.to_thread(cpu_seconds, gateway.proc.pid) - before < 0.3
        normal = Gateway(url=gateway.url, config=await asyncio.to_thread(load_config, config_path))
        async with aiohttp.ClientSession() as http:
            statuses = {await initialize(normal, issuer, http) for _ in range(5)}
            assert statuses <= {200, 503}
            for writer in writers:
                writer.close()
            await eventually(
                lambda: initialize_is_ok(normal, issuer, http), "a 200 after the flood", within=15
            )
        kinds = [e["event"] for e in await gateway.events()]
    assert kinds.count("fd_exhausted") <= 1 and kinds.count("connections_at_capacity") <= 1
    assert "connections_at_capacity" in kinds or "fd_exhausted" in kinds
    assert len(kinds) < 60, kinds


async def initialize_is_ok(gateway: Gateway, issuer: TestIssuer, http: aiohttp.ClientSession) -> bool:
    return await initialize(gateway, issuer, http) == 200


# --- events back to back (the relay's write coalescing) -----------------------------------------


@contextlib.asynccontextmanager
async def back_to_back_upstream(
    events: list[bytes], gap_s: float, sending_s: list[float]
) -> AsyncIterator[str]:
    """An SSE upstream on a thread of its own that sends each event in a write of its own,
    ``gap_s`` apart (real time, not the test's loop), then ends the stream; ``sending_s`` gets
    how long the events took to send."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                head, _, body = request.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                while len(body) < length:
                    body += conn.recv(65536)
                conn.sendall(SSE_HEAD)
                started = time.monotonic()
                for event in events:
                    conn.sendall(chunk(event))
                    time.sleep(gap_s)
                sending_s.append(time.monotonic() - started)
                conn.sendall(b"0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/mcp"
    finally:
        listener.close()
        await asyncio.to_thread(thread.join, 5)


async def test_events_sent_back_to_back_are_relayed_whole_in_order_in_fewer_writes(
    issuer: TestIssuer, start_gateway_with: GatewayFactory
) -> None:
    """300 events, each in a write of its own 0.1 ms apart: every byte reaches the client in
    order, in about one read per millisecond of sending (what arrives within 1 ms of a write goes
    in the next one; without that, one write per event woke the client 300 times). On a machine
    so slow that the events come 1 ms apart anyway, the bound cannot tell the two apart."""
    events = [
        b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{"n":%d}}\n\n' % i
        for i in range(300)
    ]
    sending_s: list[float] = []
    async with back_to_back_upstream(events, 0.0001, sending_s) as url:
        gateway = await start_gateway_with(config_with_limits(issuer, url, {}))
        async with aiohttp.ClientSession() as http, asyncio.timeout(20):
            response = await post_initialize(http, gateway, issuer)
            assert response.status == 200
            reads = [part async for part in response.content.iter_any()]
    assert b"".join(reads) == b"".join(events)
    (sent_in,) = sending_s
    assert len(reads) <= min(sent_in / 0.001 + 20, len(events) - 1), (len(reads), sent_in)
