"""Running the gateway: the listener, reload on SIGHUP, a graceful stop, and worker processes.

- SIGHUP re-reads the config file. A valid config serves every request that arrives afterwards;
  requests and streams already running finish on the gateway they started with (``LiveGateway``).
  An invalid one is refused with its problems logged (``config_reload_refused``), and the running
  config stays. The listener addresses (``listen``, ``admin``), ``logging``, ``limits``, the
  audit trail (``audit``) and the OTLP metrics push (``metrics``) need a restart.
- SIGTERM or SIGINT: stop accepting connections, let requests in flight finish for up to
  ``shutdown_grace_s``, then end what is left (``LiveGateway.cut``), close everything, exit 0.
- ``serve --workers N``: a parent process starts N workers (``python -m gateway serve
  --worker-index i``), which all bind the listen port with SO_REUSEPORT so that the kernel
  spreads connections over them. The parent forwards SIGTERM, SIGINT and SIGHUP to the workers
  and exits once they have all stopped. A worker that dies is replaced at once (same index, so
  the same admin socket and port) within a restart budget; a crash loop stops the others and
  exits 1. With ``admin:``, the parent serves ``admin.port`` for the fleet (``/metrics`` summed
  over the workers, ``/readyz`` ready while one worker is; ``gateway.web.fleet_admin``), each
  worker its own admin application on a private unix socket the parent scrapes, and, with
  ``admin.per_worker_ports``, on ``admin.port + 1 + index`` too. The parent publishes how many
  run (``mcp_gateway_workers_alive``, on its /metrics and every worker's). A worker whose parent
  disappears stops by itself. Each worker writes its own audit file
  (``audit.jsonl`` → ``audit.worker-<i>.jsonl``), which its replacement continues.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import math
import os
import secrets
import signal
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import structlog
from aiohttp import web

from .audit_trail.trail import replace_audit_file
from .audit_trail.writer import AuditFileDamaged
from .config import ConfigError, GatewayConfig, load_config
from .metrics import METRICS, GatewayMetrics
from .sealing import MIN_SECRET_BYTES, PROCESS_KEY_ENV
from .web.admin import AdminPlace, start_admin
from .web.app import LIMITS, build_app
from .web.fleet_admin import (
    WORKER_ADMIN_DIR_ENV,
    FleetAdmin,
    private_admin_dir,
    remove_admin_dir,
    worker_admin_place,
)
from .web.limits import raise_open_file_limit
from .web.listener import CONNECTIONS, GuardedSite
from .web.live import LIVE, SWAP_WAIT_S, KeysNotLoaded, LiveGateway

log = structlog.get_logger("gateway.server")

# After the drain (and the cut at the deadline), how long a cut request may take to end, and how
# long aiohttp then waits for connections still closing.
_CUT_WAIT_S = 2.0
_CLOSE_WAIT_S = 1.0
# How long the unread rest of a refused request's body is drained before the connection closes.
_LINGER_S = 2.0
# Settings that a reload cannot change in a running process (the audit trail is the process's
# one chain, opened at start-up; the OTLP metrics push, its own exporter).
_RESTART_ONLY = ("listen", "admin", "logging", "limits", "audit", "metrics")


async def start_gateway(
    config: GatewayConfig,
    *,
    host: str | None = None,
    port: int | None = None,
    reuse_port: bool = False,
    shutdown_timeout: float | None = None,
    admin_place: AdminPlace | None = None,
    worker: int | None = None,
) -> tuple[web.AppRunner, int]:
    """Start the gateway's listener; returns the runner and the bound port (port 0 picks a free one).

    ``runner.cleanup()`` alone waits up to ``shutdown_timeout`` (default ``shutdown_grace_s``)
    for running handlers, then cancels them; ``serve`` drains first (see ``drain_and_stop``).
    """
    app = build_app(config)
    limits = app[LIMITS]
    runner = web.AppRunner(
        app,
        # A client that goes away cancels its handler, which closes the upstream request
        # (MCP 2026-07-28: closing the stream is cancellation) and frees the connection.
        handler_cancellation=True,
        # Our own canonical log line replaces the access log, which would print query strings.
        access_log=None,
        shutdown_timeout=config.shutdown_grace_s if shutdown_timeout is None else shutdown_timeout,
        # An idle kept-alive connection is closed after this (aiohttp's timer; its default is an hour).
        keepalive_timeout=limits.keepalive_timeout_s,
        # After an answer that left part of the body unread (a 401, 413, 408), the rest is read and
        # dropped this long, so that the client reads the answer rather than a reset; then closed.
        lingering_time=_LINGER_S,
    )
    # The admin listener (/metrics), if configured, runs with the app (default place: admin.port).
    start_admin(runner.app, config, admin_place)
    if config.metrics is not None:  # OpenTelemetry only for a config that pushes metrics
        from .web.otlp_metrics import start_metrics_push

        start_metrics_push(runner.app, config.metrics, worker=worker)
    await runner.setup()
    site = GuardedSite(
        runner,
        host or config.listen.host,
        config.listen.port if port is None else port,
        connections=app[CONNECTIONS],
        max_connections=limits.max_connections,
        reuse_port=reuse_port,
        metrics=app[METRICS],
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    # The bound port (port 0 picks one).
    bound_port = next((address[1] for address in runner.addresses), config.listen.port)
    return runner, bound_port


# Collect the youngest generation after this many net container allocations instead of 700.
GC_GEN0_THRESHOLD = 7_000


def tune_garbage_collector() -> int:
    """Make the cyclic garbage collector cheap per request; returns how many objects were frozen.

    With CPython's defaults, each full collection walks every module and object loaded at
    start-up, and young collections run after a few dozen requests' worth of live objects.
    ``gc.freeze()`` moves what start-up made out of the collector's sight for good, and a higher
    first threshold stops collections triggered by nothing but in-flight requests; cyclic
    garbage still triggers one once 7 000 containers have piled up. Frozen objects are still
    freed by reference counting; only reference cycles among them, such as those of the start-up
    config's gateway once a reload has replaced it, stay (once, bounded). The measurements are in
    docs/performance.md.
    """
    gc.collect()
    gc.freeze()
    _gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
    return gc.get_freeze_count()


async def serve(config: GatewayConfig, *, worker: int | None = None, loop_name: str = "asyncio") -> int:
    """Serve until SIGINT or SIGTERM, reloading the config on SIGHUP; returns the exit status.

    ``worker`` is set in a worker process of ``serve --workers N``: the listen port is shared
    (SO_REUSEPORT) and the admin listener, if any, serves the parent on a private socket (and
    ``admin.port + 1 + worker`` with ``per_worker_ports``; ``gateway.web.fleet_admin``).
    """
    loaded = config
    raise_open_file_limit()  # before the listener sizes its connection cap from it
    if worker is not None and config.audit is not None:
        # One chain per process: worker i appends to its own file, whichever process has index i.
        config = replace(config, audit=replace_audit_file(config.audit, worker))
    admin_place = None
    if worker is not None and config.admin is not None:
        admin_dir = os.environ.get(WORKER_ADMIN_DIR_ENV) or None
        admin_place = worker_admin_place(config.admin, worker, admin_dir)
    try:
        runner, port = await start_gateway(
            config,
            reuse_port=worker is not None,
            shutdown_timeout=_CLOSE_WAIT_S,
            admin_place=admin_place,
            worker=worker,
        )
    # An address in use, or not ours (the listener or the admin listener); an audit file that
    # cannot be opened or continued.
    except (OSError, AuditFileDamaged) as exc:
        log.error("start_failed", error=str(exc))
        return 1
    live = runner.app[LIVE]
    if worker is not None:
        _export_workers_alive(runner.app[METRICS])
    frozen = tune_garbage_collector()
    limits = runner.app[LIMITS]
    log.info(
        "listening",
        host=config.listen.host,
        port=port,
        routes=[route.path for route in config.routes],
        event_loop=loop_name,
        gc_frozen_objects=frozen,
        open_files=limits.open_files,
        max_connections=limits.max_connections,
        max_streams=limits.max_streams,
    )
    if limits.capped_by_open_files:
        log.warning(
            "max_connections_lowered",
            configured=config.limits.max_connections,
            max_connections=limits.max_connections,
            open_files=limits.open_files,
            reason="the open-file limit cannot carry more (raise it with ulimit -n / LimitNOFILE)",
        )

    stop = asyncio.Event()
    background: set[asyncio.Task[Any]] = set()

    def spawn(coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        background.add(task)
        task.add_done_callback(background.discard)

    def on_stop(sig: signal.Signals) -> None:
        if stop.is_set():
            log.info("already_stopping", signal=sig.name)
            return
        log.info("stop_requested", signal=sig.name)
        stop.set()

    def on_reload() -> None:
        if stop.is_set():
            log.info("config_reload_skipped", reason="stopping")
            return
        spawn(reload_from_file(live, loaded))

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_stop, sig)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    if worker is not None:
        spawn(_stop_when_orphaned(stop))
    try:
        await stop.wait()
    finally:
        for task in list(background):
            task.cancel()
        await drain_and_stop(runner, live)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return 0


async def reload_from_file(
    live: LiveGateway[Any], started: GatewayConfig, *, keys_wait_s: float = SWAP_WAIT_S
) -> bool:
    """Re-read the config file the process started with and swap it in if it is valid and the
    issuers it adds or changes load their keys within ``keys_wait_s``."""
    source = str(started.source)
    log.info("config_reload_requested", source=source)
    try:
        # In a thread: the file, its secret and key files are read while the loop serves requests.
        config = await asyncio.to_thread(load_config, started.source)
    except ConfigError as exc:
        problems = [str(problem) for problem in exc.problems]
        log.error("config_reload_refused", source=source, problems=problems)
        return False
    try:
        keys_ready = await live.reload(config, ready_timeout_s=keys_wait_s)
    except KeysNotLoaded as exc:  # a new or changed issuer without keys would answer only 503
        log.error(
            "config_reload_refused",
            source=source,
            reason="keys_not_loaded",
            issuers=list(exc.issuers),
            problems=[str(exc)],
        )
        return False
    except Exception as exc:  # building or starting the new gateway failed: keep the old one
        log.error("config_reload_refused", source=source, problems=[f"{type(exc).__name__}: {exc}"])
        return False
    for key in _RESTART_ONLY:
        if getattr(config, key) != getattr(started, key):
            log.warning("config_reload_not_applied", key=key, reason="needs a restart")
    # keys_ready is False only for an issuer the reload kept that still has no keys (as before).
    (log.info if keys_ready else log.warning)(
        "config_reloaded",
        source=source,
        routes=[route.path for route in config.routes],
        keys_ready=keys_ready,
    )
    return True


async def drain_and_stop(runner: web.AppRunner, live: LiveGateway[Any]) -> None:
    """Stop accepting connections, let requests in flight finish within the grace period, then
    cut what is left and close the application (and with it every gateway)."""
    grace_s = live.config.shutdown_grace_s
    started = time.monotonic()
    live.draining = True  # /readyz answers 503 from now on
    for site in list(runner.sites):
        await site.stop()  # the listening socket closes: new connections are refused
    log.info("stopping", grace_s=grace_s, in_flight=live.in_flight)
    await asyncio.sleep(0)  # connections accepted just before start their request
    if runner.server is not None:
        runner.server.pre_shutdown()  # idle keep-alive connections close; busy ones after their response
    cut = 0
    if not await live.wait_idle(grace_s):
        cut = live.cut()
        log.warning("shutdown_deadline_reached", grace_s=grace_s, cut=cut)
        await live.wait_idle(_CUT_WAIT_S)
    await runner.cleanup()
    log.info("stopped", duration_s=round(time.monotonic() - started, 3), cut=cut)


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """A worker stops when its parent is gone (it was killed without forwarding a signal)."""
    parent = os.getppid()
    while True:
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            break
    log.warning("parent_gone", parent_pid=parent)
    stop.set()


# --- serve --workers N ------------------------------------------------------------------------------

# A crash loop ends the gateway: more restarts than the budget within the window mean a fault that
# restarting does not fix (a port taken, a config file broken since start). The budget is at least
# one per worker, so a pool can lose every worker once a minute and keep serving.
RESTART_BUDGET = 3
RESTART_WINDOW_S = 60.0
# The first restart is immediate; each further one within the window waits this much longer.
_RESTART_DELAY_STEP_S = 0.25
_RESTART_DELAY_MAX_S = 1.0
# The parent writes how many workers run into a memory file that every worker inherits (this env
# var names its descriptor); each worker's own /metrics reads it as mcp_gateway_workers_alive
# (admin.per_worker_ports), the same figure as the parent's admin.port.
WORKERS_ALIVE_FD_ENV = "MCP_GATEWAY_WORKERS_ALIVE_FD"
_COUNT = struct.Struct("<q")


def recent_restarts(restarts: Sequence[float], now: float) -> int:
    """How many of the restarts (monotonic times) fall within the budget's window."""
    return sum(1 for at in restarts if now - at < RESTART_WINDOW_S)


def restart_allowed(restarts: Sequence[float], now: float, workers: int) -> bool:
    """Whether one more restart fits the budget: ``max(RESTART_BUDGET, workers)`` per window."""
    return recent_restarts(restarts, now) < max(RESTART_BUDGET, workers)


def restart_delay(restarts: Sequence[float], now: float) -> float:
    """The wait before the next restart: none for the first within the window, then growing."""
    return min(_RESTART_DELAY_MAX_S, _RESTART_DELAY_STEP_S * recent_restarts(restarts, now))


def read_workers_alive(fd: int) -> float:
    """The count the parent last published in the shared file (NaN if it cannot be read)."""
    try:
        data = os.pread(fd, _COUNT.size, 0)
    except OSError:
        return math.nan
    return float(_COUNT.unpack(data)[0]) if len(data) == _COUNT.size else math.nan


def _export_workers_alive(metrics: GatewayMetrics) -> None:
    """In a worker: report the parent's count of running workers instead of the default 1."""
    handed = os.environ.get(WORKERS_ALIVE_FD_ENV, "")
    if handed.isdigit():
        metrics.workers_alive.set_function(functools.partial(read_workers_alive, int(handed)))


def _shared_count_file() -> int:
    """A descriptor of an anonymous file in memory (Linux), else of an unlinked temporary file."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("mcp-gateway-workers-alive")
    fd, path = tempfile.mkstemp(prefix="mcp-gateway-workers-alive-")
    os.unlink(path)
    return fd


class _Pool:
    """The worker processes by index, how to start one, and the published count of running ones."""

    def __init__(self, config: GatewayConfig, worker_args: Sequence[str], stopping: asyncio.Event) -> None:
        self.config = config
        self.worker_args = worker_args
        self.stopping = stopping
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.restarts: list[float] = []  # monotonic times of the restarts within the window
        self.count_fd = _shared_count_file()
        # The workers' private admin sockets, scraped by the parent's admin.port (fleet_admin).
        self.admin_dir = private_admin_dir() if config.admin is not None else None
        self.env = {
            **os.environ,
            # One random key for all workers, replacements included: without state_keys they
            # still open each other's sealed sessions, wherever the kernel sends a connection.
            PROCESS_KEY_ENV: secrets.token_hex(MIN_SECRET_BYTES),
            WORKERS_ALIVE_FD_ENV: str(self.count_fd),
            **({WORKER_ADMIN_DIR_ENV: self.admin_dir} if self.admin_dir is not None else {}),
        }

    def running(self) -> list[asyncio.subprocess.Process]:
        return [process for process in self.processes.values() if process.returncode is None]

    def running_pids(self) -> dict[int, int]:
        """index → pid of each worker running now."""
        return {index: process.pid for index, process in self.processes.items() if process.returncode is None}

    def publish(self) -> None:
        os.pwrite(self.count_fd, _COUNT.pack(len(self.running())), 0)

    def send(self, sig: signal.Signals) -> None:
        for process in self.running():
            process.send_signal(sig)

    async def start(self, index: int) -> asyncio.subprocess.Process:
        """Start worker ``index`` (its admin socket and port follow the index, whoever it replaces)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(self.config.source),
            "--worker-index",
            str(index),
            *self.worker_args,
            # Its own session: a terminal's Ctrl-C reaches the parent only, which forwards it once.
            start_new_session=True,
            env=self.env,
            pass_fds=(self.count_fd,),
        )
        self.processes[index] = process
        self.publish()
        if self.stopping.is_set():  # the stop signal came while it was starting: it missed it
            process.send_signal(signal.SIGTERM)
        return process

    async def restart(self, index: int, delay_s: float) -> asyncio.subprocess.Process | None:
        """Start a replacement for worker ``index`` after ``delay_s``, unless a stop comes first."""
        if delay_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay_s)
        if self.stopping.is_set():
            return None
        return await self.start(index)

    def close(self) -> None:
        os.close(self.count_fd)
        if self.admin_dir is not None:
            remove_admin_dir(self.admin_dir)


async def supervise_workers(config: GatewayConfig, workers: int, worker_args: Sequence[str]) -> int:
    """Run ``workers`` worker processes; forward stop and reload signals; exit when all stopped.

    ``worker_args`` are extra ``serve`` arguments for every worker (the log flags). A worker that
    exits while no stop was asked for is replaced (same index, same state key) while the others
    keep serving; beyond the restart budget (a crash loop) the others are stopped and the exit
    status is 1, for the process supervisor (systemd, Kubernetes) to see.
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    pool = _Pool(config, worker_args, stopping)
    latest = [config]  # the workers reload it too: their grace period is the newest valid one

    def forward(sig: signal.Signals) -> None:
        if sig != signal.SIGHUP:
            stopping.set()
        else:
            with contextlib.suppress(ConfigError):
                latest[0] = load_config(config.source)  # each worker logs what it thinks of it
        pool.send(sig)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, forward, sig)
    fleet = None
    try:
        if config.admin is not None and pool.admin_dir is not None:
            # Bound before any worker starts: a taken admin port ends the start at once.
            fleet = FleetAdmin(
                config.admin,
                pool.admin_dir,
                pool.running_pids,
                stopping,
                keepalive_s=config.limits.keepalive_timeout_s,
            )
            try:
                await fleet.start()
            except OSError as exc:
                log.error("start_failed", error=str(exc))
                return 1
        for index in range(workers):
            await pool.start(index)
        log.info(
            "workers_started", workers=workers, pids=[process.pid for process in pool.processes.values()]
        )
        return await _supervise(pool, workers, lambda: latest[0].shutdown_grace_s)
    finally:
        for process in pool.running():
            process.kill()
            await process.wait()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if fleet is not None:
            await fleet.close()
        pool.close()


async def _supervise(pool: _Pool, workers: int, grace_s: Callable[[], float]) -> int:
    """Reap workers and replace those that die until a stop is asked; then wait for all of them."""
    stopping = pool.stopping
    status = 0
    waits = {asyncio.create_task(process.wait()): index for index, process in pool.processes.items()}
    starts: dict[asyncio.Task[asyncio.subprocess.Process | None], tuple[int, int | None]] = {}
    stop_asked = asyncio.create_task(stopping.wait())
    deadline: float | None = None  # once stopping: workers get their grace period, and then some

    def replace(index: int, pid: int | None) -> None:
        nonlocal status
        now = time.monotonic()
        if not restart_allowed(pool.restarts, now, workers):
            log.error(
                "worker_restarts_exhausted",
                restarts=recent_restarts(pool.restarts, now),
                window_s=RESTART_WINDOW_S,
            )
            status = 1
            stopping.set()
            pool.send(signal.SIGTERM)
            return
        delay_s = restart_delay(pool.restarts, now)
        pool.restarts = [at for at in pool.restarts if now - at < RESTART_WINDOW_S] + [now]
        starts[asyncio.create_task(pool.restart(index, delay_s))] = (index, pid)

    try:
        while waits or starts:
            if stopping.is_set() and deadline is None:
                deadline = time.monotonic() + grace_s() + _CUT_WAIT_S + 10.0
            watch = {*waits, *starts} if stop_asked.done() else {*waits, *starts, stop_asked}
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait(watch, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                log.error("workers_killed", pids=[process.pid for process in pool.running()])
                for process in pool.running():
                    process.kill()
                status = 1
                deadline = time.monotonic() + 3600.0  # killed: only reaping is left
                continue
            for task in [task for task in starts if task in done]:
                index, replaced = starts.pop(task)
                try:
                    started = task.result()
                except OSError as exc:  # no process at all (fds or memory exhausted): try again
                    log.error("worker_start_failed", worker=index, error=str(exc))
                    replace(index, replaced)
                    continue
                if started is not None:  # None: a stop came first
                    log.info("worker_replaced", worker=index, pid=started.pid, replaced_pid=replaced)
                    waits[asyncio.create_task(started.wait())] = index
            for exited in [task for task in waits if task in done]:
                index = waits.pop(exited)
                process = pool.processes[index]
                pool.publish()
                if stopping.is_set():
                    log.info("worker_stopped", worker=index, pid=process.pid, status=process.returncode)
                    status = status or (0 if process.returncode == 0 else 1)
                    continue
                log.error("worker_exited", worker=index, pid=process.pid, status=process.returncode)
                replace(index, process.pid)
    finally:
        stop_asked.cancel()
    log.info("workers_stopped", status=status)
    return status
