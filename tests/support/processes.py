"""Start the SDK upstream fixture (tests/support/upstream_server.py) and read its request records."""

from __future__ import annotations

import asyncio
import functools
import json
import resource
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository root: the working directory for `python -m tests.support...`."""


@asynccontextmanager
async def start_upstream(
    *args: str, startup_timeout: float = 15.0, module: str = "tests.support.upstream_server"
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """Run `python -m <module> --port 0 *args` (the SDK upstream fixture unless another is named);
    yield `(base_url, proc)`.

    `base_url` is `http://127.0.0.1:<port>` (the MCP endpoint is `base_url + "/mcp"`, the
    records are at `base_url + "/__records"`). The process is terminated and reaped on exit
    (killed if it does not stop within 5 s). stderr is inherited so server errors show up in
    pytest's captured output.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        "--port",
        "0",
        *args,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), startup_timeout)
        except TimeoutError:
            raise RuntimeError(f"upstream fixture did not start within {startup_timeout} s") from None
        word, _, port = line.decode().strip().partition(" ")
        if word != "LISTENING" or not port.isdigit():
            raise RuntimeError(f"upstream fixture failed to start (exit {proc.returncode}): {line!r}")
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def upstream_records(base_url: str) -> list[dict[str, Any]]:
    """The fixture's request records (`GET /__records`), oldest first."""
    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/__records") as response:
        response.raise_for_status()
        records: list[dict[str, Any]] = await response.json()
        return records


async def clear_upstream_records(base_url: str) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{base_url}/__records/clear") as response:
        response.raise_for_status()


def record_header(record: Mapping[str, Any], name: str) -> str | None:
    """The first value of header `name` (case-insensitive) in a request record."""
    return next((value for key, value in record["headers"] if key.lower() == name.lower()), None)


def record_json(record: Mapping[str, Any]) -> Any:
    """A request record's body decoded as JSON."""
    return json.loads(record["body"].encode("latin-1"))


GATEWAY_LOGS: list[Path] = []
"""The output file (stdout and stderr) of every gateway process a test started; at the end of the
session, tests/conftest.py proves that no test token and no canary secret is in any of them."""


def register_gateway_log(path: Path) -> Path:
    """Add a gateway subprocess's output file to the session's leak check; returns ``path``."""
    GATEWAY_LOGS.append(path)
    return path


@dataclass
class GatewayProcess:
    """A ``python -m gateway serve`` process: where it listens and what it wrote."""

    proc: asyncio.subprocess.Process
    log_path: Path
    url: str

    async def log_text(self) -> str:
        """Everything the process wrote so far (stdout and stderr), read off the event loop."""
        return await asyncio.to_thread(self.log_path.read_text, encoding="utf-8", errors="replace")

    async def events(self) -> list[dict[str, Any]]:
        """Its JSON log events; any other line (a traceback, a warning) is left out."""
        return _json_events(await self.log_text())


def _json_events(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _limit_open_files(limit: int) -> None:
    """In the child, before exec: the open-file limit, soft and hard."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def _limit_child(open_files: int | None, max_file_bytes: int | None) -> None:
    """In the child, before exec: the limits ``start_gateway_process`` was asked for."""
    if open_files is not None:
        _limit_open_files(open_files)
    if max_file_bytes is not None:
        # A write past the size then fails with EFBIG, as on a full disk; ignored (it survives
        # exec), SIGXFSZ would kill the process instead.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))


@asynccontextmanager
async def start_gateway_process(
    config_path: Path,
    log_path: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 20.0,
    open_files: int | None = None,
    max_file_bytes: int | None = None,
) -> AsyncIterator[GatewayProcess]:
    """Run ``python -m gateway serve --config config_path *args`` with stdout and stderr written
    to ``log_path`` (registered for the session's leak check); yield it once it logged
    ``listening`` with its bound port (``listen.port: 0`` works; the log format must be JSON,
    the default). Stopped with SIGTERM on exit (killed if it does not stop within 15 s).
    ``open_files``: the process's RLIMIT_NOFILE, soft and hard (as ``ulimit -n`` would set it);
    ``max_file_bytes``: its RLIMIT_FSIZE (``ulimit -f``): no file it writes, its log file
    included, grows past it."""
    register_gateway_log(log_path)
    log_file = await asyncio.to_thread(log_path.open, "wb")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(config_path),
            *args,
            cwd=REPO_ROOT,
            env=None if env is None else dict(env),
            stdout=log_file,
            stderr=log_file,
            preexec_fn=None
            if open_files is None and max_file_bytes is None
            else functools.partial(_limit_child, open_files, max_file_bytes),
        )
    finally:
        await asyncio.to_thread(log_file.close)
    try:
        gateway = GatewayProcess(proc, log_path, "")
        deadline = time.monotonic() + startup_timeout
        while not (listening := [e for e in await gateway.events() if e.get("event") == "listening"]):
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"gateway did not start (exit {proc.returncode}):\n{(await gateway.log_text())[-4000:]}"
                )
            await asyncio.sleep(0.05)
        gateway.url = f"http://{listening[0]['host']}:{listening[0]['port']}"
        yield gateway
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
