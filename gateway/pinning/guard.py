"""A route's pinned tools at run time: every tools list checked, drifted tools hidden and refused.

``ToolPins`` belongs to one served route (built with it, so a reload, which re-reads the lock,
starts afresh). It sees every upstream answer that holds a tools list, by shape like the list
filter (``gateway.mcp.listing``): JSON or SSE, the answer to a POST or an event on a GET stream,
either protocol era. Each listed tool's fingerprint is compared with the lock:

- a match passes;
- a tool the lock does not hold, or whose definition changed, is a drift: logged
  (``tool_drift``, once per tool and fingerprint) with its kinds (``gateway.pinning.drift``) and
  counted (``on_drift(route, kind)``); with ``enforce`` it is removed from the list, and
  ``refusal`` refuses calls to it until the lock is updated (a reload with the new lock). A
  changed tool stays refused for the life of this route even if a later list shows the pinned
  definition again: an upstream that alternates is not trusted with either;
- with ``enforce``, a call to a tool the lock does not hold is refused even before any list shows
  it (a new tool is treated like a changed one);
- a tool of the lock missing from a complete list (the first page of a listing with no further
  page: ``view(first_page=True)``) is logged once, ``tool_removed``, and counted as ``removed``.

``notifications/tools/list_changed`` passes through untouched: the client lists again, and that
list is checked like any other.

Trust on first use: with no lock file, the first listing the gateway relays (every page, until
one without ``nextCursor``) becomes the lock, written to the lock path by a worker thread
(``lock.create_lock``: if another process wrote one first, that one is used). Until then nothing
is pinned and nothing is refused: whoever controls the upstream at that moment decides what is
approved, which is why ``mcp-auth-gateway pin`` (reviewed, committed) is the recommended way.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

import structlog

from .drift import DriftKind, classify
from .fingerprint import Unpinnable, fingerprint, pinned_definition
from .lock import PinnedTool, ToolLock, create_lock, format_time, read_lock

__all__ = ["PinMode", "PinView", "ToolPins"]

log = structlog.get_logger("gateway.pinning")

PinMode = Literal["off", "observe", "enforce"]
TOOLS_MARKER: Final = b'"tools"'
MAX_REPORTED: Final = 4096  # (tool, fingerprint) pairs logged; past it, drifts are still counted
REMOVED: Final = "removed"


class ToolPins:
    """The pin state of one served route; ``view()`` gives the rewriter for one answer."""

    def __init__(
        self,
        route: str,
        mode: PinMode,
        lock: ToolLock | None,
        lock_path: Path,
        *,
        upstream: str = "",
        on_drift: Callable[[str, str], None] = lambda route, kind: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.route = route
        self.mode = mode
        self._lock = lock
        self._lock_path = lock_path
        self._upstream = upstream
        self._on_drift = on_drift
        self._clock = clock
        # Names of the lock (or, before it stands, of the first listing) only: bounded.
        self._drifted: dict[str, tuple[DriftKind, ...]] = {}
        # What each listed definition was found to be, by (name, fingerprint): an upstream that
        # lists the same drifted tool again costs one fingerprint, not a classification.
        self._classified: dict[tuple[str, str], tuple[DriftKind, ...]] = {}
        self._fingerprints: dict[bytes, str] = {}  # by the SHA-256 of a definition's sorted dump
        self._reported: set[tuple[str, str]] = set()
        self._removed_reported: set[str] = set()
        self._first_use: dict[str, PinnedTool] | None = {} if lock is None else None
        self._writing: asyncio.Task[None] | None = None

    @property
    def lock(self) -> ToolLock | None:
        return self._lock

    @property
    def enforcing(self) -> bool:
        return self.mode == "enforce"

    def view(self, *, first_page: bool = False) -> PinView:
        """The rewriter for one answer; ``first_page``: it answers a tools/list without a cursor."""
        return PinView(self, first_page)

    def refusal(self, tool: str) -> tuple[DriftKind, ...] | None:
        """Why a call to ``tool`` must be refused (its drift kinds), or None if it may go.

        Observe mode asks too (the caller logs what enforcing would refuse). Before a first use
        has been trusted there is no lock, and only a name the first listing defined twice (or
        unreadably) is refused.
        """
        if self._lock is None:
            return self._drifted.get(tool)
        if tool not in self._lock.tools:
            return ("new_tool",)
        return self._drifted.get(tool)

    def status(self, tool: str) -> str:
        """The pin status of a tool, for ``explain``: pinned, drifted (kinds), not pinned."""
        if self._lock is None:
            return "no lock yet (trust on first use)"
        drift = self.refusal(tool)
        if drift is None:
            return f"pinned {self._lock.tools[tool].fingerprint}"
        return "drifted: " + ", ".join(drift)

    # --- the answers --------------------------------------------------------------------------

    def inspect(self, tools: list[Any], *, complete: bool) -> list[Any] | None:
        """Check one listed page; the tools to show instead when some must be hidden, else None."""
        if self._lock is None:
            return self._trust(tools, complete=complete)
        shown: list[Any] = []
        for tool in tools:
            kinds = self._check(tool, self._lock)
            if kinds and self.enforcing:
                continue
            shown.append(tool)
        if complete:
            self._report_removed(tools, self._lock)
        return shown if len(shown) != len(tools) else None

    def _check(self, tool: object, lock: ToolLock) -> tuple[DriftKind, ...]:
        try:
            definition = pinned_definition(tool)
            seen = self._fingerprint(definition)
        except (Unpinnable, RecursionError) as exc:  # nested past what the checks can walk
            return self._unpinnable(tool, exc)
        name = definition["name"]
        pinned = lock.tools.get(name)
        if pinned is not None and pinned.fingerprint == seen:
            return ()
        kinds = self._classified.get((name, seen))
        if kinds is None:
            kinds = _kinds(None if pinned is None else pinned.definition, definition)
            if len(self._classified) < MAX_REPORTED:
                self._classified[name, seen] = kinds
        if pinned is not None:
            self._refuse(name, kinds)
        self._report(name, seen, kinds, None, pinned)
        return kinds

    def _fingerprint(self, definition: Mapping[str, Any]) -> str:
        """``fingerprint``, remembered by the definition's sorted standard-library dump: every
        listing fingerprints every tool, and the RFC 8785 encoder is pure Python (a 16 MB answer
        took 3 s), where equal values always dump alike."""
        key = hashlib.sha256(json.dumps(definition, sort_keys=True).encode("ascii")).digest()
        known = self._fingerprints.get(key)
        if known is None:
            known = fingerprint(definition)
            if len(self._fingerprints) >= MAX_REPORTED:
                self._fingerprints.clear()
            self._fingerprints[key] = known
        return known

    def _unpinnable(self, tool: object, exc: Exception) -> tuple[DriftKind, ...]:
        """A listed tool with no canonical form (a number past 2**53, nesting too deep): hidden,
        and a pinned tool of that name refused, like any other drift."""
        name = tool.get("name") if isinstance(tool, dict) else None
        reason = str(exc) if isinstance(exc, Unpinnable) else "nested too deep to check"
        if isinstance(name, str):
            self._refuse(name, ("unpinnable",))
        self._report(name if isinstance(name, str) else "(no name)", f"({reason})", ("unpinnable",), reason)
        return ("unpinnable",)

    def _refuse(self, name: str, kinds: tuple[DriftKind, ...]) -> None:
        if self._lock is not None and name not in self._lock.tools:
            return  # refused as a new tool already; the lock's names bound the table
        known = self._drifted.get(name, ())
        self._drifted[name] = (*known, *(kind for kind in kinds if kind not in known))

    def _report(
        self,
        name: str,
        seen: str,
        kinds: tuple[DriftKind, ...],
        reason: str | None,
        pinned: PinnedTool | None = None,
    ) -> None:
        key = (name, seen)
        if key in self._reported:
            return
        if len(self._reported) < MAX_REPORTED:
            self._reported.add(key)
        for kind in kinds:
            self._on_drift(self.route, kind)
        log.warning(
            "tool_drift",
            route=self.route,
            tool=name,
            drift=list(kinds),
            mode=self.mode,
            action="hidden and refused" if self.enforcing else "reported only",
            pinned=None if pinned is None else pinned.fingerprint,
            listed=seen,
            **({"reason": reason} if reason else {}),
        )

    def _report_removed(self, tools: list[Any], lock: ToolLock) -> None:
        listed = {tool.get("name") for tool in tools if isinstance(tool, dict)}
        for name in lock.tools:
            if name not in listed and name not in self._removed_reported:
                self._removed_reported.add(name)
                self._on_drift(self.route, REMOVED)
                log.warning("tool_removed", route=self.route, tool=name, pinned=lock.tools[name].fingerprint)

    # --- trust on first use -------------------------------------------------------------------

    def _trust(self, tools: list[Any], *, complete: bool) -> list[Any] | None:
        """Take the first listing's tools as the pins; what is shown instead, if some are hidden.

        Only what becomes the lock is shown: a tool that cannot be pinned is hidden, and so is a
        second, different definition of a name (on this page or a later one), whose name is then
        refused: a client that keeps the last definition it read must not use one the lock does
        not hold.
        """
        pending = self._first_use
        if pending is None:
            return None
        shown: list[Any] = []
        for tool in tools:
            try:
                definition = pinned_definition(tool)
                pinned = PinnedTool(MappingProxyType(definition), fingerprint(definition))
            except (Unpinnable, RecursionError) as exc:
                self._unpinnable(tool, exc)  # never pinned; refused if its name is
                continue
            name = definition["name"]
            first = pending.setdefault(name, pinned)
            if first.fingerprint != pinned.fingerprint:
                self._refuse(name, _kinds(first.definition, definition))
                self._report(name, pinned.fingerprint, self._drifted[name], "defined twice", first)
                continue
            if name in self._drifted:
                continue  # defined twice already: no copy of it is shown
            shown.append(tool)
        if complete:
            self._pin_first_use(pending)
        return shown if len(shown) != len(tools) else None

    def _pin_first_use(self, pending: dict[str, PinnedTool]) -> None:
        self._first_use = None
        lock = ToolLock(
            MappingProxyType(dict(pending)),
            route=self.route,
            upstream=self._upstream,
            pinned_at=format_time(self._clock()),
        )
        self._lock = lock  # enforced from now on, in this process at once
        log.warning(
            "tools_pinned_on_first_use", route=self.route, tools=sorted(lock.tools), lock=str(self._lock_path)
        )
        self._writing = asyncio.get_running_loop().create_task(self._write_first_use(lock))

    async def _write_first_use(self, lock: ToolLock) -> None:
        path = self._lock_path
        try:
            wrote = await asyncio.to_thread(create_lock, path, lock)
            if not wrote:  # another process trusted its first use first: one lock for all
                self._lock = await asyncio.to_thread(read_lock, path)
                log.info("tool_lock_adopted", route=self.route, lock=str(path))
        except (OSError, ValueError) as exc:
            log.error("tool_lock_not_written", route=self.route, lock=str(path), error=str(exc))

    async def aclose(self) -> None:
        if self._writing is not None:
            await asyncio.shield(self._writing)


def _kinds(pinned: Mapping[str, Any] | None, listed: Mapping[str, Any]) -> tuple[DriftKind, ...]:
    """``classify``, never empty (a fingerprint changed: the text did at least), and a schema
    nested past what it can walk is one it cannot vouch for."""
    try:
        return classify(pinned, listed) or ("description",)
    except RecursionError:
        return ("unpinnable",)


class PinView:
    """A ``MessageRewriter`` over one answer, for the route's ``ToolPins``."""

    __slots__ = ("_first_page", "_pins", "markers")

    def __init__(self, pins: ToolPins, first_page: bool) -> None:
        self._pins = pins
        self._first_page = first_page
        self.markers: tuple[bytes, ...] = (TOOLS_MARKER,)

    def rewrite(self, message: dict[str, Any]) -> dict[str, Any] | None:
        result = message.get("result")
        if not isinstance(result, dict):
            return None
        tools = result.get("tools")
        if not isinstance(tools, list):
            return None  # the list filter turns a non-list into [] after this
        last_page = "nextCursor" not in result or result.get("nextCursor") in (None, "")
        complete = last_page and (self._first_page or self._pins.lock is None)
        shown = self._pins.inspect(tools, complete=complete)
        if shown is None:
            return None
        return {**message, "result": {**result, "tools": shown}}
