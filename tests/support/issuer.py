"""An in-process OAuth issuer for tests: RFC 8414 metadata, a JWKS with rotation, token minting.

Not an authorization server: it only publishes keys and signs tokens the tests ask for.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

MINTED_TOKENS: list[str] = []
"""Every token any test issuer signed in this process; conftest proves none reached a log."""


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    @classmethod
    def generate(cls, alg: str = "RS256", kid: str | None = None) -> SigningKey:
        private: Any
        if alg.startswith(("RS", "PS")):
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(alg)
        return cls(kid=kid or uuid.uuid4().hex[:12], alg=alg, private=private)

    def public_jwk(self) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.alg.startswith(("RS", "PS")) else ECAlgorithm
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return jwk


@dataclass
class TestIssuer:
    """Serves metadata and JWKS on 127.0.0.1; ``down`` makes every endpoint answer 503."""

    __test__ = False  # not a pytest test class

    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey.generate()])
    base_url: str = ""
    down: bool = False
    jwks_fetches: int = 0
    metadata_fetches: int = 0

    @property
    def issuer(self) -> str:
        return self.base_url

    @property
    def active(self) -> SigningKey:
        return self.keys[0]

    def rotate(self, alg: str = "RS256") -> SigningKey:
        """A new active key; the old one stays published (overlap) until ``retire`` is called."""
        key = SigningKey.generate(alg)
        self.keys.insert(0, key)
        return key

    def retire_all_but_active(self) -> None:
        del self.keys[1:]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk() for key in self.keys]}

    def mint(
        self,
        *,
        audience: str | list[str] | None,
        scope: str | None = "mcp:access",
        subject: str = "user-1",
        client_id: str = "client-1",
        lifetime_s: float = 300,
        key: SigningKey | None = None,
        headers: Mapping[str, Any] | None = None,
        claims: Mapping[str, Any] | None = None,
        drop: tuple[str, ...] = (),
    ) -> str:
        now = time.time()
        signing_key = key or self.active
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "client_id": client_id,
            "iat": int(now),
            "exp": int(now + lifetime_s),
            "jti": uuid.uuid4().hex,
        }
        if audience is not None:
            payload["aud"] = audience
        if scope is not None:
            payload["scope"] = scope
        payload.update(claims or {})
        for name in drop:
            payload.pop(name, None)
        header = {"typ": "at+jwt", "kid": signing_key.kid, **(headers or {})}
        token = jwt.encode(payload, signing_key.private, algorithm=signing_key.alg, headers=header)
        MINTED_TOKENS.append(token)
        return token

    def app(self) -> web.Application:
        async def metadata(request: web.Request) -> web.Response:
            self.metadata_fetches += 1
            if self.down:
                return web.Response(status=503)
            return web.json_response(
                {
                    "issuer": self.issuer,
                    "jwks_uri": f"{self.base_url}/jwks",
                    "authorization_endpoint": f"{self.base_url}/authorize",
                    "token_endpoint": f"{self.base_url}/token",
                    "response_types_supported": ["code"],
                }
            )

        async def jwks(request: web.Request) -> web.Response:
            self.jwks_fetches += 1
            if self.down:
                return web.Response(status=503)
            return web.json_response(self.jwks())

        app = web.Application()
        app.router.add_get("/.well-known/oauth-authorization-server", metadata)
        app.router.add_get("/jwks", jwks)
        return app


@asynccontextmanager
async def serving(test_issuer: TestIssuer | None = None) -> AsyncIterator[TestIssuer]:
    """Serve an issuer on 127.0.0.1 (a free port) for the duration of the block."""
    issuer = test_issuer or TestIssuer()
    runner = web.AppRunner(issuer.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    issuer.base_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        yield issuer
    finally:
        await runner.cleanup()
