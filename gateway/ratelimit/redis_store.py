"""Counters in a Redis (or Valkey) server, shared by every gateway process and replica.

One decision is one round trip: a single ``EVALSHA`` of ``LUA_DECIDE`` over all the request's
limits. The script reads the server's clock (``TIME``, so replicas with skewed clocks agree),
decides every limit with the arithmetic of ``gateway.ratelimit.buckets``, and writes only if all of
them admit the request; Redis runs a script atomically, so two replicas can never both take the
last token. Every counter gets a TTL, so an idle client's keys vanish. A concurrency limit is a
sorted set of lease ids scored by their expiry: a process that dies holding slots has them freed
``lease_s`` later.

When the server cannot answer (timeout, refused connection, any Redis error) the store raises
``StoreUnavailable``; the limiter applies each limit's ``fail`` mode. For ``retry_s`` after a
failure the store does not wait on the server at all (it fails fast), then tries again: the first
success ends the outage, with no restart. ``rate_limit_store_unavailable`` is logged once per
outage and ``rate_limit_store_recovered`` when it ends; neither carries the URL's credentials.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import structlog

from .buckets import TOKEN_EPSILON, Counter, Verdict
from .redis_address import redis_address
from .resp import RedisAuthError, RedisClient, RedisConnectionError, RedisReplyError, tls_context
from .spec import Concurrency, FixedWindow, RedisBackend, TokenBucket

log = structlog.get_logger("gateway.ratelimit")

# KEYS[i] is the counter of limit i. ARGV[1] is "1" to take from every limit if all admit, "0" to
# only look; ARGV[2] the request's lease id; then three values per limit: its kind (b: token
# bucket, w: fixed window, c: concurrency) and two numbers (rate and burst; count and window;
# max in flight and lease). Four integers come back per limit: admitted (1/0), remaining, ms
# until the full quota is back (-1: no clock) and ms until a retry can succeed. Numbers are
# stored with %.17g: Lua's default tostring keeps 14 digits, which would drift the refill.
LUA_DECIDE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local commit = ARGV[1] == '1'
local lease = ARGV[2]
local eps = tonumber(ARGV[3])
local function num(x) return string.format('%.17g', x) end
local function ms(x) return math.ceil(x * 1000) end
local out, writes, all = {}, {}, true
for i, key in ipairs(KEYS) do
  local kind = ARGV[1 + 3 * i]
  local a = tonumber(ARGV[2 + 3 * i])
  local b = tonumber(ARGV[3 + 3 * i])
  local ok, remaining, reset, retry = 0, 0, -1, 0
  if kind == 'b' then
    local s = redis.call('HMGET', key, 'tokens', 'ts')
    local tokens = b
    if s[1] and s[2] then
      tokens = math.min(b, tonumber(s[1]) + math.max(0, now - tonumber(s[2])) * a)
    end
    if tokens + eps >= 1 then
      local left = math.max(0, tokens - 1)
      ok, remaining, reset = 1, math.floor(left + eps), ms((b - left) / a)
      writes[#writes + 1] = {'b', key, left, ms(b / a) + 1000}
    else
      reset, retry = ms((b - tokens) / a), ms((1 - tokens) / a)
    end
  elseif kind == 'w' then
    local index = math.floor(now / b)
    local s = redis.call('HMGET', key, 'w', 'used')
    local used = 0
    if s[1] and s[2] and tonumber(s[1]) == index then used = tonumber(s[2]) end
    local ends = (index + 1) * b - now
    reset = ms(ends)
    if used < a then
      ok, remaining = 1, a - used - 1
      writes[#writes + 1] = {'w', key, index, used + 1, reset + 1000}
    else
      retry = reset
    end
  else
    local n = redis.call('ZCOUNT', key, '(' .. num(now), '+inf')
    if n < a then
      ok, remaining = 1, a - n - 1
      writes[#writes + 1] = {'c', key, b}
    else
      retry = 1000
    end
  end
  if ok == 0 then all = false end
  out[#out + 1] = ok
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end
if commit and all then
  for _, w in ipairs(writes) do
    if w[1] == 'b' then
      redis.call('HSET', w[2], 'tokens', num(w[3]), 'ts', num(now))
      redis.call('PEXPIRE', w[2], w[4])
    elseif w[1] == 'w' then
      redis.call('HSET', w[2], 'w', num(w[3]), 'used', w[4])
      redis.call('PEXPIRE', w[2], w[5])
    else
      redis.call('ZREMRANGEBYSCORE', w[2], '-inf', num(now))
      redis.call('ZADD', w[2], num(now + w[3]), lease)
      redis.call('PEXPIRE', w[2], ms(w[3]))
    end
  end
end
return out
"""
LUA_DECIDE_SHA: Final = hashlib.sha1(LUA_DECIDE.encode(), usedforsecurity=False).hexdigest()


# Leases remembered to give back at most (about 100 bytes each); past it the oldest is left to
# expire after lease_s.
MAX_UNRETURNED_LEASES: Final = 10_000


class StoreUnavailable(Exception):
    """The store could not decide; ``reason`` is a bounded label (a metric value, a log field)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def failure_reason(error: BaseException) -> str:
    """``timeout``, ``auth``, ``tls`` (the handshake or the certificate failed), ``connection``,
    ``response`` (the server answered with an error, e.g. OOM or a read-only replica) or ``error``."""
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, RedisAuthError):
        return "auth"
    if isinstance(error, ssl.SSLError):
        return "tls"
    if isinstance(error, RedisConnectionError | OSError):
        return "connection"
    if isinstance(error, RedisReplyError):
        return "response"
    return "error"


def script_arguments(
    counters: Sequence[Counter], lease_id: str, lease_s: float, *, commit: bool
) -> list[str]:
    """ARGV of ``LUA_DECIDE`` for ``counters`` (KEYS are their keys, in the same order)."""
    arguments = ["1" if commit else "0", lease_id, repr(TOKEN_EPSILON)]
    for counter in counters:
        algorithm = counter.limit.algorithm
        if isinstance(algorithm, TokenBucket):
            arguments += ["b", repr(float(algorithm.rate_per_s)), str(algorithm.burst)]
        elif isinstance(algorithm, FixedWindow):
            arguments += ["w", str(algorithm.count), repr(float(algorithm.window_s))]
        else:
            arguments += ["c", str(algorithm.max_in_flight), repr(float(lease_s))]
    return arguments


def _concurrency(counters: Sequence[Counter]) -> tuple[Counter, ...]:
    return tuple(counter for counter in counters if isinstance(counter.limit.algorithm, Concurrency))


def verdicts_from_reply(reply: Sequence[int]) -> list[Verdict]:
    """The script's four integers per limit, as verdicts (milliseconds back to seconds)."""
    verdicts = []
    for at in range(0, len(reply), 4):
        allowed, remaining, reset_ms, retry_ms = (int(value) for value in reply[at : at + 4])
        reset_s = None if reset_ms < 0 else reset_ms / 1000
        verdicts.append(Verdict(allowed == 1, remaining, reset_s, retry_ms / 1000))
    return verdicts


class RedisStore:
    """A Redis connection (``gateway.ratelimit.resp``) that decides a request's limits in one ``EVALSHA``."""

    def __init__(
        self,
        backend: RedisBackend,
        *,
        on_store_error: Callable[[str], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self._on_store_error = on_store_error
        self._monotonic = monotonic
        self._address = redis_address(backend.url.reveal())
        self._client: RedisClient | None = None
        self._unusable = "not_started"  # why there is no client, while there is none
        self._down_since: float | None = None
        self._retry_at = 0.0
        # Leases to give back when the server answers again (release in an outage, a decision
        # sent and then failed), by lease id; and the one task giving them back, if running.
        self._unreturned: dict[str, tuple[Counter, ...]] = {}
        self._returning: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        """False from a failed call until the next successful one."""
        return self._down_since is None

    @property
    def key_prefix(self) -> str:
        return self._backend.key_prefix

    async def start(self) -> None:
        """Connect and load the script. A server that is down now is an outage like any other
        (logged, fail modes apply, recovered later), not a reason to refuse to start."""
        backend = self._backend
        try:
            # Off the loop: the trust store and any certificate files are read from disk.
            tls = await asyncio.to_thread(tls_context, self._address) if self._address.tls else None
        except (OSError, ValueError) as error:  # an unreadable PEM: every decision is an outage
            self._unusable = "tls"
            self._failed("tls", error)
            return
        # Up to pool_size commands wait for replies at once; past that a decision waits for a
        # place within timeout_s. Connecting (and logging in) is bounded by timeout_s too.
        self._client = RedisClient(
            self._address, connect_timeout_s=backend.timeout_s, max_in_flight=backend.pool_size, tls=tls
        )
        try:
            await self._call(self._load_script)
        except StoreUnavailable:
            pass

    async def aclose(self) -> None:
        """Give back the leases still being released, then close the connection."""
        if self._returning is not None:
            await asyncio.wait([self._returning])
        if self._client is not None:
            await self._client.aclose()
        self._client = None

    async def decide(self, counters: Sequence[Counter], lease_id: str, *, commit: bool) -> list[Verdict]:
        """Each counter's verdict, taking from all of them only if all admit (with ``commit``)."""
        prefix = self._backend.key_prefix
        command: tuple[str | int, ...] = (
            "EVALSHA",
            LUA_DECIDE_SHA,
            len(counters),
            *(prefix + counter.key for counter in counters),
            *script_arguments(counters, lease_id, self._backend.lease_s, commit=commit),
        )

        written = False  # whether the EVALSHA may have reached the server

        def on_written() -> None:
            nonlocal written
            written = True

        async def evaluate() -> list[int]:
            client = self._require_client()
            try:
                reply = await client.execute(*command, on_written=on_written)
            except RedisReplyError as error:
                if error.code != "NOSCRIPT":
                    raise
                # The server restarted or was flushed since the script was loaded: load it, once.
                await self._load_script()
                reply = await client.execute(*command)
            if (
                not isinstance(reply, list)
                or len(reply) != 4 * len(counters)
                or not all(isinstance(value, int) for value in reply)
            ):
                raise RedisConnectionError("EVALSHA answered no four integers per limit")
            return reply

        try:
            reply = await self._call(evaluate)
        except (StoreUnavailable, asyncio.CancelledError):
            # Sent, then timed out or cancelled: the server may have run the script and taken
            # concurrency slots that no caller holds to give back. Free the lease (a lease id is
            # this request's only) rather than leave the slots taken for lease_s.
            if commit and written:
                self._return_later(counters, lease_id)
            raise
        return verdicts_from_reply(reply)

    async def release(self, counters: Sequence[Counter], lease_id: str) -> None:
        """Free the request's concurrency slots (one pipelined write). Within an outage's retry_s,
        or if the server cannot be reached, the lease is remembered and freed in the background
        as soon as the server answers (nothing waits on it; bounded: past that, a slot is freed
        by its expiry, lease_s). Nothing is raised, and no failure here counts as an outage."""
        held = _concurrency(counters)
        if not held:
            return
        if self._down_since is not None and self._monotonic() < self._retry_at:
            self._return_later(held, lease_id)
            return
        try:
            await self._give_back({lease_id: held})
        except Exception:  # the server did not confirm: try again in the background
            self._return_later(held, lease_id)

    def _return_later(self, counters: Sequence[Counter], lease_id: str) -> None:
        held = _concurrency(counters)
        if not held:
            return
        if len(self._unreturned) >= MAX_UNRETURNED_LEASES:
            self._unreturned.pop(next(iter(self._unreturned)))  # the oldest: it expires soonest
        self._unreturned[lease_id] = held
        self._return_soon()

    def _return_soon(self) -> None:
        """Start giving back the remembered leases, unless that is under way already (one at a time)."""
        if self._returning is not None or not self._unreturned or self._client is None:
            return
        leases, self._unreturned = self._unreturned, {}

        async def give_back() -> None:
            try:
                await self._give_back(leases)
            except Exception:  # still unreachable: kept for the next success, within the bound
                kept = {**leases, **self._unreturned}
                self._unreturned = dict(list(kept.items())[-MAX_UNRETURNED_LEASES:])

        self._returning = asyncio.get_running_loop().create_task(give_back())
        self._returning.add_done_callback(self._returned)

    def _returned(self, task: asyncio.Task[None]) -> None:
        self._returning = None

    async def _give_back(self, leases: Mapping[str, Sequence[Counter]]) -> None:
        """ZREM each lease from its counters, within timeout_s; no outage bookkeeping."""
        prefix = self._backend.key_prefix
        removals = [
            ("ZREM", prefix + counter.key, lease_id) for lease_id, held in leases.items() for counter in held
        ]
        async with asyncio.timeout(self._backend.timeout_s):
            await self._require_client().execute_all(removals)

    async def _load_script(self) -> None:
        await self._require_client().execute("SCRIPT", "LOAD", LUA_DECIDE)

    def _require_client(self) -> RedisClient:
        if self._client is None:
            raise StoreUnavailable(self._unusable)
        return self._client

    async def _call(self, operation: Callable[[], Any]) -> Any:
        """Run one server call within ``timeout_s``; fail fast while an outage's retry_s runs."""
        if self._down_since is not None and self._monotonic() < self._retry_at:
            raise StoreUnavailable("down")
        try:
            async with asyncio.timeout(self._backend.timeout_s):
                result = await operation()
        except StoreUnavailable:
            raise
        except Exception as error:  # every failure is an outage: the fail modes apply
            reason = failure_reason(error)
            if reason == "timeout" and self._client is not None:
                # A reply is overdue: the connection (or the server) is stuck. The commands behind
                # it fail now; the next decision, past retry_s, opens a new connection.
                self._client.drop_connection()
            self._failed(reason, error)
            raise StoreUnavailable(reason) from None
        self._succeeded()
        return result

    def _failed(self, reason: str, error: BaseException) -> None:
        now = self._monotonic()
        self._retry_at = now + self._backend.retry_s
        if self._on_store_error is not None:
            self._on_store_error(reason)
        if self._down_since is None:
            self._down_since = now
            # The exception's class, not its text: a message could quote the URL.
            log.warning(
                "rate_limit_store_unavailable",
                reason=reason,
                error=type(error).__name__,
                target=self._address.target,
                retry_s=self._backend.retry_s,
            )

    def _succeeded(self) -> None:
        self._return_soon()
        if self._down_since is not None:
            down_s = round(self._monotonic() - self._down_since, 3)
            self._down_since = None
            log.info("rate_limit_store_recovered", target=self._address.target, down_s=down_s)
