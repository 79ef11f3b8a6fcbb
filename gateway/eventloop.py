"""Which asyncio event loop runs the gateway: uvloop when it is installed, else the standard one.

uvloop (libuv) is an optional extra (``pip install 'mcp-auth-gateway[fast]'``). The benchmark
(tests/bench) measures the gateway on both loops; with aiohttp's own C parts doing most of the
per-request work the loop matters little (docs/performance.md), so the standard loop is a fine
default wherever uvloop is not installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar, get_args

LoopChoice = Literal["auto", "uvloop", "asyncio"]
LOOP_CHOICES: tuple[str, ...] = get_args(LoopChoice)

T = TypeVar("T")


class LoopUnavailable(RuntimeError):
    """``--loop uvloop`` asked for a loop that is not installed."""


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def loop_factory(choice: LoopChoice) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """The loop's name and factory (None: asyncio's default) for a ``--loop`` choice."""
    if choice == "asyncio" or (choice == "auto" and not uvloop_installed()):
        return "asyncio", None
    try:
        import uvloop
    except ImportError as exc:
        raise LoopUnavailable("uvloop is not installed: pip install 'mcp-auth-gateway[fast]'") from exc
    return "uvloop", uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: LoopChoice = "auto") -> T:
    """``asyncio.run`` on the chosen loop."""
    _name, factory = loop_factory(choice)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
