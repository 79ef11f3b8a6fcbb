"""The server's log writer (``gateway.log_lines``): a loop turn's lines in one write at its end,
in order, in pieces a pipe writes atomically; at once where no loop runs; never an exception."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import threading
from typing import Any

import pytest
import structlog

from gateway.log_lines import PIPE_BUF, TurnBatchedWriter, pipe_sized_pieces
from gateway.logs import configure_logging
from tests.conftest import _SESSION_LOGS


class RecordingStream(io.StringIO):
    """A stream that remembers each ``write`` it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


async def test_lines_of_one_turn_wait_for_its_end_and_go_out_in_one_write_in_order() -> None:
    """Lines logged in one turn are not written until the turn ends, then in one write."""
    stream = RecordingStream()
    writer = TurnBatchedWriter(stream)
    for number in range(5):
        writer.info(f"line {number}")
    assert stream.writes == []
    await asyncio.sleep(0)  # the turn ends
    assert stream.writes == ["".join(f"line {number}\n" for number in range(5))]
    writer.warning("next turn")
    await asyncio.sleep(0)
    assert stream.writes[1:] == ["next turn\n"]


async def test_a_turns_lines_beyond_pipe_buf_are_cut_between_lines() -> None:
    """More than PIPE_BUF bytes in one turn: several writes, each at most PIPE_BUF bytes and
    ending at a line's end; a line longer than that is a write of its own; nothing is lost."""
    stream = RecordingStream()
    writer = TurnBatchedWriter(stream)
    lines = [f"{number:04d} " + "x" * 300 for number in range(40)]
    lines.insert(20, "long " + "y" * (2 * PIPE_BUF))
    lines.insert(30, "é" * 400)  # 800 bytes, 400 characters: the limit is in bytes
    for line in lines:
        writer.info(line)
    await asyncio.sleep(0)
    assert len(stream.writes) > 2
    assert "".join(stream.writes) == "".join(line + "\n" for line in lines)
    for write in stream.writes:
        assert write.endswith("\n")
        assert len(write.encode()) <= PIPE_BUF or write.count("\n") == 1


def test_pipe_sized_pieces_fills_each_piece_as_far_as_the_limit_allows() -> None:
    """Pieces are as full as whole lines allow: no two neighbours would fit in one."""
    lines = [f"{'z' * size}\n" for size in (10, 20, 5, 30, 1, 40, 2)]
    chunks = ["".join(piece) for piece in pipe_sized_pieces(lines, limit=40)]
    assert "".join(chunks) == "".join(lines)
    assert all(len(chunk) <= 40 for chunk in chunks if chunk.count("\n") > 1)
    assert all(len(a) + len(b) > 40 for a, b in itertools.pairwise(chunks))


def test_without_a_running_loop_each_line_goes_out_at_once() -> None:
    """Outside a loop (start-up, shutdown, a plain thread) a line is written when it is logged."""
    stream = RecordingStream()
    writer = TurnBatchedWriter(stream)
    writer.info("first")
    assert stream.writes == ["first\n"]
    writer.error("second")
    assert stream.writes == ["first\n", "second\n"]


async def test_a_line_from_another_thread_goes_out_after_the_lines_waiting_for_the_turn() -> None:
    """Another thread's line is written at once, behind what the loop's turn holds: the
    order lines were logged in is the order they are written in."""
    stream = RecordingStream()
    writer = TurnBatchedWriter(stream)
    writer.info("loop 1")
    thread = threading.Thread(target=writer.info, args=("thread",))
    thread.start()
    await asyncio.to_thread(thread.join)
    writer.info("loop 2")
    await asyncio.sleep(0)
    assert "".join(stream.writes) == "loop 1\nthread\nloop 2\n"


def test_lines_left_by_a_loop_that_stopped_mid_turn_go_out_before_the_next_line() -> None:
    """A loop that stops before its turn ends never runs the write: the next line logged,
    elsewhere or on another loop, writes them first; ``flush`` (atexit) writes the rest."""
    stream = RecordingStream()
    writer = TurnBatchedWriter(stream)
    loop = asyncio.new_event_loop()
    try:

        async def log_and_stop() -> None:
            writer.info("stranded")
            loop.stop()

        task = loop.create_task(log_and_stop())
        loop.run_forever()  # stops in the task's turn: the scheduled write may not have run
        assert task.done()
    finally:
        loop.close()

    async def on_another_loop() -> None:
        writer.info("later")

    asyncio.run(on_another_loop())
    writer.flush()
    assert "".join(stream.writes) == "stranded\nlater\n"


class BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("stream gone")


async def test_a_stream_that_fails_loses_the_lines_not_the_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A write that fails raises nowhere (not in the logging request, not in the loop); one fixed
    line on the process's stderr says lines were lost, without their text."""
    writer = TurnBatchedWriter(BrokenStream())
    writer.info("secret-free but lost")
    await asyncio.sleep(0)
    writer.flush()
    err = capsys.readouterr().err
    assert '{"event": "log_lines_lost", "lines": 1, "error": "OSError"}' in err
    assert "secret-free but lost" not in err


async def test_the_server_pipeline_writes_json_lines_through_the_batched_writer() -> None:
    """``configure_logging(batched=True)``: the gateway's events, rendered as before, reach the
    stream at the end of the turn."""
    stream = RecordingStream()
    try:
        configure_logging(json=True, level="info", stream=stream, batched=True)
        log = structlog.get_logger("gateway.request")
        log.info("request", status=200)
        log.debug("dropped at info")
        log.info("request", status=403)
        assert stream.writes == []
        await asyncio.sleep(0)
    finally:
        configure_logging(json=True, level="debug", stream=_SESSION_LOGS)
    [write] = stream.writes
    events = [json.loads(line) for line in write.splitlines()]
    assert [(event["event"], event["status"], event["level"]) for event in events] == [
        ("request", 200, "info"),
        ("request", 403, "info"),
    ]


async def test_configuring_again_writes_what_the_previous_writer_held() -> None:
    """Reconfiguring logging (tests, a reload) first writes what the batched writer holds."""
    stream = RecordingStream()
    try:
        configure_logging(json=True, level="info", stream=stream, batched=True)
        structlog.get_logger("gateway").info("held")
    finally:
        configure_logging(json=True, level="debug", stream=_SESSION_LOGS)
    assert [json.loads(line)["event"] for line in "".join(stream.writes).splitlines()] == ["held"]


def test_sizes_are_counted_in_the_streams_encoding() -> None:
    """A stream that escapes what its encoding lacks (stderr in ASCII: ``é`` is 4 bytes) still
    gets pieces of at most PIPE_BUF bytes as written."""
    lines = ["é" * 300 + "\n" for _ in range(40)]
    for piece in pipe_sized_pieces(lines, PIPE_BUF, "ascii"):
        written = "".join(piece).encode("ascii", "backslashreplace")
        assert len(written) <= PIPE_BUF or len(piece) == 1


def test_a_line_the_stream_cannot_encode_loses_only_itself(capsys: pytest.CaptureFixture[str]) -> None:
    """One line the stream refuses (a lone surrogate on a strict stream) is reported lost; the
    other lines of its piece are written."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)

    async def turn(writer: TurnBatchedWriter) -> None:
        for line in ("before", "bad \ud800", "after"):
            writer.info(line)

    asyncio.run(turn(TurnBatchedWriter(stream)))
    assert raw.getvalue() == b"before\nafter\n"
    assert '{"event": "log_lines_lost", "lines": 1, "error": "UnicodeEncodeError"}' in capsys.readouterr().err


class LoggingStream(RecordingStream):
    """A stream whose first write logs through the writer it serves, as a finalizer run by a
    collection inside that write would."""

    def __init__(self) -> None:
        super().__init__()
        self.writer: TurnBatchedWriter | None = None

    def write(self, text: str) -> int:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.error("from a finalizer")
        return super().write(text)


def test_a_line_logged_from_within_a_write_neither_waits_on_itself_nor_is_lost() -> None:
    """Logging from within the writer's own write (re-entered on its thread) does not deadlock:
    the line is added to what waits and the write under way takes it."""
    stream = LoggingStream()
    writer = TurnBatchedWriter(stream)
    stream.writer = writer
    done = threading.Event()

    def log_once() -> None:
        writer.info("first")
        done.set()

    thread = threading.Thread(target=log_once, daemon=True)
    thread.start()
    assert done.wait(5), "the writer waited on its own lock"
    assert "".join(stream.writes) == "first\nfrom a finalizer\n"


class FinalizingLoop(asyncio.SelectorEventLoop):
    """A loop whose next ``call_soon`` first logs through a writer, as a finalizer run by a
    collection inside that call would."""

    writer: TurnBatchedWriter | None = None

    def call_soon(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.error("from a finalizer")
        return super().call_soon(*args, **kwargs)


def test_a_line_logged_while_scheduling_the_write_is_written_in_order() -> None:
    """Logging from within the writer's scheduling of its turn-end write: both lines wait for
    that one write, in the order they were logged."""
    stream = RecordingStream()
    writer = TurnBatchedWriter(stream)
    done = threading.Event()

    async def turn() -> None:
        loop.writer = writer
        writer.info("first")
        await asyncio.sleep(0)

    def run_turn() -> None:
        try:
            loop.run_until_complete(turn())
        finally:
            done.set()

    loop = FinalizingLoop()
    thread = threading.Thread(target=run_turn, daemon=True)  # a deadlock fails, not hangs
    thread.start()
    assert done.wait(5), "the writer waited on its own lock"
    loop.close()
    assert stream.writes == ["first\nfrom a finalizer\n"]


class PipeStream(io.TextIOBase):
    """The write end of a pipe, non-blocking (lines are short): a child's writes reach the
    parent's read end."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)

    def write(self, text: str) -> int:
        return os.write(self.fd, text.encode())


async def test_a_forked_child_does_not_write_its_parents_waiting_lines() -> None:
    """Lines waiting when the process forks are the parent's to write: the child starts with
    none, so each is written once."""
    read_end, write_end = os.pipe()
    try:
        writer = TurnBatchedWriter(PipeStream(write_end))  # type: ignore[arg-type]
        writer.info("waiting at the fork")
        pid = os.fork()
        if pid == 0:  # the child: write what it holds, and leave without pytest's teardown
            writer.flush()
            os._exit(0)
        await asyncio.to_thread(os.waitpid, pid, 0)
        await asyncio.sleep(0)  # the parent's turn ends
        os.set_blocking(read_end, False)
        assert os.read(read_end, 4096) == b"waiting at the fork\n"
    finally:
        os.close(read_end)
        os.close(write_end)
