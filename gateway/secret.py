"""Values that must never print: tokens, client secrets, API keys."""

from __future__ import annotations

import hashlib


class Secret:
    """A string that cannot print: ``repr`` and ``str`` show ``***``; ``reveal()`` gives the value.

    Used for client secrets, static credentials and (as ``PresentedToken``) the client's bearer
    token, which later steps (token exchange) still need but which must never reach a log line or
    an upstream by accident.
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


class PresentedToken(Secret):
    """The bearer token a client presented, from the header on: a ``Secret`` and its SHA-256.

    The digest is computed once, where the token is accepted (``bearer_token_from``). It is the
    key of every cache and single-flight table that concerns the token (verified JWTs,
    introspection answers, exchanged and minted credentials), so no cache ever holds the token
    and no later step hashes it again.
    """

    __slots__ = ("_sha256",)

    def __init__(self, value: str) -> None:
        super().__init__(value)
        self._sha256 = hashlib.sha256(value.encode("utf-8")).hexdigest()

    @property
    def sha256(self) -> str:
        """The token's SHA-256, hex: what caches are keyed by instead of the token."""
        return self._sha256

    def __repr__(self) -> str:
        return "PresentedToken('***')"

    __str__ = __repr__
