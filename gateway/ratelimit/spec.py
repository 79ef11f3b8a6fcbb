"""What a rate limit is, as the config declares it: frozen values, no I/O.

A limit has a name, an algorithm, the request facts its counter is keyed on, and what happens when
its shared store (Redis) cannot be reached. Routes and rules name the limits that apply to them
(``RouteConfig.limits``, ``RouteConfig.unauthenticated_limits``, ``Rule.limits``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from ..secret import Secret

# The request facts a counter can be keyed on. ``source_address`` is the TCP peer (the gateway
# reads no X-Forwarded-For); it is what an unauthenticated request has.
KeyField: TypeAlias = Literal["issuer", "subject", "client_id", "route", "tool", "method", "source_address"]
KEY_FIELDS: Final[tuple[KeyField, ...]] = (
    "issuer",
    "subject",
    "client_id",
    "route",
    "tool",
    "method",
    "source_address",
)
FailMode: TypeAlias = Literal["closed", "open"]


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """``rate: 10/min, burst: 20``: refills ``rate_per_s`` tokens a second up to ``burst``; a
    request takes one."""

    rate_per_s: float
    burst: int


@dataclass(frozen=True, slots=True)
class FixedWindow:
    """``quota: 10000/day``: ``count`` requests per window of ``window_s`` seconds, aligned to
    the epoch (every replica agrees where a window starts)."""

    count: int
    window_s: float


@dataclass(frozen=True, slots=True)
class Concurrency:
    """``concurrent: 4``: at most ``max_in_flight`` requests (POST answers, GET streams) at once."""

    max_in_flight: int


Algorithm: TypeAlias = TokenBucket | FixedWindow | Concurrency


@dataclass(frozen=True, slots=True)
class LimitSpec:
    name: str  # as the config names it: the metric label and the RateLimit-Policy name
    algorithm: Algorithm
    key: tuple[KeyField, ...]  # the facts one counter is kept per; () one counter for everyone
    fail: FailMode = "closed"  # store unreachable: refuse (closed) or let through (open)
    line: int = 0  # where the config declares it, for messages


@dataclass(frozen=True, slots=True)
class MemoryBackend:
    """Counters in the gateway process: exact for one process, per worker with ``--workers N``."""


@dataclass(frozen=True, slots=True)
class RedisBackend:
    """Counters in a Redis (or Valkey) server shared by every process and replica."""

    url: Secret  # redis://[user:password@]host:port/db or rediss://…
    timeout_s: float = 0.25  # one decision's round trip; past it the limit's ``fail`` mode applies
    # Decisions waiting for the server at once, per process (they share one pipelined connection,
    # gateway.ratelimit.resp); past it a decision waits for a place, within timeout_s.
    pool_size: int = 64
    key_prefix: str = "mcpgw:"
    retry_s: float = 1.0  # after a failure, how long decisions skip the server before trying again
    lease_s: float = 3600.0  # a concurrency slot of a process that died is freed after this


Backend: TypeAlias = MemoryBackend | RedisBackend


@dataclass(frozen=True, slots=True)
class RateLimitsConfig:
    """``rate_limits``: the store and every named limit."""

    backend: Backend = MemoryBackend()
    limits: tuple[LimitSpec, ...] = ()
    # The limits by name, looked up on every limited request (the config checked names are unique).
    _by_name: Mapping[str, LimitSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "limits", tuple(self.limits))
        by_name: dict[str, LimitSpec] = {}
        for limit in self.limits:
            by_name.setdefault(limit.name, limit)  # the first of a name, as a scan would find
        object.__setattr__(self, "_by_name", by_name)

    def get(self, name: str) -> LimitSpec | None:
        return self._by_name.get(name)
