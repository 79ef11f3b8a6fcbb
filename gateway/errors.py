"""One exception tree for everything the gateway refuses.

Each leaf knows its HTTP status, its wire code (an OAuth error code from RFC 6750 §3.1, or a
JSON-RPC error code) and a short ``reason`` that is also the metrics label and the log field.
The ``reason`` is never sent to the client beyond the OAuth error code: operators read it in
the log, attackers learn nothing from it.
"""

from __future__ import annotations

from collections.abc import Sequence


class GatewayError(Exception):
    """Base of every error the error middleware renders."""

    status: int = 500
    reason: str = "internal_error"
    jsonrpc_code: int = -32603  # Internal error (JSON-RPC 2.0 §5.1)
    message: str = "Internal error"

    def __init__(self, reason: str | None = None, detail: str = "") -> None:
        if reason is not None:
            self.reason = reason
        # ``detail`` goes to the log only; it must never contain a token or secret.
        self.detail = detail
        super().__init__(self.reason if not detail else f"{self.reason}: {detail}")


# --- Authentication and authorization: rendered as a Bearer challenge -------------------------


class AuthError(GatewayError):
    """A failure that answers with ``WWW-Authenticate: Bearer …``."""

    oauth_error: str | None = None
    jsonrpc_code = -32001  # implementation-defined server error: not authorized
    message = "Unauthorized"

    def __init__(self, reason: str | None = None, detail: str = "", scopes: Sequence[str] = ()) -> None:
        super().__init__(reason, detail)
        # The scopes to name in the challenge (RFC 6750 §3 `scope`); filled in by the caller that
        # knows the route and operation.
        self.scopes = tuple(scopes)


class MissingToken(AuthError):
    """No credentials at all: 401 without an ``error`` parameter (RFC 6750 §3.1)."""

    status = 401
    reason = "missing_token"


class InvalidToken(AuthError):
    """A token was presented and is not acceptable: 401 ``invalid_token``."""

    status = 401
    oauth_error = "invalid_token"
    reason = "invalid_token"


class InvalidAuthRequest(AuthError):
    """Malformed authorization (two headers, empty Bearer, token in two places): 400."""

    status = 400
    oauth_error = "invalid_request"
    reason = "invalid_request"


class InsufficientScope(AuthError):
    """A valid token without the scopes this operation needs: 403 (step-up, MCP 2025-11-25)."""

    status = 403
    oauth_error = "insufficient_scope"
    reason = "insufficient_scope"
    message = "Insufficient scope"


class AuthUnavailable(AuthError):
    """The token cannot be checked right now (no keys could be loaded): fail closed with 503."""

    status = 503
    reason = "keys_unavailable"
    jsonrpc_code = -32603
    message = "Token validation temporarily unavailable"


# --- Everything else: rendered as a JSON-RPC error body ----------------------------------------


class RequestRejected(GatewayError):
    """A request the gateway refuses before it reaches the upstream; JSON-RPC error body."""

    status = 400
    jsonrpc_code = -32600  # Invalid Request (JSON-RPC 2.0 §5.1)
    message = "Invalid request"


class OriginForbidden(RequestRejected):
    """An ``Origin`` that is not allowed (MCP transports, DNS-rebinding defence): 403."""

    status = 403
    reason = "origin_forbidden"
    message = "Origin not allowed"


class PolicyDenied(RequestRejected):
    """No rule allows this operation and no scope would: a plain 403, not a step-up challenge."""

    status = 403
    reason = "policy_denied"
    jsonrpc_code = -32003  # implementation-defined server error: forbidden
    message = "Forbidden by gateway policy"


class BodyTooLarge(RequestRejected):
    status = 413
    reason = "body_too_large"
    message = "Request body too large"


class MethodNotAllowed(RequestRejected):
    status = 405
    reason = "method_not_allowed"
    message = "Method not allowed"

    def __init__(self, allowed: Sequence[str]) -> None:
        super().__init__()
        self.allowed = tuple(allowed)


class UpstreamError(RequestRejected):
    """The upstream could not be reached or failed mid-request: 502."""

    status = 502
    reason = "upstream_unavailable"
    jsonrpc_code = -32000  # implementation-defined server error (JSON-RPC 2.0 §5.1)
    message = "Upstream MCP server unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    reason = "upstream_timeout"
    message = "Upstream MCP server timed out"
