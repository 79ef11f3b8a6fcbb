"""The three limit algorithms as pure functions over a counter's state and the time.

Each ``decide_*`` function says whether one more request fits, what the counter would become if
it is admitted, and what the client is told (remaining, reset, retry after). Nothing is written:
the caller commits the new states only when every limit of the request admits it
(all-or-nothing), so the memory store and the Redis script (``redis_store.LUA_DECIDE``, which
follows the same arithmetic) agree on every number. Times are seconds as floats from whatever
clock the caller injects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .spec import Concurrency, FixedWindow, LimitSpec, TokenBucket

# Refill is ``elapsed * rate``; rates such as 10/min are not exact in binary floating point, so a
# token due "now" can come out as 0.9999999999. The slack admits it; it is far below one request.
TOKEN_EPSILON = 1e-9
# A concurrency slot frees when a request ends, which no clock predicts: clients are told to come
# back after this long.
CONCURRENCY_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class BucketState:
    """A token bucket: ``tokens`` left at time ``updated``. No state means a full bucket."""

    tokens: float
    updated: float


@dataclass(frozen=True, slots=True)
class WindowState:
    """A fixed window: ``used`` requests in the window that starts at ``index * window_s``."""

    index: int
    used: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """One limit's answer for one request.

    ``remaining`` and ``reset_s`` describe the counter after the request if it is admitted, and as
    it stands if not (a refused request takes nothing). ``reset_s`` is when the full quota is back
    (``None`` for concurrency, which has no clock). ``retry_after_s`` is 0 when ``allowed``.
    """

    allowed: bool
    remaining: int
    reset_s: float | None
    retry_after_s: float


def bucket_tokens(algorithm: TokenBucket, state: BucketState | None, now: float) -> float:
    """Tokens in the bucket at ``now``: continuous refill since the last update, capped at burst.

    A clock that went backwards refills nothing (it never takes tokens away either).
    """
    if state is None:
        return float(algorithm.burst)
    elapsed = max(0.0, now - state.updated)
    return min(float(algorithm.burst), state.tokens + elapsed * algorithm.rate_per_s)


def decide_bucket(
    algorithm: TokenBucket, state: BucketState | None, now: float
) -> tuple[Verdict, BucketState]:
    """A request takes one token; refused, it is told when the next token is due."""
    tokens = bucket_tokens(algorithm, state, now)
    if tokens + TOKEN_EPSILON >= 1.0:
        left = max(0.0, tokens - 1.0)
        full_in = (algorithm.burst - left) / algorithm.rate_per_s
        return Verdict(True, math.floor(left + TOKEN_EPSILON), full_in, 0.0), BucketState(left, now)
    next_token_in = (1.0 - tokens) / algorithm.rate_per_s
    full_in = (algorithm.burst - tokens) / algorithm.rate_per_s
    return Verdict(False, 0, full_in, next_token_in), BucketState(tokens, now)


def bucket_idle_after(algorithm: TokenBucket) -> float:
    """Seconds after which an untouched bucket is full again, so forgetting it loses nothing."""
    return algorithm.burst / algorithm.rate_per_s


def window_index(algorithm: FixedWindow, now: float) -> int:
    """The epoch-aligned window ``now`` falls in: window ``i`` is ``[i * w, (i + 1) * w)``."""
    return math.floor(now / algorithm.window_s)


def decide_window(
    algorithm: FixedWindow, state: WindowState | None, now: float
) -> tuple[Verdict, WindowState]:
    """A request counts one against the current window; refused, it waits for the next one."""
    index = window_index(algorithm, now)
    used = state.used if state is not None and state.index == index else 0
    ends_in = (index + 1) * algorithm.window_s - now
    if used < algorithm.count:
        return Verdict(True, algorithm.count - used - 1, ends_in, 0.0), WindowState(index, used + 1)
    return Verdict(False, 0, ends_in, ends_in), WindowState(index, used)


def decide_concurrency(algorithm: Concurrency, in_flight: int) -> Verdict:
    """A request takes a slot while it runs; refused, it is told to try again shortly."""
    if in_flight < algorithm.max_in_flight:
        return Verdict(True, algorithm.max_in_flight - in_flight - 1, None, 0.0)
    return Verdict(False, 0, None, CONCURRENCY_RETRY_S)


def whole_seconds(seconds: float) -> int:
    """``Retry-After`` and the ``t`` parameter are integers: round up, and never say 0 to a
    client that was refused (it would retry at once)."""
    return max(1, math.ceil(seconds - TOKEN_EPSILON))


@dataclass(frozen=True, slots=True)
class Counter:
    """One limit as it applies to one request: the limit and the key of the counter it uses."""

    limit: LimitSpec
    key: str
