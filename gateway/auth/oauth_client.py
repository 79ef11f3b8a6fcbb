"""The gateway as an HTTP client of its authorization servers (metadata, JWKS).

Every URL comes from config or from the configured issuer's own metadata, never from a token
(RFC 8725 §3.10). Redirects are not followed, responses are bounded in size and time
(MCP Security Best Practices, "SSRF").
"""

from __future__ import annotations

from typing import Any

import aiohttp

from ..strictjson import StrictJSONError, loads_strict

MAX_DOCUMENT_BYTES = 512 * 1024


class FetchError(Exception):
    """An outbound fetch failed; the message is fit for the log."""


async def get_json_object(session: aiohttp.ClientSession, url: str, *, timeout_s: float) -> dict[str, Any]:
    """GET a JSON object, with no redirects, a size bound and a total timeout."""
    try:
        async with session.get(
            url,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            headers={"Accept": "application/json"},
        ) as response:
            if response.status != 200:
                raise FetchError(f"GET {url}: HTTP {response.status}")
            body = await read_bounded(response, MAX_DOCUMENT_BYTES)
    except TimeoutError as exc:
        raise FetchError(f"GET {url}: timed out after {timeout_s}s") from exc
    except aiohttp.ClientError as exc:
        raise FetchError(f"GET {url}: {type(exc).__name__}: {exc}") from exc
    try:
        document = loads_strict(body)
    except StrictJSONError as exc:
        raise FetchError(f"GET {url}: {exc}") from exc
    if not isinstance(document, dict):
        raise FetchError(f"GET {url}: not a JSON object")
    return document


async def read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or FetchError as soon as it is known to exceed ``limit`` bytes."""
    if response.content_length is not None and response.content_length > limit:
        raise FetchError(f"{response.method} {response.url}: body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise FetchError(f"{response.method} {response.url}: body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
