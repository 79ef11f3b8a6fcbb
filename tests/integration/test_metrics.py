"""Prometheus metrics on the admin listener, and what the request log line carries.

A scripted flow (an allowed tool call, denied ones, an expired token, an upstream that is down)
against a gateway with its own registry; then /metrics on the admin listener is parsed and every
family is checked with its labels and counts.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.logs import configure_logging
from gateway.metrics import METRIC_FAMILIES
from tests.conftest import _SESSION_LOGS, GatewayFactory, LogSink, Upstream
from tests.support.fake_as import FakeAuthorizationServer, serving_fake_as
from tests.support.issuer import TestIssuer
from tests.support.mcp_client import session_client

BASE = "http://127.0.0.1:8080"
MCP = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
SUBJECT = "metrics-subject-4711"
CLIENT_ID = "metrics-client-0815"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    """A port nothing listens on (bound, then released): connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def call(tool: str, rpc_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": {"name": tool, "arguments": {}}}


async def post(url: str, token: str, body: object) -> tuple[int, bytes]:
    headers = {**MCP, "Authorization": f"Bearer {token}", "MCP-Protocol-Version": "2025-11-25"}
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=headers) as response:
        return response.status, await response.read()


async def scrape(admin_url: str) -> tuple[str, dict[str, Any], Samples]:
    """The exposition text, its families by name, and every sample by (name, labels)."""
    async with aiohttp.ClientSession() as http, http.get(admin_url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    samples: Samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in families.values()
        for sample in family.samples
    }
    return text, families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def exposed_name(family: str) -> str:
    """The parser names a counter family without its ``_total`` suffix."""
    return family.removesuffix("_total")


def metrics_config(issuer: TestIssuer, upstream: Upstream, down_port: int, extra: str = "") -> str:
    return f"""
        listen: {{host: 127.0.0.1, port: 0}}
        admin: {{host: 127.0.0.1, port: 0}}
        public_url: {BASE}
        issuers:
          - issuer: {issuer.issuer}
            algorithms: [RS256]
            jwks: {{discover: true}}
            leeway_s: 5
        routes:
          - path: /mcp
            upstream: {upstream.mcp_url}
            scopes: [mcp:access]
            tools: {{"echo": [], "add": [demo:admin], "get_*": []}}
          - path: /down
            upstream: http://127.0.0.1:{down_port}/mcp
            scopes: [mcp:access]
            tools: {{"*": []}}
        {extra}
        """


async def settle(admin_url: str, name: str, **labels: str) -> Samples:
    """Scrape until a gauge is back to 0 (a closing stream's handler may still be finishing)."""
    for _ in range(100):
        _, _, samples = await scrape(admin_url)
        if value(samples, name, **labels) == 0:
            return samples
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name}{labels} never went back to 0")


async def test_scripted_flow_shows_in_every_family(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory, gateway_logs: LogSink
) -> None:
    """Allowed, denied, expired and failed calls are counted in every family, never with a subject."""
    gateway = await start_gateway_with(metrics_config(issuer, upstream, free_port()))
    assert gateway.admin_url is not None
    mcp, down = gateway.route_url("/mcp"), gateway.route_url("/down")
    token = issuer.mint(audience=BASE + "/mcp", subject=SUBJECT, client_id=CLIENT_ID)
    before = len(gateway_logs.lines())

    # 1. Allowed: a real SDK session calls echo (initialize, initialized, tools/call, DELETE...).
    async with session_client(mcp, {"Authorization": f"Bearer {token}"}) as client:
        result = await client.call_tool("echo", {"text": "hi"})
        assert result.content[0].text == "hi"  # type: ignore[union-attr]
    # 2. Denied: add needs demo:admin (403 insufficient_scope); whoami matches no rule (403).
    assert (await post(mcp, token, call("add")))[0] == 403
    assert (await post(mcp, token, call("whoami")))[0] == 403
    # 3. An expired token: 401.
    now = int(time.time())
    expired = issuer.mint(
        audience=BASE + "/mcp", subject=SUBJECT, claims={"iat": now - 600, "exp": now - 300}
    )
    assert (await post(mcp, expired, call("echo")))[0] == 401
    # 4. The upstream is down: 502.
    down_token = issuer.mint(audience=BASE + "/down", subject=SUBJECT, client_id=CLIENT_ID)
    assert (await post(down, down_token, call("echo")))[0] == 502

    samples = await settle(gateway.admin_url, "mcp_gateway_sse_streams_open", route="/mcp")
    samples = await settle(gateway.admin_url, "mcp_gateway_requests_in_flight")
    text, families, samples = await scrape(gateway.admin_url)

    # Every family is exposed, with its type.
    assert {exposed_name(name) for name in METRIC_FAMILIES} <= families.keys()
    assert families["mcp_gateway_requests"].type == "counter"
    assert families["mcp_gateway_request_duration_seconds"].type == "histogram"
    assert families["mcp_gateway_sse_streams_open"].type == "gauge"

    # Requests, by route, MCP method and outcome.
    requests = "mcp_gateway_requests_total"
    assert value(samples, requests, route="/mcp", mcp_method="initialize", outcome="ok") == 1
    assert value(samples, requests, route="/mcp", mcp_method="tools/call", outcome="ok") == 1
    assert value(samples, requests, route="/mcp", mcp_method="tools/call", outcome="rejected") == 2
    assert value(samples, requests, route="/mcp", mcp_method="other", outcome="rejected") == 1  # 401
    assert value(samples, requests, route="/down", mcp_method="tools/call", outcome="error") == 1
    durations = "mcp_gateway_request_duration_seconds_count"
    assert value(samples, durations, route="/down", mcp_method="tools/call", outcome="error") == 1
    assert value(samples, durations, route="/mcp", mcp_method="tools/call", outcome="rejected") == 2
    assert value(samples, "mcp_gateway_requests_in_flight") == 0
    # /readyz polling by the fixture: no route.
    assert value(samples, requests, route="none", mcp_method="GET", outcome="ok") >= 1

    # Token rejections, by reason.
    assert value(samples, "mcp_gateway_token_rejections_total", reason="expired") == 1

    # Policy decisions: literal tool names from the config, every other tool as "other".
    decisions = "mcp_gateway_policy_decisions_total"
    assert value(samples, decisions, route="/mcp", decision="allow", tool="echo") == 1
    assert value(samples, decisions, route="/mcp", decision="deny", tool="add") == 1
    assert value(samples, decisions, route="/mcp", decision="deny", tool="other") == 1  # whoami
    assert value(samples, decisions, route="/mcp", decision="allow", tool="none") >= 2  # initialize…
    assert value(samples, decisions, route="/down", decision="allow", tool="other") == 1
    tools = {dict(labels)["tool"] for (name, labels) in samples if name == decisions}
    assert tools <= {"echo", "add", "other", "none"}

    # Upstream latency (time to headers) and errors.
    assert value(samples, "mcp_gateway_upstream_duration_seconds_count", route="/mcp") >= 3
    assert value(samples, "mcp_gateway_upstream_duration_seconds_count", route="/down") == 0
    assert value(samples, "mcp_gateway_upstream_errors_total", route="/down", reason="upstream_refused") == 1
    assert value(samples, "mcp_gateway_sse_streams_open", route="/mcp") == 0

    # Key fetches for the (only) issuer.
    assert value(samples, "mcp_gateway_jwks_fetches_total", issuer=issuer.issuer, result="ok") >= 1

    # No label value is ever a subject, a client id or a token.
    label_values = {v for (_, labels_set) in samples for _, v in labels_set}
    assert SUBJECT not in text and CLIENT_ID not in text
    assert not {SUBJECT, CLIENT_ID, token, expired} & label_values
    assert token.rsplit(".", 1)[-1] not in text

    # The canonical request line of the allowed call: method, target, upstream time, subject.
    lines = [e for e in gateway_logs.events()[before:] if e.get("event") == "request"]
    [called] = [e for e in lines if e.get("mcp_method") == "tools/call" and e.get("status") == 200]
    assert called["target"] == "echo" and called["route"] == "/mcp"
    assert called["subject"] == SUBJECT and called["client_id"] == CLIENT_ID
    assert isinstance(called["upstream_ms"], float) and called["upstream_ms"] >= 0
    [expired_line] = [e for e in lines if e.get("status") == 401]
    assert expired_line["reason"] == "expired" and "mcp_method" not in expired_line
    [down_line] = [e for e in lines if e.get("status") == 502]
    assert down_line["reason"] == "upstream_refused" and down_line["target"] == "echo"


async def test_metrics_is_not_served_on_the_client_listener(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """/metrics is 404 for MCP clients, and the admin listener answers health and readiness."""
    gateway = await start_gateway_with(metrics_config(issuer, upstream, free_port()))
    assert gateway.admin_url is not None
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/metrics") as response:
            assert response.status == 404
            assert b"mcp_gateway" not in await response.read()
        async with http.get(gateway.admin_url + "/healthz") as response:
            assert response.status == 200
        async with http.get(gateway.admin_url + "/readyz") as response:
            assert response.status == 200 and (await response.json())["ready"] is True


async def test_the_admin_port_exports_the_process_figures(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """process_open_fds, process_max_fds, resident memory and CPU sit beside the gateway's families,
    with values an alert can use (this process's own open descriptors, below its limit)."""
    gateway = await start_gateway_with(metrics_config(issuer, upstream, free_port()))
    assert gateway.admin_url is not None
    _, families, samples = await scrape(gateway.admin_url)
    for family in (
        "process_open_fds",
        "process_max_fds",
        "process_resident_memory_bytes",
        "process_cpu_seconds",
    ):
        assert family in families, family
    open_fds, max_fds = value(samples, "process_open_fds"), value(samples, "process_max_fds")
    assert 0 < open_fds < max_fds
    assert value(samples, "process_resident_memory_bytes") > 10 * 1024 * 1024
    assert "mcp_gateway_requests" in families


async def test_without_admin_config_there_is_no_admin_listener(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """A config without `admin` starts no admin listener."""
    config = metrics_config(issuer, upstream, free_port()).replace("admin: {host: 127.0.0.1, port: 0}", "")
    gateway = await start_gateway_with(config)
    assert gateway.admin_url is None


async def test_each_gateway_has_its_own_registry(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """Two gateways in one process count separately."""
    first = await start_gateway_with(metrics_config(issuer, upstream, free_port()))
    second = await start_gateway_with(metrics_config(issuer, upstream, free_port()))
    assert first.admin_url is not None and second.admin_url is not None
    token = issuer.mint(audience=BASE + "/mcp")
    for _ in range(3):
        assert (await post(first.route_url(), token, call("add")))[0] == 403
    _, _, one = await scrape(first.admin_url)
    _, _, two = await scrape(second.admin_url)
    decision = {"route": "/mcp", "decision": "deny", "tool": "add"}
    assert value(one, "mcp_gateway_policy_decisions_total", **decision) == 3
    assert value(two, "mcp_gateway_policy_decisions_total", **decision) == 0


async def test_include_subject_false_drops_subject_and_client_id_from_logs(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory, gateway_logs: LogSink
) -> None:
    """With `include_subject: false` no log line of a request carries its subject or client id."""
    hidden, hidden_client = "hidden-subject-9931", "hidden-client-9932"
    gateway = await start_gateway_with(
        metrics_config(issuer, upstream, free_port(), extra="logging: {include_subject: false}")
    )
    before = len(gateway_logs.lines())
    token = issuer.mint(audience=BASE + "/mcp", subject=hidden, client_id=hidden_client)
    assert (await post(gateway.route_url(), token, call("add")))[0] == 403
    events = gateway_logs.events()[before:]
    assert any(e.get("event") == "request" and e.get("status") == 403 for e in events)
    assert any(e.get("event") == "policy_decision" for e in events)
    logged = "\n".join(gateway_logs.lines()[before:])
    assert hidden not in logged and hidden_client not in logged
    assert not any("subject" in e or "client_id" in e for e in events)


# --- token exchange and introspection ---------------------------------------------------------


@pytest.fixture
async def fake_as(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeAuthorizationServer]:
    async with serving_fake_as() as server:
        monkeypatch.setenv("AS_CLIENT_SECRET", server.client_secret)
        yield server


async def test_exchange_and_introspection_results_and_cache_hits(
    issuer: TestIssuer,
    upstream: Upstream,
    fake_as: FakeAuthorizationServer,
    start_gateway_with: GatewayFactory,
) -> None:
    """One exchange then cache hits; one introspection then cache hits; an inactive token."""
    gateway = await start_gateway_with(
        f"""
        admin: {{host: 127.0.0.1, port: 0}}
        public_url: {BASE}
        issuers:
          - issuer: {issuer.issuer}
            algorithms: [RS256]
            jwks: {{discover: true}}
          - issuer: {fake_as.issuer}
            introspection:
              endpoint: {fake_as.introspection_endpoint}
              client_id: {fake_as.client_id}
              client_secret: {{env: AS_CLIENT_SECRET}}
        routes:
          - path: /mcp
            upstream: {upstream.mcp_url}
            scopes: [mcp:access]
            tools: {{"echo": []}}
            credential:
              token_exchange:
                token_endpoint: {fake_as.token_endpoint}
                client_id: {fake_as.client_id}
                client_secret: {{env: AS_CLIENT_SECRET}}
                audience: https://upstream.internal/mcp
        """
    )
    assert gateway.admin_url is not None
    token = issuer.mint(audience=BASE + "/mcp")
    fake_as.subject_tokens[token] = frozenset({"mcp:access"})
    for _ in range(3):
        status, _ = await post(gateway.route_url(), token, call("echo"))
        assert status in (200, 400, 404)  # forwarded; the upstream has no session for raw calls
    now = int(time.time())
    fake_as.introspection["opaque-good"] = {
        "active": True, "iss": fake_as.issuer, "sub": "bob", "aud": BASE + "/mcp",
        "scope": "mcp:access", "exp": now + 300, "iat": now,
    }  # fmt: skip
    fake_as.subject_tokens["opaque-good"] = frozenset({"mcp:access"})
    for _ in range(2):
        await post(gateway.route_url(), "opaque-good", call("echo"))
    assert (await post(gateway.route_url(), "opaque-revoked", call("echo")))[0] == 401

    _, _, samples = await scrape(gateway.admin_url)
    assert value(samples, "mcp_gateway_token_exchanges_total", route="/mcp", result="ok") == 2
    assert value(samples, "mcp_gateway_token_exchange_cache_hits_total", route="/mcp") == 3
    introspections = "mcp_gateway_introspections_total"
    assert value(samples, introspections, issuer=fake_as.issuer, result="active") == 1
    assert value(samples, introspections, issuer=fake_as.issuer, result="inactive") == 1
    assert value(samples, "mcp_gateway_introspection_cache_hits_total", issuer=fake_as.issuer) == 1
    assert value(samples, "mcp_gateway_token_rejections_total", reason="inactive") == 1
    assert json.dumps(sorted(k[0] for k in samples)).count("opaque") == 0


class ResponseWatchingLog(LogSink):
    """The session's log stream, also noting for each request line whether the answer to the
    watched client socket was already readable when the line was written."""

    def __init__(self, client: socket.socket) -> None:
        super().__init__()
        self.client = client
        self.answer_ready_at_request_line: list[bool] = []

    def write(self, text: str) -> int:
        if '"event":"request"' in text:
            try:
                ready = bool(self.client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
            except BlockingIOError:
                ready = False
            self.answer_ready_at_request_line.append(ready)
        _SESSION_LOGS.write(text)
        return super().write(text)


async def test_the_request_line_is_rendered_after_the_answer_is_written(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """The client does not wait for the request line: it is rendered in the loop's turn after
    the one that wrote the answer, so the answer is on the client's socket by then; the line
    still has the request's id, status and subject."""
    gateway = await start_gateway_with(metrics_config(issuer, upstream, free_port()))
    token = issuer.mint(audience=BASE + "/mcp", subject=SUBJECT)
    body = json.dumps(call("add")).encode()
    loop = asyncio.get_running_loop()
    client = socket.socket()
    client.setblocking(False)
    stream = ResponseWatchingLog(client)
    try:
        configure_logging(json=True, level="debug", stream=stream)
        await loop.sock_connect(client, ("127.0.0.1", int(gateway.url.rsplit(":", 1)[1])))
        head = (
            f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
            f"MCP-Protocol-Version: 2025-11-25\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        await loop.sock_sendall(client, head.encode() + body)
        answer = await loop.sock_recv(client, 65536)
        for _ in range(100):  # the line's turn may come after the client's read
            if stream.answer_ready_at_request_line:
                break
            await asyncio.sleep(0.01)
    finally:
        configure_logging(json=True, level="debug", stream=_SESSION_LOGS)
        client.close()
    assert answer.startswith(b"HTTP/1.1 403")
    assert stream.answer_ready_at_request_line == [True]
    [line] = [event for event in stream.events() if event["event"] == "request"]
    assert (line["status"], line["subject"], len(line["request_id"])) == (403, SUBJECT, 16)
