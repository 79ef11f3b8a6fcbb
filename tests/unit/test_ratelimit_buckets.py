"""The limit algorithms (gateway/ratelimit/buckets.py) and the response fields (headers.py)."""

from __future__ import annotations

import pytest

from gateway.ratelimit.buckets import (
    BucketState,
    Verdict,
    WindowState,
    decide_bucket,
    decide_concurrency,
    decide_window,
    whole_seconds,
)
from gateway.ratelimit.headers import LimitReport, rate_limit_headers, sf_string
from gateway.ratelimit.spec import Concurrency, FixedWindow, LimitSpec, TokenBucket


def run_bucket(algorithm: TokenBucket, times: list[float]) -> list[Verdict]:
    """Requests at ``times`` against one bucket, committing each admitted one."""
    state: BucketState | None = None
    verdicts = []
    for now in times:
        verdict, new_state = decide_bucket(algorithm, state, now)
        if verdict.allowed:
            state = new_state
        verdicts.append(verdict)
    return verdicts


def test_bucket_admits_the_burst_then_refuses() -> None:
    """A full bucket of burst 3 admits exactly 3 requests at once, and the 4th waits 1 s at 1/s."""
    verdicts = run_bucket(TokenBucket(rate_per_s=1.0, burst=3), [0.0, 0.0, 0.0, 0.0])
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert [v.remaining for v in verdicts] == [2, 1, 0, 0]
    assert verdicts[3].retry_after_s == pytest.approx(1.0)
    assert verdicts[3].reset_s == pytest.approx(3.0)


def test_bucket_refills_at_its_rate() -> None:
    """After the burst, one request per 1/rate seconds passes, and no more."""
    bucket = TokenBucket(rate_per_s=2.0, burst=2)
    times = [0.0, 0.0, 0.25, 0.5, 0.5, 1.0, 1.49, 1.5]
    verdicts = run_bucket(bucket, times)
    assert [v.allowed for v in verdicts] == [True, True, False, True, False, True, False, True]
    assert verdicts[2].retry_after_s == pytest.approx(0.25)
    assert verdicts[6].retry_after_s == pytest.approx(0.01)


def test_bucket_fractional_refill_accumulates() -> None:
    """At 10/min a token takes 6 s: half-way there is no token, and the partial refill is kept."""
    bucket = TokenBucket(rate_per_s=10 / 60, burst=1)
    verdicts = run_bucket(bucket, [0.0, 3.0, 6.0, 9.0, 12.0])
    assert [v.allowed for v in verdicts] == [True, False, True, False, True]
    assert verdicts[1].retry_after_s == pytest.approx(3.0)
    assert verdicts[3].retry_after_s == pytest.approx(3.0)


def test_bucket_never_exceeds_its_burst() -> None:
    """An hour idle still leaves only `burst` tokens."""
    verdicts = run_bucket(TokenBucket(rate_per_s=1.0, burst=2), [0.0, 3600.0, 3600.0, 3600.0])
    assert [v.allowed for v in verdicts] == [True, True, True, False]


def test_bucket_ignores_a_clock_going_backwards() -> None:
    """A clock step back neither refills nor drains the bucket."""
    bucket = TokenBucket(rate_per_s=1.0, burst=1)
    assert [v.allowed for v in run_bucket(bucket, [100.0, 50.0, 100.5, 101.0])] == [True, False, False, True]


def test_window_boundaries_are_epoch_aligned() -> None:
    """2 per 60 s: the count restarts exactly at multiples of 60, whenever the first request came."""
    window = FixedWindow(count=2, window_s=60.0)
    state: WindowState | None = None
    results = []
    for now in [59.0, 59.5, 59.9, 60.0, 60.0, 119.999, 120.0]:
        verdict, new_state = decide_window(window, state, now)
        if verdict.allowed:
            state = new_state
        results.append((verdict.allowed, verdict.remaining))
    assert results == [(True, 1), (True, 0), (False, 0), (True, 1), (True, 0), (False, 0), (True, 1)]


def test_window_retry_after_is_the_window_end() -> None:
    """A refusal at 59.9 s in a 60 s window waits until 60 s (Retry-After rounds up to 1)."""
    window = FixedWindow(count=1, window_s=60.0)
    _, state = decide_window(window, None, 10.0)
    verdict, _ = decide_window(window, state, 59.9)
    assert not verdict.allowed
    assert verdict.retry_after_s == pytest.approx(0.1)
    assert whole_seconds(verdict.retry_after_s) == 1
    verdict, _ = decide_window(window, state, 10.0)
    assert whole_seconds(verdict.retry_after_s) == 50


def test_concurrency_admits_up_to_its_maximum() -> None:
    """With 2 slots, 0 and 1 in flight pass and 2 in flight refuses."""
    limit = Concurrency(max_in_flight=2)
    assert [decide_concurrency(limit, n).allowed for n in (0, 1, 2, 3)] == [True, True, False, False]
    assert decide_concurrency(limit, 0).remaining == 1


def test_whole_seconds_rounds_up_and_never_says_zero() -> None:
    """Retry-After is a whole number of seconds, at least 1."""
    assert [whole_seconds(s) for s in (0.0, 0.001, 1.0, 1.0000000001, 5.2)] == [1, 1, 1, 1, 6]


SENDS = LimitSpec("sends", FixedWindow(count=10, window_s=60.0), key=("subject",))
BURSTY = LimitSpec("bursty", TokenBucket(rate_per_s=0.5, burst=20), key=())
PARALLEL = LimitSpec("parallel", Concurrency(max_in_flight=4), key=())


def test_headers_exact_strings() -> None:
    """The fields a client reads, for each algorithm, in the draft's structured-field syntax."""
    headers = rate_limit_headers(
        [
            LimitReport(SENDS, Verdict(False, 0, 5.2, 5.2)),
            LimitReport(BURSTY, Verdict(True, 19, 2.0, 0.0)),
            LimitReport(PARALLEL, Verdict(True, 3, None, 0.0)),
        ]
    )
    assert headers == {
        "RateLimit-Policy": '"sends";q=10;w=60, "bursty";q=20;w=40, "parallel";q=4',
        "RateLimit": '"sends";r=0;t=6, "bursty";r=19;t=2, "parallel";r=3',
    }


def test_no_limits_no_headers() -> None:
    """A request no limit applies to gets neither field."""
    assert rate_limit_headers([]) == {}


def test_names_are_escaped_as_structured_strings() -> None:
    """A quote or backslash in a name is escaped; a non-ASCII character cannot break the field."""
    assert sf_string('a"b\\c') == '"a\\"b\\\\c"'
    assert sf_string("café") == '"caf?"'


def test_one_limit_gives_the_same_fields_as_in_a_list() -> None:
    """A request counted against one limit (written without joining) gets exactly the item it
    would have among others."""
    alone = rate_limit_headers([LimitReport(SENDS, Verdict(False, 0, 5.2, 5.2))])
    assert alone == {"RateLimit-Policy": '"sends";q=10;w=60', "RateLimit": '"sends";r=0;t=6'}
    assert rate_limit_headers([LimitReport(PARALLEL, Verdict(True, 3, None, 0.0))]) == {
        "RateLimit-Policy": '"parallel";q=4',
        "RateLimit": '"parallel";r=3',
    }
