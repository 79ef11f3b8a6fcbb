"""The authenticated caller, as every later step sees it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .secret import PresentedToken


@dataclass(frozen=True, slots=True)
class Identity:
    """Who called, on whose behalf, with which scopes, until when: what the token's checked claims say.

    The outcome of the pure claim checks (``gateway.auth.tokens.check_claims``), which never see
    the token itself; the async shell that holds the token makes it a ``Principal``.
    """

    issuer: str
    subject: str
    client_id: str | None
    scopes: frozenset[str]
    audience: tuple[str, ...]
    expires_at: float
    token_id: str | None
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), repr=False)

    def has_scopes(self, required: tuple[str, ...] | frozenset[str]) -> bool:
        return self.scopes.issuperset(required)

    def presented_with(self, token: PresentedToken) -> Principal:
        """This identity as the caller of a request that presented ``token``."""
        return Principal(
            issuer=self.issuer,
            subject=self.subject,
            client_id=self.client_id,
            scopes=self.scopes,
            audience=self.audience,
            expires_at=self.expires_at,
            token_id=self.token_id,
            claims=self.claims,
            token=token,
        )


@dataclass(frozen=True, slots=True)
class Principal(Identity):
    """The authenticated caller, with the token it presented.

    ``token`` is kept for the steps that act on the caller's behalf: token exchange sends it, and
    the exchanged and minted credentials are cached by its ``sha256``. It never prints.
    """

    token: PresentedToken = field(kw_only=True, repr=False)
