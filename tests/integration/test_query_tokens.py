"""A token in the query string is refused, however it is spelled (issue 13, item 8).

MCP endpoints take no query, and a token in a URL ends up in access logs, proxies and browser
history (OAuth 2.1 §5.1.1): a query that carries the caller's token is refused like
``access_token`` always was, before anything reaches the upstream.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.conftest import Gateway, GatewayFactory, Upstream, single_route_config
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
