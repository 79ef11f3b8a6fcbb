"""``send_answer``: a buffered answer goes out before the rest of its request's task runs.

On a real aiohttp server and client: the client has the whole answer while the handler is still
held after the call, aiohttp writes nothing more when the handler returns (the kept-alive
connection carries the next request's answer, not a second copy), and a client that left before
the answer costs no error.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from gateway.upstream.proxy import STREAMED_STATUS
from gateway.web.pipeline import send_answer, written_without_waiting

Held = tuple[TestClient[web.Request, web.Application], asyncio.Event, list[str]]


@pytest.fixture
async def held_server() -> AsyncIterator[Held]:
    """A server whose handler sends its answer, then waits for ``release`` before returning."""
    release = asyncio.Event()
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        answer = await send_answer(request, web.json_response({"n": request.query.get("n")}))
        seen.append(f"sent {request[STREAMED_STATUS]}")
        await release.wait()
        seen.append("returned")
        return answer

    app = web.Application()
    app.router.add_get("/", handler)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client, release, seen
    release.set()
    await client.close()


async def test_the_client_has_the_answer_while_the_handler_is_still_running(
    held_server: Held,
) -> None:
    """The whole body arrives before the handler returns; once it has, the same connection
    answers the next request with that request's own body (nothing written twice)."""
    client, release, seen = held_server
    async with client.get("/?n=1") as first:
        assert await asyncio.wait_for(first.json(), 5) == {"n": "1"}
    assert seen == ["sent 200"]  # the handler is still waiting
    release.set()
    async with client.get("/?n=2") as second:
        assert (second.status, await second.json()) == (200, {"n": "2"})
    assert seen == ["sent 200", "returned", "sent 200", "returned"]
    connector = client.session.connector
    assert connector is not None and len(connector._conns) == 1  # one kept-alive connection served both


async def test_a_client_that_left_costs_no_error(caplog: pytest.LogCaptureFixture) -> None:
    """The client closes before the answer is written: ``send_answer`` returns the answer without
    raising and aiohttp logs no error for the request."""
    written: asyncio.Future[web.StreamResponse] = asyncio.get_running_loop().create_future()

    async def handler(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        # aiohttp has no event for a lost connection that a handler could wait on.
        while transport is not None and not transport.is_closing():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        answer = await send_answer(request, web.Response(text="late"))
        written.set_result(answer)
        return answer

    app = web.Application()
    app.router.add_get("/", handler)
    server = TestServer(app)
    await server.start_server()
    try:
        with caplog.at_level(logging.DEBUG, logger="aiohttp"):
            _, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(f"GET / HTTP/1.1\r\nHost: {server.host}\r\n\r\n".encode())
            await writer.drain()
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            writer.close()  # a reset: the server's transport closes at once
            answer = await asyncio.wait_for(written, 5)
            await asyncio.sleep(0.05)  # aiohttp finishes the request
        assert answer.status == 200
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    finally:
        await server.close()


async def test_an_answer_past_the_write_buffer_is_left_to_aiohttp() -> None:
    """An answer larger than the connection's write buffer holds would make its write wait for
    the client to read: ``send_answer`` leaves it unsent (the handler's bookkeeping is not held
    up by a slow reader), and aiohttp sends all of it once the handler returns."""
    size = 1024 * 1024  # past the 64 KiB high-water mark of asyncio's and uvloop's transports
    prepared_after_send: list[bool] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        answer = await send_answer(request, web.Response(body=b"x" * size))
        prepared_after_send.append(answer.prepared)
        return answer

    app = web.Application()
    app.router.add_get("/", handler)
    async with TestClient(TestServer(app)) as client, client.get("/") as response:
        assert (response.status, len(await response.read())) == (200, size)
    assert prepared_after_send == [False]


class _Buffered:
    """A transport's write-buffer figures, as asyncio's and uvloop's report them."""

    def __init__(self, waiting: int, high: int = 64 * 1024) -> None:
        self.waiting, self.high = waiting, high

    def get_write_buffer_size(self) -> int:
        return self.waiting

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.high // 4, self.high

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, _name: str, default: object = None) -> object:
        return default


@pytest.mark.parametrize(
    ("waiting", "body", "written"),
    [
        (0, 100, True),
        (0, 60 * 1024, True),  # with its headers, within 64 KiB
        (0, 64 * 1024, False),  # its headers take it past
        (40 * 1024, 100, True),  # behind what an earlier answer left waiting, still within
        (40 * 1024, 30 * 1024, False),
        (64 * 1024, 0, False),  # a client that reads nothing: not even an empty answer waits there
    ],
)
def test_what_still_waits_for_the_client_counts_against_the_buffer(
    waiting: int, body: int, written: bool
) -> None:
    """The answer is written at once only if, with what of the connection still waits in the
    write buffer, its headers and body stay within the high-water mark."""
    request = make_mocked_request("POST", "/mcp", transport=_Buffered(waiting))
    answer = web.Response(body=b"z" * body, headers={"X-Request-Id": "r" * 32})
    assert written_without_waiting(request, answer) is written


def test_an_answer_of_unknown_size_is_left_to_aiohttp() -> None:
    """A payload object's size is not known before it is written: never written early."""
    request = make_mocked_request("POST", "/mcp", transport=_Buffered(0))
    assert written_without_waiting(request, web.Response(body=io.BytesIO(b"a"))) is False
