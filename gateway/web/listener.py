"""The MCP listener: accepting connections within a cap, and how long a connection may dawdle.

aiohttp's own ``TCPSite`` hands the socket to ``loop.create_server``, whose accept loop has no
cap and, on the standard loop, turns file-descriptor exhaustion into a storm: every failed
``accept`` of a batch logs a traceback and schedules one more retry (CPython's
``selector_events._accept_connection``), so 1,100 stalled connections gave 1.5 M log lines and
a busy core. ``GuardedSite`` runs its own accept loop on the socket instead (``add_reader`` and
``connect_accepted_socket``, public on asyncio and uvloop alike), so that:

- past ``max_connections`` a connection is answered ``503`` with ``Retry-After`` and closed,
  before the process runs out of descriptors (the cap is sized from them, ``gateway.web.limits``);
- out of descriptors anyway (however that came about), one kept in reserve is given up to
  accept a waiting connection and answer it the same way (as nginx and libuv do); one
  ``fd_exhausted`` event is logged per interval, and accepting resumes by itself, with no busy loop;
- a connection has ``header_timeout_s`` to complete its request headers, counted from its start
  or from the first byte of a later request on it; one that does not is closed
  (``GuardedConnection``). An idle kept-alive connection is closed by aiohttp's own keep-alive
  timer (``keepalive_timeout_s``). The request body's time is ``pipeline.read_body``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any, cast

import structlog
from aiohttp import web

from ..metrics import GatewayMetrics

log = structlog.get_logger("gateway.listener")

# Connections accepted per readiness event, so that a flood cannot starve requests in flight.
_ACCEPT_BATCH = 64
# Refused connections that may linger (reading what the client sends until it closes, so that
# it reads the 503 instead of a reset) at once; beyond, they are answered and closed at once.
_LINGERING_REFUSALS = 64
_REFUSAL_LINGER_S = 1.0
# Headers whose last bytes came this recently when their deadline passed get this long more: a
# loop running late may have read them without having started their handler yet.
_HEADER_GRACE_S = 0.25
# Out of descriptors without a reserve: accepting pauses this long.
_ACCEPT_RETRY_S = 1.0
# At most one fd_exhausted or connections_at_capacity event per this many seconds (the metric
# counts every connection).
_EVENT_INTERVAL_S = 10.0
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def overloaded_answer(message: str) -> bytes:
    """A complete HTTP/1.1 503 with a JSON-RPC error body, written before any request is read."""
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": message}})
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n"
        "Server: mcp-auth-gateway\r\n\r\n"
    )
    return (head + body).encode()


_AT_CAPACITY = overloaded_answer("Gateway overloaded: too many connections, retry later")
_NO_DESCRIPTORS = overloaded_answer("Gateway overloaded: out of file descriptors, retry later")


class Connections:
    """The open client connections of the MCP listener, and the time each has for its headers.

    The request middleware reports when a request's handler starts and ends (``request_started``,
    ``request_finished``), which is when its headers are known to be complete.
    """

    def __init__(
        self, header_timeout_s: float, send_timeout_s: float = 30.0, metrics: GatewayMetrics | None = None
    ) -> None:
        self.header_timeout_s = header_timeout_s
        self.send_timeout_s = send_timeout_s
        self.count = 0  # accepted and not yet closed
        self._metrics = metrics
        self._by_transport: dict[asyncio.BaseTransport, GuardedConnection] = {}

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        guard = self._by_transport.get(transport) if transport is not None else None
        if guard is not None:
            guard.request_started()

    def request_finished(self, transport: asyncio.BaseTransport | None) -> None:
        guard = self._by_transport.get(transport) if transport is not None else None
        if guard is not None:
            guard.request_finished()

    def accepted(self) -> None:
        self.count += 1
        self._gauge()

    def made(self, transport: asyncio.BaseTransport, guard: GuardedConnection) -> None:
        self._by_transport[transport] = guard

    def closed(self, transport: asyncio.BaseTransport | None) -> None:
        self.count -= 1
        if transport is not None:
            self._by_transport.pop(transport, None)
        self._gauge()

    def timed_out(self, phase: str) -> None:
        if self._metrics is not None:
            self._metrics.connections_timed_out.labels(phase).inc()

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.connections_open.set(self.count)


class GuardedConnection(asyncio.Protocol):
    """aiohttp's protocol for one connection, wrapped with the header timer and the send timer.

    Every protocol call goes to aiohttp's handler unchanged; this only adds two deadlines:

    - headers: the connection is closed unless a request's headers are complete within
      ``header_timeout_s`` of the connection's start, of the first byte after a request ended,
      or of a request's end when bytes came during it (the next request's, pipelined or sent
      early; or the rest of its body, which then only shortens the keep-alive). One timer at a
      time serves every deadline (like aiohttp's keep-alive timer): it fires, finds the deadline
      met, moved (then waits again) or gone, so a busy connection does not start one per request;
    - sending: a client that takes none of an answer for ``send_timeout_s`` (the transport paused
      writing: its buffer is full) is disconnected, whatever is being written (an SSE stream, a
      large JSON answer), so that it holds no stream, upstream connection or memory for long.
    """

    __slots__ = (
        "_bytes_in_request",
        "_connections",
        "_counted",
        "_deadline",
        "_graced",
        "_handler",
        "_in_request",
        "_last_data_at",
        "_loop",
        "_send_timer",
        "_timer",
        "_transport",
    )

    def __init__(self, connections: Connections, handler: asyncio.Protocol) -> None:
        self._connections = connections
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None  # when the headers being received are due
        self._send_timer: asyncio.TimerHandle | None = None
        self._in_request = False
        self._bytes_in_request = False
        self._last_data_at = 0.0
        self._graced = False
        self._counted = True  # counted at accept, uncounted once

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._connections.made(transport, self)
        self._headers_due()
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._last_data_at = self._loop.time()
        if self._in_request:
            self._bytes_in_request = True
        elif self._deadline is None:
            self._headers_due()  # the first byte of a later request: its headers are due in time too
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._timer, self._send_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._send_timer = None
        self.forget()
        self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._send_timer is None:
            self._send_timer = self._loop.call_later(self._connections.send_timeout_s, self._send_timed_out)
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._handler.resume_writing()

    def request_started(self) -> None:
        self._in_request = True
        self._bytes_in_request = False
        self._deadline = None

    def request_finished(self) -> None:
        self._in_request = False
        if self._bytes_in_request:  # a next request may have begun meanwhile: its headers are due
            self._bytes_in_request = False
            self._headers_due()

    def forget(self) -> None:
        """Uncount this connection (once), when it closes or could not be set up."""
        if self._counted:
            self._counted = False
            self._connections.closed(self._transport)

    def _headers_due(self) -> None:
        self._graced = False
        self._deadline = self._loop.time() + self._connections.header_timeout_s
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._check_headers)

    def _check_headers(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self._in_request or self._transport is None:
            return
        now = self._loop.time()
        if now < deadline:  # a later request's deadline: wait for it
            self._timer = self._loop.call_at(deadline, self._check_headers)
            return
        if not self._graced and now - self._last_data_at < _HEADER_GRACE_S:
            # Bytes came just now, maybe the headers' last: a loop running late may not have
            # started their handler yet. One short grace, then the deadline holds.
            self._graced = True
            self._timer = self._loop.call_later(_HEADER_GRACE_S, self._check_headers)
            return
        self._connections.timed_out("headers")
        self._transport.close()

    def _send_timed_out(self) -> None:
        self._send_timer = None
        if self._transport is not None:
            self._connections.timed_out("send")
            # What is buffered cannot be delivered: nothing to flush. (A cast: uvloop's
            # transports do not subclass asyncio's.)
            cast(asyncio.Transport, self._transport).abort()


class _Refusal(asyncio.Protocol):
    """A connection over the cap: answered 503 at once, then read and discarded until the client
    closes (at most ``_REFUSAL_LINGER_S``), so that it reads the answer rather than a reset."""

    def __init__(self, answer: bytes, done: Callable[[], None]) -> None:
        self._answer = answer
        self._done: Callable[[], None] | None = done
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio's.
        stream = cast(asyncio.Transport, transport)
        stream.write(self._answer)
        if stream.can_write_eof():
            stream.write_eof()
        self._timer = asyncio.get_running_loop().call_later(_REFUSAL_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # the request is not read

    def eof_received(self) -> bool:
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.finish()

    def finish(self) -> None:
        """Report the refusal done (once), when it closed or could not be set up."""
        if self._done is not None:
            self._done()
            self._done = None


def _answer_and_close(conn: socket.socket, answer: bytes) -> None:
    """Best effort, with no descriptor to spare: the 503 into the socket buffer, then close."""
    with contextlib.suppress(OSError):
        conn.send(answer)
    conn.close()


def _open_reserve() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


class _RateLimitedEvent:
    """A log event written at most once per interval, with how often it happened meanwhile."""

    __slots__ = ("_count", "_event", "_level", "_logged_at")

    def __init__(self, event: str, level: str) -> None:
        self._event = event
        self._level = level
        self._count = 0
        self._logged_at = -_EVENT_INTERVAL_S

    def happened(self, times: int, **fields: Any) -> None:
        self._count += times
        now = time.monotonic()
        if now - self._logged_at >= _EVENT_INTERVAL_S:
            getattr(log, self._level)(
                self._event, refused=self._count, interval_s=_EVENT_INTERVAL_S, **fields
            )
            self._logged_at = now
            self._count = 0


class Listener(asyncio.AbstractServer):
    """The accept loop on the listening sockets of one site (see the module docstring)."""

    def __init__(
        self,
        sockets: list[socket.socket],
        factory: Callable[[], asyncio.Protocol],
        connections: Connections,
        max_connections: int,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._sockets = sockets
        self._factory = factory
        self._connections = connections
        self.max_connections = max_connections
        self._metrics = metrics
        self._loop = asyncio.get_running_loop()
        self._serving = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lingering = 0
        self._paused: asyncio.TimerHandle | None = None
        self._reserve = _open_reserve()
        self._exhausted = _RateLimitedEvent("fd_exhausted", "error")
        self._at_capacity = _RateLimitedEvent("connections_at_capacity", "warning")

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def start(self) -> None:
        self._serving = True
        for sock in self._sockets:
            self._loop.add_reader(sock.fileno(), self._on_readable, sock)

    def close(self) -> None:
        if self._serving:
            self._serving = False
            for sock in self._sockets:
                self._loop.remove_reader(sock.fileno())
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if not self._serving and self._sockets:
            self.start()

    async def serve_forever(self) -> None:
        raise NotImplementedError("the gateway's runner serves")

    async def wait_closed(self) -> None:
        return None

    # --- accepting ------------------------------------------------------------------------------

    def _on_readable(self, sock: socket.socket) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._out_of_descriptors(sock)
                else:  # not expected of a listening socket: say so once, retry later
                    log.error("accept_failed", error=f"{type(exc).__name__}: {exc}")
                    self._pause()
                return
            conn.setblocking(False)
            if self._connections.count >= self.max_connections:
                self._refuse(conn)
            else:
                self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._connections.accepted()
        guard = GuardedConnection(self._connections, self._factory())
        self._spawn(self._connect(conn, lambda: guard, guard.forget))

    def _refuse(self, conn: socket.socket) -> None:
        if self._metrics is not None:
            self._metrics.connections_refused.labels("at_capacity").inc()
        self._at_capacity.happened(1, max_connections=self.max_connections)
        if self._lingering >= _LINGERING_REFUSALS:
            _answer_and_close(conn, _AT_CAPACITY)
            return
        self._lingering += 1
        refusal = _Refusal(_AT_CAPACITY, self._refusal_done)
        self._spawn(self._connect(conn, lambda: refusal, refusal.finish))

    def _refusal_done(self) -> None:
        self._lingering -= 1

    async def _connect(
        self, conn: socket.socket, factory: Callable[[], asyncio.Protocol], failed: Callable[[], None]
    ) -> None:
        try:
            await self._loop.connect_accepted_socket(factory, conn)
        except (OSError, RuntimeError):  # the client left (or the loop is closing) meanwhile
            conn.close()
            failed()

    def _spawn(self, coroutine: Any) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- out of descriptors ---------------------------------------------------------------------

    def _out_of_descriptors(self, sock: socket.socket) -> None:
        """Answer waiting connections with the reserve descriptor, one at a time; without one,
        pause accepting. Either way the event is logged at most once per interval."""
        shed = 0
        while shed < _ACCEPT_BATCH and self._reserve is not None:
            os.close(self._reserve)
            try:
                conn, _address = sock.accept()
            except OSError:  # none waiting any more, or the freed descriptor went elsewhere
                conn = None
            if conn is not None:
                _answer_and_close(conn, _NO_DESCRIPTORS)
                shed += 1
            self._reserve = _open_reserve()
            if conn is None:
                break
        if self._metrics is not None and shed:
            self._metrics.connections_refused.labels("fd_exhausted").inc(shed)
        self._exhausted.happened(
            shed, open_connections=self._connections.count, reserve_descriptor=self._reserve is not None
        )
        if self._reserve is None:
            self._pause()

    def _pause(self) -> None:
        if not self._serving or self._paused is not None:
            return
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
        self._paused = self._loop.call_later(_ACCEPT_RETRY_S, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if self._reserve is None:
            self._reserve = _open_reserve()
        if self._serving:
            for sock in self._sockets:
                self._loop.add_reader(sock.fileno(), self._on_readable, sock)


def listening_sockets(host: str, port: int, *, reuse_port: bool, backlog: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address ``host`` names (as asyncio's
    ``create_server`` makes them)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class GuardedSite(web.BaseSite):
    """aiohttp's TCP site, accepting through ``Listener`` (the connection cap, the header timer)."""

    __slots__ = ("_connections", "_host", "_max_connections", "_metrics", "_port", "_reuse_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        connections: Connections,
        max_connections: int,
        reuse_port: bool = False,
        metrics: GatewayMetrics | None = None,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._connections = connections
        self._max_connections = max_connections
        self._metrics = metrics

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        if server is None:  # BaseSite checked that the runner is set up
            raise RuntimeError("Call runner.setup() before starting a site")
        sockets = listening_sockets(
            self._host, self._port, reuse_port=self._reuse_port, backlog=self._backlog
        )
        listener = Listener(sockets, server, self._connections, self._max_connections, self._metrics)
        listener.start()
        # BaseSite.stop closes it, and BaseRunner.addresses reads its sockets.
        self._server = listener


# How the request middleware reports requests to the listener's connections.
CONNECTIONS = web.AppKey("connections", Connections)
