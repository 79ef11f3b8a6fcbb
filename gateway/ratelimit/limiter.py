"""The rate limiter the request pipeline calls: one ``acquire`` per request, all limits at once.

``RateLimiter.acquire`` decides every limit that applies to a request together and
all-or-nothing: if any refuses, none is taken from (a refused request costs no token, no quota,
no slot). The answer, an ``Admission``, carries what a 429 needs: the first limit that refused,
``Retry-After`` in whole seconds, and the ``RateLimit-Policy`` / ``RateLimit`` fields.

A limit keeps one counter per combination of the values of its ``key`` fields. The counter key is
the limit's name followed by those values, in the order the limit lists its fields; a field the
request does not have (no ``tool`` on a ``tools/list``, no ``subject`` before authentication)
counts as the empty string, so all such requests share one counter. Each part is escaped
(``\\`` → ``\\\\``, ``:`` → ``\\:``) before the parts are joined with ``:``, so values that
contain the separator cannot collide (``a:b`` + ``c`` is ``a\\:b:c``, ``a`` + ``b:c`` is
``a:b\\:c``).

When the shared store (Redis) is unreachable, a limit with ``fail: open`` is skipped and one with
``fail: closed`` (the default) refuses the request with ``unavailable`` set, told to retry after
the store's ``retry_s``. The memory store is never unreachable.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .buckets import Counter, Verdict, whole_seconds
from .headers import limit_fields
from .memory import MemoryStore
from .redis_store import RedisStore, StoreUnavailable
from .spec import Concurrency, KeyField, LimitSpec, RateLimitsConfig, RedisBackend


class CounterStore(Protocol):
    """Where counters live: ``MemoryStore`` or ``RedisStore``."""

    @property
    def up(self) -> bool: ...

    async def decide(self, counters: Sequence[Counter], lease_id: str, *, commit: bool) -> list[Verdict]: ...

    async def release(self, counters: Sequence[Counter], lease_id: str) -> None: ...

    async def aclose(self) -> None: ...


def escape_key_part(value: str) -> str:
    """``value`` with the key separator escaped, so joined parts split back unambiguously."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


def counter_key(limit: LimitSpec, keys: Mapping[KeyField, str]) -> str:
    """The counter ``limit`` keeps for a request with these facts (a missing fact is ``""``)."""
    parts = [limit.name, *[keys.get(key_field, "") for key_field in limit.key]]
    joined = ":".join(parts)
    if "\\" not in joined and joined.count(":") == len(parts) - 1:
        return joined  # no part holds a separator or an escape: escaping would change nothing
    return ":".join(escape_key_part(part) for part in parts)


class _Slots:
    """The concurrency slots one admitted request holds, given back once."""

    __slots__ = ("_counters", "_lease_id", "_released", "_store")

    def __init__(self, store: CounterStore, counters: Sequence[Counter], lease_id: str) -> None:
        self._store = store
        self._counters = tuple(counters)
        self._lease_id = lease_id
        self._released = False

    async def release(self) -> None:
        if self._released:
            return
        # Set before awaiting: a second release racing the first must not free the slot twice.
        self._released = True
        await self._store.release(self._counters, self._lease_id)


@dataclass(frozen=True, slots=True)
class Admission:
    """The decision on one request (see the module docstring)."""

    allowed: bool
    refused_by: LimitSpec | None  # the first limit, in the order given, that refused
    retry_after_s: int  # whole seconds, >= 1 when refused, 0 when allowed
    unavailable: bool  # refused because the store failed and the limit fails closed
    headers: Mapping[str, str]  # RateLimit-Policy and RateLimit, empty if no limit was counted
    slots: _Slots | None = field(default=None, repr=False, compare=False)

    async def release(self) -> None:
        """Free the concurrency slots this request took; safe to call more than once."""
        if self.slots is not None:
            await self.slots.release()


ADMITTED = Admission(allowed=True, refused_by=None, retry_after_s=0, unavailable=False, headers={})


def distinct_limits(limits: Sequence[LimitSpec]) -> list[LimitSpec]:
    """``limits`` without repeats (a route and a rule may name the same limit): a limit named
    twice still counts a request once."""
    if len(limits) == 1:
        return list(limits)
    seen: set[str] = set()
    unique = []
    for limit in limits:
        if limit.name not in seen:
            seen.add(limit.name)
            unique.append(limit)
    return unique


def judge(counters: Sequence[Counter], verdicts: Sequence[Verdict]) -> Admission:
    """The admission the store's verdicts add up to (without the slots to release)."""
    checked = [(counter.limit, verdict) for counter, verdict in zip(counters, verdicts, strict=True)]
    headers = limit_fields(checked)
    refused = [(limit, verdict) for limit, verdict in checked if not verdict.allowed]
    if not refused:
        return Admission(True, None, 0, False, headers)
    # Every refusing limit must have room again before a retry can pass: wait for the latest.
    retry_after = max(verdict.retry_after_s for _, verdict in refused)
    return Admission(False, refused[0][0], whole_seconds(retry_after), False, headers)


def without_store(limits: Sequence[LimitSpec], retry_s: float) -> Admission:
    """The admission when the store cannot decide: fail-open limits are skipped, the first
    fail-closed one refuses."""
    closed = [limit for limit in limits if limit.fail == "closed"]
    if not closed:
        return ADMITTED
    return Admission(False, closed[0], whole_seconds(retry_s), True, {})


class RateLimiter:
    """The configured limits over the configured store (memory, or Redis shared by replicas)."""

    def __init__(
        self,
        config: RateLimitsConfig,
        *,
        clock: Callable[[], float] = time.time,
        on_store_error: Callable[[str], None] | None = None,
    ) -> None:
        self._config = config
        backend = config.backend
        self._store: CounterStore
        if isinstance(backend, RedisBackend):
            # The Redis script reads the server's clock, so ``clock`` applies to memory only.
            self._redis: RedisStore | None = RedisStore(backend, on_store_error=on_store_error)
            self._store = self._redis
            self._retry_s = backend.retry_s
        else:
            self._redis = None
            self._store = MemoryStore(clock=clock)
            self._retry_s = 1.0

    @property
    def store_up(self) -> bool:
        """Whether the store answered its last call (always true for memory)."""
        return self._store.up

    async def start(self) -> None:
        """Open the Redis pool (nothing for memory)."""
        if self._redis is not None:
            await self._redis.start()

    async def aclose(self) -> None:
        await self._store.aclose()

    async def acquire(self, limits: Sequence[LimitSpec], keys: Mapping[KeyField, str]) -> Admission:
        """Decide all of ``limits`` for one request with the facts ``keys``, all-or-nothing."""
        unique = distinct_limits(limits)
        if not unique:
            return ADMITTED
        counters = [Counter(limit, counter_key(limit, keys)) for limit in unique]
        held = [counter for counter in counters if isinstance(counter.limit.algorithm, Concurrency)]
        # Only a concurrency slot is held under the lease id (both stores ignore it otherwise).
        lease_id = uuid.uuid4().hex if held else ""
        try:
            verdicts = await self._store.decide(counters, lease_id, commit=True)
        except StoreUnavailable:
            return without_store(unique, self._retry_s)
        admission = judge(counters, verdicts)
        if not admission.allowed or not held:
            return admission
        return Admission(True, None, 0, False, admission.headers, _Slots(self._store, held, lease_id))

    async def exhausted(self, limit: LimitSpec, keys: Mapping[KeyField, str]) -> bool:
        """Whether ``acquire([limit], keys)`` would refuse now; takes nothing. With the store
        down, true exactly when the limit fails closed."""
        counter = Counter(limit, counter_key(limit, keys))
        try:
            [verdict] = await self._store.decide([counter], "", commit=False)
        except StoreUnavailable:
            return limit.fail == "closed"
        return not verdict.allowed
