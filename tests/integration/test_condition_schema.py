"""A condition on ``arguments.X`` of a tool whose inputSchema has no ``X``, against the real SDK
upstream: reported once when the gateway sees the tools/list, and by ``check-config --upstream``.

The upstream's echo tool takes ``text``; the rule's condition reads ``arguments.txt``.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from gateway.cli import main
from tests.conftest import GatewayFactory, LogSink, Upstream
from tests.integration.test_metrics import scrape, value
from tests.support.issuer import TestIssuer
from tests.support.mcp_client import session_client

RESOURCE = "http://127.0.0.1:8080/mcp"


def schema_config(issuer: TestIssuer, upstream_url: str, field: str = "txt") -> str:
    return f"""
        listen: {{host: 127.0.0.1, port: 0}}
        admin: {{host: 127.0.0.1, port: 0}}
        public_url: http://127.0.0.1:8080
        issuers: [{{issuer: {issuer.issuer}, algorithms: [RS256], jwks: {{discover: true}}}}]
        routes:
          - path: /mcp
            upstream: {upstream_url}
            scopes: [mcp:access]
            tools:
              echo: {{condition: 'arguments.{field} == "x"'}}
              "*": []
        """


async def test_a_listed_mismatch_is_logged_and_counted_once(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory, gateway_logs: LogSink
) -> None:
    """Two tools/list through the gateway: one condition_argument_not_in_schema warning naming the
    route, rule, tool and argument, and the mismatch metric at 1; the list itself is untouched."""
    gateway = await start_gateway_with(schema_config(issuer, upstream.mcp_url))
    seen_before = len(gateway_logs.lines())
    token = issuer.mint(audience=RESOURCE, scope="mcp:access")
    async with session_client(gateway.route_url(), {"Authorization": f"Bearer {token}"}) as client:
        first = await client.list_tools()
        second = await client.list_tools()
    names = sorted(item.name for item in first.tools)
    assert "echo" in names
    assert sorted(item.name for item in second.tools) == names
    events = gateway_logs.events()[seen_before:]
    reported = [event for event in events if event.get("event") == "condition_argument_not_in_schema"]
    assert [(e["route"], e["rule"], e["tool"], e["argument"]) for e in reported] == [
        ("/mcp", "tools['echo']", "echo", "txt")
    ]
    assert reported[0]["level"] == "warning"
    assert gateway.admin_url is not None
    _, _, samples = await scrape(gateway.admin_url)
    metric = "mcp_gateway_condition_schema_mismatches_total"
    assert value(samples, metric, route="/mcp", rule="tools['echo']") == 1


async def test_a_correct_field_is_not_reported(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory, gateway_logs: LogSink
) -> None:
    """A condition on the tool's real argument (text) is no mismatch: nothing is logged."""
    gateway = await start_gateway_with(schema_config(issuer, upstream.mcp_url, field="text"))
    seen_before = len(gateway_logs.lines())
    token = issuer.mint(audience=RESOURCE, scope="mcp:access")
    async with session_client(gateway.route_url(), {"Authorization": f"Bearer {token}"}) as client:
        await client.list_tools()
    events = gateway_logs.events()[seen_before:]
    assert [event for event in events if event.get("event") == "condition_argument_not_in_schema"] == []


async def check_upstream(path: Path, text: str) -> int:
    """``check-config PATH --upstream``, in a thread: it runs its own event loop."""
    await asyncio.to_thread(path.write_text, textwrap.dedent(text))
    return await asyncio.to_thread(main, ["check-config", str(path), "--upstream"])


@pytest.mark.parametrize("answers", ["sse", "json"])
async def test_check_config_asks_the_upstream(
    issuer: TestIssuer,
    upstream: Upstream,
    json_upstream: Upstream,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    answers: str,
) -> None:
    """check-config --upstream lists the upstream's tools (an SSE or a JSON answer) and prints the
    mismatch with the rule's file:line, exiting 1; with the right field it exits 0."""
    url = (upstream if answers == "sse" else json_upstream).mcp_url
    path = tmp_path / "gateway.yaml"
    assert await check_upstream(path, schema_config(issuer, url)) == 1
    out = capsys.readouterr().out.splitlines()
    written = textwrap.dedent(schema_config(issuer, url)).splitlines()
    line = next(number for number, text in enumerate(written, 1) if "echo:" in text)
    report = [text for text in out if text.startswith(("upstream check", "  "))]
    assert f"upstream check: route /mcp -> {url}: 6 tools listed, 1 mismatch(es)" in report
    assert (
        f"  {path}:{line}: tools['echo']: tool 'echo' has no argument 'txt' in its inputSchema "
        "(the condition reads arguments.txt)"
    ) in report
    assert await check_upstream(path, schema_config(issuer, url, field="text")) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"upstream check: route /mcp -> {url}: 6 tools listed, 0 mismatch(es)" in out


async def test_check_config_reports_an_unreachable_upstream(
    issuer: TestIssuer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An upstream nobody answers at is reported, and check-config exits 1."""
    url = "http://127.0.0.1:9/mcp"  # the discard port: nothing listens there
    assert await check_upstream(tmp_path / "gateway.yaml", schema_config(issuer, url)) == 1
    out = capsys.readouterr().out.splitlines()
    assert any(text.startswith(f"upstream check: route /mcp -> {url}: unreachable: ") for text in out)
