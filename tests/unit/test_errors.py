"""gateway.errors: one tree, drawn in its docstring, whose errors render their own headers."""

from __future__ import annotations

import re
import typing

import pytest

from gateway import errors
from gateway.errors import (
    ERROR_CLASSES,
    AuthUnavailable,
    ExchangeUnavailable,
    GatewayError,
    InsufficientScope,
    InvalidToken,
    McpRejected,
    MethodNotAllowed,
    MissingToken,
    PolicyDenied,
    ShuttingDown,
    UpstreamTimeout,
)

REASONS = frozenset(
    value for part in typing.get_args(errors.Reason) for value in (typing.get_args(part) or (part,))
)


def _challenge(scopes: tuple[str, ...], error: str | None) -> str:
    return f"Bearer scopes={' '.join(scopes)!r} error={error!r}"


def test_every_error_class_is_in_the_module_and_its_drawing() -> None:
    """The tree in the docstring names every GatewayError subclass, and ERROR_CLASSES lists them all."""
    defined = {
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, GatewayError)
    }
    assert defined == set(ERROR_CLASSES)
    drawn = set(re.findall(r"[├└]── (\w+)", errors.__doc__ or "")) | {"GatewayError"}
    assert drawn == {cls.__name__ for cls in ERROR_CLASSES}


def test_no_gateway_error_is_defined_outside_errors() -> None:
    """Every GatewayError leaf lives in gateway.errors (one tree, one place)."""
    import gateway.web.app  # noqa: F401  (imports every module of the request path)

    def subclasses(cls: type[GatewayError]) -> set[type[GatewayError]]:
        found = set(cls.__subclasses__())
        for sub in list(found):
            found |= subclasses(sub)
        return found

    outside = {cls for cls in subclasses(GatewayError) if cls.__module__ != "gateway.errors"}
    assert outside == set()


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_class_reasons_are_in_the_closed_set(cls: type[GatewayError]) -> None:
    """Each class's default reason is one of the typed, bounded reasons (they are metric labels)."""
    assert cls.reason in REASONS


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (MissingToken(), {"WWW-Authenticate": "Bearer scopes='' error=None"}),
        (InvalidToken("expired"), {"WWW-Authenticate": "Bearer scopes='' error='invalid_token'"}),
        (
            InsufficientScope(scopes=("a", "b")),
            {"WWW-Authenticate": "Bearer scopes='a b' error='insufficient_scope'"},
        ),
        (
            AuthUnavailable(),
            {"Retry-After": "5", "WWW-Authenticate": "Bearer scopes='' error=None"},
        ),
        (PolicyDenied(), {}),
        (MethodNotAllowed(("GET", "POST")), {"Allow": "GET, POST"}),
        (ExchangeUnavailable(retry_after_s=30), {"Retry-After": "30"}),
        (ExchangeUnavailable(retry_after_s=0), {"Retry-After": "1"}),
        (ShuttingDown(), {"Retry-After": "1"}),
        (UpstreamTimeout(), {}),
        (McpRejected("invalid_json"), {}),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, GatewayError) else "",
)
def test_errors_render_their_own_headers(error: GatewayError, expected: dict[str, str]) -> None:
    """Each error supplies its own Retry-After, Allow and challenge headers; no renderer inspects types."""
    assert error.headers(_challenge) == expected


def test_auth_error_without_a_route_has_no_challenge() -> None:
    """Outside a route there is no resource metadata to point at, so no WWW-Authenticate."""
    assert InvalidToken().headers(None) == {}
    assert AuthUnavailable().headers(None) == {"Retry-After": "5"}


def test_mcp_rejection_answers_with_the_code_for_its_reason() -> None:
    """McpRejected carries the JSON-RPC code and fixed message of its reason, nothing from the body."""
    parse = McpRejected("invalid_json", rpc_id=7, detail="line 1")
    assert (parse.status, parse.jsonrpc_code, parse.message, parse.rpc_id) == (400, -32700, "Parse error", 7)
    mismatch = McpRejected("header_mismatch")
    assert (mismatch.jsonrpc_code, mismatch.message) == (-32020, "Header mismatch")
