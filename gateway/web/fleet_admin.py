"""``admin.port`` for ``serve --workers N``: the parent serves the fleet's ``/metrics``, ``/healthz``
and ``/readyz``, built from scrapes of each worker's private admin listener.

Every worker runs its usual admin application (``gateway.web.admin``) on a unix socket in a
directory only the gateway's user can enter (``private_admin_dir``, mode 0700; its path reaches the
workers in ``WORKER_ADMIN_DIR_ENV``), so nothing but the parent can read a worker's figures and no
TCP port is taken per worker. With ``admin.per_worker_ports: true`` each worker also listens on
``admin.host:admin.port + 1 + index`` (``admin.port`` itself is the parent's).

On each request the parent asks every running worker at once, each for at most
``SCRAPE_TIMEOUT_S``; a worker that does not answer in time (or not with an exposition) is left out
of gauges, counts in its last figures for counters (``gateway.web.fleet_metrics``), and is counted
in ``mcp_gateway_worker_scrape_failures_total``: a stuck worker slows the answer by the timeout at
most, never hangs it. Requests that arrive while a round runs share it (single-flight).

- ``/metrics``: the workers' families combined (``gateway.web.fleet_metrics``), the ``process_*``
  families of every worker and of the parent (``worker="parent"``), and the parent's own:
  ``mcp_gateway_workers_alive`` (its count of running workers), ``mcp_gateway_workers_scraped``
  (workers whose figures this answer has fresh) and the scrape failures by reason.
- ``/healthz``: 200 while the parent runs (its loop answers).
- ``/readyz``: 200 while at least one worker is ready (``fleet_ready``), with each worker's own
  answer listed; 503 once the parent is stopping. At least one, not all: the pod keeps its place
  behind the Service while one worker is replaced or a single worker is unwell, instead of every
  healthy worker's capacity leaving with it; which worker is not ready is in the body and in
  ``mcp_gateway_workers_scraped``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric

from ..config import AdminConfig
from ..metrics import CONTENT_TYPE_LATEST
from ..singleflight import SingleFlight
from .admin import PROCESS_REGISTRY, AdminPlace
from .fleet_metrics import FLEET_METRICS_PATH, FleetTotals, WorkerAnswer, families_from_json, render

__all__ = [
    "SCRAPE_TIMEOUT_S",
    "WORKER_ADMIN_DIR_ENV",
    "FleetAdmin",
    "fleet_ready",
    "private_admin_dir",
    "remove_admin_dir",
    "worker_admin_place",
]

log = structlog.get_logger("gateway.fleet_admin")

# The parent hands the workers the private directory of their admin sockets in this variable.
WORKER_ADMIN_DIR_ENV: Final = "MCP_GATEWAY_WORKER_ADMIN_DIR"
# A worker's admin answers in milliseconds; one that takes a second is stuck or overloaded, and
# Prometheus' own scrape timeout (10 s by default) must not expire while the parent waits.
SCRAPE_TIMEOUT_S: Final = 1.0

# index → pid of each worker running now.
RunningWorkers = Callable[[], Mapping[int, int]]


def private_admin_dir() -> str:
    """A new directory for the workers' admin sockets, mode 0700 (``mkdtemp``): the gateway's user only."""
    return tempfile.mkdtemp(prefix="mcp-gateway-admin-")


def remove_admin_dir(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def worker_socket_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"worker-{index}.sock")


def worker_admin_place(admin: AdminConfig, index: int, directory: str | None) -> AdminPlace:
    """Where worker ``index`` serves its admin application: the parent's private socket (when the
    parent gave a directory) and, with ``per_worker_ports``, ``admin.port + 1 + index``
    (``port: 0``: a free port of its own)."""
    port = None
    if admin.per_worker_ports:
        port = 0 if admin.port == 0 else admin.port + 1 + index
    unix_path = None if directory is None else worker_socket_path(directory, index)
    return AdminPlace(port=port, unix_path=unix_path)


def fleet_ready(workers_ready: int, stopping: bool) -> bool:
    """The fleet is ready while it is not stopping and at least one worker is (see the module doc)."""
    return not stopping and workers_ready >= 1


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes


class FleetAdmin:
    """The parent's admin listener on ``admin.host:admin.port``; ``start`` binds it, ``close`` ends it."""

    def __init__(
        self,
        config: AdminConfig,
        directory: str,
        workers: RunningWorkers,
        stopping: asyncio.Event,
        *,
        keepalive_s: float = 75.0,
        scrape_timeout_s: float = SCRAPE_TIMEOUT_S,
    ) -> None:
        self.config = config
        self.port: int | None = None  # bound by start (port 0 picks a free one)
        self._directory = directory
        self._workers = workers
        self._stopping = stopping
        self._keepalive_s = keepalive_s
        self._timeout = aiohttp.ClientTimeout(total=scrape_timeout_s)
        self._sessions: dict[int, aiohttp.ClientSession] = {}
        self._totals = FleetTotals()
        self._metrics_rounds: SingleFlight[None, bytes] = SingleFlight()
        self._readiness_rounds: SingleFlight[None, dict[str, Any]] = SingleFlight()
        self._runner: web.AppRunner | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        alive = Gauge(
            "mcp_gateway_workers_alive",
            "Worker processes of this gateway running now, as the parent counts them.",
            registry=self.registry,
        )
        alive.set_function(lambda: len(self._workers()))
        self._scraped = Gauge(
            "mcp_gateway_workers_scraped",
            "Workers whose figures this /metrics answer holds fresh (the others count with their last "
            "counters and no gauges).",
            registry=self.registry,
        )
        self._failures = Counter(
            "mcp_gateway_worker_scrape_failures",
            "Scrapes of a worker's private admin listener that failed (timeout, unreachable, bad_response).",
            ("reason",),
            registry=self.registry,
        )
        for reason in ("timeout", "unreachable", "bad_response"):
            self._failures.labels(reason)

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> int:
        """Bind ``admin.host:admin.port`` (``OSError`` if taken); returns the bound port."""
        runner = web.AppRunner(self._app(), access_log=None, keepalive_timeout=self._keepalive_s)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.config.host, self.config.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = next(
            (address[1] for address in runner.addresses if isinstance(address, tuple)), self.config.port
        )
        log.info("admin_listening", host=self.config.host, port=self.port, serves="fleet")
        return self.port

    async def close(self) -> None:
        await self._metrics_rounds.aclose()
        await self._readiness_rounds.aclose()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics, allow_head=True)
        app.router.add_get("/healthz", self._healthz, allow_head=True)
        app.router.add_get("/readyz", self._readyz, allow_head=True)
        return app

    # --- handlers -----------------------------------------------------------------------------------

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = await self._metrics_rounds.run(None, self._metrics_round)
        # CONTENT_TYPE_LATEST carries a charset, which aiohttp wants as a header, not content_type.
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        if self._stopping.is_set():  # the workers are draining: send no new connections here
            return web.json_response({"ready": False, "draining": True}, status=503)
        answer = await self._readiness_rounds.run(None, self._readiness_round)
        return web.json_response(answer, status=200 if answer["ready"] else 503)

    # --- rounds -------------------------------------------------------------------------------------

    async def _metrics_round(self) -> bytes:
        workers = dict(self._workers())
        answers = await asyncio.gather(*(self._ask(index, FLEET_METRICS_PATH) for index in workers))
        # Reading the parent's process figures (/proc files) and merging thousands of samples
        # (tens of milliseconds for 8 workers) happen off the loop, which supervises the workers.
        # Rounds are single-flight, so the totals are only ever updated by one thread at a time.
        return await asyncio.to_thread(self._fleet_exposition, workers, answers)

    def _fleet_exposition(self, workers: Mapping[int, int], answers: list[_Answer | None]) -> bytes:
        scrapes = []
        for (index, pid), answer in zip(workers.items(), answers, strict=True):
            scrapes.append(WorkerAnswer(index, pid, self._families(index, answer)))
        self._scraped.set(sum(1 for scrape in scrapes if scrape.families is not None))
        fleet = self._totals.combine(scrapes, extra={"parent": tuple(PROCESS_REGISTRY.collect())})
        return render([*fleet, *self.registry.collect()])

    def _families(self, index: int, answer: _Answer | None) -> tuple[Metric, ...] | None:
        if answer is None:
            return None
        if answer.status == 200:
            try:
                return families_from_json(answer.body)
            except ValueError:
                pass
        self._failed(index, "bad_response")
        return None

    async def _readiness_round(self) -> dict[str, Any]:
        workers = list(self._workers())
        answers = await asyncio.gather(*(self._ask(index, "/readyz") for index in workers))
        by_worker: dict[str, Any] = {}
        for index, answer in zip(workers, answers, strict=True):
            by_worker[str(index)] = self._readiness(index, answer)
        ready = sum(
            1 for state in by_worker.values() if isinstance(state, dict) and state.get("ready") is True
        )
        return {
            "ready": fleet_ready(ready, self._stopping.is_set()),
            "workers_ready": ready,
            "workers_alive": len(workers),
            "workers": by_worker,
        }

    def _readiness(self, index: int, answer: _Answer | None) -> Any:
        """A worker's own /readyz body (200 or 503), or None if it gave none."""
        if answer is None:
            return None
        if answer.status in (200, 503):
            try:
                return json.loads(answer.body)
            except ValueError:
                pass
        self._failed(index, "bad_response")
        return None

    # --- scraping -----------------------------------------------------------------------------------

    async def _ask(self, index: int, path: str) -> _Answer | None:
        """``GET path`` of worker ``index``'s private admin listener; None (counted) if it fails."""
        try:
            async with self._session(index).get(f"http://worker{path}") as response:
                return _Answer(response.status, await response.read())
        except TimeoutError:
            self._failed(index, "timeout")
        except (aiohttp.ClientError, OSError):
            self._failed(index, "unreachable")
        return None

    def _session(self, index: int) -> aiohttp.ClientSession:
        session = self._sessions.get(index)
        if session is None:
            # A new connection per scrape: a replacement worker binds the same path, and a pooled
            # connection to the one it replaced would only fail the next scrape.
            connector = aiohttp.UnixConnector(worker_socket_path(self._directory, index), force_close=True)
            session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
            self._sessions[index] = session
        return session

    def _failed(self, index: int, reason: str) -> None:
        self._failures.labels(reason).inc()
        log.warning("worker_scrape_failed", worker=index, reason=reason)
