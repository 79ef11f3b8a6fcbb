"""How the limiter reaches a real redis-server: a password, an ACL user, a database, TLS (and a
client certificate), and a server that stops answering for a while.

Every test starts its own ``redis-server`` (tests/support/redis_server.py) with the options it
needs; certificates come from a CA made for the test (tests/support/tls_certs.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis.asyncio as aioredis

from gateway.ratelimit.limiter import RateLimiter
from gateway.ratelimit.spec import (
    Concurrency,
    FixedWindow,
    KeyField,
    LimitSpec,
    RateLimitsConfig,
    RedisBackend,
)
from gateway.secret import Secret
from tests.integration.test_ratelimit_redis import NO_CLIENT_SETINFO
from tests.support.redis_server import RedisServer, free_port, redis_binary
from tests.support.tls_certs import TestAuthority

__all__ = ["redis_binary"]  # the fixture, imported for pytest to find

QUOTA = LimitSpec("quota", FixedWindow(count=3, window_s=3600.0), key=("subject",))
ALICE: dict[KeyField, str] = {"issuer": "https://as", "subject": "alice"}


@asynccontextmanager
async def running(binary: str, directory: Path, *arguments: str) -> AsyncIterator[RedisServer]:
    server = RedisServer(binary, directory, *arguments)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def limiter_for(
    url: str, errors: list[str] | None = None, **backend: Any
) -> AsyncIterator[RateLimiter]:
    """A started limiter on ``url``; each store error's reason is appended to ``errors``.

    Connecting (a TLS handshake included) is bounded by ``timeout_s``: the tests that are not about
    timeouts give it seconds, not the default quarter second, so a CI machine loaded by the rest of
    the suite does not turn a slow handshake into an outage (seen once: a ``rediss://`` connection
    with a client certificate refused all four decisions)."""
    backend.setdefault("timeout_s", 5.0)
    config = RateLimitsConfig(backend=RedisBackend(url=Secret(url), **backend), limits=(QUOTA,))
    on_error: Callable[[str], None] | None = errors.append if errors is not None else None
    limiter = RateLimiter(config, on_store_error=on_error)
    await limiter.start()
    try:
        yield limiter
    finally:
        await limiter.aclose()


async def admitted(limiter: RateLimiter, n: int) -> list[bool]:
    return [(await limiter.acquire([QUOTA], ALICE)).allowed for _ in range(n)]


THREE_OF_FOUR: tuple[list[bool], list[str]] = (
    [True, True, True, False],
    [],
)  # the budget of three, and no store error


async def test_a_password_logs_in_and_a_wrong_one_is_an_auth_outage(
    redis_binary: str, tmp_path: Path
) -> None:
    """requirepass: the URL's password logs in (the budget counts); a wrong or missing one is the
    ``auth`` reason, and the limit fails closed."""
    async with running(redis_binary, tmp_path, "--requirepass", "s3cret:/@x") as server:
        good = f"redis://:{quote('s3cret:/@x', safe='')}@127.0.0.1:{server.port}/0"
        seen: list[str] = []
        async with limiter_for(good, seen) as limiter:
            assert (await admitted(limiter, 4), seen) == THREE_OF_FOUR
        for url in (f"redis://:wrong@127.0.0.1:{server.port}/0", server.url):
            errors: list[str] = []
            async with limiter_for(url, errors) as limiter:
                refused = await limiter.acquire([QUOTA], ALICE)
                assert not refused.allowed and refused.unavailable
            assert errors and set(errors) == {"auth"}


async def test_an_acl_user_logs_in_and_its_database_holds_the_counters(
    redis_binary: str, tmp_path: Path
) -> None:
    """``redis://user:password@host/5``: AUTH user password, SELECT 5; the counters are in db 5."""
    async with running(redis_binary, tmp_path) as server:
        admin = aioredis.Redis.from_url(server.url, **NO_CLIENT_SETINFO)
        try:
            await admin.execute_command(  # type: ignore[no-untyped-call]
                "ACL", "SETUSER", "gw", "on", ">gw-pass", "~mcpgw:*", "+@all"
            )
            url = f"redis://gw:gw-pass@127.0.0.1:{server.port}/5"
            seen: list[str] = []
            async with limiter_for(url, seen) as limiter:
                assert (await admitted(limiter, 4), seen) == THREE_OF_FOUR
            assert await admin.keys("*") == []
            await admin.select(5)
            assert await admin.keys("*") == [b"mcpgw:quota:alice"]
        finally:
            await admin.aclose()


@pytest.fixture
def authority(tmp_path: Path) -> TestAuthority:
    """A CA with a server certificate for 127.0.0.1 and a client certificate (files written here,
    not on the event loop)."""
    authority = TestAuthority(tmp_path)
    authority.issue("redis", ("127.0.0.1",))
    authority.issue("gateway", (), client=True)
    return authority


def tls_arguments(authority: TestAuthority, *, clients: bool) -> tuple[str, ...]:
    """A redis-server serving TLS on a port of its own (the plain port stays for the readiness check)."""
    served = authority.issued["redis"]
    return (
        "--tls-port",
        str(free_port()),
        "--tls-cert-file",
        str(served.cert),
        "--tls-key-file",
        str(served.key),
        "--tls-ca-cert-file",
        str(authority.ca),
        "--tls-auth-clients",
        "yes" if clients else "no",
    )


def tls_port(server: RedisServer) -> int:
    return int(server.arguments[server.arguments.index("--tls-port") + 1])


async def test_rediss_verifies_the_server_against_the_named_ca(
    redis_binary: str, tmp_path: Path, authority: TestAuthority
) -> None:
    """rediss:// with ssl_ca_certs: the decision works over TLS. Without the CA (the system trust
    store), or for a name the certificate does not carry, it is a ``tls`` outage: never sent."""
    async with running(redis_binary, tmp_path, *tls_arguments(authority, clients=False)) as server:
        port = tls_port(server)
        seen: list[str] = []
        async with limiter_for(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={authority.ca}", seen) as limiter:
            assert (await admitted(limiter, 4), seen) == THREE_OF_FOUR
        for url in (
            f"rediss://127.0.0.1:{port}/0",
            f"rediss://localhost:{port}/0?ssl_ca_certs={authority.ca}",
        ):
            errors: list[str] = []
            async with limiter_for(url, errors) as limiter:
                assert (await limiter.acquire([QUOTA], ALICE)).unavailable
            assert errors == ["tls"], url


async def test_a_server_asking_for_a_client_certificate_gets_the_configured_one(
    redis_binary: str, tmp_path: Path, authority: TestAuthority
) -> None:
    """--tls-auth-clients yes: with ssl_certfile/ssl_keyfile the limiter is admitted; without, the
    server closes the handshake and every decision is unavailable (fails closed)."""
    async with running(redis_binary, tmp_path, *tls_arguments(authority, clients=True)) as server:
        port = tls_port(server)
        client = authority.issued["gateway"]
        base = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={authority.ca}"
        seen: list[str] = []
        with_certificate = f"{base}&ssl_certfile={client.cert}&ssl_keyfile={client.key}"
        async with limiter_for(with_certificate, seen) as limiter:
            assert (await admitted(limiter, 4), seen) == THREE_OF_FOUR
        errors: list[str] = []
        async with limiter_for(base, errors) as limiter:
            assert (await limiter.acquire([QUOTA], ALICE)).unavailable
        assert errors and set(errors) == {"tls"}  # the TLS 1.3 alert after the handshake, kept


async def test_a_server_that_stops_answering_times_out_and_a_new_connection_recovers(
    redis_binary: str, tmp_path: Path
) -> None:
    """DEBUG SLEEP holds the server: the decision waiting on it is ``timeout`` (fail closed) within
    timeout_s, not held for the whole sleep; once the server answers again and retry_s has passed,
    decisions work."""
    async with running(redis_binary, tmp_path, "--enable-debug-command", "yes") as server:
        errors: list[str] = []
        async with limiter_for(server.url, errors, timeout_s=0.2, retry_s=0.1) as limiter:
            assert await admitted(limiter, 1) == [True]
            admin = aioredis.Redis.from_url(server.url, **NO_CLIENT_SETINFO)
            try:
                sleeping = asyncio.create_task(
                    admin.execute_command("DEBUG", "SLEEP", "0.8")  # type: ignore[no-untyped-call]
                )
                await asyncio.sleep(0.1)
                loop = asyncio.get_running_loop()
                started = loop.time()
                refused = await limiter.acquire([QUOTA], ALICE)
                waited = loop.time() - started
                await sleeping
            finally:
                await admin.aclose()
            assert refused.unavailable and errors == ["timeout"]
            assert waited < 0.6  # the timeout, not the server's sleep
            await asyncio.sleep(0.15)
            # The decision that timed out had been sent: the server ran it when it woke, so it
            # took one of the three (as any client's would); the budget stays exact.
            assert await admitted(limiter, 2) == [True, False]
            assert limiter.store_up


PARALLEL = LimitSpec("parallel", Concurrency(max_in_flight=2), key=())


async def test_a_decision_cancelled_on_the_wire_gives_its_slot_back(
    redis_binary: str, tmp_path: Path
) -> None:
    """A decision whose caller is cancelled (its client went away) while the EVALSHA waits on a
    busy server: the server still runs it and takes a slot, which the store then frees, so both
    slots are there for the next two requests (not one, for lease_s)."""
    async with running(redis_binary, tmp_path, "--enable-debug-command", "yes") as server:
        config = RateLimitsConfig(
            backend=RedisBackend(url=Secret(server.url), timeout_s=2.0), limits=(PARALLEL,)
        )
        limiter = RateLimiter(config)
        await limiter.start()
        admin = aioredis.Redis.from_url(server.url, **NO_CLIENT_SETINFO)
        try:
            sleeping = asyncio.create_task(
                admin.execute_command("DEBUG", "SLEEP", "0.4")  # type: ignore[no-untyped-call]
            )
            await asyncio.sleep(0.1)
            cancelled = asyncio.create_task(limiter.acquire([PARALLEL], ALICE))
            await asyncio.sleep(0.1)  # written, waiting for the sleeping server
            cancelled.cancel()
            await sleeping
            await asyncio.sleep(0.2)
            assert await admin.zcard("mcpgw:parallel") == 0
            held = [await limiter.acquire([PARALLEL], ALICE) for _ in range(3)]
            assert [admission.allowed for admission in held] == [True, True, False]
        finally:
            await admin.aclose()
            await limiter.aclose()


async def test_a_slot_is_given_back_during_an_outage_window(redis_binary: str, tmp_path: Path) -> None:
    """A request admitted before an unrelated timeout finishes inside retry_s (decisions fail
    fast then): its release returns at once and the slot is given back in the background, not
    held for lease_s."""
    async with running(redis_binary, tmp_path, "--enable-debug-command", "yes") as server:
        backend = RedisBackend(url=Secret(server.url), timeout_s=0.2, retry_s=30.0)
        limiter = RateLimiter(RateLimitsConfig(backend=backend, limits=(PARALLEL, QUOTA)))
        await limiter.start()
        admin = aioredis.Redis.from_url(server.url, **NO_CLIENT_SETINFO)
        try:
            admitted = await limiter.acquire([PARALLEL], ALICE)
            assert admitted.allowed and await admin.zcard("mcpgw:parallel") == 1
            sleeping = asyncio.create_task(
                admin.execute_command("DEBUG", "SLEEP", "0.4")  # type: ignore[no-untyped-call]
            )
            await asyncio.sleep(0.1)
            assert (await limiter.acquire([QUOTA], ALICE)).unavailable  # timed out: down for 30 s
            await sleeping
            loop = asyncio.get_running_loop()
            started = loop.time()
            await admitted.release()
            assert loop.time() - started < 0.05  # the finishing request does not wait on it
            async with asyncio.timeout(2):  # given back in the background, the server answering
                while await admin.zcard("mcpgw:parallel"):  # noqa: ASYNC110 -- polling the server
                    await asyncio.sleep(0.01)
        finally:
            await admin.aclose()
            await limiter.aclose()
