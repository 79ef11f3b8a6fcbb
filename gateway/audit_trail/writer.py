"""The audit file: the chain appended as JSON lines, without the event loop ever waiting on a disk.

Threads. ``record`` builds the record where it is called, on the loop (pure and small: one
canonical dump and one SHA-256, one Ed25519 signature per segment, microseconds), so the chain's
order is the order of the calls, and hands the finished line to the writer's one worker thread.
A single-thread executor runs its jobs first in, first out, so lines reach the file in chain
order; ``record`` itself never touches the file and never waits.

Durability (the fsync policy). The worker writes each line with one ``write`` on an ``O_APPEND``
descriptor as soon as it gets it: from then on a crash of the process loses nothing, the kernel
has it. Surviving a power loss or a kernel crash needs ``fsync``, which costs a disk flush
(milliseconds); by default the worker syncs after every seal and at close (``FsyncPolicy.SEGMENT``),
so such a crash can cost at most the open segment's tail, and ``audit verify`` then reports it
(``truncated_segment``, or ``malformed`` for a half-written last line) instead of accepting it.
``FsyncPolicy.EVERY_RECORD`` syncs each line before the next is written: no record is acknowledged
by the disk later than by the kernel, at the cost of throughput bounded by the disk's sync rate
(still on the worker, never on the loop).

Resuming. Opening a file that already holds records continues its chain: the next ``seq`` after
the last record, ``prev`` its hash, and the open segment (records after the last seal) is sealed by
the next ``segment_close``. The last line must be a whole record whose hash holds; anything else
(a half-written line, a tampered tail) stops the open with ``AuditFileDamaged`` rather than
chaining new records onto a broken end. ``audit verify`` is the full check.
"""

from __future__ import annotations

import asyncio
import enum
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..strictjson import StrictJSONError, loads_strict
from .canonical import JSONValue, sha256_hex
from .chain import (
    DEFAULT_SEGMENT_SIZE,
    SEGMENT_CLOSE,
    ZERO_HASH,
    ChainState,
    EventKind,
    MalformedRecord,
    Record,
    SegmentSigner,
    append,
    close_segment,
    parse_record,
    resumed,
    start,
)


class FsyncPolicy(enum.Enum):
    SEGMENT = "segment"
    EVERY_RECORD = "every_record"


class AuditFileDamaged(Exception):
    """The existing file's end is not a whole, intact record: no chain can continue from it."""


class AuditWriteFailed(Exception):
    """The worker could not write or sync the file; later records would leave a gap."""


def _resume_state(path: Path, chain_from: str) -> ChainState:
    """The chain to continue in ``path`` (a new chain from ``chain_from`` for an empty file)."""
    last: Record | None = None
    segment_first_seq = 1
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.endswith(b"\n"):
                raise AuditFileDamaged(f"{path}: line {number} is cut short (no newline): a partial write")
            try:
                last = parse_record(loads_strict(line))
            except (StrictJSONError, MalformedRecord) as exc:
                raise AuditFileDamaged(f"{path}: line {number}: {exc}") from exc
            if last.kind == SEGMENT_CLOSE:
                segment_first_seq = last.seq + 1
    if last is None:
        return start(chain_from)
    if sha256_hex(last.body()) != last.hash:
        raise AuditFileDamaged(f"{path}: the last record's hash does not hold")
    return resumed(last, segment_first_seq)


def _open(path: Path, chain_from: str) -> tuple[int, ChainState]:
    created = not path.exists()
    # O_APPEND: every write lands at the end, whatever else has the file open.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        if created:  # so the new file's name, not just its data, survives a power loss
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        return fd, _resume_state(path, chain_from)
    except BaseException:
        os.close(fd)
        raise


class AuditWriter:
    """Appends audited events to one file as a signed hash chain (see the module docstring).

    Call ``record`` from one thread (the event loop's); ``await aclose()`` seals and syncs."""

    def __init__(
        self,
        executor: ThreadPoolExecutor,
        fd: int,
        state: ChainState,
        signer: SegmentSigner,
        *,
        segment_size: int,
        fsync: FsyncPolicy,
        clock: Callable[[], float],
    ) -> None:
        self._executor = executor
        self._fd = fd
        self._state = state
        self._signer = signer
        self._segment_size = segment_size
        self._fsync = fsync
        self._clock = clock
        self._last_job: Future[None] | None = None
        self._failure: OSError | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        signer: SegmentSigner,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        fsync: FsyncPolicy = FsyncPolicy.SEGMENT,
        chain_from: str = ZERO_HASH,
        clock: Callable[[], float] = time.time,
    ) -> AuditWriter:
        """Open (or create) ``path`` and continue its chain; ``chain_from`` is the first ``prev``
        of a new file (the last hash of the file it follows)."""
        if segment_size < 1:
            raise ValueError("segment_size must be at least 1")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        try:
            fd, state = await asyncio.wrap_future(executor.submit(_open, Path(path), chain_from))
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, fd, state, signer, segment_size=segment_size, fsync=fsync, clock=clock)

    @property
    def state(self) -> ChainState:
        return self._state

    def record(self, kind: EventKind, event: Mapping[str, JSONValue]) -> Record:
        """Chain one event and queue its line (and a seal when the segment is full); returns at once."""
        self._raise_if_unusable()
        record, self._state = append(self._state, kind, event, now=self._clock())
        self._submit(record.line(), sync=self._fsync is FsyncPolicy.EVERY_RECORD)
        if self._state.open_records >= self._segment_size:
            self._seal()
        return record

    async def flush(self) -> None:
        """Wait until every queued line is written (and synced as the policy says)."""
        if self._last_job is not None:
            await asyncio.wrap_future(self._last_job)
        if self._failure is not None:
            raise AuditWriteFailed(str(self._failure)) from self._failure

    async def aclose(self) -> None:
        """Seal the open segment, sync, and close the file."""
        if self._closed:
            return
        try:
            if self._failure is None:
                self._seal()
            self._closed = True
            self._last_job = self._executor.submit(self._close_file)
            await self.flush()
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)

    def _raise_if_unusable(self) -> None:
        if self._closed:
            raise AuditWriteFailed("the audit writer is closed")
        if self._failure is not None:
            raise AuditWriteFailed(str(self._failure)) from self._failure

    def _seal(self) -> None:
        sealed = close_segment(self._state, self._signer, now=self._clock())
        if sealed is not None:
            record, self._state = sealed
            self._submit(record.line(), sync=True)

    def _submit(self, line: bytes, *, sync: bool) -> None:
        self._last_job = self._executor.submit(self._write, line, sync)

    def _write(self, line: bytes, sync: bool) -> None:
        """On the worker: append one line; after a failure, write nothing more (no gaps)."""
        if self._failure is not None:
            return
        try:
            view = memoryview(line)
            while view:  # a regular file takes it whole; a short write is retried, not lost
                view = view[os.write(self._fd, view) :]
            if sync:
                os.fsync(self._fd)
        except OSError as exc:
            self._failure = exc

    def _close_file(self) -> None:
        try:
            if self._failure is None:
                os.fsync(self._fd)
        except OSError as exc:
            self._failure = exc
        finally:
            os.close(self._fd)
