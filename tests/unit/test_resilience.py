"""The upstream resilience decisions, with a hand-driven clock: retry, circuit, health, bulkhead."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config_text
from gateway.config.model import CircuitBreakerConfig, HealthCheckConfig
from gateway.upstream.http_client import AnswerBroken, ConnectFailed, ConnectTimedOut, TlsFailed
from gateway.upstream.resilience import (
    Bulkhead,
    CircuitBreaker,
    CircuitState,
    HealthTracker,
    Pass,
    Refused,
    RouteReadiness,
    connect_verdict,
    retry_after_header_s,
    retry_connect,
    routes_ready,
)

REFUSED = ConnectFailed("ConnectionRefusedError")
RESET = ConnectFailed("ConnectionResetError")
TLS = TlsFailed("SSLCertVerificationError")
CONNECT_TIMEOUT = ConnectTimedOut("no connection within 5s")
DISCONNECTED = AnswerBroken("the upstream closed the connection")  # after the request was written
HEADERS_TIMEOUT = TimeoutError()  # response_timeout_s around the whole wait


class Clock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("exc", "attempt", "again"),
    [
        pytest.param(REFUSED, 1, True, id="refused-first"),
        pytest.param(RESET, 1, True, id="reset-during-connect"),
        pytest.param(REFUSED, 2, False, id="refused-second"),
        pytest.param(TLS, 1, False, id="tls-would-fail-again"),
        pytest.param(CONNECT_TIMEOUT, 1, False, id="connect-timeout"),
        pytest.param(DISCONNECTED, 1, False, id="bytes-already-sent"),
        pytest.param(HEADERS_TIMEOUT, 1, False, id="headers-timeout"),
    ],
)
def test_only_a_failed_connect_is_retried_and_only_once(exc: Exception, attempt: int, again: bool) -> None:
    """Refused or reset while connecting: once more; a timeout, TLS or a sent request: never."""
    assert retry_connect(exc, attempt) is again


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        pytest.param(None, "answered", id="headers"),
        pytest.param(REFUSED, "connect_failed", id="refused"),
        pytest.param(TLS, "connect_failed", id="tls"),
        pytest.param(CONNECT_TIMEOUT, "connect_failed", id="connect-timeout"),
        pytest.param(DISCONNECTED, "neutral", id="disconnected-after-sending"),
        pytest.param(HEADERS_TIMEOUT, "neutral", id="headers-timeout"),
    ],
)
def test_what_an_outcome_says_about_connecting(exc: Exception | None, verdict: str) -> None:
    """Connect failures and connect timeouts count against the circuit; slow answers do not."""
    assert connect_verdict(exc) == verdict


def breaker(
    failures: int = 3, open_s: float = 10.0
) -> tuple[CircuitBreaker, Clock, list[CircuitState], list[None]]:
    clock = Clock()
    changes: list[CircuitState] = []
    opened: list[None] = []
    circuit = CircuitBreaker(
        CircuitBreakerConfig(failures=failures, open_s=open_s),
        clock=clock,
        on_change=changes.append,
        on_open=lambda: opened.append(None),
    )
    return circuit, clock, changes, opened


def state(circuit: CircuitBreaker) -> CircuitState:
    """The circuit's state (a call, so each reading is typed afresh)."""
    return circuit.state


def let_in(circuit: CircuitBreaker) -> Pass:
    """Admit one request, which the test expects to be let through."""
    admitted = circuit.admit()
    assert isinstance(admitted, Pass), admitted
    return admitted


def fail(circuit: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        circuit.record(let_in(circuit), "connect_failed")


def test_consecutive_connect_failures_open_the_circuit() -> None:
    """Three connect failures in a row open it; requests are then refused with the time left."""
    circuit, clock, changes, opened = breaker(failures=3, open_s=10)
    fail(circuit, 2)
    assert state(circuit) == "closed"
    fail(circuit)
    assert state(circuit) == "open" and changes == ["open"] and len(opened) == 1
    clock.now += 4
    assert circuit.admit() == Refused(6.0)


def test_any_answer_resets_the_count() -> None:
    """Two failures, an answer (whatever its status), two more: still closed."""
    circuit, _, changes, _ = breaker(failures=3)
    fail(circuit, 2)
    circuit.record(let_in(circuit), "answered")
    fail(circuit, 2)
    assert state(circuit) == "closed" and changes == []


def test_neutral_outcomes_neither_count_nor_reset() -> None:
    """A header timeout between failures changes nothing: the third failure still opens."""
    circuit, _, _, _ = breaker(failures=3)
    fail(circuit, 2)
    circuit.record(let_in(circuit), "neutral")
    fail(circuit)
    assert state(circuit) == "open"


def test_half_open_lets_one_trial_through_and_its_answer_closes() -> None:
    """After open_s: one trial, the others refused while it runs; its answer closes the circuit."""
    circuit, clock, changes, opened = breaker(failures=1, open_s=10)
    fail(circuit)
    clock.now += 10
    assert state(circuit) == "half_open"
    trial = let_in(circuit)
    assert trial == Pass(trial=True)
    assert isinstance(circuit.admit(), Refused)
    circuit.record(trial, "answered")
    assert state(circuit) == "closed" and changes == ["open", "half_open", "closed"]
    assert circuit.admit() == Pass() and len(opened) == 1


def test_a_failed_trial_opens_again_for_a_full_period() -> None:
    """The trial's connect fails: open again (counted), refused for another open_s."""
    circuit, clock, changes, opened = breaker(failures=1, open_s=10)
    fail(circuit)
    clock.now += 10
    trial = let_in(circuit)
    circuit.record(trial, "connect_failed")
    assert state(circuit) == "open" and len(opened) == 2
    assert circuit.admit() == Refused(10.0)
    assert changes == ["open", "half_open", "open"]


def test_a_trial_without_verdict_lets_the_next_request_try() -> None:
    """A trial that ends neutral (client gone, header timeout) frees the trial for the next one."""
    circuit, clock, _, _ = breaker(failures=1, open_s=10)
    fail(circuit)
    clock.now += 10
    circuit.record(let_in(circuit), "neutral")
    assert state(circuit) == "half_open"
    assert circuit.admit() == Pass(trial=True)


def test_a_late_failure_of_an_earlier_request_is_not_the_trial() -> None:
    """A request admitted while closed fails during half-open: the real trial is still the one."""
    circuit, clock, _, _ = breaker(failures=1, open_s=10)
    early = let_in(circuit)
    fail(circuit)
    clock.now += 10
    trial = let_in(circuit)
    circuit.record(early, "connect_failed")
    assert state(circuit) == "half_open" and isinstance(circuit.admit(), Refused)
    circuit.record(trial, "answered")
    assert state(circuit) == "closed"


def test_an_unhealthy_check_holds_the_circuit_open_until_healthy() -> None:
    """Unhealthy: open, no trial however long; healthy again: closed at once, count reset."""
    circuit, clock, changes, opened = breaker(failures=2, open_s=10)
    fail(circuit)
    circuit.hold_open(True, retry_after_s=3)
    clock.now += 60
    assert state(circuit) == "open" and circuit.admit() == Refused(3)
    circuit.hold_open(False, retry_after_s=3)
    assert state(circuit) == "closed" and changes == ["open", "closed"] and len(opened) == 1
    fail(circuit)
    assert state(circuit) == "closed"  # the failure before the hold no longer counts


def test_an_answer_does_not_close_a_circuit_the_health_check_holds() -> None:
    """A late answer while the check says unhealthy leaves the circuit open."""
    circuit, _, _, _ = breaker()
    early = let_in(circuit)
    circuit.hold_open(True, retry_after_s=1)
    circuit.record(early, "answered")
    assert state(circuit) == "open"


def test_health_needs_failures_in_a_row() -> None:
    """Unknown until checked; two failures of three are not enough; the third is; one ok heals."""
    health = HealthTracker(failures=3)
    assert health.healthy is None
    assert [health.observe(ok) for ok in (False, False)] == [False, False]
    assert health.healthy is None
    assert health.observe(True) is False and health.healthy is True
    assert [health.observe(False) for _ in range(3)] == [False, False, True]
    assert health.healthy is False
    assert health.observe(False) is False  # still unhealthy: no change
    assert health.observe(True) is True and health.healthy is True


def test_bulkhead_refuses_beyond_its_limit_and_frees_on_release() -> None:
    """Two slots: the third acquire fails; after a release one more fits; None: no limit."""
    bulkhead = Bulkhead(2)
    assert [bulkhead.acquire() for _ in range(3)] == [True, True, False]
    bulkhead.release()
    assert bulkhead.acquire() is True and bulkhead.in_use == 2
    unlimited = Bulkhead(None)
    assert all(unlimited.acquire() for _ in range(1000))


@pytest.mark.parametrize(("seconds", "header"), [(0.0, 1), (0.2, 1), (1.0, 1), (1.01, 2), (9.5, 10)])
def test_retry_after_is_whole_seconds_rounded_up(seconds: float, header: int) -> None:
    """Retry-After never says 0 and never less than the time left."""
    assert retry_after_header_s(seconds) == header


def test_readiness_fails_only_when_every_route_is_open() -> None:
    """One open circuit among closed ones: ready; every circuit open: not ready."""
    open_, closed, trying = (RouteReadiness(state, None) for state in ("open", "closed", "half_open"))
    assert routes_ready([open_, closed]) and routes_ready([open_, trying])
    assert not routes_ready([open_, open_])
    assert RouteReadiness("open", False).as_json() == {
        "ready": False,
        "circuit": "open",
        "health": "unhealthy",
    }
    assert closed.as_json()["health"] == "unchecked"


ROUTE_CONFIG = """
listen: {host: 127.0.0.1, port: 8080}
public_url: https://mcp.example.com
issuers:
  - issuer: https://auth.example.com
    algorithms: [RS256]
    jwks: {discover: true}
routes:
  - path: /mcp
    upstream: http://127.0.0.1:9000/mcp
"""


def test_route_resilience_keys_parse_with_documented_defaults(tmp_path: Path) -> None:
    """Absent: breaker 5 failures / 10 s, no health check, no bulkhead; written: as written."""
    [plain] = parse_config_text(ROUTE_CONFIG, tmp_path / "g.yaml", {}).routes
    assert plain.circuit_breaker == CircuitBreakerConfig(failures=5, open_s=10.0)
    assert plain.health_check is None and plain.max_concurrent_requests is None
    written = ROUTE_CONFIG + (
        "    max_concurrent_requests: 8\n"
        "    circuit_breaker: {failures: 2, open_s: 0.5}\n"
        "    health_check: {path: /healthz, method: POST, interval_s: 5}\n"
    )
    [route] = parse_config_text(written, tmp_path / "g.yaml", {}).routes
    assert route.max_concurrent_requests == 8
    assert route.circuit_breaker == CircuitBreakerConfig(failures=2, open_s=0.5)
    assert route.health_check == HealthCheckConfig(
        path="/healthz", method="POST", interval_s=5.0, timeout_s=2.0, failures=3
    )


@pytest.mark.parametrize(
    ("extra", "key_path"),
    [
        ("max_concurrent_requests: 0", "routes[0].max_concurrent_requests"),
        ("circuit_breaker: {failures: 0}", "routes[0].circuit_breaker.failures"),
        ("circuit_breaker: {open: 5}", "routes[0].circuit_breaker.open"),
        ("health_check: {interval_s: 1}", "routes[0].health_check.path"),
        ("health_check: {path: health}", "routes[0].health_check.path"),
        ("health_check: {path: '/h?x=1'}", "routes[0].health_check.path"),
        ("health_check: {path: /h, method: HEAD}", "routes[0].health_check.method"),
        ("health_check: {path: /h, timeout_s: 0}", "routes[0].health_check.timeout_s"),
    ],
)
def test_bad_resilience_keys_are_reported_where_written(tmp_path: Path, extra: str, key_path: str) -> None:
    """Each bad value or unknown key is one problem at its key path."""
    with pytest.raises(ConfigError) as caught:
        parse_config_text(ROUTE_CONFIG + f"    {extra}\n", tmp_path / "g.yaml", {})
    assert [problem.key_path for problem in caught.value.problems] == [key_path]
