"""Prompt TCP acknowledgements on upstream connections (gateway.upstream.proxy.PromptAcks).

What it saves is latency (a 40 ms delayed-ACK stall per answer from upstreams without
TCP_NODELAY, such as the official Python SDK's uvicorn server); that is measured by the benchmark
(tests/bench: SDK upstream, kept-alive connections). Here: that it acts on the socket the answer
came on, which the kernel reports through getsockopt (TCP_QUICKACK reads 0 in delayed-ACK mode).
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.upstream.http_client import UpstreamClient
from gateway.upstream.proxy import PromptAcks

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux-only")


async def test_prompt_acks_switch_the_answers_own_socket_to_immediate_acks() -> None:
    """`PromptAcks.now()` turns on TCP_QUICKACK on the socket the answer is arriving on."""
    rest_may_follow = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"hel")
        await rest_may_follow.wait()  # the answer is still open while the test looks at it
        await response.write(b"lo")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/", stream)
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("/"))
        client = UpstreamClient(url, connect_timeout_s=5)
        try:
            async with await client.request("GET", client.target(url), None, {}) as response:
                assert response.transport is not None
                sock = response.transport.get_extra_info("socket")
                # What the kernel does by itself on a kept-alive connection that has just sent a request.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 0
                PromptAcks(response).now()
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
                rest_may_follow.set()
                body = b""
                while chunk := await response.content.readany():
                    body += chunk
                assert body == b"hello"
        finally:
            await client.aclose()
