"""The upstream leg's HTTP/1.1 client (gateway.upstream.http_client) against a raw TCP server that
answers exactly the bytes each test scripts: framing, keep-alive, what is refused, what is retried."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.upstream.http_client import (
    AnswerBroken,
    ConnectFailed,
    UpstreamAnswer,
    UpstreamClient,
)

Answer = Callable[[int, bytes], bytes | None]  # (request number, request) -> bytes, None: close


@dataclass
class RawServer:
    """Reads whole requests (headers + Content-Length body) and writes what ``answer`` returns."""

    answer: Answer
    close_after_answer: bool = False
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                request = head + (await reader.readexactly(length) if length else b"")
                self.requests.append(request)
                out = self.answer(len(self.requests), request)
                if out is None:
                    break
                writer.write(out)
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def raw_server(answer: Answer, *, close_after_answer: bool = False) -> AsyncIterator[RawServer]:
    state = RawServer(answer, close_after_answer=close_after_answer)
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    state.url = f"http://127.0.0.1:{port}/mcp"
    try:
        yield state
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


@contextlib.asynccontextmanager
async def client_for(server: RawServer, **options: float) -> AsyncIterator[UpstreamClient]:
    client = UpstreamClient(server.url, connect_timeout_s=2, **options)
    try:
        yield client
    finally:
        await client.aclose()


def ok(body: bytes = b'{"ok":true}', *extra: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in extra)
    status = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (status + head + "\r\n").encode() + body


async def body_of(answer: UpstreamAnswer) -> bytes:
    data = b""
    async with answer:
        while chunk := await answer.content.readany():
            data += chunk
    return data


async def post(client: UpstreamClient, body: bytes = b"{}", **headers: str) -> UpstreamAnswer:
    return await client.request("POST", "/mcp", body, {"Content-Type": "application/json", **headers})


async def test_a_kept_alive_connection_carries_the_next_request() -> None:
    """Two answers read to their end: one connection for both."""
    async with raw_server(lambda n, _: ok(b'{"n":%d}' % n)) as server, client_for(server) as client:
        assert await body_of(await post(client)) == b'{"n":1}'
        assert await body_of(await post(client)) == b'{"n":2}'
    assert server.connections == 1


async def test_the_request_is_written_as_one_http11_request_with_host_and_length() -> None:
    """The request line keeps path and query, Host names the port, a body has its length, a GET none."""
    async with raw_server(lambda n, _: ok()) as server, client_for(server) as client:
        json_type = {"Content-Type": "application/json"}
        await body_of(await client.request("POST", "/mcp?x=1", b"hello", json_type))
        await body_of(await client.request("GET", "/mcp", None, {"Accept": "text/event-stream"}))
    port = server.url.split(":")[2].split("/")[0]
    first, second = server.requests
    assert first.startswith(b"POST /mcp?x=1 HTTP/1.1\r\nHost: 127.0.0.1:" + port.encode() + b"\r\n")
    assert b"\r\nContent-Length: 5\r\n" in first and first.endswith(b"\r\n\r\nhello")
    assert second.startswith(b"GET /mcp HTTP/1.1\r\n") and b"Content-Length" not in second
    assert b"\r\nAccept: text/event-stream\r\n" in second


async def test_framing_headers_of_the_caller_are_never_written() -> None:
    """Content-Length, Transfer-Encoding, Host and Connection are the client's own."""
    async with raw_server(lambda n, _: ok()) as server, client_for(server) as client:
        sneaky = {
            "Transfer-Encoding": "chunked",
            "Content-Length": "999",
            "Host": "evil",
            "Connection": "close",
        }
        await body_of(await client.request("POST", "/mcp", b"{}", sneaky))
    (request,) = server.requests
    assert b"chunked" not in request and b"999" not in request and b"evil" not in request
    assert b"Connection" not in request and request.endswith(b"\r\nContent-Length: 2\r\n\r\n{}")


@pytest.mark.parametrize(
    "name, value",
    [("X-A", "v\r\nX-Injected: 1"), ("X-A", "v\nX"), ("X-A", "v\rX"), ("X-A\r\nX-B", "v"), ("X:A", "v")],
)
async def test_a_header_with_cr_lf_or_a_colon_in_its_name_is_refused_before_anything_is_sent(
    name: str, value: str
) -> None:
    """No request splitting: such a header is a ValueError and the upstream sees no connection."""
    async with raw_server(lambda n, _: ok()) as server, client_for(server) as client:
        with pytest.raises(ValueError):
            await client.request("POST", "/mcp", b"{}", {name: value})
        await asyncio.sleep(0.05)
    assert server.requests == [] and server.connections == 0


async def test_a_chunked_body_is_decoded() -> None:
    """Chunk framing is removed, and the connection carries the next request."""
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    async with raw_server(lambda n, _: chunked) as server, client_for(server) as client:
        answer = await post(client)
        assert answer.content_length is None
        assert await body_of(answer) == b"abcde"
        assert await body_of(await post(client)) == b"abcde"
    assert server.connections == 1


async def test_a_body_without_length_is_read_to_the_close_and_the_connection_not_reused() -> None:
    """An answer framed by the close ends at the close; the next request opens a new connection."""
    until_close = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{}"
    closing = raw_server(lambda n, _: until_close, close_after_answer=True)
    async with closing as server, client_for(server) as client:
        assert await body_of(await post(client)) == b"{}"
        assert await body_of(await post(client)) == b"{}"
    assert server.connections == 2


async def test_connection_close_is_honoured() -> None:
    """An answer with Connection: close retires its connection."""
    closing = raw_server(lambda n, _: ok(b"{}", "Connection: close"))
    async with closing as server, client_for(server) as client:
        await body_of(await post(client))
        await body_of(await post(client))
    assert server.connections == 2


async def test_an_answer_left_unread_closes_its_connection() -> None:
    """Leaving an answer unread closes its connection rather than pooling one mid-body."""
    big = ok(b"x" * 300_000)
    async with raw_server(lambda n, _: big) as server, client_for(server) as client:
        async with await post(client) as answer:
            assert answer.status == 200
        assert await body_of(await post(client)) == b"x" * 300_000
    assert server.connections == 2


async def test_an_unread_body_pauses_the_socket_until_it_is_read() -> None:
    """A 2 MB body nobody reads pauses the socket (bounded memory); all of it arrives once read."""
    big = ok(b"y" * 2_000_000)
    async with raw_server(lambda n, _: big) as server, client_for(server) as client:
        answer = await post(client)
        await asyncio.sleep(0.2)
        transport = answer.transport
        assert transport is not None and not transport.is_reading()
        assert len(await body_of(answer)) == 2_000_000


async def test_an_interim_1xx_answer_is_skipped() -> None:
    """A 103 Early Hints answer is skipped: status and headers are the final answer's."""
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n" + ok(b"{}", "X-Real: yes")
    async with raw_server(lambda n, _: hints) as server, client_for(server) as client:
        answer = await post(client)
        assert answer.status == 200 and answer.headers["X-Real"] == "yes" and "Link" not in answer.headers
        assert await body_of(answer) == b"{}"


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nX-A: a\nb\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"NOT HTTP\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 17 + ok(),
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n{}",
    ],
    ids=[
        "length-and-chunked",
        "two-lengths",
        "bare-lf-in-header",
        "bad-status",
        "no-status-line",
        "headers-past-64k",
        "endless-interim-answers",
        "upgrade",
        "length-plus-sign",
        "length-list",
        "length-overflow",
    ],
)
async def test_a_malformed_answer_breaks_the_exchange(raw: bytes) -> None:
    """llhttp's strictness and our bounds: each of these is AnswerBroken, never an answer."""
    async with raw_server(lambda n, _: raw) as server, client_for(server) as client:
        with pytest.raises(AnswerBroken):
            async with asyncio.timeout(5):
                await body_of(await post(client))


async def test_bad_chunk_framing_breaks_the_body() -> None:
    """A chunk size that is no hex number breaks the body."""
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
    async with raw_server(lambda n, _: raw) as server, client_for(server) as client:
        with pytest.raises(AnswerBroken):
            await body_of(await post(client))


async def test_a_body_cut_short_breaks_the_read_rather_than_looking_complete() -> None:
    """Fewer bytes than the Content-Length, then the close: the read fails, it does not end cleanly."""
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}"
    async with raw_server(lambda n, _: cut, close_after_answer=True) as server, client_for(server) as client:
        answer = await post(client)
        with pytest.raises(AnswerBroken):
            await body_of(answer)


async def test_a_second_unasked_answer_on_the_connection_retires_it() -> None:
    """Bytes past the end of an answer are not taken as the next request's answer."""
    twice = raw_server(lambda n, _: ok(b'{"n":%d}' % n) + ok(b'{"smuggled":1}'))
    async with twice as server, client_for(server) as client:
        assert await body_of(await post(client)) == b'{"n":1}'
        await asyncio.sleep(0.05)
        assert await body_of(await post(client)) == b'{"n":2}'
    assert server.connections == 2


@pytest.mark.parametrize("method, retried", [("GET", True), ("DELETE", True), ("POST", False)])
async def test_a_reused_connection_closed_unanswered_is_retried_only_for_idempotent_methods(
    method: str, retried: bool
) -> None:
    """The upstream takes the second request on a kept-alive connection and closes it unanswered."""
    async with raw_server(lambda n, _: None if n == 2 else ok()) as server, client_for(server) as client:
        await body_of(await client.request(method, "/mcp", None, {}))
        if retried:
            assert (await client.request(method, "/mcp", None, {})).status == 200
        else:
            with pytest.raises(AnswerBroken):
                await client.request(method, "/mcp", None, {})
    assert len(server.requests) == (3 if retried else 2)


async def test_an_idle_connection_past_its_keepalive_is_not_reused() -> None:
    """A connection idle past keepalive_s is closed, not reused."""
    async with raw_server(lambda n, _: ok()) as server, client_for(server, keepalive_s=0.05) as client:
        await body_of(await post(client))
        await asyncio.sleep(0.15)
        await body_of(await post(client))
    assert server.connections == 2


async def test_a_refused_connect_is_a_connect_failure() -> None:
    """A port that refuses is ConnectFailed (the failure the proxy retries once)."""
    async with raw_server(lambda n, _: ok()) as server:
        url = server.url
    client = UpstreamClient(url, connect_timeout_s=2)  # the server is gone: the port refuses
    try:
        with pytest.raises(ConnectFailed):
            await post(client)
    finally:
        await client.aclose()


async def test_cancelling_the_wait_for_headers_closes_the_connection() -> None:
    """The upstream sees the client go away (MCP 2026-07-28: closing is cancellation)."""
    gone = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.read()  # returns at the client's close
        gone.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = UpstreamClient(f"http://127.0.0.1:{port}/mcp", connect_timeout_s=2)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await client.request("POST", "/mcp", b"{}", {})
        async with asyncio.timeout(2):
            await gone.wait()
    finally:
        await client.aclose()
        server.close()


@pytest.mark.parametrize(
    "raw, body, connections",
    [
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}", b"{}", 2),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}", b"{}", 1),
        (b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, CLOSE\r\nContent-Length: 2\r\n\r\n{}", b"{}", 2),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", b"{}", 1),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: CHUNKED\r\n\r\n2\r\n{}\r\n0\r\n\r\n", b"{}", 1),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 002\r\n\r\n{}", b"{}", 1),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"", 1),
        # A 204 has no body whatever it says: its two bytes are no answer, and retire the connection.
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\n{}", b"", 2),
    ],
    ids=[
        "http10",
        "http10-keep-alive",
        "close-among-tokens",
        "chunked-last-coding",
        "chunked-uppercase",
        "length-leading-zeros",
        "204",
        "204-with-bytes",
    ],
)
async def test_framing_and_keep_alive_as_llhttp_reads_them(raw: bytes, body: bytes, connections: int) -> None:
    """Each answer twice: its body as framed, and a connection reused only when the answer says so."""
    async with raw_server(lambda n, _: raw) as server, client_for(server) as client, asyncio.timeout(5):
        assert await body_of(await post(client)) == body
        assert await body_of(await post(client)) == body
    assert server.connections == connections


async def test_cancelling_mid_body_retires_the_connection_and_the_next_caller_gets_its_own_answer() -> None:
    """A caller that stops reading halfway (cancelled) never leaves its rest for the next one."""
    half = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345"

    def answer(n: int, _: bytes) -> bytes:
        return half if n == 1 else ok(b'{"n":2}')

    async with raw_server(answer) as server, client_for(server) as client:
        answer_one = await post(client)
        with pytest.raises(TimeoutError):
            async with answer_one, asyncio.timeout(0.1):
                while await answer_one.content.readany():
                    pass
        assert await body_of(await post(client)) == b'{"n":2}'
    assert server.connections == 2


async def test_failed_exchanges_leave_no_open_descriptor() -> None:
    """200 broken, cut and abandoned answers: the process holds no more sockets afterwards."""
    raws = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",
        ok(b"x" * 1000),
    ]

    async def open_descriptors() -> int:
        return len(await asyncio.to_thread(lambda: list(Path("/proc/self/fd").iterdir())))

    async with raw_server(lambda n, _: raws[n % 3]) as server:  # only the client closes
        async with client_for(server) as client:
            before = await open_descriptors()
            for _ in range(200):
                with contextlib.suppress(AnswerBroken):
                    async with await post(client) as answer:
                        await answer.content.readany()
            await asyncio.sleep(0.1)
            # At most the pool's one kept-alive connection, both of its ends (the server is in this process).
            assert await open_descriptors() <= before + 2


async def test_a_chunked_answers_trailer_never_becomes_the_next_answers_headers() -> None:
    """Trailer fields are read and dropped: the next caller on the connection sees only its own."""
    with_trailer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\nMcp-Session-Id: victim\r\nContent-Type: text/event-stream\r\n\r\n"
    )
    answers = {1: with_trailer, 2: ok(b'{"n":2}')}
    async with raw_server(lambda n, _: answers[n]) as server, client_for(server) as client:
        first = await post(client)
        assert await body_of(first) == b"{}" and "Mcp-Session-Id" not in first.headers
        second = await post(client)
        assert await body_of(second) == b'{"n":2}'
    assert "Mcp-Session-Id" not in second.headers
    assert second.headers.getall("Content-Type") == ["application/json"]


@pytest.mark.parametrize(
    "tail",
    [b"HTTP/1.1 403 Smuggled\r\nX-Smuggled: ", b"HTTP/1.1 403 ", b"H"],
    ids=["half-header", "half-status", "one-byte"],
)
async def test_the_start_of_another_answer_behind_a_complete_one_retires_the_connection(tail: bytes) -> None:
    """Bytes behind an answer in the same read are no part of the next caller's answer."""
    answers = {1: ok(b'{"n":1}') + tail, 2: ok(b'{"n":2}')}
    async with raw_server(lambda n, _: answers[n]) as server, client_for(server) as client:
        assert await body_of(await post(client)) == b'{"n":1}'
        second = await post(client)
        assert await body_of(second) == b'{"n":2}'
    assert second.status == 200 and "X-Smuggled" not in second.headers
    assert server.connections == 2


async def test_a_204_with_an_answer_behind_it_retires_the_connection() -> None:
    """A 204's would-be body that looks like an answer is never the next caller's."""
    answers = {1: b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 403 X", 2: ok(b'{"n":2}')}
    async with raw_server(lambda n, _: answers[n]) as server, client_for(server) as client:
        first = await post(client)
        assert first.status == 204 and await body_of(first) == b""
        second = await post(client)
        assert second.status == 200 and await body_of(second) == b'{"n":2}'


async def test_an_endless_trailer_is_bounded() -> None:
    """A trailer field that never ends (llhttp holds it whole) breaks the body at 64 KiB."""
    flood = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"6\r\ndata:\n\r\n0\r\nX-T: " + b"a" * 300_000
    )
    async with raw_server(lambda n, _: flood) as server, client_for(server) as client:
        answer = await post(client)
        with pytest.raises(AnswerBroken):
            async with asyncio.timeout(5):
                await body_of(answer)


@pytest.mark.parametrize(
    "url, target",
    [
        ("http://h.example/mcp/é?q=ü", "/mcp/%C3%A9?q=%C3%BC"),
        ("http://h.example/a/../mcp", "/mcp"),
        ("http://h.example/mcp/%zz", "/mcp/%25zz"),
        ("http://h.example", "/"),
    ],
)
def test_the_target_is_percent_encoded_and_normalised_as_aiohttp_sent_it(url: str, target: str) -> None:
    """A raw non-ASCII target is refused by strict servers (h11: 400)."""
    assert UpstreamClient(url, connect_timeout_s=1).target(url) == target


@pytest.mark.parametrize(
    "url, host_line",
    [
        ("http://[::1]:8080/mcp", b"Host: [::1]:8080\r\n"),
        ("http://127.0.0.1:80/mcp", b"Host: 127.0.0.1\r\n"),
        ("https://b\u00fccher.example/mcp", b"Host: xn--bcher-kva.example\r\n"),
        ("https://h.example:8443/mcp", b"Host: h.example:8443\r\n"),
    ],
)
def test_the_host_line_names_the_port_only_when_it_is_not_the_default(url: str, host_line: bytes) -> None:
    """IPv6 in brackets, an IDN host in its ASCII form, as aiohttp sent them."""
    client = UpstreamClient(url, connect_timeout_s=1)
    head = client._head("GET", client.target(url), None, {})
    assert head.split(b"\r\n", 1)[1].startswith(host_line)


@pytest.mark.parametrize("split", [None, 16 * 1024], ids=["one-read", "16k-reads"])
async def test_a_head_under_the_field_limit_passes_however_it_is_split(split: int | None) -> None:
    """62.7 KB of header fields (67 KB as sent), the body in a later read: within the 64 KiB of
    fields, so accepted whether the head comes whole or in pieces (no read of the head counts
    toward the bound on bytes without body)."""
    fields = "".join(f"X-F{i:04}: {'v' * 50}\r\n" for i in range(1100))
    head = (f"HTTP/1.1 200 OK\r\n{fields}Content-Length: 2\r\n\r\n").encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        step = split or len(head)
        for at in range(0, len(head), step):
            writer.write(head[at : at + step])
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"{}")
        await reader.read()  # until the client closes
        writer.close()
        done.set()

    done = asyncio.Event()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp"
    client = UpstreamClient(url, connect_timeout_s=2)
    try:
        async with asyncio.timeout(5):
            answer = await client.request("GET", "/mcp", None, {})
            assert await body_of(answer) == b"{}"
    finally:
        await client.aclose()
        async with asyncio.timeout(5):
            await done.wait()
        server.close()
        await server.wait_closed()
