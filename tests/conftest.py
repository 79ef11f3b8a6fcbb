"""Shared fixtures: an in-process issuer, the SDK upstream fixture, and the gateway in front of it.

Every server binds 127.0.0.1 on a free port and is stopped by the fixture that started it.
Every log line the gateway writes during the run is kept, in-process and from the gateway
processes tests start (tests/support/processes.py), so tests can prove that no token ever
reaches a log.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import pytest
from aiohttp import web
from blockbuster import BlockBuster, blockbuster_ctx

from gateway.config import GatewayConfig, load_config
from gateway.logs import configure_logging
from gateway.server import start_gateway
from gateway.web.admin import ADMIN
from tests.support.fake_as import FakeAuthorizationServer
from tests.support.issuer import MINTED_TOKENS, TestIssuer, serving
from tests.support.processes import GATEWAY_LOGS, REPO_ROOT


class LogSink(io.StringIO):
    """Everything the gateway logged in this test session, one JSON object per line."""

    def lines(self) -> list[str]:
        return self.getvalue().splitlines()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]


_SESSION_LOGS = LogSink()

# Client secrets the tests configure: the fake AS's client secret (token exchange, introspection)
# and the static upstream API key of tests/integration/test_credentials.py. None may be logged,
# as written or in the encodings the gateway sends them in.
CANARY_SECRETS: tuple[str, ...] = (FakeAuthorizationServer.client_secret, "upstream-api-key-123")


def _leaked_secrets(logs: str) -> list[str]:
    return [
        secret[:4] + "…"
        for secret in CANARY_SECRETS
        if any(form in logs for form in {secret, quote_plus(secret), quote(secret, safe="")})
    ]


def _gateway_process_output() -> str:
    """What every gateway subprocess of the session wrote (stdout and stderr)."""
    return "".join(
        path.read_text(encoding="utf-8", errors="replace") for path in GATEWAY_LOGS if path.exists()
    )


@pytest.fixture(autouse=True, scope="session")
def gateway_logs() -> Iterator[LogSink]:
    """JSON logs at DEBUG for the whole session (the gateway's own events and every library's
    records, which go through the same pipeline); at the end, no token minted by any test and no
    canary client secret is in them, nor in anything a gateway subprocess wrote."""
    configure_logging(json=True, level="debug", stream=_SESSION_LOGS)
    yield _SESSION_LOGS
    logs = _SESSION_LOGS.getvalue() + _gateway_process_output()
    # The signature segment is unique to each token and survives any truncation of the rest.
    leaked = [token[:16] for token in MINTED_TOKENS if token.rsplit(".", 1)[-1] in logs]
    assert not leaked, f"{len(leaked)} test tokens appear in gateway logs"
    secrets = _leaked_secrets(logs)
    assert not secrets, f"client secrets appear in gateway logs: {secrets}"


@pytest.fixture(autouse=True)
def blockbuster(request: pytest.FixtureRequest) -> Iterator[BlockBuster | None]:
    """Fail the test on a blocking call (file, socket, sleep, lock) made on a running event loop.

    Active for every test, as in aiohttp's own suite; it only fires while a loop runs in the
    calling thread: async tests and fixtures, and tests that drive a loop themselves. Gateway code
    gets no exemption: a blocking call there is a bug to fix. A test that blocks on purpose says
    so with ``@pytest.mark.allow_blocking(reason)``; a module may allow one of its own helpers by
    name (``can_block_in``) with a comment saying why that cannot stall a gateway.
    """
    marker = request.node.get_closest_marker("allow_blocking")
    if marker is not None:
        assert marker.args, "allow_blocking needs a reason"
        yield None
        return
    with blockbuster_ctx() as bb:
        # The SDK client imports two modules lazily, on the loop, once per session, and both imports
        # read files: httpx2 imports httpcore2 (which reads its package metadata) when the first
        # AsyncClient is built; the session imports jsonschema (which reads its bundled schemas)
        # to validate the first tool result. Third-party code, not on the gateway's path.
        for func in ("io.BufferedReader.read", "io.TextIOWrapper.read", "os.listdir"):
            bb.functions[func].can_block_in("httpx2/_transports/default.py", "__init__")
            bb.functions[func].can_block_in("mcp/client/session.py", "validate_tool_result")
        yield bb


@pytest.fixture
async def issuer() -> AsyncIterator[TestIssuer]:
    async with serving() as test_issuer:
        yield test_issuer


@dataclass
class Upstream:
    """The SDK fixture server: its MCP URL and what it has recorded."""

    base_url: str
    http: aiohttp.ClientSession

    @property
    def mcp_url(self) -> str:
        return self.base_url + "/mcp"

    async def records(self) -> list[dict[str, Any]]:
        async with self.http.get(self.base_url + "/__records") as response:
            return await response.json()  # type: ignore[no-any-return]

    async def requests(self) -> list[dict[str, Any]]:
        return [record for record in await self.records() if "event" not in record]

    async def clear(self) -> None:
        async with self.http.post(self.base_url + "/__records/clear") as response:
            response.raise_for_status()


def spawn_upstream(*args: str, module: str = "tests.support.upstream_server") -> Iterator[str]:
    """Run an SDK fixture server (``module``, which prints ``LISTENING <port>``) in a subprocess;
    yields its base URL; stops it afterwards."""
    # As a context manager, Popen also closes the stdout pipe at the end (else a ResourceWarning).
    with subprocess.Popen(
        [sys.executable, "-m", module, "--port", "0", *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            word, _, port = proc.stdout.readline().strip().partition(" ")
            if word != "LISTENING":
                raise RuntimeError(f"upstream fixture failed to start (exit {proc.poll()})")
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def upstream_process() -> Iterator[str]:
    """One SDK upstream for the session (starting one costs about a second)."""
    yield from spawn_upstream()


@pytest.fixture(scope="session")
def json_upstream_process() -> Iterator[str]:
    """An SDK upstream that answers POSTs with application/json instead of SSE."""
    yield from spawn_upstream("--json-response")


async def fresh_upstream(base_url: str) -> AsyncIterator[Upstream]:
    async with aiohttp.ClientSession() as http:
        upstream = Upstream(base_url, http)
        await upstream.clear()
        yield upstream


@pytest.fixture
async def upstream(upstream_process: str) -> AsyncIterator[Upstream]:
    """The session's SDK upstream, with its records cleared for this test."""
    async for fresh in fresh_upstream(upstream_process):
        yield fresh


@pytest.fixture
async def json_upstream(json_upstream_process: str) -> AsyncIterator[Upstream]:
    async for fresh in fresh_upstream(json_upstream_process):
        yield fresh


@dataclass
class Gateway:
    url: str
    config: GatewayConfig
    routes: dict[str, str] = field(default_factory=dict)
    admin_url: str | None = None  # the admin listener (/metrics), when the config has `admin:`

    def route_url(self, path: str = "/mcp") -> str:
        return self.url + path


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start_gateway_with(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    """Start gateways from YAML text; ``{port}`` in the text is not needed (port 0 is used)."""
    runners: list[web.AppRunner] = []

    async def start(yaml_text: str, *, wait_ready: bool = True) -> Gateway:
        path = tmp_path / f"gateway-{len(runners)}.yaml"
        # Writing and loading the config is start-up work (``serve`` does it before its loop runs):
        # off the loop, which the gateways of this test share.
        await asyncio.to_thread(path.write_text, textwrap.dedent(yaml_text))
        config = await asyncio.to_thread(load_config, path)
        runner, port = await start_gateway(config, host="127.0.0.1", port=0)
        runners.append(runner)
        url = f"http://127.0.0.1:{port}"
        if wait_ready:
            async with aiohttp.ClientSession() as http:
                for _ in range(200):
                    async with http.get(url + "/readyz") as response:
                        if response.status == 200:
                            break
                    await asyncio.sleep(0.02)
                else:
                    raise RuntimeError("gateway never became ready")
        admin = runner.app.get(ADMIN)
        admin_url = f"http://127.0.0.1:{admin.port}" if admin is not None else None
        return Gateway(url=url, config=config, admin_url=admin_url)

    yield start
    for runner in runners:
        await runner.cleanup()


def single_route_config(issuer: TestIssuer, upstream_url: str, **route_extra: Any) -> str:
    """The common case: one issuer (discovered), one route at /mcp; every tool, resource and
    prompt allowed with the route scope unless the test passes its own rules."""
    for section in ("tools", "resources", "prompts"):
        route_extra.setdefault(section, {"*": []})
    extra = "".join(f"\n            {key}: {json.dumps(value)}" for key, value in route_extra.items())
    return f"""
        listen: {{host: 127.0.0.1, port: 0}}
        public_url: http://127.0.0.1:8080
        issuers:
          - issuer: {issuer.issuer}
            algorithms: [RS256, ES256]
            jwks: {{discover: true}}
            leeway_s: 5
            jwks_refresh_cooldown_s: 0.2
        routes:
          - path: /mcp
            upstream: {upstream_url}
            scopes: [mcp:access]{extra}
        """
