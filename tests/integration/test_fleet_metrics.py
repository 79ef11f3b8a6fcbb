"""``serve --workers N`` with ``admin:``: one admin port serves the whole fleet (gateway.web.fleet_admin).

The first tests run the real ``python -m gateway serve --workers 2`` in front of the SDK upstream
(the helpers of test_lifecycle.py) and read the parent's ``admin.port`` and, with
``per_worker_ports``, each worker's own port. The last one runs the parent's admin listener in
this process against a real worker admin application and a worker that never answers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from blockbuster import BlockBuster
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import load_config
from gateway.server import start_gateway
from gateway.web.admin import AdminPlace
from gateway.web.fleet_admin import FleetAdmin, private_admin_dir, remove_admin_dir, worker_socket_path
from tests.conftest import Upstream, single_route_config
from tests.integration.test_lifecycle import (
    bearer,
    eventually,
    free_port,
    free_ports_in_a_row,
    gateway_process,
    modern_call,
    write_config,
)
from tests.support.issuer import TestIssuer

TOOL_CALLS = {"route": "/mcp", "mcp_method": "tools/call", "outcome": "ok"}


@pytest.fixture(autouse=True)
def _subprocess_files_may_block(blockbuster: BlockBuster | None) -> None:
    """The test_lifecycle helpers read the gateway subprocess's log file and write its config on
    this test's loop, never the gateway's (it runs in another process)."""
    if blockbuster is None:
        return
    helpers = {"events", "log_text", "write_config"}
    reads = ("io.BufferedReader.read", "io.TextIOWrapper.read")
    for func in (*reads, "io.BufferedWriter.write", "io.TextIOWrapper.write"):
        blockbuster.functions[func].can_block_in("tests/integration/test_lifecycle.py", helpers)


async def scrape(http: aiohttp.ClientSession, port: int) -> list[Metric]:
    """``/metrics`` of the admin listener on ``port``, parsed (the parser rejects an invalid body)."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        return list(text_string_to_metric_families(await response.text()))


def sample(families: list[Metric], name: str, **labels: str) -> float:
    """The value of the one sample ``name`` with exactly ``labels`` (0 when absent)."""
    found = [s.value for f in families for s in f.samples if s.name == name and s.labels == labels]
    assert len(found) <= 1, f"{name}{labels} appears {len(found)} times"
    return found[0] if found else 0.0


async def tool_calls(issuer: TestIssuer, mcp_url: str, count: int) -> list[int]:
    """``count`` tools/call add(1, 2), each over a new connection (the kernel picks a worker per
    connection); their statuses."""
    body, headers = modern_call("add", {"a": 1, "b": 2})
    headers = {**headers, **bearer(issuer)}
    statuses = []
    for _ in range(count):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            async with http.post(mcp_url, json=body, headers=headers) as response:
                await response.read()
                statuses.append(response.status)
    return statuses


async def test_admin_port_serves_the_fleet_sum_equal_to_the_workers_own_ports(
    issuer: TestIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    """--workers 2, per_worker_ports: 40 tool calls over separate connections reach both workers;
    admin.port's requests_total for them is exactly 40, the sum of the workers' own ports
    (admin.port + 1 + index); the exposition holds one process series per worker and the
    parent, the parent's workers_alive, and /healthz and /readyz answer for the fleet. After a
    worker is killed and replaced, the fleet's count still says 40."""
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
    async with gateway_process(
        config_path, port, tmp_path / "gateway.log", "--workers", "2", workers=2
    ) as gateway:
        by_index = {event["worker"]: event["pid"] for event in gateway.named("listening")}
        own_ports = {
            event["worker"]: event["port"] for event in gateway.named("admin_listening") if "worker" in event
        }
        assert own_ports == {0: admin_port + 1, 1: admin_port + 2}
        assert await tool_calls(issuer, gateway.mcp_url, 40) == [200] * 40

        async with aiohttp.ClientSession() as http:

            async def per_worker() -> list[float]:
                return [
                    sample(await scrape(http, own_ports[index]), "mcp_gateway_requests_total", **TOOL_CALLS)
                    for index in (0, 1)
                ]

            # Counted once each response has been sent: wait for the last one.
            async def all_counted() -> bool:
                return sum(await per_worker()) == 40

            await eventually(all_counted, "40 tool calls counted by the workers")
            served = await per_worker()
            assert all(count > 0 for count in served), f"one worker served nothing: {served}"
            fleet = await scrape(http, admin_port)
            assert sample(fleet, "mcp_gateway_requests_total", **TOOL_CALLS) == 40 == sum(served)
            assert sample(fleet, "mcp_gateway_request_duration_seconds_count", **TOOL_CALLS) == 40
            assert sample(fleet, "mcp_gateway_workers_alive") == 2
            assert sample(fleet, "mcp_gateway_workers_scraped") == 2
            [rss] = [family for family in fleet if family.name == "process_resident_memory_bytes"]
            assert sorted(s.labels["worker"] for s in rss.samples) == ["0", "1", "parent"]

            async with http.get(f"http://127.0.0.1:{admin_port}/healthz") as response:
                assert response.status == 200
            async with http.get(f"http://127.0.0.1:{admin_port}/readyz") as response:
                ready = await response.json()
                assert response.status == 200
            assert (ready["ready"], ready["workers_ready"], sorted(ready["workers"])) == (True, 2, ["0", "1"])

            killed = by_index[1]
            os.kill(killed, signal.SIGKILL)
            [replaced] = await gateway.wait_for("worker_replaced", within=5)
            await gateway.wait_for("listening", where=lambda event: event["pid"] == replaced["pid"])

            async def both_answer() -> bool:
                return sample(await scrape(http, admin_port), "mcp_gateway_workers_scraped") == 2

            await eventually(both_answer, "the new worker answering the parent")
            after = await scrape(http, admin_port)
            assert sample(after, "mcp_gateway_requests_total", **TOOL_CALLS) == 40
            assert sample(await scrape(http, admin_port + 2), "mcp_gateway_requests_total", **TOOL_CALLS) == 0

        gateway.signal(signal.SIGTERM)
        assert await asyncio.wait_for(gateway.proc.wait(), 10) == 0


async def test_without_per_worker_ports_only_the_parent_listens_on_tcp(
    issuer: TestIssuer, upstream: Upstream, tmp_path: Path
) -> None:
    """--workers 2 without per_worker_ports: the workers' admin listeners are private sockets
    (no TCP port: admin.port + 1 stays free), and admin.port counts every worker's calls."""
    port = free_port()
    admin_port = free_ports_in_a_row(2)
    config_path = tmp_path / "gateway.yaml"
    write_config(
        config_path,
        single_route_config(issuer, upstream.mcp_url),
        port,
        admin={"host": "127.0.0.1", "port": admin_port},
    )
    async with gateway_process(
        config_path, port, tmp_path / "gateway.log", "--workers", "2", workers=2
    ) as gateway:
        workers_admin = [event for event in gateway.named("admin_listening") if "worker" in event]
        assert [event["port"] for event in workers_admin] == [None, None]
        assert all(event["socket"].endswith(".sock") for event in workers_admin)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", admin_port + 1)
        assert await tool_calls(issuer, gateway.mcp_url, 10) == [200] * 10
        async with aiohttp.ClientSession() as http:

            async def fleet_count() -> bool:
                fleet = await scrape(http, admin_port)
                return sample(fleet, "mcp_gateway_requests_total", **TOOL_CALLS) == 10

            await eventually(fleet_count, "10 tool calls on admin.port")


@pytest.fixture
async def worker_dir() -> AsyncIterator[str]:
    directory = await asyncio.to_thread(private_admin_dir)
    yield directory
    await asyncio.to_thread(remove_admin_dir, directory)


async def test_a_worker_that_never_answers_is_left_out_within_the_timeout(
    issuer: TestIssuer, upstream: Upstream, tmp_path: Path, worker_dir: str
) -> None:
    """The parent's admin listener with three workers: 0 a real gateway's admin application on
    its private socket, 1 accepting connections and never answering, 2 not there at all. /metrics
    answers within the scrape timeout (plus a little) with worker 0's figures, counts one timeout
    and one unreachable worker; /readyz is 200 with one worker ready."""
    config_path = tmp_path / "gateway.yaml"
    await asyncio.to_thread(
        write_config,
        config_path,
        single_route_config(issuer, upstream.mcp_url),
        0,
        admin={"host": "127.0.0.1", "port": 0},
    )
    config = await asyncio.to_thread(load_config, config_path)
    assert config.admin is not None
    place = AdminPlace(port=None, unix_path=worker_socket_path(worker_dir, 0))
    runner, _port = await start_gateway(config, host="127.0.0.1", port=0, admin_place=place)
    hung: list[asyncio.StreamWriter] = []

    async def never_answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung.append(writer)

    stuck = await asyncio.start_unix_server(never_answer, worker_socket_path(worker_dir, 1))
    stopping = asyncio.Event()
    timeout_s = 0.5
    fleet = FleetAdmin(
        config.admin, worker_dir, lambda: {0: 100, 1: 101, 2: 102}, stopping, scrape_timeout_s=timeout_s
    )
    admin_port = await fleet.start()
    try:
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            families = await scrape(http, admin_port)
            took = time.monotonic() - started
            assert took < timeout_s + 0.5, f"/metrics took {took:.2f}s"
            failures = "mcp_gateway_worker_scrape_failures_total"
            assert sample(families, failures, reason="timeout") == 1
            assert sample(families, failures, reason="unreachable") == 1
            assert sample(families, "mcp_gateway_workers_scraped") == 1
            assert sample(families, "mcp_gateway_workers_alive") == 3
            assert sample(families, "mcp_gateway_connections_open") == 0
            async with http.get(f"http://127.0.0.1:{admin_port}/readyz") as response:
                assert response.status == 200
                ready = await response.json()
            assert (ready["workers_ready"], ready["workers"]["1"], ready["workers"]["2"]) == (1, None, None)
            stopping.set()
            async with http.get(f"http://127.0.0.1:{admin_port}/readyz") as response:
                assert (response.status, await response.json()) == (503, {"ready": False, "draining": True})
    finally:
        await fleet.close()
        for writer in hung:
            writer.close()
        stuck.close()
        await stuck.wait_closed()
        await runner.cleanup()
