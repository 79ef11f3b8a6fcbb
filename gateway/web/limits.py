"""What one gateway process lets its clients hold: the ``limits:`` section, resolved at start.

``process_limits`` turns the config into numbers for this process, sizing the connection cap
from the open-file limit (``raise_open_file_limit`` first raises it as far as the hard limit
allows). ``Admission`` keeps the two per-request budgets every caller shares: streams relayed at
once and bytes of request bodies held at once. Past either, a request is answered 503 with
``Retry-After`` before it costs more (``Overloaded``); the listener (``gateway.web.listener``)
enforces the connection cap and the header time.
"""

from __future__ import annotations

import contextlib
import resource
from dataclasses import dataclass
from typing import Literal, NoReturn

import structlog
from aiohttp import web

from ..config import LimitsConfig
from ..errors import Overloaded
from ..metrics import GatewayMetrics

log = structlog.get_logger("gateway.limits")

# File descriptors kept for everything that is not a client connection: listening sockets, the
# event loop's own, log files, the JWKS, introspection and exchange clients, and the connections
# refused with a 503 while they are answered.
FD_RESERVE = 128
# A client connection can hold one upstream connection too (a stream it is relayed).
FDS_PER_CONNECTION = 2
_FEWEST_CONNECTIONS = 16


@dataclass(frozen=True, slots=True)
class ProcessLimits:
    """``LimitsConfig`` with its automatic values resolved for this process."""

    header_timeout_s: float
    body_timeout_s: float
    keepalive_timeout_s: float
    send_timeout_s: float
    max_connections: int
    max_streams: int
    max_buffered_body_bytes: int
    open_files: int  # the soft RLIMIT_NOFILE the connection cap was sized from
    capped_by_open_files: bool  # a configured max_connections was lowered to fit open_files


def connection_cap(open_files: int) -> int:
    """How many client connections ``open_files`` descriptors carry, each with its upstream one."""
    return max(_FEWEST_CONNECTIONS, (open_files - FD_RESERVE) // FDS_PER_CONNECTION)


def process_limits(config: LimitsConfig, open_files: int) -> ProcessLimits:
    """The limits this process enforces; a ``max_connections`` the descriptors cannot carry is
    lowered to what they can (so the cap, not fd exhaustion, is what a flood meets)."""
    fits = connection_cap(open_files)
    wanted = config.max_connections if config.max_connections is not None else fits
    max_connections = min(wanted, fits)
    return ProcessLimits(
        header_timeout_s=config.header_timeout_s,
        body_timeout_s=config.body_timeout_s,
        keepalive_timeout_s=config.keepalive_timeout_s,
        send_timeout_s=config.send_timeout_s,
        max_connections=max_connections,
        max_streams=config.max_streams if config.max_streams is not None else max_connections,
        max_buffered_body_bytes=config.max_buffered_body_bytes,
        open_files=open_files,
        capped_by_open_files=wanted > fits,
    )


def open_file_limit(*, after_raise: bool = False) -> int:
    """The soft RLIMIT_NOFILE of this process, or with ``after_raise`` the hard one that
    ``raise_open_file_limit`` would make it (a very large number when unlimited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard if after_raise else soft
    return limit if limit != resource.RLIM_INFINITY else 1 << 20


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one (no privilege needed); returns both, as
    they are now. The default soft limit (often 1 024) is far below what an edge proxy needs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):  # a platform that refuses: keep the soft one
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft, hard


class RequestHold:
    """What one request holds of the process's budgets, released together when it ends (a
    context manager: ``with admission.hold() as held``)."""

    __slots__ = ("_admission", "_body_bytes", "_stream")

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._body_bytes = 0
        self._stream = False

    def release_body(self) -> None:
        """The body has gone upstream: its bytes no longer count against the budget, so a long
        answer (an SSE stream) does not keep other callers' bodies out. (The bytes of bodies
        already sent are bounded by ``max_streams`` times the routes' ``max_body_bytes``.)"""
        if self._body_bytes:
            self._admission.release(self._body_bytes, False)
            self._body_bytes = 0

    def body_bytes(self, size: int) -> None:
        """Hold ``size`` more bytes of request body; 503 if all requests together would pass the budget."""
        self._admission.take_body_bytes(size)
        self._body_bytes += size

    def stream(self) -> None:
        """Hold one of the process's streams for the relay to the upstream; 503 if none is free."""
        if not self._stream:
            self._admission.take_stream()
            self._stream = True

    def __enter__(self) -> RequestHold:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._admission.release(self._body_bytes, self._stream)
        self._body_bytes = 0
        self._stream = False


class Admission:
    """The process's budgets of streams and buffered request bodies, shared by every request."""

    def __init__(self, limits: ProcessLimits, metrics: GatewayMetrics | None = None) -> None:
        self.limits = limits
        self.streams = 0
        self.body_bytes = 0
        self._metrics = metrics

    def hold(self) -> RequestHold:
        """A request's hold on the budgets, released when the request ends, however it ends."""
        return RequestHold(self)

    def take_stream(self) -> None:
        if self.streams >= self.limits.max_streams:
            self._refuse("too_many_streams", f"{self.streams} streams open")
        self.streams += 1

    def take_body_bytes(self, size: int) -> None:
        if self.body_bytes + size > self.limits.max_buffered_body_bytes:
            self._refuse("body_budget_exhausted", f"{self.body_bytes} + {size} bytes")
        self.body_bytes += size
        if self._metrics is not None:
            self._metrics.buffered_body_bytes.set(self.body_bytes)

    def release(self, body_bytes: int, stream: bool) -> None:
        self.streams -= stream
        if body_bytes:
            self.body_bytes -= body_bytes
            if self._metrics is not None:
                self._metrics.buffered_body_bytes.set(self.body_bytes)

    def _refuse(self, reason: Literal["too_many_streams", "body_budget_exhausted"], detail: str) -> NoReturn:
        if self._metrics is not None:
            self._metrics.requests_overloaded.labels(reason).inc()
        raise Overloaded(reason, detail=detail)


# How the pipeline finds the process's admission (one per application, across reloads).
ADMISSION = web.AppKey("admission", Admission)
