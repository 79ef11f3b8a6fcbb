"""Which check a bearer token gets: JWT validation or RFC 7662 introspection.

A token that is a JWS naming a JWKS issuer is validated locally. Anything else goes to the
introspection issuer (opaque tokens), if one is configured; the config allows at most one, since
an opaque token does not say who issued it. With none, the JWT path names the reason.
"""

from __future__ import annotations

from ..principal import Principal
from ..secret import PresentedToken
from .introspection import Introspector
from .tokens import JwtAuthenticator


class Authenticator:
    """Sends each presented token down one path; the token is hashed and decoded at most once."""

    def __init__(self, jwt: JwtAuthenticator, introspector: Introspector | None) -> None:
        self._jwt = jwt
        self.introspector = introspector

    async def authenticate(self, token: PresentedToken, resource: str) -> Principal:
        if self.introspector is None:
            return await self._jwt.authenticate(token, resource)
        if (verified := self._jwt.cached(token, resource)) is not None:
            return verified  # skip decoding the token to pick the path
        if (jws := self._jwt.known_jws(token)) is not None:
            return await self._jwt.verify(jws, resource)
        return await self.introspector.authenticate(token, resource)
