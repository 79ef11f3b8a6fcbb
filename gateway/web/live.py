"""The gateway that serves new requests, swapped on reload and drained on shutdown.

A request is served from start to end by the ``Gateway`` that was current when it arrived, so a
reload never changes the rules, keys or upstream connections under a request (or an SSE stream)
that is already running. A replaced gateway is closed (upstream pools, JWKS refresh tasks, token
exchangers) once its last request has ended, or when the process stops.

At the shutdown deadline, requests still running are cut (``cut``): the handler is cancelled,
which closes its upstream request (the upstream sees the client go away), and the client's
response is ended as cleanly as it can be:

- an SSE response gets its terminating chunk: a well-formed end of stream, from which an SSE
  client reconnects (a partial event at the end is discarded by SSE parsers, per the spec);
- any other response already started is aborted, since a clean end would make a truncated body
  look complete;
- a request not yet answered gets ``503`` with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from ..errors import GatewayError
from .middleware import error_responses

if TYPE_CHECKING:
    from ..config import GatewayConfig
    from .app import Gateway

log = structlog.get_logger("gateway.live")

# Every response, once its headers are sent: what a cut request's client has already received.
PREPARED = web.RequestKey("prepared_response", web.StreamResponse)


class ShuttingDown(GatewayError):
    """The shutdown deadline passed before the upstream answered this request."""

    status = 503
    reason = "shutting_down"
    jsonrpc_code = -32000  # implementation-defined server error (JSON-RPC 2.0 §5.1)
    message = "Gateway is shutting down"
    retry_after_s = 1


async def remember_prepared(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: keep the response whose headers went out."""
    request[PREPARED] = response


async def _refuse(_request: web.Request) -> web.StreamResponse:
    raise ShuttingDown()


@dataclass(eq=False)
class _Generation:
    """One Gateway and the requests it is serving."""

    gateway: Gateway
    errors: Middleware  # renders GatewayErrors with this gateway's config
    requests: dict[asyncio.Task[Any], web.Request] = field(default_factory=dict)
    retired: bool = False
    retired_at: float = 0.0
    closing: bool = False


Successor = Callable[["GatewayConfig", "Gateway"], "Gateway"]


class LiveGateway:
    """Holds the current Gateway (``current``); ``handle`` is the aiohttp handler for MCP paths."""

    def __init__(self, gateway: Gateway, successor: Successor) -> None:
        # successor(new_config, previous) builds the next Gateway (it may carry state over).
        self._successor = successor
        self._generation = _Generation(gateway, error_responses(gateway.config))
        self._open: list[_Generation] = [self._generation]  # current, and retired ones not yet closed
        self._closing: set[asyncio.Task[None]] = set()
        self._cut: set[asyncio.Task[Any]] = set()
        self._cutting = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._reload_lock = asyncio.Lock()

    @property
    def current(self) -> Gateway:
        return self._generation.gateway

    @property
    def config(self) -> GatewayConfig:
        return self._generation.gateway.config

    @property
    def in_flight(self) -> int:
        return sum(len(generation.requests) for generation in self._open)

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.current.start()

    async def reload(self, config: GatewayConfig, *, ready_timeout_s: float = 5.0) -> bool:
        """Start a Gateway for ``config`` and make it serve new requests; the old one drains.

        Raises whatever building or starting the new Gateway raised; the old one then stays.
        Waits up to ``ready_timeout_s`` for the new gateway's keys; returns whether they loaded
        (it is swapped in either way: a request would wait for the keys itself).
        """
        async with self._reload_lock:
            previous = self._generation
            gateway = self._successor(config, previous.gateway)
            try:
                await gateway.start()
                ready = await _until_ready(gateway, ready_timeout_s)
            except BaseException:
                await gateway.aclose()
                raise
            generation = _Generation(gateway, error_responses(config))
            self._open.append(generation)
            self._generation = generation
            previous.retired = True
            previous.retired_at = time.monotonic()
            if not previous.requests:
                self._close_later(previous)
            else:
                log.info("previous_config_draining", in_flight=len(previous.requests))
            return ready

    async def aclose(self) -> None:
        """Close every Gateway still open (the app's cleanup, after requests ended or were cut)."""
        for generation in list(self._open):
            self._close_later(generation)
        while self._closing:
            await asyncio.gather(*list(self._closing))

    def _close_later(self, generation: _Generation) -> None:
        if generation.closing:
            return
        generation.closing = True
        self._open.remove(generation)
        task = asyncio.create_task(self._close(generation), name="gateway-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close(generation: _Generation) -> None:
        try:
            await generation.gateway.aclose()
        except Exception:
            log.exception("gateway_close_failed")
            return
        if generation.retired:
            drained_s = round(time.monotonic() - generation.retired_at, 3)
            log.info("previous_config_closed", drained_s=drained_s)

    # --- requests ---------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        generation = self._generation
        if self._cutting:
            return await generation.errors(request, _refuse)
        task = asyncio.current_task()
        if task is None:  # aiohttp runs every handler in a task of its own
            raise RuntimeError("LiveGateway.handle must run in a task")
        generation.requests[task] = request
        self._idle.clear()
        try:
            return await generation.errors(request, generation.gateway.dispatch)
        except asyncio.CancelledError:
            if task not in self._cut:
                raise  # the client went away (handler cancellation)
            task.uncancel()
            return await self._end_cut_request(request, generation)
        finally:
            del generation.requests[task]
            self._cut.discard(task)
            if generation.retired and not generation.requests:
                self._close_later(generation)
            if not any(open_generation.requests for open_generation in self._open):
                self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; False if ``timeout_s`` passed first."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def cut(self) -> int:
        """The shutdown deadline: end every request still in flight and refuse new ones."""
        self._cutting = True
        tasks = [task for generation in self._open for task in generation.requests]
        for task in tasks:
            self._cut.add(task)
            task.cancel()
        return len(tasks)

    async def _end_cut_request(self, request: web.Request, generation: _Generation) -> web.StreamResponse:
        response: web.StreamResponse | None = request.get(PREPARED)
        if response is None:
            refused: web.StreamResponse = await generation.errors(request, _refuse)
            return refused
        if response.content_type == "text/event-stream" and request.transport is not None:
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
            return response
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError


async def _until_ready(gateway: Gateway, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not gateway.ready:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


LIVE = web.AppKey("live_gateway", LiveGateway)
