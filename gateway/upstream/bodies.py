"""Reading an upstream's answer body within the route's times: whole (bounded), or as it comes.

A non-SSE body may be silent for at most ``upstream_idle_timeout_s`` between chunks and must be
complete within ``response_timeout_s``; an SSE stream has no read timeout (it may be silent as
long as it likes), only the optional heartbeat and max lifetime. No timer is started for bytes
that have already arrived (``is_eof``), which is the common case of a small answer: that is
taken as it is, without a loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ..config import RouteConfig
from ..errors import UpstreamError, UpstreamTimeout
from .http_client import AnswerBroken, BodyReader, UpstreamAnswer


async def read_whole_body(upstream: UpstreamAnswer, route: RouteConfig, limit: int) -> bytes:
    """The upstream's whole body: at most ``limit`` bytes (else 502), no silence longer than
    ``upstream_idle_timeout_s`` and all of it within ``response_timeout_s`` (else 504)."""
    if upstream.content_length is not None and upstream.content_length > limit:
        raise UpstreamError("upstream_response_too_large", detail=f"Content-Length > {limit}")
    content = upstream.content
    if content.is_eof():  # all of it came with the headers (a small answer, mostly): no timer, no loop
        try:
            whole = content.read_nowait()
        except AnswerBroken as exc:
            raise UpstreamError("upstream_failed", detail=type(exc).__name__) from exc
        if len(whole) > limit:
            raise UpstreamError("upstream_response_too_large", detail=f"more than {limit} bytes")
        return whole
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(route.response_timeout_s):
            async for chunk in chunks_within(content, route.upstream_idle_timeout_s):
                size += len(chunk)
                if size > limit:
                    raise UpstreamError("upstream_response_too_large", detail=f"more than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError as exc:
        raise UpstreamTimeout(detail="response body timed out") from exc
    except AnswerBroken as exc:
        raise UpstreamError("upstream_failed", detail=type(exc).__name__) from exc
    return b"".join(chunks)


async def chunks_within(reader: BodyReader, idle_s: float) -> AsyncIterator[bytes]:
    """A body's chunks as they arrive; ``TimeoutError`` once it is silent for ``idle_s``."""
    while True:
        # No timer for what has arrived already (a whole small answer, mostly).
        async with asyncio.timeout(None if reader.is_eof() else idle_s):
            chunk = await reader.readany()
        if not chunk:
            return
        yield chunk


async def sse_chunks(
    reader: BodyReader, heartbeat_s: float | None, lifetime_s: float | None
) -> AsyncIterator[bytes | None]:
    """An SSE body's chunks as they arrive, with no read timeout: a stream may be silent for as
    long as it likes. ``None`` each time it has been silent for ``heartbeat_s``; the iteration
    ends when the upstream ends the stream or after ``lifetime_s``."""
    if heartbeat_s is None and lifetime_s is None:
        async for chunk in reader.iter_any():
            yield chunk
        return
    loop = asyncio.get_running_loop()
    ends_at = None if lifetime_s is None else loop.time() + lifetime_s
    while True:
        wait = heartbeat_s
        if ends_at is not None:
            left = ends_at - loop.time()
            if left <= 0:
                return
            wait = left if wait is None else min(wait, left)
        try:
            async with asyncio.timeout(wait):
                chunk = await reader.readany()
        except TimeoutError:
            if ends_at is None or loop.time() < ends_at:
                yield None
            continue
        if not chunk:
            return
        yield chunk
