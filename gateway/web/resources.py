"""What one config needs at run time, opened together and closed together.

``open_gateway(config)`` is an async context manager that yields a fully built, immutable
``Gateway``: the HTTP session for the authorization servers, each issuer's key cache and its
refresh task, the introspector, and per route the upstream pool and the downstream credential
(with its token exchanger). One ``AsyncExitStack`` owns them all, so whatever was opened is
closed exactly once, in reverse order, also when opening fails half way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from ..auth.authenticator import Authenticator
from ..auth.introspection import Introspector
from ..auth.jwks import IssuerKeys
from ..auth.tokens import JwtAuthenticator
from ..config import GatewayConfig, RouteConfig, TokenExchangeCredential
from ..metrics import GatewayMetrics
from ..sealing import StateSealer, process_sealer
from ..upstream.credentials import CredentialStrategy, ExchangerFactory, build_strategy
from ..upstream.exchange import TokenExchanger
from ..upstream.minting import TokenMinter
from ..upstream.proxy import Upstream


@dataclass(frozen=True, slots=True, eq=False)
class ServedRoute:
    """One route as it is served: its config, its upstream pool and its downstream credential."""

    config: RouteConfig
    upstream: Upstream
    credential: CredentialStrategy


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
    sealer: StateSealer  # seals Mcp-Session-Id (and task ids) to their caller

    @property
    def ready(self) -> bool:
        """Every JWKS issuer has a key set (an introspection issuer needs none)."""
        return all(keys.ready for keys in self.issuer_keys)

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for ``ready``; whether it came."""
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(keys.wait_ready() for keys in self.issuer_keys))
        except TimeoutError:
            return False
        return True


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL, lower-cased: how browsers send ``Origin``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


@contextlib.asynccontextmanager
async def open_gateway(
    config: GatewayConfig, metrics: GatewayMetrics | None = None
) -> AsyncIterator[Gateway]:
    """Open what ``config`` needs, yield the gateway, close it all on exit.

    ``metrics``: the registry to count in (a reload passes the previous gateway's, so counters
    continue); a new one if not given (tests: one per gateway).
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
        issuer_keys: dict[str, IssuerKeys] = {}
        for issuer in config.issuers:
            if issuer.jwks is None:
                continue  # an introspection issuer (RFC 7662) has no keys to load
            keys = IssuerKeys(
                issuer,
                session,
                on_fetch=functools.partial(metrics.jwks_fetched, issuer.issuer),
                on_key_skipped=functools.partial(metrics.jwks_key_skipped, issuer.issuer),
            )
            metrics.jwks_issuer_watched(issuer.issuer)
            stack.push_async_callback(keys.aclose)
            refresh = asyncio.create_task(keys.run(), name=f"jwks:{issuer.issuer}")
            stack.push_async_callback(_cancel, refresh)  # runs before keys.aclose (LIFO)
            issuer_keys[issuer.issuer] = keys
        introspector = _introspector(config, session, metrics)
        if introspector is not None:
            stack.push_async_callback(introspector.aclose)
        routes: dict[str, ServedRoute] = {}
        for route in config.routes:
            upstream = Upstream(route, metrics)
            stack.push_async_callback(upstream.aclose)
            credential = build_strategy(route, minter, _exchanger_factory(route, session, metrics, stack))
            routes[route.path] = ServedRoute(route, upstream, credential)
        allowed = frozenset(config.allowed_origins) | {origin_of(config.public_url)}
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
            sealer=state_sealer(config),
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


def _exchanger_factory(
    route: RouteConfig,
    session: aiohttp.ClientSession,
    metrics: GatewayMetrics,
    stack: contextlib.AsyncExitStack,
) -> ExchangerFactory:
    def factory(credential: TokenExchangeCredential) -> TokenExchanger:
        exchanger = TokenExchanger(
            credential,
            session,
            on_result=functools.partial(metrics.token_exchanged, route.path),
            on_cache_hit=functools.partial(metrics.token_exchange_cache_hit, route.path),
        )
        stack.push_async_callback(exchanger.aclose)
        return exchanger

    return factory


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
