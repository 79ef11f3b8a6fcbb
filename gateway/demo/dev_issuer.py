"""A DEVELOPMENT ISSUER FOR THE DEMO. NOT FOR PRODUCTION.

It signs whatever token it is asked for, with no client authentication and a key that lives
only in memory until the demo stops. It exists so a newcomer can see the whole 401 → token →
tool call flow in a minute without setting up an authorization server.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

WARNING = "development issuer - not for production"


class DevIssuer:
    def __init__(self, base_url: str) -> None:
        self.issuer = base_url
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._kid = secrets.token_hex(6)

    def mint(
        self,
        *,
        audience: str,
        scope: str,
        subject: str = "demo-user",
        client_id: str = "demo-client",
        lifetime_s: int = 3600,
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "client_id": client_id,
            "scope": scope,
            "iat": now,
            "exp": now + lifetime_s,
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self._kid, "typ": "at+jwt"})

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(ECAlgorithm.to_jwk(self._key.public_key()))
        jwk.update({"kid": self._kid, "alg": "ES256", "use": "sig"})
        return {"keys": [jwk]}

    def app(self) -> web.Application:
        async def metadata(_request: web.Request) -> web.Response:
            return web.json_response(
                {
                    "issuer": self.issuer,
                    "jwks_uri": f"{self.issuer}/jwks",
                    "token_endpoint": f"{self.issuer}/token",
                    "grant_types_supported": ["client_credentials"],
                    "response_types_supported": [],
                    "x_warning": WARNING,
                }
            )

        async def jwks(_request: web.Request) -> web.Response:
            return web.json_response(self.jwks())

        async def token(request: web.Request) -> web.Response:
            form = await request.post()
            if form.get("grant_type") != "client_credentials":
                return web.json_response({"error": "unsupported_grant_type"}, status=400)
            resource = form.get("resource")
            if not isinstance(resource, str) or not resource:
                return web.json_response({"error": "invalid_target"}, status=400)
            scope = str(form.get("scope", ""))
            client_id = str(form.get("client_id", "demo-client"))
            access_token = self.mint(audience=resource, scope=scope, subject=client_id, client_id=client_id)
            return web.json_response(
                {"access_token": access_token, "token_type": "Bearer", "expires_in": 3600, "scope": scope},
                headers={"Cache-Control": "no-store"},
            )

        app = web.Application()
        app.router.add_get("/.well-known/oauth-authorization-server", metadata)
        app.router.add_get("/jwks", jwks)
        app.router.add_post("/token", token)
        return app
