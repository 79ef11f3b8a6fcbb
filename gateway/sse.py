"""Incremental relay of a Server-Sent Events stream that can rewrite individual events.

The gateway forwards an upstream ``text/event-stream`` body (MCP Streamable HTTP) to the client as
it arrives. For a few requests it must replace the ``data`` of one event (the JSON-RPC response of
a ``*/list`` call); every other byte passes through unchanged and without waiting for later input.

:class:`SseEventRewriter` works on whole events: it buffers the bytes of the event being received
and hands them on the moment the blank line that ends the event has arrived. Events whose data
does not start with ``{`` are never decoded; when the rewrite callback declines an event (returns
``None``) its original bytes are emitted, so a stream that is not rewritten comes out identical
to the stream that went in, whatever the chunk boundaries.

Framing follows the WHATWG HTML Standard, section 9.2 "Server-sent events", subsections
"Parsing an event stream" (the ABNF) and "Interpreting an event stream" (field processing and
event dispatch). Those rules are cited below as [parsing] and [interpreting].
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

__all__ = ["SseEventRewriter", "SseEventTooLarge", "parse_sse_events"]

# [parsing]: "end-of-line = ( cr lf / cr / lf )". CR and LF never occur inside a multi-byte UTF-8
# sequence, so lines can be found in the raw bytes and each line decoded on its own.
_EOL: Final = re.compile(rb"[\r\n]")
_CR: Final = 0x0D
_LF: Final = 0x0A
_SPACE: Final = 0x20
_COLON: Final = 0x3A
# [parsing]: "stream = [ bom ] *event" -- one U+FEFF, in UTF-8 these three bytes, may open the stream.
_BOM: Final = b"\xef\xbb\xbf"
# The JSON whitespace (RFC 8259 section 2) a JSON text may start with.
_NOT_JSON_WS: Final = re.compile(rb"[^ \t\r\n]")
# A replacement's line breaks. Not str.splitlines(): that also breaks at U+2028, VT, FF and the like,
# which are ordinary characters inside an SSE line.
_TEXT_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")
_DATA: Final = b"data"

# A completed line of the current event: (content start, content end, line end) as offsets from the
# first byte of the event. The line terminator is the bytes between content end and line end.
_Line = tuple[int, int, int]


class SseEventTooLarge(ValueError):
    """An event grew beyond the configured limit; the stream must be aborted."""

    def __init__(self, max_event_bytes: int) -> None:
        super().__init__(f"server-sent event larger than {max_event_bytes} bytes")
        self.max_event_bytes = max_event_bytes


class SseEventRewriter:
    """Feed upstream bytes; get bytes to send downstream, event by event.

    ``rewrite(data)`` is called at most once per event, only for events that have data whose first
    non-whitespace character is ``{``. It receives the event's data as a client would see it: the
    values of the ``data`` lines joined with "\\n" ([interpreting]). It returns the replacement data,
    or ``None`` to keep the event's original bytes exactly.

    A rewritten event keeps its other lines (``event``, ``id``, ``retry``, unknown fields, comments)
    byte for byte and in order; its data lines are replaced, at the place of the first one, by one
    ``data: `` line per line of the replacement, each ended like the last original data line.

    Any exception (from the size limit or from ``rewrite``) leaves the object unusable; the caller is
    expected to abort the stream.
    """

    def __init__(
        self, rewrite: Callable[[str], str | None], *, max_event_bytes: int = 8 * 1024 * 1024
    ) -> None:
        if max_event_bytes < 1:
            raise ValueError("max_event_bytes must be positive")
        self._rewrite = rewrite
        self._max_event_bytes = max_event_bytes
        # Bytes of the event being received. Between calls it starts at an event boundary.
        self._buf = bytearray()
        # Where the search for the next line terminator resumes, and where the current line starts.
        self._scan = 0
        self._line_start = 0
        # The completed lines of the event being received.
        self._lines: list[_Line] = []
        # True until the first line of the stream is complete (it may start with a BOM).
        self._first_line = True
        # The previous chunk ended with the CR of an event's blank line; an LF that opens the next
        # chunk belongs to that same line terminator ([parsing]: "cr lf" is one end-of-line).
        self._cr_ended_event = False
        self._closed = False

    def feed(self, chunk: bytes) -> bytes:
        """Take the next bytes of the stream; return the bytes of every event they complete."""
        self._check_open()
        if not chunk:
            return b""
        try:
            return self._feed(chunk)
        except BaseException:
            self._closed = True
            raise

    def finish(self) -> bytes:
        """End of stream: return what is left (an unterminated last event, unchanged)."""
        self._check_open()
        self._closed = True
        rest = bytes(self._buf)
        self._buf = bytearray()
        self._lines = []
        return rest

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("SseEventRewriter is finished or failed")

    def _feed(self, chunk: bytes) -> bytes:
        out: list[bytes | bytearray] = []
        view = memoryview(chunk)
        if self._cr_ended_event:
            self._cr_ended_event = False
            if view[0] == _LF:
                # The rest of the terminator of an event that was already emitted.
                out.append(b"\n")
                view = view[1:]
        buf = self._buf
        buf += view
        size = len(buf)
        limit = self._max_event_bytes
        lines = self._lines
        pos = self._scan
        line_start = self._line_start
        event_start = 0  # the event being received starts here
        emitted = 0  # buf[:emitted] is already in `out`

        while (match := _EOL.search(buf, pos)) is not None:
            eol = match.start()
            content_start = line_start
            if self._first_line and buf.startswith(_BOM, line_start, eol):
                # [parsing]: the optional BOM is not part of the first line.
                content_start += len(_BOM)
            blank = eol == content_start
            if buf[eol] == _CR:
                if eol + 1 < size:
                    end = eol + 2 if buf[eol + 1] == _LF else eol + 1
                elif blank:
                    # A CR always ends a line, so the event is complete now; an LF that may follow
                    # in the next chunk is emitted on its own then.
                    end = eol + 1
                    self._cr_ended_event = True
                else:
                    # CR or CRLF? The event cannot end before more bytes arrive anyway: wait.
                    pos = eol
                    break
            else:
                end = eol + 1
            self._first_line = False

            if blank:
                # [interpreting]: "If the line is empty (a blank line): Dispatch the event".
                if end - event_start > limit:
                    raise SseEventTooLarge(limit)
                replacement = self._rewritten(buf, event_start, end, lines)
                if replacement is not None:
                    out.append(buf[emitted:event_start])
                    out.append(replacement)
                    emitted = end
                lines.clear()
                event_start = end
            else:
                lines.append((content_start - event_start, eol - event_start, end - event_start))
            line_start = pos = end
        else:
            pos = size

        out.append(buf[emitted:event_start])
        del buf[:event_start]
        self._scan = pos - event_start
        self._line_start = line_start - event_start
        if len(buf) > limit:
            raise SseEventTooLarge(limit)
        return b"".join(out)

    def _rewritten(self, buf: bytearray, start: int, end: int, lines: list[_Line]) -> bytes | None:
        """The new bytes of the event buf[start:end], or None to keep them."""
        data_lines: list[int] = []
        values: list[tuple[int, int]] = []
        for index, (content_start, content_end, _) in enumerate(lines):
            first, last = start + content_start, start + content_end
            # [interpreting]: a line that starts with ":" is a comment; otherwise the field name is
            # everything up to the first ":" (or the whole line) and is compared case-sensitively.
            if not buf.startswith(_DATA, first, last):
                continue
            value = first + len(_DATA)
            if value < last:
                if buf[value] != _COLON:
                    continue  # e.g. a field named "database"
                value += 1
                # [interpreting]: "If value starts with a U+0020 SPACE character, remove it".
                if value < last and buf[value] == _SPACE:
                    value += 1
            data_lines.append(index)
            values.append((value, last))
        if not self._looks_like_json(buf, values):
            return None

        # [interpreting]: each data line appends its value and an LF to the data buffer, and the
        # last LF is removed at dispatch, i.e. the values joined with LF. The stream is UTF-8 with
        # errors replaced by U+FFFD ([parsing]); lines never split a UTF-8 sequence, so decoding
        # value by value gives the same text as decoding the whole stream.
        data = "\n".join(buf[first:last].decode("utf-8", errors="replace") for first, last in values)
        new_data = self._rewrite(data)
        if new_data is None:
            return None

        # An SSE data value cannot hold CR or LF: every line break of the replacement (CR, LF or
        # CRLF, all JSON whitespace) starts a new data line; the client joins them with LF.
        # The new lines end like the last data line did. If they are followed by the blank line,
        # that line ending followed it before, so no "cr" can meet a blank line's "lf" and merge
        # into one "cr lf" ([parsing]); otherwise they are followed by a non-empty line.
        last_data = lines[data_lines[-1]]
        eol = bytes(buf[start + last_data[1] : start + last_data[2]])
        new_lines = b"".join(
            b"data: " + part.encode("utf-8") + eol for part in _TEXT_LINE_BREAK.split(new_data)
        )
        skip = set(data_lines[1:])
        # Whatever precedes the first line's content (the BOM, for the first event of the stream).
        parts: list[bytes | bytearray] = [buf[start : start + lines[0][0]]]
        for index, (content_start, _, line_end) in enumerate(lines):
            if index == data_lines[0]:
                parts.append(new_lines)
            elif index not in skip:
                parts.append(buf[start + content_start : start + line_end])
        parts.append(buf[start + lines[-1][2] : end])  # the blank line
        return b"".join(parts)

    @staticmethod
    def _looks_like_json(buf: bytearray, values: list[tuple[int, int]]) -> bool:
        """Whether the first non-whitespace character of the data is "{" (decodes nothing)."""
        for first, last in values:
            match = _NOT_JSON_WS.search(buf, first, last)
            if match is not None:
                return buf[match.start()] == ord("{")
        return False


def parse_sse_events(data: bytes) -> list[dict[str, str]]:
    """Split a complete stream into events, each a dict of field name to value.

    A small reading aid for tests and logs, not an EventSource: ``data`` holds the data lines'
    values joined with "\\n"; for any other field the last value wins. Comments are skipped, blocks
    without any field are dropped, and so is an unterminated last block (as at end of stream in
    [interpreting]). Unlike a browser it also returns events that have no data.
    """
    text = data.decode("utf-8", errors="replace")
    text = text.removeprefix("\ufeff")
    events: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    data_values: list[str] = []
    # The last element of the split is what follows the last line terminator: an unfinished line.
    for line in _TEXT_LINE_BREAK.split(text)[:-1]:
        if not line:
            if data_values:
                fields["data"] = "\n".join(data_values)
            if fields:
                events.append(fields)
            fields, data_values = {}, []
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data_values.append(value)
        else:
            fields[name] = value
    return events
