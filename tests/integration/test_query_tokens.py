"""A token in the URL is refused, however it is spelled, and never logged (issue 13, items 5, 8).

MCP endpoints take no query, and a token in a URL ends up in access logs, proxies and browser
history (OAuth 2.1 §5.1.1): a query that carries the caller's token is refused like
``access_token`` always was, before anything reaches the upstream.
"""

from __future__ import annotations

from urllib.parse import quote

import aiohttp
import pytest

from tests.conftest import Gateway, GatewayFactory, LogSink, Upstream, single_route_config
from tests.integration.test_authentication import post
from tests.support.issuer import TestIssuer

RESOURCE = "http://127.0.0.1:8080/mcp"


@pytest.fixture
async def gateway(issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory) -> Gateway:
    return await start_gateway_with(single_route_config(issuer, upstream.mcp_url))


@pytest.mark.parametrize(
    "query",
    [
        "?access_token={token}",
        "?ACCESS_TOKEN={token}",
        "?Access_Token=other",
        "?t={token}",
        "?t={quoted}",
        "?a=1&session={token}x",
        "?a=1;access_token=x",
        "?access_token[]=x",
        "?access%5Ftoken=x",
        "?access_token%00=x",
    ],
)
async def test_a_query_carrying_the_token_is_refused_with_400(
    query: str, gateway: Gateway, upstream: Upstream, issuer: TestIssuer
) -> None:
    """With the token in the header too: 400 invalid_request; the upstream receives nothing."""
    token = issuer.mint(audience=RESOURCE)
    spelled = query.format(token=token, quoted=quote(token, safe=""))
    status, headers, _ = await post(gateway, {"Authorization": f"Bearer {token}"}, query=spelled)
    assert status == 400
    assert 'error="invalid_request"' in headers["WWW-Authenticate"]
    assert await upstream.requests() == []


async def test_a_token_only_in_the_query_gets_401(
    gateway: Gateway, upstream: Upstream, issuer: TestIssuer
) -> None:
    """No header token, one in the query: 401 as if none were sent, and nothing forwarded."""
    status, headers, _ = await post(gateway, {}, query=f"?access_token={issuer.mint(audience=RESOURCE)}")
    assert status == 401 and "error=" not in headers["WWW-Authenticate"]
    assert await upstream.requests() == []


async def test_an_innocent_query_is_served_and_not_forwarded(
    gateway: Gateway, upstream: Upstream, issuer: TestIssuer
) -> None:
    """A query without the token is served; the upstream sees the route's URL without it."""
    token = issuer.mint(audience=RESOURCE)
    status, _, _ = await post(gateway, {"Authorization": f"Bearer {token}"}, query="?debug=1")
    assert status == 200
    [record] = await upstream.requests()
    assert record["query_string"] == ""


async def test_a_token_in_an_unknown_path_never_reaches_the_log(
    gateway: Gateway, upstream: Upstream, issuer: TestIssuer, gateway_logs: LogSink
) -> None:
    """A path nobody configured is logged as "(unknown path)": a token spelled past redaction
    (its dots as %252E) must not reach the request line through it."""
    token = issuer.mint(audience=RESOURCE)
    spelled = token.replace(".", "%252E")
    before = len(gateway_logs.lines())
    async with aiohttp.ClientSession() as http, http.get(gateway.url + "/mcp/" + spelled) as response:
        assert response.status == 404
    logged = "\n".join(gateway_logs.lines()[before:])
    assert token.rsplit(".", 1)[1] not in logged
    [line] = [event for event in gateway_logs.events()[before:] if event["event"] == "request"]
    assert line["path"] == "(unknown path)"
    assert await upstream.requests() == []
