"""At most one running call per key, shared by every caller that arrives while it runs.

Used for each slow answer that many requests may want at once: an issuer's signing keys
(``gateway.auth.jwks``), an introspection answer (``gateway.auth.introspection``) and an exchanged
token (``gateway.upstream.exchange``). Refreshes are single-flight (house rule 8), so a burst of
requests costs the remote end one call, not one per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

__all__ = ["SingleFlight"]

K = TypeVar("K")
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """At most one running call per key; every caller that arrives meanwhile awaits that call.

    The call runs in its own task and each caller awaits it through ``asyncio.shield``: one
    caller going away (client disconnected, request cancelled) never cancels the shared call.
    Its outcome, result or exception, goes to every waiter; nothing is remembered afterwards.
    """

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        return len(self._running)

    def start(self, key: K, call: Callable[[], Coroutine[Any, Any, V]]) -> asyncio.Task[V]:
        """The running call for ``key``, started now if there is none; the caller need not await it."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.create_task(call())
            self._running[key] = task
            task.add_done_callback(functools.partial(self._finished, key))
        return task

    async def run(self, key: K, call: Callable[[], Coroutine[Any, Any, V]]) -> V:
        """The outcome of the running call for ``key``, starting it if there is none."""
        return await asyncio.shield(self.start(key, call))

    def _finished(self, key: K, task: asyncio.Task[V]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved: a call whose waiters all left must not warn

    async def aclose(self) -> None:
        """Cancel every running call and wait until each has ended."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
