"""Where the server's log lines go: its stream, in one write per event-loop turn.

A gateway under load logs two lines per request (the request line and the policy decision), and
one ``write`` per line was about 12 µs of a request's CPU (docs/performance.md, fifth pass). A
line logged on a running loop's thread waits for the end of the turn (``call_soon``): the lines
of every request handled in that turn go out together, after the responses written in it. A
line logged anywhere else (another thread, no loop running) goes out at once, after whatever was
waiting, so lines stay in the order they were logged.

Each write holds whole lines and at most ``PIPE_BUF`` bytes (one longer line alone): a write of
that size to a pipe is atomic, so the lines of several worker processes sharing one stderr pipe
(``--workers``) never interleave within a line, as with one write per line (sizes are counted
in the stream's encoding). A piece the stream refuses is written again line by line, so one
line it cannot take loses only itself. What waits is written at exit too (``atexit``): lost
only when the process is killed within the turn; a forked child starts with nothing waiting.

Re-entrance: writing allocates, allocating can run the garbage collector, and a finalizer it
runs can log (asyncio's "exception was never retrieved"). A line logged from within the writer's
own work, on its thread, is only added to what waits, and the write under way takes it; the lock
is reentrant so that this never waits on itself.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import select
import sys
import threading
import weakref
from typing import TextIO

# POSIX guarantees 512; Linux's is 4096.
PIPE_BUF = getattr(select, "PIPE_BUF", 512)


class TurnBatchedWriter:
    """A structlog logger (``msg`` and the level names) writing a loop turn's lines together."""

    def __init__(self, stream: TextIO, limit: int = PIPE_BUF) -> None:
        self._stream = stream
        self._limit = limit
        # What a write to the stream becomes: its sizes are counted in this (an upper bound for
        # an error handler that replaces, exact for one that escapes).
        self._encoding = getattr(stream, "encoding", None) or "utf-8"
        self._waiting: list[str] = []
        self._lock = threading.RLock()
        self._writing = False
        # The loop whose turn end will write what waits (None: nothing is scheduled).
        self._scheduled_on: weakref.ref[asyncio.AbstractEventLoop] | None = None
        _WRITERS.add(self)

    def msg(self, message: str) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._waiting.append(message + "\n")
            if self._writing:  # logged from within this writer's own work: that write takes it
                return
            scheduled = self._scheduled_on() if self._scheduled_on is not None else None
            if loop is None or (self._scheduled_on is not None and scheduled is not loop):
                # No turn to wait for here, or one of a loop that stopped before it ended: what
                # waits goes out now, ahead of this line.
                self._scheduled_on = None
                self._write_waiting()
            elif self._scheduled_on is None:
                self._scheduled_on = weakref.ref(loop)
                loop.call_soon(self.flush)

    debug = info = warning = warn = error = err = critical = fatal = exception = failure = log = msg

    def flush(self) -> None:
        """Write every waiting line now."""
        with self._lock:
            self._scheduled_on = None
            if not self._writing:
                self._write_waiting()

    def forget_waiting(self) -> None:
        """Drop what waits (a forked child: its parent writes those lines)."""
        self._waiting = []
        self._scheduled_on = None
        self._writing = False
        self._lock = threading.RLock()

    def _write_waiting(self) -> None:
        self._writing = True
        try:
            while self._waiting:  # lines logged while writing (a finalizer's) join the next pass
                lines, self._waiting = self._waiting, []
                for piece in pipe_sized_pieces(lines, self._limit, self._encoding):
                    self._write(piece)
        finally:
            self._writing = False

    def _write(self, piece: list[str]) -> None:
        try:
            self._stream.write("".join(piece))
            self._stream.flush()
            return
        except Exception as exc:  # a closed or full stream, a line it cannot encode
            failure = exc
        lost = 0
        if len(piece) > 1 and not isinstance(failure, OSError):  # the stream works: find the line
            for line in piece:
                try:
                    self._stream.write(line)
                    self._stream.flush()
                except Exception as exc:
                    failure, lost = exc, lost + 1
        else:
            lost = len(piece)
        if lost:  # never the lines' text: one fixed line, where the process's stderr is
            with contextlib.suppress(Exception):
                sys.stderr.write(
                    f'{{"event": "log_lines_lost", "lines": {lost}, "error": "{type(failure).__name__}"}}\n'
                )


_WRITERS: weakref.WeakSet[TurnBatchedWriter] = weakref.WeakSet()


def _flush_all() -> None:
    for writer in list(_WRITERS):
        writer.flush()


def _forget_all_in_child() -> None:
    for writer in list(_WRITERS):
        writer.forget_waiting()


atexit.register(_flush_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_all_in_child)


def pipe_sized_pieces(lines: list[str], limit: int = PIPE_BUF, encoding: str = "utf-8") -> list[list[str]]:
    """``lines`` in as few pieces as fit ``limit`` bytes each in ``encoding``, cut only between
    lines (a longer line is a piece of its own). ASCII counts one byte a character (every
    encoding a log stream has is ASCII-compatible); anything else is encoded to be counted."""
    pieces: list[list[str]] = []
    current: list[str] = []
    size = 0
    for line in lines:
        length = len(line) if line.isascii() else len(line.encode(encoding, "backslashreplace"))
        if current and size + length > limit:
            pieces.append(current)
            current, size = [], 0
        current.append(line)
        size += length
    if current:
        pieces.append(current)
    return pieces
