"""The audit trail as the gateway runs it: opened at start-up, fed on the request path, sealed at
shutdown, and what a failure to record does (``audit.on_failure``).

``AuditTrail`` is the application's one trail (``gateway.web.app`` opens and closes it; every
gateway generation a reload makes shares it, since ``audit`` needs a restart to change). On the
request path ``record`` costs what building the record costs (a copy of the event, the log
pipeline's secret redaction, one RFC 8785 dump, one SHA-256): the line is written, or exported,
by the writer's worker thread (``gateway.audit_trail.writer``), never on the event loop.

What goes in: the events the gateway logs (``gateway.web.audit``), with the same redaction as
the log (``gateway.logs.redact_secrets``: nothing shaped like a token, no value of a key named
like a secret), without ``subject``, ``client_id`` and ``actor`` when ``logging.include_subject``
is false (as in the log), in a JSON shape RFC 8785 can write (``canonical.json_safe``).

Failure. The first write (or export) that fails stops the trail until a restart: later records
would chain over the lost ones (``gateway.audit_trail.writer``). It is logged once
(``audit_write_failed``, an error) and counted (``mcp_gateway_audit_write_failures_total``);
the admin ``/readyz`` shows ``"audit": "failed"``. Then, by ``on_failure``:

- ``allow``: requests go on, unrecorded; ``/readyz`` stays 200 (the replica still serves);
- ``deny``: every MCP request is refused with 503 ``audit_unavailable`` before anything is sent
  upstream (``check_recording``, and ``record`` for one that got past it), and ``/readyz`` is 503,
  so a load balancer sends the traffic to a replica that can record it.

A write fails on the worker while the loop goes on, so the records queued just before the
failure was seen are lost with it, and their requests were served; ``audit verify`` shows where
the file stops. What is refused is everything after.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import structlog

from ..config import AuditConfig, OtlpConfig
from ..config.observability_fields import load_audit_key
from ..errors import AuditUnavailable
from ..logs import SUBJECT_FIELDS, redact_secrets
from ..metrics import GatewayMetrics
from .canonical import json_safe_object
from .chain import EventKind, SegmentSigner
from .writer import AuditWriteFailed, AuditWriter, FailureReport, FsyncPolicy, LineSink

__all__ = ["AuditStatus", "AuditTrail", "worker_audit_file"]

log = structlog.get_logger("gateway.audit_trail")

AuditStatus = Literal["ok", "failed"]


def worker_audit_file(path: Path, worker: int) -> Path:
    """Worker ``worker``'s own file: ``audit.jsonl`` → ``audit.worker-0.jsonl``.

    Processes must not interleave one chain, so each worker of ``serve --workers N`` writes its
    own; the name depends on the index only, so the replacement of a worker that died resumes
    its chain."""
    return path.with_name(f"{path.stem}.worker-{worker}{path.suffix}")


class AuditTrail:
    """The process's audit trail; without ``audit:`` configured it records nothing (``enabled``)."""

    def __init__(
        self,
        config: AuditConfig | None,
        metrics: GatewayMetrics,
        *,
        include_subject: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._metrics = metrics
        self._include_subject = include_subject
        self._clock = clock
        self._writer: AuditWriter | None = None
        self._failure: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def enabled(self) -> bool:
        """A trail is configured (and ``record`` is worth building an event for)."""
        return self.config is not None

    @property
    def destination(self) -> str:
        """Where the records go, for log lines: the file, or the collector's logs URL."""
        config = self.config
        if config is not None and config.file is not None:
            return str(config.file)
        if config is not None and config.otlp is not None:
            return config.otlp.endpoint + "/v1/logs"
        return "(none)"

    async def open(self) -> None:
        """Open the writer (the start-up; a trail that cannot open stops it: ``OSError``,
        ``AuditFileDamaged`` or ``ValueError`` for the key)."""
        config = self.config
        if config is None:
            return
        self._loop = asyncio.get_running_loop()
        key = await asyncio.to_thread(load_audit_key, config.signing_key)
        signer = SegmentSigner(config.key_id, key)
        options: dict[str, Any] = {
            "segment_size": config.segment_size,
            "fsync": FsyncPolicy(config.fsync),
            "clock": self._clock,
            "on_failure": self._failed_elsewhere,
        }
        if config.otlp is not None:  # the config has exactly one of file, otlp
            sink = functools.partial(_otlp_sink, config.otlp)
            self._writer = await AuditWriter.over(sink, signer, **options)
        elif config.file is not None:
            self._writer = await AuditWriter.open(config.file, signer, **options)
        else:
            raise ValueError("audit: neither file nor otlp")
        state = self._writer.state
        log.info(
            "audit_trail_opened",
            destination=self.destination,
            key_id=config.key_id,
            next_seq=state.next_seq,
            on_failure=config.on_failure,
        )

    async def aclose(self) -> None:
        """Seal the open segment and flush (the shutdown, after the last request)."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            await writer.aclose()
        except AuditWriteFailed as exc:
            self._write_failed(str(exc))
            return
        log.info("audit_trail_closed", destination=self.destination, next_seq=writer.state.next_seq)

    # --- state ----------------------------------------------------------------------------------

    @property
    def failed(self) -> bool:
        writer = self._writer
        if self._failure is None and writer is not None and writer.failure is not None:
            self._write_failed(str(writer.failure))  # seen here before the worker's report arrived
        return self._failure is not None

    @property
    def status(self) -> AuditStatus | None:
        """``ok`` or ``failed``; None without a trail."""
        if self.config is None:
            return None
        return "failed" if self.failed else "ok"

    @property
    def ready(self) -> bool:
        """False only when the trail failed and ``on_failure: deny`` refuses every request."""
        return not (self.config is not None and self.config.on_failure == "deny" and self.failed)

    def check_recording(self) -> None:
        """Refuse the request (503) if the trail cannot record and ``on_failure: deny``."""
        if not self.ready:
            raise AuditUnavailable(detail=f"audit trail failed: {self._failure}")

    # --- recording ------------------------------------------------------------------------------

    def record(self, kind: EventKind, event: Mapping[str, Any]) -> None:
        """Chain one event (the line is written off the loop). Raises ``AuditUnavailable`` when
        the trail cannot record it and ``on_failure: deny``; with ``allow`` it returns."""
        writer = self._writer
        if writer is None:
            return
        fields = dict(event)
        # The request's id, as its log lines carry it: a record leads to the request's log line.
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        if request_id is not None:
            fields.setdefault("request_id", request_id)
        if not self._include_subject:
            for name in SUBJECT_FIELDS:
                fields.pop(name, None)
        try:
            writer.record(kind, json_safe_object(redact_secrets(None, kind, fields)))
        except AuditWriteFailed as exc:
            self._write_failed(str(exc))
            self.check_recording()
            return
        self._metrics.audit_records.labels(kind).inc()

    def _failed_elsewhere(self, exc: OSError) -> None:
        """The writer's report, from its worker or an exporter's thread: handled on the loop."""
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the process is ending
            self._loop.call_soon_threadsafe(self._write_failed, str(exc))

    def _write_failed(self, problem: str) -> None:
        if self._failure is not None:
            return
        self._failure = problem
        self._metrics.audit_write_failures.inc()
        config = self.config
        log.error(
            "audit_write_failed",
            destination=self.destination,
            problem=problem,
            on_failure=None if config is None else config.on_failure,
            consequence="requests are refused (503)"
            if config is not None and config.on_failure == "deny"
            else "requests go on unrecorded",
        )


def _otlp_sink(config: OtlpConfig, fail: FailureReport) -> LineSink:
    """The OTLP sink, built on the writer's worker: importing the OpenTelemetry SDK reads files
    (only a trail that exports pays for it)."""
    from .otlp import OtlpSink

    return OtlpSink(config, fail)


def replace_audit_file(config: AuditConfig | None, worker: int) -> AuditConfig | None:
    """``config`` with worker ``worker``'s own file (``worker_audit_file``); OTLP is unchanged
    (each worker's chain has its own ``audit.chain`` id)."""
    if config is None or config.file is None:
        return config
    return dataclasses.replace(config, file=worker_audit_file(config.file, worker))
