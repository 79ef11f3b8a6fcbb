"""One reading of every identifier, through the real gateway in front of the real SDK upstream.

The upstream (tests/support/upstream_server.py) serves the template ``docs://files/{name}``; the
SDK percent-decodes what ``{name}`` captures, so ``docs://files/%70rivate`` reads the private
file there. The route's rule on ``docs://files/private`` must therefore meet every spelling of
it, and a spelling whose meaning depends on the decoder is refused. Also: a 2026-07-28 client's
``resources/subscribe`` is decided on its uri, and method names with spaces or non-ASCII
look-alikes never reach the upstream.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from tests.conftest import Gateway, GatewayFactory, Upstream, single_route_config
from tests.support.issuer import TestIssuer
from tests.support.mcp_client import session_client

RESOURCE = "http://127.0.0.1:8080/mcp"
MCP = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
MODERN = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
RULES = {"docs://files/private": ["admin"], "docs://files/*": [], "demo://*": []}


@pytest.fixture
async def gateway(issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory) -> Gateway:
    """The gateway with a rule that keeps docs://files/private for `admin`, in front of the SDK upstream."""
    return await start_gateway_with(single_route_config(issuer, upstream.mcp_url, resources=RULES))


def bearer(issuer: TestIssuer, scope: str = "mcp:access") -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE, scope=scope)}"}


def post_for(
    method: str, params: dict[str, Any], era: str, header_name: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """A raw POST as an SDK client sends it: a 2025-11-25 request, or a 2026-07-28 one with its headers."""
    headers = dict(MCP)
    if era == MODERN:
        params = {**params, "_meta": META}
        headers.update({"MCP-Protocol-Version": MODERN, "Mcp-Method": method})
        if header_name is not None:
            headers["Mcp-Name"] = header_name
    else:
        headers["MCP-Protocol-Version"] = "2025-11-25"
    body = json.dumps({"jsonrpc": "2.0", "id": 5, "method": method, "params": params}).encode()
    return body, headers


async def answer(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    """Status and JSON-RPC message of a POST (the first SSE event's data for an SSE answer)."""
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as response:
        raw = await response.read()
        if response.content_type == "text/event-stream":
            data = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
            return response.status, json.loads(data[0])
        return response.status, json.loads(raw)


async def test_the_sdk_upstream_decodes_what_its_template_captures(upstream: Upstream) -> None:
    """The premise, straight to the upstream: %70rivate is the private file to the SDK."""
    body, headers = post_for(
        "resources/read", {"uri": "docs://files/%70rivate"}, MODERN, "docs://files/%70rivate"
    )
    status, message = await answer(upstream.mcp_url, body, headers)
    assert status == 200
    assert message["result"]["contents"][0]["text"] == "contents of private"


@pytest.mark.parametrize("era", ["2025-11-25", MODERN])
@pytest.mark.parametrize(
    ("uri", "status", "code"),
    [
        pytest.param("docs://files/private", 403, -32001, id="plain"),
        pytest.param("docs://files/%70rivate", 403, -32001, id="escaped-letter"),
        pytest.param("DOCS://FILES/privat%65", 403, -32001, id="scheme-host-case-and-escape"),
        pytest.param("docs://files/pub/%2e%2e/private", 400, -32602, id="escaped-dot-segment"),
        pytest.param("docs://files/pub/../private", 400, -32602, id="dot-segment"),
        pytest.param("docs://files/%2e%2e%2Fprivate", 400, -32602, id="escaped-traversal"),
        pytest.param("docs://files/pub%2Fprivate", 400, -32602, id="escaped-slash"),
        pytest.param("docs://files/%2570rivate", 400, -32602, id="double-encoded"),
        pytest.param("docs://files/private#x", 400, -32602, id="fragment"),
    ],
)
async def test_spellings_of_a_denied_resource(
    era: str, uri: str, status: int, code: int, issuer: TestIssuer, gateway: Gateway, upstream: Upstream
) -> None:
    """Respelled, the private file still needs `admin` (403); a decoder-dependent spelling is a 400."""
    body, headers = post_for("resources/read", {"uri": uri}, era, uri)
    got, message = await answer(gateway.route_url(), body, {**headers, **bearer(issuer)})
    assert got == status, message
    assert message == {"jsonrpc": "2.0", "id": 5, "error": message["error"]}
    assert message["error"]["code"] == code
    assert await upstream.requests() == []


@pytest.mark.parametrize("era", ["2025", "2026"])
async def test_allowed_resources_still_read(era: str, issuer: TestIssuer, gateway: Gateway) -> None:
    """Through the SDK client: an allowed file reads in any legitimate spelling; an admin reads private."""
    async with session_client(gateway.route_url(), bearer(issuer), era=era) as client:  # type: ignore[arg-type]
        for uri, text in (
            ("docs://files/readme", "readme"),
            ("docs://files/%72eadme", "readme"),
            ("docs://files/caf%C3%A9", "caf\u00e9"),
            ("docs://files/a%20b", "a b"),
            ("docs://files/PRIVAT%45", "PRIVATE"),  # another file to the handler, and to the rules
        ):
            result = await client.read_resource(uri)
            assert result.contents[0].text == f"contents of {text}"  # type: ignore[union-attr]
        templates = await client.list_resource_templates()
        assert [template.uri_template for template in templates.resource_templates] == ["docs://files/{name}"]
    async with session_client(gateway.route_url(), bearer(issuer, "mcp:access admin"), era=era) as client:  # type: ignore[arg-type]
        result = await client.read_resource("docs://files/%70rivate")
        assert result.contents[0].text == "contents of private"  # type: ignore[union-attr]


@pytest.mark.parametrize("method", ["resources/subscribe", "resources/unsubscribe"])
@pytest.mark.parametrize("era", ["2025-11-25", MODERN])
async def test_subscribe_is_decided_on_its_uri_whatever_the_version_claims(
    method: str, era: str, issuer: TestIssuer, gateway: Gateway, upstream: Upstream
) -> None:
    """A denied uri is a 403 in both eras and the upstream gets nothing; spelled ambiguously, a 400."""
    for uri, status in (
        ("docs://files/private", 403),
        ("docs://files/%70rivate", 403),
        ("docs://files/a%2F", 400),
    ):
        body, headers = post_for(method, {"uri": uri}, era)
        got, message = await answer(gateway.route_url(), body, {**headers, **bearer(issuer)})
        assert got == status, (uri, message)
    assert await upstream.requests() == []


@pytest.mark.parametrize("params", [{"uri": "docs://files/readme"}, {}], ids=["allowed-uri", "no-uri"])
async def test_2026_subscribe_with_an_allowed_uri_reaches_the_upstream(
    params: dict[str, Any], issuer: TestIssuer, gateway: Gateway, upstream: Upstream
) -> None:
    """Allowed (or naming nothing), it is forwarded unchanged: the 2026-07-28 upstream answers -32601."""
    body, headers = post_for("resources/subscribe", params, MODERN)
    status, message = await answer(gateway.route_url(), body, {**headers, **bearer(issuer)})
    direct_status, direct = await answer(upstream.mcp_url, body, headers)
    assert (status, message) == (direct_status, direct)
    assert message["error"]["code"] == -32601
    assert [record["body"] for record in await upstream.requests()] == [body.decode(), body.decode()]


@pytest.mark.parametrize("era", ["2025-11-25", MODERN])
@pytest.mark.parametrize(
    "method",
    [
        "tools/call ",
        "tools /call",
        "t\u043e\u043els/call",
        "\uff54ools/call",
        "tools/call\u200b",
        "Tools/Call",
    ],
    ids=["trailing-space", "inner-space", "cyrillic-o", "fullwidth-t", "zero-width-space", "case"],
)
async def test_method_look_alikes_are_refused(
    era: str, method: str, issuer: TestIssuer, gateway: Gateway, upstream: Upstream
) -> None:
    """A method name an upstream could clean up into tools/call is a 400 (-32600), never forwarded."""
    body, headers = post_for("tools/call", {"name": "echo", "arguments": {"text": "x"}}, era, "echo")
    body = body.replace(b'"tools/call"', json.dumps(method).encode())
    if era == MODERN:
        headers["Mcp-Method"] = method.encode("utf-8").decode("latin-1")
    status, message = await answer(gateway.route_url(), body, {**headers, **bearer(issuer)})
    assert (status, message["error"]["code"]) == (400, -32600)
    assert await upstream.requests() == []


@pytest.mark.parametrize(
    ("uris", "status"),
    [
        (["docs://files/readme", "docs://files/private"], 403),
        (["docs://files/%70rivate"], 403),
        (["docs://files/pub/%2e%2e/private"], 400),
        ("docs://files/readme", 400),
    ],
    ids=["one-denied", "respelled-denied", "ambiguous", "not-a-list"],
)
async def test_listen_is_decided_on_the_resources_it_watches(
    uris: Any, status: int, issuer: TestIssuer, gateway: Gateway, upstream: Upstream
) -> None:
    """subscriptions/listen, the 2026-07-28 successor of subscribe: a stream that would carry the
    updates of a denied resource is refused before it opens, and the upstream gets nothing."""
    notifications = {"toolsListChanged": True, "resourceSubscriptions": uris}
    body, headers = post_for("subscriptions/listen", {"notifications": notifications}, MODERN)
    got, message = await answer(gateway.route_url(), body, {**headers, **bearer(issuer)})
    assert got == status, message
    assert await upstream.requests() == []


async def test_listen_on_allowed_resources_opens(
    issuer: TestIssuer, gateway: Gateway, upstream: Upstream
) -> None:
    """Through the SDK client, a stream on allowed resources (in any spelling) opens and is acknowledged."""
    watched = ["docs://files/readme", "docs://files/%72eadme"]
    async with session_client(
        gateway.route_url(), bearer(issuer), era="2026", read_timeout_seconds=5
    ) as client:
        async with client.listen(resource_subscriptions=watched) as subscription:
            assert subscription.honored.resource_subscriptions == watched
    assert any("subscriptions/listen" in record["body"] for record in await upstream.requests())
