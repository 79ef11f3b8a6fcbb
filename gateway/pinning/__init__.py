"""Tool-definition pinning (rug-pull protection): a route's approved tool definitions, and what
happens when its upstream lists others.

``fingerprint`` says what of a tool is pinned and hashes it (RFC 8785, SHA-256), ``drift`` names
what changed, ``lock`` reads and writes the reviewable lock file, and ``guard`` checks every
tools list at run time (hide and refuse, or only report).
"""

from __future__ import annotations

from .drift import DRIFT_KINDS, DriftKind, classify
from .fingerprint import Unpinnable, fingerprint, pinned_definition
from .guard import PinMode, PinView, ToolPins
from .lock import LockUnusable, PinnedTool, ToolLock, create_lock, lock_of, read_lock, write_lock

__all__ = [
    "DRIFT_KINDS",
    "DriftKind",
    "LockUnusable",
    "PinMode",
    "PinView",
    "PinnedTool",
    "ToolLock",
    "ToolPins",
    "Unpinnable",
    "classify",
    "create_lock",
    "fingerprint",
    "lock_of",
    "pinned_definition",
    "read_lock",
    "write_lock",
]
