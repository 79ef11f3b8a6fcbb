"""The rate limiter over a real redis-server: replicas share one budget, outages fail as configured.

Every test starts its own ``redis-server`` (tests/support/redis_server.py) and limiters that talk to
it as separate gateway processes would: each ``RateLimiter`` has its own connection pool, and one
test runs a limiter in another OS process.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import redis
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from gateway.ratelimit.limiter import RateLimiter
from gateway.ratelimit.redis_store import LUA_DECIDE_SHA
from gateway.ratelimit.spec import (
    Concurrency,
    FixedWindow,
    KeyField,
    LimitSpec,
    RateLimitsConfig,
    RedisBackend,
    TokenBucket,
)
from gateway.secret import Secret
from tests.support.processes import REPO_ROOT
from tests.support.redis_server import RedisServer, redis_binary, redis_server

__all__ = ["redis_binary", "redis_server"]  # the fixtures, imported for pytest to find

# No refill worth the name during a test: the burst is the whole budget.
SENDS = LimitSpec("sends", TokenBucket(rate_per_s=0.001, burst=10), key=("subject",))
QUOTA = LimitSpec("quota", FixedWindow(count=3, window_s=3600.0), key=("subject",))
PARALLEL = LimitSpec("parallel", Concurrency(max_in_flight=2), key=("subject",))
OPEN = LimitSpec("open", TokenBucket(rate_per_s=0.001, burst=10), key=(), fail="open")
# The admin client (redis-py, an independent implementation to inspect the server with) would
# read its own package metadata from disk on the loop for CLIENT SETINFO: skipped.
NO_CLIENT_SETINFO: dict[str, Any] = (
    {"driver_info": None} if hasattr(redis, "DriverInfo") else {"lib_name": None, "lib_version": None}
)
ALICE: Mapping[KeyField, str] = {"issuer": "https://as", "subject": "alice"}
BOB: Mapping[KeyField, str] = {"issuer": "https://as", "subject": "bob"}


def config_for(server: RedisServer, *limits: LimitSpec, **backend: Any) -> RateLimitsConfig:
    """The limits over ``server``, with any ``RedisBackend`` settings the test changes."""
    return RateLimitsConfig(backend=RedisBackend(url=Secret(server.url), **backend), limits=limits)


@asynccontextmanager
async def started(
    config: RateLimitsConfig, on_store_error: Callable[[str], None] | None = None
) -> AsyncIterator[RateLimiter]:
    """A started limiter (its own connection pool, like one gateway process), closed afterwards."""
    limiter = RateLimiter(config, on_store_error=on_store_error)
    await limiter.start()
    try:
        yield limiter
    finally:
        await limiter.aclose()


@asynccontextmanager
async def admin(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client to inspect the server with."""
    client = aioredis.Redis.from_url(server.url, **NO_CLIENT_SETINFO)
    try:
        yield client
    finally:
        await client.aclose()


def ours(events: list[MutableMapping[str, Any]]) -> list[str]:
    """The limiter's own log events (redis-py's debug lines are routed to the log too)."""
    return [event["event"] for event in events if event["event"].startswith("rate_limit_")]


async def allowed_count(limiter: RateLimiter, limit: LimitSpec, keys: Mapping[KeyField, str], n: int) -> int:
    """How many of ``n`` concurrent requests were admitted."""
    results = await asyncio.gather(*(limiter.acquire([limit], keys) for _ in range(n)))
    return sum(result.allowed for result in results)


async def test_two_limiters_share_one_budget_exactly(redis_server: RedisServer) -> None:
    """Two gateway processes hammering one subject at once admit exactly the burst between them."""
    config = config_for(redis_server, SENDS)
    async with started(config) as one, started(config) as two:
        counts = await asyncio.gather(
            allowed_count(one, SENDS, ALICE, 15), allowed_count(two, SENDS, ALICE, 15)
        )
        assert sum(counts) == 10
        refused = await two.acquire([SENDS], ALICE)
        assert refused.refused_by == SENDS and not refused.unavailable
        assert refused.retry_after_s == 1000  # one token at 0.001/s
        assert refused.headers["RateLimit-Policy"] == '"sends";q=10;w=10000'


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from gateway.ratelimit.limiter import RateLimiter
    from gateway.ratelimit.spec import LimitSpec, RateLimitsConfig, RedisBackend, TokenBucket
    from gateway.secret import Secret

    async def main():
        limit = LimitSpec("sends", TokenBucket(rate_per_s=0.001, burst=10), key=("subject",))
        limiter = RateLimiter(RateLimitsConfig(RedisBackend(url=Secret(sys.argv[1])), (limit,)))
        await limiter.start()
        results = await asyncio.gather(*(limiter.acquire([limit], {"subject": "alice"}) for _ in range(8)))
        await limiter.aclose()
        print(sum(result.allowed for result in results))

    asyncio.run(main())
    """
)


async def test_a_separate_os_process_shares_the_budget(redis_server: RedisServer) -> None:
    """A limiter in another OS process and one here, racing, admit exactly the burst in total."""
    async with started(config_for(redis_server, SENDS)) as here:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, redis_server.url, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE
        )
        mine = await allowed_count(here, SENDS, ALICE, 8)
        output, _ = await child.communicate()
        assert child.returncode == 0
        theirs = int(output.decode().strip())
        assert mine + theirs == 10, (mine, theirs)
        assert theirs > 0


async def test_subjects_are_isolated_and_keys_expire(redis_server: RedisServer) -> None:
    """Alice's spent quota leaves Bob's intact; every counter key has the prefix and a TTL."""
    async with started(config_for(redis_server, QUOTA, key_prefix="test:")) as limiter:
        assert await allowed_count(limiter, QUOTA, ALICE, 5) == 3
        assert await allowed_count(limiter, QUOTA, BOB, 5) == 3
        async with admin(redis_server) as client:
            keys = sorted(await client.keys("*"))
            assert keys == [b"test:quota:alice", b"test:quota:bob"]
            ttl_ms = await client.pttl("test:quota:alice")
            assert 0 < ttl_ms <= 3_601_000


async def test_all_or_nothing_in_one_script(redis_server: RedisServer) -> None:
    """A request the quota refuses takes no token from the bucket it was also checked against."""
    async with started(config_for(redis_server, SENDS, QUOTA)) as limiter:
        for _ in range(3):
            assert (await limiter.acquire([SENDS, QUOTA], ALICE)).allowed
        for _ in range(5):
            assert (await limiter.acquire([SENDS, QUOTA], ALICE)).refused_by == QUOTA
        assert await allowed_count(limiter, SENDS, ALICE, 10) == 7


async def test_concurrency_across_two_limiters(redis_server: RedisServer) -> None:
    """Two slots shared by two processes: the third request waits until a slot is released."""
    config = config_for(redis_server, PARALLEL)
    async with started(config) as one, started(config) as two:
        first = await one.acquire([PARALLEL], ALICE)
        second = await two.acquire([PARALLEL], ALICE)
        assert first.allowed and second.allowed
        assert not (await one.acquire([PARALLEL], ALICE)).allowed
        assert not (await two.acquire([PARALLEL], ALICE)).allowed
        assert await two.exhausted(PARALLEL, ALICE)
        await first.release()
        await first.release()
        third = await two.acquire([PARALLEL], ALICE)
        assert third.allowed
        assert not (await one.acquire([PARALLEL], ALICE)).allowed


async def test_a_dead_process_slots_come_back_after_the_lease(redis_server: RedisServer) -> None:
    """Slots never released (their process died) are free again once their lease expires."""
    async with started(config_for(redis_server, PARALLEL, lease_s=0.3)) as limiter:
        assert await allowed_count(limiter, PARALLEL, ALICE, 3) == 2
        await asyncio.sleep(0.4)
        assert await allowed_count(limiter, PARALLEL, ALICE, 3) == 2


@asynccontextmanager
async def monitored(server: RedisServer) -> AsyncIterator[Callable[[], Awaitable[list[str]]]]:
    """Watch the server with MONITOR; the function yielded returns, once called, the commands
    clients sent since (commands a script runs are shown as ``[0 lua]`` and left out)."""
    async with admin(server) as client:
        await client.ping()  # connected (and its handshake done) before MONITOR starts
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"MONITOR\r\n")
        await writer.drain()
        assert await reader.readline() == b"+OK\r\n"

        async def sent() -> list[str]:
            await client.echo("end-of-test")  # the last line MONITOR will show
            commands = []
            while b"end-of-test" not in (line := await asyncio.wait_for(reader.readline(), 5)):
                source, _, command = line.decode().partition("] ")
                if not source.endswith(" lua"):
                    commands.append(command.split(" ")[0].strip('"').lower())
            return commands

        try:
            yield sent
        finally:
            writer.close()


async def test_one_evalsha_per_acquire(redis_server: RedisServer) -> None:
    """Each decision is one command from the gateway (seen with MONITOR): an EVALSHA, nothing else."""
    async with started(config_for(redis_server, SENDS, QUOTA, PARALLEL)) as limiter:
        await limiter.acquire([SENDS], BOB)  # the pooled connection is open and set up
        async with monitored(redis_server) as sent:
            for _ in range(7):
                await limiter.acquire([SENDS, QUOTA, PARALLEL], ALICE)
            await limiter.exhausted(SENDS, ALICE)
            assert await sent() == ["evalsha"] * 8


async def test_a_flushed_script_is_loaded_again(redis_server: RedisServer) -> None:
    """After SCRIPT FLUSH (or a restart) the limiter reloads its script and still decides."""
    async with started(config_for(redis_server, QUOTA)) as limiter, admin(redis_server) as client:
        assert (await limiter.acquire([QUOTA], ALICE)).allowed
        await client.script_flush()
        assert (await limiter.acquire([QUOTA], ALICE)).allowed
        assert await client.script_exists(LUA_DECIDE_SHA) == [True]
        assert limiter.store_up


async def test_outage_fails_as_configured_and_recovers(redis_server: RedisServer) -> None:
    """Server stopped: fail-closed refuses as unavailable, fail-open admits, one log line;
    server back on the same port: decisions work again within retry_s, with no restart."""
    errors: list[str] = []
    # A stopped server refuses at once: the timeout only bounds the calls that must succeed.
    config = config_for(redis_server, SENDS, OPEN, retry_s=0.3, timeout_s=2.0)
    async with started(config, on_store_error=errors.append) as limiter:
        assert (await limiter.acquire([SENDS, OPEN], ALICE)).allowed
        await redis_server.stop()
        with capture_logs() as events:
            refused = await limiter.acquire([SENDS, OPEN], ALICE)
            assert not refused.allowed and refused.unavailable
            assert refused.refused_by == SENDS and refused.retry_after_s == 1
            assert refused.headers == {}
            assert (await limiter.acquire([OPEN], ALICE)).allowed
            assert await limiter.exhausted(SENDS, ALICE)
            assert not await limiter.exhausted(OPEN, ALICE)
            assert not limiter.store_up
            await asyncio.sleep(0.35)  # past retry_s: the next decision tries the server again
            assert (await limiter.acquire([SENDS], ALICE)).unavailable
        down = [event for event in events if event["event"] == "rate_limit_store_unavailable"]
        assert len(down) == 1
        assert down[0]["reason"] == "connection" and down[0]["target"] == f"127.0.0.1:{redis_server.port}"
        # One failed call, then fail-fast without touching the server, then one more try.
        assert errors == ["connection", "connection"]

        await redis_server.start()
        with capture_logs() as events:
            await asyncio.sleep(0.35)
            admitted = await limiter.acquire([SENDS, OPEN], ALICE)
            assert admitted.allowed and not admitted.unavailable
            assert limiter.store_up
        assert ours(events) == ["rate_limit_store_recovered"]
        # The restarted server has no counters: the budget starts again (no persistence).
        assert await allowed_count(limiter, SENDS, ALICE, 12) == 9


async def test_the_password_never_reaches_the_log(redis_server: RedisServer) -> None:
    """A Redis URL's password does not appear in the outage log line."""
    url = f"redis://gateway:hunter2-canary@127.0.0.1:{redis_server.port}/0"
    config = RateLimitsConfig(backend=RedisBackend(url=Secret(url)), limits=(SENDS,))
    with capture_logs() as events:
        async with started(config) as limiter:
            refused = await limiter.acquire([SENDS], ALICE)
    assert refused.unavailable
    assert ours(events) == ["rate_limit_store_unavailable"]
    [down] = [event for event in events if event["event"] == "rate_limit_store_unavailable"]
    assert down["reason"] == "auth"
    assert "hunter2-canary" not in repr(events)
