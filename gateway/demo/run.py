"""``mcp-auth-gateway demo``: an SDK upstream, a development issuer and the gateway, together."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from ..config import ConfigError, load_config
from ..logs import configure_logging
from ..server import start_gateway
from .dev_issuer import WARNING, DevIssuer

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"


def run_demo(port: int) -> int:
    if importlib.util.find_spec("mcp") is None:
        print("The demo upstream needs the MCP SDK: pip install 'mcp-auth-gateway[demo]'", file=sys.stderr)
        return 1
    if not DEMO_CONFIG.is_file():
        print(f"{DEMO_CONFIG} not found: run the demo from a checkout of the repository", file=sys.stderr)
        return 1
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_demo(port))
    return 0


async def _demo(port: int) -> int:
    ports = {"DEMO_GATEWAY_PORT": port, "DEMO_UPSTREAM_PORT": port + 1, "DEMO_ISSUER_PORT": port + 2}
    env = {**os.environ, **{name: str(value) for name, value in ports.items()}}
    try:
        config = load_config(DEMO_CONFIG, env)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    configure_logging(json=False, level="info")

    issuer = DevIssuer(f"http://127.0.0.1:{port + 2}")
    issuer_runner = web.AppRunner(issuer.app(), access_log=None)
    await issuer_runner.setup()
    await web.TCPSite(issuer_runner, "127.0.0.1", port + 2).start()

    upstream = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.demo.upstream", "--port", str(port + 1)
    )
    gateway_runner = None
    try:
        await _wait_for_port(port + 1)
        gateway_runner, _ = await start_gateway(config)
        route = config.routes[0]
        token = issuer.mint(audience=route.resource, scope=" ".join(route.scopes))
        print(_instructions(config.public_url, route.resource, issuer.issuer, token), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        if gateway_runner is not None:
            await gateway_runner.cleanup()
        if upstream.returncode is None:
            upstream.terminate()
            await upstream.wait()
        await issuer_runner.cleanup()
    return 0


async def _wait_for_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"demo upstream did not start on port {port}") from None
            await asyncio.sleep(0.1)
        else:
            writer.close()
            await writer.wait_closed()
            return


_JSON_FIELD_PRINTER = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'"


def _instructions(public_url: str, resource: str, issuer: str, token: str) -> str:
    mcp = "-H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream'"
    modern = "-H 'MCP-Protocol-Version: 2026-07-28' -H 'Mcp-Method: tools/call' -H 'Mcp-Name: add'"
    call = (
        '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":2,"b":3},'
        '"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}'
    )
    return f"""
MCP auth gateway demo
  MCP endpoint       {resource}
  resource metadata  {public_url}/.well-known/oauth-protected-resource{resource.removeprefix(public_url)}
  issuer             {issuer}   ({WARNING})

A ready token (scope mcp:tools, 1 hour):
  export TOKEN={token}

1) Without a token the gateway answers 401 and points at its metadata:
  curl -si -X POST {resource} {mcp} {modern} -d '{call}' | head -5

2) A fresh token from the development issuer (client credentials, RFC 8707 resource):
  export TOKEN=$(curl -s {issuer}/token -d grant_type=client_credentials -d client_id=me \\
      -d scope=mcp:tools -d resource={resource} | {_JSON_FIELD_PRINTER})

3) With the token, the tool call goes through to the upstream:
  curl -s -X POST {resource} -H "Authorization: Bearer $TOKEN" {mcp} {modern} -d '{call}'

Press Ctrl-C to stop.
"""
