"""Prometheus metrics, on a registry the caller injects (one per gateway, so tests stay apart).

Every label takes a bounded set of values, whatever clients send:

* ``route``: a configured route path, or ``none`` (metadata, health, unknown paths);
* ``mcp_method``: an MCP method the gateway knows (``gateway.mcp.methods.KNOWN_METHODS``), ``GET`` or
  ``DELETE`` for those HTTP methods, else ``other`` (also a POST whose body was not read yet);
* ``tool``: a tool name written as a literal (non-glob) pattern in the route's ``tools``,
  ``other`` for any other tool, ``none`` for a message that calls no tool;
* ``issuer``: a configured issuer identifier;
* ``reason`` and ``result``: fixed words from the gateway's own code.

Never a subject, a client id or a token. ``METRIC_FAMILIES`` lists every family by its exposed
name (counters with their ``_total`` suffix, as in the text format's ``# TYPE`` line).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .config import RouteConfig
from .mcp.methods import KNOWN_METHODS, Target, Tool

__all__ = [
    "CONTENT_TYPE_LATEST",
    "METRICS",
    "METRIC_FAMILIES",
    "NO_ROUTE",
    "GatewayMetrics",
    "mcp_method_label",
    "tool_label",
]

METRIC_FAMILIES: Final[tuple[str, ...]] = (
    "mcp_gateway_requests_total",
    "mcp_gateway_request_duration_seconds",
    "mcp_gateway_requests_in_flight",
    "mcp_gateway_token_rejections_total",
    "mcp_gateway_policy_decisions_total",
    "mcp_gateway_policy_observed_total",
    "mcp_gateway_condition_schema_mismatches_total",
    "mcp_gateway_tool_drift_total",
    "mcp_gateway_rate_limited_total",
    "mcp_gateway_rate_limit_store_errors_total",
    "mcp_gateway_rate_limit_store_up",
    "mcp_gateway_upstream_duration_seconds",
    "mcp_gateway_upstream_errors_total",
    "mcp_gateway_upstream_retries_total",
    "mcp_gateway_upstream_circuit_state",
    "mcp_gateway_upstream_circuit_opened_total",
    "mcp_gateway_upstream_rejected_total",
    "mcp_gateway_upstream_requests_in_use",
    "mcp_gateway_upstream_health_checks_total",
    "mcp_gateway_sse_streams_open",
    "mcp_gateway_jwks_fetches_total",
    "mcp_gateway_jwks_keys_skipped_total",
    "mcp_gateway_jwks_last_success_timestamp_seconds",
    "mcp_gateway_token_exchanges_total",
    "mcp_gateway_token_exchange_cache_hits_total",
    "mcp_gateway_introspections_total",
    "mcp_gateway_introspection_cache_hits_total",
    "mcp_gateway_workers_alive",
    "mcp_gateway_connections_open",
    "mcp_gateway_connections_refused_total",
    "mcp_gateway_connections_timed_out_total",
    "mcp_gateway_requests_overloaded_total",
    "mcp_gateway_buffered_body_bytes",
    "mcp_gateway_audit_records_total",
    "mcp_gateway_audit_write_failures_total",
)

NO_ROUTE: Final = "none"
OTHER: Final = "other"
NO_TOOL: Final = "none"
_HTTP_METHOD_LABELS: Final = frozenset({"GET", "DELETE"})

# Request latencies span cached 401s (sub-millisecond) to tool calls of minutes.
_REQUEST_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def mcp_method_label(http_method: str, mcp_method: str | None) -> str:
    """The ``mcp_method`` label: a known MCP method, ``GET``/``DELETE``, or ``other``."""
    if mcp_method is not None and mcp_method in KNOWN_METHODS:
        return mcp_method
    if mcp_method is None and http_method in _HTTP_METHOD_LABELS:
        return http_method
    return OTHER


def tool_label(route: RouteConfig, target: Target | None) -> str:
    """The ``tool`` label: a tool named by a literal pattern of the route's rules, ``other``, ``none``."""
    if not isinstance(target, Tool):
        return NO_TOOL
    return target.name if target.name in route.policy.literal_tools else OTHER


class Children:
    """A metric's children by label values, each looked up once: ``labels()`` takes a lock and
    checks its values on every call (about a microsecond), and the request path calls it for
    every request. The label values are bounded by the config (routes, methods, pinned tools)."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class GatewayMetrics:
    """Every metric of one gateway, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "mcp_gateway_requests",
            "Requests answered, by route, MCP method and outcome (ok, rejected, error).",
            ("route", "mcp_method", "outcome"),
            registry=registry,
        )
        self.request_duration = Histogram(
            "mcp_gateway_request_duration_seconds",
            "Time from request arrival to the end of the response (streams included).",
            ("route", "mcp_method", "outcome"),
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "mcp_gateway_requests_in_flight",
            "Requests being handled now (open streams included).",
            registry=registry,
        )
        self.token_rejections = Counter(
            "mcp_gateway_token_rejections",
            "Requests refused because of their token (missing_token, expired, bad_audience, ...).",
            ("reason",),
            registry=registry,
        )
        self.policy_decisions = Counter(
            "mcp_gateway_policy_decisions",
            "Policy decisions per JSON-RPC message; tool is a literal tool name from the config, "
            "other, or none.",
            ("route", "decision", "tool"),
            registry=registry,
        )
        self.policy_observed_decisions = Counter(
            "mcp_gateway_policy_observed",
            "Decisions where the rules as written (mode: observe) differ from the enforced ones: "
            "would_deny or would_allow, by the written rules that decided.",
            ("route", "outcome", "rule"),
            registry=registry,
        )
        self.tool_drifts = Counter(
            "mcp_gateway_tool_drift",
            "Tools listed with a definition other than the route's lock (pinning), by kind: "
            "description, input_schema_widened, annotations_escalated, new_tool, removed, ...; "
            "once per route, tool and listed definition per process.",
            ("route", "kind"),
            registry=registry,
        )
        self.condition_schema_mismatches = Counter(
            "mcp_gateway_condition_schema_mismatches",
            "A rule condition reads arguments.X of a tool whose inputSchema (seen in tools/list) "
            "has no X: counted once per route, rule, tool and argument per process.",
            ("route", "rule"),
            registry=registry,
        )
        self.rate_limited_requests = Counter(
            "mcp_gateway_rate_limited",
            "Requests refused by a rate limit (reason limited: 429) or because a fail-closed limit's "
            "store was unreachable (reason store_unavailable: 503); limit is the config's name.",
            ("route", "limit", "reason"),
            registry=registry,
        )
        self.rate_limit_store_errors = Counter(
            "mcp_gateway_rate_limit_store_errors",
            "Rate-limit decisions the shared store (Redis) could not answer, by reason.",
            ("reason",),
            registry=registry,
        )
        self.rate_limit_store_up = Gauge(
            "mcp_gateway_rate_limit_store_up",
            "1 while the rate-limit store answers (always 1 for the memory store), 0 in an outage.",
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "mcp_gateway_upstream_duration_seconds",
            "Time until the upstream's response headers.",
            ("route",),
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "mcp_gateway_upstream_errors",
            "Upstream failures (upstream_refused, upstream_timeout, upstream_stream_broken, ...).",
            ("route", "reason"),
            registry=registry,
        )
        # Upstream resilience (gateway.upstream.resilience).
        self.upstream_retries = Counter(
            "mcp_gateway_upstream_retries",
            "Requests sent a second time because their connect failed (nothing had been sent).",
            ("route",),
            registry=registry,
        )
        self.upstream_circuit_state = Gauge(
            "mcp_gateway_upstream_circuit_state",
            "Each upstream's circuit: 0 closed, 1 half-open (one trial request), 2 open.",
            ("route",),
            registry=registry,
        )
        self.upstream_circuit_opened = Counter(
            "mcp_gateway_upstream_circuit_opened",
            "Times an upstream's circuit opened (connect failures in a row, or its health check).",
            ("route",),
            registry=registry,
        )
        self.upstream_rejected = Counter(
            "mcp_gateway_upstream_rejected",
            "Requests answered 503 without contacting the upstream (upstream_circuit_open, upstream_busy).",
            ("route", "reason"),
            registry=registry,
        )
        self.upstream_requests_in_use = Gauge(
            "mcp_gateway_upstream_requests_in_use",
            "Requests relayed to the upstream now, as max_concurrent_requests counts them (GETs are not).",
            ("route",),
            registry=registry,
        )
        self.upstream_health_checks = Counter(
            "mcp_gateway_upstream_health_checks",
            "Active health checks of the upstream (ok, failed).",
            ("route", "result"),
            registry=registry,
        )
        self.sse_streams_open = Gauge(
            "mcp_gateway_sse_streams_open",
            "SSE responses being relayed now.",
            ("route",),
            registry=registry,
        )
        self.jwks_fetches = Counter(
            "mcp_gateway_jwks_fetches",
            "JWKS loads per issuer (ok, failed, no_usable_keys).",
            ("issuer", "result"),
            registry=registry,
        )
        self.jwks_keys_skipped = Counter(
            "mcp_gateway_jwks_keys_skipped",
            "JWKS keys left unused per load, by issuer and reason (rsa_key_too_small, alg_mismatch, ...).",
            ("issuer", "reason"),
            registry=registry,
        )
        # A timestamp, not an age: an alert computes `time() - x` at query time, and an issuer
        # that never loaded shows 0 (the series exists from the start), so it alerts too.
        self.jwks_last_success = Gauge(
            "mcp_gateway_jwks_last_success_timestamp_seconds",
            "Unix time of each issuer's last successful key load (0: never loaded).",
            ("issuer",),
            registry=registry,
        )
        self.token_exchanges = Counter(
            "mcp_gateway_token_exchanges",
            "RFC 8693 exchanges sent to the authorization server (ok, refused, unavailable).",
            ("route", "result"),
            registry=registry,
        )
        self.token_exchange_cache_hits = Counter(
            "mcp_gateway_token_exchange_cache_hits",
            "Exchanged tokens reused from the cache.",
            ("route",),
            registry=registry,
        )
        self.introspections = Counter(
            "mcp_gateway_introspections",
            "RFC 7662 introspection calls (active, inactive or another refusal, unavailable).",
            ("issuer", "result"),
            registry=registry,
        )
        self.introspection_cache_hits = Counter(
            "mcp_gateway_introspection_cache_hits",
            "Introspection answers reused from the cache.",
            ("issuer",),
            registry=registry,
        )
        # Every worker of `serve --workers N` reports the pool's count, which the parent publishes
        # (gateway.server); a process serving alone is a pool of one.
        self.workers_alive = Gauge(
            "mcp_gateway_workers_alive",
            "Worker processes of this gateway running now (1 without --workers).",
            registry=registry,
        )
        self.workers_alive.set(1)
        # The listener's limits (gateway.web.listener) and the request admission (limits:).
        self.connections_open = Gauge(
            "mcp_gateway_connections_open",
            "Client connections open on the MCP listener.",
            registry=registry,
        )
        self.connections_refused = Counter(
            "mcp_gateway_connections_refused",
            "Client connections answered 503 and closed at once "
            "(at_capacity: limits.max_connections; fd_exhausted: no file descriptor left).",
            ("reason",),
            registry=registry,
        )
        self.connections_timed_out = Counter(
            "mcp_gateway_connections_timed_out",
            "Client connections closed for sending request headers too slowly (phase=headers) or "
            "taking none of an answer for limits.send_timeout_s (phase=send).",
            ("phase",),
            registry=registry,
        )
        self.requests_overloaded = Counter(
            "mcp_gateway_requests_overloaded",
            "Requests answered 503 because a process limit was reached "
            "(too_many_streams, body_budget_exhausted).",
            ("reason",),
            registry=registry,
        )
        self.buffered_body_bytes = Gauge(
            "mcp_gateway_buffered_body_bytes",
            "Bytes of request bodies held by requests in flight (limits.max_buffered_body_bytes).",
            registry=registry,
        )
        # The audit trail (gateway.audit_trail.trail); kind is policy_decision or credential_issued.
        self.audit_records = Counter(
            "mcp_gateway_audit_records",
            "Events chained into the audit trail (seals not counted), by kind.",
            ("kind",),
            registry=registry,
        )
        self.audit_write_failures = Counter(
            "mcp_gateway_audit_write_failures",
            "Audit trail writes or exports that failed; the first stops the trail until a restart "
            "(on_failure: allow serves on, deny refuses with 503).",
            registry=registry,
        )
        # The request path's children, cached (Children).
        self._requests = Children(self.requests)
        self._request_duration = Children(self.request_duration)
        self._policy_decisions = Children(self.policy_decisions)
        self._upstream_duration = Children(self.upstream_duration)

    # --- recording ------------------------------------------------------------------------------

    def request_finished(self, route: str, mcp_method: str, outcome: str, duration_s: float) -> None:
        self._requests(route, mcp_method, outcome).inc()
        self._request_duration(route, mcp_method, outcome).observe(duration_s)

    def token_rejected(self, reason: str) -> None:
        self.token_rejections.labels(reason).inc()

    def policy_decision(self, route: RouteConfig, allowed: bool, target: Target | None) -> None:
        decision = "allow" if allowed else "deny"
        self._policy_decisions(route.path, decision, tool_label(route, target)).inc()

    def policy_observed(self, route: RouteConfig, outcome: str, rule: str) -> None:
        """``outcome``: would_deny or would_allow; ``rule``: the written rules' labels (from the config)."""
        self.policy_observed_decisions.labels(route.path, outcome, rule).inc()

    def rate_limited(self, route: str, limit: str, *, unavailable: bool) -> None:
        self.rate_limited_requests.labels(
            route, limit, "store_unavailable" if unavailable else "limited"
        ).inc()

    def rate_limit_store_failed(self, reason: str) -> None:
        self.rate_limit_store_errors.labels(reason).inc()

    def tool_drift(self, route: str, kind: str) -> None:
        self.tool_drifts.labels(route, kind).inc()

    def condition_schema_mismatch(self, route: str, rule: str) -> None:
        self.condition_schema_mismatches.labels(route, rule).inc()

    def upstream_responded(self, route: str, seconds: float) -> None:
        self._upstream_duration(route).observe(seconds)

    def upstream_failed(self, route: str, reason: str) -> None:
        self.upstream_errors.labels(route, reason).inc()

    def upstream_watched(self, route: str) -> None:
        """Export the route's circuit state (0: closed) and retry count from the start."""
        self.upstream_circuit_state.labels(route).set(0)
        self.upstream_retries.labels(route)

    def upstream_retried(self, route: str) -> None:
        self.upstream_retries.labels(route).inc()

    def circuit_changed(self, route: str, value: int) -> None:
        self.upstream_circuit_state.labels(route).set(value)

    def circuit_opened(self, route: str) -> None:
        self.upstream_circuit_opened.labels(route).inc()

    def upstream_shed(self, route: str, reason: str) -> None:
        self.upstream_rejected.labels(route, reason).inc()

    def upstream_slots_in_use(self, route: str, in_use: Callable[[], float]) -> None:
        """Report the route's slots in use as ``in_use()`` says at each scrape (no per-request cost;
        a reload points it at the new upstream)."""
        self.upstream_requests_in_use.labels(route).set_function(in_use)

    def upstream_health_checked(self, route: str, ok: bool) -> None:
        self.upstream_health_checks.labels(route, "ok" if ok else "failed").inc()

    @contextmanager
    def sse_stream(self, route: str) -> Iterator[None]:
        gauge = self.sse_streams_open.labels(route)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def jwks_issuer_watched(self, issuer: str) -> None:
        """Export the issuer's last-success series (0 until a load succeeds; kept across reloads)."""
        self.jwks_last_success.labels(issuer)

    def jwks_fetched(self, issuer: str, result: str) -> None:
        self.jwks_fetches.labels(issuer, result).inc()
        if result == "ok":
            self.jwks_last_success.labels(issuer).set_to_current_time()

    def jwks_key_skipped(self, issuer: str, reason: str) -> None:
        self.jwks_keys_skipped.labels(issuer, reason).inc()

    def token_exchanged(self, route: str, result: str) -> None:
        self.token_exchanges.labels(route, result).inc()

    def token_exchange_cache_hit(self, route: str) -> None:
        self.token_exchange_cache_hits.labels(route).inc()

    def introspected(self, issuer: str, result: str) -> None:
        self.introspections.labels(issuer, result).inc()

    def introspection_cache_hit(self, issuer: str) -> None:
        self.introspection_cache_hits.labels(issuer).inc()

    # --- exposition -----------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)


# How the request middleware and the admin listener find the gateway's metrics.
METRICS = web.AppKey("metrics", GatewayMetrics)
