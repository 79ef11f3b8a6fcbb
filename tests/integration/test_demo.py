"""`mcp-auth-gateway demo` works from a checkout: 401 → token → tool call, then Ctrl-C stops it all."""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import pytest

from tests.support.challenge import parse_bearer_challenge
from tests.support.processes import REPO_ROOT


def three_free_ports() -> int:
    # A random start, so two test runs on one machine do not race for the same ports.
    start = random.randrange(20000, 60000)
    for base in (20000 + (start + step * 97) % 40000 for step in range(400)):
        try:
            sockets = []
            for offset in range(3):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    raise RuntimeError("no three consecutive free ports")


def read_until(proc: subprocess.Popen[str], marker: str, timeout_s: float = 30) -> str:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return "".join(lines)
    raise AssertionError("demo did not print instructions:\n" + "".join(lines))


@pytest.mark.allow_blocking(
    "drives the demo subprocess like a person at a terminal (readline, curl, wait); the gateway runs there"
)
async def test_demo_shows_401_then_token_then_tool_call() -> None:
    """The printed flow works as printed, and Ctrl-C stops the gateway, issuer and upstream."""
    port = three_free_ports()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--port", str(port)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        output = read_until(proc, "Press Ctrl-C")
        mcp_url = f"http://127.0.0.1:{port}/mcp"
        assert f"MCP endpoint       {mcp_url}" in output
        commands = re.findall(r"^  (curl .*|export TOKEN=\$\(curl .*\n.*)$", output, re.MULTILINE)
        assert len(commands) == 3, output
        call = json.loads(re.search(r"-d '(\{\"jsonrpc.*?)'", output).group(1))  # type: ignore[union-attr]
        headers = dict(re.findall(r"-H '([^:]+): ([^']+)'", commands[2]))

        async with aiohttp.ClientSession() as http:
            async with http.post(mcp_url, json=call, headers=headers) as response:
                assert response.status == 401
                challenge = parse_bearer_challenge(response.headers["WWW-Authenticate"])
                assert challenge["resource_metadata"].endswith("/.well-known/oauth-protected-resource/mcp")
            async with http.get(challenge["resource_metadata"]) as response:
                metadata = await response.json()
            issuer = metadata["authorization_servers"][0]
            form = {
                "grant_type": "client_credentials",
                "client_id": "me",
                "scope": "mcp:tools",
                "resource": metadata["resource"],
            }
            async with http.post(issuer + "/token", data=form) as response:
                token = (await response.json())["access_token"]
            async with http.post(
                mcp_url, json=call, headers={**headers, "Authorization": f"Bearer {token}"}
            ) as response:
                assert response.status == 200
                body = await response.read()
        result = json.loads(body.decode().split("data: ", 1)[-1]) if b"data: " in body else json.loads(body)
        assert result["result"]["content"][0]["text"] == "5"

        if shutil.which("curl") and shutil.which("bash"):
            script = "set -e\n" + "\n".join(commands[1:]) + "\n"
            completed = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
            assert completed.returncode == 0, completed.stderr
            assert '"text":"5"' in completed.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        assert proc.stdout is not None
        proc.stdout.close()
    for offset in range(3):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port + offset)) != 0, f"port {port + offset} still open"
