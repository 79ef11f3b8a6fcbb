"""The authenticated caller, as every later step sees it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .secret import Secret


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
