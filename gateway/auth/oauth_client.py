"""The gateway as an HTTP client of its authorization servers.

It GETs metadata and JWKS (``gateway.auth.jwks``) and POSTs forms to the introspection endpoint
(RFC 7662, ``gateway.auth.introspection``) and the token endpoint (RFC 8693,
``gateway.upstream.exchange``), authenticated as an OAuth client. Every URL comes from config or
from the configured issuer's own metadata, never from a token (RFC 8725 §3.10). Redirects are not
followed, responses are bounded in size and time (MCP Security Best Practices, "SSRF").
``read_bounded`` also bounds the upstream responses the proxy filters (``gateway.upstream.proxy``).

The answers of the two form endpoints are kept in the same kind of cache: keyed by the caller
token's SHA-256, each entry with its own end (``Cached``, ``cache_until``).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar
from urllib.parse import quote_plus, urlencode

import aiohttp

from ..config import ClientAuthMethod
from ..secret import Secret
from ..strictjson import StrictJSONError, loads_strict

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "MAX_RESPONSE_BYTES",
    "Cached",
    "FetchError",
    "FormResponse",
    "cache_until",
    "client_authentication",
    "get_json_object",
    "noop",
    "post_form",
    "read_bounded",
    "time_to_use",
]

MAX_DOCUMENT_BYTES: Final = 512 * 1024
MAX_RESPONSE_BYTES: Final = 64 * 1024  # a token or introspection response is a few KiB at most

V = TypeVar("V")


# =========================================================================== documents


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


# =========================================================================== forms


@dataclass(frozen=True, slots=True)
class FormResponse:
    """What the shell hands to the pure interpreters: status, bounded body, ``Retry-After``."""

    status: int
    body: bytes
    retry_after: str | None = None


def client_authentication(
    method: ClientAuthMethod, client_id: str, client_secret: Secret
) -> tuple[dict[str, str], dict[str, str]]:
    """Headers and form fields that authenticate the gateway as an OAuth client.

    RFC 6749 §2.3.1: with HTTP Basic, the id and secret are each form-urlencoded (Appendix B)
    before being joined by ":" and base64-encoded; with ``client_secret_post`` they are plain
    form parameters. Exactly one method is used per request (RFC 6749 §2.3).
    """
    if method == "client_secret_post":
        return {}, {"client_id": client_id, "client_secret": client_secret.reveal()}
    user_pass = f"{quote_plus(client_id)}:{quote_plus(client_secret.reveal())}"
    encoded = base64.b64encode(user_pass.encode("ascii")).decode("ascii")
    return {"Authorization": f"Basic {encoded}"}, {}


async def post_form(
    session: aiohttp.ClientSession,
    url: str,
    fields: Mapping[str, str],
    headers: Mapping[str, str],
    *,
    timeout_s: float,
    max_bytes: int = MAX_RESPONSE_BYTES,
) -> FormResponse:
    """POST ``application/x-www-form-urlencoded`` (RFC 6749 §3.2 / RFC 7662 §2.1).

    No redirects followed (a 3xx is returned as is), one total timeout, the body bounded. Raises
    ``FetchError`` with a message fit for the log: it names the URL, never the form's contents.
    """
    try:
        async with session.post(
            url,
            data=urlencode(fields),
            headers={
                **headers,
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            body = await read_bounded(response, max_bytes)
            return FormResponse(response.status, body, response.headers.get("Retry-After"))
    except TimeoutError as exc:
        raise FetchError(f"POST {url}: timed out after {timeout_s}s") from exc
    except aiohttp.ClientError as exc:
        raise FetchError(f"POST {url}: {type(exc).__name__}") from exc


# =========================================================================== answers kept


@dataclass(frozen=True, slots=True)
class Cached(Generic[V]):
    """An answer from the authorization server, and until when it may be used again."""

    value: V
    until: float


def time_to_use(_key: object, entry: Cached[Any], _now: float) -> float:
    """The ``ttu`` of a ``cachetools.TLRUCache`` of ``Cached`` entries: each ends at its own time."""
    return entry.until


def cache_until(now: float, lifetime_s: float | None, *, not_after: float = math.inf) -> float | None:
    """The end of an answer's reuse: ``lifetime_s`` from ``now``, never past ``not_after``.

    None, keep nothing, when the lifetime is unknown or the end is not after ``now``.
    """
    if lifetime_s is None:
        return None
    until = min(now + lifetime_s, not_after)
    return until if until > now else None


def noop(*_args: object) -> None:
    """The metrics hook when none is given: told every event, does nothing."""
