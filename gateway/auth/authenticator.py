"""Which check a bearer token gets: JWT validation or RFC 7662 introspection.

A token that is a JWS naming a JWKS issuer is validated locally. Anything else goes to the
introspection issuer (opaque tokens), if one is configured; the config allows at most one, since
an opaque token does not say who issued it. With none, the JWT path names the reason. Either way,
a DPoP-bound token's proof is then checked by ``dpop`` (``gateway.auth.dpop``).
"""

from __future__ import annotations

from ..principal import Principal
from ..secret import PresentedToken
from .dpop import DpopVerifier
from .introspection import Introspector
from .tokens import JwtAuthenticator


class Authenticator:
    """Sends each presented token down one path; the token is hashed and decoded at most once."""

    def __init__(
        self, jwt: JwtAuthenticator, introspector: Introspector | None, dpop: DpopVerifier | None = None
    ) -> None:
        self._jwt = jwt
        self.introspector = introspector
        # One per gateway: the jti values its proofs used (RFC 9449 §11.1), per route.
        self.dpop = dpop or DpopVerifier()

    def known(self, token: PresentedToken) -> bool:
        """Whether ``token`` was accepted before and its answer is cached: authenticating it again
        costs no signature check and no call to the AS (what an exhausted unauthenticated limit
        still lets through)."""
        return self._jwt.known(token) or (self.introspector is not None and self.introspector.known(token))

    async def authenticate(self, token: PresentedToken, resource: str) -> Principal:
        if self.introspector is None:
            return await self._jwt.authenticate(token, resource)
        if (verified := self._jwt.cached(token, resource)) is not None:
            return verified  # skip decoding the token to pick the path
        if (jws := self._jwt.known_jws(token)) is not None:
            return await self._jwt.verify(jws, resource)
        return await self.introspector.authenticate(token, resource)
