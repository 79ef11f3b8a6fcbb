"""The lock file: the tool definitions a route's upstream may list, reviewable and committable.

JSON, indented, keys sorted, one entry per tool, so a change of a definition is a readable diff::

    {
      "lock_version": 1,
      "pinned_at": "2026-12-02T10:00:00Z",
      "route": "/mcp",
      "tools": {
        "get_weather": {
          "definition": {"description": "...", "inputSchema": {...}, "name": "get_weather"},
          "fingerprint": "sha256:9f2c..."
        }
      },
      "upstream": "http://weather:8001/mcp"
    }

Each entry keeps the whole pinned definition (``fingerprint.pinned_definition``), not only its
fingerprint, so a drift can be classified (``drift.classify``) and a reviewer sees what was
approved. Reading checks everything: the version, each entry's shape, that its name is its key,
and that its fingerprint is the one its definition has (a hand-edited definition with an old
fingerprint is refused, not trusted). ``write_lock`` replaces the file atomically;
``create_lock`` (trust on first use) never replaces one, so the first of several processes wins.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from ..strictjson import StrictJSONError, loads_strict
from .fingerprint import Unpinnable, fingerprint, pinned_definition

__all__ = [
    "LOCK_VERSION",
    "LockUnusable",
    "PinnedTool",
    "ToolLock",
    "create_lock",
    "lock_of",
    "lock_summary",
    "read_lock",
    "tool_status",
    "write_lock",
]

LOCK_VERSION: Final = 1


def format_time(now: float) -> str:
    """``2026-12-02T10:00:00.000Z``: when a lock was made, RFC 3339 UTC."""
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LockUnusable(ValueError):
    """The lock file cannot be read or is not a lock; the message says where and why."""


@dataclass(frozen=True, slots=True)
class PinnedTool:
    definition: Mapping[str, Any]
    fingerprint: str


@dataclass(frozen=True, slots=True)
class ToolLock:
    """The approved definitions of one route's tools."""

    tools: Mapping[str, PinnedTool]
    route: str = ""
    upstream: str = ""
    pinned_at: str = ""

    def to_json(self) -> str:
        document = {
            "lock_version": LOCK_VERSION,
            "pinned_at": self.pinned_at,
            "route": self.route,
            "upstream": self.upstream,
            "tools": {
                name: {"definition": dict(tool.definition), "fingerprint": tool.fingerprint}
                for name, tool in self.tools.items()
            },
        }
        return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def lock_of(tools: Sequence[object], *, route: str, upstream: str, now: float) -> ToolLock:
    """A lock pinning ``tools`` as listed; ``Unpinnable`` names a tool that cannot be pinned,
    ``ValueError`` a name listed twice."""
    pinned: dict[str, PinnedTool] = {}
    for tool in tools:
        definition = pinned_definition(tool)
        name = definition["name"]
        if name in pinned:
            raise ValueError(f"the upstream lists the tool {name!r} twice")
        pinned[name] = PinnedTool(MappingProxyType(definition), fingerprint(definition))
    return ToolLock(MappingProxyType(pinned), route=route, upstream=upstream, pinned_at=format_time(now))


def read_lock(path: Path) -> ToolLock:
    """The lock at ``path``, checked entry by entry; ``LockUnusable`` says what is wrong."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LockUnusable(
            f"cannot read the lock file {str(path)!r}: {exc.strerror or type(exc).__name__}"
        ) from None
    try:
        document = loads_strict(data)
    except StrictJSONError as exc:
        raise LockUnusable(f"{str(path)!r} is not JSON: {exc}") from None
    return _parse(document, str(path))


def _parse(document: object, where: str) -> ToolLock:
    if not isinstance(document, dict):
        raise LockUnusable(f"{where}: a lock file is a JSON object")
    if document.get("lock_version") != LOCK_VERSION:
        raise LockUnusable(
            f"{where}: lock_version must be {LOCK_VERSION}, not {document.get('lock_version')!r}"
        )
    tools = document.get("tools")
    if not isinstance(tools, dict):
        raise LockUnusable(f'{where}: "tools" must be an object of tool name to entry')
    pinned: dict[str, PinnedTool] = {}
    for name, entry in tools.items():
        pinned[name] = _entry(name, entry, where)
    text = {key: document.get(key, "") for key in ("route", "upstream", "pinned_at")}
    if not all(isinstance(value, str) for value in text.values()):
        raise LockUnusable(f"{where}: route, upstream and pinned_at are strings")
    return ToolLock(MappingProxyType(pinned), **text)


def _entry(name: str, entry: object, where: str) -> PinnedTool:
    at = f"{where}: tools.{name}"
    if not isinstance(entry, dict) or set(entry) != {"definition", "fingerprint"}:
        raise LockUnusable(f'{at}: an entry is {{"definition": {{...}}, "fingerprint": "sha256:..."}}')
    try:
        definition = pinned_definition(entry["definition"])
        computed = fingerprint(definition)
    except Unpinnable as exc:
        raise LockUnusable(f"{at}.definition: {exc}") from None
    if definition != entry["definition"]:
        extra = sorted(set(entry["definition"]) - set(definition))
        raise LockUnusable(f"{at}.definition: keys that are not pinned: {', '.join(extra)}")
    if definition["name"] != name:
        raise LockUnusable(f"{at}: the definition's name is {definition['name']!r}")
    if entry["fingerprint"] != computed:
        raise LockUnusable(
            f"{at}: the fingerprint does not match the definition (edited? run `mcp-auth-gateway pin`)"
        )
    return PinnedTool(MappingProxyType(definition), computed)


def lock_summary(mode: str, path: Path, lock: ToolLock | None) -> str:
    """The route's pinning as ``check-config`` prints it."""
    if lock is None:
        return f"pinning: {mode}, no lock yet at {path} (trust on first use)"
    when = lock.pinned_at or "at an unknown time"
    return f"pinning: {mode}, {len(lock.tools)} tools locked in {path} (pinned {when})"


def tool_status(lock: ToolLock | None, tool: str) -> str:
    """A tool's pin as the lock file has it, for ``explain`` (a running gateway also refuses
    tools it saw drift, which only it knows)."""
    if lock is None:
        return "no lock yet: the first listing will be trusted"
    pinned = lock.tools.get(tool)
    if pinned is None:
        return "not in the lock: hidden and refused as new_tool (enforce)"
    return f"pinned {pinned.fingerprint}"


def write_lock(path: Path, lock: ToolLock) -> None:
    """Replace ``path`` with ``lock`` atomically (a reader sees the old file or the new one)."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(lock.to_json())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def create_lock(path: Path, lock: ToolLock) -> bool:
    """Write ``lock`` to ``path`` unless a file is there already; True if this call wrote it.

    Written whole under a temporary name and then linked into place, which fails if the name
    exists: concurrent first uses (workers, replicas on a shared volume) agree on one lock.
    """
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(lock.to_json())
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        Path(temporary).unlink(missing_ok=True)
