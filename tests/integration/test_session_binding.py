"""Sessions belong to the principal that created them (issue 13, item 1; MCP Security BP).

The SDK upstream cannot tell users apart, so the gateway seals its ``Mcp-Session-Id`` to
(route, issuer, subject): a second user's valid token on the first user's session gets what an
unknown session gets, 404, on every HTTP method and on resumption, and the upstream sees
nothing. The seal is stateless: gateways sharing ``state_keys`` open each other's sessions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Gateway, GatewayFactory, Upstream, single_route_config
from tests.integration.test_authentication import INITIALIZE, MCP_HEADERS
from tests.support.issuer import TestIssuer, serving

RESOURCE = "http://127.0.0.1:8080/mcp"
VERSION = {"MCP-Protocol-Version": "2025-11-25"}
CALL = {
    "jsonrpc": "2.0",
    "id": 7,
    "method": "tools/call",
    "params": {"name": "echo", "arguments": {"text": "in-session"}},
}
STATE_KEY = "k" * 40


@pytest.fixture(autouse=True)
def key_files(tmp_path: Path) -> None:
    """Two state key secrets beside the configs start_gateway_with writes."""
    (tmp_path / "state-new.key").write_text("n" * 40)
    (tmp_path / "state-old.key").write_text(STATE_KEY)


def keyed_config(issuer: TestIssuer, upstream_url: str, *, keys: str = "") -> str:
    """The single-route config with ``state_keys`` from the secret files."""
    return single_route_config(issuer, upstream_url) + (
        keys
        or """
        state_keys:
          keys:
            - {id: old, secret: {file: state-old.key}}
        """
    )


def bearer(issuer: TestIssuer, subject: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE, subject=subject)}"}


async def initialize(http: aiohttp.ClientSession, gateway: Gateway, auth: dict[str, str]) -> str:
    """Open a session through the gateway; the sealed id the client sees."""
    async with http.post(gateway.route_url(), json=INITIALIZE, headers={**MCP_HEADERS, **auth}) as response:
        assert response.status == 200
        await response.read()
        return response.headers["Mcp-Session-Id"]


async def session_call(
    http: aiohttp.ClientSession, gateway: Gateway, auth: dict[str, str], session_id: str, method: str = "POST"
) -> tuple[int, Any]:
    headers = {**MCP_HEADERS, **auth, **VERSION, "Mcp-Session-Id": session_id}
    if method == "GET":
        headers["Accept"] = "text/event-stream"
    async with http.request(
        method, gateway.route_url(), json=CALL if method == "POST" else None, headers=headers
    ) as response:
        if response.status == 200 and method == "GET":
            return response.status, None  # the open stream: not read to its (distant) end
        body = await response.read()
        return response.status, body


def upstream_session_ids(records: list[dict[str, Any]]) -> list[str]:
    return [
        value for record in records for key, value in record["headers"] if key.lower() == "mcp-session-id"
    ]


async def test_the_client_sees_a_sealed_id_and_its_owner_keeps_working(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """The id the client holds is not the upstream's; its owner's calls reach the upstream with
    the upstream's own id."""
    gateway = await start_gateway_with(single_route_config(issuer, upstream.mcp_url))
    alice = bearer(issuer)
    async with aiohttp.ClientSession() as http:
        sealed = await initialize(http, gateway, alice)
        status, body = await session_call(http, gateway, alice, sealed)
    assert status == 200 and b"in-session" in body
    [upstream_id] = set(upstream_session_ids(await upstream.requests()))
    assert sealed != upstream_id and upstream_id not in sealed
    assert sealed.startswith("ephemeral.") and all(0x21 <= ord(c) <= 0x7E for c in sealed)


@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
async def test_another_user_on_the_session_gets_404_and_the_upstream_nothing(
    method: str, issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """Bob's valid token on Alice's session: 404 "Session not found" on POST, GET and DELETE,
    exactly what a made-up session id gets; the upstream records no request from Bob."""
    gateway = await start_gateway_with(single_route_config(issuer, upstream.mcp_url))
    async with aiohttp.ClientSession() as http:
        sealed = await initialize(http, gateway, bearer(issuer))
        await upstream.clear()
        status, body = await session_call(http, gateway, bearer(issuer, "bob"), sealed, method)
        forged_status, forged_body = await session_call(
            http, gateway, bearer(issuer, "bob"), "x" + sealed, method
        )
    assert status == forged_status == 404
    assert body == forged_body
    assert json.loads(body) == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32600, "message": "Session not found"},
    }
    assert await upstream.requests() == []


async def test_resumption_by_another_user_is_refused(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """A GET with Last-Event-ID on Alice's session, by Bob: 404, nothing replayed, nothing sent."""
    gateway = await start_gateway_with(single_route_config(issuer, upstream.mcp_url))
    async with aiohttp.ClientSession() as http:
        sealed = await initialize(http, gateway, bearer(issuer))
        await upstream.clear()
        headers = {**bearer(issuer, "bob"), **VERSION, "Mcp-Session-Id": sealed, "Last-Event-ID": "0"}
        async with http.get(
            gateway.route_url(), headers={**headers, "Accept": "text/event-stream"}
        ) as response:
            assert response.status == 404
    assert await upstream.requests() == []


async def test_same_subject_from_another_issuer_is_another_user(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """(issuer, subject) is the principal: "alice" at a second trusted issuer is not Alice."""
    async with serving() as other:
        config = single_route_config(issuer, upstream.mcp_url).replace(
            "        routes:",
            f"""          - issuer: {other.issuer}
            algorithms: [RS256]
            jwks: {{discover: true}}
        routes:""",
        )
        gateway = await start_gateway_with(config)
        async with aiohttp.ClientSession() as http:
            sealed = await initialize(http, gateway, bearer(issuer))
            await upstream.clear()
            status, _ = await session_call(http, gateway, bearer(other), sealed)
            assert status == 404
            assert await upstream.requests() == []
            status, _ = await session_call(http, gateway, bearer(issuer), sealed)
            assert status == 200


async def test_a_raw_upstream_session_id_does_not_work(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """Knowing the upstream's own id (leaked, guessed) is worth nothing: it is not sealed."""
    gateway = await start_gateway_with(single_route_config(issuer, upstream.mcp_url))
    alice = bearer(issuer)
    async with aiohttp.ClientSession() as http:
        sealed = await initialize(http, gateway, alice)
        await session_call(http, gateway, alice, sealed)
        [upstream_id] = set(upstream_session_ids(await upstream.requests()))
        await upstream.clear()
        status, _ = await session_call(http, gateway, alice, upstream_id)
    assert status == 404
    assert await upstream.requests() == []


async def test_a_session_opened_at_one_gateway_is_served_by_another_with_the_same_keys(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory, tmp_path: Path
) -> None:
    """No sticky sessions, no shared store: replica B serves the session replica A opened, and a
    gateway started later with the same key (a restart) too; one without the key answers 404."""
    first = await start_gateway_with(keyed_config(issuer, upstream.mcp_url))
    second = await start_gateway_with(keyed_config(issuer, upstream.mcp_url))
    unkeyed = await start_gateway_with(single_route_config(issuer, upstream.mcp_url))
    alice = bearer(issuer)
    async with aiohttp.ClientSession() as http:
        sealed = await initialize(http, first, alice)
        assert sealed.startswith("old.")
        status, body = await session_call(http, second, alice, sealed)
        assert status == 200 and b"in-session" in body
        await upstream.clear()
        status, _ = await session_call(http, unkeyed, alice, sealed)
        assert status == 404
        assert await upstream.requests() == []
        # A restart: a new gateway, the same key.
        restarted = await start_gateway_with(keyed_config(issuer, upstream.mcp_url))
        status, body = await session_call(http, restarted, alice, sealed)
        assert status == 200 and b"in-session" in body


async def test_rotation_keeps_old_sessions_and_seals_new_ones_with_the_active_key(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory, tmp_path: Path
) -> None:
    """A new active key: sessions sealed with the old one still open; new ones use the new id."""
    before = await start_gateway_with(keyed_config(issuer, upstream.mcp_url))
    rotated_keys = """
        state_keys:
          active: new
          keys:
            - {id: new, secret: {file: state-new.key}}
            - {id: old, secret: {file: state-old.key}}
        """
    after = await start_gateway_with(keyed_config(issuer, upstream.mcp_url, keys=rotated_keys))
    alice = bearer(issuer)
    async with aiohttp.ClientSession() as http:
        old_session = await initialize(http, before, alice)
        status, _ = await session_call(http, after, alice, old_session)
        assert status == 200
        assert (await initialize(http, after, alice)).startswith("new.")


async def test_a_2026_request_never_carries_a_session_upstream(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """MCP 2026-07-28 has no sessions: a stale or foreign Mcp-Session-Id on such a request is not
    checked (the request is served) and not forwarded (the upstream never sees a handle)."""
    gateway = await start_gateway_with(single_route_config(issuer, upstream.mcp_url))
    async with aiohttp.ClientSession() as http:
        sealed = await initialize(http, gateway, bearer(issuer))
        await upstream.clear()
        modern = {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {
                "name": "echo",
                "arguments": {"text": "modern"},
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {},
                },
            },
        }
        headers = {
            **MCP_HEADERS,
            **bearer(issuer, "bob"),
            "MCP-Protocol-Version": "2026-07-28",
            "Mcp-Method": "tools/call",
            "Mcp-Name": "echo",
            "Mcp-Session-Id": sealed,
        }
        async with http.post(gateway.route_url(), json=modern, headers=headers) as response:
            assert response.status == 200
            assert b"modern" in await response.read()
    [record] = await upstream.requests()
    assert upstream_session_ids([record]) == []
