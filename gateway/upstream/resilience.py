"""How the gateway treats an upstream that fails: the decisions, apart from the I/O.

``gateway.upstream.proxy`` asks these small, clock-injected state machines what to do; they never
touch the network, so every rule is unit-tested with a fake clock (tests/unit/test_resilience.py).

- ``retry_connect``: a request whose *connect* failed (refused, reset, DNS) is sent once more,
  after ``RETRY_DELAY_S``: nothing of it reached the upstream, so sending it again is safe. Never
  after a byte of the request went out, never on a timeout (a black-holed upstream would make
  every request wait twice), never on a TLS failure (it would fail the same way).
- ``CircuitBreaker``: ``failures`` requests in a row whose connect failed or timed out open the
  circuit for ``open_s``; meanwhile requests fail at once (503, ``upstream_circuit_open``) and
  the upstream gets nothing. Then one trial request goes through (half-open): an answer closes
  the circuit, a connect failure opens it again. Any answer (whatever its HTTP status) proves
  the upstream reachable and resets the count. A request whose retry succeeded counts as an
  answer; one that failed twice counts once. Other failures (a header timeout, a reset after
  sending) say nothing about connecting and count neither way.
- ``HealthTracker``: the active check's verdicts; ``failures`` in a row make the route
  unhealthy, which holds the circuit open (no trial requests) until a check succeeds.
- ``Bulkhead``: at most ``max_concurrent_requests`` requests relayed at once per upstream; the
  next one is refused at once (503, ``upstream_busy``). A GET (the long-lived SSE stream a
  client listens on) holds no slot: it costs the upstream a connection, not work, and
  ``limits.max_streams`` bounds those; a POST answered with a stream holds its slot until the
  stream ends, since that is the upstream working on it.

Readiness (``/readyz``) lists every route's ``RouteReadiness``; the gateway is not ready only
when *every* route's circuit is open (``routes_ready``). One failing upstream is, as a rule,
failing for every replica alike: pulling replicas out of rotation for it would also cut the
routes that work, on all of them at once. With every route down the gateway can answer nothing
but 503, so a load balancer does better sending clients to a replica that can.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from ..config.model import CircuitBreakerConfig
from .http_client import ConnectFailed, ConnectTimedOut, TlsFailed

__all__ = [
    "CIRCUIT_STATE_VALUES",
    "RETRY_DELAY_S",
    "Bulkhead",
    "CircuitBreaker",
    "CircuitState",
    "ConnectVerdict",
    "HealthTracker",
    "Pass",
    "Refused",
    "RouteReadiness",
    "connect_verdict",
    "retry_after_header_s",
    "retry_connect",
    "routes_ready",
]

# Long enough for a restarting upstream or a full accept queue to catch up, short enough that a
# client does not notice.
RETRY_DELAY_S: Final = 0.05

CircuitState: TypeAlias = Literal["closed", "half_open", "open"]
# The state gauge's value: 0 is healthy, anything above 0 alerts.
CIRCUIT_STATE_VALUES: Final[dict[CircuitState, int]] = {"closed": 0, "half_open": 1, "open": 2}

ConnectVerdict: TypeAlias = Literal["answered", "connect_failed", "neutral"]
"""What one request says about reaching the upstream (for the circuit breaker)."""

Clock = Callable[[], float]


def retry_connect(exc: BaseException, attempt: int) -> bool:
    """Whether a request whose first ``attempt`` (1-based) failed with ``exc`` is sent again.

    Only once, and only when the connection itself was not made (``ConnectFailed``: refused,
    reset during the handshake, name not resolved), so nothing was sent.
    """
    if attempt >= 2:
        return False
    # A TLS failure would fail the same way again.
    return isinstance(exc, ConnectFailed) and not isinstance(exc, TlsFailed)


def connect_verdict(exc: BaseException | None) -> ConnectVerdict:
    """What a request's outcome says about the upstream: ``exc`` is None when headers came."""
    if exc is None:
        return "answered"
    # An asyncio timeout around the whole wait (response_timeout_s) is no connect timeout and
    # stays neutral.
    if isinstance(exc, (ConnectFailed, ConnectTimedOut)):
        return "connect_failed"
    return "neutral"


@dataclass(frozen=True, slots=True)
class Pass:
    """The request may go; ``trial``: it is the half-open circuit's one trial."""

    trial: bool = False


@dataclass(frozen=True, slots=True)
class Refused:
    """The request must not go; it may be worth trying again in ``retry_after_s``."""

    retry_after_s: float


class CircuitBreaker:
    """One upstream's circuit: closed (requests go), open (they fail at once), half-open (one trial).

    ``clock`` is monotonic seconds; ``on_change(state)`` is told every transition and
    ``on_open()`` every time the circuit opens (metrics).
    """

    def __init__(
        self,
        config: CircuitBreakerConfig,
        *,
        clock: Clock = time.monotonic,
        on_change: Callable[[CircuitState], None] | None = None,
        on_open: Callable[[], None] | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._on_change = on_change
        self._on_open = on_open
        self._state: CircuitState = "closed"
        self._failures = 0  # consecutive connect failures while closed
        self._opened_at = 0.0
        self._trial_out = False  # half-open: the one trial request is under way
        self._held_open = False  # the health check says unhealthy: no trials until it recovers
        self._hold_retry_s = config.open_s

    @property
    def state(self) -> CircuitState:
        """The state now (an open circuit whose ``open_s`` is over reads as half-open)."""
        self._advance()
        return self._state

    def admit(self) -> Pass | Refused:
        """Whether a request may go now; one that may is reported back with ``record``."""
        self._advance()
        if self._state == "closed":
            return Pass()
        if self._state == "half_open" and not self._trial_out:
            self._trial_out = True
            return Pass(trial=True)
        if self._held_open:
            return Refused(self._hold_retry_s)
        if self._state == "open":
            return Refused(max(self._opened_at + self._config.open_s - self._clock(), 0.0))
        return Refused(1.0)  # half-open with its trial under way: it decides soon

    def record(self, admitted: Pass, verdict: ConnectVerdict) -> None:
        """Report the outcome of a request that ``admit`` let through (``admitted``)."""
        trial = admitted.trial and self._state == "half_open"
        if admitted.trial:
            self._trial_out = False
        if verdict == "answered":
            self._failures = 0
            if self._state != "closed" and not self._held_open:
                self._set("closed")
        elif verdict == "connect_failed":
            if trial:
                self._open()
            elif self._state == "closed":
                self._failures += 1
                if self._failures >= self._config.failures:
                    self._open()
        # neutral: a trial without a verdict lets the next request be the trial.

    def hold_open(self, unhealthy: bool, *, retry_after_s: float) -> None:
        """The active health check's verdict: unhealthy holds the circuit open, healthy closes it."""
        self._hold_retry_s = retry_after_s
        if unhealthy and not self._held_open:
            self._held_open = True
            if self._state != "open":
                self._open()
        elif not unhealthy and self._held_open:
            self._held_open = False
            self._failures = 0
            self._trial_out = False
            self._set("closed")

    def _advance(self) -> None:
        if (
            self._state == "open"
            and not self._held_open
            and self._clock() >= self._opened_at + self._config.open_s
        ):
            self._trial_out = False
            self._set("half_open")

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._failures = 0
        self._trial_out = False
        self._set("open")
        if self._on_open is not None:
            self._on_open()

    def _set(self, state: CircuitState) -> None:
        if state != self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(state)


class HealthTracker:
    """The active health check's verdicts: ``failures`` failed checks in a row make it unhealthy.

    ``healthy`` is None until the first check has run (the route is then taken as healthy).
    """

    def __init__(self, failures: int) -> None:
        self._threshold = failures
        self._failed_in_a_row = 0
        self.healthy: bool | None = None

    def observe(self, ok: bool) -> bool:
        """Count one check's result; whether ``healthy`` changed between True/None and False."""
        was_unhealthy = self.healthy is False
        if ok:
            self._failed_in_a_row = 0
            self.healthy = True
        else:
            self._failed_in_a_row += 1
            if self._failed_in_a_row >= self._threshold:
                self.healthy = False
        return was_unhealthy != (self.healthy is False)


class Bulkhead:
    """At most ``limit`` slots in use at once (None: no limit, ``acquire`` always succeeds)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.in_use = 0

    def acquire(self) -> bool:
        """Take a slot if one is free; whether it was."""
        if self.limit is not None and self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1


def retry_after_header_s(seconds: float) -> int:
    """Whole seconds for ``Retry-After`` (RFC 9110 §10.2.3): rounded up, at least 1."""
    return max(1, math.ceil(seconds))


@dataclass(frozen=True, slots=True)
class RouteReadiness:
    """One route as ``/readyz`` shows it: its circuit and its health check's verdict."""

    circuit: CircuitState
    healthy: bool | None  # None: no health check, or no verdict yet

    @property
    def ready(self) -> bool:
        """Requests are sent (an open circuit refuses them all)."""
        return self.circuit != "open"

    def as_json(self) -> dict[str, Any]:
        health = "unchecked" if self.healthy is None else "healthy" if self.healthy else "unhealthy"
        return {"ready": self.ready, "circuit": self.circuit, "health": health}


def routes_ready(routes: Iterable[RouteReadiness]) -> bool:
    """The gateway's part of readiness: at least one route sends requests (see the module doc)."""
    return any(route.ready for route in routes)
