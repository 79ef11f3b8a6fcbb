"""The route key ``pinning``: the lock file of the route's tool definitions, read and checked now.

A lock that exists is read entry by entry (``gateway.pinning.lock``): a problem is a config
problem at the ``lock`` line, so ``check-config`` is the lock's validator too. A lock that does
not exist yet is trust on first use: its folder must exist, for the gateway to write it there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from ..pinning.lock import LockUnusable, read_lock
from .model import PinningConfig
from .reader import (
    INVALID,
    Cursor,
    FieldSpec,
    Parsed,
    accepts,
    non_empty_text,
    one_of,
    read_section,
    section_schema,
)
from .yamlsource import YamlNode

__all__ = ["parse_pinning"]

_PINNING_FIELDS: Final = (
    FieldSpec("mode", one_of("off", "observe", "enforce")),
    FieldSpec("lock", non_empty_text, required=True),
)


@accepts(section_schema(_PINNING_FIELDS))
def parse_pinning(node: YamlNode, at: Cursor) -> Parsed[PinningConfig]:
    section = read_section(node, at, _PINNING_FIELDS)
    if section is INVALID or not section.complete:
        return INVALID
    mode = section.values.get("mode", "enforce")
    path = Path(os.path.abspath(at.base_dir / section.values["lock"]))
    lock_at, lock_line = at.key("lock"), section.nodes["lock"].line
    if mode == "off":
        return PinningConfig(lock=path, mode=mode)
    if path.is_dir():
        return lock_at.problem(lock_line, f"{str(path)!r} is a directory; the lock is a file")
    if not path.exists():
        if not path.parent.is_dir():
            return lock_at.problem(
                lock_line, f"no lock file, and its folder {str(path.parent)!r} does not exist to write one"
            )
        return PinningConfig(lock=path, mode=mode)  # trust on first use
    try:
        tools = read_lock(path)
    except LockUnusable as exc:
        return lock_at.problem(lock_line, str(exc))
    return PinningConfig(lock=path, mode=mode, tools=tools)
