"""Adversarial checks of observe mode through the real gateway (review of issue 17)."""

from __future__ import annotations

from tests.conftest import GatewayFactory, Upstream
from tests.integration.test_conditions import bearer, called_tools, conditions_config, raw_call
from tests.support.issuer import TestIssuer

ONLY_ECHO_OBSERVED = """
              echo:
                scopes: [demo:read]
                mode: observe"""


async def test_observing_the_only_tools_rule_does_not_open_other_tools(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """FINDING: the route's only tools rule (echo) in observe mode; `add`, which no rule names and
    which is refused as written, must still be refused and never reach the upstream."""
    gateway = await start_gateway_with(conditions_config(issuer, upstream.mcp_url, tools=ONLY_ECHO_OBSERVED))
    status, _body, _challenged = await raw_call(gateway, bearer(issuer), "add", {"a": 1, "b": 2})
    assert status == 403
    assert [name for name, _ in await called_tools(upstream)] == []
