"""Counters in the gateway process: exact for one process, never "down".

Every decision runs to the end without awaiting, so on one event loop a request's limits are
decided and committed atomically (all-or-nothing) with no lock. With ``--workers N`` each worker
keeps its own counters: a limit then admits up to N times its budget in total.

Memory is bounded. Token-bucket and fixed-window states live in one LRU table of at most
``max_keys`` counters (``DEFAULT_MAX_KEYS``, some tens of MB at most); the least recently used
is dropped first. A state that has been idle long enough (a bucket refilled, a window ended) is
the same as no state, so dropping it loses nothing; only under a flood of more than ``max_keys``
distinct active keys does an evicted client get a fresh budget early. Concurrency counts are kept
only while requests are in flight (a key leaves the table when its count drops to 0), so they are
bounded by the requests the gateway holds at once, and are never evicted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Final

from .buckets import (
    BucketState,
    Counter,
    Verdict,
    WindowState,
    decide_bucket,
    decide_concurrency,
    decide_window,
)
from .spec import Concurrency, FixedWindow, TokenBucket

DEFAULT_MAX_KEYS: Final = 100_000

_State = BucketState | WindowState


class MemoryStore:
    """Token buckets, fixed windows and concurrency counts for one process, on an injected clock."""

    def __init__(self, *, clock: Callable[[], float], max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._states: OrderedDict[str, _State] = OrderedDict()
        self._in_flight: dict[str, int] = {}

    @property
    def up(self) -> bool:
        return True

    def __len__(self) -> int:
        """Counters held (both tables): what the memory bound applies to."""
        return len(self._states) + len(self._in_flight)

    async def decide(self, counters: Sequence[Counter], lease_id: str, *, commit: bool) -> list[Verdict]:
        """Each counter's verdict; with ``commit``, and only if all of them admit, take from all."""
        return self.decide_now(counters, commit=commit)

    def decide_now(self, counters: Sequence[Counter], *, commit: bool) -> list[Verdict]:
        """``decide`` without the coroutine: the whole decision happens in this call."""
        now = self._clock()
        verdicts: list[Verdict] = []
        updates: list[tuple[str, _State]] = []
        for counter in counters:
            verdict, update = self._decide_one(counter, now)
            verdicts.append(verdict)
            if update is not None:
                updates.append((counter.key, update))
        if commit and all(verdict.allowed for verdict in verdicts):
            for key, state in updates:
                self._store(key, state)
            for counter in counters:
                if isinstance(counter.limit.algorithm, Concurrency):
                    self._in_flight[counter.key] = self._in_flight.get(counter.key, 0) + 1
        return verdicts

    async def release(self, counters: Sequence[Counter], lease_id: str) -> None:
        """Give back the concurrency slots one admitted request took (the caller calls it once)."""
        for counter in counters:
            if not isinstance(counter.limit.algorithm, Concurrency):
                continue
            left = self._in_flight.get(counter.key, 0) - 1
            if left > 0:
                self._in_flight[counter.key] = left
            else:
                self._in_flight.pop(counter.key, None)

    async def aclose(self) -> None:
        """Nothing to close; here so the limiter treats both stores alike."""

    def _decide_one(self, counter: Counter, now: float) -> tuple[Verdict, _State | None]:
        algorithm = counter.limit.algorithm
        state = self._states.get(counter.key)
        if isinstance(algorithm, TokenBucket):
            return decide_bucket(algorithm, state if isinstance(state, BucketState) else None, now)
        if isinstance(algorithm, FixedWindow):
            return decide_window(algorithm, state if isinstance(state, WindowState) else None, now)
        return decide_concurrency(algorithm, self._in_flight.get(counter.key, 0)), None

    def _store(self, key: str, state: _State) -> None:
        self._states[key] = state
        self._states.move_to_end(key)
        while len(self._states) > self._max_keys:
            self._states.popitem(last=False)
