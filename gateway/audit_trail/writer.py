"""The audit file: the chain appended as JSON lines, without the event loop ever waiting on a disk.

Threads. ``record`` builds the record where it is called, on the loop (pure and small: one
canonical dump and one SHA-256, one Ed25519 signature per segment, microseconds), so the chain's
order is the order of the calls, and puts the finished line in a queue that the writer's one
worker thread drains, first in, first out, so lines reach the file in chain order; ``record``
itself never touches the file and never waits. A drain is handed to the worker only when none is
under way: a busy loop's records cost one thread hand-off per batch, not one each.

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
chaining new records onto a broken end, and so does a file sealed by another key than the
writer's (``AuditKeyChanged``: a file verifies with one public key). ``audit verify`` is the full
check.

Sinks. Where the lines go is a ``LineSink``, called only on the worker: the file (``open``) or
another destination (``over``, e.g. ``gateway.audit_trail.otlp``), which gets the same records
chained and sealed the same way. A sink that fails later, on a thread of its own (an exporter),
reports it through ``fail``.

Failure. The first line that cannot be written stops the writer for good: nothing after it is
written (a later line would hide the gap), ``record`` raises ``AuditWriteFailed`` from then on,
and ``on_failure`` is called once, on the thread that saw the failure.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

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
    parse_seal,
    resumed,
    signature_holds,
    start,
)


class FsyncPolicy(enum.Enum):
    SEGMENT = "segment"
    EVERY_RECORD = "every_record"


class AuditFileDamaged(Exception):
    """The existing file's end is not a whole, intact record: no chain can continue from it."""


class AuditKeyChanged(AuditFileDamaged):
    """The file's seals are by another key: one file verifies with one public key, so a new key
    starts a new file."""


class AuditWriteFailed(Exception):
    """The worker could not write or sync the file; later records would leave a gap."""


def _resume_state(path: Path, chain_from: str, signer: SegmentSigner | None = None) -> ChainState:
    """The chain to continue in ``path`` (a new chain from ``chain_from`` for an empty file),
    whose seals must be by ``signer``'s key (if given): its id, and its signature on the last
    seal (another key under the same id would leave a file no one key verifies)."""
    last: Record | None = None
    last_seal: Record | None = None
    segment_first_seq = 1
    sealed_by: object = None
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
                sealed_by = last.event.get("key_id")
                last_seal = last
    if last is None:
        return start(chain_from)
    if signer is not None and last_seal is not None:
        key_id = signer.key_id
        if sealed_by != key_id:
            raise AuditKeyChanged(
                f"{path} is sealed by key {sealed_by!r}, not {key_id!r}: a file verifies with one key, "
                "so a new key needs a new audit file"
            )
        try:
            seal, signature = parse_seal(last_seal)
        except MalformedRecord as exc:
            raise AuditFileDamaged(f"{path}: its last seal: {exc}") from exc
        if not signature_holds(seal, signature, signer.public_key()):
            raise AuditKeyChanged(
                f"{path} was sealed under key id {key_id!r} by another key than the configured one: "
                "a file verifies with one key, so a new key needs a new audit file (and its own id)"
            )
    if sha256_hex(last.body()) != last.hash:
        raise AuditFileDamaged(f"{path}: the last record's hash does not hold")
    return resumed(last, segment_first_seq)


FailureReport = Callable[[OSError], None]


class LineSink(Protocol):
    """Where the writer's lines go; every call comes from the writer's one worker thread."""

    def write(self, record: Record, line: bytes, sync: bool) -> None:
        """Take one record (``line`` is its canonical JSON and a newline); ``sync``: make it
        durable before returning. Raises ``OSError`` when it cannot."""
        ...

    def close(self, sync: bool) -> None:
        """Make what was written durable (unless ``sync`` is False: after a failure) and let go."""
        ...


class FileSink:
    """The JSON-lines file: one ``write`` per line on an ``O_APPEND`` descriptor."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, record: Record, line: bytes, sync: bool) -> None:
        view = memoryview(line)
        while view:  # a regular file takes it whole; a short write is retried, not lost
            view = view[os.write(self._fd, view) :]
        if sync:
            os.fsync(self._fd)

    def close(self, sync: bool) -> None:
        try:
            if sync:
                os.fsync(self._fd)
        finally:
            os.close(self._fd)


def _open(path: Path, chain_from: str, signer: SegmentSigner | None = None) -> tuple[FileSink, ChainState]:
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
        return FileSink(fd), _resume_state(path, chain_from, signer)
    except BaseException:
        os.close(fd)
        raise


def _nothing() -> None:
    """A job for the worker that only marks a point in its queue."""


def _check_segment_size(segment_size: int) -> None:
    if segment_size < 1:
        raise ValueError("segment_size must be at least 1")


class AuditWriter:
    """Appends audited events to a sink as a signed hash chain (see the module docstring).

    Call ``record`` from one thread (the event loop's); ``await aclose()`` seals and syncs."""

    def __init__(
        self,
        executor: ThreadPoolExecutor,
        state: ChainState,
        signer: SegmentSigner,
        *,
        segment_size: int,
        fsync: FsyncPolicy,
        clock: Callable[[], float],
        on_failure: FailureReport | None = None,
    ) -> None:
        _check_segment_size(segment_size)
        self._executor = executor
        self._sink: LineSink | None = None  # attached by `open` / `over`, on the worker
        self._state = state
        self._signer = signer
        self._segment_size = segment_size
        self._fsync = fsync
        self._clock = clock
        self._on_failure = on_failure
        self._failure_lock = threading.Lock()  # the worker and a sink's own thread may both fail
        self._last_job: Future[None] | None = None
        # Lines for the worker, and whether a drain is handed to it: appended on the loop, taken on
        # the worker (a deque's append and popleft are thread-safe).
        self._queue: collections.deque[tuple[Record, bytes, bool]] = collections.deque()
        self._draining = False
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
        on_failure: FailureReport | None = None,
    ) -> AuditWriter:
        """Open (or create) ``path`` and continue its chain; ``chain_from`` is the first ``prev``
        of a new file (the last hash of the file it follows)."""
        _check_segment_size(segment_size)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        try:
            opening = executor.submit(_open, Path(path), chain_from, signer)
            sink, state = await asyncio.wrap_future(opening)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        writer = cls(
            executor,
            state,
            signer,
            segment_size=segment_size,
            fsync=fsync,
            clock=clock,
            on_failure=on_failure,
        )
        writer._sink = sink
        return writer

    @classmethod
    async def over(
        cls,
        make_sink: Callable[[FailureReport], LineSink],
        signer: SegmentSigner,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        fsync: FsyncPolicy = FsyncPolicy.SEGMENT,
        chain_from: str = ZERO_HASH,
        clock: Callable[[], float] = time.time,
        on_failure: FailureReport | None = None,
    ) -> AuditWriter:
        """A new chain into the sink ``make_sink(fail)`` builds (on the worker: building one may
        read files); the sink calls ``fail`` when it learns later that lines were lost."""
        _check_segment_size(segment_size)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        writer = cls(
            executor,
            start(chain_from),
            signer,
            segment_size=segment_size,
            fsync=fsync,
            clock=clock,
            on_failure=on_failure,
        )
        try:
            writer._sink = await asyncio.wrap_future(executor.submit(make_sink, writer.fail))
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return writer

    @property
    def state(self) -> ChainState:
        return self._state

    @property
    def failure(self) -> OSError | None:
        """The failure that stopped the writer, if one did (readable from any thread)."""
        return self._failure

    def record(self, kind: EventKind, event: Mapping[str, JSONValue]) -> Record:
        """Chain one event and queue its line (and a seal when the segment is full); returns at once."""
        self._raise_if_unusable()
        record, self._state = append(self._state, kind, event, now=self._clock())
        self._submit(record, sync=self._fsync is FsyncPolicy.EVERY_RECORD)
        if self._state.open_records >= self._segment_size:
            self._seal()
        return record

    async def flush(self) -> None:
        """Wait until every queued line is written (and synced as the policy says)."""
        # A job after every line queued so far: the one worker runs it once they are written.
        job = self._last_job if self._closed else self._executor.submit(_nothing)
        if job is not None:
            await asyncio.wrap_future(job)
        if self._failure is not None:
            raise AuditWriteFailed(str(self._failure)) from self._failure

    async def aclose(self) -> None:
        """Seal the open segment, sync, and close the sink."""
        if self._closed:
            return
        try:
            if self._failure is None:
                self._seal()
            self._closed = True
            self._last_job = self._executor.submit(self._close_sink)
            await self.flush()
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)

    def fail(self, exc: OSError) -> None:
        """Stop the writer (from any thread): nothing more is written; ``on_failure`` hears of the
        first failure only."""
        with self._failure_lock:
            if self._failure is not None:
                return
            self._failure = exc
        if self._on_failure is not None:
            self._on_failure(exc)

    def _raise_if_unusable(self) -> None:
        if self._closed:
            raise AuditWriteFailed("the audit writer is closed")
        if self._failure is not None:
            raise AuditWriteFailed(str(self._failure)) from self._failure

    def _seal(self) -> None:
        sealed = close_segment(self._state, self._signer, now=self._clock())
        if sealed is not None:
            record, self._state = sealed
            self._submit(record, sync=True)

    def _submit(self, record: Record, *, sync: bool) -> None:
        self._queue.append((record, record.line(), sync))
        if not self._draining:
            self._draining = True
            self._executor.submit(self._drain)

    def _drain(self) -> None:
        """On the worker: write what is queued, until nothing is.

        ``_draining`` is cleared before the last look at the queue, so a line queued after that
        look finds it clear and hands over a new drain; one queued before it is seen here. A
        second drain handed over meanwhile finds the queue empty, or drains it in order."""
        queue = self._queue
        while True:
            while queue:
                self._write(*queue.popleft())
            self._draining = False
            if not queue:
                return
            self._draining = True

    def _write(self, record: Record, line: bytes, sync: bool) -> None:
        """On the worker: hand one line to the sink; after a failure, nothing more (no gaps)."""
        if self._failure is not None or self._sink is None:
            return
        try:
            self._sink.write(record, line, sync)
        except OSError as exc:
            self.fail(exc)
        except Exception as exc:  # a sink's bug loses the line just the same: fail closed
            self.fail(OSError(f"{type(exc).__name__}: {exc}"))

    def _close_sink(self) -> None:
        if self._sink is None:
            return
        try:
            self._sink.close(sync=self._failure is None)
        except OSError as exc:
            self.fail(exc)
