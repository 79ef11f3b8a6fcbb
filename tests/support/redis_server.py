"""A real ``redis-server`` for tests: 127.0.0.1, a free port, no persistence, a temp dir.

``RedisServer`` can be stopped and started again on the same port (an outage and its end, as a
gateway would see them). The ``redis_server`` fixture gives one per test and skips the test,
saying why, when ``redis-server`` is not installed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

STARTUP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A port nothing listens on now (the OS picks it; the server binds it just after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process, started and stopped by the test that owns it."""

    def __init__(self, executable: str, directory: Path, *arguments: str) -> None:
        self.executable = executable
        self.directory = directory
        self.port = free_port()
        self.arguments = arguments  # more redis-server options (--requirepass, --tls-port, …)
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start the server on ``port`` and wait until it answers ``PING``."""
        self._process = await asyncio.create_subprocess_exec(
            self.executable,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--protected-mode",
            "no",
            *self.arguments,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT_S
        while not await self._answers_ping():
            if self._process.returncode is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}")
            if loop.time() > deadline:
                raise RuntimeError(f"redis-server did not answer within {STARTUP_TIMEOUT_S} s")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and wait until it has exited."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def _answers_ping(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.readline(), 1)
            return answer.startswith((b"+PONG", b"-NOAUTH"))  # up, with or without a password
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()


def redis_executable() -> str:
    """The ``redis-server`` on PATH (or /usr/bin). On a fresh Debian machine where the tests run as
    root (CI), it is installed from the Debian packages first (what ``npm ci`` is for the Node
    suites); the calling test is skipped only when it truly cannot be had."""
    found = _which_redis()
    if found is None and _can_install():
        _install_from_debian()
        found = _which_redis()
    if found is None:
        pytest.skip("redis-server is not installed and cannot be (apt-get install redis-server as root)")
    return found


def _which_redis() -> str | None:
    return shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/local/bin")


def _can_install() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get") is not None


def _install_from_debian() -> None:
    """``apt-get install redis-server`` (after ``apt-get update`` if the package lists lack it)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "redis-server"]
    started = time.monotonic()
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        subprocess.run(install, env=env, capture_output=True, check=False)
    print(f"[redis] apt-get install redis-server done in {time.monotonic() - started:.1f} s", file=sys.stderr)


@pytest.fixture(scope="session")
def redis_binary() -> str:
    """The ``redis-server`` executable, looked up once, off the event loop (it stats files)."""
    return redis_executable()


@pytest.fixture
async def redis_server(redis_binary: str, tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A running ``redis-server`` of this test's own, stopped afterwards."""
    server = RedisServer(redis_binary, tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
