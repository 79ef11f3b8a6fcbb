"""The gateway as an OAuth client: client authentication, form POSTs, and how long answers are kept."""

from __future__ import annotations

import base64
import math
from collections.abc import AsyncIterator

import aiohttp
import cachetools
import pytest
from aiohttp import web

from gateway.auth.oauth_client import (
    MAX_RESPONSE_BYTES,
    Cached,
    FetchError,
    cache_until,
    client_authentication,
    post_form,
    time_to_use,
)
from gateway.secret import Secret

NOW = 1_800_000_000.0


def test_basic_client_authentication_form_urlencodes_id_and_secret() -> None:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded, then joined by ':' and base64-encoded."""
    headers, fields = client_authentication("client_secret_basic", "my client", Secret("a+b:c%/d"))
    assert fields == {}
    decoded = base64.b64decode(headers["Authorization"].removeprefix("Basic ")).decode()
    assert decoded == "my+client:a%2Bb%3Ac%25%2Fd"
    headers, fields = client_authentication("client_secret_post", "my client", Secret("a+b"))
    assert headers == {} and fields == {"client_id": "my client", "client_secret": "a+b"}


@pytest.mark.parametrize(
    ("lifetime_s", "not_after", "expected"),
    [
        (60.0, math.inf, NOW + 60),
        (60.0, NOW + 30, NOW + 30),  # never past not_after
        (None, math.inf, None),  # unknown lifetime: keep nothing
        (0.0, math.inf, None),  # no lifetime: keep nothing
        (-5.0, math.inf, None),
        (60.0, NOW, None),  # already at its end
    ],
)
def test_cache_until(lifetime_s: float | None, not_after: float, expected: float | None) -> None:
    """An answer is kept for its lifetime, never past not_after; None when that ends by now."""
    assert cache_until(NOW, lifetime_s, not_after=not_after) == expected


def test_cached_entries_end_at_their_own_time() -> None:
    """A TLRU cache of Cached entries drops each one at its own until, not at a shared TTL."""
    now = [NOW]
    cache: cachetools.TLRUCache[str, Cached[str], float] = cachetools.TLRUCache(
        10, time_to_use, timer=lambda: now[0]
    )
    cache["short"] = Cached("a", NOW + 5)
    cache["long"] = Cached("b", NOW + 50)
    now[0] = NOW + 10
    assert "short" not in cache and cache["long"].value == "b"


@pytest.fixture
async def form_endpoint() -> AsyncIterator[str]:
    """A token-endpoint-like server on 127.0.0.1: /echo answers the form, /redirect a 302, /big too much."""

    async def echo(request: web.Request) -> web.Response:
        form = await request.post()
        return web.json_response(
            {"form": dict(form), "content_type": request.content_type},
            headers={"Retry-After": "7"},
        )

    async def redirect(_request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "http://127.0.0.1:1/elsewhere"})

    async def big(_request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (MAX_RESPONSE_BYTES + 1))

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_post("/redirect", redirect)
    app.router.add_post("/big", big)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_post_form_sends_urlencoded_fields_and_returns_status_body_retry_after(
    form_endpoint: str,
) -> None:
    """The form arrives urlencoded; the answer comes back as status, body and Retry-After."""
    async with aiohttp.ClientSession() as session:
        response = await post_form(session, form_endpoint + "/echo", {"a": "1 2", "b": "&"}, {}, timeout_s=2)
    assert response.status == 200 and response.retry_after == "7"
    assert b'"a": "1 2"' in response.body and b"application/x-www-form-urlencoded" in response.body


async def test_post_form_follows_no_redirect(form_endpoint: str) -> None:
    """A 3xx is handed back as it is, never followed."""
    async with aiohttp.ClientSession() as session:
        response = await post_form(session, form_endpoint + "/redirect", {}, {}, timeout_s=2)
    assert response.status == 302


async def test_post_form_refuses_an_oversized_answer_without_naming_the_form(form_endpoint: str) -> None:
    """A body over the bound is a FetchError whose message names the URL, not the form's contents."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(FetchError) as caught:
            await post_form(session, form_endpoint + "/big", {"token": "secret-form-value"}, {}, timeout_s=2)
    assert "larger than" in str(caught.value) and "secret-form-value" not in str(caught.value)
