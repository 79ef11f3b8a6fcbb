"""The gateway application, assembled once in ``build_app``.

Middleware order (outermost first), and why:
1. ``request_context`` — first in, last out, so the canonical log line sees every outcome.
2. ``error_responses`` — turns any GatewayError below it into its HTTP form (applied in
   ``LiveGateway.handle``, per gateway, so that a reloaded config renders its own errors).
Everything else is the MCP pipeline in ``Gateway.handle_mcp``, in the order the spec needs:
Origin (before the token, so a hostile page learns nothing from 401 vs 403) → method →
token → body → route scopes → forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from ..auth.authenticator import Authenticator
from ..auth.introspection import Introspector
from ..auth.jwks import IssuerKeys
from ..auth.tokens import JwtAuthenticator, bearer_token_from
from ..config import GatewayConfig, RouteConfig, TokenExchangeCredential
from ..errors import AuthError, InsufficientScope, MethodNotAllowed, OriginForbidden, PolicyDenied
from ..mcp.listing import ListFilter
from ..mcp.messages import HANDSHAKE_VERSIONS, McpPost, McpRejected, decode_header_value, parse_post
from ..mcp.policy import challenge_scopes, combine, decide, operation_of
from ..metrics import METRICS, GatewayMetrics
from ..principal import Principal
from ..upstream.credentials import CredentialStrategy, ExchangerFactory, build_strategy
from ..upstream.exchange import TokenExchanger
from ..upstream.minting import TokenMinter
from ..upstream.proxy import Upstream, read_body
from .audit import audit_decision
from .live import LIVE, LiveGateway, remember_prepared
from .metadata import WELL_KNOWN_PRM, prm_document
from .middleware import (
    LOGGING,
    MCP_METHOD,
    PRINCIPAL,
    REQUEST_ID,
    ROUTE,
    RPC_ID,
    TARGET,
    jsonrpc_error_response,
    request_context,
)

MCP_METHODS = ("GET", "POST", "DELETE")
_CORS_EXPOSED = "Mcp-Session-Id, MCP-Protocol-Version, WWW-Authenticate"


class Gateway:
    """Everything a request needs: config, key caches, authenticator and upstream pools."""

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics | None = None) -> None:
        self.config = config
        # Its own registry unless given one (tests: one per gateway; a reload can pass the old one on).
        self.metrics = metrics if metrics is not None else GatewayMetrics()
        self._routes = {route.path: route for route in config.routes}
        # The root metadata URL is unambiguous only with a single route (RFC 9728 §3, MCP
        # 2025-11-25 clients fall back to it); with several it would have to pick one.
        self._root_route = config.routes[0] if len(config.routes) == 1 else None
        self._own_origin = _origin_of(config.public_url)
        self._base_path = urlsplit(config.public_url).path.rstrip("/")
        self._allowed_origins = frozenset(config.allowed_origins) | {self._own_origin}
        self._issuer_keys: dict[str, IssuerKeys] = {}
        self._upstreams: dict[str, Upstream] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._auth_session: aiohttp.ClientSession | None = None
        self._jwt = JwtAuthenticator(self._issuer_keys)
        self.authenticator = Authenticator(self._jwt, None)
        # Signing keys are loaded now: a broken key stops start-up, not the first request.
        self.minter = TokenMinter(config.minting) if config.minting is not None else None
        self._credentials: dict[str, CredentialStrategy] = {}

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._auth_session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        for issuer in self.config.issuers:
            if issuer.jwks is None:
                continue  # an introspection issuer (RFC 7662) has no keys to load
            on_fetch = functools.partial(self.metrics.jwks_fetched, issuer.issuer)
            keys = IssuerKeys(issuer, self._auth_session, on_fetch=on_fetch)
            self._issuer_keys[issuer.issuer] = keys
            self._tasks.append(asyncio.create_task(keys.run(), name=f"jwks:{issuer.issuer}"))
        session = self._auth_session
        metrics = self.metrics
        # At most one: the config refuses a second (an opaque token does not name its issuer).
        introspecting = next((issuer for issuer in self.config.issuers if issuer.introspection), None)
        introspector = (
            Introspector(
                introspecting,
                session,
                on_result=functools.partial(metrics.introspected, introspecting.issuer),
                on_cache_hit=functools.partial(metrics.introspection_cache_hit, introspecting.issuer),
            )
            if introspecting is not None
            else None
        )
        self.authenticator = Authenticator(self._jwt, introspector)
        for route in self.config.routes:
            self._upstreams[route.path] = Upstream(route, metrics)
            self._credentials[route.path] = build_strategy(
                route, self.minter, self._exchanger_factory(route, session)
            )

    def _exchanger_factory(self, route: RouteConfig, session: aiohttp.ClientSession) -> ExchangerFactory:
        metrics = self.metrics

        def factory(credential: TokenExchangeCredential) -> TokenExchanger:
            return TokenExchanger(
                credential,
                session,
                on_result=functools.partial(metrics.token_exchanged, route.path),
                on_cache_hit=functools.partial(metrics.token_exchange_cache_hit, route.path),
            )

        return factory

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for keys in self._issuer_keys.values():
            await keys.aclose()
        introspector = self.authenticator.introspector
        for closable in (*self._credentials.values(), *((introspector,) if introspector else ())):
            aclose = getattr(closable, "aclose", None)
            if aclose is not None:
                await aclose()
        for upstream in self._upstreams.values():
            await upstream.aclose()
        if self._auth_session is not None:
            await self._auth_session.close()

    @property
    def ready(self) -> bool:
        return all(keys.ready for keys in self._issuer_keys.values())

    # --- dispatch -------------------------------------------------------------------------------

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == WELL_KNOWN_PRM or path.startswith(WELL_KNOWN_PRM + "/"):
            return self.handle_metadata(request, path[len(WELL_KNOWN_PRM) :])
        if self.minter is not None and path in (self.minter.jwks_path, self.minter.metadata_path):
            # The gateway as issuer of minted upstream tokens: public keys and issuer metadata.
            document = self.minter.jwks() if path == self.minter.jwks_path else self.minter.metadata()
            return web.json_response(document, headers={"Cache-Control": "public, max-age=300"})
        route = self._routes.get(path)
        if route is None:
            return jsonrpc_error_response(404, None, -32601, "Not found")
        request[ROUTE] = route
        return await self.handle_mcp(request, route)

    # --- the MCP pipeline, top to bottom ----------------------------------------------------------

    async def handle_mcp(self, request: web.Request, route: RouteConfig) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower() not in self._allowed_origins:
            raise OriginForbidden(detail="origin not in allowed_origins")
        if request.method == "OPTIONS" and origin is not None:
            return _cors_preflight(request, origin)
        if request.method not in MCP_METHODS:
            raise MethodNotAllowed(MCP_METHODS)

        try:
            token = bearer_token_from(
                request.headers.getall("Authorization", []), "access_token" in request.query
            )
            principal = await self.authenticator.authenticate(token, route.resource)
        except AuthError as exc:
            exc.scopes = exc.scopes or challenge_hint(route, request)
            raise
        request[PRINCIPAL] = principal

        body: bytes | None = None
        response_filter: ListFilter | None = None
        required = route.scopes
        if request.method == "POST":
            # Read only once the caller is authenticated; decide on the body, never on headers.
            body = await read_body(request, route.max_body_bytes)
            post = parse_strictly(request, body)
            required = authorize(route, principal, post, self.metrics)
            response_filter = ListFilter.for_post(post, route.policy, principal.scopes)
        elif not principal.has_scopes(route.scopes):  # GET stream, DELETE session
            raise InsufficientScope(scopes=route.scopes)

        # The client's token stops here: the upstream request is built from an allowlist of
        # headers plus the route's own credential, narrowed to what this operation needs.
        credential = await self._credentials[route.path].headers(principal, required)
        response_headers = {"X-Request-Id": request[REQUEST_ID], **(_cors_headers(origin) if origin else {})}
        upstream = self._upstreams[route.path]
        return await upstream.forward(request, body, credential, response_headers, response_filter)

    # --- discovery --------------------------------------------------------------------------------

    def handle_metadata(self, request: web.Request, route_path: str) -> web.StreamResponse:
        """RFC 9728 metadata: public, no token, readable by browser-based clients (CORS)."""
        cors = {
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Allow-Methods": "GET, OPTIONS",
            "Access-Control-Allow-Headers": "*",
        }
        if request.method == "OPTIONS":
            return web.Response(status=204, headers=cors)
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, OPTIONS", **cors})
        route = self._root_route if route_path == "" else self._route_for_metadata(route_path)
        if route is None:
            return web.json_response({"error": "not_found"}, status=404, headers=cors)
        return web.json_response(
            prm_document(self.config, route),
            headers={**cors, "Cache-Control": "public, max-age=300"},
        )

    def _route_for_metadata(self, suffix: str) -> RouteConfig | None:
        # With public_url https://x.example/base the metadata path is .../base/<route>
        # (RFC 9728 §3.1); a proxy in front that strips /base may also send .../<route>.
        suffix = suffix.rstrip("/")
        if self._base_path and suffix.startswith(self._base_path + "/"):
            return self._routes.get(suffix[len(self._base_path) :]) or self._routes.get(suffix)
        return self._routes.get(suffix)


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def challenge_hint(route: RouteConfig, request: web.Request) -> tuple[str, ...]:
    """What a 401 asks for; 2026-07-28 headers name the operation (a hint, see challenge_scopes)."""
    version = request.headers.get("MCP-Protocol-Version")
    if request.method != "POST" or version is None or version in HANDSHAKE_VERSIONS:
        return route.scopes
    name = request.headers.get("Mcp-Name")
    decoded = decode_header_value(name) if name is not None else None
    return challenge_scopes(route.policy, request.headers.get("Mcp-Method"), decoded)


def parse_strictly(request: web.Request, body: bytes) -> McpPost:
    """The strict reading of the body (gateway.mcp.messages); the request id is kept for error bodies."""

    try:
        post = parse_post(body, lambda name: request.headers.getall(name, []))
    except McpRejected as exc:
        request[RPC_ID] = exc.rpc_id
        raise
    request[RPC_ID] = post.messages[0].id
    if not post.is_batch:  # for the request's log line and metrics labels
        message = post.messages[0]
        if message.method is not None:
            request[MCP_METHOD] = message.method
        if message.target is not None:
            request[TARGET] = message.target
    return post


def authorize(
    route: RouteConfig, principal: Principal, post: McpPost, metrics: GatewayMetrics | None = None
) -> tuple[str, ...]:
    """Decide every message; one denied message refuses the whole POST (a batch included).

    Returns every scope the allowed POST needs, for narrowing the downstream credential.
    """
    decisions = []
    for message in post.messages:
        decision = decide(route.policy, operation_of(message), principal.scopes)
        audit_decision(route, principal, message, decision)
        if metrics is not None:
            tool = message.target if message.target_kind == "tool" else None
            metrics.policy_decision(route, decision.allowed, tool)
        decisions.append(decision)
    verdict = combine(decisions)
    if verdict.allowed:
        return verdict.required
    if verdict.unconditional:
        raise PolicyDenied(detail="; ".join(verdict.rules))
    raise InsufficientScope(detail=", ".join(verdict.rules), scopes=verdict.challenge_scopes)


def _cors_preflight(request: web.Request, origin: str) -> web.Response:
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ", ".join(MCP_METHODS),
            "Access-Control-Allow-Headers": request.headers.get(
                "Access-Control-Request-Headers", "Authorization, Content-Type"
            ),
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        },
    )


def _cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": _CORS_EXPOSED,
        "Vary": "Origin",
    }


GATEWAY = web.AppKey("gateway", Gateway)


def build_app(config: GatewayConfig) -> web.Application:
    """The aiohttp application for one config; ``app[LIVE].reload(config)`` swaps in another."""
    gateway = Gateway(config)
    # A reloaded gateway keeps the metrics registry, so counters continue across reloads.
    live = LiveGateway(gateway, lambda new_config, previous: Gateway(new_config, previous.metrics))
    app = web.Application(
        # Gateway errors are rendered inside `live.handle`, with the config of the gateway that
        # serves the request (`error_responses`), so a reload changes them too.
        middlewares=[request_context],
        # Bodies are read by `read_body` with the route's own limit.
        client_max_size=max(route.max_body_bytes for route in config.routes),
    )
    app[GATEWAY] = gateway  # the gateway at start-up; app[LIVE].current is the one serving now
    app[LIVE] = live
    app[METRICS] = gateway.metrics
    app[LOGGING] = config.logging

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await live.start()
        yield
        await live.aclose()

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        ready = live.current.ready
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    app.cleanup_ctx.append(lifecycle)
    app.on_response_prepare.append(remember_prepared)
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_get("/readyz", readyz, allow_head=True)
    app.router.add_route("*", "/{path:.*}", live.handle)
    return app
