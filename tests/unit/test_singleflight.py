"""Single flight: one running call per key, shared by every caller, never cancelled by one of them."""

from __future__ import annotations

import asyncio

import pytest

from gateway.singleflight import SingleFlight


class Call:
    """A call the test releases by hand, counting how often it was started."""

    def __init__(self, result: str = "done", error: Exception | None = None) -> None:
        self.started = 0
        self.release = asyncio.Event()
        self.result = result
        self.error = error

    async def __call__(self) -> str:
        self.started += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.result


async def test_concurrent_callers_share_one_call() -> None:
    """Ten callers of one key while the call runs: it starts once and all get its result."""
    flights: SingleFlight[str, str] = SingleFlight()
    call = Call()
    waiters = [asyncio.create_task(flights.run("k", call)) for _ in range(10)]
    await asyncio.sleep(0)
    call.release.set()
    assert await asyncio.gather(*waiters) == ["done"] * 10
    assert call.started == 1 and len(flights) == 0


async def test_other_keys_fly_separately() -> None:
    """Each key has its own call."""
    flights: SingleFlight[str, str] = SingleFlight()
    first, second = Call("one"), Call("two")
    waiters = [asyncio.create_task(flights.run("a", first)), asyncio.create_task(flights.run("b", second))]
    await asyncio.sleep(0)
    assert len(flights) == 2
    first.release.set()
    second.release.set()
    assert await asyncio.gather(*waiters) == ["one", "two"]


async def test_an_exception_reaches_every_waiter_and_is_not_remembered() -> None:
    """A failed call fails all its waiters; the next caller starts a new call."""
    flights: SingleFlight[str, str] = SingleFlight()
    failing = Call(error=RuntimeError("down"))
    waiters = [asyncio.create_task(flights.run("k", failing)) for _ in range(3)]
    await asyncio.sleep(0)
    failing.release.set()
    outcomes = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes) and failing.started == 1
    again = Call("fine")
    again.release.set()
    assert await flights.run("k", again) == "fine" and again.started == 1


async def test_a_cancelled_waiter_does_not_cancel_the_call() -> None:
    """One caller going away leaves the shared call running for the others."""
    flights: SingleFlight[str, str] = SingleFlight()
    call = Call()
    leaving = asyncio.create_task(flights.run("k", call))
    staying = asyncio.create_task(flights.run("k", call))
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    call.release.set()
    assert await staying == "done" and call.started == 1


async def test_start_runs_the_call_without_a_waiter_and_joins_a_running_one() -> None:
    """start() launches the call in the background; a later run() on the key awaits that same call."""
    flights: SingleFlight[str, str] = SingleFlight()
    call = Call()
    task = flights.start("k", call)
    assert flights.start("k", call) is task
    waiter = asyncio.create_task(flights.run("k", call))
    await asyncio.sleep(0)
    call.release.set()
    assert await waiter == "done" and await task == "done" and call.started == 1


async def test_a_failed_background_call_is_forgotten() -> None:
    """A call started with start() that fails leaves the key free: the next start() calls again."""
    flights: SingleFlight[str, str] = SingleFlight()
    failing = Call(error=RuntimeError("down"))
    failing.release.set()
    await asyncio.wait([flights.start("k", failing)])
    assert len(flights) == 0
    again = Call("fine")
    again.release.set()
    assert await flights.start("k", again) == "fine" and again.started == 1


async def test_aclose_cancels_running_calls() -> None:
    """aclose() cancels every running call and waits for it to end."""
    flights: SingleFlight[str, str] = SingleFlight()
    call = Call()
    task = flights.start("k", call)
    await asyncio.sleep(0)
    await flights.aclose()
    assert task.cancelled() and len(flights) == 0
