"""The rate limiter over the memory store (gateway/ratelimit/limiter.py, memory.py), on a fake clock."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ratelimit.buckets import Counter
from gateway.ratelimit.limiter import Admission, RateLimiter, counter_key
from gateway.ratelimit.memory import MemoryStore
from gateway.ratelimit.spec import (
    Concurrency,
    FixedWindow,
    KeyField,
    LimitSpec,
    RateLimitsConfig,
    TokenBucket,
)


class FakeClock:
    """Time that moves only when the test says so."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


PER_SUBJECT = LimitSpec("per_subject", TokenBucket(rate_per_s=1.0, burst=2), key=("issuer", "subject"))
GLOBAL = LimitSpec("global", TokenBucket(rate_per_s=1.0, burst=3), key=())
QUOTA = LimitSpec("quota", FixedWindow(count=2, window_s=60.0), key=("subject",))
PARALLEL = LimitSpec("parallel", Concurrency(max_in_flight=2), key=("subject",))

ALICE: Mapping[KeyField, str] = {"issuer": "https://as", "subject": "alice"}
BOB: Mapping[KeyField, str] = {"issuer": "https://as", "subject": "bob"}


def limiter_with(*limits: LimitSpec, clock: FakeClock | None = None) -> RateLimiter:
    """A memory-store limiter over ``limits`` on a fake clock."""
    return RateLimiter(RateLimitsConfig(limits=limits), clock=clock or FakeClock())


async def outcomes(
    limiter: RateLimiter, limits: Sequence[LimitSpec], keys: Mapping[KeyField, str], n: int
) -> list[bool]:
    """Whether each of ``n`` requests in a row was admitted."""
    return [(await limiter.acquire(limits, keys)).allowed for _ in range(n)]


async def test_burst_then_refusal_with_retry_after_and_headers() -> None:
    """Burst 2 at 1/s: two pass, the third is refused by that limit, told 1 s, with exact headers."""
    limiter = limiter_with(PER_SUBJECT)
    first = await limiter.acquire([PER_SUBJECT], ALICE)
    assert first.allowed and first.refused_by is None and first.retry_after_s == 0
    assert first.headers == {
        "RateLimit-Policy": '"per_subject";q=2;w=2',
        "RateLimit": '"per_subject";r=1;t=1',
    }
    await limiter.acquire([PER_SUBJECT], ALICE)
    refused = await limiter.acquire([PER_SUBJECT], ALICE)
    assert not refused.allowed and not refused.unavailable
    assert refused.refused_by == PER_SUBJECT
    assert refused.retry_after_s == 1
    assert refused.headers["RateLimit"] == '"per_subject";r=0;t=2'


async def test_tokens_come_back_with_the_clock() -> None:
    """A refused client passes again once a token has refilled, not before."""
    clock = FakeClock()
    limiter = limiter_with(PER_SUBJECT, clock=clock)
    assert await outcomes(limiter, [PER_SUBJECT], ALICE, 3) == [True, True, False]
    clock.now += 0.9
    assert await outcomes(limiter, [PER_SUBJECT], ALICE, 1) == [False]
    clock.now += 0.1
    assert await outcomes(limiter, [PER_SUBJECT], ALICE, 2) == [True, False]


async def test_subjects_have_separate_counters() -> None:
    """Alice exhausting her budget leaves Bob's untouched."""
    limiter = limiter_with(PER_SUBJECT)
    assert await outcomes(limiter, [PER_SUBJECT], ALICE, 3) == [True, True, False]
    assert await outcomes(limiter, [PER_SUBJECT], BOB, 3) == [True, True, False]


async def test_a_limit_without_key_fields_is_shared_by_everyone() -> None:
    """`key: ()` is one counter for all callers."""
    limiter = limiter_with(GLOBAL)
    assert await outcomes(limiter, [GLOBAL], ALICE, 2) == [True, True]
    assert await outcomes(limiter, [GLOBAL], BOB, 2) == [True, False]


async def test_separators_in_values_do_not_collide() -> None:
    """Issuer `a:b` with subject `c` and issuer `a` with subject `b:c` are different clients."""
    limiter = limiter_with(PER_SUBJECT)
    one: Mapping[KeyField, str] = {"issuer": "a:b", "subject": "c"}
    other: Mapping[KeyField, str] = {"issuer": "a", "subject": "b:c"}
    assert counter_key(PER_SUBJECT, one) != counter_key(PER_SUBJECT, other)
    assert await outcomes(limiter, [PER_SUBJECT], one, 3) == [True, True, False]
    assert await outcomes(limiter, [PER_SUBJECT], other, 2) == [True, True]
    escaped: Mapping[KeyField, str] = {"issuer": "a\\", "subject": ":c"}
    assert counter_key(PER_SUBJECT, escaped) != counter_key(PER_SUBJECT, {"issuer": "a\\:", "subject": "c"})


def test_counter_key_format() -> None:
    """The key is the name then the field values in the limit's order; a missing value is empty."""
    assert counter_key(PER_SUBJECT, {"subject": "s", "issuer": "i"}) == "per_subject:i:s"
    assert counter_key(PER_SUBJECT, {"subject": "s"}) == "per_subject::s"
    assert counter_key(GLOBAL, ALICE) == "global"


async def test_all_or_nothing_across_two_limits() -> None:
    """A request one limit refuses takes nothing from the other limit either."""
    limiter = limiter_with(PER_SUBJECT, GLOBAL)
    both = [PER_SUBJECT, GLOBAL]
    assert await outcomes(limiter, both, ALICE, 2) == [True, True]
    refused = await limiter.acquire(both, ALICE)
    assert refused.refused_by == PER_SUBJECT
    # The global bucket still has its third token: Alice's refused request did not spend it.
    assert await outcomes(limiter, [GLOBAL], BOB, 2) == [True, False]


async def test_refused_by_is_the_first_refusing_limit_and_retry_waits_for_all() -> None:
    """With two limits refusing, the first in order is named and Retry-After covers the longer wait."""
    clock = FakeClock(now=600.0)
    limiter = limiter_with(PER_SUBJECT, QUOTA, clock=clock)
    assert await outcomes(limiter, [PER_SUBJECT, QUOTA], ALICE, 2) == [True, True]
    refused = await limiter.acquire([PER_SUBJECT, QUOTA], ALICE)
    assert refused.refused_by == PER_SUBJECT
    assert refused.retry_after_s == 60
    assert refused.headers["RateLimit"] == '"per_subject";r=0;t=2, "quota";r=0;t=60'


async def test_a_limit_named_twice_counts_once() -> None:
    """A route and a rule naming the same limit take one token (or slot) per request, not two."""
    limiter = limiter_with(PER_SUBJECT, PARALLEL)
    assert await outcomes(limiter, [PER_SUBJECT, PER_SUBJECT], ALICE, 3) == [True, True, False]
    # Two slots: a request naming the limit twice still holds one of them.
    assert await outcomes(limiter, [PARALLEL, PARALLEL], BOB, 3) == [True, True, False]


async def test_fixed_window_quota_resets_at_the_boundary() -> None:
    """2 per minute: the third in a minute is refused until the epoch-aligned minute ends."""
    clock = FakeClock(now=6000.0 + 50.0)
    limiter = limiter_with(QUOTA, clock=clock)
    assert await outcomes(limiter, [QUOTA], ALICE, 3) == [True, True, False]
    refused = await limiter.acquire([QUOTA], ALICE)
    assert refused.retry_after_s == 10
    clock.now = 6060.0
    assert await outcomes(limiter, [QUOTA], ALICE, 3) == [True, True, False]


async def test_concurrency_slots_are_taken_and_released() -> None:
    """Two in flight at most; releasing one lets one more in; a double release frees one slot."""
    limiter = limiter_with(PARALLEL)
    first = await limiter.acquire([PARALLEL], ALICE)
    second = await limiter.acquire([PARALLEL], ALICE)
    third = await limiter.acquire([PARALLEL], ALICE)
    assert (first.allowed, second.allowed, third.allowed) == (True, True, False)
    assert third.retry_after_s == 1
    assert (await limiter.acquire([PARALLEL], BOB)).allowed
    await first.release()
    await first.release()
    await third.release()  # a refused admission holds nothing
    assert await outcomes(limiter, [PARALLEL], ALICE, 2) == [True, False]


async def test_a_refused_request_takes_no_concurrency_slot() -> None:
    """A request the token bucket refuses does not occupy a slot it was never given."""
    limiter = limiter_with(PER_SUBJECT, PARALLEL)
    both = [PARALLEL, PER_SUBJECT]
    admitted = [await limiter.acquire(both, ALICE) for _ in range(2)]
    await admitted[0].release()
    refused = await limiter.acquire(both, ALICE)
    assert refused.refused_by == PER_SUBJECT
    # One slot is in use (admitted[1]); the refused request left the other one free.
    assert (await limiter.acquire([PARALLEL], ALICE)).allowed


async def test_exhausted_peeks_without_taking() -> None:
    """`exhausted` says whether the next request would be refused, and spends nothing."""
    limiter = limiter_with(PER_SUBJECT)
    for _ in range(5):
        assert not await limiter.exhausted(PER_SUBJECT, ALICE)
    assert await outcomes(limiter, [PER_SUBJECT], ALICE, 2) == [True, True]
    assert await limiter.exhausted(PER_SUBJECT, ALICE)
    assert not await limiter.exhausted(PER_SUBJECT, BOB)


async def test_no_limits_admits_without_headers() -> None:
    """A request with no limits is admitted and gets no RateLimit fields."""
    admission = await limiter_with().acquire([], ALICE)
    assert admission == Admission(True, None, 0, False, {})


async def test_memory_store_is_always_up() -> None:
    """The memory store never reports an outage."""
    limiter = limiter_with(PER_SUBJECT)
    await limiter.start()
    assert limiter.store_up
    await limiter.aclose()


@pytest.mark.parametrize("max_keys", [1, 3])
def test_memory_store_is_bounded(max_keys: int) -> None:
    """The memory store holds at most `max_keys` bucket states, dropping the least recently used."""
    store = MemoryStore(clock=FakeClock(), max_keys=max_keys)
    for n in range(10):
        store.decide_now([Counter(PER_SUBJECT, f"per_subject:{n}")], commit=True)
    assert len(store) == max_keys
    # The most recent key is kept (its bucket is not full), the oldest was forgotten (full again).
    assert store.decide_now([Counter(PER_SUBJECT, "per_subject:9")], commit=False)[0].remaining == 0
    assert store.decide_now([Counter(PER_SUBJECT, "per_subject:0")], commit=False)[0].remaining == 1


async def test_concurrency_counts_leave_memory_when_released() -> None:
    """A key whose requests have all ended holds no memory."""
    store = MemoryStore(clock=FakeClock())
    counter = Counter(PARALLEL, "parallel:alice")
    store.decide_now([counter], commit=True)
    assert len(store) == 1
    await store.release([counter], "")
    assert len(store) == 0


_KEY_TEXT = st.text(alphabet=st.sampled_from("ab:\\\u00e9"), max_size=6)


@settings(max_examples=500, deadline=None)
@given(issuer=_KEY_TEXT, subject=_KEY_TEXT)
def test_counter_key_equals_every_part_escaped(issuer: str, subject: str) -> None:
    """The key skips escaping only when no part holds a separator or a backslash: it is always
    the name and every value escaped, then joined."""
    keys: Mapping[KeyField, str] = {"issuer": issuer, "subject": subject}
    parts = ["per_subject", issuer, subject]
    expected = ":".join(part.replace("\\", "\\\\").replace(":", "\\:") for part in parts)
    assert counter_key(PER_SUBJECT, keys) == expected


async def test_a_replaced_limit_of_the_same_name_reports_its_own_policy() -> None:
    """A reloaded config may keep a limit's name and change its quota: the RateLimit-Policy field
    follows the limit object the request counted against, not its name."""
    before = LimitSpec("calls", TokenBucket(rate_per_s=1.0, burst=5), key=())
    after = LimitSpec("calls", TokenBucket(rate_per_s=1.0, burst=9), key=())
    first = await limiter_with(before).acquire([before], ALICE)
    second = await limiter_with(after).acquire([after], ALICE)
    assert first.headers["RateLimit-Policy"] == '"calls";q=5;w=5'
    assert second.headers["RateLimit-Policy"] == '"calls";q=9;w=9'
    assert first.headers["RateLimit"] == '"calls";r=4;t=1'


async def test_only_a_concurrency_limit_holds_slots_under_a_lease() -> None:
    """A request counted against buckets and windows only holds nothing to give back; one with a
    concurrency limit holds its slot until released."""
    limiter = limiter_with(PER_SUBJECT, QUOTA, PARALLEL)
    plain = await limiter.acquire([PER_SUBJECT, QUOTA], ALICE)
    assert plain.allowed and plain.slots is None
    first = await limiter.acquire([PARALLEL], ALICE)
    second = await limiter.acquire([PARALLEL], ALICE)
    assert first.slots is not None and second.slots is not None
    assert not (await limiter.acquire([PARALLEL], ALICE)).allowed
    await first.release()
    assert (await limiter.acquire([PARALLEL], ALICE)).allowed
