"""The authenticated caller, as every later step sees it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


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


@dataclass(frozen=True, slots=True)
class Principal:
    """Who called, on whose behalf, with which scopes, until when."""

    issuer: str
    subject: str
    client_id: str | None
    scopes: frozenset[str]
    audience: tuple[str, ...]
    expires_at: float
    token_id: str | None
    token: Secret = field(repr=False)
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), repr=False)

    def has_scopes(self, required: tuple[str, ...] | frozenset[str]) -> bool:
        return self.scopes.issuperset(required)
