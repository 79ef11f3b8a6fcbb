"""Incremental relay of a Server-Sent Events stream that can rewrite individual events.

The gateway forwards an upstream ``text/event-stream`` body (MCP Streamable HTTP) to the client as
it arrives. It may have to replace the ``data`` of an event (a JSON-RPC response carrying a
``*/list`` result, see ``gateway.mcp.answers``); every other byte passes through unchanged and
without waiting for later input.

:class:`SseEventRewriter` works on whole events: it buffers the bytes of the event being received
and hands them on the moment the blank line that ends the event has arrived. With ``markers``,
only an event in whose bytes one of them occurs is decoded and offered to the rewrite callback (a
marker is a byte string, or a tuple of byte strings that occurs when all of them do);
when the callback declines an event (returns ``None``) its original bytes are emitted, so a
stream that is not rewritten comes out identical to the stream that went in, whatever the chunk
boundaries. A chunk that starts and ends at an event boundary and holds no marker at all is
passed on as it is, without splitting it into lines.

Framing follows the WHATWG HTML Standard, section 9.2 "Server-sent events", subsections
"Parsing an event stream" (the ABNF) and "Interpreting an event stream" (field processing and
event dispatch). Those rules are cited below as [parsing] and [interpreting].
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Final, TypeAlias

__all__ = ["Marker", "SseEventRewriter", "SseEventTooLarge", "marker_occurs", "valid_markers"]

# What the byte pre-check looks for: a byte string, or several that must all occur (in any order
# and anywhere: ``("\"isError\"", "true")`` for a value no data-line split can come between).
Marker: TypeAlias = bytes | tuple[bytes, ...]

# [parsing]: "end-of-line = ( cr lf / cr / lf )". CR and LF never occur inside a multi-byte UTF-8
# sequence, so lines are found in the raw bytes, before any decoding, wherever the chunks were cut.
_EOL: Final = re.compile(rb"[\r\n]")
_CR: Final = 0x0D
_LF: Final = 0x0A
_SPACE: Final = 0x20
_COLON: Final = 0x3A
# [parsing]: "stream = [ bom ] *event" -- one U+FEFF, in UTF-8 these three bytes, may open the stream.
_BOM: Final = b"\xef\xbb\xbf"
# What str.splitlines() breaks at beyond CR and LF, in UTF-8: an SSE reader that splits lines that
# way (httpx-sse up to 0.4.0 reads through httpx's aiter_lines, and so did the Python MCP SDK's
# client) sees more lines, and so other fields, than WHATWG does. (C2 and E2 are lead bytes: these
# sequences are those characters wherever they occur.)
_AMBIGUOUS_BREAK: Final = re.compile(rb"[\x0b\x0c\x1c-\x1e]|\xc2\x85|\xe2\x80[\xa8\xa9]")
# A replacement's line breaks. Not str.splitlines(): that also breaks at U+2028, VT, FF and the like,
# which are ordinary characters inside an SSE line.
_TEXT_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")
_DATA: Final = b"data"
_ID: Final = b"id"
# Where an id line may start in a chunk: at its beginning, or after a line break.
_ID_LINE_STARTS: Final = (b"\nid", b"\rid")


def marker_occurs(marker: Marker, raw: bytes | bytearray, start: int = 0, end: int | None = None) -> bool:
    """Whether ``marker`` occurs in ``raw[start:end]``."""
    stop = len(raw) if end is None else end
    if not isinstance(marker, tuple):
        return raw.find(marker, start, stop) >= 0
    return all(raw.find(part, start, stop) >= 0 for part in marker)


def valid_markers(markers: Sequence[Marker]) -> bool:
    """No marker that would occur in every event (an empty byte string, a tuple of none or with
    an empty part), and parts that are byte strings."""
    return all(_valid_marker(marker) for marker in markers)


def _valid_marker(marker: Marker) -> bool:
    if isinstance(marker, tuple):
        return bool(marker) and all(isinstance(part, bytes | bytearray) and part for part in marker)
    return bool(marker)


class SseEventTooLarge(ValueError):
    """An event grew beyond the configured limit; the stream must be aborted."""

    def __init__(self, max_event_bytes: int) -> None:
        super().__init__(f"server-sent event larger than {max_event_bytes} bytes")
        self.max_event_bytes = max_event_bytes


class SseEventRewriter:
    """Feed upstream bytes; get bytes to send downstream, event by event.

    ``rewrite(data)`` is called at most once per event, only for events that have a data line and,
    when ``markers`` is given, in whose bytes (in any of its lines) one of the markers
    occurs. It receives the event's data as a client would see it: the values of the
    ``data`` lines joined with "\\n" ([interpreting]). It returns the replacement data, or ``None``
    to keep the event's original bytes exactly.

    ``ambiguous``: when given, an event that would be offered (a marker occurs in it, with or
    without a data line) and holds, in a line other than a data line, a character some SSE readers
    break lines at and WHATWG does not (U+2028, U+0085, VT, FF…) is replaced as a whole by one
    event whose data is ``ambiguous``: such a reader would find fields in that line, a data line
    included, that this parser never sees. Inside data lines those characters are the callback's
    concern (it sees them in the data).

    ``guarded_markers``: the markers of what may change events (default: ``markers``). Only an
    event holding one of them is replaced for ``ambiguous``, and only an unterminated tail
    holding one is dropped (``finish``); events that hold only the other markers are offered to
    be looked at and otherwise go out as they came (an empty sequence: every event does).

    A rewritten event keeps its other lines (``event``, ``id``, ``retry``, unknown fields, comments)
    byte for byte and in order; its data lines are replaced, at the place of the last one, by one
    ``data: `` line per line of the replacement, each ended like that last data line.

    ``rewrite_id``: when given, the value of every ``id`` line (the event id a client resumes
    from with ``Last-Event-ID``) is replaced by ``rewrite_id(value)``; an empty id (a reset) is
    kept, and an id holding NUL, which clients ignore ([interpreting]), is dropped.

    Any exception (from the size limit or from ``rewrite``) leaves the object unusable; the caller is
    expected to abort the stream.
    """

    def __init__(
        self,
        rewrite: Callable[[str], str | None],
        *,
        markers: Sequence[Marker] | None = None,
        guarded_markers: Sequence[Marker] | None = None,
        ambiguous: str | None = None,
        rewrite_id: Callable[[str], str] | None = None,
        max_event_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        if max_event_bytes < 1:
            raise ValueError("max_event_bytes must be positive")
        if markers is not None and not valid_markers(markers):
            raise ValueError("an empty marker would match everything: pass markers=None")
        if guarded_markers is not None and not valid_markers(guarded_markers):
            raise ValueError("an empty guarded marker would match everything: pass None")
        self._rewrite = rewrite
        self._markers = tuple(markers) if markers is not None else None
        # None: every event is guarded (as every event is offered without markers).
        self._guarded = self._markers if guarded_markers is None else tuple(guarded_markers)
        self._ambiguous = ambiguous
        self._rewrite_id = rewrite_id
        self._max_event_bytes = max_event_bytes
        # Bytes of the event being received. Between calls it starts at an event boundary.
        self._buf = bytearray()
        # Where the search for the next line terminator resumes, and where the current line starts.
        self._scan = 0
        self._line_start = 0
        # What is known of the event being received: whether it has a data line, and the length of
        # the BOM before its first line (only the first event of a stream can have one). Nothing is
        # kept per line, so memory is the event's bytes, however many lines it has.
        self._has_data = False
        self._has_id = False
        self._bom_length = 0
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
        if self._passes_whole(chunk):
            self._first_line = False
            return chunk
        try:
            return self._feed(chunk)
        except BaseException:
            self._closed = True
            raise

    def finish(self) -> bytes:
        """End of stream: return what is left (an unterminated last event, unchanged).

        With markers, a tail holding one is dropped instead: WHATWG never dispatches an event the
        stream ends in, but a reader may (httpx2, the Python SDK's, dispatches ``data: …\\r`` at
        the end), and the tail was never offered to the rewrite callback.
        """
        self._check_open()
        self._closed = True
        rest = bytes(self._buf)
        self._buf = bytearray()
        if self._markers is not None and self._guards(rest, 0, len(rest)):
            return b""
        if self._rewrite_id is not None and _has_id_line(rest):
            return b""  # an unfinished event's id was never sealed: the client must not resume from it
        return rest

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("SseEventRewriter is finished or failed")

    def _passes_whole(self, chunk: bytes) -> bool:
        """Whether ``chunk`` is whole events none of which can be offered: emitted as it is.

        It must start at an event boundary (nothing buffered, no CR waiting for its LF), end with
        a blank line (LF LF, or CR LF after CR or LF: a CR LF alone is one line ending, and a CR
        at the end could still become CR LF), fit the event limit, and hold no marker.
        """
        markers = self._markers
        if markers is None or self._buf or self._cr_ended_event or len(chunk) > self._max_event_bytes:
            return False
        if not (chunk.endswith(b"\n\n") or chunk.endswith(b"\n\r\n") or chunk.endswith(b"\r\r\n")):
            return False
        for marker in markers:
            if marker in chunk if type(marker) is bytes else marker_occurs(marker, chunk):
                return False
        return self._rewrite_id is None or not _has_id_line(chunk)

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
        pos = self._scan
        line_start = self._line_start
        event_start = 0  # the event being received starts here
        emitted = 0  # buf[:emitted] is already in `out`

        # Each byte is searched once for CR/LF, resuming where the previous chunk stopped.
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
            if self._first_line:
                self._first_line = False
                self._bom_length = content_start - line_start

            if blank:
                # [interpreting]: "If the line is empty (a blank line): Dispatch the event".
                if end - event_start > limit:
                    raise SseEventTooLarge(limit)
                replacement = self._replacement(buf, event_start, line_start, end)
                if self._has_id and self._rewrite_id is not None:
                    event = replacement if replacement is not None else buf[event_start:end]
                    replacement = _with_ids_rewritten(event, self._bom_length, self._rewrite_id)
                if replacement is not None:
                    out.append(buf[emitted:event_start])
                    out.append(replacement)
                    emitted = end
                self._has_data = False
                self._has_id = False
                self._bom_length = 0
                event_start = end
            else:
                if not self._has_data:
                    self._has_data = _data_value(buf, content_start, eol) is not None
                if self._rewrite_id is not None and not self._has_id:
                    self._has_id = _field_value(buf, content_start, eol, _ID) is not None
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

    def _replacement(self, buf: bytearray, start: int, blank: int, end: int) -> bytearray | None:
        """What replaces the complete event buf[start:end] (blank line at ``blank``), or None."""
        markers = self._markers
        if markers is not None and not any(marker_occurs(marker, buf, start, end) for marker in markers):
            return None
        if (
            self._ambiguous is not None
            and self._guards(buf, start, end)
            and self._ambiguous_outside_data(buf, start + self._bom_length, blank)
        ):
            result = bytearray(buf[start : start + self._bom_length])
            for part in _TEXT_LINE_BREAK.split(self._ambiguous):
                result += b"data: " + part.encode("utf-8") + b"\n"
            return result + b"\n"
        if not self._has_data:
            return None
        return self._rewritten(buf, start, self._bom_length, blank, end)

    def _guards(self, buf: bytes | bytearray, start: int, end: int) -> bool:
        guarded = self._guarded
        return guarded is None or any(marker_occurs(marker, buf, start, end) for marker in guarded)

    @staticmethod
    def _ambiguous_outside_data(buf: bytearray, start: int, blank: int) -> bool:
        if _AMBIGUOUS_BREAK.search(buf, start, blank) is None:
            return False  # the common case: one search over the event, no line walk
        return any(
            _data_value(buf, line, content_end) is None
            and _AMBIGUOUS_BREAK.search(buf, line, content_end) is not None
            for line, content_end, _ in _lines(buf, start, blank)
        )

    def _rewritten(self, buf: bytearray, start: int, bom: int, blank: int, end: int) -> bytearray | None:
        """The new bytes of the complete event buf[start:end], or None to keep them.

        buf[start + bom : blank] holds its lines, buf[blank:end] the blank line ending it.
        """
        # [interpreting]: each data line appends its value and an LF to the data buffer, and the
        # last LF is removed at dispatch: the values joined with LF. The stream is UTF-8 with
        # errors replaced by U+FFFD ([parsing]); CR and LF never occur inside a UTF-8 sequence, so
        # decoding the joined values gives the same text as decoding the whole stream.
        raw_data = bytearray()
        last_data = -1  # where the last data line starts
        for line, content_end, _ in _lines(buf, start + bom, blank):
            value = _data_value(buf, line, content_end)
            if value is not None:
                if last_data >= 0:
                    raw_data += b"\n"
                raw_data += buf[value:content_end]
                last_data = line
        new_data = self._rewrite(raw_data.decode("utf-8", errors="replace"))
        if new_data is None:
            return None

        # An SSE data value cannot hold CR or LF: every line break of the replacement (CR, LF or
        # CRLF, all JSON whitespace) starts a new data line; the client joins them with LF.
        # The new lines take the place and the line ending of the last data line, so every line
        # is followed either by a non-empty line, as before, or by exactly what followed it
        # before. Placed elsewhere, a line ending in a lone CR could come to precede a blank line
        # ending in LF, and the two would read as one CR LF ([parsing]), losing the blank line.
        result = bytearray(buf[start : start + bom])
        for line, content_end, line_end in _lines(buf, start + bom, blank):
            if line == last_data:
                ending = bytes(buf[content_end:line_end])
                for part in _TEXT_LINE_BREAK.split(new_data):
                    result += b"data: "
                    result += part.encode("utf-8")
                    result += ending
            elif _data_value(buf, line, content_end) is None:
                result += buf[line:line_end]
        result += buf[blank:end]
        return result


def _with_ids_rewritten(event: bytearray | bytes, bom: int, rewrite_id: Callable[[str], str]) -> bytearray:
    """``event`` (whole, its blank line included) with every id line's value rewritten."""
    buf = bytearray(event)
    result = bytearray(buf[:bom])
    for line, content_end, line_end in _lines(buf, bom, len(buf)):
        value = _field_value(buf, line, content_end, _ID) if line != content_end else None
        if value is None or value == content_end:
            result += buf[line:line_end]  # not an id line, or an empty id: a reset, kept
            continue
        if b"\x00" in buf[value:content_end]:
            continue  # [interpreting]: clients ignore an id holding NUL; so it goes
        upstream_id = buf[value:content_end].decode("utf-8", errors="replace")
        result += b"id: " + rewrite_id(upstream_id).encode("utf-8") + buf[content_end:line_end]
    return result


def _has_id_line(chunk: bytes | bytearray) -> bool:
    """Whether an ``id`` field line may start in ``chunk`` (cheap; may say yes for ``idle:``)."""
    return chunk.startswith(_ID) or _ID_LINE_STARTS[0] in chunk or _ID_LINE_STARTS[1] in chunk


def _lines(buf: bytearray, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
    """(content start, content end, line end) of each line of buf[start:stop], which ends a line."""
    while start < stop:
        match = _EOL.search(buf, start, stop)
        if match is None:  # pragma: no cover - the caller passes whole lines
            raise AssertionError("unterminated line")
        eol = match.start()
        end = eol + 2 if buf[eol] == _CR and eol + 1 < stop and buf[eol + 1] == _LF else eol + 1
        yield start, eol, end
        start = end


def _data_value(buf: bytearray, start: int, end: int) -> int | None:
    """Where the value of the line buf[start:end] starts if it is a data line, else None."""
    return _field_value(buf, start, end, _DATA)


def _field_value(buf: bytearray, start: int, end: int, field: bytes) -> int | None:
    """Where the value of the line buf[start:end] starts if it is a ``field`` line, else None."""
    # [interpreting]: a line that starts with ":" is a comment; otherwise the field name is
    # everything up to the first ":" (or the whole line) and is compared case-sensitively.
    if not buf.startswith(field, start, end):
        return None
    value = start + len(field)
    if value == end:
        return value  # "data" without a colon: the value is empty
    if buf[value] != _COLON:
        return None  # e.g. a field named "database"
    value += 1
    # [interpreting]: "If value starts with a U+0020 SPACE character, remove it from value".
    if value < end and buf[value] == _SPACE:
        value += 1
    return value
