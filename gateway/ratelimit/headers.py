"""``RateLimit-Policy`` and ``RateLimit`` response fields (IETF draft-ietf-httpapi-ratelimit-headers).

Both fields are Structured Field Lists (RFC 8941 §3.1): one Item per limit, the Item a String (the
limit's name) with integer parameters. ``RateLimit-Policy`` says what the limit is (``q`` the
quota, ``w`` the window in seconds); ``RateLimit`` says where this client stands (``r`` what is
left, ``t`` seconds until the full quota is back). For the three algorithms:

- token bucket ``rate, burst``: ``q`` = burst, ``w`` = seconds to refill an empty bucket;
  ``t`` = seconds until the bucket is full again (``Retry-After`` says when the next token is due);
- fixed window ``count / window``: ``q`` = count, ``w`` = window; ``t`` = until the window ends;
- concurrency ``max``: ``q`` = max in flight, no ``w`` and no ``t`` (a slot frees when a request
  ends, not at a time).

The values are built by a serializer, never by pasting a name into an f-string.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .buckets import Verdict, bucket_idle_after, whole_seconds
from .spec import FixedWindow, LimitSpec, TokenBucket

POLICY_HEADER = "RateLimit-Policy"
STATE_HEADER = "RateLimit"


@dataclass(frozen=True, slots=True)
class LimitReport:
    """One limit as the client is told about it, after this request."""

    limit: LimitSpec
    verdict: Verdict


def sf_string(value: str) -> str:
    """``value`` as an RFC 8941 §3.3.3 String: quoted, with ``\\`` and ``"`` escaped.

    An sf-string holds printable ASCII only; any other character (which a config-checked limit
    name does not contain) becomes ``?`` rather than making the whole field invalid.
    """
    printable = "".join(char if " " <= char <= "~" else "?" for char in value)
    return '"' + printable.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _item(name: str, parameters: Iterable[tuple[str, int]]) -> str:
    return _quoted(name) + "".join(f";{key}={value}" for key, value in parameters)


# A limit's name and policy are the config's: serialized once, not on every answer.
@functools.lru_cache(maxsize=1024)
def _quoted(name: str) -> str:
    return sf_string(name)


# By the limit's identity: hashing a LimitSpec hashes every field, on every answer. The entry
# keeps its limit, so an id is never reused while it is cached.
_POLICY_ITEMS: dict[int, tuple[LimitSpec, str]] = {}


def _policy_item(limit: LimitSpec) -> str:
    cached = _POLICY_ITEMS.get(id(limit))
    if cached is not None and cached[0] is limit:
        return cached[1]
    if len(_POLICY_ITEMS) >= 1024:  # limits of configs replaced long ago
        _POLICY_ITEMS.clear()
    item = _item(limit.name, policy_parameters(limit))
    _POLICY_ITEMS[id(limit)] = (limit, item)
    return item


def policy_parameters(limit: LimitSpec) -> list[tuple[str, int]]:
    """``q`` and, where the algorithm has one, ``w`` for ``limit``."""
    algorithm = limit.algorithm
    if isinstance(algorithm, TokenBucket):
        return [("q", algorithm.burst), ("w", math.ceil(bucket_idle_after(algorithm)))]
    if isinstance(algorithm, FixedWindow):
        return [("q", algorithm.count), ("w", math.ceil(algorithm.window_s))]
    return [("q", algorithm.max_in_flight)]


def _state_item(limit: LimitSpec, verdict: Verdict) -> str:
    """The limit's ``RateLimit`` item: ``r`` and, for the algorithms with a clock, ``t`` (whole
    seconds, rounded up); built on every answer, so written out rather than through ``_item``."""
    item = f"{_quoted(limit.name)};r={max(0, verdict.remaining)}"
    if verdict.reset_s is None:
        return item
    return f"{item};t={whole_seconds(verdict.reset_s)}"


def rate_limit_headers(reports: Iterable[LimitReport]) -> dict[str, str]:
    """Both fields for the limits a request was checked against; empty when there are none."""
    return limit_fields([(report.limit, report.verdict) for report in reports])


def limit_fields(checked: Sequence[tuple[LimitSpec, Verdict]]) -> dict[str, str]:
    """``rate_limit_headers`` for (limit, verdict) pairs."""
    if not checked:
        return {}
    if len(checked) == 1:  # the usual case: one limit, no joining
        [(limit, verdict)] = checked
        return {POLICY_HEADER: _policy_item(limit), STATE_HEADER: _state_item(limit, verdict)}
    return {
        POLICY_HEADER: ", ".join(_policy_item(limit) for limit, _ in checked),
        STATE_HEADER: ", ".join(_state_item(limit, verdict) for limit, verdict in checked),
    }
