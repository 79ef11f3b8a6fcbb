"""gateway.upstream.proxy: answer headers by allowlist, the session-id sealing hook, cache advice."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import parse_config_text
from gateway.upstream.proxy import Upstream, client_response_headers, relayed_cache_control
from tests.support.canned_upstream import Canned, canned_upstream

CONFIG = """
public_url: https://gw.example
issuers: [{{issuer: https://as.example, algorithms: [RS256], jwks: {{discover: true}}}}]
routes: [{{path: /mcp, upstream: "{upstream}"}}]
"""


def proxy(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_only_allowlisted_answer_headers_are_kept() -> None:
    """Content type, caching, MCP, Retry-After, Allow and trace headers stay; everything else goes."""
    kept = client_response_headers(
        proxy(
            ("Content-Type", "application/json"),
            ("Set-Cookie", "a=1"),
            ("MCP-Protocol-Version", "2025-11-25"),
            ("WWW-Authenticate", "Bearer"),
            ("Access-Control-Allow-Origin", "*"),
            ("Retry-After", "3"),
            ("Location", "/x"),
            ("Allow", "POST"),
            ("traceparent", "00-1-2-01"),
            ("Server", "s"),
            ("Content-Encoding", "identity"),
            ("Content-Length", "5"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "keep-alive"),
        )
    )
    assert list(kept.items()) == [
        ("Content-Type", "application/json"),
        ("MCP-Protocol-Version", "2025-11-25"),
        ("Retry-After", "3"),
        ("Allow", "POST"),
        ("traceparent", "00-1-2-01"),
    ]


def test_session_id_goes_through_the_sealing_hook() -> None:
    """With seal_session_id the client gets the sealed value, never the upstream's own."""
    upstream = proxy(("mcp-session-id", "up-1"), ("Content-Type", "text/event-stream"))
    sealed = client_response_headers(upstream, lambda value: f"sealed({value})")
    assert sealed.getall("Mcp-Session-Id") == ["sealed(up-1)"]
    assert client_response_headers(upstream).getall("Mcp-Session-Id") == ["up-1"]


@pytest.mark.parametrize(
    ("values", "relayed"),
    [
        (["no-cache"], "no-cache"),
        (["no-store", "max-age=0"], "no-store, max-age=0"),
        (["Public"], "private"),
        (["max-age=5", "S-MAXAGE=60"], "private"),
        (["must-revalidate"], "private"),
    ],
)
def test_shared_cache_directives_become_private(values: list[str], relayed: str) -> None:
    """Table: RFC 9111 §3.5 directives that let a shared cache reuse an authenticated answer."""
    assert relayed_cache_control(values) == relayed


def test_forward_takes_the_hook_by_keyword_only() -> None:
    """``seal_session_id`` is keyword-only and optional."""
    parameter = inspect.signature(Upstream.forward).parameters["seal_session_id"]
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.default is None


@asynccontextmanager
async def forwarding(upstream_url: str, seal: Callable[[str], str] | None) -> AsyncIterator[str]:
    """A minimal app that forwards every request with ``Upstream.forward``: its URL."""
    # Config parsing resolves paths: start-up work, off the loop.
    config = await asyncio.to_thread(
        parse_config_text, CONFIG.format(upstream=upstream_url), Path("/tmp/c.yaml"), {}
    )
    route = config.routes[0]
    upstream = Upstream(route)

    async def handle(request: web.Request) -> web.StreamResponse:
        return await upstream.forward(request, await request.read(), {}, {}, None, seal_session_id=seal)

    app = web.Application()
    app.router.add_route("*", "/mcp", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/mcp"  # type: ignore[union-attr]
    finally:
        await runner.cleanup()
        await upstream.aclose()


def seal_for_test(value: str) -> str:
    return f"sealed({value})"


@pytest.mark.parametrize(
    ("seal", "seen"), [(seal_for_test, "sealed(up-7)"), (None, "up-7")], ids=["hook", "none"]
)
async def test_forward_relays_the_session_id_through_the_hook(
    seal: Callable[[str], str] | None, seen: str
) -> None:
    """Upstream.forward: the client's Mcp-Session-Id is what the hook returns for the upstream's."""
    answer = Canned(200, [("Content-Type", "application/json"), ("Mcp-Session-Id", "up-7")], b"{}")
    async with canned_upstream(answer) as upstream, forwarding(upstream.url, seal) as url:
        async with aiohttp.ClientSession() as http, http.post(url, data=b"{}") as response:
            assert response.status == 200
            assert response.headers.getall("Mcp-Session-Id") == [seen]
            assert await response.read() == b"{}"
