"""Where the gateway's code opens spans: small hooks that cost one context-variable read when
tracing is off.

The request being traced (``ActiveTrace``, implemented by ``gateway.telemetry.tracing``) is in a
context variable for the length of its server span; every hook here asks it for a span, and
without one (tracing off, or code that runs outside any request: the JWKS refresh task) returns
``NO_SPAN``, one shared object whose every method does nothing. So the request path of a gateway
without ``tracing:`` creates no span object and attaches no context, and this module imports no
OpenTelemetry.

A span scope is a context manager: an exception leaving it marks the span failed
(``error.type``: a ``GatewayError``'s reason, otherwise the exception's class name) and ends it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal, Protocol, TypeAlias

from .attributes import AttributeValue

if TYPE_CHECKING:
    from aiohttp import web

    from ..config import RouteConfig
    from ..mcp.answers import MessageRewriter
    from ..mcp.messages import McpMessage
    from ..mcp.policy import Decision

__all__ = [
    "NO_SPAN",
    "ActiveTrace",
    "DecisionScope",
    "ServerTracing",
    "SpanScope",
    "UpstreamScope",
    "activate",
    "calling_upstream",
    "deactivate",
    "deciding",
    "span",
]

SpanKindName: TypeAlias = Literal["internal", "client"]


class SpanScope(Protocol):
    """One child span, open while the ``with`` block runs."""

    def __enter__(self) -> SpanScope: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def set(self, key: str, value: AttributeValue) -> None:
        """An attribute learned while the span is open (a result, whether a cache answered)."""

    def fail(self, error_type: str) -> None:
        """The operation failed without raising (a load that keeps the cached keys)."""


class DecisionScope(SpanScope, Protocol):
    def __enter__(self) -> DecisionScope: ...

    def decided(self, decision: Decision, observed: Decision | None) -> None:
        """The policy's decision (and the observed rules')."""


class UpstreamScope(SpanScope, Protocol):
    """The CLIENT span toward the upstream: its W3C trace context to send along, and what watches
    the answer (an error result marks the span, and the request's)."""

    def __enter__(self) -> UpstreamScope: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def watches(self) -> tuple[MessageRewriter, ...]: ...


class ActiveTrace(Protocol):
    """The request being traced, as the hooks see it."""

    def child(self, name: str, kind: SpanKindName, attributes: Mapping[str, AttributeValue]) -> SpanScope: ...

    def decision(self, message: McpMessage) -> DecisionScope: ...

    def upstream(self, http_method: str) -> UpstreamScope: ...


class ServerTracing(Protocol):
    """What the pipeline calls when a gateway traces: the server span around one MCP request."""

    async def serve(
        self, request: web.Request, route: RouteConfig, handling: Awaitable[web.StreamResponse]
    ) -> web.StreamResponse: ...


class _NoSpan:
    """Every scope at once, doing nothing: what the hooks return without an active trace."""

    __slots__ = ()
    headers: Mapping[str, str] = {}
    watches: tuple[MessageRewriter, ...] = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def set(self, key: str, value: AttributeValue) -> None:
        pass

    def fail(self, error_type: str) -> None:
        pass

    def decided(self, decision: Decision, observed: Decision | None) -> None:
        pass


NO_SPAN: Final = _NoSpan()
_ACTIVE: ContextVar[ActiveTrace | None] = ContextVar("gateway_active_trace", default=None)
_NO_ATTRIBUTES: Mapping[str, AttributeValue] = {}


def activate(trace: ActiveTrace) -> Token[ActiveTrace | None]:
    """Make ``trace`` the current request's; returns the token ``deactivate`` takes."""
    return _ACTIVE.set(trace)


def deactivate(token: Token[ActiveTrace | None]) -> None:
    _ACTIVE.reset(token)


def span(
    name: str, attributes: Mapping[str, AttributeValue] = _NO_ATTRIBUTES, *, kind: SpanKindName = "internal"
) -> SpanScope:
    """A child span of the current request's, or ``NO_SPAN``."""
    trace = _ACTIVE.get()
    return NO_SPAN if trace is None else trace.child(name, kind, attributes)


def deciding(message: McpMessage) -> DecisionScope:
    """The ``decide policy`` span of one message, or ``NO_SPAN``."""
    trace = _ACTIVE.get()
    return NO_SPAN if trace is None else trace.decision(message)


def calling_upstream(http_method: str) -> UpstreamScope:
    """The CLIENT span of the forwarded request, or ``NO_SPAN`` (no headers, no watches)."""
    trace = _ACTIVE.get()
    return NO_SPAN if trace is None else trace.upstream(http_method)
