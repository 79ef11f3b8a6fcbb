"""Token exchange as the downstream credential, and opaque tokens checked by introspection,
through the gateway in front of the SDK upstream, against a scriptable authorization server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from multidict import CIMultiDict

from tests.conftest import GatewayFactory, LogSink, Upstream
from tests.support.challenge import parse_bearer_challenge
from tests.support.fake_as import FakeAuthorizationServer, serving_fake_as
from tests.support.issuer import TestIssuer

RESOURCE = "http://127.0.0.1:8080/mcp"
UPSTREAM = "https://upstream.internal/mcp"
MCP = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
ECHO = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "echo", "arguments": {"text": "x"}},
}


@pytest.fixture
async def fake_as(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeAuthorizationServer]:
    async with serving_fake_as() as server:
        monkeypatch.setenv("AS_CLIENT_SECRET", server.client_secret)
        yield server


def exchange_config(issuer: TestIssuer, upstream: Upstream, fake: FakeAuthorizationServer) -> str:
    return f"""
        public_url: http://127.0.0.1:8080
        issuers: [{{issuer: {issuer.issuer}, algorithms: [RS256], jwks: {{discover: true}}}}]
        routes:
          - path: /mcp
            upstream: {upstream.mcp_url}
            scopes: [mcp:access]
            tools: {{"echo": [demo:read]}}
            credential:
              token_exchange:
                token_endpoint: {fake.token_endpoint}
                client_id: {fake.client_id}
                client_secret: {{env: AS_CLIENT_SECRET}}
                audience: {UPSTREAM}
        """


async def post(url: str, token: str, body: object = ECHO) -> tuple[int, CIMultiDict[str], bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url,
            json=body,
            headers={**MCP, "Authorization": f"Bearer {token}", "MCP-Protocol-Version": "2025-11-25"},
        ) as response,
    ):
        return response.status, response.headers.copy(), await response.read()


async def test_hundred_calls_one_exchange_and_the_upstream_gets_the_exchanged_token(
    issuer: TestIssuer,
    upstream: Upstream,
    fake_as: FakeAuthorizationServer,
    start_gateway_with: GatewayFactory,
    gateway_logs: LogSink,
) -> None:
    """100 calls by one user (50 concurrent, then 50 sequential): one exchange; the upstream sees
    only the exchanged token; the exchange asked for the upstream audience and the operation's scopes."""
    gateway = await start_gateway_with(exchange_config(issuer, upstream, fake_as))
    token = issuer.mint(audience=RESOURCE, scope="mcp:access demo:read demo:write")
    fake_as.subject_tokens[token] = frozenset({"mcp:access", "demo:read", "demo:write"})
    results = await asyncio.gather(*(post(gateway.route_url(), token) for _ in range(50)))
    results += [await post(gateway.route_url(), token) for _ in range(50)]
    # The upstream has no session for these raw calls; what matters is that they were forwarded.
    assert {status for status, _, _ in results} <= {200, 400, 404}
    assert fake_as.exchange_calls == 1
    [request] = [r for r in fake_as.requests if r.endpoint == "token"]
    assert request.authenticated and request.auth_method == "client_secret_basic"
    assert request.form["subject_token"] == token
    assert request.form["audience"] == UPSTREAM
    assert set(request.form["scope"].split()) == {"mcp:access", "demo:read"}  # narrowed to echo
    records = await upstream.requests()
    assert len(records) == 100
    sent = {value for r in records for key, value in r["headers"] if key.lower() == "authorization"}
    assert sent == {f"Bearer {fake_as.issued[0]}"}
    assert token not in json.dumps(records)
    assert token not in gateway_logs.getvalue() and fake_as.issued[0] not in gateway_logs.getvalue()


async def test_authorization_server_down_gives_503_and_forwards_nothing(
    issuer: TestIssuer,
    upstream: Upstream,
    fake_as: FakeAuthorizationServer,
    start_gateway_with: GatewayFactory,
) -> None:
    """AS unreachable: 503 with Retry-After; never the client's token upstream (fail closed)."""
    gateway = await start_gateway_with(exchange_config(issuer, upstream, fake_as))
    token = issuer.mint(audience=RESOURCE, scope="mcp:access demo:read")
    await fake_as.stop()
    status, headers, body = await post(gateway.route_url(), token)
    assert status == 503
    assert int(headers["Retry-After"]) >= 1
    assert json.loads(body)["id"] == 1
    assert await upstream.requests() == []


async def test_authorization_server_refusing_gives_403_with_its_code_in_the_log(
    issuer: TestIssuer,
    upstream: Upstream,
    fake_as: FakeAuthorizationServer,
    start_gateway_with: GatewayFactory,
    gateway_logs: LogSink,
) -> None:
    """AS says invalid_target: 403, the upstream got nothing, the AS's error code is logged."""
    gateway = await start_gateway_with(exchange_config(issuer, upstream, fake_as))
    token = issuer.mint(audience=RESOURCE, scope="mcp:access demo:read")
    fake_as.subject_tokens[token] = frozenset({"mcp:access", "demo:read"})
    fake_as.targets = {"https://somewhere-else"}
    before = len(gateway_logs.lines())
    status, _, body = await post(gateway.route_url(), token)
    assert status == 403
    assert "invalid_target" not in body.decode()  # the code is for the log, not the caller
    assert await upstream.requests() == []
    assert any(e.get("as_error") == "invalid_target" for e in gateway_logs.events()[before:])


async def test_a_refused_exchange_gives_back_its_concurrency_slots(
    issuer: TestIssuer,
    upstream: Upstream,
    fake_as: FakeAuthorizationServer,
    start_gateway_with: GatewayFactory,
) -> None:
    """Slots are taken before the exchange: two calls whose exchange the AS refuses give them
    back, so a third caller with nothing in flight meets the AS's refusal again (403), not 429."""
    limited = (
        exchange_config(issuer, upstream, fake_as)
        .replace(
            "        routes:\n",
            "        rate_limits:\n          limits:\n"
            "            slots: {concurrent: 2, key: [route]}\n        routes:\n",
        )
        .replace(
            "            scopes: [mcp:access]\n",
            "            scopes: [mcp:access]\n            limits: [slots]\n",
        )
    )
    gateway = await start_gateway_with(limited)
    fake_as.targets = {"https://somewhere-else"}  # every exchange refused: invalid_target
    statuses = []
    for subject in ("alice", "bob", "carol"):
        token = issuer.mint(audience=RESOURCE, scope="mcp:access demo:read", subject=subject)
        fake_as.subject_tokens[token] = frozenset({"mcp:access", "demo:read"})
        statuses.append((await post(gateway.route_url(), token))[0])
    assert statuses == [403, 403, 403]
    assert await upstream.requests() == []


def introspection_config(issuer_url: str, upstream: Upstream, fake: FakeAuthorizationServer) -> str:
    return f"""
        public_url: http://127.0.0.1:8080
        issuers:
          - issuer: {issuer_url}
            introspection:
              endpoint: {fake.introspection_endpoint}
              client_id: {fake.client_id}
              client_secret: {{env: AS_CLIENT_SECRET}}
              cache_max_s: 60
        routes:
          - path: /mcp
            upstream: {upstream.mcp_url}
            scopes: [mcp:access]
            tools: {{"echo": [demo:read]}}
        """


def introspected(fake: FakeAuthorizationServer, **overrides: object) -> dict[str, object]:
    now = int(time.time())
    answer: dict[str, object] = {
        "active": True,
        "iss": fake.issuer,
        "sub": "bob",
        "client_id": "cli",
        "aud": RESOURCE,
        "scope": "mcp:access demo:read",
        "exp": now + 300,
        "iat": now,
    }
    answer.update(overrides)
    return answer


async def test_opaque_tokens_via_introspection(
    upstream: Upstream, fake_as: FakeAuthorizationServer, start_gateway_with: GatewayFactory
) -> None:
    """Active → forwarded (cached: one introspection for repeated calls); inactive → 401;
    audience without this route → 401; the opaque token itself never goes upstream."""
    gateway = await start_gateway_with(
        introspection_config(fake_as.issuer, upstream, fake_as), wait_ready=True
    )
    fake_as.introspection["opaque-good"] = introspected(fake_as)
    fake_as.introspection["opaque-other-aud"] = introspected(fake_as, aud="http://127.0.0.1:8080/other")
    for _ in range(5):
        status, _, _ = await post(gateway.route_url(), "opaque-good")
        assert status in (200, 400, 404)
    assert fake_as.introspection_calls == 1
    assert len(await upstream.requests()) == 5
    await upstream.clear()
    for token, reason in (("opaque-revoked", "inactive"), ("opaque-other-aud", "bad_audience")):
        status, headers, _ = await post(gateway.route_url(), token)
        assert status == 401, reason
        assert parse_bearer_challenge(headers["WWW-Authenticate"])["error"] == "invalid_token"
    assert await upstream.requests() == []
    request = next(r for r in fake_as.requests if r.endpoint == "introspect")
    assert request.authenticated and request.form["token"] == "opaque-good"


async def test_introspection_endpoint_down_fails_closed(
    upstream: Upstream, fake_as: FakeAuthorizationServer, start_gateway_with: GatewayFactory
) -> None:
    """Introspection endpoint answering 503: the request gets 503, never forwarded."""
    gateway = await start_gateway_with(introspection_config(fake_as.issuer, upstream, fake_as))
    fake_as.down_status = 503
    status, _, _ = await post(gateway.route_url(), "opaque-any")
    assert status == 503
    assert await upstream.requests() == []
