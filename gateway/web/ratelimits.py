"""The pipeline's rate-limit steps: which limits a request counts against, keyed on what, and the
refusal (``gateway.ratelimit`` decides; this module knows requests).

Two moments:

- ``admit_unauthenticated``: a request whose token failed (not one without a token: that one
  must get the 401 that starts OAuth discovery) counts against the route's
  ``unauthenticated_limits`` (keyed on the source address), and is answered 429 instead of 401 once
  they are spent; while they are spent, a token the gateway has not accepted before is refused
  before it is checked at all, so token guessing costs neither signature checks nor calls to
  the authorization server (``check_unauthenticated``).
- ``admit``: an authorized request counts against the route's ``limits`` and the ``limits`` of
  every rule that allowed one of its messages, keyed on who calls and what (``request_keys``).
  Nothing reaches the upstream unless every limit admits it; a concurrency slot is held until
  the answer ends (``Admission.release``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import structlog
from aiohttp import web

from ..config import RouteConfig
from ..errors import RateLimited, RateLimitUnavailable
from ..mcp.messages import McpMessage
from ..mcp.policy import Decision, Rule
from ..metrics import GatewayMetrics
from ..principal import Principal
from ..ratelimit.limiter import Admission, RateLimiter
from ..ratelimit.spec import KeyField, LimitSpec, RateLimitsConfig

log = structlog.get_logger("gateway.audit")


def source_address(request: web.Request) -> str:
    """The TCP peer: forwarded-for headers are the client's to write, so they are never read."""
    return request.remote or ""


def limits_named(config: RateLimitsConfig, names: Sequence[str]) -> tuple[LimitSpec, ...]:
    """The limits ``names`` refer to, each once, in order (the config checked that they exist)."""
    if not names:
        return ()
    found = (config.get(name) for name in dict.fromkeys(names))
    return tuple(limit for limit in found if limit is not None)


def request_limits(
    config: RateLimitsConfig, route: RouteConfig, decisions: Iterable[Decision] = ()
) -> tuple[LimitSpec, ...]:
    """The route's limits, then those of every rule that allowed a message of the request."""
    names = list(route.limits)
    for decision in decisions:
        for rule in decision.rules:
            if isinstance(rule, Rule) and rule.limits:
                names += rule.limits
    return limits_named(config, names)


def request_keys(
    route: RouteConfig, principal: Principal, method: str, message: McpMessage | None, request: web.Request
) -> dict[KeyField, str]:
    """The facts a counter may be keyed on, for one request (a tool only for ``tools/call``)."""
    target = message.target if message is not None else None
    return {
        "issuer": principal.issuer,
        "subject": principal.subject,
        "client_id": principal.client_id or "",
        "route": route.path,
        "tool": target.identifier if target is not None and target.kind == "tool" else "",
        "method": method,
        "source_address": source_address(request),
    }


def _refusal(
    admission: Admission, route: RouteConfig, metrics: GatewayMetrics
) -> RateLimited | RateLimitUnavailable:
    limit = admission.refused_by
    name = limit.name if limit is not None else ""
    metrics.rate_limited(route.path, name, unavailable=admission.unavailable)
    if admission.unavailable:
        return RateLimitUnavailable(name)
    return RateLimited(name, admission.retry_after_s, admission.headers)


async def admit(
    limiter: RateLimiter,
    limits: tuple[LimitSpec, ...],
    keys: Mapping[KeyField, str],
    route: RouteConfig,
    metrics: GatewayMetrics,
) -> Admission | None:
    """Count one authorized request; raises the 429 (or the fail-closed 503) with the upstream
    untouched. None: the request counts against no limit."""
    if not limits:
        return None
    admission = await limiter.acquire(limits, keys)
    if not admission.allowed:
        refused = _refusal(admission, route, metrics)
        log.warning(
            "rate_limited",
            subject=keys.get("subject"),
            client_id=keys.get("client_id") or None,
            route=route.path,
            method=keys.get("method"),
            tool=keys.get("tool") or None,
            limit=refused.limit,
            retry_after_s=refused.retry_after_s,
            unavailable=admission.unavailable,
        )
        raise refused
    return admission


async def check_unauthenticated(
    limiter: RateLimiter,
    route: RouteConfig,
    config: RateLimitsConfig,
    request: web.Request,
    token_known: bool,
    metrics: GatewayMetrics,
) -> None:
    """Before authenticating: with the route's unauthenticated limits spent for this address, a
    token not accepted before is refused (429) unchecked. One accepted before (cached) goes on:
    callers behind the same address as a guesser keep working."""
    limits = limits_named(config, route.unauthenticated_limits)
    if not limits or token_known:
        return
    keys: dict[KeyField, str] = {"route": route.path, "source_address": source_address(request)}
    for limit in limits:
        if await limiter.exhausted(limit, keys):
            metrics.rate_limited(route.path, limit.name, unavailable=False)
            raise RateLimited(limit.name, 1)


async def admit_unauthenticated(
    limiter: RateLimiter,
    route: RouteConfig,
    config: RateLimitsConfig,
    request: web.Request,
    metrics: GatewayMetrics,
) -> None:
    """A request whose authentication failed counts against the route's unauthenticated limits;
    past them, its answer is the 429 (raised here) instead of the 401."""
    limits = limits_named(config, route.unauthenticated_limits)
    if not limits:
        return
    keys: dict[KeyField, str] = {"route": route.path, "source_address": source_address(request)}
    admission = await limiter.acquire(limits, keys)
    if not admission.allowed:
        raise _refusal(admission, route, metrics)
