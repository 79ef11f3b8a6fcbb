"""Rate limits through the real gateway, in front of the SDK upstream (memory store).

A refused call is a 429 with Retry-After, the IETF RateLimit headers and a JSON-RPC error that says
when to retry; the upstream receives nothing of it. Limits are keyed on who calls and what:
another caller, or another tool, has its own budget.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest

from gateway.web import listener
from tests.conftest import Gateway, GatewayFactory, LogSink, Upstream
from tests.integration.test_authentication import MCP_HEADERS
from tests.integration.test_lifecycle import eventually
from tests.support.issuer import TestIssuer
from tests.support.processes import record_json

RESOURCE = "http://127.0.0.1:8080/mcp"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "rate-limit-tests", "version": "0"},
}


def limits_config(issuer: TestIssuer, upstream_url: str, *, backend: str = "memory", top: str = "") -> str:
    """echo: 3 calls per subject and tool (no refill to speak of); the route: 2 concurrent
    requests per subject; 401s: 2 per source address."""
    return f"""
        public_url: http://127.0.0.1:8080
        issuers: [{{issuer: {issuer.issuer}, algorithms: [RS256], jwks: {{discover: true}}}}]{top}
        rate_limits:
          backend: {backend}
          limits:
            echoes: {{rate: 1/hour, burst: 3, key: [subject, tool]}}
            streams: {{concurrent: 2, key: [subject]}}
            guessers: {{rate: 1/hour, burst: 2, key: [source_address]}}
        routes:
          - path: /mcp
            upstream: {upstream_url}
            scopes: [mcp:access]
            limits: [streams]
            unauthenticated_limits: [guessers]
            tools:
              echo: {{scopes: [], limits: [echoes]}}
              "*": []
        """


def bearer(issuer: TestIssuer, subject: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE, scope='mcp:access', subject=subject)}"}


async def call(
    gateway: Gateway, headers: dict[str, str], name: str = "echo", arguments: Any = None
) -> tuple[int, Any, Mapping[str, str]]:
    """One 2026-07-28 tools/call POST (stateless: the upstream answers it without a session)."""
    body = {
        "jsonrpc": "2.0",
        "id": 5,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments or {"text": "hi"}, "_meta": MODERN_META},
    }
    modern = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": name}
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.route_url(), json=body, headers={**MCP_HEADERS, **modern, **headers}) as response,
    ):
        answer = await response.json() if response.content_type == "application/json" else None
        return response.status, answer, response.headers


async def upstream_calls(upstream: Upstream) -> list[str]:
    return [
        record_json(record)["params"]["name"]
        for record in await upstream.requests()
        if record.get("body") and record_json(record).get("method") == "tools/call"
    ]


@pytest.fixture
async def gateway(issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory) -> Gateway:
    return await start_gateway_with(limits_config(issuer, upstream.mcp_url))


async def test_past_the_limit_a_call_is_429_with_its_headers_and_never_forwarded(
    issuer: TestIssuer, upstream: Upstream, gateway: Gateway, gateway_logs: LogSink
) -> None:
    """Three echo calls reach the upstream; the fourth is 429 with Retry-After, RateLimit-Policy,
    RateLimit and a JSON-RPC error naming the limit and the wait; the upstream sees three."""
    alice = bearer(issuer)
    statuses = [(await call(gateway, alice))[0] for _ in range(3)]
    assert await upstream_calls(upstream) == ["echo", "echo", "echo"]
    await upstream.clear()
    before = len(gateway_logs.lines())
    status, answer, headers = await call(gateway, alice)
    assert statuses == [200, 200, 200]
    assert status == 429
    assert int(headers["Retry-After"]) >= 1
    # Every limit the request was checked against: the route's, then the rule's.
    assert headers["RateLimit-Policy"] == '"streams";q=2, "echoes";q=3;w=10800'
    assert re.fullmatch(r'"streams";r=\d+, "echoes";r=0;t=\d+', headers["RateLimit"]), headers["RateLimit"]
    assert answer["error"]["code"] == -32029
    assert answer["error"]["message"].startswith("Rate limited (echoes): retry after ")
    assert answer["id"] == 5
    assert await upstream_calls(upstream) == []
    events = [e for e in gateway_logs.events()[before:] if e.get("event") == "rate_limited"]
    assert [(e["limit"], e["subject"], e["tool"]) for e in events] == [("echoes", "alice", "echo")]


async def test_limits_are_per_subject_and_per_tool(
    issuer: TestIssuer, upstream: Upstream, gateway: Gateway
) -> None:
    """Alice's spent echo budget leaves Bob's echo and Alice's other tools alone."""
    alice, bob = bearer(issuer), bearer(issuer, "bob")
    for _ in range(3):
        await call(gateway, alice)
    assert (await call(gateway, alice))[0] == 429
    await upstream.clear()
    assert (await call(gateway, bob))[0] == 200
    assert (await call(gateway, alice, "add", {"a": 1, "b": 2}))[0] == 200
    assert sorted(await upstream_calls(upstream)) == ["add", "echo"]


async def test_failed_authentications_are_limited_per_address(
    issuer: TestIssuer, upstream: Upstream, gateway: Gateway
) -> None:
    """Two bad tokens get 401; the third, and a fourth token never seen, get 429 unchecked; a
    caller whose token was accepted before is still served from the same address, and requests
    without any token still get their 401."""
    known = bearer(issuer, "carol")
    assert (await call(gateway, known, "add", {"a": 1, "b": 1}))[0] == 200
    bad = {"Authorization": "Bearer not-a-token-at-all-but-long-enough"}
    assert [(await call(gateway, bad))[0] for _ in range(3)] == [401, 401, 429]
    fresh = bearer(issuer, "dave")  # valid, but never seen: refused while the address is spent
    assert (await call(gateway, fresh, "add", {"a": 1, "b": 1}))[0] == 429
    assert (await call(gateway, known, "add", {"a": 1, "b": 1}))[0] == 200
    # No token at all is no guess: it still gets the 401 challenge that starts OAuth discovery.
    assert [(await call(gateway, {}))[0] for _ in range(3)] == [401, 401, 401]


async def test_concurrent_calls_past_the_limit_are_refused_and_slots_come_back(
    issuer: TestIssuer, upstream: Upstream, gateway: Gateway
) -> None:
    """Two slow calls in flight for Alice: a third is 429 at once (Bob is not affected); once they
    end, Alice's next call goes through: the slots were given back when the answers ended."""
    alice = bearer(issuer)
    slow = [asyncio.create_task(call(gateway, alice, "sleep", {"seconds": 1.0})) for _ in range(2)]

    async def both_arrived() -> bool:
        return (await upstream_calls(upstream)).count("sleep") == 2

    await eventually(both_arrived, "both slow calls at the upstream")
    third = await call(gateway, alice, "add", {"a": 1, "b": 1})
    other = await call(gateway, bearer(issuer, "bob"), "add", {"a": 1, "b": 1})
    finished = [result[0] for result in await asyncio.gather(*slow)]
    after = await call(gateway, alice, "add", {"a": 1, "b": 1})
    assert (third[0], third[1]["error"]["code"]) == (429, -32029)
    assert (other[0], finished, after[0]) == (200, [200, 200], 200)
    assert (await upstream_calls(upstream)).count("add") == 2  # Bob's and Alice's last


@pytest.mark.parametrize(
    ("held", "config"),
    [
        ("the route's one concurrent slot", {"limit": "{concurrent: 1, key: [route]}", "top": ""}),
        (
            "the process's one stream",
            {"limit": "{rate: 1000/s, burst: 1000, key: [route]}", "top": "limits: {max_streams: 1}"},
        ),
    ],
)
async def test_a_client_that_does_not_read_its_answer_holds_nothing_while_it_waits(
    issuer: TestIssuer,
    upstream: Upstream,
    start_gateway_with: GatewayFactory,
    monkeypatch: pytest.MonkeyPatch,
    held: str,
    config: dict[str, str],
) -> None:
    """Alice asks for an 8 MB answer and reads none of it (a 4 KiB receive buffer): while the
    gateway waits to write it, ``held`` is not hers, so Bob's call gets 200, not 429 or 503;
    the upstream has both calls."""
    # The gateway's sockets get a fixed 64 KiB send buffer (accepted sockets inherit it from the
    # listening one), so that the kernel cannot take the whole answer whatever its tcp_wmem.
    bound = listener.listening_sockets

    def small_send_buffers(*args: Any, **kwargs: Any) -> list[socket.socket]:
        sockets = bound(*args, **kwargs)
        for sock in sockets:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        return sockets

    monkeypatch.setattr(listener, "listening_sockets", small_send_buffers)
    gateway = await start_gateway_with(f"""
        public_url: http://127.0.0.1:8080
        issuers: [{{issuer: {issuer.issuer}, algorithms: [RS256], jwks: {{discover: true}}}}]
        {config["top"]}
        rate_limits:
          limits:
            one: {config["limit"]}
        routes:
          - path: /mcp
            upstream: {upstream.mcp_url}
            scopes: [mcp:access]
            max_body_bytes: 16777216
            limits: [one]
            tools: {{"*": []}}
        """)
    # Echoed twice by the SDK (content and structured content): an 8 MB answer, within the
    # SDK's 4 MiB request limit.
    text = "a" * 4_000_000
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": text}, "_meta": MODERN_META},
        }
    ).encode()
    host, port = gateway.url.removeprefix("http://").split(":")
    head = (
        f"POST /mcp HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        "Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2026-07-28\r\n"
        f"Mcp-Method: tools/call\r\nMcp-Name: echo\r\n{_header_lines(bearer(issuer))}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    alice = socket.socket()
    alice.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    try:
        alice.setblocking(False)
        await asyncio.get_running_loop().sock_connect(alice, (host, int(port)))
        await asyncio.get_running_loop().sock_sendall(alice, head.encode() + body)

        async def answer_under_way() -> bool:
            try:
                return bool(alice.recv(1, socket.MSG_PEEK))
            except BlockingIOError:
                return False

        await eventually(answer_under_way, "the first bytes of Alice's answer", within=30)
        # Her answer is the 8 MB echo, not a refusal that would leave nothing to wait for.
        assert alice.recv(12, socket.MSG_PEEK) == b"HTTP/1.1 200"
        status, answer, _ = await call(gateway, bearer(issuer, "bob"))
        assert status == 200, (held, status, answer)
        assert answer["result"]["content"][0]["text"] == "hi"
        assert await upstream_calls(upstream) == ["echo", "echo"]
    finally:
        alice.close()


def _header_lines(headers: Mapping[str, str]) -> str:
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items())
