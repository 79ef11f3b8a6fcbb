"""``audit: {otlp: …}``: the same chain, each record exported as an OTLP log record.

The records are chained and sealed exactly as for a file (``AuditWriter.over`` with this sink),
and each becomes one log record sent to ``{endpoint}/v1/logs`` (OTLP/HTTP, protobuf) through
the OpenTelemetry SDK: a ``LoggerProvider`` of the trail's own, never the global one, so nothing
else the process logs (or another library's provider) gets into the trail, and the trail never
goes where the process's other telemetry goes.

A record's log ``body`` is exactly its line in a file without the newline: its RFC 8785
canonical JSON. A collector's output can be checked with ``audit verify``: take the bodies of one
chain (attribute ``audit.chain``) in ``audit.seq`` order, one per line. Attributes: ``audit.seq``,
``audit.kind``, ``audit.hash`` (for queries), ``audit.chain`` (a random id per chain: each start
of the process, each worker, begins a new chain at ``seq`` 1 with ``prev`` 64 zeros; there is no
file to continue). The record's timestamp is its ``time``.

Failure. The SDK exports batches on a thread of its own and only logs a failed export; here a
failed export stops the writer (``fail``: those records are lost, and a chain continued past
them would only hide it), so the trail's failure policy applies. A batch processor whose queue is
full drops records silently, so the sink waits (on the writer's worker, never the event loop)
for exports to catch up before its queue can fill.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.resources import Resource

from ..config import OtlpConfig
from ..telemetry.otlp_http import compression
from .chain import Record
from .writer import FailureReport

LOGS_PATH: Final = "/v1/logs"
SCOPE_NAME: Final = "mcp-auth-gateway.audit"
_MAX_QUEUE: Final = 8192
_BATCH: Final = 512
# Past this many records emitted and not yet exported, the sink waits for the exports: the
# processor's queue never fills, so it never drops one.
_HIGH_WATER: Final = _MAX_QUEUE - 2 * _BATCH


class _Reporting(LogRecordExporter):
    """The OTLP exporter, telling the writer when a batch was not delivered."""

    def __init__(self, exporter: LogRecordExporter, endpoint: str, fail: FailureReport) -> None:
        self._exporter = exporter
        self._endpoint = endpoint
        self._fail = fail
        self._lock = threading.Lock()
        self.exported = 0  # records handed to export, delivered or not

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        try:
            result = self._exporter.export(batch)
        except Exception as exc:  # the SDK's contract allows an exporter to raise; it is a failure
            result = LogRecordExportResult.FAILURE
            problem = f"{type(exc).__name__}: {exc}"
        else:
            problem = "the collector did not accept the batch"
        with self._lock:
            self.exported += len(batch)
        if result is not LogRecordExportResult.SUCCESS:
            self._fail(OSError(f"OTLP export of {len(batch)} audit records to {self._endpoint}: {problem}"))
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()  # type: ignore[no-untyped-call]  # the SDK's base leaves it untyped

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._exporter.force_flush(timeout_millis)


class OtlpSink:
    """An ``AuditWriter`` line sink that exports each record as an OTLP log record."""

    def __init__(
        self,
        config: OtlpConfig,
        fail: FailureReport,
        *,
        service_name: str = "mcp-auth-gateway",
        chain_id: str | None = None,
    ) -> None:
        self.chain_id = chain_id or secrets.token_hex(16)
        self._timeout_ms = int(config.timeout_s * 1000)
        endpoint = config.endpoint + LOGS_PATH
        exporter = OTLPLogExporter(
            endpoint=endpoint,
            headers={name: value.reveal() for name, value in config.headers},
            timeout=config.timeout_s,
            compression=compression(config),
        )
        self._exporter = _Reporting(exporter, endpoint, fail)
        self._processor = BatchLogRecordProcessor(
            self._exporter, max_queue_size=_MAX_QUEUE, max_export_batch_size=_BATCH
        )
        # Its own provider (never the global one); no atexit hook: the writer closes it.
        self._provider = LoggerProvider(
            resource=Resource.create({"service.name": service_name}), shutdown_on_exit=False
        )
        self._provider.add_log_record_processor(self._processor)
        self._logger = self._provider.get_logger(SCOPE_NAME)
        self._emitted = 0

    def write(self, record: Record, line: bytes, sync: bool) -> None:
        if self._emitted - self._exporter.exported >= _HIGH_WATER:
            self._flush()
        self._logger.emit(
            timestamp=_unix_nanos(record.time),
            body=line[:-1].decode("utf-8"),  # the canonical JSON, without the file's newline
            attributes={
                "audit.seq": record.seq,
                "audit.kind": record.kind,
                "audit.hash": record.hash,
                "audit.chain": self.chain_id,
            },
        )
        self._emitted += 1
        if sync:
            self._flush()

    def close(self, sync: bool) -> None:
        try:
            if sync:
                self._flush()
        finally:
            self._provider.shutdown()

    def _flush(self) -> None:
        if not self._provider.force_flush(self._timeout_ms):
            raise OSError(f"OTLP export of audit records did not finish within {self._timeout_ms} ms")


def _unix_nanos(time: str) -> int:
    """A record's ``time`` (RFC 3339, UTC, milliseconds) as OTLP's Unix nanoseconds."""
    return round(datetime.fromisoformat(time.replace("Z", "+00:00")).timestamp() * 1000) * 1_000_000
