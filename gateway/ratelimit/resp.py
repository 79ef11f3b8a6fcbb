"""A Redis client for the rate limiter: RESP2 commands pipelined over one connection per process.

Why not redis-py: its asyncio client spent 150-165 µs of CPU per ``EVALSHA`` in the benchmark
(pool checkout, a connection's locks, its generic command and reply layers), more than a third
of a rate-limited request. The limiter sends three commands (``EVALSHA``, ``SCRIPT LOAD``,
``ZREM``) plus ``AUTH`` / ``SELECT`` when it connects. Here a command is written as soon as it is
issued, every command issued in the same loop iteration in one write, and replies are handed to
callers in the order the commands went out: Redis answers one connection's commands in order,
so the replies to 64 concurrent decisions come back in one or two reads (automatic pipelining).

Failure is never silent and never a wrong answer: a reply with no command waiting for it, a
malformed or oversized reply, or the connection closing fails every command in flight and drops
the connection (the next command opens a new one); a caller that stops waiting (its timeout)
leaves its place in the queue, so the replies after it still find their callers.
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

from ..singleflight import SingleFlight
from .redis_address import RedisAddress

__all__ = [
    "RedisAuthError",
    "RedisClient",
    "RedisConnectionError",
    "RedisReplyError",
    "ReplyReader",
    "encode_command",
    "parse_reply",
    "tls_context",
]

# Bounds on a reply: the limiter's largest is EVALSHA's four integers per limit of a request.
# A reply still incomplete past MAX_REPLY_BYTES (however it is split: one bulk, or many small
# items) drops the connection rather than grow the buffer; with MAX_REPLY_ITEMS per array they
# also bound the work of parsing an incomplete reply again as its pieces arrive.
MAX_REPLY_BYTES: Final = 64 * 1024
MAX_REPLY_ITEMS: Final = 4096
MAX_REPLY_DEPTH: Final = 4
_AUTH_CODES: Final = frozenset({"NOAUTH", "WRONGPASS", "NOPERM"})
_CRLF: Final = b"\r\n"


class RedisReplyError(Exception):
    """The server answered a command with an error reply; ``code`` is its first word."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = message.split(" ", 1)[0]


class RedisAuthError(RedisReplyError):
    """The server refused the login, or a command for want of one."""


class RedisConnectionError(ConnectionError):
    """No usable connection: closed, broken, or a reply that cannot be read."""


Command = Sequence[str | bytes | int]


def encode_command(arguments: Command) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(arguments)]
    for argument in arguments:
        raw = argument if isinstance(argument, bytes) else str(argument).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


class _Pending:
    """What ``ReplyReader.read`` returns while a reply is incomplete."""


PENDING: Final = _Pending()


def parse_reply(buffer: bytes | bytearray, at: int = 0) -> tuple[Any, int] | None:
    """The RESP2 reply starting at ``at`` and where the next one starts, or None while it is
    incomplete (one reply, read at once: ``ReplyReader`` reads a stream)."""
    reply, after = ReplyReader().read(buffer, at)
    return None if reply is PENDING else (reply, after)


class ReplyReader:
    """RESP2 replies out of a stream of reads, incrementally: the finished items of an incomplete
    reply are kept, so no byte is parsed twice however the reply is split.

    An error reply is returned as a ``RedisReplyError`` (not raised: it answers one command only);
    bytes that are no RESP2, or a reply past the bounds above, raise ``RedisConnectionError``.
    """

    __slots__ = ("_arrays", "_reply_bytes")

    def __init__(self) -> None:
        self._arrays: list[tuple[list[Any], int]] = []  # the arrays being filled, and their lengths
        self._reply_bytes = 0  # of the reply being read, so far

    def read(self, buffer: bytes | bytearray, at: int) -> tuple[Any, int]:
        """The next complete reply from ``at`` and where the one after it starts; or ``PENDING``
        and where the unread rest starts (the caller keeps the bytes from there for the next read)."""
        arrays = self._arrays
        while True:
            element = _element(buffer, at)
            if element is None:
                return PENDING, at
            opens_array, value, after = element
            self._reply_bytes += after - at
            if self._reply_bytes > MAX_REPLY_BYTES:
                raise RedisConnectionError("reply too large")
            at = after
            if opens_array:
                if len(arrays) >= MAX_REPLY_DEPTH:
                    raise RedisConnectionError("reply nested too deep")
                arrays.append(([], value))
                continue
            while arrays:
                items, length = arrays[-1]
                items.append(value)
                if len(items) < length:
                    break
                arrays.pop()
                value = items
            else:
                self._reply_bytes = 0
                return value, at


def _element(buffer: bytes | bytearray, at: int) -> tuple[bool, Any, int] | None:
    """One element at ``at``: (False, value, end) for a value, (True, length, end) for the start
    of a non-empty array; None while incomplete."""
    end = buffer.find(_CRLF, at)
    if end < 0:
        if len(buffer) - at > MAX_REPLY_BYTES:
            raise RedisConnectionError("reply line too long")
        return None
    kind = buffer[at]
    line = bytes(buffer[at + 1 : end])
    after = end + 2
    if kind == 0x2B:  # + simple string
        return False, line.decode("utf-8", "replace"), after
    if kind == 0x2D:  # - error
        message = line.decode("utf-8", "replace")
        error = RedisReplyError(message)
        return False, (RedisAuthError(message) if error.code in _AUTH_CODES else error), after
    length = _length(line)
    if kind == 0x3A:  # : integer
        return False, length, after
    if kind == 0x24:  # $ bulk string
        if length == -1:
            return False, None, after  # nil
        if length < -1 or length > MAX_REPLY_BYTES:
            raise RedisConnectionError("bulk reply length out of bounds")
        if len(buffer) < after + length + 2:
            return None
        if buffer[after + length : after + length + 2] != _CRLF:
            raise RedisConnectionError("bulk reply not ended by CRLF")
        return False, bytes(buffer[after : after + length]), after + length + 2
    if kind == 0x2A:  # * array
        if length < -1 or length > MAX_REPLY_ITEMS:
            raise RedisConnectionError("array reply length out of bounds")
        if length <= 0:
            return False, (None if length == -1 else []), after
        return True, length, after
    raise RedisConnectionError(f"reply type {kind!r} is no RESP2")


_NUMBER: Final = re.compile(rb"-?[0-9]{1,20}")


def _length(line: bytes) -> int:
    # Strictly digits: int() would also take "1_000", " 2 " or a 5000-digit number.
    if _NUMBER.fullmatch(line) is None:
        raise RedisConnectionError("reply number unreadable")
    return int(line)


def tls_context(address: RedisAddress) -> ssl.SSLContext:
    """The verifying TLS context of a ``rediss://`` address (reads files: call it off the loop)."""
    context = ssl.create_default_context(cafile=address.ca_file)
    if address.cert_file is not None:
        context.load_cert_chain(address.cert_file, address.key_file)
    return context


class _Connection(asyncio.Protocol):
    """One connection: commands queue their futures in the order they are written."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._reader = ReplyReader()
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._outgoing: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a stream connection's transport

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """The future of ``command``'s reply; written with the others of this loop iteration."""
        if self.closed:
            raise RedisConnectionError("connection closed")
        future = self._loop.create_future()
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        self._outgoing.append(command)
        self._waiting.append(future)
        return future

    def _flush(self) -> None:
        if self.closed or self._transport is None or not self._outgoing:
            return
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        self._transport.write(data)

    def data_received(self, data: bytes) -> None:
        buffer: bytes | bytearray
        if self._buffer:
            self._buffer += data
            buffer = self._buffer
        else:
            buffer = data
        at = 0
        waiting = self._waiting
        try:
            while at < len(buffer):
                reply, at = self._reader.read(buffer, at)
                if reply is PENDING:
                    break
                if not waiting:
                    raise RedisConnectionError("a reply to no command")
                future = waiting.popleft()
                if future.done():  # its caller stopped waiting (a timeout)
                    continue
                if isinstance(reply, RedisReplyError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except RedisConnectionError as error:
            self.drop(error)
            return
        # What is left is the start of one element (the reader holds the reply's finished items).
        if buffer is self._buffer:
            del self._buffer[:at]
        elif at < len(buffer):
            self._buffer = bytearray(buffer[at:])

    def eof_received(self) -> bool:
        return False  # the server closed: so do we (connection_lost follows)

    def connection_lost(self, exc: Exception | None) -> None:
        # A TLS alert (e.g. the server wanted a client certificate: with TLS 1.3 it says so only
        # after the handshake) is kept, so the outage says tls.
        self._fail_waiting(exc if isinstance(exc, ssl.SSLError) else RedisConnectionError("connection lost"))

    def drop(self, error: Exception | None = None) -> None:
        """Close now, failing every command still waiting for its reply."""
        if self._transport is not None:
            self._transport.abort()
        self._fail_waiting(error or RedisConnectionError("connection dropped"))

    def _fail_waiting(self, error: Exception) -> None:
        self.closed = True
        self._outgoing.clear()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)


class RedisClient:
    """One server's pipelined connection, opened on first use and again after it is lost.

    ``max_in_flight`` bounds the commands waiting for replies at once; past it a command waits
    for a place (its caller's timeout applies). ``connect_timeout_s`` bounds one connect and
    login; callers that arrive while a connection is being opened wait for the same one.
    """

    def __init__(
        self,
        address: RedisAddress,
        *,
        connect_timeout_s: float,
        max_in_flight: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._address = address
        self._connect_timeout_s = connect_timeout_s
        self._tls = tls
        self._slots = asyncio.Semaphore(max_in_flight)
        self._connection: _Connection | None = None
        self._connecting: SingleFlight[str, _Connection] = SingleFlight()
        self._closed = False

    async def execute(
        self, *arguments: str | bytes | int, on_written: Callable[[], None] | None = None
    ) -> Any:
        """The reply to one command; ``RedisReplyError`` for an error reply. ``on_written`` is
        called once the command is queued on a connection: from then on the server may run it."""
        async with self._slots:
            connection = await self._connected()
            reply = connection.send(encode_command(arguments))
            if on_written is not None:
                on_written()
            return await reply

    async def execute_all(self, commands: Sequence[Command]) -> list[Any]:
        """The replies to several commands, sent in one write; the first error reply is raised."""
        async with self._slots:
            connection = await self._connected()
            futures = [connection.send(encode_command(command)) for command in commands]
            return list(await asyncio.gather(*futures))

    def drop_connection(self) -> None:
        """Close the connection (after a timeout its state is unknown); the next command reconnects."""
        if self._connection is not None:
            self._connection.drop()
            self._connection = None

    async def aclose(self) -> None:
        """Close the connection; a connect under way ends first (within ``connect_timeout_s``),
        so its waiters see a closed connection, never a cancellation that was not theirs. A
        command after this fails with ``RedisConnectionError``; nothing reconnects."""
        self._closed = True
        running = self._connecting.start("connect", self._open) if len(self._connecting) else None
        if running is not None:
            await asyncio.wait([running])
        self.drop_connection()

    async def _connected(self) -> _Connection:
        connection = self._connection
        if connection is None or connection.closed:
            if self._closed:
                raise RedisConnectionError("client closed")
            connection = await self._connecting.run("connect", self._open)
        return connection

    async def _open(self) -> _Connection:
        address = self._address
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout_s):
            try:
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop),
                    address.host,
                    address.port,
                    ssl=self._tls,
                    server_hostname=address.host if self._tls is not None else None,
                )
            except UnicodeError:  # a host name IDNA cannot encode (the config refuses most)
                raise RedisConnectionError("host name cannot be encoded") from None
            if self._closed:  # closed while connecting
                connection.drop()
                raise RedisConnectionError("client closed")
            try:
                await self._log_in(connection)
            except BaseException:
                connection.drop()
                raise
        self._connection = connection
        return connection

    async def _log_in(self, connection: _Connection) -> None:
        address = self._address
        replies = []
        if address.password is not None:
            login = (address.username, address.password) if address.username else (address.password,)
            replies.append(connection.send(encode_command(("AUTH", *login))))
        if address.db:
            replies.append(connection.send(encode_command(("SELECT", address.db))))
        outcomes = await asyncio.gather(*replies, return_exceptions=True)
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, RedisReplyError) and index == 0 and address.password is not None:
                # WRONGPASS (Redis 6+), or "ERR invalid password" / "ERR AUTH … called without any
                # password configured" (older servers, or none set): the login. Anything else, such
                # as "ERR max number of clients reached" sent before a command is read, is not.
                # Either way only the code is kept: the message may echo the user name, or (an
                # AUTH renamed away: "unknown command 'AUTH', with args beginning with: …") the
                # password itself.
                if isinstance(outcome, RedisAuthError) or "password" in str(outcome).lower():
                    raise RedisAuthError(outcome.code) from None
                raise RedisReplyError(outcome.code) from None
            if isinstance(outcome, BaseException):
                raise outcome
