"""The state handles of one caller on one route: opened on the way in, sealed on the way out.

The upstream's ``Mcp-Session-Id`` and task ids reach the client sealed to (route, issuer,
subject) by ``gateway.sealing``; whatever the client sends back must open for the same
caller, or the request is answered as for an unknown session or task and the upstream sees
nothing. A caller's own handles work from any gateway process that holds the key.
"""

from __future__ import annotations

from aiohttp import web

from ..config import RouteConfig
from ..errors import McpRejected, SessionNotFound, TaskNotFound
from ..mcp.handles import NotAHandle, rewrite_body_task_ids
from ..mcp.messages import in_session_era
from ..principal import Principal
from ..sealing import HandleKind, StateSealer

__all__ = ["CallerHandles"]


# The request headers that carry a sealed handle, and the kind each was sealed as.
_RESUMABLE_HANDLES: tuple[tuple[str, HandleKind], ...] = (
    ("Mcp-Session-Id", "session"),
    ("Last-Event-ID", "event"),
)


class CallerHandles:
    """Sealing and opening for one request's caller (``gateway.sealing``)."""

    __slots__ = ("_binding", "_sealer")

    def __init__(self, sealer: StateSealer, route: RouteConfig, principal: Principal) -> None:
        self._sealer = sealer
        self._binding = (route.path, principal.issuer, principal.subject)

    def open_session(self, request: web.Request) -> dict[str, str]:
        """The ``Mcp-Session-Id`` and ``Last-Event-ID`` headers to send upstream: the upstream's
        own, for the sealed ones the client sent (none when it sent none).

        In the session era every one a client sends must open for this caller, or 404 as for an
        unknown session: a session, and the events of a stream it resumes, are its owner's. MCP
        2026-07-28 has neither sessions nor resumption and a server ignores both headers
        (spec-notes J5), so neither is sent upstream rather than forward a handle not checked.
        """
        if not in_session_era(request.headers.get("MCP-Protocol-Version")):
            return {}
        upstream: dict[str, str] = {}
        for header, kind in _RESUMABLE_HANDLES:
            sent = request.headers.getall(header, [])
            if not sent:
                continue
            if len(sent) > 1:
                raise McpRejected("header_mismatch", detail=f"{header} sent more than once")
            upstream_id = self._sealer.open(kind, sent[0], self._binding)
            if upstream_id is None:
                raise SessionNotFound(detail=f"{header} does not open for this caller")
            upstream[header] = upstream_id
        return upstream

    def seal_session(self, upstream_id: str) -> str:
        """What the client sees in place of the upstream's ``Mcp-Session-Id``."""
        return self._sealer.seal("session", upstream_id, self._binding)

    def open_task_ids(self, body: bytes) -> bytes:
        """``body`` with every ``taskId`` opened to the upstream's own; 400 if one does not open."""
        try:
            return rewrite_body_task_ids(body, self._open_task_id)
        except NotAHandle as exc:
            raise TaskNotFound(detail=str(exc)) from None

    def _open_task_id(self, sealed: str) -> str:
        upstream_id = self._sealer.open("task", sealed, self._binding)
        if upstream_id is None:
            raise TaskNotFound()
        return upstream_id

    def seal_event_id(self, upstream_id: str) -> str:
        """What the client sees in place of an SSE event id (and sends back as Last-Event-ID)."""
        return self._sealer.seal("event", upstream_id, self._binding)

    def seal_task_id(self, upstream_id: str) -> str:
        """What the client sees in place of a task id the upstream gave."""
        return self._sealer.seal("task", upstream_id, self._binding)
