"""The key registry: equal issuer configs share one IssuerKeys and refresh task until the last
lease is returned; a changed config gets its own."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.auth.key_registry import KeyRegistry
from gateway.config import IssuerConfig, JwksFile
from gateway.metrics import GatewayMetrics
from tests.support.issuer import SigningKey, TestIssuer

ISSUER = "https://issuer.test"


@pytest.fixture
def config(tmp_path: Path) -> IssuerConfig:
    path = tmp_path / "jwks.json"
    issuer = TestIssuer(keys=[SigningKey.generate("ES256", kid="k1")], base_url=ISSUER)
    path.write_text(json.dumps(issuer.jwks()))  # before any event loop runs
    return IssuerConfig(issuer=ISSUER, algorithms=("ES256",), jwks=JwksFile(path))


def refresh_tasks() -> list[asyncio.Task[object]]:
    return [task for task in asyncio.all_tasks() if task.get_name() == f"jwks:{ISSUER}" and not task.done()]


async def test_equal_configs_share_keys_until_the_last_lease_is_returned(config: IssuerConfig) -> None:
    """A second lease of an equal config reuses the keys and task; returning the first keeps them."""
    registry = KeyRegistry(GatewayMetrics())
    async with registry.lease(config) as first:
        await first.keys.wait_ready()
        async with registry.lease(replace(config)) as second:
            assert second.keys is first.keys and second.reused and not first.reused
            assert len(refresh_tasks()) == 1
        assert registry.issuers == (config,) and len(refresh_tasks()) == 1
    assert not registry.issuers and refresh_tasks() == []
    await registry.aclose()


async def test_a_changed_config_gets_keys_of_its_own(config: IssuerConfig) -> None:
    """Another setting of the same issuer: fresh keys and task, the other lease's untouched."""
    registry = KeyRegistry(GatewayMetrics())
    async with registry.lease(config) as first, registry.lease(replace(config, leeway_s=5)) as second:
        assert second.keys is not first.keys and not second.reused
        assert len(refresh_tasks()) == 2
    assert refresh_tasks() == []
    await registry.aclose()
