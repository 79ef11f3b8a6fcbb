"""Values that must never print: tokens, client secrets, API keys."""

from __future__ import annotations

import hashlib


class Secret:
    """A string that cannot print: ``repr`` and ``str`` show ``***``; ``reveal()`` gives the value.

    Used for the client's bearer token, which later steps (token exchange) still need but which
    must never reach a log line or an upstream by accident.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # secrets are not dictionary keys: hash them first

    def fingerprint(self) -> str:
        """A short, stable, non-reversible tag for logs and cache keys (SHA-256, 16 hex digits)."""
        return hashlib.sha256(self._value.encode()).hexdigest()[:16]


def token_hash(token: str) -> str:
    """The cache and single-flight key of a token: its SHA-256, so no cache ever holds tokens."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
