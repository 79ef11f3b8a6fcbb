"""Malformed HTTP, sent on raw sockets: what aiohttp's parser refuses is answered 400 by aiohttp
itself, never reaches the upstream, and is logged as one ``bad_http_request`` event that quotes
nothing the client sent (aiohttp's own report quotes the refused header line, token included).
No answer of the gateway or its admin listener names the Python or aiohttp version.

Both in-process (the session's log sink) and as the real ``python -m gateway serve`` process
(its stdout and stderr, as an operator sees them), with aiohttp's C parser and its pure-Python
one, whose messages and exception classes differ.
"""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from gateway.web.app import SERVER_HEADER
from tests.conftest import GatewayFactory, LogSink, Upstream, single_route_config
from tests.support.issuer import TestIssuer
from tests.support.processes import start_gateway_process

RESOURCE = "http://127.0.0.1:8080/mcp"
BODY = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
# Header values that would give the software away.
VERSION_MARKERS = ("aiohttp", "python/", "python ")


def post(headers: bytes, body: bytes = BODY, *, chunked: bool = False) -> bytes:
    """A POST to /mcp with the usual MCP headers plus ``headers`` (complete header lines)."""
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: %d\r\n" % len(body)
    return (
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
        + headers
        + framing
        + b"\r\n"
        + body
    )


def bearer(token: bytes, tail: bytes = b"") -> bytes:
    return b"Authorization: Bearer " + token + tail + b"\r\n"


@dataclass(frozen=True)
class Malformed:
    """One malformed request, built around a valid token; after ``preamble``, a good request
    answered first on the same connection, if any."""

    name: str
    build: Callable[[bytes], bytes]
    preamble: bytes = b""


METADATA_GET = b"GET /.well-known/oauth-protected-resource/mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

MALFORMED = [
    Malformed("token then CR", lambda token: post(bearer(token, b"\r"))),
    Malformed("token then NUL", lambda token: post(bearer(token, b"\x00"))),
    Malformed("token then 0x01", lambda token: post(bearer(token, b"\x01"))),
    Malformed("token then DEL", lambda token: post(bearer(token, b"\x7f"))),
    Malformed(
        "header line without colon", lambda token: post(bearer(token) + b"X-Note Bearer " + token + b"\r\n")
    ),
    Malformed("space before the colon", lambda token: post(b"Authorization : Bearer " + token + b"\r\n")),
    Malformed(
        "over-long header", lambda token: post(bearer(token) + b"X-Long: " + token + b"a" * 9000 + b"\r\n")
    ),
    Malformed("obs-fold continuation", lambda token: post(b"Authorization: Bearer\r\n " + token + b"\r\n")),
    Malformed(
        "invalid chunk size",
        lambda token: post(bearer(token), b"zz" + token + b"\r\n" + BODY + b"\r\n0\r\n\r\n", chunked=True),
    ),
    Malformed(
        "chunk longer than its size",
        lambda token: post(
            bearer(token), b"%x\r\n" % len(BODY) + BODY + token + b"\r\n0\r\n\r\n", chunked=True
        ),
    ),
    Malformed(
        "Content-Length and chunked",
        lambda token: post(bearer(token) + b"Content-Length: 2\r\n", b"2\r\n{}\r\n0\r\n\r\n", chunked=True),
    ),
    Malformed("two Content-Lengths", lambda token: post(bearer(token) + b"Content-Length: 3\r\n")),
    Malformed("HTTP/0.9-style request line", lambda token: b"GET /mcp " + token + b"\r\n\r\n"),
    Malformed(
        "binary garbage (TLS on a plain port)", lambda token: b"\x16\x03\x01\x02\x00" + token + b"\r\n\r\n"
    ),
    Malformed("bad method", lambda token: b"G(T /mcp HTTP/1.1\r\n" + bearer(token) + b"\r\n"),
    Malformed(
        "control byte in the request target",
        lambda token: b"GET /mcp?access_token=" + token + b"\x01 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ),
    # After a good request on the same connection aiohttp logs a bad method as an error, not at debug.
    Malformed(
        "bad method on a kept-alive connection",
        lambda token: b"G(T /mcp HTTP/1.1\r\n" + bearer(token) + b"\r\n",
        preamble=METADATA_GET,
    ),
    Malformed(
        "token then 0x01 on a kept-alive connection",
        lambda token: post(bearer(token, b"\x01")),
        preamble=METADATA_GET,
    ),
]


@dataclass
class Answer:
    status: int
    header_lines: list[str]

    def headers(self, name: str) -> list[str]:
        prefix = name.lower() + ":"
        return [
            line.split(":", 1)[1].strip() for line in self.header_lines if line.lower().startswith(prefix)
        ]


def parse_answers(raw: bytes) -> list[Answer]:
    """The HTTP responses in ``raw``, in order (each has a Content-Length, or ends the connection)."""
    answers = []
    while raw:
        head, separator, rest = raw.partition(b"\r\n\r\n")
        assert separator, f"no complete response head in {raw[:200]!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        answer = Answer(int(status_line.split(" ")[1]), lines)
        answers.append(answer)
        length = answer.headers("Content-Length")
        raw = rest[int(length[0]) :] if length else b""
    return answers


async def exchange(url: str, raw: bytes, preamble: bytes = b"") -> list[Answer]:
    """On a fresh connection, send ``preamble`` and read its answer (if any), then send ``raw``
    and read until the gateway closes the connection."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    data = b""
    try:
        if preamble:
            writer.write(preamble)
            data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            [length] = parse_answers(data)[0].headers("Content-Length")
            data += await asyncio.wait_for(reader.readexactly(int(length)), 10)
        writer.write(raw)
        await writer.drain()
        data += await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    return parse_answers(data)


def assert_no_version(answer: Answer, what: str) -> None:
    assert answer.headers("Server") == [SERVER_HEADER], f"{what}: {answer.header_lines}"
    for line in answer.header_lines:
        assert not any(marker in line.lower() for marker in VERSION_MARKERS), f"{what}: {line}"


def assert_logged_once(new_log: str, token: str, what: str) -> None:
    """The output since the request: JSON events only, exactly one ``bad_http_request``, and no
    piece of the token nor a traceback."""
    lines = new_log.splitlines()
    assert all(line.startswith("{") for line in lines), f"{what}: not only JSON events:\n{new_log}"
    bad_requests = [event for event in map(json.loads, lines) if event["event"] == "bad_http_request"]
    assert len(bad_requests) == 1, f"{what}: {len(bad_requests)} bad_http_request events:\n{new_log}"
    assert bad_requests[0]["status"] == 400, f"{what}: {bad_requests[0]}"
    assert token.rsplit(".", 1)[1] not in new_log, f"{what}: the token's signature is in the log"
    # Each segment of a JWT starts "eyJ"; redaction masks whole tokens, so a piece would be a leak.
    assert "eyJ" not in new_log, f"{what}: part of the token is in the log:\n{new_log}"
    assert "Traceback" not in new_log, f"{what}: a traceback is in the log:\n{new_log}"


async def check_malformed(
    url: str, case: Malformed, token: str, read_log: Callable[[], Awaitable[str]]
) -> None:
    """One malformed request: aiohttp's 400 without a version, and exactly one clean log event.

    The gateway writes (and flushes) the event before it answers, so reading after the answer
    sees it.
    """
    before = await read_log()
    answers = await exchange(url, case.build(token.encode()), case.preamble)
    assert [answer.status for answer in answers] == [200] * bool(case.preamble) + [400], case.name
    for answer in answers:
        assert_no_version(answer, case.name)
    assert_logged_once((await read_log())[len(before) :], token, case.name)


# --- in-process -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", MALFORMED, ids=[case.name for case in MALFORMED])
async def test_a_malformed_request_is_refused_by_aiohttp_and_logged_once_without_the_token(
    issuer: TestIssuer,
    upstream: Upstream,
    start_gateway_with: GatewayFactory,
    gateway_logs: LogSink,
    case: Malformed,
) -> None:
    """A valid token in a request aiohttp cannot parse: 400 with a version-less `Server`, the
    upstream receives nothing, and the log has one `bad_http_request` and no piece of the token."""
    gateway = await start_gateway_with(single_route_config(issuer, upstream.mcp_url))

    async def read_log() -> str:
        return gateway_logs.getvalue()

    await check_malformed(gateway.url, case, issuer.mint(audience=RESOURCE), read_log)
    assert await upstream.requests() == []


async def test_no_answer_of_the_gateway_or_its_admin_listener_names_a_version(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """Metadata, a 401, a 404, health and metrics answers: `Server` names the gateway, no version."""
    gateway = await start_gateway_with(
        single_route_config(issuer, upstream.mcp_url) + "\n        admin: {host: 127.0.0.1, port: 0}\n"
    )
    assert gateway.admin_url is not None
    await check_version_less_answers(gateway.url, gateway.admin_url)
    assert await upstream.requests() == []


async def check_version_less_answers(url: str, admin_url: str) -> None:
    requests = [
        ("GET", url + "/.well-known/oauth-protected-resource/mcp", 200),
        ("POST", url + "/mcp", 401),
        ("GET", url + "/no-such-route", 404),
        ("GET", url + "/healthz", 200),
        ("GET", admin_url + "/metrics", 200),
        ("HEAD", admin_url + "/metrics", 200),
        ("GET", admin_url + "/no-such-page", 404),
    ]
    async with aiohttp.ClientSession() as http:
        for method, target, status in requests:
            async with http.request(method, target, data=BODY if method == "POST" else None) as response:
                assert response.status == status, (method, target)
                assert response.headers.getall("Server") == [SERVER_HEADER], (method, target)
                for name, value in response.headers.items():
                    assert not any(marker in value.lower() for marker in VERSION_MARKERS), (
                        target,
                        name,
                        value,
                    )


# --- the real process -------------------------------------------------------------------------


@pytest.mark.parametrize("parser", ["c", "python"])
async def test_the_serve_process_writes_one_clean_event_per_malformed_request(
    issuer: TestIssuer, upstream: Upstream, tmp_path: Path, parser: str
) -> None:
    """`mcp-auth-gateway serve`, with aiohttp's C parser and its pure-Python one: every malformed
    request is answered 400 without a version, reaches no upstream, and its stdout/stderr hold
    one `bad_http_request` per request, no traceback and no piece of any token."""
    config_path = tmp_path / "gateway.yaml"
    config = (
        textwrap.dedent(single_route_config(issuer, upstream.mcp_url)) + "admin: {host: 127.0.0.1, port: 0}\n"
    )
    await asyncio.to_thread(config_path.write_text, config)
    env = dict(os.environ)
    env.pop("AIOHTTP_NO_EXTENSIONS", None)
    if parser == "python":  # aiohttp reads it at import: the process then parses in pure Python
        env["AIOHTTP_NO_EXTENSIONS"] = "1"
    async with start_gateway_process(config_path, tmp_path / "gateway.log", env=env) as gateway:
        for case in MALFORMED:
            await check_malformed(gateway.url, case, issuer.mint(audience=RESOURCE), gateway.log_text)
        events = await gateway.events()
        errors = {event["error"] for event in events if event.get("event") == "bad_http_request"}
        # The pure-Python parser raises its own classes (InvalidHeader for a bad header line).
        assert ("InvalidHeader" in errors) == (parser == "python"), errors
        (admin,) = [event for event in events if event.get("event") == "admin_listening"]
        await check_version_less_answers(gateway.url, f"http://127.0.0.1:{admin['port']}")
        output = await gateway.log_text()
        assert all(line.startswith("{") for line in output.splitlines()), f"not only JSON events:\n{output}"
    assert await upstream.requests() == []
