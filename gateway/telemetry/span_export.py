"""Ended spans to the collector: a bounded queue, one export thread, OTLP/HTTP with retries.

The same contract as OpenTelemetry's ``BatchSpanProcessor`` and OTLP/HTTP exporter, whose
settings operators already know:

- ``OTEL_BSP_SCHEDULE_DELAY`` (ms, 5000): how long the thread waits for a batch to fill;
  ``OTEL_BSP_MAX_QUEUE_SIZE`` (2048): spans waiting beyond it are dropped, and counted in a
  ``trace_spans_dropped`` warning; ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` (512): spans per export,
  and a queue that reaches it wakes the thread at once; ``OTEL_BSP_EXPORT_TIMEOUT`` (ms, 30000)
  bounds ``flush``. A value that is not a positive integer is ignored, with a warning.
- Ending a span on the event loop is one ``deque.append`` (thread-safe); encoding, gzip and the
  POST happen on the thread, never on the loop.
- ``POST {endpoint}/v1/traces``, ``application/x-protobuf``, gzip unless ``compression: none``,
  the configured headers (secrets, revealed only into the request). 429, 502, 503, 504 and
  connection failures are retried with exponential backoff (1 s, 2 s, 4 s … ±20 %, or the
  server's ``Retry-After`` seconds) within ``timeout_s``; any other answer drops the batch.
  Each lost batch is one ``trace_export_failed`` warning naming the endpoint, never a header.
"""

from __future__ import annotations

import collections
import gzip
import http.client
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import structlog

from .. import __version__
from ..config.model import OtlpConfig
from .otlp_connection import collector_route
from .otlp_wire import ExportHead
from .recorder import Span

__all__ = ["BatchSettings", "OtlpTraceSender", "SpanExport"]

log = structlog.get_logger("gateway.telemetry")

RETRYABLE_STATUSES: Final = frozenset({429, 502, 503, 504})
MAX_ATTEMPTS: Final = 6
# Measured on the gateway's spans, 512 a batch: level 1 costs 0.7 µs a span and sends 15 % more
# bytes than level 6 (2.1 µs); the default, 9, costs more still for no gain on such data.
GZIP_LEVEL: Final = 1
_SETTINGS: Final = {  # environment name: (field, default)
    "OTEL_BSP_SCHEDULE_DELAY": ("schedule_delay_ms", 5000),
    "OTEL_BSP_MAX_QUEUE_SIZE": ("max_queue_size", 2048),
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": ("max_export_batch_size", 512),
    "OTEL_BSP_EXPORT_TIMEOUT": ("export_timeout_ms", 30000),
}


@dataclass(frozen=True, slots=True)
class BatchSettings:
    schedule_delay_ms: int = 5000
    max_queue_size: int = 2048
    max_export_batch_size: int = 512
    export_timeout_ms: int = 30000

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> BatchSettings:
        values: dict[str, int] = {}
        for name, (field, default) in _SETTINGS.items():
            text = environ.get(name)
            if text is None:
                continue
            try:
                value = int(text.strip())
            except ValueError:
                value = 0
            if value <= 0:
                log.warning("tracing_setting_ignored", variable=name, default=default)
                continue
            values[field] = value
        settings = cls(**values)
        if settings.max_export_batch_size > settings.max_queue_size:
            # As the SDK requires: a batch never exceeds what the queue holds.
            return cls(**{**values, "max_export_batch_size": settings.max_queue_size})
        return settings


class SpanExport:
    """The queue of ended spans and the thread that sends them in batches (``send``)."""

    def __init__(self, send: Callable[[Sequence[Span]], object], settings: BatchSettings) -> None:
        self._send = send
        self._settings = settings
        self._queue: collections.deque[Span] = collections.deque()
        self._dropped = 0
        self._wake = threading.Event()
        self._stopping = False
        # Held while a batch is taken and sent: a flush from another thread waits for the batch
        # the export thread holds, so that every span ended before the flush has left with it.
        self._exporting = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="gateway-span-export", daemon=True)
        self._thread.start()

    def add(self, span: Span) -> None:
        """A span ended (on any thread): queued, or dropped if the queue is full."""
        queue = self._queue
        if self._stopping:
            return  # shut down: nothing would send it
        if len(queue) >= self._settings.max_queue_size:
            self._dropped += 1
            return
        queue.append(span)
        if len(queue) >= self._settings.max_export_batch_size and not self._wake.is_set():
            self._wake.set()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Send every span queued so far (blocking: off the loop); False if that took longer
        than ``timeout_s`` (``OTEL_BSP_EXPORT_TIMEOUT`` by default)."""
        limit = self._settings.export_timeout_ms / 1000 if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        if not self._exporting.acquire(timeout=limit):
            return False
        try:
            while self._queue:
                if time.monotonic() > deadline:
                    return False
                self._export_batch()
            return True
        finally:
            self._exporting.release()

    def shutdown(self) -> None:
        """Stop the thread and send what is left (blocking, within ``OTEL_BSP_EXPORT_TIMEOUT``
        more than the batch being sent); what could not be sent is counted in a warning."""
        self._stopping = True
        self._wake.set()
        self._thread.join(self._settings.export_timeout_ms / 1000)
        self.flush()
        if self._queue or self._dropped:
            log.warning(
                "trace_spans_dropped",
                spans=len(self._queue) + self._dropped,
                max_queue_size=self._settings.max_queue_size,
                at_shutdown=True,
            )
            self._queue.clear()

    def _run(self) -> None:
        delay_s = self._settings.schedule_delay_ms / 1000
        while not self._stopping:
            self._wake.wait(delay_s)
            self._wake.clear()
            with self._exporting:
                # A full batch at a time while a batch's worth waits, then what the delay left.
                while self._queue and not self._stopping:
                    self._export_batch()
                    if len(self._queue) < self._settings.max_export_batch_size:
                        break

    def _export_batch(self) -> None:
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(len(queue), self._settings.max_export_batch_size))]
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            log.warning("trace_spans_dropped", spans=dropped, max_queue_size=self._settings.max_queue_size)
        try:
            self._send(batch)
        except Exception as exc:  # the thread must outlive any fault of one batch
            log.error("trace_export_failed", spans=len(batch), error=type(exc).__name__)


class OtlpTraceSender:
    """POSTs batches of spans to ``{endpoint}/v1/traces`` over one kept-alive connection."""

    def __init__(
        self,
        otlp: OtlpConfig,
        head: ExportHead,
        stopping: threading.Event | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self._head = head
        parts = urlsplit(otlp.endpoint)
        path = parts.path + "/v1/traces" + (f"?{parts.query}" if parts.query else "")
        self._route = collector_route(otlp.endpoint, path, environ)
        # What a warning names: the endpoint without its query (which could hold a key).
        self._url = f"{parts.scheme}://{parts.netloc}{parts.path}/v1/traces"
        self._timeout_s = otlp.timeout_s
        self._gzip = otlp.compression != "none"
        # The configured headers (a User-Agent of the operator's replaces the gateway's); the
        # body's own, Content-Type and Content-Encoding, are the gateway's.
        configured = {name.lower(): value.reveal() for name, value in otlp.headers}
        configured.pop("content-type", None)
        configured.pop("content-encoding", None)
        self._headers = {
            **self._route.proxy_headers,  # a plain-HTTP proxy's credentials (a tunnel's go on CONNECT)
            "Content-Type": "application/x-protobuf",
            "User-Agent": configured.pop("user-agent", f"mcp-auth-gateway/{__version__}"),
            **configured,
        }
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._connection: http.client.HTTPConnection | None = None
        self._stopping = stopping or threading.Event()

    def send(self, spans: Sequence[Span]) -> bool:
        """Export ``spans``: True once the collector took them, all within ``timeout_s``."""
        body = self._head.request(spans)
        if self._gzip:
            body = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
        deadline = time.monotonic() + self._timeout_s
        status: int | None = None
        for attempt in range(MAX_ATTEMPTS):
            status, retry_after = self._post(body, deadline)
            if status is not None and 200 <= status < 300:
                return True
            if status is not None and status not in RETRYABLE_STATUSES:
                break
            backoff = retry_after if retry_after is not None else 2**attempt * random.uniform(0.8, 1.2)  # noqa: S311 -- jitter
            if attempt + 1 == MAX_ATTEMPTS or backoff > deadline - time.monotonic():
                break
            if self._stopping.wait(backoff):
                break
        log.warning("trace_export_failed", endpoint=self._url, spans=len(spans), status=status)
        return False

    def stop(self) -> None:
        """No more retries: a backoff in progress ends (shutdown), each batch left gets one try."""
        self._stopping.set()

    def close(self) -> None:
        self.stop()
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _post(self, body: bytes, deadline: float) -> tuple[int | None, float | None]:
        """(status, Retry-After seconds) of one POST; (None, None) if the connection failed or
        the deadline passed (a collector answering a byte at a time included). A kept-alive
        connection the collector had closed is retried once on a new one."""
        for fresh in (self._connection is None, True):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, None
            try:
                connection = self._connect(remaining)
            except OSError:  # settings that do not load (logged at start-up)
                return None, None
            # Socket timeouts bound each read, not the exchange: at the deadline the socket is
            # shut down, which ends a read in progress.
            watchdog = threading.Timer(remaining, _interrupt, (connection,))
            watchdog.daemon = True
            watchdog.start()
            try:
                connection.request("POST", self._route.path, body=body, headers=self._headers)
                response = connection.getresponse()
                response.read(MAX_ANSWER_BYTES)  # the status is what counts: no collector's
                # answer is held whole, whatever its size
            except _PEER_CLOSED:
                self._drop(connection)
                if fresh:
                    return None, None
                continue
            except (OSError, http.client.HTTPException):  # a timeout included: not sent twice
                self._drop(connection)
                return None, None
            finally:
                watchdog.cancel()
            if response.will_close or not response.isclosed():  # closing it is cheaper than reading on
                self._drop(connection)
            return response.status, _retry_after(response.getheader("Retry-After"))
        return None, None  # not reached: the second pass is always fresh

    def _drop(self, connection: http.client.HTTPConnection) -> None:
        connection.close()
        if self._connection is connection:
            self._connection = None

    def _connect(self, timeout_s: float) -> http.client.HTTPConnection:
        if self._connection is None:
            self._connection = self._route.connection(timeout_s)
        else:
            self._connection.timeout = timeout_s
            if self._connection.sock is not None:
                self._connection.sock.settimeout(timeout_s)
        return self._connection


# A kept-alive connection the collector closed while it idled: the request never reached it.
_PEER_CLOSED: Final = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
# Of a collector's answer, only the status and Retry-After are used.
MAX_ANSWER_BYTES: Final = 64 * 1024


def _interrupt(connection: http.client.HTTPConnection) -> None:
    sock = connection.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` as delay-seconds (an HTTP date is not followed: the backoff applies)."""
    if value is None:
        return None
    value = value.strip()
    return float(value) if value.isascii() and value.isdigit() else None
