"""A hostile upstream for tests: answers every request with exactly the bytes a test scripts.

Not an MCP server. A raw HTTP/1.1 server on 127.0.0.1 (asyncio streams, no HTTP library), so a
test can send what no well-behaved server would: two ``Content-Type`` headers, a compressed body
the gateway never asked for, a redirect, a 401 challenge, cookies, U+2028 inside an SSE field.
Every request is recorded (method, target with its query string, headers, body) before the
answer goes out; each connection serves one request and is closed.

Usage::

    async with canned_upstream(Canned(200, [("Content-Type", "application/json")], body)) as up:
        ... up.url ...; up.requests; up.answer = Canned(...)  # the next requests get that
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Canned:
    """One scripted answer: status, headers in order (duplicates allowed), body.

    ``body`` bytes get a Content-Length; a tuple of chunks is sent chunked (an empty tuple: an
    empty chunked body; a Transfer-Encoding among ``headers`` replaces the plain ``chunked``);
    ``close_delimited`` sends the bytes and closes, with no length at all.
    """

    status: int = 200
    headers: Sequence[tuple[str, str]] = ()
    body: bytes | tuple[bytes, ...] = b""
    close_delimited: bool = False

    def encode(self) -> bytes:
        head = [f"HTTP/1.1 {self.status} Canned", *(f"{name}: {value}" for name, value in self.headers)]
        if isinstance(self.body, tuple):
            if not any(name.lower() == "transfer-encoding" for name, _ in self.headers):
                head.append("Transfer-Encoding: chunked")
            payload = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in self.body if chunk)
            payload += b"0\r\n\r\n"
        elif self.close_delimited:
            payload = self.body
        else:
            head.append(f"Content-Length: {len(self.body)}")
            payload = self.body
        head.append("Connection: close")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload


@dataclass(frozen=True)
class Recorded:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class CannedUpstream:
    answer: Canned
    url: str = ""
    requests: list[Recorded] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
            method, target, _ = request_line.split(" ", 2)
            fields = (line.partition(":") for line in header_lines)
            headers = [(name.strip(), value.strip()) for name, _, value in fields]
            length = next((int(v) for n, v in headers if n.lower() == "content-length"), 0)
            body = await reader.readexactly(length) if length else b""
            self.requests.append(Recorded(method, target, headers, body))
            writer.write(self.answer.encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the gateway went away: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def canned_upstream(answer: Canned) -> AsyncIterator[CannedUpstream]:
    """A running CannedUpstream at ``url`` (``/mcp`` on a free loopback port)."""
    upstream = CannedUpstream(answer)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp"
    try:
        yield upstream
    finally:
        server.close()
        await server.wait_closed()
