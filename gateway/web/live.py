"""The gateway that serves new requests, swapped on reload and drained on shutdown.

``LiveGateway`` knows the gateway it swaps only through ``Served`` (a config, readiness) and
two functions it is given: ``open`` (config → an async context manager yielding a gateway, which
closes it on exit) and ``handle`` (gateway, request → response).

A request is served from start to end by the gateway that was current when it arrived, so a
reload never changes the rules, keys or upstream connections under a request (or an SSE stream)
that is already running. A replaced gateway is closed (upstream pools, token exchangers, its
lease on each issuer's keys) once its last request has ended, or when the process stops. A
reload whose new or changed issuers load no keys within the swap wait is refused
(``KeysNotLoaded``): the old gateway serves on.

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
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import structlog
from aiohttp import web

from ..config import GatewayConfig
from ..errors import ShuttingDown
from ..upstream.resilience import RouteReadiness, routes_ready
from .middleware import SERVING_CONFIG

log = structlog.get_logger("gateway.live")

# How long a reload waits for the keys of the issuers it adds or changes before refusing.
SWAP_WAIT_S = 5.0

# Every response, once its headers are sent: what a cut request's client has already received.
PREPARED = web.RequestKey("prepared_response", web.StreamResponse)


class Served(Protocol):
    """What the live gateway needs to know of a gateway it serves requests with."""

    @property
    def config(self) -> GatewayConfig: ...

    @property
    def ready(self) -> bool: ...

    @property
    def route_readiness(self) -> Mapping[str, RouteReadiness]: ...

    @property
    def audit_status(self) -> str | None:
        """The audit trail's state (``ok``, ``failed``), None without one."""
        ...

    async def wait_new_keys(self, timeout_s: float) -> tuple[str, ...]:
        """Wait up to ``timeout_s`` for the keys of issuers this gateway added or changed; the
        issuers still without keys then."""
        ...


G = TypeVar("G", bound=Served)

Opener = Callable[[GatewayConfig], AbstractAsyncContextManager[G]]
RequestHandler = Callable[[G, web.Request], Awaitable[web.StreamResponse]]


class KeysNotLoaded(Exception):
    """A reload refused: issuers the new config adds or changes loaded no keys in the swap wait."""

    def __init__(self, issuers: tuple[str, ...], wait_s: float) -> None:
        super().__init__(f"no keys loaded within {wait_s}s for: {', '.join(issuers)}")
        self.issuers = issuers


async def remember_prepared(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: keep the response whose headers went out."""
    request[PREPARED] = response


@dataclass(eq=False)
class _Generation(Generic[G]):
    """One gateway, what closes it, and the requests it is serving."""

    gateway: G
    resources: contextlib.AsyncExitStack
    requests: dict[asyncio.Task[Any], web.Request] = field(default_factory=dict)
    retired: bool = False
    retired_at: float = 0.0
    closing: bool = False


class LiveGateway(Generic[G]):
    """Holds the current gateway (``current``); ``handle`` is the aiohttp handler for MCP paths."""

    def __init__(self, config: GatewayConfig, open: Opener[G], handle: RequestHandler[G]) -> None:
        self._initial_config = config
        self._opener = open
        self._handler = handle
        self._generation: _Generation[G] | None = None
        self._open: list[_Generation[G]] = []  # current, and retired ones not yet closed
        self._closing: set[asyncio.Task[None]] = set()
        self._cut: set[asyncio.Task[Any]] = set()
        self._cutting = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._reload_lock = asyncio.Lock()
        # Set once shutdown begins: the MCP port is closing, so /readyz must say so.
        self.draining = False

    @property
    def current(self) -> G:
        return self._serving().gateway

    @property
    def config(self) -> GatewayConfig:
        """The config serving new requests (before ``start``: the one it will open)."""
        return self._generation.gateway.config if self._generation is not None else self._initial_config

    @property
    def in_flight(self) -> int:
        return sum(len(generation.requests) for generation in self._open)

    def _serving(self) -> _Generation[G]:
        if self._generation is None:
            raise RuntimeError("LiveGateway.start() has not run")
        return self._generation

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the gateway for the initial config (the app's start-up)."""
        generation = await self._open_generation(self._initial_config)
        self._open.append(generation)
        self._generation = generation

    async def _open_generation(self, config: GatewayConfig) -> _Generation[G]:
        resources = contextlib.AsyncExitStack()
        gateway = await resources.enter_async_context(self._opener(config))
        return _Generation(gateway, resources)

    async def reload(self, config: GatewayConfig, *, ready_timeout_s: float = SWAP_WAIT_S) -> bool:
        """Open a gateway for ``config`` and make it serve new requests; the old one drains.

        Raises whatever opening the new gateway raised; the old one then stays. Waits up to
        ``ready_timeout_s`` for the keys of the issuers the new config adds or changes, and
        raises ``KeysNotLoaded`` (the new gateway closed, the old one serving on) if any has
        none by then: swapped in, such a config would answer 503 to all its issuer's tokens
        until the next reload. Issuers it keeps keep their keys, loaded or not (that is not the
        new config's doing). Returns whether every issuer of the new gateway has keys.
        """
        async with self._reload_lock:
            previous = self._serving()
            generation = await self._open_generation(config)
            try:
                missing = await generation.gateway.wait_new_keys(ready_timeout_s)
                if missing:
                    raise KeysNotLoaded(missing, ready_timeout_s)
            except BaseException:
                await generation.resources.aclose()
                raise
            self._open.append(generation)
            self._generation = generation
            previous.retired = True
            previous.retired_at = time.monotonic()
            if not previous.requests:
                self._close_later(previous)
            else:
                log.info("previous_config_draining", in_flight=len(previous.requests))
            return generation.gateway.ready

    async def aclose(self) -> None:
        """Close every gateway still open (the app's cleanup, after requests ended or were cut)."""
        for generation in list(self._open):
            self._close_later(generation)
        while self._closing:
            await asyncio.gather(*list(self._closing))

    def _close_later(self, generation: _Generation[G]) -> None:
        if generation.closing:
            return
        generation.closing = True
        self._open.remove(generation)
        task = asyncio.create_task(self._close(generation), name="gateway-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close(generation: _Generation[G]) -> None:
        try:
            await generation.resources.aclose()
        except Exception:
            log.exception("gateway_close_failed")
            return
        if generation.retired:
            drained_s = round(time.monotonic() - generation.retired_at, 3)
            log.info("previous_config_closed", drained_s=drained_s)

    # --- requests ---------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        generation = self._serving()
        # Errors are rendered (error_responses, outside) with the config that serves the request.
        request[SERVING_CONFIG] = generation.gateway.config
        if self._cutting:
            raise ShuttingDown()
        task = asyncio.current_task()
        if task is None:  # aiohttp runs every handler in a task of its own
            raise RuntimeError("LiveGateway.handle must run in a task")
        generation.requests[task] = request
        self._idle.clear()
        try:
            return await self._handler(generation.gateway, request)
        except asyncio.CancelledError:
            if task not in self._cut:
                raise  # the client went away (handler cancellation)
            task.uncancel()
            return await self._end_cut_request(request)
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

    async def _end_cut_request(self, request: web.Request) -> web.StreamResponse:
        response: web.StreamResponse | None = request.get(PREPARED)
        if response is None:
            raise ShuttingDown()  # not answered yet: 503 with Retry-After
        if response.content_type == "text/event-stream" and request.transport is not None:
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
            return response
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError


LIVE = web.AppKey("live_gateway", LiveGateway)


def add_health_routes(router: web.UrlDispatcher, live: LiveGateway[Any], *, details: bool = False) -> None:
    """``/healthz`` (the process answers) and ``/readyz`` (the serving gateway has its keys, at
    least one route whose circuit is not open, an audit trail that records if it must, and is not
    shutting down; each route's state and the trail's are listed with ``details``, see
    ``gateway.upstream.resilience`` and ``gateway.audit_trail.trail``). The MCP port's answer has no
    details: anyone may ask it, and which upstream is failing is the operator's business."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        # Draining: the MCP listener no longer accepts connections; a load balancer must stop
        # sending any, even though this admin listener still answers.
        if live.draining:
            return web.json_response({"ready": False, "draining": True}, status=503)
        gateway = live.current
        routes = gateway.route_readiness
        ready = gateway.ready and routes_ready(routes.values())
        answer: dict[str, Any] = {"ready": ready}
        if details:
            answer["routes"] = {path: route.as_json() for path, route in routes.items()}
            if (audit := gateway.audit_status) is not None:  # "failed": see audit_write_failed
                answer["audit"] = audit
        return web.json_response(answer, status=200 if ready else 503)

    router.add_get("/healthz", healthz, allow_head=True)
    router.add_get("/readyz", readyz, allow_head=True)
