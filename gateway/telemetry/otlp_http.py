"""What every OTLP/HTTP exporter of the gateway (traces, metrics, the audit trail's logs) shares
from its ``otlp:`` section. Imports OpenTelemetry: only for a config that exports."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.http import Compression

from ..config.model import OtlpConfig


def compression(otlp: OtlpConfig) -> Compression:
    """The exporter's body compression: gzip unless ``compression: none``."""
    return Compression.NoCompression if otlp.compression == "none" else Compression.Gzip
