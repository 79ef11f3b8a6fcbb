"""Which check a bearer token gets: JWT validation or RFC 7662 introspection.

A token that is a JWS naming a JWKS issuer is validated locally. Anything else goes to the
introspection issuers (opaque tokens), in config order; an `inactive` answer lets the next one
try, any other refusal is final. With no introspection issuer, the JWT path names the reason.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import InvalidToken
from .introspection import Introspector
from .principal import Principal
from .tokens import JwtAuthenticator


class Authenticator:
    def __init__(self, jwt: JwtAuthenticator, introspectors: Sequence[Introspector]) -> None:
        self._jwt = jwt
        self.introspectors = tuple(introspectors)

    async def authenticate(self, token: str, resource: str) -> Principal:
        if self.introspectors and (verified := self._jwt.cached(token, resource)) is not None:
            return verified  # skip decoding the token once more to pick the path
        if not self.introspectors or self._jwt.knows_issuer_of(token):
            return await self._jwt.authenticate(token, resource)
        refusal: InvalidToken | None = None
        for introspector in self.introspectors:
            try:
                return await introspector.authenticate(token, resource)
            except InvalidToken as exc:
                if exc.reason != "inactive":
                    raise
                refusal = exc
        assert refusal is not None  # noqa: S101 -- at least one introspector ran
        raise refusal
