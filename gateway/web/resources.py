"""What one config needs at run time, opened together and closed together.

``open_gateway(config)`` is an async context manager that yields a fully built, immutable
``Gateway``: the HTTP session for the authorization servers, a lease on each issuer's key cache
(``gateway.auth.key_registry``: an issuer a reload keeps keeps its keys and refresh task), the
introspector, and per route the upstream pool and the downstream credential (with its token
exchanger). One ``AsyncExitStack`` owns them all, so whatever was opened is closed (or, for the
keys, returned) exactly once, in reverse order, also when opening fails half way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

from ..audit_trail.trail import AuditTrail
from ..auth.authenticator import Authenticator
from ..auth.introspection import Introspector
from ..auth.jwks import IssuerKeys
from ..auth.key_registry import KeyRegistry
from ..auth.tokens import JwtAuthenticator
from ..config import GatewayConfig, RouteConfig, TokenExchangeCredential
from ..mcp.answers import MessageRewriter
from ..mcp.schema_check import schema_watches
from ..metrics import GatewayMetrics
from ..pinning import ToolPins
from ..ratelimit.limiter import RateLimiter
from ..ratelimit.spec import RateLimitsConfig
from ..sealing import StateSealer, process_sealer
from ..telemetry import open_tracing
from ..telemetry.spans import ServerTracing
from ..upstream.credentials import CredentialStrategy, ExchangerFactory, OnIssued, build_strategy
from ..upstream.exchange import TokenExchanger
from ..upstream.minting import TokenMinter
from ..upstream.proxy import Upstream
from ..upstream.resilience import RouteReadiness
from .audit import audit_credential


@dataclass(frozen=True, slots=True, eq=False)
class ServedRoute:
    """One route as it is served: its config, its upstream pool and its downstream credential."""

    config: RouteConfig
    upstream: Upstream
    credential: CredentialStrategy
    # See every upstream answer before the caller's filters and never change it (built once, so
    # their memory is the served route's): conditions vs the tools' inputSchema.
    answer_watches: tuple[MessageRewriter, ...] = ()
    # The route's pinned tool definitions (route key ``pinning``), None when not pinned.
    pins: ToolPins | None = None


def tool_pins(route: RouteConfig, metrics: GatewayMetrics) -> ToolPins | None:
    """The route's pin guard, from the lock read with the config (None: trust on first use)."""
    pinning = route.pinning
    if pinning is None or pinning.mode == "off":
        return None
    return ToolPins(
        route.path,
        pinning.mode,
        pinning.tools,
        pinning.lock,
        upstream=route.upstream,
        on_drift=metrics.tool_drift,
    )


@dataclass(frozen=True, slots=True, eq=False)
class Gateway:
    """Everything a request needs for one config; built by ``open_gateway``, never changed."""

    config: GatewayConfig
    metrics: GatewayMetrics
    authenticator: Authenticator
    routes: Mapping[str, ServedRoute]
    # The root metadata URL is unambiguous only with a single route (RFC 9728 §3, MCP
    # 2025-11-25 clients fall back to it); with several it would have to pick one.
    root_route: RouteConfig | None
    # A present Origin must be one of these (the gateway's own, lower-cased, and allowed_origins).
    allowed_origins: frozenset[str]
    base_path: str  # public_url's path, without a trailing slash
    minter: TokenMinter | None
    issuer_keys: tuple[IssuerKeys, ...]
    # The keys this gateway started loading itself: its new issuers, and those whose config
    # changed. The others were already serving (a reload kept them) with whatever they had.
    new_issuer_keys: tuple[IssuerKeys, ...]
    sealer: StateSealer  # seals Mcp-Session-Id (and task ids) to their caller
    # Counts requests against `rate_limits` (in this process, or in the shared Redis).
    rate_limiter: RateLimiter = field(default_factory=lambda: RateLimiter(RateLimitsConfig()))  # tests: none
    tracing: ServerTracing | None = None  # `tracing:` configured (gateway.telemetry)
    # The process's audit trail (the app's, shared by every generation); None: none configured.
    audit: AuditTrail | None = None

    @property
    def ready(self) -> bool:
        """Every JWKS issuer has a key set (an introspection issuer needs none), and the audit
        trail, if it must refuse requests it cannot record (``on_failure: deny``), can."""
        trail_ready = self.audit is None or self.audit.ready
        return trail_ready and all(keys.ready for keys in self.issuer_keys)

    @property
    def audit_status(self) -> str | None:
        """The audit trail's state for ``/readyz`` (``ok``, ``failed``); None without one."""
        return None if self.audit is None else self.audit.status

    @property
    def route_readiness(self) -> dict[str, RouteReadiness]:
        """Each route's circuit and health check, for ``/readyz`` (gateway.upstream.resilience)."""
        return {path: served.upstream.readiness() for path, served in self.routes.items()}

    async def wait_new_keys(self, timeout_s: float) -> tuple[str, ...]:
        """Wait up to ``timeout_s`` for the keys of ``new_issuer_keys``; the issuers still without."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(keys.wait_ready() for keys in self.new_issuer_keys))
        return tuple(keys.issuer.issuer for keys in self.new_issuer_keys if not keys.ready)


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL, lower-cased: how browsers send ``Origin``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


@contextlib.asynccontextmanager
async def open_gateway(
    config: GatewayConfig,
    metrics: GatewayMetrics | None = None,
    keys: KeyRegistry | None = None,
    audit: AuditTrail | None = None,
) -> AsyncIterator[Gateway]:
    """Open what ``config`` needs, yield the gateway, close it all on exit.

    ``metrics``: the registry to count in (a reload passes the previous gateway's, so counters
    continue); a new one if not given (tests: one per gateway). ``keys``: where the issuers' keys
    are borrowed from (the app's, shared by every generation; it counts in its own metrics); a
    registry of this gateway's own if not given. ``audit``: the process's audit trail (opened
    and closed by its owner, the app), told of each decision and credential issued.
    """
    metrics = metrics if metrics is not None else GatewayMetrics()
    # Signing keys are loaded now: a broken key stops start-up, not the first request. In a thread:
    # they are files, and a reload opens its gateway while the loop serves requests.
    minter = None if config.minting is None else await asyncio.to_thread(TokenMinter, config.minting)
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(
            # To the authorization servers: no cookies, and no library versions to fingerprint.
            aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(), headers={"User-Agent": "mcp-auth-gateway"}
            )
        )
        if keys is None:
            keys = KeyRegistry(metrics)
            stack.push_async_callback(keys.aclose)  # after every lease below is returned (LIFO)
        issuer_keys: dict[str, IssuerKeys] = {}
        new_issuer_keys: list[IssuerKeys] = []
        for issuer in config.issuers:
            if issuer.jwks is None:
                continue  # an introspection issuer (RFC 7662) has no keys to load
            lease = await stack.enter_async_context(keys.lease(issuer))
            issuer_keys[issuer.issuer] = lease.keys
            if not lease.reused:
                new_issuer_keys.append(lease.keys)
        limiter = RateLimiter(config.rate_limits, on_store_error=metrics.rate_limit_store_failed)
        await limiter.start()
        stack.push_async_callback(limiter.aclose)
        metrics.rate_limit_store_up.set_function(lambda: 1.0 if limiter.store_up else 0.0)
        introspector = _introspector(config, session, metrics)
        if introspector is not None:
            stack.push_async_callback(introspector.aclose)
        routes: dict[str, ServedRoute] = {}
        for route in config.routes:
            upstream = Upstream(route, metrics)
            stack.push_async_callback(upstream.aclose)
            on_issued = _issuance_recorder(audit, route)
            exchangers = _exchanger_factory(route, session, metrics, stack, on_issued)
            credential = build_strategy(route, minter, exchangers, on_issued)
            watches = schema_watches(route.path, route.policy, metrics.condition_schema_mismatch)
            pins = tool_pins(route, metrics)
            if pins is not None:
                stack.push_async_callback(pins.aclose)  # a first-use lock being written is finished
            routes[route.path] = ServedRoute(route, upstream, credential, watches, pins)
        allowed = frozenset(config.allowed_origins) | {origin_of(config.public_url)}
        # Flushed when this generation closes: with the app, or once a reload's requests drained.
        tracing = await stack.enter_async_context(open_tracing(config.tracing))
        yield Gateway(
            config=config,
            metrics=metrics,
            authenticator=Authenticator(JwtAuthenticator(issuer_keys), introspector),
            routes=routes,
            root_route=config.routes[0] if len(config.routes) == 1 else None,
            allowed_origins=allowed,
            base_path=urlsplit(config.public_url).path.rstrip("/"),
            minter=minter,
            issuer_keys=tuple(issuer_keys.values()),
            new_issuer_keys=tuple(new_issuer_keys),
            sealer=state_sealer(config),
            rate_limiter=limiter,
            tracing=tracing,
            audit=audit if audit is not None and audit.enabled else None,
        )


def state_sealer(config: GatewayConfig) -> StateSealer:
    """The configured ``state_keys``, or the process's random key."""
    if config.state_keys is None:
        return process_sealer()
    keys = [(key.id, key.secret.reveal().encode("utf-8")) for key in config.state_keys.keys]
    return StateSealer(keys, config.state_keys.active)


def _introspector(
    config: GatewayConfig, session: aiohttp.ClientSession, metrics: GatewayMetrics
) -> Introspector | None:
    # At most one: the config refuses a second (an opaque token does not name its issuer).
    issuer = next((issuer for issuer in config.issuers if issuer.introspection), None)
    if issuer is None:
        return None
    return Introspector(
        issuer,
        session,
        on_result=functools.partial(metrics.introspected, issuer.issuer),
        on_cache_hit=functools.partial(metrics.introspection_cache_hit, issuer.issuer),
    )


def _issuance_recorder(audit: AuditTrail | None, route: RouteConfig) -> OnIssued | None:
    """What records a credential issued on ``route`` in the audit trail, if there is one."""
    if audit is None or not audit.enabled:
        return None
    return functools.partial(audit_credential, audit, route)


def _exchanger_factory(
    route: RouteConfig,
    session: aiohttp.ClientSession,
    metrics: GatewayMetrics,
    stack: contextlib.AsyncExitStack,
    on_issued: OnIssued | None = None,
) -> ExchangerFactory:
    def factory(credential: TokenExchangeCredential) -> TokenExchanger:
        exchanger = TokenExchanger(
            credential,
            session,
            on_result=functools.partial(metrics.token_exchanged, route.path),
            on_cache_hit=functools.partial(metrics.token_exchange_cache_hit, route.path),
            on_issued=on_issued,
        )
        stack.push_async_callback(exchanger.aclose)
        return exchanger

    return factory
