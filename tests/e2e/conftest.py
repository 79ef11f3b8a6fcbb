"""End-to-end fixtures: a real authorization server (oidc-provider, Node) and the gateway on a
fixed port whose ``public_url`` is its real URL, so the official SDK client can discover
everything by itself.

The authorization server lives in ``authorization_server/`` (``server.js``, ``package.json``,
``package-lock.json``), the official TypeScript SDK host in ``ts_client/`` (``journey.mjs``, with
SDK 1.x and 2.x pinned in its lockfile). Each folder's ``node_modules`` is installed with
``npm ci`` from its committed lockfile the first time it is missing or stale, and reused
afterwards. Node.js 20.18 or newer
and npm are required: without them every test here fails with a message saying so (CI has Node 20).

Every server binds 127.0.0.1 on a free port and is stopped by the fixture that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.config import load_config
from gateway.server import start_gateway
from tests.conftest import Gateway

AS_DIR = Path(__file__).resolve().parent / "authorization_server"
TS_CLIENT_DIR = Path(__file__).resolve().parent / "ts_client"
INSTALL_STAMP_NAME = ".e2e-installed-from"
"""Written into ``node_modules`` after a successful ``npm ci``: the hash of the manifest and
lockfile it installed."""
NODE_MODULES = AS_DIR / "node_modules"
INSTALL_STAMP = NODE_MODULES / INSTALL_STAMP_NAME

MIN_NODE = (20, 18)  # oidc-provider 9 uses URL.parse and crypto.hash
NPM_CI_TIMEOUT_S = 300
AS_STARTUP_TIMEOUT_S = 20

GATEWAY_CLIENT_ID = "gateway"
GATEWAY_CLIENT_SECRET = "e2e-gateway-secret"


def _say(config: pytest.Config, message: str) -> None:
    """A line on the terminal even while output is captured (npm ci can take a while)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        reporter.write_line(f"[e2e] {message}")


def _require_node() -> tuple[str, str]:
    """Paths of node and npm, or a test failure that says what is missing."""
    wanted = ".".join(map(str, MIN_NODE))
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            f"the end-to-end tests need Node.js >= {wanted} and npm on PATH "
            f"(node: {node or 'not found'}, npm: {npm or 'not found'}); they run a real "
            f"authorization server from {AS_DIR.relative_to(AS_DIR.parents[2])}",
            pytrace=False,
        )
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    match = re.fullmatch(r"v(\d+)\.(\d+)\..*", version)
    if match is None or (int(match.group(1)), int(match.group(2))) < MIN_NODE:
        pytest.fail(
            f"the end-to-end tests need Node.js >= {wanted}, found {version!r} at {node}", pytrace=False
        )
    return node, npm


def _lock_digest(package_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((package_dir / name).read_bytes())
    return digest.hexdigest()


def _ensure_node_modules(config: pytest.Config, npm: str, package_dir: Path = AS_DIR) -> None:
    """``npm ci`` in ``package_dir`` unless its node_modules was installed from exactly this
    lockfile already."""
    wanted = _lock_digest(package_dir)
    stamp = package_dir / "node_modules" / INSTALL_STAMP_NAME
    lock_path = (
        Path(tempfile.gettempdir())
        / f"mcp-gateway-e2e-npm-{hashlib.sha256(bytes(package_dir)).hexdigest()[:16]}.lock"
    )
    with open(lock_path, "w") as lock:  # one installer at a time (node_modules itself is replaced)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text().strip() == wanted:
            return
        _say(config, f"npm ci in {package_dir} (node_modules missing or stale) ...")
        started = time.monotonic()
        try:
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=package_dir,
                capture_output=True,
                text=True,
                timeout=NPM_CI_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"npm ci in {package_dir} did not finish within {NPM_CI_TIMEOUT_S} s", pytrace=False)
        if result.returncode != 0:
            pytest.fail(
                f"npm ci in {package_dir} failed (exit {result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}",
                pytrace=False,
            )
        stamp.write_text(wanted + "\n")
        _say(config, f"npm ci done in {time.monotonic() - started:.1f} s")


@dataclass
class AuthorizationServer:
    """The running oidc-provider: its issuer, the confidential ``gateway`` client, its request log."""

    issuer: str
    client_id: str
    client_secret: str
    stderr_path: Path

    def url(self, path: str) -> str:
        return self.issuer + path

    async def log(self) -> list[dict[str, Any]]:
        """Every request the server recorded since the last clear, oldest first."""
        async with aiohttp.ClientSession() as http, http.get(self.url("/__log")) as response:
            response.raise_for_status()
            records: list[dict[str, Any]] = await response.json()
            return records

    async def clear_log(self) -> None:
        async with aiohttp.ClientSession() as http, http.post(self.url("/__log/clear")) as response:
            response.raise_for_status()

    async def metadata(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            async with http.get(self.url("/.well-known/openid-configuration")) as response:
                response.raise_for_status()
                document: dict[str, Any] = await response.json()
                return document


def _read_listening_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The first stdout line, read on a thread so a hung server cannot hang the session."""
    line: list[str] = []
    reader = threading.Thread(
        target=lambda: line.append(proc.stdout.readline() if proc.stdout else ""), daemon=True
    )
    reader.start()
    reader.join(timeout)
    return line[0] if line else ""


@pytest.fixture(scope="session")
def authorization_server(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthorizationServer]:
    """One oidc-provider for the session (``node server.js --port 0``); stopped at the end.
    Dynamically registered clients may ask for every scope (``--registration-scope every``)."""
    yield from _run_authorization_server(pytestconfig, tmp_path_factory, "--registration-scope", "every")


@pytest.fixture(scope="session")
def strict_authorization_server(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthorizationServer]:
    """A second oidc-provider that keeps what clients register: an authorization for a scope
    beyond a client's registered ``scope`` is refused (``--registration-scope as-registered``)."""
    yield from _run_authorization_server(
        pytestconfig, tmp_path_factory, "--registration-scope", "as-registered"
    )


def _run_authorization_server(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory, *extra_args: str
) -> Iterator[AuthorizationServer]:
    """Start ``server.js`` with ``extra_args``, yield it once it listens, stop it afterwards."""
    node, npm = _require_node()
    _ensure_node_modules(pytestconfig, npm)
    stderr_path = tmp_path_factory.mktemp("authorization_server") / "stderr.log"
    env = {
        **os.environ,
        "AS_GATEWAY_CLIENT_ID": GATEWAY_CLIENT_ID,
        "AS_GATEWAY_CLIENT_SECRET": GATEWAY_CLIENT_SECRET,
    }
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(
            [node, "server.js", "--port", "0", "--exit-with-stdin", *extra_args],
            cwd=AS_DIR,
            env=env,
            stdin=subprocess.PIPE,  # the server exits when this closes, even if pytest is killed
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    drain: threading.Thread | None = None
    try:
        line = _read_listening_line(proc, AS_STARTUP_TIMEOUT_S)
        word, _, port = line.strip().partition(" ")
        if word != "LISTENING" or not port.isdigit():
            pytest.fail(
                f"the authorization server did not start (exit {proc.poll()}, first line {line!r}):\n"
                + textwrap.indent(stderr_path.read_text()[-4000:], "  "),
                pytrace=False,
            )
        # Nothing else is written to stdout, but keep the pipe drained all the same.
        drain = threading.Thread(target=lambda: proc.stdout and proc.stdout.read(), daemon=True)
        drain.start()
        yield AuthorizationServer(
            issuer=f"http://127.0.0.1:{port}",
            client_id=GATEWAY_CLIENT_ID,
            client_secret=GATEWAY_CLIENT_SECRET,
            stderr_path=stderr_path,
        )
    finally:
        proc.terminate()
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if drain is not None:
            drain.join(5)  # the server has exited: its stdout is at end of file
        if proc.stdout is not None:
            proc.stdout.close()  # else a ResourceWarning


@pytest.fixture
async def authorization_server_log(authorization_server: AuthorizationServer) -> AuthorizationServer:
    """The session's authorization server with its request log cleared for this test."""
    await authorization_server.clear_log()
    return authorization_server


TS_HOST_TIMEOUT_S = 30
"""A whole journey of the TypeScript host (each authorization is a few local round trips)."""


@dataclass
class TypeScriptHost:
    """``ts_client/journey.mjs``: an MCP host on the official TypeScript SDK (1.x or 2.x)."""

    node: str
    script: Path

    async def run(
        self, url: str, *steps: str, sdk: str, era: str = "2025", list_driven: bool = False
    ) -> list[dict[str, Any]]:
        """Run one journey against ``url`` (see the script's header for ``steps``); returns its
        events, oldest first. Fails the test, with the host's stderr, if it did not end well."""
        command = [self.node, str(self.script), "--url", url, "--sdk", sdk, "--era", era, *steps]
        if list_driven:
            command.append("--list-driven")
        proc = await asyncio.create_subprocess_exec(
            *command,
            cwd=self.script.parent,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), TS_HOST_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            pytest.fail(f"the TypeScript host did not finish within {TS_HOST_TIMEOUT_S} s: {command}")
        events = [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]
        if proc.returncode != 0 or not events or events[-1]["event"] != "done":
            pytest.fail(
                f"the TypeScript host failed (exit {proc.returncode}):\n"
                + "\n".join(json.dumps(event) for event in events)
                + "\n"
                + stderr.decode()[-4000:],
                pytrace=False,
            )
        return events


@pytest.fixture(scope="session")
def ts_host(pytestconfig: pytest.Config) -> TypeScriptHost:
    """The TypeScript SDK host, its ``node_modules`` installed from ``ts_client/package-lock.json``."""
    node, npm = _require_node()
    _ensure_node_modules(pytestconfig, npm, TS_CLIENT_DIR)
    return TypeScriptHost(node=node, script=TS_CLIENT_DIR / "journey.mjs")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def start_public_gateway(tmp_path: Path) -> AsyncIterator[Any]:
    """Start gateways whose ``public_url`` is their own address.

    ``start(yaml_text)`` replaces ``{port}`` and ``{public_url}`` in the YAML (plain text
    replacement, no other braces are touched) with a free port and its URL,
    starts the real gateway there (the same ``start_gateway`` as ``serve``), waits for
    ``/readyz`` (the issuer's keys are loaded) and returns the tests' ``Gateway``. The port is
    picked, released and bound again, so a lost race is retried on another port.
    """
    runners: list[web.AppRunner] = []

    async def start(yaml_text: str) -> Gateway:
        for attempt in range(5):
            port = _free_port()
            public_url = f"http://127.0.0.1:{port}"
            path = tmp_path / f"gateway-{len(runners)}-{attempt}.yaml"
            text = textwrap.dedent(yaml_text).replace("{public_url}", public_url).replace("{port}", str(port))
            # Start-up work (``serve`` does it before its loop runs): off the loop the gateway shares.
            await asyncio.to_thread(path.write_text, text)
            config = await asyncio.to_thread(load_config, path)
            try:
                runner, bound = await start_gateway(config, host="127.0.0.1", port=port)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            runners.append(runner)
            assert bound == port
            await _wait_ready(public_url)
            return Gateway(url=public_url, config=config)
        raise RuntimeError("no free port for the gateway after 5 attempts")

    yield start
    for runner in runners:
        await runner.cleanup()


async def _wait_ready(url: str) -> None:
    import asyncio

    async with aiohttp.ClientSession() as http:
        for _ in range(250):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url + "/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.02)
    raise RuntimeError(f"gateway at {url} never became ready (issuer keys not loaded?)")
