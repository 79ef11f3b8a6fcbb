"""The rate limiter's Redis client (gateway/ratelimit/resp.py): RESP2 read exactly, commands
pipelined on one connection, replies to the right callers whatever goes wrong.

The servers here are raw asyncio TCP servers on 127.0.0.1 that script the exact bytes a Redis
would send (or a broken one would); tests against a real redis-server are in
tests/integration/test_ratelimit_redis.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.ratelimit.redis_address import RedisAddress, redis_address
from gateway.ratelimit.resp import (
    MAX_REPLY_BYTES,
    MAX_REPLY_ITEMS,
    RedisAuthError,
    RedisClient,
    RedisConnectionError,
    RedisReplyError,
    encode_command,
    parse_reply,
)

# --- the protocol, as bytes ----------------------------------------------------------------------


def test_a_command_is_an_array_of_bulk_strings() -> None:
    """Every argument a bulk string with its byte length (UTF-8), numbers as decimal text."""
    assert encode_command(("EVALSHA", "ab", 2, "ké")) == (
        b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n2\r\n$3\r\nk\xc3\xa9\r\n"
    )


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"+OK\r\n", "OK"),
        (b":-42\r\n", -42),
        (b"$3\r\nab\n\r\n", b"ab\n"),
        (b"$0\r\n\r\n", b""),
        (b"$-1\r\n", None),
        (b"*-1\r\n", None),
        (b"*0\r\n", []),
        (b"*3\r\n:1\r\n$1\r\nx\r\n*1\r\n:0\r\n", [1, b"x", [0]]),
    ],
)
def test_replies_are_read_whole_and_every_prefix_is_incomplete(raw: bytes, value: Any) -> None:
    """Each RESP2 reply type reads as its value and ends where it ends; any shorter prefix is
    incomplete (None), never a wrong value."""
    assert parse_reply(raw + b":7\r\n") == (value, len(raw))
    for cut in range(len(raw)):
        assert parse_reply(raw[:cut]) is None, raw[:cut]


def test_an_error_reply_is_a_value_and_auth_errors_are_named() -> None:
    """An error answers one command (returned, not raised); NOAUTH / WRONGPASS are auth errors."""
    reply, _ = parse_reply(b"-NOSCRIPT No matching script.\r\n")  # type: ignore[misc]
    assert type(reply) is RedisReplyError and reply.code == "NOSCRIPT"
    for code in ("NOAUTH", "WRONGPASS"):
        reply, _ = parse_reply(f"-{code} no\r\n".encode())  # type: ignore[misc]
        assert isinstance(reply, RedisAuthError)


@pytest.mark.parametrize(
    "raw",
    [
        b"!5\r\nhello\r\n",  # a RESP3 type
        b":12x\r\n",
        b":1_000\r\n",
        b"$ 2 \r\nab\r\n",
        b":" + b"9" * 21 + b"\r\n",
        b"$3\r\nabcd\r\n",  # the bulk's length is wrong
        b"$-2\r\n",
        b"*-2\r\n",
        b"$%d\r\n" % (MAX_REPLY_BYTES + 1),
        b"*%d\r\n" % (MAX_REPLY_ITEMS + 1),
        b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",  # nested past MAX_REPLY_DEPTH
        b"+" + b"x" * (MAX_REPLY_BYTES + 1),  # a line that never ends
    ],
)
def test_what_is_no_resp2_is_refused(raw: bytes) -> None:
    """A reply that cannot be read raises (the connection is then dropped), never guesses."""
    with pytest.raises(RedisConnectionError):
        parse_reply(raw)


# --- URLs ----------------------------------------------------------------------------------------


def test_a_url_is_read_into_an_address_that_never_shows_its_password() -> None:
    """User and password percent-decoded, the database from the path, TLS options for rediss."""
    address = redis_address("rediss://gw%40ops:p%3Ass@Cache.Internal:6380/3?ssl_ca_certs=/etc/ca.pem")
    assert address == RedisAddress(
        host="cache.internal",
        port=6380,
        tls=True,
        username="gw@ops",
        password="p:ss",
        db=3,
        ca_file="/etc/ca.pem",
    )
    assert "p:ss" not in repr(address) and address.target == "cache.internal:6380"
    assert redis_address("redis://:pw@[::1]") == RedisAddress(host="::1", password="pw")
    assert redis_address("redis://[::1]:7000/").target == "[::1]:7000"


@pytest.mark.parametrize(
    "url",
    [
        "redis://h?db=2",
        "rediss://h?ssl_cert_reqs=none",
        "rediss://h?ssl_check_hostname=false",
        "rediss://h?ssl_ca_certs=a&ssl_ca_certs=b",
        "rediss://h?ssl_ca_certs=",
        "rediss://h?ssl_keyfile=k.pem",
        "rediss://h?x",
        "unix:///tmp/redis.sock",
        "redis://h/0#f",
        "redis://h:99999",
        "redis://h:0",
        "redis://:%FF@h",  # a password that is no UTF-8
        "redis://" + "x" * 64 + ".example",  # a label IDNA cannot encode
    ],
)
def test_urls_the_gateway_would_not_read_as_written_are_refused(url: str) -> None:
    """An option not read is an error (never ignored: turning verification off is not possible)."""
    with pytest.raises(ValueError) as caught:
        redis_address(url)
    assert "h" not in str(caught.value).split()  # the message does not quote the URL


@pytest.mark.parametrize("password", ["?Tr0ub4dor=3", "2024?Correct=x", "9?s3cr3t&x=1"])
def test_a_password_read_as_a_query_is_never_quoted(password: str) -> None:
    """An unencoded "?" in the password makes the rest of it the query: the refusal names no
    part of it."""
    with pytest.raises(ValueError) as caught:
        redis_address(f"rediss://:{password}@cache.internal:6380/0")
    secret = password.split("?")[1].split("=")[0]
    assert secret not in str(caught.value)


# --- the client over scripted servers ------------------------------------------------------------

Script = Callable[["Scripted", bytes, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Scripted:
    """A TCP server answering each read by ``script``; it keeps what it read, per connection."""

    script: Script
    port: int = 0
    connections: int = 0
    reads: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while data := await reader.read(65536):
                self.reads.append(data)
                await self.script(self, data, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    def commands(self) -> list[list[bytes]]:
        """Every command received, parsed back (the client's framing checked on the way)."""
        data, at, found = b"".join(self.reads), 0, []
        while at < len(data):
            parsed = parse_reply(data, at)
            assert parsed is not None
            command, at = parsed
            found.append(command)
        return found


@contextlib.asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[Scripted]:
    server = Scripted(script)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        await listener.wait_closed()


def client_of(server: Scripted, **address: Any) -> RedisClient:
    return RedisClient(
        RedisAddress(host="127.0.0.1", port=server.port, **address), connect_timeout_s=2, max_in_flight=1000
    )


async def echo_second_argument(server: Scripted, data: bytes, writer: asyncio.StreamWriter) -> None:
    """Answer each complete command with its second argument as an integer (``ECHO n`` -> ``:n``)."""
    pending = b"".join(server.reads)
    done = sum(len(read) for read in server.reads[:-1])
    at = 0
    while at < len(pending):
        parsed = parse_reply(pending, at)
        if parsed is None:
            return
        command, at = parsed
        if at > done:
            writer.write(b":%s\r\n" % command[1])


async def test_concurrent_commands_share_writes_and_each_gets_its_own_reply() -> None:
    """200 commands issued at once go out in a few writes on one connection (not 200), and each
    caller gets the reply to its own command."""
    async with scripted(echo_second_argument) as server:
        client = client_of(server)
        replies = await asyncio.gather(*(client.execute("ECHO", n) for n in range(200)))
        await client.aclose()
    assert replies == list(range(200))
    assert server.connections == 1
    assert len(server.reads) <= 5
    assert [command[1] for command in server.commands()] == [b"%d" % n for n in range(200)]


async def test_a_caller_that_stopped_waiting_does_not_shift_the_replies() -> None:
    """The first caller times out before its (late) reply; the second still gets its own reply."""

    async def slow_first(server: Scripted, data: bytes, writer: asyncio.StreamWriter) -> None:
        if len(server.reads) == 1:
            await asyncio.sleep(0.2)
            writer.write(b":1\r\n")
        else:
            writer.write(b":2\r\n")

    async with scripted(slow_first) as server:
        client = client_of(server)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await client.execute("ECHO", 1)
        assert await client.execute("ECHO", 2) == 2
        await client.aclose()


async def test_an_error_reply_fails_its_own_command_only() -> None:
    """-ERR for one command of a pipelined batch: that caller gets RedisReplyError, the others
    their replies, and the connection stays open."""

    async def fail_the_second(server: Scripted, data: bytes, writer: asyncio.StreamWriter) -> None:
        count = len(server.commands())
        writer.write(b"".join(b"-ERR no\r\n" if n == 1 else b":%d\r\n" % n for n in range(count)))

    async with scripted(fail_the_second) as server:
        client = client_of(server)
        results = await asyncio.gather(*(client.execute("X", n) for n in range(3)), return_exceptions=True)
        assert results[0] == 0 and results[2] == 2
        assert isinstance(results[1], RedisReplyError) and results[1].code == "ERR"
        server.reads.clear()
        assert await client.execute("X", 0) == 0
        await client.aclose()
    assert server.connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b":1\r\n:2\r\n:3\r\n", id="a-reply-to-no-command"),
        pytest.param(b"%1\r\n", id="not-resp2"),
        pytest.param(b"$99999999999\r\n", id="bulk-too-large"),
        pytest.param(b"", id="closed-unanswered"),
    ],
)
async def test_a_broken_answer_fails_the_commands_in_flight_and_a_new_connection_follows(
    answer: bytes,
) -> None:
    """An extra reply, bytes that are no RESP2, an oversized reply or a close: every waiting
    command fails with RedisConnectionError (none gets another's reply), and the next command
    opens a new connection that works."""

    async def broken_then_fine(server: Scripted, data: bytes, writer: asyncio.StreamWriter) -> None:
        if server.connections == 1:
            if answer:
                writer.write(answer)
            else:
                writer.close()
        else:
            writer.write(b":5\r\n")

    async with scripted(broken_then_fine) as server:
        client = client_of(server)
        results = await asyncio.gather(client.execute("A"), client.execute("B"), return_exceptions=True)
        if answer.startswith(b":1"):  # both were answered before the extra reply came
            assert list(results) == [1, 2]
        else:
            assert all(isinstance(result, RedisConnectionError) for result in results), results
        assert await client.execute("C") == 5
        await client.aclose()
    assert server.connections == 2


async def test_login_and_database_go_first_on_each_connection() -> None:
    """AUTH user password, then SELECT db, before any command, on every new connection."""

    async def ok(server: Scripted, data: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OK\r\n" * data.count(b"*"))

    async with scripted(ok) as server:
        client = client_of(server, username="gw", password="pw", db=2)
        assert await client.execute("PING") == "OK"
        await client.aclose()
    assert server.commands() == [[b"AUTH", b"gw", b"pw"], [b"SELECT", b"2"], [b"PING"]]


@pytest.mark.parametrize(
    ("answer", "error_type", "text"),
    [
        pytest.param(
            b"-WRONGPASS invalid username-password pair for gw", RedisAuthError, "WRONGPASS", id="wrongpass"
        ),
        pytest.param(b"-ERR invalid password", RedisAuthError, "ERR", id="older-server"),
        # A full server answers a new connection before it reads anything: with a password in
        # the URL that is the reply to AUTH, but not a refused login.
        pytest.param(b"-ERR max number of clients reached", RedisReplyError, "ERR", id="full"),
        # AUTH renamed away: the server's message quotes the arguments, the password among them.
        pytest.param(
            b"-ERR unknown command 'AUTH', with args beginning with: 'pw' ",
            RedisReplyError,
            "ERR",
            id="renamed",
        ),
    ],
)
async def test_an_error_to_auth_is_an_auth_error_only_if_it_is_about_the_login(
    answer: bytes, error_type: type[Exception], text: str
) -> None:
    """A refused login is RedisAuthError, any other error a RedisReplyError, both with the code
    only (the server's message may echo the user or the password); nothing is sent after AUTH."""

    async def refuse(server: Scripted, data: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer + b"\r\n")

    async with scripted(refuse) as server:
        client = client_of(server, password="pw")
        with pytest.raises(RedisReplyError) as caught:
            await client.execute("PING")
        await client.aclose()
    assert type(caught.value) is error_type and str(caught.value) == text
    assert [command[0] for command in server.commands()] == [b"AUTH"]


async def test_callers_arriving_together_share_one_connect() -> None:
    """50 first commands at once open one connection, not 50."""
    async with scripted(echo_second_argument) as server:
        client = client_of(server)
        assert await asyncio.gather(*(client.execute("E", n) for n in range(50))) == list(range(50))
        await client.aclose()
    assert server.connections == 1


async def test_nothing_listening_is_a_connection_error() -> None:
    """A refused connect is an OSError (the store's ``connection`` reason), not a hang."""
    async with scripted(echo_second_argument) as server:
        port = server.port
    client = RedisClient(RedisAddress(host="127.0.0.1", port=port), connect_timeout_s=2, max_in_flight=1)
    with pytest.raises(OSError):
        await client.execute("PING")
    await client.aclose()


@pytest.mark.parametrize(
    ("head", "piece"),
    [
        pytest.param(b"*4096\r\n", b"$1000\r\n" + b"x" * 1000 + b"\r\n", id="many-bulks-each-in-bounds"),
        # 4096 items of 18 bytes: over MAX_REPLY_BYTES before the array is complete.
        pytest.param(b"*4096\r\n", b"$11\r\nhello world\r\n" * 50, id="many-small-items"),
        pytest.param(b"$65000\r\n", b"x" * 100, id="one-bulk-trickled"),
    ],
)
@pytest.mark.parametrize("caller", ["waiting", "gone"])
async def test_an_endless_reply_drops_the_connection_at_the_bound(
    head: bytes, piece: bytes, caller: str
) -> None:
    """A reply that never completes, however it is split (items each within bounds, or a bulk
    trickled in), is dropped once MAX_REPLY_BYTES are buffered, whether its caller still waits
    (it gets RedisConnectionError) or has gone (cancelled: no timeout runs any more)."""

    async def endless(server: Scripted, data: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(head)
        with contextlib.suppress(ConnectionError):
            for _ in range(10 * MAX_REPLY_BYTES // len(piece)):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0)

    async with scripted(endless) as server:
        client = client_of(server)
        command = asyncio.create_task(client.execute("EVALSHA", "x", 0))
        if caller == "gone":
            await asyncio.sleep(0.01)
            command.cancel()
        with pytest.raises((RedisConnectionError, asyncio.CancelledError)):
            await command
        connection = client._connection
        assert connection is not None
        async with asyncio.timeout(5):
            while not connection.closed:  # noqa: ASYNC110 -- a flag, no event to wait on
                await asyncio.sleep(0.01)
        assert len(connection._buffer) <= MAX_REPLY_BYTES + 65536
        await client.aclose()


async def test_closing_while_connecting_fails_the_waiters_plainly_and_nothing_reconnects() -> None:
    """aclose while a connect is under way: the callers waiting on it get RedisConnectionError
    (not a CancelledError that was never theirs); a command after it fails without connecting."""
    accepted = asyncio.Event()

    async def slow_login(server: Scripted, data: bytes, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await asyncio.sleep(0.2)
        writer.write(b"+OK\r\n" * data.count(b"*"))

    async with scripted(slow_login) as server:
        client = client_of(server, password="pw")
        waiting = [asyncio.create_task(client.execute("PING")) for _ in range(3)]
        await accepted.wait()
        await client.aclose()
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(result, RedisConnectionError) for result in results), results
        with pytest.raises(RedisConnectionError):
            await client.execute("PING")
    assert server.connections == 1


async def test_a_decision_reply_of_the_wrong_shape_is_an_outage_not_a_crash() -> None:
    """EVALSHA answered with two integers for one limit (a proxy or server bug): the store raises
    StoreUnavailable (so the limit's fail mode applies), never an unpacking error."""
    from gateway.ratelimit.buckets import Counter
    from gateway.ratelimit.redis_store import RedisStore, StoreUnavailable
    from gateway.ratelimit.spec import LimitSpec, RedisBackend, TokenBucket
    from gateway.secret import Secret

    async def short_answers(server: Scripted, data: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"$40\r\n" + b"0" * 40 + b"\r\n" if b"SCRIPT" in data else b"*2\r\n:1\r\n:1\r\n")

    async with scripted(short_answers) as server:
        errors: list[str] = []
        store = RedisStore(
            RedisBackend(url=Secret(f"redis://127.0.0.1:{server.port}")), on_store_error=errors.append
        )
        await store.start()
        limit = LimitSpec("sends", TokenBucket(rate_per_s=1.0, burst=5), key=("subject",))
        with pytest.raises(StoreUnavailable) as caught:
            await store.decide([Counter(limit, "sends:alice")], "lease", commit=True)
        await store.aclose()
    assert caught.value.reason == "connection" and errors == ["connection"]


async def test_a_silent_server_costs_finishing_requests_nothing_and_counts_one_outage() -> None:
    """The server answers the script load and one decision, then goes silent. The next decision
    times out (one store error); in the retry_s window after it, decisions refused fast send
    nothing and open no connection, and releasing 5 admitted requests returns at once and counts
    no store error (their leases wait to be given back)."""
    from gateway.ratelimit.buckets import Counter
    from gateway.ratelimit.redis_store import RedisStore, StoreUnavailable
    from gateway.ratelimit.spec import Concurrency, LimitSpec, RedisBackend
    from gateway.secret import Secret

    async def then_silent(server: Scripted, data: bytes, writer: asyncio.StreamWriter) -> None:
        if b"SCRIPT" in data:
            writer.write(b"$40\r\n" + b"0" * 40 + b"\r\n")
        elif len(server.reads) <= 2:
            writer.write(b"*4\r\n:1\r\n:1\r\n:-1\r\n:0\r\n")

    limit = LimitSpec("parallel", Concurrency(max_in_flight=10), key=())
    counters = [Counter(limit, "parallel")]
    async with scripted(then_silent) as server:
        errors: list[str] = []
        backend = RedisBackend(url=Secret(f"redis://127.0.0.1:{server.port}"), timeout_s=0.1, retry_s=30)
        store = RedisStore(backend, on_store_error=errors.append)
        await store.start()
        assert (await store.decide(counters, "admitted", commit=True))[0].allowed
        with pytest.raises(StoreUnavailable):
            await store.decide(counters, "timed-out", commit=True)
        connections, reads = server.connections, len(server.reads)
        for n in range(50):
            with pytest.raises(StoreUnavailable) as caught:
                await store.decide(counters, f"fast-{n}", commit=True)
            assert caught.value.reason == "down"
        loop = asyncio.get_running_loop()
        started = loop.time()
        for n in range(5):
            await store.release(counters, f"admitted-{n}")
        assert loop.time() - started < 0.05
        assert errors == ["timeout"]
        assert (server.connections, len(server.reads)) <= (connections + 1, reads + 1)
        await store.aclose()
