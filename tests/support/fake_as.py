"""An in-process authorization server for tests: RFC 8693 token exchange and RFC 7662 introspection.

Serves ``POST /token`` and ``POST /introspect`` on 127.0.0.1 (a free port). Every request is
parsed and recorded (``requests``): its form parameters, how the client authenticated, and
anything in it that breaks the protocol (``violations``), so tests can assert exactly what the
gateway sent. Its behaviour is scriptable through plain attributes:

* which subject tokens may be exchanged, for which scopes (``subject_tokens``), which
  audience/resource values are known (``targets``), the issued lifetime (``expires_in``);
* what introspection says about each token (``introspection``);
* a scripted error or raw response (``exchange_error``, ``exchange_response``,
  ``introspection_response``), an outage (``down_status``, e.g. 503, or ``stop()`` to close the
  port), a delay (``delay_s``), or ``pause()``/``resume()`` to hold answers until a test is ready.

Not a real AS: no grants other than token exchange, no signing, one client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from aiohttp import web

GRANT_TYPE_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the AS saw it."""

    endpoint: str  # "token" or "introspect"
    form: Mapping[str, str]  # every parameter (the last value if one was repeated)
    auth_method: str | None  # "client_secret_basic", "client_secret_post", "both" or None
    client_id: str | None  # the client identifier presented, decoded
    authenticated: bool  # the presented id and secret were right
    authorization: str | None  # the raw Authorization header
    content_type: str
    violations: tuple[str, ...]  # protocol problems in this request


@dataclass
class FakeAuthorizationServer:
    """Scriptable AS state; serve it with ``serving_fake_as``."""

    client_id: str = "gateway-client"
    # Characters that only survive Basic authentication if the client form-urlencodes the id and
    # secret first (RFC 6749 §2.3.1): "+" would turn into a space, "%t" is no escape, ":" splits.
    client_secret: str = "s3cr%t+with spaces:and/colon"
    subject_tokens: dict[str, frozenset[str]] = field(default_factory=dict)  # token -> grantable scopes
    targets: set[str] | None = None  # known audience/resource values; None: any
    expires_in: float | None = 300
    exchange_error: tuple[int, dict[str, Any]] | None = None  # (status, RFC 6749 §5.2 body)
    exchange_response: tuple[int, bytes] | None = None  # raw (status, body) instead of a real answer
    introspection: dict[str, dict[str, Any]] = field(default_factory=dict)  # token -> response
    introspection_response: tuple[int, bytes] | None = None
    down_status: int | None = None  # every endpoint answers this status (e.g. 503)
    retry_after: str | None = None  # sent with down_status
    delay_s: float = 0.0
    base_url: str = ""
    requests: list[RecordedRequest] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)  # access tokens handed out by /token
    calls: Counter[str] = field(default_factory=Counter)
    _open: asyncio.Event = field(default_factory=asyncio.Event)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None

    def __post_init__(self) -> None:
        self._open.set()

    # --- addresses and counts ---------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return self.base_url

    @property
    def token_endpoint(self) -> str:
        return self.base_url + "/token"

    @property
    def introspection_endpoint(self) -> str:
        return self.base_url + "/introspect"

    @property
    def exchange_calls(self) -> int:
        return self.calls["token"]

    @property
    def introspection_calls(self) -> int:
        return self.calls["introspect"]

    @property
    def violations(self) -> list[str]:
        return [problem for request in self.requests for problem in request.violations]

    # --- scripting ---------------------------------------------------------------------------

    def pause(self) -> None:
        """Hold every answer (requests are still received and recorded) until ``resume``."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    async def wait_for_calls(self, endpoint: str, count: int, timeout_s: float = 5.0) -> None:
        """Wait until ``endpoint`` has received ``count`` requests."""
        async with asyncio.timeout(timeout_s), self._arrived:
            await self._arrived.wait_for(lambda: self.calls[endpoint] >= count)

    async def stop(self) -> None:
        """Close the port: from now on connections to ``base_url`` are refused."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- the endpoints -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/introspect", self._introspect)
        return app

    async def _receive(self, request: web.Request, endpoint: str) -> RecordedRequest:
        violations: list[str] = []
        content_type = request.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
            violations.append(f"{endpoint}: Content-Type {content_type!r} is not form-urlencoded")
        text = await request.text()
        try:
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
        except ValueError:
            pairs = []
            violations.append(f"{endpoint}: body is not form-urlencoded")
        names = [name for name, _ in pairs]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:  # RFC 6749 §3.1 / §3.2: parameters MUST NOT be included more than once
            violations.append(f"{endpoint}: repeated parameters {repeated}")
        form = dict(pairs)
        authorization = request.headers.get("Authorization")
        basic = self._basic_credentials(authorization, violations, endpoint)
        posted = (form.get("client_id", ""), form["client_secret"]) if "client_secret" in form else None
        if basic is not None and posted is not None:
            violations.append(f"{endpoint}: two client authentication methods (RFC 6749 §2.3)")
            auth_method, presented = "both", None
        elif basic is not None:
            auth_method, presented = "client_secret_basic", basic
        elif posted is not None:
            auth_method, presented = "client_secret_post", posted
        else:
            auth_method, presented = None, None
        recorded = RecordedRequest(
            endpoint=endpoint,
            form=form,
            auth_method=auth_method,
            client_id=presented[0] if presented else None,
            authenticated=presented == (self.client_id, self.client_secret),
            authorization=authorization,
            content_type=content_type,
            violations=tuple(violations),
        )
        self.requests.append(recorded)
        self.calls[endpoint] += 1
        async with self._arrived:
            self._arrived.notify_all()
        return recorded

    @staticmethod
    def _basic_credentials(
        authorization: str | None, violations: list[str], endpoint: str
    ) -> tuple[str, str] | None:
        if authorization is None:
            return None
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            violations.append(f"{endpoint}: Authorization scheme {scheme!r} is not Basic")
            return None
        try:
            user_pass = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            violations.append(f"{endpoint}: Basic credentials are not base64")
            return None
        user, sep, password = user_pass.partition(":")
        if not sep:
            violations.append(f"{endpoint}: Basic credentials without ':'")
            return None
        # RFC 6749 §2.3.1: both halves are form-urlencoded before base64.
        return unquote_plus(user), unquote_plus(password)

    async def _hold(self) -> web.Response | None:
        await self._open.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.down_status is not None:
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            return web.Response(status=self.down_status, text="unavailable", headers=headers)
        return None

    async def _token(self, request: web.Request) -> web.Response:
        recorded = await self._receive(request, "token")
        if (held := await self._hold()) is not None:
            return held
        if not recorded.authenticated:
            return _oauth_error(401, "invalid_client", "client authentication failed")
        if self.exchange_response is not None:
            status, body = self.exchange_response
            return web.Response(status=status, body=body, content_type="application/json")
        if self.exchange_error is not None:
            status, document = self.exchange_error
            return web.json_response(document, status=status, headers={"Cache-Control": "no-store"})
        return self._exchange(recorded.form)

    def _exchange(self, form: Mapping[str, str]) -> web.Response:
        """RFC 8693 §2.1 checks, then a §2.2.1 answer or a §2.2.2 error."""
        if form.get("grant_type") != GRANT_TYPE_TOKEN_EXCHANGE:
            return _oauth_error(400, "unsupported_grant_type")
        if form.get("subject_token_type") != ACCESS_TOKEN_TYPE:
            return _oauth_error(400, "invalid_request", "subject_token_type")
        if form.get("requested_token_type", ACCESS_TOKEN_TYPE) != ACCESS_TOKEN_TYPE:
            return _oauth_error(400, "invalid_request", "requested_token_type")
        grantable = self.subject_tokens.get(form.get("subject_token", ""))
        if grantable is None:
            return _oauth_error(400, "invalid_grant", "subject token is not valid")
        for name in ("audience", "resource"):
            if name in form and self.targets is not None and form[name] not in self.targets:
                return _oauth_error(400, "invalid_target", f"unknown {name}")
        scopes = frozenset(form["scope"].split()) if "scope" in form else grantable
        if not scopes <= grantable:
            return _oauth_error(400, "invalid_scope")
        token = f"xchg-{len(self.issued) + 1}-{secrets.token_urlsafe(12)}"
        self.issued.append(token)
        answer: dict[str, Any] = {
            "access_token": token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "scope": " ".join(sorted(scopes)),
        }
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        return web.json_response(answer, headers={"Cache-Control": "no-store"})

    async def _introspect(self, request: web.Request) -> web.Response:
        recorded = await self._receive(request, "introspect")
        if (held := await self._hold()) is not None:
            return held
        # RFC 7662 §2.1: the endpoint requires authorization; here, client authentication.
        if not recorded.authenticated:
            return _oauth_error(401, "invalid_client")
        if self.introspection_response is not None:
            status, body = self.introspection_response
            return web.Response(status=status, body=body, content_type="application/json")
        token = recorded.form.get("token")
        if not token:
            return _oauth_error(400, "invalid_request", "token is required")
        return web.json_response(self.introspection.get(token, {"active": False}))


def _oauth_error(status: int, code: str, description: str | None = None) -> web.Response:
    body: dict[str, str] = {"error": code}
    if description is not None:
        body["error_description"] = description
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="fake-as"'
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )


@asynccontextmanager
async def serving_fake_as(
    server: FakeAuthorizationServer | None = None,
) -> AsyncIterator[FakeAuthorizationServer]:
    """Serve a fake AS on 127.0.0.1 (a free port) for the duration of the block."""
    fake = server or FakeAuthorizationServer()
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake._runner = runner
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.base_url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        fake.resume()  # release held handlers so the runner can shut down
        await fake.stop()
