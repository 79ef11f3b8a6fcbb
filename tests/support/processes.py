"""Start the SDK upstream fixture (tests/support/upstream_server.py) and read its request records."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository root: the working directory for `python -m tests.support...`."""


@asynccontextmanager
async def start_upstream(
    *args: str, startup_timeout: float = 15.0
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """Run `python -m tests.support.upstream_server --port 0 *args`; yield `(base_url, proc)`.

    `base_url` is `http://127.0.0.1:<port>` (the MCP endpoint is `base_url + "/mcp"`, the
    records are at `base_url + "/__records"`). The process is terminated and reaped on exit
    (killed if it does not stop within 5 s). stderr is inherited so server errors show up in
    pytest's captured output.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.upstream_server",
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
