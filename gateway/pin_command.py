"""``mcp-auth-gateway pin --config FILE --route /x``: ask a route's upstream for its tools and write
the route's lock file, saying what changed since the lock it replaces.

The upstream is asked the way ``check-config --upstream`` asks it (``gateway.upstream.tools_probe``:
one short session, every page of ``tools/list``, the route's own credential when it needs no
caller). The lock goes to the route's ``pinning.lock`` (or ``--output``), replaced atomically,
so it can be reviewed as a diff and committed; a running gateway takes it on its next reload.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import GatewayConfig
from .pinning import DriftKind, LockUnusable, ToolLock, Unpinnable, classify, lock_of, read_lock, write_lock
from .upstream.tools_probe import NeedsCaller, ProbeError, list_tools

__all__ = ["PinFailed", "PinOutcome", "changes", "pin_route", "run"]


class PinFailed(Exception):
    """The lock could not be made; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class PinOutcome:
    path: Path
    lock: ToolLock
    changes: tuple[str, ...]  # one line per tool that is new, changed or gone, vs the old lock


async def pin_route(
    config: GatewayConfig,
    route_path: str,
    output: Path | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> PinOutcome:
    route = config.route_for_path(route_path)
    if route is None:
        known = ", ".join(r.path for r in config.routes)
        raise PinFailed(f"no route {route_path!r} in {config.source} (routes: {known})")
    path = output or (route.pinning.lock if route.pinning is not None else None)
    if path is None:
        raise PinFailed(
            f"route {route.path} has no pinning section: add `pinning: {{lock: FILE}}` or pass --output"
        )
    try:
        tools = await list_tools(route)
    except ProbeError as exc:
        raise PinFailed(f"cannot ask {route.upstream} for its tools: {exc}") from None
    if isinstance(tools, NeedsCaller):
        raise PinFailed(
            f"route {route.path}'s credential is made per caller (minted or exchanged), so the gateway "
            "cannot ask the upstream on its own; pin on first use instead (no lock file), or pin through "
            "a route with a static credential to the same upstream"
        )
    try:
        lock = lock_of(tools, route=route.path, upstream=route.upstream, now=clock())
    except (Unpinnable, ValueError) as exc:
        raise PinFailed(f"{route.upstream} lists a tool that cannot be pinned: {exc}") from None
    previous = await asyncio.to_thread(_previous_lock, path)
    await asyncio.to_thread(write_lock, path, lock)
    return PinOutcome(path, lock, changes(previous, lock))


def _previous_lock(path: Path) -> ToolLock | None:
    """The lock being replaced, to tell what changed; none (or an unusable one) is a first pin."""
    try:
        return read_lock(path) if path.exists() else None
    except LockUnusable:
        return None


def changes(previous: ToolLock | None, lock: ToolLock) -> tuple[str, ...]:
    """What the new lock approves that the old one did not, and what it drops."""
    if previous is None:
        return tuple(f"+ {name}" for name in sorted(lock.tools))
    lines: list[str] = []
    for name in sorted(lock.tools.keys() | previous.tools.keys()):
        old, new = previous.tools.get(name), lock.tools.get(name)
        if new is None:
            lines.append(f"- {name} (no longer listed)")
        elif old is None:
            lines.append(f"+ {name}")
        elif old.fingerprint != new.fingerprint:
            kinds: tuple[DriftKind, ...] = classify(old.definition, new.definition)
            lines.append(f"~ {name}: {', '.join(kinds)}")
    return tuple(lines)


def run(config: GatewayConfig, route_path: str, output: str | None) -> int:
    """The command: 0 with the lock written and its changes listed, 1 with the reason."""
    try:
        outcome = asyncio.run(pin_route(config, route_path, Path(output).resolve() if output else None))
    except (PinFailed, OSError) as exc:
        print(f"pin: {exc}", file=sys.stderr)
        return 1
    print(f"{outcome.path}: {len(outcome.lock.tools)} tools pinned for route {route_path}")
    for line in outcome.changes or ("(no change)",):
        print(f"  {line}")
    print("Review the diff, commit it, and reload the gateway (SIGHUP) to enforce the new lock.")
    return 0
