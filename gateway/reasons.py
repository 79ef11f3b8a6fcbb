"""Every ``reason`` an error can carry, as closed ``Literal`` sets (``gateway.errors`` re-exports them).

A reason is the metrics label and the log field of a refusal, so the set is closed and typed:
``mypy`` refuses a reason nobody listed here.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

__all__ = ["DpopReason", "McpReason", "Reason", "ShedReason", "TokenReason", "UpstreamReason"]

DpopReason: TypeAlias = Literal[
    "dpop_proof_missing", "dpop_proof_duplicate", "dpop_proof_malformed", "dpop_bad_typ",
    "dpop_alg_not_allowed", "dpop_private_key", "dpop_bad_signature", "dpop_htm_mismatch",
    "dpop_htu_mismatch", "dpop_iat_out_of_window", "dpop_replayed", "dpop_replay_cache_full",
    "dpop_ath_mismatch", "dpop_jkt_mismatch", "dpop_unbound_token", "dpop_bound_token_as_bearer",
    "dpop_required", "dpop_nonce_missing", "dpop_nonce_invalid", "dpop_nonce_expired",
]  # fmt: skip
"""Why a DPoP proof (RFC 9449 §4.3), or its absence, is refused (``InvalidDpopProof``)."""

TokenReason: TypeAlias = Literal[
    "missing_token",
    "invalid_token",
    "invalid_request",
    # the bearer token as presented (RFC 6750 §2)
    "duplicate_authorization_header",
    "empty_bearer_token",
    "token_in_query",
    "token_in_query_and_header",
    "unsupported_auth_scheme",
    # the JWT and its claims (RFC 9068, RFC 7519)
    "malformed",
    "alg_not_allowed",
    "bad_typ",
    "refused_header_param",
    "unknown_issuer",
    "unknown_kid",
    "bad_signature",
    "bad_issuer",
    "bad_audience",
    "missing_audience",
    "missing_claim",
    "bad_claim",
    "expired",
    "not_yet_valid",
    "issued_in_future",
    # introspection (RFC 7662)
    "inactive",
    "bad_token_type",
    "sender_constrained",
    DpopReason,  # a nested Literal is flattened (PEP 586)
]
"""Why a presented token (or its absence) is refused."""

McpReason: TypeAlias = Literal[
    "empty_body",
    "invalid_json",
    "too_deep",
    "batch_not_allowed",
    "empty_batch",
    "invalid_batch",
    "duplicate_id",
    "invalid_message",
    "method_case_variant",
    "method_not_printable_ascii",
    "response_not_allowed",
    "invalid_params",
    "invalid_name",
    "invalid_uri",
    "ambiguous_uri",
    "invalid_ref",
    "header_mismatch",
]
"""Why the strict MCP reading refuses a POST body (``McpRejected``)."""

UpstreamReason: TypeAlias = Literal[
    "upstream_unavailable",
    "upstream_timeout",
    "upstream_connect_timeout",
    "upstream_failed",
    "upstream_refused",
    "upstream_stream_broken",
    "upstream_response_too_large",
    # an answer the client must not see (gateway.mcp.answers.answer_kind)
    "upstream_auth_refused",
    "upstream_redirect",
    "upstream_content_type",
    "upstream_content_encoding",
    "upstream_unreadable_answer",
]
"""Why the upstream gave no (complete) answer."""

ShedReason: TypeAlias = Literal["upstream_circuit_open", "upstream_busy"]
"""Why a request was not sent to its upstream at all (``UpstreamShed``)."""

Reason: TypeAlias = (
    TokenReason
    | McpReason
    | UpstreamReason
    | ShedReason
    | Literal[
        "internal_error",
        "insufficient_scope",
        "keys_unavailable",
        "introspection_unavailable",
        "origin_forbidden",
        "policy_denied",
        "body_too_large",
        "method_not_allowed",
        "unknown_session",
        "unknown_task",
        "exchange_unavailable",
        "exchange_refused",
        "minting_failed",
        "shutting_down",
        "body_timeout",
        "malformed_body",
        "too_many_streams",
        "body_budget_exhausted",
        "rate_limited",
        "rate_limit_unavailable",
        "audit_unavailable",
        "tool_definition_changed",
    ]
)
"""Every ``reason`` an error can carry: a closed set, since it is a metric label."""
