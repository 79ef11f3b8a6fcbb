"""Where the server's log lines go: its stream, in one write per event-loop turn.

A gateway under load logs two lines per request (the request line and the policy decision), and
one ``write`` per line was about 12 µs of a request's CPU (docs/performance.md, fifth pass). A
line logged on a running loop's thread waits for the end of the turn (``call_soon``): the lines
of every request handled in that turn go out together, after the responses written in it. A
line logged anywhere else (another thread, no loop running) goes out at once, after whatever was
waiting, so lines stay in the order they were logged.

Each write holds whole lines and at most ``PIPE_BUF`` bytes (one longer line alone): a write of
that size to a pipe is atomic, so the lines of several worker processes sharing one stderr pipe
(``--workers``) never interleave within a line, as with one write per line. What waits is
written at exit too (``atexit``): lost only when the process is killed within the turn.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import select
import sys
import threading
from typing import TextIO

# POSIX guarantees 512; Linux's is 4096.
PIPE_BUF = getattr(select, "PIPE_BUF", 512)


class TurnBatchedWriter:
    """A structlog logger (``msg`` and the level names) writing a loop turn's lines together."""

    def __init__(self, stream: TextIO, limit: int = PIPE_BUF) -> None:
        self._stream = stream
        self._limit = limit
        self._waiting: list[str] = []
        self._lock = threading.Lock()
        # The loop whose turn end will write what waits (None: nothing is scheduled).
        self._scheduled_on: asyncio.AbstractEventLoop | None = None
        atexit.register(self.flush)

    def msg(self, message: str) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._waiting.append(message + "\n")
            if loop is None or (self._scheduled_on is not None and self._scheduled_on is not loop):
                # No turn to wait for here, or one of a loop that stopped before it ended: what
                # waits goes out now, ahead of this line.
                self._scheduled_on = None
                self._write_waiting()
            elif self._scheduled_on is None:
                self._scheduled_on = loop
                loop.call_soon(self.flush)

    debug = info = warning = warn = error = err = critical = fatal = exception = failure = log = msg

    def flush(self) -> None:
        """Write every waiting line now."""
        with self._lock:
            self._scheduled_on = None
            self._write_waiting()

    def _write_waiting(self) -> None:
        lines, self._waiting = self._waiting, []
        try:
            for chunk in pipe_sized_chunks(lines, self._limit):
                self._stream.write(chunk)
                self._stream.flush()
        except Exception as exc:  # a closed or full stream must not fail a request or a loop turn
            with contextlib.suppress(Exception):
                sys.stderr.write(f'{{"event": "log_lines_lost", "error": "{type(exc).__name__}"}}\n')


def pipe_sized_chunks(lines: list[str], limit: int = PIPE_BUF) -> list[str]:
    """``lines`` joined into as few pieces as fit ``limit`` bytes each, cut only between lines
    (a longer line is a piece of its own)."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for line in lines:
        length = len(line) if line.isascii() else len(line.encode())
        if current and size + length > limit:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += length
    if current:
        chunks.append("".join(current))
    return chunks
