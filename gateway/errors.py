"""Everything the gateway refuses, as one exception tree that renders itself.

Each error knows its HTTP status, its wire code (an OAuth error code from RFC 6750 §3.1, or a
JSON-RPC error code), the headers its answer carries and a short ``reason`` that is also the
metrics label and the log field. The ``reason`` is never sent to the client beyond the OAuth
error code: operators read it in the log, attackers learn nothing from it. Reasons are a closed
set (``Reason``), since they are metric labels.

::

    GatewayError                     500  the base; rendered by web.middleware.error_responses
    ├── AuthError                         answers with WWW-Authenticate: Bearer … (RFC 6750 §3)
    │   ├── TokenRejected                 counted in gateway_token_rejections_total
    │   │   ├── MissingToken         401  no credentials at all (no ``error`` parameter)
    │   │   ├── InvalidToken         401  invalid_token
    │   │   │   └── InvalidDpopProof 401  invalid_dpop_proof, with the DPoP challenge (RFC 9449)
    │   │   │       └── DpopNonceRequired 401  use_dpop_nonce, with a fresh DPoP-Nonce (RFC 9449 §9)
    │   │   └── InvalidAuthRequest   400  invalid_request
    │   ├── InsufficientScope        403  insufficient_scope (step-up)
    │   └── AuthUnavailable          503  keys could not be loaded (Retry-After)
    │       └── IntrospectionUnavailable  the RFC 7662 endpoint gave no usable answer
    ├── RequestRejected                   refused before the upstream sees it; JSON-RPC body
    │   ├── OriginForbidden          403
    │   ├── PolicyDenied             403  no rule allows it and no scope would
    │   ├── BodyTooLarge             413
    │   ├── BodyTimeout              408  the body did not arrive within limits.body_timeout_s
    │   ├── MalformedBody            400  the body's framing (chunked, length) is broken
    │   ├── MethodNotAllowed         405  (Allow)
    │   ├── SessionNotFound          404  a session id that does not open for this caller
    │   ├── TaskNotFound             400  a task id that does not open for this caller
    │   └── McpRejected              400  a body the strict MCP reading refuses
    ├── CredentialFailure                 no downstream credential for this request
    │   ├── ExchangeUnavailable      503  the AS gave no usable answer (Retry-After)
    │   ├── ExchangeRefused          403  the AS refused the RFC 8693 exchange
    │   └── MintingError             500
    ├── UpstreamError                502  the upstream could not be reached or failed mid-request
    │   └── UpstreamTimeout          504
    ├── UpstreamShed                 503  not sent, to spare a failing or full upstream (Retry-After)
    │   ├── CircuitOpen                   its circuit is open (gateway.upstream.resilience)
    │   └── UpstreamBusy                  its max_concurrent_requests are all in use
    ├── Overloaded                   503  a process limit is reached (Retry-After)
    ├── ShuttingDown                 503  the shutdown deadline passed (Retry-After)
    ├── RateLimited                  429  a configured rate limit (Retry-After, RateLimit headers)
    ├── RateLimitUnavailable         503  a fail-closed limit's store is unreachable (Retry-After)
    ├── AuditUnavailable             503  the audit trail cannot record, and ``on_failure: deny``
    └── ToolPinBlocked               403  the tool's definition drifted from its pin (``pinning``)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final, Protocol, TypeAlias

# The reasons live in gateway.reasons; `X as X` re-exports them (mypy --strict) from here, where
# the errors that carry them are.
from .reasons import DpopReason as DpopReason
from .reasons import McpReason as McpReason
from .reasons import Reason as Reason
from .reasons import ShedReason as ShedReason
from .reasons import TokenReason as TokenReason
from .reasons import UpstreamReason as UpstreamReason


class Challenge(Protocol):
    """Builds a route's ``WWW-Authenticate: Bearer`` value (web.metadata.route_challenge)."""

    def __call__(self, scopes: tuple[str, ...], error: str | None) -> str: ...


class GatewayError(Exception):
    """Base of every error the error middleware renders."""

    status: int = 500
    reason: Reason = "internal_error"
    jsonrpc_code: int = -32603  # Internal error (JSON-RPC 2.0 §5.1)
    message: str = "Internal error"
    # Seconds for a ``Retry-After`` header (RFC 9110 §10.2.3), or None for no header.
    retry_after_s: int | None = None
    # The connection is closed after the answer: what is left of the request is not read.
    closes_connection: bool = False

    def __init__(self, reason: Reason | None = None, detail: str = "") -> None:
        if reason is not None:
            self.reason = reason
        # ``detail`` goes to the log only; it must never contain a token or secret.
        self.detail = detail
        super().__init__(self.reason if not detail else f"{self.reason}: {detail}")

    def headers(self, challenge: Challenge | None) -> dict[str, str]:
        """The headers of this error's answer; ``challenge`` is the route's, when there is one."""
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, self.retry_after_s))}


# --- Authentication and authorization: rendered as a Bearer challenge -------------------------


class AuthError(GatewayError):
    """A failure that answers with ``WWW-Authenticate: Bearer …``."""

    oauth_error: str | None = None
    jsonrpc_code = -32001  # implementation-defined server error: not authorized
    message = "Unauthorized"

    def __init__(self, reason: Reason | None = None, detail: str = "", scopes: Sequence[str] = ()) -> None:
        super().__init__(reason, detail)
        # The scopes to name in the challenge (RFC 6750 §3 `scope`); filled in by the caller that
        # knows the route and operation. Empty: the challenge names the route's scopes.
        self.scopes = tuple(scopes)

    def headers(self, challenge: Challenge | None) -> dict[str, str]:
        headers = super().headers(challenge)
        if challenge is not None:  # no route, no resource metadata to point at
            headers["WWW-Authenticate"] = challenge(self.scopes, self.oauth_error)
        return headers


class TokenRejected(AuthError):
    """The request's token (or its absence) is not acceptable: counted per reason."""

    reason: TokenReason

    def __init__(
        self, reason: TokenReason | None = None, detail: str = "", scopes: Sequence[str] = ()
    ) -> None:
        super().__init__(reason, detail, scopes)


class MissingToken(TokenRejected):
    """No credentials at all: 401 without an ``error`` parameter (RFC 6750 §3.1)."""

    status = 401
    reason: TokenReason = "missing_token"


class InvalidToken(TokenRejected):
    """A token was presented and is not acceptable: 401 ``invalid_token``."""

    status = 401
    oauth_error = "invalid_token"
    reason: TokenReason = "invalid_token"


class InvalidDpopProof(InvalidToken):
    """A DPoP proof missing, invalid or not matching the token (RFC 9449 §7.1): 401 with the
    ``DPoP`` challenge (web.metadata.route_challenge keys it on the error code)."""

    oauth_error = "invalid_dpop_proof"
    reason: TokenReason = "dpop_proof_malformed"

    def __init__(self, reason: DpopReason, detail: str = "") -> None:
        super().__init__(reason, detail)


class DpopNonceRequired(InvalidDpopProof):
    """A proof without a valid server nonce on a ``dpop_nonce`` route (RFC 9449 §9): 401
    ``use_dpop_nonce`` with the DPoP challenge and a fresh nonce in ``DPoP-Nonce`` to retry with."""

    oauth_error = "use_dpop_nonce"
    reason: TokenReason = "dpop_nonce_missing"

    def __init__(self, reason: DpopReason, nonce: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.nonce = nonce

    def headers(self, challenge: Challenge | None) -> dict[str, str]:
        return {**super().headers(challenge), "DPoP-Nonce": self.nonce}


class InvalidAuthRequest(TokenRejected):
    """Malformed authorization (two headers, empty Bearer, token in two places): 400."""

    status = 400
    oauth_error = "invalid_request"
    reason: TokenReason = "invalid_request"


class InsufficientScope(AuthError):
    """A valid token without the scopes this operation needs: 403 (step-up, MCP 2025-11-25)."""

    status = 403
    oauth_error = "insufficient_scope"
    reason = "insufficient_scope"
    message = "Insufficient scope"


class AuthUnavailable(AuthError):
    """The token cannot be checked right now (no keys could be loaded): fail closed with 503."""

    status = 503
    reason: Reason = "keys_unavailable"
    jsonrpc_code = -32603
    message = "Token validation temporarily unavailable"
    retry_after_s = 5


class IntrospectionUnavailable(AuthUnavailable):
    """The introspection endpoint gave no usable answer (down, 5xx, malformed): 503, fail closed."""

    reason = "introspection_unavailable"


# --- Refused before the upstream: rendered as a JSON-RPC error body ---------------------------


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
    """A request body over the route's ``max_body_bytes``: 413."""

    status = 413
    reason = "body_too_large"
    message = "Request body too large"
    closes_connection = True  # the rest of the body is never read


class BodyTimeout(RequestRejected):
    """The request body did not arrive within ``limits.body_timeout_s``: 408 (RFC 9110 §15.5.9)."""

    status = 408
    reason = "body_timeout"
    message = "Request body timed out"
    closes_connection = True


class MalformedBody(RequestRejected):
    """The body's framing is broken (a bad chunk, fewer bytes than Content-Length): 400."""

    reason = "malformed_body"
    message = "Malformed request body"
    closes_connection = True


class MethodNotAllowed(RequestRejected):
    """An HTTP method the MCP transport does not use: 405 with ``Allow`` (RFC 9110 §15.5.6)."""

    status = 405
    reason = "method_not_allowed"
    message = "Method not allowed"

    def __init__(self, allowed: Sequence[str]) -> None:
        super().__init__()
        self.allowed = tuple(allowed)

    def headers(self, challenge: Challenge | None) -> dict[str, str]:
        return {**super().headers(challenge), "Allow": ", ".join(self.allowed)}


class SessionNotFound(RequestRejected):
    """An ``Mcp-Session-Id`` that does not open for this caller: forged, from another gateway's
    key, or another user's. One answer for all, the one an SDK server gives for an unknown
    session (404, -32600 "Session not found"), so nobody learns that a session exists."""

    status = 404
    reason = "unknown_session"
    message = "Session not found"


class TaskNotFound(RequestRejected):
    """A ``taskId`` that does not open for this caller; answered as MCP 2025-11-25 tasks answer
    an unknown task (-32602 Invalid params), whoever's task it may be."""

    reason = "unknown_task"
    jsonrpc_code = -32602
    message = "Invalid params: unknown task"


PARSE_ERROR: Final = -32700  # JSON-RPC 2.0 §5.1
INVALID_REQUEST: Final = -32600  # JSON-RPC 2.0 §5.1
INVALID_PARAMS: Final = -32602  # JSON-RPC 2.0 §5.1
HEADER_MISMATCH: Final = -32020  # MCP 2026-07-28 transports, "Server Validation"

_CODE_MESSAGES: Final[Mapping[int, str]] = MappingProxyType(
    {
        PARSE_ERROR: "Parse error",
        INVALID_REQUEST: "Invalid Request",
        INVALID_PARAMS: "Invalid params",
        HEADER_MISMATCH: "Header mismatch",
    }
)

REASON_CODES: Final[Mapping[McpReason, int]] = MappingProxyType(
    {
        "empty_body": INVALID_REQUEST,
        "invalid_json": PARSE_ERROR,
        "too_deep": INVALID_REQUEST,
        "batch_not_allowed": INVALID_REQUEST,
        "empty_batch": INVALID_REQUEST,
        "invalid_batch": INVALID_REQUEST,
        "duplicate_id": INVALID_REQUEST,
        "invalid_message": INVALID_REQUEST,
        "method_case_variant": INVALID_REQUEST,
        "method_not_printable_ascii": INVALID_REQUEST,
        "response_not_allowed": INVALID_REQUEST,
        "invalid_params": INVALID_PARAMS,
        "invalid_name": INVALID_PARAMS,
        "invalid_uri": INVALID_PARAMS,
        "ambiguous_uri": INVALID_PARAMS,  # a URI whose meaning depends on the decoder (mcp.uris)
        "invalid_ref": INVALID_PARAMS,
        "header_mismatch": HEADER_MISMATCH,
    }
)
"""Every ``McpRejected.reason`` and the JSON-RPC code it is answered with."""

RpcId: TypeAlias = str | int
"""A JSON-RPC request id (JSON-RPC 2.0 §4: a string or a number; MCP forbids null)."""


class McpRejected(RequestRejected):
    """A POST body refused before any decision; HTTP 400 with a JSON-RPC error body.

    ``message`` is the fixed JSON-RPC text for the code: nothing from the body is ever echoed.
    ``rpc_id`` is the id of the offending message when it could be read, for the error body.
    """

    status = 400
    reason: McpReason

    def __init__(self, reason: McpReason, rpc_id: RpcId | None = None, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.jsonrpc_code = REASON_CODES[reason]
        self.message = _CODE_MESSAGES[self.jsonrpc_code]
        self.rpc_id = rpc_id


# --- No downstream credential: rendered as a JSON-RPC error body ------------------------------


class CredentialFailure(GatewayError):
    """The route's downstream credential could not be obtained; the request is not forwarded."""


DEFAULT_RETRY_AFTER_S: Final = 5


class ExchangeUnavailable(CredentialFailure):
    """No usable answer from the AS (unreachable, timeout, 5xx, malformed): 503, retry later.

    ``retry_after_s`` is the value for the response's ``Retry-After`` header (RFC 9110 §10.2.3).
    """

    status = 503
    reason = "exchange_unavailable"
    jsonrpc_code = -32000  # implementation-defined server error (JSON-RPC 2.0 §5.1)
    message = "Upstream credential temporarily unavailable"
    retry_after_s: int

    def __init__(self, detail: str = "", *, retry_after_s: int = DEFAULT_RETRY_AFTER_S) -> None:
        super().__init__(None, detail)
        self.retry_after_s = retry_after_s


class ExchangeRefused(CredentialFailure):
    """The AS answered the exchange with an RFC 6749 §5.2 error (400/401): 403.

    ``error_code`` is the AS's ``error`` (e.g. ``invalid_target``), ``as_status`` its HTTP status
    and ``description`` its ``error_description``, sanitised and cut to 200 characters (or None).
    """

    status = 403
    reason = "exchange_refused"
    jsonrpc_code = -32003  # implementation-defined server error: forbidden
    message = "Upstream credential refused by the authorization server"

    def __init__(self, error_code: str, as_status: int, description: str | None = None) -> None:
        super().__init__(None, f"as_error={error_code} as_status={as_status}")
        self.error_code = error_code
        self.as_status = as_status
        self.description = description


class MintingError(CredentialFailure):
    """A downstream token cannot be minted for this caller: the request is not forwarded.

    ``detail`` goes to the log only and never contains a token.
    """

    status = 500
    reason = "minting_failed"


# --- The upstream and the process -------------------------------------------------------------


class UpstreamError(GatewayError):
    """The upstream could not be reached or failed mid-request: 502."""

    status = 502
    reason: UpstreamReason = "upstream_unavailable"
    jsonrpc_code = -32000  # implementation-defined server error (JSON-RPC 2.0 §5.1)
    message = "Upstream MCP server unavailable"

    def __init__(self, reason: UpstreamReason | None = None, detail: str = "") -> None:
        super().__init__(reason, detail)


class UpstreamTimeout(UpstreamError):
    """The upstream sent no response headers within the route's ``response_timeout_s``: 504."""

    status = 504
    reason = "upstream_timeout"
    message = "Upstream MCP server timed out"


class UpstreamShed(GatewayError):
    """The request was not sent, to spare an upstream that is failing or full: 503, retry later.

    ``retry_after_s``: when it may be worth trying again (RFC 9110 §10.2.3), at least 1.
    """

    status = 503
    reason: ShedReason
    jsonrpc_code = -32000  # implementation-defined server error (JSON-RPC 2.0 §5.1)
    message = "Upstream MCP server unavailable"
    retry_after_s: int

    def __init__(self, detail: str = "", *, retry_after_s: int = 1) -> None:
        super().__init__(None, detail)
        self.retry_after_s = max(1, retry_after_s)


class CircuitOpen(UpstreamShed):
    """The upstream's connects kept failing (or its health check did): it is left alone for now."""

    reason: ShedReason = "upstream_circuit_open"


class UpstreamBusy(UpstreamShed):
    """The route's ``max_concurrent_requests`` are all in use (bulkhead)."""

    reason: ShedReason = "upstream_busy"
    message = "Upstream MCP server busy"


class Overloaded(GatewayError):
    """A process limit is reached (streams, buffered bodies): 503 with Retry-After, at once.

    ``reason``: ``too_many_streams`` or ``body_budget_exhausted``.
    """

    status = 503
    reason = "too_many_streams"
    jsonrpc_code = -32000  # implementation-defined server error (JSON-RPC 2.0 §5.1)
    message = "Gateway overloaded, retry later"
    retry_after_s = 1


class ShuttingDown(GatewayError):
    """The shutdown deadline passed before the upstream answered this request."""

    status = 503
    reason = "shutting_down"
    jsonrpc_code = -32000  # implementation-defined server error (JSON-RPC 2.0 §5.1)
    message = "Gateway is shutting down"
    retry_after_s = 1


class RateLimited(GatewayError):
    """A rate limit, quota or concurrency limit refused the request: 429 with ``Retry-After`` and
    the IETF ``RateLimit-Policy`` / ``RateLimit`` headers; the JSON-RPC message says when to retry,
    so a model reading it can wait instead of retrying at once."""

    status = 429
    reason = "rate_limited"
    jsonrpc_code = -32029  # implementation-defined server error (JSON-RPC 2.0 §5.1): rate limited
    message = "Rate limited"

    def __init__(
        self, limit: str, retry_after_s: int, limit_headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail=f"limit {limit}")
        self.limit = limit
        self.retry_after_s = max(1, retry_after_s)
        self.message = f"Rate limited ({limit}): retry after {self.retry_after_s} s"
        self.limit_headers = dict(limit_headers or {})

    def headers(self, challenge: Challenge | None) -> dict[str, str]:
        return {**self.limit_headers, **super().headers(challenge)}


class RateLimitUnavailable(GatewayError):
    """A ``fail: closed`` limit whose shared store (Redis) cannot be reached: 503, nothing forwarded."""

    status = 503
    reason = "rate_limit_unavailable"
    jsonrpc_code = -32000  # implementation-defined server error (JSON-RPC 2.0 §5.1)
    message = "Rate limit store unavailable, retry later"
    retry_after_s = 1

    def __init__(self, limit: str) -> None:
        super().__init__(detail=f"limit {limit}")
        self.limit = limit


class AuditUnavailable(GatewayError):
    """``audit: {on_failure: deny}`` and the trail cannot record: refused, nothing forwarded
    (fail closed: a decision or credential the trail would not hold is not acted on)."""

    status = 503
    reason = "audit_unavailable"
    jsonrpc_code = -32000  # implementation-defined server error (JSON-RPC 2.0 §5.1)
    message = "Audit trail unavailable: the gateway cannot record this request, so it is refused"
    retry_after_s = 5


class ToolPinBlocked(GatewayError):
    """``pinning: {mode: enforce}``: a call to a tool whose definition drifted from the lock, or
    that the lock does not hold, is refused before the upstream sees it (``gateway.pinning``)."""

    status = 403
    reason = "tool_definition_changed"
    jsonrpc_code = -32003  # implementation-defined server error: forbidden

    def __init__(self, tool: str, drift: tuple[str, ...]) -> None:
        super().__init__(detail=f"{tool[:100]!r}: {', '.join(drift)}")
        shown = tool if len(tool) <= 100 else tool[:100] + "..."
        why = "it is not in the route's tool lock" if drift == ("new_tool",) else "its definition changed"
        self.message = (
            f"Tool {shown!r} is blocked by the gateway: {why} since it was pinned ({', '.join(drift)}); "
            "an operator must review it and update the lock"
        )


ERROR_CLASSES: Final[tuple[type[GatewayError], ...]] = (
    GatewayError,
    AuthError,
    TokenRejected,
    MissingToken,
    InvalidToken,
    InvalidDpopProof,
    DpopNonceRequired,
    InvalidAuthRequest,
    InsufficientScope,
    AuthUnavailable,
    IntrospectionUnavailable,
    RequestRejected,
    OriginForbidden,
    PolicyDenied,
    BodyTooLarge,
    BodyTimeout,
    MalformedBody,
    MethodNotAllowed,
    SessionNotFound,
    TaskNotFound,
    McpRejected,
    CredentialFailure,
    ExchangeUnavailable,
    ExchangeRefused,
    MintingError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamShed,
    CircuitOpen,
    UpstreamBusy,
    Overloaded,
    ShuttingDown,
    RateLimited,
    RateLimitUnavailable,
    AuditUnavailable,
    ToolPinBlocked,
)
"""Every class in the tree, for the test that the docstring's drawing lists each one."""
