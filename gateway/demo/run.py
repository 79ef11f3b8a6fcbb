"""``mcp-auth-gateway demo``: an SDK upstream, a development issuer and the gateway, together."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import TypeVar

from aiohttp import web

from ..config import ConfigError, load_config
from ..logs import configure_logging
from ..server import start_gateway
from .dev_issuer import WARNING, DevIssuer

T = TypeVar("T")

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"
DEMO_HOST = "127.0.0.1"  # config/demo.yaml, the development issuer and the upstream all listen here
_MAX_PORT = 65535


class PortTaken(Exception):
    """A port the demo needs is in use; the message is the one line the user sees."""


def demo_ports(port: int) -> tuple[int, int, int]:
    """The gateway's port and the two after it: the demo upstream's and the development issuer's."""
    return port, port + 1, port + 2


def taken_ports(ports: Sequence[int], host: str = DEMO_HOST) -> list[int]:
    """Those of ``ports`` that something already listens on at ``host`` (a bind to them fails).

    SO_REUSEADDR as asyncio's servers set it, so a port left in TIME_WAIT by an earlier run does
    not count as taken. Checked before anything starts, so a busy port is one clear line rather
    than a traceback from whichever of the three servers happens to start last.
    """
    taken = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                taken.append(port)
    return taken


def port_taken_message(port: int, taken: Sequence[int]) -> str:
    """The one line for a busy port: which one, and how to move the demo elsewhere."""
    gateway, upstream, issuer = demo_ports(port)
    names = {gateway: "gateway", upstream: "demo upstream", issuer: "development issuer"}
    busy = ", ".join(f"{number} ({names.get(number, 'demo')})" for number in taken)
    return (
        f"mcp-auth-gateway demo: port {busy} on {DEMO_HOST} is already in use; the demo needs "
        f"{gateway}, {upstream} and {issuer}: pick another base port with --port, e.g. --port {port + 100}"
    )


def run_demo(port: int) -> int:
    """Run the demo on ``port`` (and the next two) until Ctrl-C; 1 if it cannot start."""
    if importlib.util.find_spec("mcp") is None:
        print("The demo upstream needs the MCP SDK: pip install 'mcp-auth-gateway[demo]'", file=sys.stderr)
        return 1
    if not DEMO_CONFIG.is_file():
        print(f"{DEMO_CONFIG} not found: run the demo from a checkout of the repository", file=sys.stderr)
        return 1
    if not 1 <= port <= _MAX_PORT - 2:
        print(
            f"mcp-auth-gateway demo: --port must be 1..{_MAX_PORT - 2} (it uses the next two ports too)",
            file=sys.stderr,
        )
        return 1
    taken = taken_ports(demo_ports(port))
    if taken:
        print(port_taken_message(port, taken), file=sys.stderr)
        return 1
    with contextlib.suppress(KeyboardInterrupt):
        try:
            return asyncio.run(_demo(port))
        except PortTaken as exc:  # taken by someone else between the check and the start
            print(exc, file=sys.stderr)
            return 1
    return 0


async def _listening(port: int, taken_by: int, start: Awaitable[T]) -> T:
    """``start``'s result; a failure to bind ``port`` (in use since the check) as ``PortTaken``."""
    try:
        return await start
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise PortTaken(port_taken_message(port, [taken_by])) from None


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
    try:
        await _listening(port, port + 2, web.TCPSite(issuer_runner, DEMO_HOST, port + 2).start())
    except PortTaken:
        await issuer_runner.cleanup()
        raise

    upstream = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.demo.upstream", "--port", str(port + 1)
    )
    gateway_runner = None
    try:
        await _wait_for_port(port + 1)
        gateway_runner, _ = await _listening(port, port, start_gateway(config))
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
