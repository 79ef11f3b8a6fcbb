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
from ..mcp.messages import HANDSHAKE_VERSIONS
from ..principal import Principal
from ..sealing import StateSealer

__all__ = ["CallerHandles", "in_session_era"]


def in_session_era(version: str | None) -> bool:
    """Whether a request's ``MCP-Protocol-Version`` is one with sessions (absent: 2025-03-26)."""
    return version is None or version in HANDSHAKE_VERSIONS


class CallerHandles:
    """Sealing and opening for one request's caller (``gateway.sealing``)."""

    __slots__ = ("_binding", "_sealer")

    def __init__(self, sealer: StateSealer, route: RouteConfig, principal: Principal) -> None:
        self._sealer = sealer
        self._binding = (route.path, principal.issuer, principal.subject)

    def open_session(self, request: web.Request) -> dict[str, str]:
        """The ``Mcp-Session-Id`` header to send upstream (none when the client sent none).

        In the session era every id a client sends must open for this caller, or 404. MCP
        2026-07-28 has no sessions and a server ignores the header (spec-notes J5), so none is
        sent upstream rather than forward a handle that was not checked.
        """
        sent = request.headers.getall("Mcp-Session-Id", [])
        if not sent or not in_session_era(request.headers.get("MCP-Protocol-Version")):
            return {}
        if len(sent) > 1:
            raise McpRejected("header_mismatch", detail="Mcp-Session-Id sent more than once")
        upstream_id = self._sealer.open("session", sent[0], self._binding)
        if upstream_id is None:
            raise SessionNotFound()
        return {"Mcp-Session-Id": upstream_id}

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

    def seal_task_id(self, upstream_id: str) -> str:
        """What the client sees in place of a task id the upstream gave."""
        return self._sealer.seal("task", upstream_id, self._binding)
