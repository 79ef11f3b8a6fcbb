"""The real ``python -m gateway serve`` process: reload on SIGHUP, graceful stop, workers.

Each test runs the gateway as a subprocess with its config in ``tmp_path`` and a free port, in
front of the session's SDK upstream and the in-process issuer, and reads the process's JSON log
(stderr, written to a file) to follow what it did. Processes are stopped in ``finally``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from blockbuster import BlockBuster
from mcp.shared.exceptions import MCPError

from gateway.config import MintingConfig, load_config
from gateway.server import (
    RESTART_BUDGET,
    RESTART_WINDOW_S,
    reload_from_file,
    restart_allowed,
    restart_delay,
    start_gateway,
)
from gateway.upstream.minting import SigningKeyError
from gateway.web.live import LIVE
from tests.conftest import LogSink, Upstream, single_route_config
from tests.integration.test_authentication import INITIALIZE
from tests.support.issuer import TestIssuer
from tests.support.mcp_client import ProgressLog, session_client
from tests.support.processes import REPO_ROOT, register_gateway_log

RESOURCE = "http://127.0.0.1:8080/mcp"
MCP = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


@pytest.fixture(autouse=True)
def _subprocess_files_may_block(blockbuster: BlockBuster | None) -> None:
    """Reading a gateway subprocess's log file and rewriting its config file block this test's loop
    for a moment, never the gateway's: it runs in another process."""
    if blockbuster is None:
        return
    helpers = {"events", "log_text", "write_config"}
    reads = ("io.BufferedReader.read", "io.TextIOWrapper.read")
    for func in (*reads, "io.BufferedWriter.write", "io.TextIOWrapper.write"):
        blockbuster.functions[func].can_block_in("tests/integration/test_lifecycle.py", helpers)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class GatewayProcess:
    proc: asyncio.subprocess.Process
    log_path: Path
    url: str

    @property
    def mcp_url(self) -> str:
        return self.url + "/mcp"

    def events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a traceback or any other non-JSON output
        return events

    def named(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.events() if event.get("event") == name]

    async def wait_for(
        self,
        name: str,
        *,
        count: int = 1,
        within: float = 15.0,
        where: Callable[[dict[str, Any]], bool] = bool,
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + within
        while True:
            found = [event for event in self.named(name) if where(event)]
            if len(found) >= count:
                return found
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"no {count}x {name!r} (exit {self.proc.returncode}):\n{self.log_text()}"
                )
            await asyncio.sleep(0.05)

    def log_text(self) -> str:
        return self.log_path.read_text()[-6000:]

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)


async def eventually(check: Callable[[], Any], what: str, *, within: float = 10.0) -> None:
    """Poll ``check`` (sync or async) until it is truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {within}s")
        await asyncio.sleep(0.02)


def write_config(path: Path, yaml_text: str, port: int, **top: Any) -> None:
    text = textwrap.dedent(yaml_text).replace("port: 0}", f"port: {port}}}")
    assert f"port: {port}" in text
    path.write_text(text + "".join(f"{key}: {json.dumps(value)}\n" for key, value in top.items()))


@asynccontextmanager
async def gateway_process(
    config_path: Path, port: int, log_path: Path, *args: str, workers: int = 1
) -> AsyncIterator[GatewayProcess]:
    """``python -m gateway serve --config config_path *args``, ready (every worker listening)."""
    register_gateway_log(log_path)  # checked for tokens at the end of the session
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(config_path),
            *args,
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=log_file,
        )
    gateway = GatewayProcess(proc, log_path, f"http://127.0.0.1:{port}")
    try:
        await gateway.wait_for("listening", count=workers)
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                async with http.get(gateway.url + "/readyz") as response:
                    if response.status == 200:
                        break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the gateway never became ready")
        yield gateway
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def bearer(issuer: TestIssuer) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"}


def modern_call(
    tool: str, arguments: dict[str, Any], *, progress_token: str | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """A 2026-07-28 tools/call, body and headers, without a token."""
    meta: dict[str, Any] = {**META, **({"progressToken": progress_token} if progress_token else {})}
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": meta},
    }
    headers = {**MCP, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": tool}
    return body, headers


def text_of(result: object) -> str:
    return result.content[0].text  # type: ignore[attr-defined,no-any-return]


async def add(gateway: GatewayProcess, issuer: TestIssuer) -> str | int:
    """tools/call add(1, 2) through the gateway (2026-07-28: no session): the result's text, or
    the JSON-RPC error code if refused."""
    async with session_client(gateway.mcp_url, bearer(issuer), era="2026") as client:
        try:
            return text_of(await client.call_tool("add", {"a": 1, "b": 2}))
        except MCPError as exc:
            return exc.error.code


async def test_sighup_reload_applies_a_valid_config_refuses_an_invalid_one_and_keeps_streams(
    issuer: TestIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    """A tool denied by the first config is allowed after a reload; an invalid config is refused
    with its problem in the log and the running config kept; an SSE stream opened before the
    reload keeps delivering events after it, on the old gateway, which closes once it ends."""
    port = free_port()
    config_path = tmp_path / "gateway.yaml"
    denies_add = single_route_config(issuer, upstream.mcp_url, tools={"echo": [], "slow_stream": []})
    allows_all = single_route_config(issuer, upstream.mcp_url, tools={"*": []})
    write_config(config_path, denies_add, port)
    async with gateway_process(config_path, port, tmp_path / "gateway.log") as gateway:
        assert await add(gateway, issuer) == -32003  # no rule allows it

        # An SSE response stream (2025 era: progress notifications, then the result), ~5 s long.
        progress = ProgressLog()
        async with session_client(gateway.mcp_url, bearer(issuer), era="2025") as client:
            stream = asyncio.create_task(
                client.call_tool("slow_stream", {"count": 100, "delay_ms": 50}, progress_callback=progress)
            )
            await eventually(lambda: len(progress.values) >= 5, "progress")

            write_config(config_path, allows_all, port)
            gateway.signal(signal.SIGHUP)
            (reloaded,) = await gateway.wait_for("config_reloaded")
            reloaded_at = time.monotonic()
            assert reloaded["routes"] == ["/mcp"] and reloaded["keys_ready"] is True
            assert not stream.done(), "the stream should still be running"
            assert await add(gateway, issuer) == "3"  # the new config serves new requests

            result = await stream
        assert text_of(result) == "done 100"
        assert progress.values == list(range(1, 101))  # nothing lost across the reload
        after_reload = [at for at in progress.arrival_times if at > reloaded_at]
        assert len(after_reload) >= 10, "the stream stopped delivering after the reload"
        (draining,) = gateway.named("previous_config_draining")
        assert draining["in_flight"] >= 1
        await gateway.wait_for("previous_config_closed")  # once the stream ended

        # An invalid config: refused, its problem logged, the running config kept.
        write_config(config_path, denies_add, port, shutdown_grace_s="soon")
        gateway.signal(signal.SIGHUP)
        (refused,) = await gateway.wait_for("config_reload_refused")
        assert refused["level"] == "error"
        assert any(
            str(config_path) in problem and "shutdown_grace_s" in problem for problem in refused["problems"]
        ), refused
        assert await add(gateway, issuer) == "3"
        assert len(gateway.named("config_reloaded")) == 1

        # A new listen address needs a restart: the rest of the config applies, with a warning.
        write_config(config_path, denies_add, free_port())
        gateway.signal(signal.SIGHUP)
        await gateway.wait_for("config_reloaded", count=2)
        (not_applied,) = gateway.named("config_reload_not_applied")
        assert not_applied["key"] == "listen" and not_applied["level"] == "warning"
        assert await add(gateway, issuer) == -32003  # still served on the original port


async def test_sigterm_lets_requests_in_flight_finish_refuses_new_connections_and_exits_0(
    issuer: TestIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    """On SIGTERM the listener closes, in-flight calls finish, and the exit is 0 within the grace period;
    meanwhile the admin /readyz says 503 (draining), so a load balancer stops sending traffic."""
    grace_s = 6.0
    port = free_port()
    admin = f"http://127.0.0.1:{(admin_port := free_port())}"
    config_path = tmp_path / "gateway.yaml"
    write_config(
        config_path,
        single_route_config(issuer, upstream.mcp_url),
        port,
        shutdown_grace_s=grace_s,
        admin={"host": "127.0.0.1", "port": admin_port},
    )
    async with gateway_process(config_path, port, tmp_path / "gateway.log") as gateway:
        async with aiohttp.ClientSession() as http, http.get(admin + "/readyz") as response:
            assert response.status == 200

        async def sleep_call() -> str:
            # One raw request (the SDK client may send a follow-up request of its own, which a
            # stopping gateway would rightly refuse).
            body, headers = modern_call("sleep", {"seconds": 1.5})
            async with (
                aiohttp.ClientSession() as http,
                http.post(gateway.mcp_url, json=body, headers={**headers, **bearer(issuer)}) as response,
            ):
                assert response.status == 200 and response.content_type == "application/json"
                answer = await response.json()
            return answer["result"]["content"][0]["text"]  # type: ignore[no-any-return]

        calls = [asyncio.create_task(sleep_call()) for _ in range(2)]

        async def both_upstream() -> bool:
            return sum('"sleep"' in record["body"] for record in await upstream.requests()) == 2

        await eventually(both_upstream, "two sleep calls upstream")
        signalled = time.monotonic()
        gateway.signal(signal.SIGTERM)
        await gateway.wait_for("stopping")  # logged once the listening socket is closed
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        async with aiohttp.ClientSession() as http, http.get(admin + "/readyz") as response:
            assert response.status == 503
            assert await response.json() == {"ready": False, "draining": True}

        assert await asyncio.gather(*calls) == ["slept 1.5", "slept 1.5"]
        assert await asyncio.wait_for(gateway.proc.wait(), grace_s) == 0
        took = time.monotonic() - signalled
    assert took < grace_s, f"exit took {took:.1f}s"
    (stopping,) = gateway.named("stopping")
    assert stopping["in_flight"] == 2 and stopping["grace_s"] == grace_s
    (stopped,) = gateway.named("stopped")
    assert stopped["cut"] == 0
    statuses = [event["status"] for event in gateway.named("request") if event.get("route") == "/mcp"]
    assert statuses == [200, 200]


async def test_streams_still_open_at_the_deadline_end_cleanly(
    issuer: TestIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    """At the deadline, a stream still open is ended with a well-formed end of stream (its
    upstream request closed), a request still waiting for the upstream's answer gets 503 with
    Retry-After, and the process still exits 0 shortly after."""
    grace_s = 1.0
    port = free_port()
    config_path = tmp_path / "gateway.yaml"
    write_config(config_path, single_route_config(issuer, upstream.mcp_url), port, shutdown_grace_s=grace_s)
    body, headers = modern_call("slow_stream", {"count": 2000, "delay_ms": 10}, progress_token="p")
    headers.update(bearer(issuer))
    sleep_body, sleep_headers = modern_call("sleep", {"seconds": 10})
    sleep_headers.update(bearer(issuer))
    async with gateway_process(config_path, port, tmp_path / "gateway.log") as gateway:

        async def unanswered() -> tuple[int, str | None, Any]:
            async with (
                aiohttp.ClientSession() as http,
                http.post(gateway.mcp_url, json=sleep_body, headers=sleep_headers) as response,
            ):
                return response.status, response.headers.get("Retry-After"), await response.json()

        sleeping = asyncio.create_task(unanswered())
        async with (
            aiohttp.ClientSession() as http,
            http.post(gateway.mcp_url, json=body, headers=headers) as response,
        ):
            assert response.status == 200
            assert response.content_type == "text/event-stream"
            await response.content.readuntil(b"\r\n\r\n")  # the first event

            async def sleep_reached_upstream() -> bool:
                return any('"sleep"' in record["body"] for record in await upstream.requests())

            await eventually(sleep_reached_upstream, "the sleep call upstream")
            signalled = time.monotonic()
            gateway.signal(signal.SIGTERM)
            rest = await response.content.read()  # to the end: a broken stream would raise here
            ended = time.monotonic() - signalled
        assert b"progress" in rest and b'"result"' not in rest
        assert grace_s - 0.2 < ended < grace_s + 3
        status, retry_after, error = await sleeping
        assert (status, retry_after) == (503, "1")
        assert error == {
            "jsonrpc": "2.0",
            "id": 1,
            "error": {"code": -32000, "message": "Gateway is shutting down"},
        }
        assert await asyncio.wait_for(gateway.proc.wait(), 5) == 0
    (deadline,) = gateway.named("shutdown_deadline_reached")
    assert deadline["cut"] == 2
    records = await upstream.records()
    (call,) = [record for record in records if "event" not in record and "slow_stream" in record["body"]]
    assert not call["completed"]
    assert {"event": "disconnect", "id": call["id"], "path": "/mcp"} in records


def free_ports_in_a_row(count: int) -> int:
    """A port P such that P … P + count - 1 are all free (as far as one can tell)."""
    for _ in range(50):
        port = free_port()
        try:
            for offset in range(1, count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no {count} adjacent free ports")


async def test_workers_need_a_fixed_port(tmp_path: Path) -> None:
    """`--workers 2` with `listen.port: 0` exits with status 2, saying a fixed port is needed."""
    config_path = tmp_path / "gateway.yaml"
    await asyncio.to_thread(
        config_path.write_text,
        "listen: {host: 127.0.0.1, port: 0}\n"
        "public_url: http://127.0.0.1:8080\n"
        "issuers: [{issuer: http://127.0.0.1:9, algorithms: [RS256], jwks: {discover: true}}]\n"
        "routes: [{path: /mcp, upstream: http://127.0.0.1:9/mcp}]\n",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--config",
        str(config_path),
        "--workers",
        "2",
        cwd=REPO_ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert b"--workers needs a fixed listen.port" in stderr


def answered_by(gateway: GatewayProcess) -> list[dict[str, Any]]:
    """The request lines of the metadata requests."""
    return [event for event in gateway.named("request") if event["path"].startswith("/.well-known/")]


async def test_workers_share_the_port_and_stop_together(
    issuer: TestIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    """--workers 2: both processes answer requests on the one port; the parent serves admin.port
    and, with per_worker_ports, each worker its own admin listener (admin port + 1 + worker
    index); SIGTERM to the parent stops both workers, and the parent exits 0 once they have."""
    port = free_port()
    admin_port = free_ports_in_a_row(3)
    config_path = tmp_path / "gateway.yaml"
    write_config(
        config_path,
        single_route_config(issuer, upstream.mcp_url),
        port,
        shutdown_grace_s=5,
        admin={"host": "127.0.0.1", "port": admin_port, "per_worker_ports": True},
    )
    log_path = tmp_path / "gateway.log"
    async with gateway_process(config_path, port, log_path, "--workers", "2", workers=2) as gateway:
        (started,) = gateway.named("workers_started")
        worker_pids = set(started["pids"])
        assert len(worker_pids) == 2
        metadata = gateway.url + "/.well-known/oauth-protected-resource/mcp"
        for _ in range(40):  # a fresh connection each time: the kernel picks a worker per connection
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                async with http.get(metadata) as response:
                    assert response.status == 200

        await eventually(lambda: len(answered_by(gateway)) >= 40, "40 request lines")
        assert {event["pid"] for event in answered_by(gateway)} == worker_pids

        listening = gateway.named("admin_listening")
        admins = {event["pid"]: event["port"] for event in listening if "worker" in event}
        assert admins.keys() == worker_pids
        assert sorted(admins.values()) == [admin_port + 1, admin_port + 2]
        assert [event["port"] for event in listening if "worker" not in event] == [admin_port]
        async with aiohttp.ClientSession() as http:
            for admin in [admin_port, *admins.values()]:
                async with http.get(f"http://127.0.0.1:{admin}/metrics") as response:
                    assert response.status == 200

        gateway.signal(signal.SIGTERM)
        assert await asyncio.wait_for(gateway.proc.wait(), 10) == 0
    assert sorted(event["pid"] for event in gateway.named("stopped")) == sorted(worker_pids)
    assert gateway.named("workers_stopped")[0]["status"] == 0


async def test_workers_sharing_one_stderr_pipe_write_every_line_whole(
    issuer: TestIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    """--workers 2 with stderr a pipe, as under a container's log driver, read slowly enough
    that it fills: each worker writes a loop turn's lines together (in writes of at most
    PIPE_BUF bytes cut between lines, which a pipe keeps whole: tests/unit/test_log_lines.py).
    Under 48 concurrent tool calls every line read is one JSON event, and every call has its
    request line and its policy decision, from both workers, none lost at the stop."""
    port = free_port()
    config_path = tmp_path / "gateway.yaml"
    write_config(config_path, single_route_config(issuer, upstream.mcp_url), port, shutdown_grace_s=5)
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "gateway", "serve", "--config", str(config_path), "--workers", "2"),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    output = bytearray()

    async def drain() -> None:
        # A slow reader: the pipe fills, and a longer write would be split between the workers.
        assert proc.stderr is not None
        while chunk := await proc.stderr.read(4096):
            output.extend(chunk)
            await asyncio.sleep(0.001)

    reader = asyncio.create_task(drain())
    calls, concurrency = 480, 48
    try:
        await eventually(lambda: output.count(b'"event":"listening"') >= 2, "two workers listening")
        body, headers = modern_call("add", {"a": 1, "b": 2})
        headers = {**headers, **bearer(issuer)}
        statuses: list[int] = []

        async def client() -> None:
            # A connection of its own per client: the kernel spreads them over the workers.
            async with aiohttp.ClientSession() as http:
                for _ in range(calls // concurrency):
                    async with http.post(gateway_url(port), json=body, headers=headers) as response:
                        await response.read()
                        statuses.append(response.status)

        await asyncio.gather(*(client() for _ in range(concurrency)))
        assert statuses == [200] * calls
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        await asyncio.wait_for(reader, 5)
    events = [json.loads(line) for line in output.decode().splitlines()]  # raises on a torn line
    requests = [event for event in events if event["event"] == "request" and event.get("route")]
    decisions = [event for event in events if event["event"] == "policy_decision"]
    assert len(requests) == len(decisions) == calls
    assert len({event["pid"] for event in requests}) == 2


def gateway_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/mcp"


async def test_a_config_whose_gateway_fails_to_start_is_refused_in_process(
    issuer: TestIssuer, upstream: Upstream, tmp_path: Path, gateway_logs: LogSink
) -> None:
    """A config that parses but cannot be run (here: minting without keys) leaves the running
    gateway in place; a later valid reload swaps and closes the previous one at once (idle)."""
    config_path = tmp_path / "gateway.yaml"
    await asyncio.to_thread(write_config, config_path, single_route_config(issuer, upstream.mcp_url), 0)
    config = await asyncio.to_thread(load_config, config_path)
    runner, port = await start_gateway(config, host="127.0.0.1", port=0)
    try:
        live = runner.app[LIVE]
        first = live.current
        logged = len(gateway_logs.lines())
        broken = dataclasses.replace(
            config, minting=MintingConfig(issuer="http://127.0.0.1:8080/t", keys=(), active_kid="none")
        )
        with pytest.raises(SigningKeyError):
            await live.reload(broken)
        assert live.current is first

        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource") as response:
                assert response.status == 200
            moved = tmp_path / "moved.yaml"
            text = await asyncio.to_thread(config_path.read_text)
            await asyncio.to_thread(
                moved.write_text,
                text.replace("public_url: http://127.0.0.1:8080", "public_url: http://127.0.0.1:9999"),
            )
            assert await live.reload(await asyncio.to_thread(load_config, moved)) is True
            assert live.current is not first
            async with http.get(f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource") as response:
                assert (await response.json())["resource"] == "http://127.0.0.1:9999/mcp"
        assert live.in_flight == 0

        def closed() -> bool:
            return any(event["event"] == "previous_config_closed" for event in gateway_logs.events()[logged:])

        await eventually(closed, "previous_config_closed")
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(("flags", "loop"), [((), "uvloop"), (("--loop", "asyncio"), "asyncio")])
async def test_serves_on_uvloop_when_installed_or_on_the_loop_asked_for(
    issuer: TestIssuer, upstream: Upstream, tmp_path: Path, flags: tuple[str, ...], loop: str
) -> None:
    """The test extra installs uvloop (the `fast` extra): `auto` picks it; `--loop asyncio` does not.
    Either way the collector is tuned once the gateway is up."""
    port = free_port()
    config_path = tmp_path / "gateway.yaml"
    write_config(config_path, single_route_config(issuer, upstream.mcp_url), port)
    async with gateway_process(config_path, port, tmp_path / "gateway.log", *flags) as gateway:
        [listening] = gateway.named("listening")
        assert listening["event_loop"] == loop
        # Start-up objects are out of the garbage collector's sight (gateway.server).
        assert listening["gc_frozen_objects"] > 10_000
        assert await add(gateway, issuer) == "3"


async def test_sighup_reload_reads_the_config_file_without_blocking_the_loop(
    issuer: TestIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    """reload_from_file (what SIGHUP runs) reads the file off the loop and swaps the gateway in;
    the autouse blockbuster fixture fails this test if the file is read on the serving loop."""
    config_path = tmp_path / "gateway.yaml"
    await asyncio.to_thread(write_config, config_path, single_route_config(issuer, upstream.mcp_url), 0)
    config = await asyncio.to_thread(load_config, config_path)
    runner, port = await start_gateway(config, host="127.0.0.1", port=0)
    try:
        live = runner.app[LIVE]
        first = live.current
        text = await asyncio.to_thread(config_path.read_text)
        await asyncio.to_thread(
            config_path.write_text,
            text.replace("public_url: http://127.0.0.1:8080", "public_url: http://127.0.0.1:9999"),
        )
        assert await reload_from_file(live, config) is True
        assert live.current is not first
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource") as response:
                assert (await response.json())["resource"] == "http://127.0.0.1:9999/mcp"
    finally:
        await runner.cleanup()


async def test_workers_without_state_keys_open_each_others_sessions(
    issuer: TestIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    """--workers 2 and no state_keys: the supervisor hands both workers one random key, so a
    session opened at one worker is served by the other (the kernel picks a worker per
    connection); no call gets the 404 of an unknown session."""
    port = free_port()
    config_path = tmp_path / "gateway.yaml"
    write_config(config_path, single_route_config(issuer, upstream.mcp_url), port)
    auth = bearer(issuer)
    initialize = INITIALIZE
    async with gateway_process(
        config_path, port, tmp_path / "gateway.log", "--workers", "2", workers=2
    ) as gateway:
        worker_pids = set(gateway.named("workers_started")[0]["pids"])
        async with aiohttp.ClientSession() as http:
            async with http.post(gateway.mcp_url, json=initialize, headers={**MCP, **auth}) as response:
                assert response.status == 200
                session_id = response.headers["Mcp-Session-Id"]
        session = {**MCP, **auth, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}
        statuses = []
        for index in range(30):
            call = {"jsonrpc": "2.0", "id": index + 2, "method": "ping"}
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                async with http.post(gateway.mcp_url, json=call, headers=session) as response:
                    statuses.append(response.status)
        assert statuses == [200] * 30

        def pings() -> list[dict[str, Any]]:
            return [event for event in gateway.named("request") if event.get("mcp_method") == "ping"]

        await eventually(lambda: len(pings()) >= 30, "30 ping request lines")
        assert {event["pid"] for event in pings()} == worker_pids


async def workers_alive(http: aiohttp.ClientSession, admin_port: int) -> float | None:
    """`mcp_gateway_workers_alive` on an admin listener, the parent's or a worker's (None if it does
    not answer)."""
    try:
        async with http.get(f"http://127.0.0.1:{admin_port}/metrics") as response:
            text = await response.text()
    except aiohttp.ClientError:
        return None
    for line in text.splitlines():
        if line.startswith("mcp_gateway_workers_alive "):
            return float(line.split()[1])
    return None


async def test_a_killed_worker_is_replaced_while_the_others_keep_serving(
    issuer: TestIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    """--workers 2 under load: kill -9 of one worker costs at most a handful of requests (those on its
    own connections); the parent logs it, starts a new worker on the same index within about a
    second (its own `listening`, the same admin port, the same state key: sessions opened before
    still work), `mcp_gateway_workers_alive` says 2 again, and SIGTERM still ends everything with 0."""
    port = free_port()
    admin_port = free_ports_in_a_row(3)
    config_path = tmp_path / "gateway.yaml"
    write_config(
        config_path,
        single_route_config(issuer, upstream.mcp_url),
        port,
        shutdown_grace_s=2,
        admin={"host": "127.0.0.1", "port": admin_port, "per_worker_ports": True},
    )
    auth = bearer(issuer)
    initialize = INITIALIZE
    async with gateway_process(
        config_path, port, tmp_path / "gateway.log", "--workers", "2", workers=2
    ) as gateway:
        by_index = {event["worker"]: event["pid"] for event in gateway.named("listening")}
        async with aiohttp.ClientSession() as http:
            assert [await workers_alive(http, admin_port + index) for index in (0, 1, 2)] == [2.0] * 3
            async with http.post(gateway.mcp_url, json=initialize, headers={**MCP, **auth}) as response:
                assert response.status == 200
                session_id = response.headers["Mcp-Session-Id"]

        metadata = gateway.url + "/.well-known/oauth-protected-resource/mcp"
        outcomes: list[bool] = []
        load_on = True

        async def client() -> None:
            # A fresh connection each time: the kernel picks a worker per connection.
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                while load_on:
                    try:
                        async with http.get(metadata) as response:
                            outcomes.append(response.status == 200)
                    except aiohttp.ClientError:
                        outcomes.append(False)

        clients = [asyncio.create_task(client()) for _ in range(4)]
        try:
            await eventually(lambda: len(outcomes) >= 50, "50 requests before the kill")
            killed_at = time.monotonic()
            killed = by_index[1]
            os.kill(killed, signal.SIGKILL)
            [replaced] = await gateway.wait_for("worker_replaced", within=5)
            started_within = time.monotonic() - killed_at
            new_pid = replaced["pid"]
            await gateway.wait_for("listening", where=lambda event: event["pid"] == new_pid, within=10)
            served = len(outcomes)
            await eventually(lambda: len(outcomes) >= served + 50, "50 requests after the new worker")
        finally:
            load_on = False
            await asyncio.gather(*clients)

        [exited] = gateway.named("worker_exited")
        assert (exited["worker"], exited["pid"], exited["status"]) == (1, killed, -signal.SIGKILL)
        assert replaced["worker"] == 1 and replaced["replaced_pid"] == killed and new_pid != killed
        assert started_within < 1.5
        failures = outcomes.count(False)
        assert failures <= 5, f"{failures} of {len(outcomes)} requests failed"
        [admin] = [event for event in gateway.named("admin_listening") if event.get("pid") == new_pid]
        assert admin["port"] == admin_port + 2
        session = {**MCP, **auth, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}
        async with aiohttp.ClientSession() as http:
            assert [await workers_alive(http, admin_port + index) for index in (0, 1, 2)] == [2.0] * 3
            statuses = []
            for index in range(20):
                ping = {"jsonrpc": "2.0", "id": index + 2, "method": "ping"}
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
                    async with fresh.post(gateway.mcp_url, json=ping, headers=session) as response:
                        statuses.append(response.status)
        assert statuses == [200] * 20

        def pings_by_new_worker() -> list[dict[str, Any]]:
            pings = [event for event in gateway.named("request") if event.get("mcp_method") == "ping"]
            return [event for event in pings if event["pid"] == new_pid]

        await eventually(pings_by_new_worker, "a ping answered by the new worker")
        gateway.signal(signal.SIGTERM)
        assert await asyncio.wait_for(gateway.proc.wait(), 10) == 0
    assert gateway.named("workers_stopped")[0]["status"] == 0


async def test_a_worker_that_keeps_failing_ends_the_gateway_after_the_restart_budget(
    issuer: TestIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    """--workers 2 with worker 1's own admin port (per_worker_ports: admin.port + 2) taken by
    another program: worker 1 fails at every start; the parent replaces it RESTART_BUDGET times,
    then logs `worker_restarts_exhausted`, stops worker 0 gracefully and exits 1."""
    port = free_port()
    admin_port = free_ports_in_a_row(3)
    config_path = tmp_path / "gateway.yaml"
    write_config(
        config_path,
        single_route_config(issuer, upstream.mcp_url),
        port,
        shutdown_grace_s=1,
        admin={"host": "127.0.0.1", "port": admin_port, "per_worker_ports": True},
    )
    log_path = tmp_path / "gateway.log"
    register_gateway_log(log_path)
    with socket.socket() as squatter, log_path.open("wb") as log_file:
        squatter.bind(("127.0.0.1", admin_port + 2))
        squatter.listen()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(config_path),
            "--workers",
            "2",
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=log_file,
        )
        gateway = GatewayProcess(proc, log_path, f"http://127.0.0.1:{port}")
        try:
            assert await asyncio.wait_for(proc.wait(), 20) == 1
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    failures = [event for event in gateway.named("start_failed") if event["worker"] == 1]
    assert len(failures) == RESTART_BUDGET + 1
    assert [event["worker"] for event in gateway.named("worker_exited")] == [1] * (RESTART_BUDGET + 1)
    assert len(gateway.named("worker_replaced")) == RESTART_BUDGET
    [exhausted] = gateway.named("worker_restarts_exhausted")
    assert exhausted["restarts"] == RESTART_BUDGET
    [stopped] = gateway.named("worker_stopped")
    assert stopped["worker"] == 0
    assert gateway.named("workers_stopped")[0]["status"] == 1


@pytest.mark.parametrize(
    ("ago", "workers", "allowed", "delay"),
    [
        ((), 2, True, 0.0),
        ((1.0,), 2, True, 0.25),
        ((2.0, 1.0), 2, True, 0.5),
        ((3.0, 2.0, 1.0), 2, False, 0.75),
        ((3.0, 2.0, 1.0), 4, True, 0.75),
        ((61.0, 60.5, 1.0), 2, True, 0.25),  # restarts older than the window no longer count
        ((9.0,) * 7, 8, True, 1.0),  # the delay stops growing at a second
        ((9.0,) * 8, 8, False, 1.0),
    ],
)
def test_restart_budget_and_delay(ago: tuple[float, ...], workers: int, allowed: bool, delay: float) -> None:
    """The parent allows max(RESTART_BUDGET, workers) restarts per RESTART_WINDOW_S, the first at once
    and each further one a quarter second later than the one before, never more than a second."""
    now = 1000.0
    restarts = [now - seconds for seconds in ago]
    assert RESTART_BUDGET == 3 and RESTART_WINDOW_S == 60.0
    assert restart_allowed(restarts, now, workers) is allowed
    assert restart_delay(restarts, now) == delay
