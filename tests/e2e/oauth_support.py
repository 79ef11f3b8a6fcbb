"""The pieces an MCP host gives the official SDK's ``OAuthClientProvider`` (mcp 2.3.0), without a
browser: in-memory token storage, a "user" who follows the authorization server's redirects and
posts its login and consent forms with a plain HTTP client, and a record of every request the
SDK's own HTTP client sent (the MCP requests and the OAuth flow's discovery, registration and
token requests all go through it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import aiohttp
import httpx2
import jwt
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from mcp_types import Implementation

from tests.conftest import Upstream
from tests.support.issuer import MINTED_TOKENS
from tests.support.mcp_client import MODES, Era

REDIRECT_URI = "http://127.0.0.1:9/oauth/callback"
"""Loopback redirect URI (RFC 8252 §7.3). Nothing listens there: the user stops at the redirect."""


class MemoryTokenStorage:
    """``TokenStorage`` in memory; keeps every token set, in order, for the assertions."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None
        self.history: list[OAuthToken] = []

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens
        self.history.append(tokens)
        # The session-wide check in tests/conftest.py proves no token reached a gateway log.
        MINTED_TOKENS.append(tokens.access_token)

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info

    @property
    def access_tokens(self) -> list[str]:
        return [token.access_token for token in self.history]


class _FirstForm(HTMLParser):
    """The first ``<form>`` of a page: its method, action and the values of its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.method: str | None = None
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._state = "before"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form" and self._state == "before":
            self._state = "inside"
            self.method = attributes.get("method", "get").lower()
            self.action = attributes.get("action", "")
        elif tag == "input" and self._state == "inside" and "name" in attributes:
            self.fields[attributes["name"]] = attributes.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form" and self._state == "inside":
            self._state = "after"


@dataclass
class Authorization:
    """One authorization the user went through: the URL the SDK opened and what came back."""

    url: str
    params: dict[str, str]
    steps: list[tuple[str, str, int]] = field(default_factory=list)
    forms: list[dict[str, str]] = field(default_factory=list)
    result: dict[str, str] = field(default_factory=dict)


class HeadlessUser:
    """The SDK's ``redirect_handler`` and ``callback_handler`` for one person at one browser.

    ``redirect_handler(url)`` GETs the authorization URL, follows redirects on the authorization
    server (keeping its cookies, as a browser does, so a second authorization finds the user
    signed in), submits the first form of each page it lands on unchanged (sign in as alice,
    then allow; ``login`` signs in as someone else, ``approve=False`` refuses consent), and
    stops at the redirect back to ``redirect_uri``. ``callback_handler()``
    hands the SDK that redirect's ``code``, ``state`` and ``iss``.
    """

    def __init__(
        self,
        redirect_uri: str = REDIRECT_URI,
        *,
        login: str | None = None,
        approve: bool = True,
        max_steps: int = 20,
    ) -> None:
        self.redirect_uri = redirect_uri
        self.login = login
        self.approve = approve
        self.max_steps = max_steps
        self.authorizations: list[Authorization] = []
        self._cookies = aiohttp.CookieJar(unsafe=True)  # unsafe: keep cookies for IP hosts

    async def redirect_handler(self, authorization_url: str) -> None:
        current = Authorization(
            url=authorization_url, params=dict(parse_qsl(urlsplit(authorization_url).query))
        )
        self.authorizations.append(current)
        async with aiohttp.ClientSession(cookie_jar=self._cookies) as http:
            method, url, data = "GET", authorization_url, None
            for _ in range(self.max_steps):
                if url.startswith(self.redirect_uri):
                    current.result = dict(parse_qsl(urlsplit(url).query))
                    return
                async with http.request(method, url, data=data, allow_redirects=False) as response:
                    current.steps.append((method, url, response.status))
                    if response.status in (302, 303, 307):
                        method, url, data = "GET", urljoin(url, response.headers["Location"]), None
                        continue
                    body = await response.text()
                    if response.status != 200:
                        raise AssertionError(
                            f"authorization server answered {response.status} at {url}: {body[:500]}"
                        )
                    page = _FirstForm()
                    page.feed(body)
                    if page.method != "post" or page.action is None:
                        raise AssertionError(f"no form to submit at {url}: {body[:500]}")
                    if self.login is not None and "login" in page.fields:
                        page.fields["login"] = self.login
                    if not self.approve and "decision" in page.fields:
                        page.fields["decision"] = "deny"
                    current.forms.append(dict(page.fields))
                    method, url, data = "POST", urljoin(url, page.action), page.fields
            raise AssertionError(
                f"authorization did not come back within {self.max_steps} steps: {current.steps}"
            )

    async def callback_handler(self) -> AuthorizationCodeResult:
        result = self.authorizations[-1].result
        if "code" not in result:
            raise AssertionError(f"the authorization server redirected back without a code: {result}")
        return AuthorizationCodeResult(code=result["code"], state=result.get("state"), iss=result.get("iss"))


@dataclass
class WireRecord:
    method: str
    url: str
    status: int
    request_headers: dict[str, str]
    www_authenticate: str | None

    @property
    def path(self) -> str:
        return urlsplit(self.url).path


class WireLog:
    """httpx2 event hooks: every request the SDK's HTTP client sent and the status it got."""

    def __init__(self) -> None:
        self.records: list[WireRecord] = []

    async def on_response(self, response: httpx2.Response) -> None:
        request = response.request
        self.records.append(
            WireRecord(
                method=request.method,
                url=str(request.url),
                status=response.status_code,
                request_headers={key.lower(): value for key, value in request.headers.items()},
                www_authenticate=response.headers.get("www-authenticate"),
            )
        )

    def summary(self) -> list[tuple[str, str, int]]:
        return [(record.method, record.url, record.status) for record in self.records]


def client_metadata() -> OAuthClientMetadata:
    """What the MCP host registers: a public native client with a loopback redirect."""
    return OAuthClientMetadata(
        client_name="gateway e2e tests",
        redirect_uris=[REDIRECT_URI],  # type: ignore[list-item]
        token_endpoint_auth_method="none",
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
    )


@dataclass
class OAuthSession:
    client: Client
    provider: OAuthClientProvider
    storage: MemoryTokenStorage
    user: HeadlessUser
    wire: WireLog


@asynccontextmanager
async def oauth_client(
    url: str, *, era: Era = "2025", read_timeout_seconds: float = 20.0
) -> AsyncIterator[OAuthSession]:
    """The official SDK client connected to ``url`` with nothing but an ``OAuthClientProvider``."""
    storage = MemoryTokenStorage()
    user = HeadlessUser()
    wire = WireLog()
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=client_metadata(),
        storage=storage,
        redirect_handler=user.redirect_handler,
        callback_handler=user.callback_handler,
    )
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(create_mcp_http_client(auth=provider))
        http.event_hooks["response"].append(wire.on_response)
        client = Client(
            streamable_http_client(url, http_client=http),
            mode=MODES[era],
            cache=None,
            read_timeout_seconds=read_timeout_seconds,
            client_info=Implementation(name="gateway-e2e", version="0"),
        )
        yield OAuthSession(await stack.enter_async_context(client), provider, storage, user, wire)


async def user_token(
    issuer: str, resource: str, scope: str, *, login: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Without the SDK: register a public client, authorize (PKCE S256) as ``login`` for
    ``resource`` and ``scope``, redeem the code. Returns the client id and the token response."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{issuer}/.well-known/oauth-authorization-server") as response:
            metadata = await response.json()
        registration = {
            "redirect_uris": [REDIRECT_URI],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "application_type": "native",
        }
        async with http.post(metadata["registration_endpoint"], json=registration) as response:
            assert response.status == 201, await response.text()
            client_id: str = (await response.json())["client_id"]
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        state = secrets.token_urlsafe(16)
        query = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "scope": scope,
            "resource": resource,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if "offline_access" in scope.split():
            query["prompt"] = "consent"
        user = HeadlessUser(login=login)
        await user.redirect_handler(f"{metadata['authorization_endpoint']}?{urlencode(query)}")
        result = await user.callback_handler()
        assert result.state == state and result.iss == issuer
        form = {
            "grant_type": "authorization_code",
            "code": result.code,
            "redirect_uri": REDIRECT_URI,
            "client_id": client_id,
            "code_verifier": verifier,
            "resource": resource,
        }
        async with http.post(metadata["token_endpoint"], data=form) as response:
            assert response.status == 200, await response.text()
            tokens: dict[str, Any] = await response.json()
        MINTED_TOKENS.append(tokens["access_token"])
        return client_id, tokens


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a JWT, unverified (the gateway is the one that verifies)."""
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return jwt.get_unverified_header(token), claims


async def assert_upstream_never_saw_tokens(upstream: Upstream, tokens: Iterable[str]) -> None:
    """The upstream got requests, none with an Authorization header, and no trace of ``tokens``
    (not even a signature) anywhere in what it recorded."""
    records = await upstream.requests()
    assert records, "the upstream received nothing"
    for record in records:
        assert all(name.lower() != "authorization" for name, _ in record["headers"]), record
    everything = json.dumps(records)
    for token in tokens:
        assert token not in everything
        assert token.rsplit(".", 1)[-1] not in everything
