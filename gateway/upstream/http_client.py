"""The HTTP/1.1 client of the upstream leg: kept-alive connections to one upstream, on asyncio
protocols with llhttp (``httptools``, the parser uvicorn uses) reading the answers.

Why not aiohttp's client: the gateway sends one request shape to one trusted origin, and
aiohttp's general client (URL building, cookie and redirect machinery, request and connector
objects, timers) cost ~73 µs of CPU per request here against ~18 µs for this (measured,
docs/performance.md). Strictness is llhttp's: it refuses what aiohttp's parser refuses (a
Content-Length beside a Transfer-Encoding, two different Content-Lengths, bad chunk framing,
bare CR/LF in headers) and this module never relaxes it.

- One request at a time per connection; an idle connection goes back to the pool only when its
  answer was read to its end, kept alive by the upstream, and nothing else arrived on it. Idle
  connections are closed after ``keepalive_s`` or when the upstream closes them.
- Header values with CR or LF are refused before anything is written (no request splitting).
- Failures are ``ConnectFailed`` (nothing was sent: refused, reset in the handshake, name not
  resolved, TLS), ``ConnectTimedOut``, or ``AnswerBroken`` (the connection ended or the answer
  was malformed after the request went). A GET or DELETE whose reused connection turns out to be
  closed before any byte of the answer is sent once more on a new one (aiohttp does the same for
  idempotent methods); a POST is not: the upstream may have acted on it.
- The body is read as it comes (``BodyReader``); past ``_PAUSE_AT`` buffered bytes the socket is
  paused until the reader catches up, so a slow client slows the upstream instead of the memory.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Final, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

# Buffered body bytes past which the upstream socket is paused (as aiohttp's StreamReader: twice 64 KiB).
_PAUSE_AT: Final = 128 * 1024
# Bytes an answer may take before its headers are complete (1xx interim answers included): llhttp
# itself sets no bound, and aiohttp's parser allowed 8 KiB per line and 32 KiB of fields.
_HEAD_LIMIT: Final = 64 * 1024
_INTERIM_LIMIT: Final = 16
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "PUT", "TRACE"})
# Statuses whose answer never has a body (RFC 9110 §6.4.1), 1xx aside.
_BODILESS_STATUSES: Final = frozenset({204, 304})


class UpstreamIOError(Exception):
    """The upstream leg failed below HTTP semantics."""


class ConnectFailed(UpstreamIOError):
    """No connection was made, so nothing was sent."""


class TlsFailed(ConnectFailed):
    """The TLS handshake failed (it would fail the same way again)."""


class ConnectTimedOut(UpstreamIOError):
    """No connection within the connect timeout."""


class AnswerBroken(UpstreamIOError):
    """The connection ended, or the answer was malformed, after the request was sent."""


class BodyReader:
    """An answer's body as it arrives: ``readany`` waits for the next bytes, ``b""`` at its end."""

    __slots__ = ("_chunks", "_connection", "_eof", "_error", "_size", "_waiter")

    def __init__(self, connection: _Connection) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._connection = connection

    # What the connection feeds.
    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _PAUSE_AT:
            self._connection.pause()
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if not self._eof:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # What the relay reads.
    def is_eof(self) -> bool:
        """The whole body has arrived (some of it may still be unread)."""
        return self._eof

    def at_eof(self) -> bool:
        """The whole body has arrived and been read."""
        return self._eof and not self._chunks

    def read_nowait(self) -> bytes:
        """Everything buffered now (``AnswerBroken`` if the body broke)."""
        if self._error is not None:
            raise self._error
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._size = 0
        self._connection.resume()
        return data

    async def readany(self) -> bytes:
        """What has arrived, waiting for something if nothing has; ``b""`` once the body is over."""
        while not self._chunks and not self._eof and self._error is None:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self.read_nowait()

    async def iter_any(self) -> AsyncIterator[bytes]:
        while chunk := await self.readany():
            yield chunk


class UpstreamAnswer:
    """One answer: status, headers, ``content`` (the body), and the connection's ``transport``.

    Leaving ``async with`` gives the connection back to the pool if the answer was complete and
    may be followed by another; otherwise (unread body, an error, the caller cancelled) closes it,
    which the upstream sees as the client going away.
    """

    __slots__ = ("_connection", "_done", "content", "content_length", "headers", "status")

    def __init__(self, connection: _Connection, status: int, headers: CIMultiDict[str]) -> None:
        self.status = status
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(headers)
        self.content = BodyReader(connection)
        self.content_length = _content_length(headers)
        self._connection = connection
        self._done = False

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._connection.transport

    async def __aenter__(self) -> UpstreamAnswer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._connection.answer_done()


class _Connection(asyncio.Protocol):
    """One connection's protocol: writes a request, parses its answer with llhttp."""

    def __init__(self, pool: UpstreamClient) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._waiting: asyncio.Future[UpstreamAnswer] | None = None
        self._body_until_close = False
        self._paused = False
        self._new_exchange()

    def _new_exchange(self) -> None:
        """Forget the previous answer: what is known of the one to come starts here."""
        self._answer: UpstreamAnswer | None = None
        self._complete = False
        self._keep_alive = False
        self._head_bytes = 0
        self._field_bytes = 0
        self._framing_bytes = 0
        self._body_seen = False
        self._interim = 0
        self._raw_headers = []
        self.received_any = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no registered subclass

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        if self._waiting is None and (self._answer is None or self._complete):
            self._break(AnswerBroken("bytes from the upstream with no request outstanding"))
            return
        heading = self._waiting is not None  # this read may end the headers: bounded by their own limits
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._break(AnswerBroken(f"malformed answer: {type(exc).__name__}"))
            return
        if self._waiting is not None:  # still no end of the headers
            self._head_bytes += len(data)
            if self._head_bytes > _HEAD_LIMIT:
                self._break(AnswerBroken(f"no end of the answer's headers within {_HEAD_LIMIT} bytes"))
        elif not self._complete and not heading:
            # Bytes of the answer that carry none of its body (chunk sizes and extensions, a
            # trailer field llhttp holds until its line ends) are bounded like its headers.
            self._framing_bytes = 0 if self._body_seen else self._framing_bytes + len(data)
            self._body_seen = False
            if self._framing_bytes > _HEAD_LIMIT:
                self._break(AnswerBroken(f"{_HEAD_LIMIT} bytes of an answer without any of its body"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        error = AnswerBroken("the upstream closed the connection")
        if exc is not None:
            error.__cause__ = exc
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_exception(error)
        answer = self._answer
        if answer is not None and not self._complete:
            if self._body_until_close and exc is None:
                self._complete = True
                answer.content.feed_eof()
            else:
                answer.content.fail(error)

    # llhttp callbacks
    def on_message_begin(self) -> None:
        if self._waiting is None:
            # A message after the answer, in the same read: never taken for the next request's
            # answer (raised through llhttp: data_received breaks the connection).
            raise AnswerBroken("bytes from the upstream with no request outstanding")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._field_bytes += len(name) + len(value)
        if self._field_bytes > _HEAD_LIMIT:  # raised through llhttp: data_received breaks the exchange
            raise AnswerBroken(f"answer headers past {_HEAD_LIMIT} bytes")
        if self._waiting is not None:  # else a chunked body's trailer field: counted, not kept
            self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        raw, self._raw_headers = self._raw_headers, []
        if status < 200:  # 1xx interim answer (103 Early Hints, say): the real one follows
            self._interim += 1
            if self._interim > _INTERIM_LIMIT:
                raise AnswerBroken(f"more than {_INTERIM_LIMIT} interim answers")
            return
        if self._waiting is None:  # a second answer to one request: nothing can be trusted now
            raise AnswerBroken("an answer with no request outstanding")
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in raw:
            headers.add(name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        answer = UpstreamAnswer(self, status, headers)
        self._answer = answer
        self._body_until_close = (
            answer.content_length is None and not _chunked(headers) and status not in _BODILESS_STATUSES
        )
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.done():
            waiting.set_result(answer)

    def on_body(self, body: bytes) -> None:
        self._body_seen = True
        if self._answer is not None:
            self._answer.content.feed(body)

    def on_message_complete(self) -> None:
        if self._answer is not None and not self._complete and self._waiting is None:
            self._complete = True
            # Asked now: llhttp forgets the answer's framing once the callback returns.
            self._keep_alive = self._parser.should_keep_alive()
            self._answer.content.feed_eof()

    # used by the pool and the answer
    def send(self, data: bytes) -> asyncio.Future[UpstreamAnswer]:
        if self.transport is None:
            raise AnswerBroken("the upstream closed the connection")
        self._new_exchange()
        self._waiting = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._waiting

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def answer_done(self) -> None:
        """The caller is through with the answer: back to the pool if it may carry another."""
        reusable = self._complete and not self.closed and not self._body_until_close and self._keep_alive
        self._answer = None
        if reusable:
            self.resume()
            self._pool.put_back(self)
        else:
            self.close()

    def _break(self, error: AnswerBroken) -> None:
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_exception(error)
        if self._answer is not None and not self._complete:
            self._answer.content.fail(error)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()  # nothing of ours is left to flush: a request or nothing


class UpstreamClient:
    """Pooled, kept-alive HTTP/1.1 connections to one origin (``http`` or ``https`` URL)."""

    def __init__(self, url: str, *, connect_timeout_s: float, keepalive_s: float = 30.0) -> None:
        # yarl (aiohttp's URL type) reads the URL as aiohttp's client did: an IDNA host, and the
        # path and query percent-encoded and normalised (see ``target``).
        parsed = URL(url)
        self.scheme = parsed.scheme
        self._host = parsed.raw_host or ""
        default_port = 443 if parsed.scheme == "https" else 80
        self._port = parsed.port or default_port
        self._ssl = _tls_context() if parsed.scheme == "https" else None
        host = f"[{self._host}]" if ":" in self._host else self._host
        explicit = parsed.explicit_port
        self._host_line = (
            f"Host: {host}" if explicit in (None, default_port) else f"Host: {host}:{explicit}"
        ) + "\r\n"
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._idle: list[_Connection] = []
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    def target(self, url: str) -> str:
        """The request target for ``url`` (same origin): its path and query, percent-encoded and
        with dot segments removed as aiohttp sent them (a raw non-ASCII target is refused by
        strict servers: h11 answers 400)."""
        return URL(url).raw_path_qs or "/"

    async def request(
        self, method: str, target: str, body: bytes | None, headers: Mapping[str, str]
    ) -> UpstreamAnswer:
        """Send one request; return once the answer's headers are in (the body follows)."""
        head = self._head(method, target, body, headers)
        data = head if not body else head + body
        connection = self._idle_connection()
        if connection is not None:
            try:
                return await self._exchange(connection, data)
            except AnswerBroken:
                if connection.received_any or method not in _IDEMPOTENT:
                    raise
                # A reused connection the upstream had closed meanwhile: nothing was answered.
        return await self._exchange(await self._connect(), data)

    async def _exchange(self, connection: _Connection, data: bytes) -> UpstreamAnswer:
        try:
            return await connection.send(data)
        except BaseException:
            connection.close()
            raise

    def _head(self, method: str, target: str, body: bytes | None, headers: Mapping[str, str]) -> bytes:
        lines = [method, " ", target, " HTTP/1.1\r\n", self._host_line]
        has_accept = has_type = False
        for name, value in headers.items():
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name or ":" in name:
                raise ValueError(f"header {name[:64]!r}: CR, LF or colon where none may be")
            lowered = name.lower()
            if lowered in ("content-length", "transfer-encoding", "host", "connection"):
                continue  # framing and the connection are this client's
            has_accept = has_accept or lowered == "accept"
            has_type = has_type or lowered == "content-type"
            lines += (name, ": ", value, "\r\n")
        if not has_accept:
            lines.append("Accept: */*\r\n")  # as aiohttp's client did
        if body is not None:
            if not has_type:
                lines.append("Content-Type: application/octet-stream\r\n")
            lines += ("Content-Length: ", str(len(body)), "\r\n")
        elif method == "POST":
            lines.append("Content-Length: 0\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("utf-8", "surrogateescape")

    def _idle_connection(self) -> _Connection | None:
        idle = self._idle
        if not idle:
            return None
        oldest_usable = asyncio.get_running_loop().time() - self._keepalive_s
        while idle:
            connection = idle.pop()  # the most recently used: warmest, least likely to be closed
            if not connection.closed and connection.idle_since > oldest_usable:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        if self._closed:
            raise ConnectFailed("the client is closed")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except TimeoutError as exc:
            raise ConnectTimedOut(f"no connection within {self._connect_timeout_s}s") from exc
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise TlsFailed(type(exc).__name__) from exc
        except (
            OSError,
            UnicodeError,
        ) as exc:  # refused, unreachable, reset, name not resolved or not encodable
            raise ConnectFailed(type(exc).__name__) from exc
        return protocol

    def put_back(self, connection: _Connection) -> None:
        if self._closed:
            connection.close()
            return
        loop = asyncio.get_running_loop()
        connection.idle_since = loop.time()
        self._idle.append(connection)
        if self._sweep is None:
            self._sweep = loop.call_later(self._keepalive_s, self._close_expired)

    def _close_expired(self) -> None:
        """Close connections idle for longer than ``keepalive_s`` (and forget closed ones)."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        oldest_usable = loop.time() - self._keepalive_s
        kept = []
        for connection in self._idle:
            if connection.closed or connection.idle_since <= oldest_usable:
                connection.close()
            else:
                kept.append(connection)
        self._idle = kept
        if kept:
            self._sweep = loop.call_later(self._keepalive_s, self._close_expired)

    async def aclose(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One default context for every https upstream: loading the trust store takes ~20 ms, which
    a reload (new clients while the loop serves) must not pay per route."""
    return ssl.create_default_context()


def _chunked(headers: CIMultiDict[str]) -> bool:
    codings: list[str] = headers.getall("Transfer-Encoding", [])
    return bool(codings) and codings[-1].rsplit(",", 1)[-1].strip().lower() == "chunked"


def _content_length(headers: CIMultiDict[str]) -> int | None:
    value = headers.get("Content-Length")
    if value is None or "Transfer-Encoding" in headers:
        return None
    try:
        return int(value)
    except ValueError:
        return None
