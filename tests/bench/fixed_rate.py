"""Open-loop load at a fixed rate, and the latency each request saw from the moment it was due.

wrk is closed loop: a slow answer delays the next request, so a stall hides itself (coordinated
omission). Here request *i* is due at ``start + i / rate`` whatever happened before; it is sent
then on an idle kept-alive connection (a new one is opened when none is idle: a slow answer never
holds a later request back), and its latency runs from the moment it is sent to the last byte of
its answer. The event loop wakes at millisecond granularity, so a request may leave up to a
millisecond after it was due; requests that leave later than that are counted (``late_starts``:
the client fell behind, and the figure is then not a fixed rate).

The client is a minimal HTTP/1.1 one on asyncio protocols (one pre-encoded request, answers with
a ``Content-Length``), so that its own cost and jitter are small next to what is measured; the
same client measures direct, the gateway and the bare relay, and the figure reported is the added
latency: a percentile through the relay minus the same percentile direct, in the same run.

Each round runs the targets in turn in short slices (``SLICE_S``), so that a stall of the
machine lands in one slice of one target rather than in a whole round of it. p50 and p99.9 are
taken over every sample of a target; p99 is the median of the slices' own p99s: the machine's
stalls of 10-30 ms (seen here at 1000 req/s, in direct's run as often as in the others') moved
a pooled p99 by more than the relays add, and made the added figure negative. The pooled p99
is kept beside it (``p99_pooled_ms``).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit


class _Connection(asyncio.Protocol):
    """One kept-alive connection: one request in flight, its answer read by Content-Length."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("connection closed mid-answer"))

    def send(self, request: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end]).decode("latin-1")
        length = None
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        waiter = self._waiter
        if length is None:
            if waiter is not None and not waiter.done():
                waiter.set_exception(ValueError("answer without Content-Length"))
            return
        if len(buffer) < end + 4 + length:
            return
        del buffer[: end + 4 + length]
        if waiter is not None and not waiter.done():
            waiter.set_result(int(head.split(" ", 2)[1]))


def encode_post(url: str, body: str, headers: Mapping[str, str]) -> tuple[str, int, bytes]:
    """Host, port and the request's bytes (sent as they are, every time)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    encoded = body.encode()
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(encoded)}")
    return parts.hostname, parts.port, ("\r\n".join(lines) + "\r\n\r\n").encode() + encoded


@dataclass
class OpenLoopRun:
    rate: float
    latencies_ms: list[float]
    errors: int
    late_starts: int  # requests sent more than 1 ms after they were due (the client fell behind)
    connections: int

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
        return ordered[index]

    def summary(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "requests": len(self.latencies_ms),
            "errors": self.errors,
            "late_starts": self.late_starts,
            "connections": self.connections,
            "p50_ms": round(self.percentile(0.50), 3),
            "p99_ms": round(self.percentile(0.99), 3),
            "p999_ms": round(self.percentile(0.999), 3),
        }


async def open_loop(
    url: str, body: str, headers: Mapping[str, str], rate: float, duration_s: float
) -> OpenLoopRun:
    """``rate`` requests per second for ``duration_s``, each due at its time whatever came before."""
    host, port, request = encode_post(url, body, headers)
    loop = asyncio.get_running_loop()
    idle: list[_Connection] = []
    opened = 0
    latencies: list[float] = []
    errors = 0
    late = 0

    async def connection() -> _Connection:
        nonlocal opened
        while idle:
            candidate = idle.pop()
            if not candidate.closed:
                return candidate
        opened += 1
        _, protocol = await loop.create_connection(_Connection, host, port)
        return protocol

    async def one() -> None:
        nonlocal errors
        sent = time.perf_counter()
        try:
            conn = await connection()
            status = await conn.send(request)
        except (OSError, ValueError, ConnectionError):
            errors += 1
            return
        done = time.perf_counter()
        if status != 200:
            errors += 1
        latencies.append((done - sent) * 1e3)
        idle.append(conn)

    # A few connections open and warm before the clock starts.
    warm = [await connection() for _ in range(4)]
    for conn in warm:
        await conn.send(request)
    idle.extend(warm)

    count = int(rate * duration_s)
    start = time.perf_counter() + 0.05
    tasks: list[asyncio.Task[None]] = []
    for i in range(count):
        due = start + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        elif wait < -0.001:
            late += 1
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    for conn in idle:
        if conn.transport is not None:
            conn.transport.close()
    return OpenLoopRun(rate, latencies, errors, late, opened)


SLICE_S = 1.0


def pooled_summary(rate: float, slices: list[OpenLoopRun]) -> dict[str, Any]:
    """One target's figures at one rate: p50 and p99.9 over every sample, p99 the median of
    the slices' p99s (see the module's docstring)."""
    pooled = OpenLoopRun(
        rate,
        [latency for run in slices for latency in run.latencies_ms],
        sum(run.errors for run in slices),
        sum(run.late_starts for run in slices),
        max(run.connections for run in slices),
    )
    summary = pooled.summary()
    summary["p99_pooled_ms"] = summary["p99_ms"]
    summary["p99_ms"] = round(statistics.median(run.percentile(0.99) for run in slices), 3)
    summary["slices"] = len(slices)
    return summary


def added(through: dict[str, Any], direct: dict[str, Any]) -> dict[str, float]:
    """What a relay adds to each percentile over direct, in milliseconds."""
    return {key: round(through[key] - direct[key], 3) for key in ("p50_ms", "p99_ms", "p999_ms")}


def measure(
    targets: Mapping[str, tuple[str, Mapping[str, str]]],
    body: str,
    rates: tuple[float, ...],
    duration_s: float,
    rounds: int,
) -> dict[str, Any]:
    """At each rate, each target in turn in slices of ``SLICE_S`` for ``rounds`` rounds of
    ``duration_s`` each: the figures of each (``pooled_summary``), and what ``gateway`` and
    ``bare_relay`` add to ``direct``'s."""
    out: dict[str, Any] = {}
    slices = max(1, round(duration_s / SLICE_S))
    labels = list(targets)
    for rate in rates:
        runs: dict[str, list[OpenLoopRun]] = {label: [] for label in targets}
        for turn in range(rounds * slices):
            # Each turn starts with another target: none always runs right after the same one.
            for label in labels[turn % len(labels) :] + labels[: turn % len(labels)]:
                url, headers = targets[label]
                runs[label].append(asyncio.run(open_loop(url, body, headers, rate, duration_s / slices)))
        entry: dict[str, Any] = {label: pooled_summary(rate, results) for label, results in runs.items()}
        gateway, bare = added(entry["gateway"], entry["direct"]), added(entry["bare_relay"], entry["direct"])
        entry["added_gateway_ms"], entry["added_bare_relay_ms"] = gateway, bare
        entry["added_ratio"] = {
            key: round(gateway[key] / bare[key], 3) if bare[key] > 0 else None for key in gateway
        }
        out[f"{rate:g}"] = entry
    return out
