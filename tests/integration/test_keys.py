"""Key rotation, JWKS outages and issuer separation, without restarting the gateway."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import Gateway, GatewayFactory, Upstream, single_route_config
from tests.integration.test_authentication import post
from tests.support.challenge import parse_bearer_challenge
from tests.support.issuer import TestIssuer, serving

RESOURCE = "http://127.0.0.1:8080/mcp"


async def test_rotated_key_is_picked_up_without_restart(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """A token signed by a key published after start-up is accepted after one JWKS refetch."""
    gateway = await start_gateway_with(single_route_config(issuer, upstream.mcp_url))
    old_token = issuer.mint(audience=RESOURCE)
    assert (await post(gateway, {"Authorization": f"Bearer {old_token}"}))[0] == 200
    fetches_before = issuer.jwks_fetches

    issuer.rotate()
    issuer.retire_all_but_active()
    await asyncio.sleep(0.25)  # past the 0.2 s refresh cooldown of the test config
    new_token = issuer.mint(audience=RESOURCE)
    assert (await post(gateway, {"Authorization": f"Bearer {new_token}"}))[0] == 200
    assert issuer.jwks_fetches == fetches_before + 1
    # The retired key is gone from the refetched set: its tokens no longer pass.
    status, headers, _ = await post(gateway, {"Authorization": f"Bearer {old_token}"})
    assert status == 401 and parse_bearer_challenge(headers["WWW-Authenticate"])["error"] == "invalid_token"


async def test_unknown_kid_flood_refetches_at_most_once_per_cooldown(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """50 concurrent tokens with made-up kids cost the issuer at most one JWKS request."""
    config = single_route_config(issuer, upstream.mcp_url).replace(
        "jwks_refresh_cooldown_s: 0.2", "jwks_refresh_cooldown_s: 60"
    )
    gateway = await start_gateway_with(config)
    from tests.support.issuer import SigningKey

    fetches_before = issuer.jwks_fetches
    tokens = [issuer.mint(audience=RESOURCE, key=SigningKey.generate(kid=f"made-up-{n}")) for n in range(50)]
    results = await asyncio.gather(*(post(gateway, {"Authorization": f"Bearer {t}"}) for t in tokens))
    assert {status for status, _, _ in results} == {401}
    assert issuer.jwks_fetches - fetches_before <= 1
    assert await upstream.requests() == []


async def test_cached_keys_keep_working_while_jwks_endpoint_is_down(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """With the issuer down, tokens signed by already-known keys still pass; unknown kids fail."""
    gateway = await start_gateway_with(single_route_config(issuer, upstream.mcp_url))
    issuer.down = True
    await asyncio.sleep(0.25)
    assert (await post(gateway, {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"}))[0] == 200
    issuer.rotate()
    status, _, _ = await post(gateway, {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"})
    assert status == 401


async def test_no_keys_ever_loaded_fails_closed_with_503(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """Issuer down from the start: not ready, and a request gets 503 (fail closed), never forwarded."""
    issuer.down = True
    gateway = await start_gateway_with(single_route_config(issuer, upstream.mcp_url), wait_ready=False)
    async with aiohttp.ClientSession() as http, http.get(gateway.url + "/readyz") as response:
        assert response.status == 503
    status, headers, _ = await post(gateway, {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"})
    assert status == 503
    assert "Retry-After" in headers
    assert await upstream.requests() == []


@pytest.fixture
async def second_issuer() -> AsyncIterator[TestIssuer]:
    async with serving() as other:
        yield other


async def test_token_claiming_one_issuer_signed_by_anothers_key_is_refused(
    issuer: TestIssuer,
    second_issuer: TestIssuer,
    upstream: Upstream,
    start_gateway_with: GatewayFactory,
) -> None:
    """Two trusted issuers: iss=A signed with B's key (even with B's kid) gets 401 (RFC 8725 §3.8)."""
    config = f"""
        public_url: http://127.0.0.1:8080
        issuers:
          - {{issuer: {issuer.issuer}, algorithms: [RS256], jwks: {{discover: true}}}}
          - issuer: {second_issuer.issuer}
            algorithms: [RS256]
            jwks: {{url: {second_issuer.base_url}/jwks}}
        routes:
          - {{path: /mcp, upstream: {upstream.mcp_url}, scopes: [mcp:access]}}
        """
    gateway = await start_gateway_with(config)
    own = second_issuer.mint(audience=RESOURCE)
    assert (await post(gateway, {"Authorization": f"Bearer {own}"}))[0] == 200
    await upstream.clear()
    forged = second_issuer.mint(audience=RESOURCE, claims={"iss": issuer.issuer})
    assert (await post(gateway, {"Authorization": f"Bearer {forged}"}))[0] == 401
    assert await upstream.requests() == []


async def test_jwks_from_file(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory, tmp_path: object
) -> None:
    """`jwks: {file: …}` relative to the config file's folder verifies tokens."""
    from pathlib import Path

    folder = Path(str(tmp_path))
    await asyncio.to_thread((folder / "keys.json").write_text, json.dumps(issuer.jwks()))
    config = f"""
        public_url: http://127.0.0.1:8080
        issuers:
          - {{issuer: {issuer.issuer}, algorithms: [RS256], jwks: {{file: keys.json}}}}
        routes:
          - {{path: /mcp, upstream: {upstream.mcp_url}}}
        """
    gateway: Gateway = await start_gateway_with(config)
    issuer.down = True  # proves the keys came from the file
    assert (await post(gateway, {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"}))[0] == 200
