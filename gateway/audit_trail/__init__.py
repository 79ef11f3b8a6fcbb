"""A tamper-evident audit trail (issue 19): policy decisions and credential issuance as a signed hash chain.

``chain`` builds the records (the record shape and its SEP-3004 mapping are in its docstring),
``canonical`` gives their RFC 8785 bytes, ``writer`` appends them to a JSON-lines file off the
event loop, and ``verify`` finds the first break (``mcp-auth-gateway audit verify``).
"""

from __future__ import annotations

from .chain import DEFAULT_SEGMENT_SIZE, EVENT_KINDS, ZERO_HASH, EventKind, Record, SegmentSigner
from .verify import ChainBreak, ChainIntact, verify_lines
from .writer import AuditFileDamaged, AuditKeyChanged, AuditWriteFailed, AuditWriter, FsyncPolicy

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "EVENT_KINDS",
    "ZERO_HASH",
    "AuditFileDamaged",
    "AuditKeyChanged",
    "AuditWriteFailed",
    "AuditWriter",
    "ChainBreak",
    "ChainIntact",
    "EventKind",
    "FsyncPolicy",
    "Record",
    "SegmentSigner",
    "verify_lines",
]
