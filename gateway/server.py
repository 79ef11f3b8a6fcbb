"""Running the gateway: the listener, reload on SIGHUP, a graceful stop, and worker processes.

- SIGHUP re-reads the config file. A valid config serves every request that arrives afterwards;
  requests and streams already running finish on the gateway they started with (``LiveGateway``).
  An invalid one is refused with its problems logged (``config_reload_refused``), and the running
  config stays. The listener addresses (``listen``, ``admin``) and ``logging`` need a restart.
- SIGTERM or SIGINT: stop accepting connections, let requests in flight finish for up to
  ``shutdown_grace_s``, then end what is left (``LiveGateway.cut``), close everything, exit 0.
- ``serve --workers N``: a parent process starts N workers (``python -m gateway serve
  --worker-index i``), which all bind the listen port with SO_REUSEPORT so that the kernel
  spreads connections over them. The parent forwards SIGTERM, SIGINT and SIGHUP to the workers
  and exits once they have all stopped. A worker whose parent disappears stops by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from aiohttp import web

from .config import ConfigError, GatewayConfig, load_config
from .sealing import MIN_SECRET_BYTES, PROCESS_KEY_ENV
from .web.admin import start_admin
from .web.app import build_app
from .web.live import LIVE, LiveGateway

log = structlog.get_logger("gateway.server")

# After the drain (and the cut at the deadline), how long a cut request may take to end, and how
# long aiohttp then waits for connections still closing.
_CUT_WAIT_S = 2.0
_CLOSE_WAIT_S = 1.0
# Settings that a reload cannot change in a running process.
_RESTART_ONLY = ("listen", "admin", "logging")


async def start_gateway(
    config: GatewayConfig,
    *,
    host: str | None = None,
    port: int | None = None,
    reuse_port: bool = False,
    shutdown_timeout: float | None = None,
) -> tuple[web.AppRunner, int]:
    """Start the gateway's listener; returns the runner and the bound port (port 0 picks a free one).

    ``runner.cleanup()`` alone waits up to ``shutdown_timeout`` (default ``shutdown_grace_s``)
    for running handlers, then cancels them; ``serve`` drains first (see ``drain_and_stop``).
    """
    runner = web.AppRunner(
        build_app(config),
        # A client that goes away cancels its handler, which closes the upstream request
        # (MCP 2026-07-28: closing the stream is cancellation) and frees the connection.
        handler_cancellation=True,
        # Our own canonical log line replaces the access log, which would print query strings.
        access_log=None,
        shutdown_timeout=config.shutdown_grace_s if shutdown_timeout is None else shutdown_timeout,
    )
    start_admin(runner.app, config)  # the admin listener (/metrics), if configured, runs with the app
    await runner.setup()
    site = web.TCPSite(
        runner,
        host or config.listen.host,
        config.listen.port if port is None else port,
        reuse_port=reuse_port or None,
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
    (SO_REUSEPORT) and the admin listener, if any, moves to ``admin.port + worker``.
    """
    loaded = config
    if worker is not None and config.admin is not None and config.admin.port != 0:
        config = dataclasses.replace(
            config, admin=dataclasses.replace(config.admin, port=config.admin.port + worker)
        )
    try:
        runner, port = await start_gateway(
            config, reuse_port=worker is not None, shutdown_timeout=_CLOSE_WAIT_S
        )
    except OSError as exc:  # an address in use, or not ours (the listener or the admin listener)
        log.error("start_failed", error=str(exc))
        return 1
    live = runner.app[LIVE]
    frozen = tune_garbage_collector()
    log.info(
        "listening",
        host=config.listen.host,
        port=port,
        routes=[route.path for route in config.routes],
        event_loop=loop_name,
        gc_frozen_objects=frozen,
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


async def reload_from_file(live: LiveGateway[Any], started: GatewayConfig) -> bool:
    """Re-read the config file the process started with and swap it in if it is valid."""
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
        keys_ready = await live.reload(config)
    except Exception as exc:  # building or starting the new gateway failed: keep the old one
        log.error("config_reload_refused", source=source, problems=[f"{type(exc).__name__}: {exc}"])
        return False
    for key in _RESTART_ONLY:
        if getattr(config, key) != getattr(started, key):
            log.warning("config_reload_not_applied", key=key, reason="needs a restart")
    # Keys that did not load in time are fetched by the first request that needs them.
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


async def supervise_workers(config: GatewayConfig, workers: int, worker_args: Sequence[str]) -> int:
    """Run ``workers`` worker processes; forward stop and reload signals; exit when all stopped.

    ``worker_args`` are extra ``serve`` arguments for every worker (the log flags). A worker that
    exits while no stop was asked for stops the others too (exit status 1): restarting is left to
    the process supervisor (systemd, Kubernetes), which sees the whole gateway fail.
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    processes: list[asyncio.subprocess.Process] = []
    latest = [config]  # the workers reload it too: their grace period is the newest valid one

    def forward(sig: signal.Signals) -> None:
        if sig != signal.SIGHUP:
            stopping.set()
        else:
            with contextlib.suppress(ConfigError):
                latest[0] = load_config(config.source)  # each worker logs what it thinks of it
        for process in processes:
            if process.returncode is None:
                process.send_signal(sig)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, forward, sig)
    ephemeral_key = secrets.token_hex(MIN_SECRET_BYTES)
    try:
        for index in range(workers):
            processes.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "gateway",
                    "serve",
                    "--config",
                    str(config.source),
                    "--worker-index",
                    str(index),
                    *worker_args,
                    # Its own session: a terminal's Ctrl-C reaches the parent only, which forwards it once.
                    start_new_session=True,
                    # One random key for all workers: without state_keys they still open each
                    # other's sealed sessions, wherever the kernel sends a connection.
                    env={**os.environ, PROCESS_KEY_ENV: ephemeral_key},
                )
            )
        log.info("workers_started", workers=workers, pids=[process.pid for process in processes])
        return await _wait_for_workers(processes, stopping, lambda: latest[0].shutdown_grace_s)
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def _wait_for_workers(
    processes: list[asyncio.subprocess.Process], stopping: asyncio.Event, grace_s: Callable[[], float]
) -> int:
    status = 0
    waits = {asyncio.create_task(process.wait()): process for process in processes}
    pending: set[asyncio.Task[Any]] = set(waits)
    stop_asked = asyncio.create_task(stopping.wait())
    deadline: float | None = None  # once stopping: workers get their grace period, and then some
    try:
        while pending:
            if stopping.is_set() and deadline is None:
                deadline = time.monotonic() + grace_s() + _CUT_WAIT_S + 10.0
            watch = pending if stop_asked.done() else {*pending, stop_asked}
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait(watch, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                log.error("workers_killed", pids=[waits[task].pid for task in pending])
                for task in pending:
                    waits[task].kill()
                status = 1
                deadline = time.monotonic() + 3600.0  # killed: only reaping is left
                continue
            for task in done & pending:
                pending.discard(task)
                process = waits[task]
                if stopping.is_set():
                    log.info("worker_stopped", pid=process.pid, status=process.returncode)
                    status = status or (0 if process.returncode == 0 else 1)
                    continue
                log.error("worker_exited", pid=process.pid, status=process.returncode)
                status = 1
                stopping.set()
                for other in processes:
                    if other.returncode is None:
                        other.send_signal(signal.SIGTERM)
    finally:
        stop_asked.cancel()
    log.info("workers_stopped", status=status)
    return status
