"""The Server-Sent Events relay: byte-exact pass-through, prompt emission, single-event rewriting,
events offered by marker, and events some readers would split differently."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mcp.sse import Marker, SseEventRewriter, SseEventTooLarge
from tests.support.sse import parse_sse_events

BOM = "\ufeff"
ENDINGS = ("\r\n", "\n", "\r")

Rewrite = Callable[[str], str | None]


# --- an independent reference parser (character by character, on decoded text) -------------------


def reference_lines(stream: bytes) -> tuple[list[list[str]], str]:
    """The lines of every blank-line-terminated event (BOM dropped), and the unterminated rest.

    Written from the WHATWG rules directly, sharing nothing with gateway.mcp.sse: decode as UTF-8,
    drop one leading BOM, then a line ends at CR LF, a lone CR or a lone LF; a blank line ends
    an event.
    """
    text = stream.decode("utf-8", errors="replace")
    if text.startswith(BOM):
        text = text[1:]
    events: list[list[str]] = []
    current: list[str] = []
    line = ""
    after_cr = False
    rest_start = 0
    for index, char in enumerate(text):
        if after_cr and char == "\n":
            after_cr = False
            if not current:
                rest_start = index + 1
            continue
        after_cr = False
        if char in "\r\n":
            after_cr = char == "\r"
            if line:
                current.append(line)
            else:
                events.append(current)
                current = []
                rest_start = index + 1
            line = ""
        else:
            line += char
    return events, text[rest_start:]


def field_of(line: str) -> tuple[str, str] | None:
    """(name, value) of a field line, None for a comment."""
    if line.startswith(":"):
        return None
    name, _, value = line.partition(":")
    return name, value.removeprefix(" ")


def data_of(lines: Iterable[str]) -> str | None:
    """The event's data as a client sees it; None when it has no data line."""
    values = [parsed[1] for parsed in map(field_of, lines) if parsed is not None and parsed[0] == "data"]
    return "\n".join(values) if values else None


def expected_lines(lines: list[str], rewrite: Rewrite) -> list[str]:
    """The lines a correct rewriter emits for an event: data lines replaced where the last one was."""
    data = data_of(lines)
    if data is None:
        return lines
    new_data = rewrite(data)
    if new_data is None:
        return lines
    is_data = [(parsed := field_of(line)) is not None and parsed[0] == "data" for line in lines]
    last = len(lines) - 1 - is_data[::-1].index(True)
    result: list[str] = []
    for index, line in enumerate(lines):
        if index == last:
            result.extend("data: " + part for part in new_data.split("\n"))
        elif not is_data[index]:
            result.append(line)
    return result


def seen_json(data: str) -> str | None:
    """A rewrite for tests: wraps valid JSON in {"seen": ...} over several lines, declines the rest."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return json.dumps({"seen": value}, ensure_ascii=False, indent=1)


def keep(data: str) -> str | None:
    """A rewrite that never rewrites."""
    return None


def relay(chunks: Iterable[bytes], rewrite: Rewrite = keep, **kwargs: Any) -> tuple[list[bytes], bytes]:
    """Run chunks through a fresh rewriter: the output of each feed, and the output of finish."""
    rewriter = SseEventRewriter(rewrite, **kwargs)
    outputs = [rewriter.feed(chunk) for chunk in chunks]
    return outputs, rewriter.finish()


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """data cut at the given offsets."""
    bounds = [0, *sorted({cut for cut in cuts if 0 < cut < len(data)}), len(data)]
    return [data[start:end] for start, end in pairwise(bounds)]


# --- generated streams ----------------------------------------------------------------------------

value_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12)
field_name = st.text(st.characters(categories=["L"]), min_size=1, max_size=6).filter(lambda n: n != "data")
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | value_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(value_text, inner, max_size=3),
    max_leaves=6,
)

other_line = st.one_of(
    value_text.map(lambda v: ":" + v),  # comment
    st.builds(lambda sep, v: "id" + sep + v, st.sampled_from([": ", ":"]), value_text),
    value_text.map(lambda v: "event: " + v),
    st.integers(0, 99999).map(lambda n: f"retry: {n}"),
    st.builds(lambda name, v: name + ": " + v, field_name, value_text),
    field_name,  # a field without a colon
)
data_line = st.one_of(
    value_text.map(lambda v: "data: " + v),
    value_text.map(lambda v: "data:" + v),
    st.just("data"),
)


@st.composite
def json_data_lines(draw: st.DrawFn) -> list[str]:
    """A JSON object as one or more data lines, sometimes indented, sometimes non-ASCII."""
    document = json.dumps(
        draw(st.dictionaries(value_text, json_value, max_size=3)),
        ensure_ascii=draw(st.booleans()),
        indent=draw(st.sampled_from([None, 1])),
    )
    lead = draw(st.sampled_from(["data: ", "data:", "data:  "]))
    return [lead + part for part in document.split("\n")]


@st.composite
def event_lines(draw: st.DrawFn) -> list[str]:
    """The lines of one event: fields, comments, and plain or JSON data in any order."""
    lines = draw(st.lists(st.one_of(other_line, data_line), max_size=5))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(lines)))
        lines[at:at] = draw(json_data_lines())
    return lines


@dataclass
class Stream:
    """A generated stream, its events' lines and where each event can be said to be complete."""

    raw: bytes
    events: list[list[str]]
    tail: bytes
    # Offsets at which the input ends exactly after some event (for CR LF, also between CR and LF).
    boundaries: list[int] = field(default_factory=list)


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    """Events with random line endings, an optional BOM and an optional unterminated tail."""
    events = draw(st.lists(event_lines(), max_size=6))
    tail_lines = draw(st.lists(st.one_of(other_line, data_line), max_size=3))
    partial = draw(st.one_of(st.just(""), other_line, data_line))
    out = bytearray(BOM.encode() if draw(st.booleans()) else b"")
    previous = ""
    boundaries = [0]

    def put(line: str, ending: str) -> None:
        nonlocal previous
        if not line and previous == "\r" and ending == "\n":
            ending = "\r\n"  # otherwise CR, LF would be one line ending, not two
        out.extend((line + ending).encode())
        previous = ending

    for lines in events:
        for line in lines:
            put(line, draw(st.sampled_from(ENDINGS)))
        put("", draw(st.sampled_from(ENDINGS)))
        if previous == "\r\n":
            boundaries.append(len(out) - 1)
        boundaries.append(len(out))
    tail_start = len(out)
    for line in tail_lines:
        put(line, draw(st.sampled_from(ENDINGS)))
    out.extend(partial.encode())
    return Stream(bytes(out), events, bytes(out[tail_start:]), boundaries)


def cut_points(data: st.DataObject, size: int) -> list[int]:
    """Random cuts, sometimes dense (down to one byte per chunk)."""
    return data.draw(st.lists(st.integers(0, size), max_size=max(1, size // 2)))


# --- (1) pass-through is byte-exact and prompt ----------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(stream=streams(), data=st.data())
def test_any_chunking_passes_the_input_through_unchanged(stream: Stream, data: st.DataObject) -> None:
    """Declining every event, output == input at any cuts, and each event leaves as soon as it ends
    (with markers, but for an unterminated tail holding one)."""
    calls: list[str] = []

    def record(text: str) -> str | None:
        calls.append(text)
        return None

    chunks = split_at(stream.raw, cut_points(data, len(stream.raw)))
    markers = data.draw(st.sampled_from([None, (b"a",), (b"x", b"\\u"), (b"x", (b"a", b"b"))]))
    rewriter = SseEventRewriter(record, markers=markers)
    sent = bytearray()
    received = 0
    for chunk in chunks:
        sent += rewriter.feed(chunk)
        received += len(chunk)
        complete = max(b for b in stream.boundaries if b <= received)
        assert bytes(sent) == stream.raw[:complete]
    sent += rewriter.finish()
    dropped = markers is not None and any(holds(stream.tail.decode(), marker) for marker in markers)
    assert bytes(sent) == (stream.raw[: max(stream.boundaries)] if dropped else stream.raw)
    offered = [
        data_of(lines)
        for lines in stream.events
        if markers is None or any(holds("\n".join(lines), marker) for marker in markers)
    ]
    assert calls == [text for text in offered if text is not None]


def holds(text: str, marker: Marker) -> bool:
    """The test's own reading of a marker: a byte string occurs, or every one of a tuple does."""
    parts = (marker,) if isinstance(marker, bytes) else marker
    return all(part.decode() in text for part in parts)


# --- (2) rewriting replaces the data and nothing else ---------------------------------------------


@settings(max_examples=300, deadline=None)
@given(stream=streams(), data=st.data())
def test_rewritten_stream_has_the_same_events_with_new_data(stream: Stream, data: st.DataObject) -> None:
    """Rewriting JSON events at any cuts: same events, other lines intact and in order, data replaced."""
    outputs, rest = relay(split_at(stream.raw, cut_points(data, len(stream.raw))), seen_json)
    sent = b"".join(outputs) + rest
    assert sent.startswith(BOM.encode()) == stream.raw.startswith(BOM.encode())
    assert sent.endswith(stream.tail)
    events, unterminated = reference_lines(sent[: len(sent) - len(stream.tail)])
    assert unterminated == ""
    assert events == [expected_lines(lines, seen_json) for lines in stream.events]


# --- exact layout of a rewritten event -------------------------------------------------------------


def _event(ending: str) -> bytes:
    return ending.join(
        ["event: message", "id: 7", ": note", "data: {", "retry: 10", "data:}", "x-unknown: 1", "", ""]
    ).encode()


@pytest.mark.parametrize("ending", ENDINGS)
def test_rewritten_event_keeps_other_lines_and_line_ending_style(ending: str) -> None:
    """New data lines go where the last data line was, with a single space and the event's ending."""
    outputs, rest = relay([_event(ending)], lambda data: '{\n "x": "é"\n}')
    expected = ending.join(
        ["event: message", "id: 7", ": note", "retry: 10", "data: {", 'data:  "x": "é"', "data: }"]
    ) + ending.join(["", "x-unknown: 1", "", ""])
    assert outputs == [expected.encode()]
    assert rest == b""


@pytest.mark.parametrize(
    ("raw", "new_data", "expected"),
    [
        # Mixed endings: the data lines take the last data line's ending, others keep theirs.
        (b"data: {\rdata: }\r\nid: 1\r\r", "a\nb\nc", b"data: a\r\ndata: b\r\ndata: c\r\nid: 1\r\r"),
        # ... so a CR never meets the LF of the blank line (CR LF would be one line ending).
        (b"data: {\rdata: }\r\n\n", "a\nb", b"data: a\r\ndata: b\r\n\n"),
        (b"data: {\ndata: }\r\r", "a\nb", b"data: a\rdata: b\r\r"),
        # A comment ended by a lone CR between data lines stays before the new data, not before LF.
        (b"data\r\n:\rdata: {}\r\n\n", "a\nb", b":\rdata: a\r\ndata: b\r\n\n"),
        (b"id: 1\r\ndata: {}\n\r\n", "{1}", b"id: 1\r\ndata: {1}\n\r\n"),
        (b"data: {}\r\nid: 1\n\n", "a\nb", b"data: a\r\ndata: b\r\nid: 1\n\n"),
        # CR and CR LF in the replacement are line breaks too: SSE data cannot hold a CR.
        (b"data: {}\n\n", "a\r\nb\rc", b"data: a\ndata: b\ndata: c\n\n"),
        # U+2028 and friends are not SSE line breaks.
        (b"data: {}\n\n", "a\u2028b\x0bc", "data: a\u2028b\x0bc\n\n".encode()),
        # Empty replacement: one empty data line, so the client still gets an event with data "".
        (b"data: {}\n\n", "", b"data: \n\n"),
        # The BOM opening the stream stays in front of the first event.
        (b"\xef\xbb\xbfdata: {}\n\n", "[]", b"\xef\xbb\xbfdata: []\n\n"),
        (b"\xef\xbb\xbfid: 1\ndata: {}\n\n", "[]", b"\xef\xbb\xbfid: 1\ndata: []\n\n"),
    ],
)
def test_rewritten_event_layout(raw: bytes, new_data: str, expected: bytes) -> None:
    """Table: the exact bytes of a rewritten event."""
    assert b"".join(relay([raw], lambda _: new_data)[0]) == expected


@pytest.mark.parametrize(
    ("raw", "data"),
    [
        (b"data: {}\n\n", "{}"),
        (b"data:   {}\n\n", "  {}"),
        (b"data:\t{}\n\n", "\t{}"),
        (b"data:\ndata: {\ndata: }\n\n", "\n{\n}"),
        (b"data: {\xff}\n\n", "{\ufffd}"),  # invalid UTF-8 decodes to U+FFFD, as a browser does
        (b"\xef\xbb\xbfdata:{}\n\n", "{}"),
        (b"data: [1]\n\n", "[1]"),  # a batch: not only objects are offered
        (b"data: x{\n\n", "x{"),
        (b"data\n\n", ""),
        (b"data:\n\n", ""),
        (b"data: \xc2\xa0{}\n\n", "\xa0{}"),
        (b"Data: {}\n\n", None),  # field names are case-sensitive
        (b"database: {}\n\n", None),
        (b"event: {}\nid: {}\n: {}\n\n", None),
        (b"\n", None),
    ],
)
def test_rewrite_is_called_for_every_event_with_data(raw: bytes, data: str | None) -> None:
    """Table: without markers rewrite sees the joined data of every event that has a data line, once."""
    calls: list[str] = []
    outputs, _ = relay([raw], lambda text: calls.append(text))
    assert calls == ([] if data is None else [data])
    assert b"".join(outputs) == raw


# --- (3) no delay ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("rewrite", [keep, seen_json], ids=["keep", "rewrite"])
def test_event_is_emitted_as_soon_as_its_blank_line_arrives(ending: str, rewrite: Rewrite) -> None:
    """Event 1 plus half of event 2: the output is exactly event 1, without waiting for more."""
    first = f'id: 1{ending}data: {{"a": 1}}{ending}{ending}'.encode()
    second = f'event: message{ending}data: {{"b": 2}}{ending}{ending}'.encode()
    rewriter = SseEventRewriter(rewrite)
    expected_first = "".join(line + ending for line in expected_lines(["id: 1", 'data: {"a": 1}'], rewrite))
    assert rewriter.feed(first + second[: len(second) // 2]) == (expected_first + ending).encode()
    assert rewriter.feed(b"") == b""


def test_event_ending_in_a_bare_cr_is_emitted_before_the_next_byte() -> None:
    """A CR always ends a line: the event leaves at once, and a following LF is sent on its own."""
    rewriter = SseEventRewriter(seen_json)
    assert rewriter.feed(b"data: {}\r\n\r") == b'data: {\r\ndata:  "seen": {}\r\ndata: }\r\n\r'
    assert rewriter.feed(b"\n") == b"\n"
    assert rewriter.feed(b"\r") == b"\r"  # a blank line of its own: an empty event
    assert rewriter.feed(b"\rdata: x\r\r") == b"\rdata: x\r\r"
    assert rewriter.finish() == b""


# --- (4) CR / LF across chunk boundaries ------------------------------------------------------------


@pytest.mark.parametrize("ending", ENDINGS)
def test_line_endings_split_anywhere(ending: str) -> None:
    """Every two-chunk split of a stream gives the same output as feeding it whole."""
    raw = ending.join(["id: 1", "data: {}", "", ": c", "data: {", "data: }", "", "data: plain", "", ""])
    raw_bytes = raw.encode()
    whole, _ = relay([raw_bytes], seen_json)
    for cut in range(1, len(raw_bytes)):
        outputs, rest = relay([raw_bytes[:cut], raw_bytes[cut:]], seen_json)
        assert b"".join(outputs) + rest == b"".join(whole), cut


@pytest.mark.parametrize(
    ("chunks", "outputs"),
    [
        # CR | LF inside a data line: the rewriter waits to see whether the CR is a CR LF.
        ([b"data: {}\r", b"\n\r\n"], [b"", b"data: [1]\r\n\r\n"]),
        # CR | CR: two line endings, the second ends the event.
        ([b"data: {}\r", b"\r"], [b"", b"data: [1]\r\r"]),
        # Blank line CR | LF: the event leaves with the CR, the LF follows on its own.
        ([b"data: {}\r\n\r", b"\n"], [b"data: [1]\r\n\r", b"\n"]),
        ([b"data: {}\r\n\r", b"\ndata: {}\r\n\r\n"], [b"data: [1]\r\n\r", b"\ndata: [1]\r\n\r\n"]),
        # One byte at a time.
        (
            [b"d", b"a", b"t", b"a", b":", b"{", b"}", b"\r", b"\n", b"\r", b"\n"],
            [b""] * 9 + [b"data: [1]\r\n\r", b"\n"],
        ),
        # CR | CR | LF: after the event, one more blank line (an empty event) ended by CR LF.
        ([b"data: {}\r\r", b"\r", b"\n"], [b"data: [1]\r\r", b"\r", b"\n"]),
        # An LF that does not follow a CR is a blank line of its own, another empty event.
        ([b"data: {}\n\n", b"\n"], [b"data: [1]\n\n", b"\n"]),
        ([b"data: {}\r\r", b"\n"], [b"data: [1]\r\r", b"\n"]),
    ],
)
def test_cr_lf_across_chunks(chunks: list[bytes], outputs: list[bytes]) -> None:
    """Table: output of each feed when a CR and what follows arrive separately."""
    assert relay(chunks, lambda _: "[1]") == (outputs, b"")


# --- (5) multi-byte UTF-8 across chunk boundaries ---------------------------------------------------


def test_multibyte_utf8_split_anywhere() -> None:
    """Cutting inside a 2-, 3- or 4-byte character changes neither the data seen nor the output."""
    text = '{"name": "é€😀"}'
    raw = f"event: ü€😀\ndata: {text}\n: 😀\n\n".encode()
    for cut in range(1, len(raw)):
        calls: list[str] = []

        def upper(data: str, calls: list[str] = calls) -> str:
            calls.append(data)
            return data.upper()

        outputs, rest = relay([raw[:cut], raw[cut:]], upper)
        assert calls == [text], cut
        assert b"".join(outputs) + rest == f"event: ü€😀\ndata: {text.upper()}\n: 😀\n\n".encode(), cut


def test_multibyte_utf8_byte_by_byte_pass_through() -> None:
    """Non-ASCII events fed one byte at a time come out unchanged."""
    raw = 'data: 😀 naïve\r\nid: ü\r\n\r\ndata: {"k": "€"}\r\r'.encode()
    outputs, rest = relay([raw[i : i + 1] for i in range(len(raw))])
    assert b"".join(outputs) == raw
    assert rest == b""


# --- (6) oversized events ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "limit"),
    [
        ([b"data: " + b"x" * 100 + b"\n\n"], 64),  # complete, in one chunk
        ([b"data: ok\n\n" + b"data: " + b"x" * 100 + b"\n\n"], 64),  # after a good event
        ([b"data: " + b"x" * 100], 64),  # incomplete, in one chunk
        ([b"data: x\n"] * 20, 64),  # incomplete, many lines
        ([b"x"] * 65, 64),  # a line that never ends
        ([b"data: " + b"x" * 57 + b"\n", b"\n"], 64),  # 65 bytes, the limit is passed by the blank line
    ],
)
def test_oversized_event_raises(chunks: list[bytes], limit: int) -> None:
    """Table: an event longer than max_event_bytes raises SseEventTooLarge; the rewriter is then closed."""
    rewriter = SseEventRewriter(keep, max_event_bytes=limit)
    with pytest.raises(SseEventTooLarge) as caught:
        for chunk in chunks:
            assert len(rewriter._buf) <= limit
            rewriter.feed(chunk)
    assert caught.value.max_event_bytes == limit
    with pytest.raises(RuntimeError):
        rewriter.feed(b"\n\n")


def test_limit_is_per_event() -> None:
    """An event of exactly max_event_bytes passes, and so do many events adding up to more."""
    event = b"data: " + b"x" * 56 + b"\n\n"
    assert len(event) == 64
    outputs, rest = relay([event] * 10 + [event[:30], event[30:]], max_event_bytes=64)
    assert b"".join(outputs) == event * 11
    assert rest == b""


def test_memory_follows_the_event_size_not_its_line_count() -> None:
    """A 280 kB event of 60 000 tiny lines is held as its bytes, not as per-line records."""
    event = b'data: {"a":\n' + b"data: 1\n" * 20_000 + b"x\n" * 20_000 + b": c\n" * 20_000 + b"data: 1}\n\n"
    rewriter = SseEventRewriter(lambda data: "{}")
    tracemalloc.start()
    try:
        out = bytearray()
        for start in range(0, len(event), 65536):
            out += rewriter.feed(event[start : start + 65536])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out == b"x\n" * 20_000 + b": c\n" * 20_000 + b"data: {}\n\n"
    assert peak < 8 * len(event)


def test_exception_from_rewrite_propagates_and_closes() -> None:
    """A failing rewrite callback aborts the relay; the rewriter accepts nothing more."""

    def fail(data: str) -> str:
        raise KeyError(data)

    rewriter = SseEventRewriter(fail)
    assert rewriter.feed(b"id: 1\n\n") == b"id: 1\n\n"
    with pytest.raises(KeyError):
        rewriter.feed(b"data: {}\n\n")
    with pytest.raises(RuntimeError):
        rewriter.feed(b"data: [1]\n\n")


def test_max_event_bytes_must_be_positive() -> None:
    """A zero limit is a configuration error."""
    with pytest.raises(ValueError, match="positive"):
        SseEventRewriter(keep, max_event_bytes=0)


# --- (7) end of stream ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [
        b'data: {"a": 1}',
        b'data: {"a": 1}\n',
        b'data: {"a": 1}\r',
        b'data: {"a": 1}\r\n',
        b"id: 1\r\nretry: 5",
        b"\xef\xbb\xbfdata: {}",
        b"data: \xe2\x82",  # ends inside a character
    ],
)
def test_finish_returns_the_incomplete_tail_unchanged(tail: bytes) -> None:
    """Table: an unterminated last event is passed through as is, and is never rewritten."""
    calls: list[str] = []

    def record(data: str) -> str:
        calls.append(data)
        return "[]"

    rewriter = SseEventRewriter(record)
    assert rewriter.feed(b'data: {"x": 0}\n\n') == b"data: []\n\n"
    assert rewriter.feed(tail) == b""
    assert rewriter.finish() == tail
    assert calls == ['{"x": 0}']


def test_finish_after_complete_events_and_closing() -> None:
    """finish() returns nothing after whole events; afterwards the rewriter refuses more input."""
    rewriter = SseEventRewriter(keep)
    assert rewriter.feed(b"data: a\r\n\r") == b"data: a\r\n\r"
    assert rewriter.finish() == b""
    with pytest.raises(RuntimeError):
        rewriter.feed(b"\n")
    with pytest.raises(RuntimeError):
        rewriter.finish()


# --- (8) MCP priming events and retry ------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        b"id: 0\ndata:\n\n",  # MCP 2025-11-25: an event ID and an empty data field, before the response
        b"id: 0\r\ndata: \r\n\r\n",
        b"id: 1\rretry: 1000\rdata:\r\r",
        b"retry: 3000\n\n",
        b"id: abc\n\n",
        b": keep-alive\n\n",
        b"event: endpoint\ndata: /messages?session=1\n\n",
    ],
)
def test_priming_and_retry_events_pass_unchanged(event: bytes) -> None:
    """Table: priming, retry-only and other events without a marker pass unchanged around a rewritten one."""
    calls: list[str] = []

    def record(data: str) -> str:
        calls.append(data)
        return '{"result": {"tools": []}}'

    stream = event + b'id: 2\ndata: {"result": {"tools": [1]}}\n\n' + event
    outputs, rest = relay([stream], record, markers=(b'"tools"',))
    assert outputs == [event + b'id: 2\ndata: {"result": {"tools": []}}\n\n' + event]
    assert calls == ['{"result": {"tools": [1]}}']
    assert rest == b""


# --- a long stream in small chunks ----------------------------------------------------------------------


def test_five_megabyte_stream_in_seven_byte_chunks() -> None:
    """About 5 MB, including one 1 MB event, fed 7 bytes at a time: output == input, rewrites counted."""
    sample = (
        b"id: 0\ndata:\n\n"
        b": ping\r\n\r\n"
        b'event: message\r\nid: 1\r\ndata: {"jsonrpc": "2.0", "method": "notifications/progress"}\r\n\r\n'
        + "data: naïve 😀 text\rretry: 10\r\r".encode()
    )
    big = b'data: {"blob": "' + b"x" * (1 << 20) + b'"}\n\n'
    copies = (4 << 20) // len(sample)
    stream = sample * (copies // 2) + big + sample * (copies - copies // 2)
    calls = 0

    def count(data: str) -> None:
        nonlocal calls
        calls += 1

    rewriter = SseEventRewriter(count)
    out = bytearray()
    for start in range(0, len(stream), 7):
        out += rewriter.feed(stream[start : start + 7])
    out += rewriter.finish()
    assert len(stream) > 5_000_000
    assert out == stream
    assert calls == 3 * copies + 1  # every event with a data line, the empty ones of priming included


# --- parse_sse_events ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "events"),
    [
        (b"data: a\ndata: b\n\n", [{"data": "a\nb"}]),
        (b"\xef\xbb\xbfid: 1\r\nevent: e\r\n: c\r\ndata:x\r\n\r\n", [{"id": "1", "event": "e", "data": "x"}]),
        (b"id: 0\rdata:\r\rretry: 5\r\r", [{"id": "0", "data": ""}, {"retry": "5"}]),
        (b": only a comment\n\n\n", []),
        (b"data: unterminated\n", []),
        (b"field\n\n", [{"field": ""}]),
    ],
)
def test_parse_sse_events(raw: bytes, events: list[dict[str, str]]) -> None:
    """Table: the test helper's view of a stream."""
    assert parse_sse_events(raw) == events


def test_reference_parser_agrees_with_parse_sse_events() -> None:
    """The test's own parser and the module's helper read a mixed stream the same way."""
    raw = b"\xef\xbb\xbfid: 1\r\n: c\rdata: a\ndata: b\r\n\r\nevent: x\r\r"
    events, rest = reference_lines(raw)
    assert events == [["id: 1", ": c", "data: a", "data: b"], ["event: x"]]
    assert rest == ""
    assert [data_of(lines) for lines in events] == [e.get("data") for e in parse_sse_events(raw)]


# --- (9) markers: which events are offered ----------------------------------------------------------

TOOLS_MARKERS = (b'"tools"', b"\\u")


@pytest.mark.parametrize(
    ("raw", "offered"),
    [
        (b'data: {"tools": []}\n\n', True),
        (b'data: {"\\u0074ools": []}\n\n', True),  # an escape may spell the key
        (b'data: ["tools"]\n\n', True),
        (b'event: "tools"\ndata: {}\n\n', True),  # a marker in any line of the event
        (b'data: {"content": []}\n\n', False),
        (b'data: {"tool": []}\n\n', False),
        (b'data: {"tools"\r\n\r\n', True),
        (b': "tools"\n\n', False),  # no data line: nothing to offer
        (b'\xef\xbb\xbfdata: {"tools": 1}\n\n', True),
    ],
)
def test_markers_decide_which_events_are_offered(raw: bytes, offered: bool) -> None:
    """Table: with markers, only events whose bytes hold one (and that have data) reach rewrite."""
    calls: list[str] = []
    outputs, _ = relay([raw], lambda text: calls.append(text), markers=TOOLS_MARKERS)
    assert len(calls) == int(offered)
    assert b"".join(outputs) == raw


@pytest.mark.parametrize(
    "chunk",
    [
        b'data: {"a": 1}\n\n',
        b'event: message\r\nid: 1\r\ndata: {"a": 1}\r\n\r\n',
        b"data: 1\r\rdata: 2\n\r\n",
        b"id: 1\n\ndata: 2\n\n",
    ],
)
def test_chunk_of_whole_events_without_a_marker_is_passed_as_it_is(chunk: bytes) -> None:
    """A chunk of whole events none of which holds a marker is emitted at once, the same object."""
    rewriter = SseEventRewriter(seen_json, markers=TOOLS_MARKERS)
    assert rewriter.feed(chunk) is chunk
    # The stream goes on at an event boundary: the next event is still rewritten.
    rewritten = b'data: {\ndata:  "seen": {\ndata:   "tools": 1\ndata:  }\ndata: }\n\n'
    assert rewriter.feed(b'data: {"tools": 1}\n\n') == rewritten


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        # A chunk that ends in one CR LF ends a line, not an event: the event waits for its end.
        ([b"data: 1\r\n", b'data: "tools"\r\n\r\n'], [b"", b"data: [1]\r\n\r\n"]),
        # A chunk that ends in CR: perhaps CR LF; the event is emitted, the LF follows on its own.
        ([b"data: 1\r\r", b'\ndata: "tools"\n\n'], [b"data: 1\r\r", b"\ndata: [1]\n\n"]),
        # A marker split across two chunks is still found.
        ([b'data: {"to', b'ols": 1}\n\n'], [b"", b"data: [1]\n\n"]),
    ],
)
def test_chunks_that_do_not_end_an_event_go_through_the_framing(
    chunks: list[bytes], expected: list[bytes]
) -> None:
    """Table: the whole-chunk shortcut never hides an event that holds a marker."""
    outputs, rest = relay(chunks, lambda data: "[1]" if "tools" in data else None, markers=TOOLS_MARKERS)
    assert (outputs, rest) == (expected, b"")


def test_an_empty_marker_is_refused() -> None:
    """An empty marker would be in every event: markers=None says that (an empty tuple of parts,
    or one with an empty part, too)."""
    refused: list[tuple[Marker, ...]] = [(b'"tools"', b""), (b'"tools"', ()), ((b'"isError"', b""),)]
    for markers in refused:
        with pytest.raises(ValueError, match="markers=None"):
            SseEventRewriter(keep, markers=markers)


def test_a_marker_that_is_not_a_tuple_is_one_byte_string() -> None:
    """A bytearray marker is a substring like a bytes one (not a tuple of single bytes); a tuple
    holding anything but non-empty byte strings is refused up front, not at the first event."""
    calls: list[str] = []
    relay([b'data: {"t": 1}\n\n'], lambda text: calls.append(text), markers=(bytearray(b'"tools"'),))
    assert calls == []
    for markers in [((b'"a"', (b"b",)),), ((b'"a"', "b"),)]:
        with pytest.raises(ValueError, match="markers=None"):
            SseEventRewriter(keep, markers=markers)  # type: ignore[arg-type]


IS_ERROR_MARKERS = (b'"error"', (b'"isError"', b"true"))


@pytest.mark.parametrize(
    ("chunks", "offered"),
    [
        ([b'data: {"result": {"isError": true}}\n\n'], True),
        ([b'data: {"result": {"isError": false}}\n\n'], False),  # one part only: passed whole
        ([b'data: {"result": {"isError"\ndata: :\ndata: true}}\n\n'], True),  # split over data lines
        ([b'data: {"result": {"isEr', b'ror": tr', b"ue}}\n\n"], True),  # parts cut across chunks
        ([b'data: {"result": {"isError": false, "text": "true"}}\n\n'], True),  # a false alarm, parsed
        ([b'data: {"result": {"content": [true]}}\n\n'], False),
        ([b'data: {"error": {"code": 1}}\n\n'], True),
    ],
)
def test_a_marker_of_several_parts_offers_events_that_hold_them_all(
    chunks: list[bytes], offered: bool
) -> None:
    """Table: a tuple marker occurs when each of its parts occurs anywhere in the event, whatever
    the chunks and the data lines; an event holding only some of them is relayed unparsed."""
    calls: list[str] = []
    outputs, rest = relay(chunks, lambda text: calls.append(text), markers=IS_ERROR_MARKERS)
    assert len(calls) == int(offered)
    assert b"".join(outputs) + rest == b"".join(chunks)


def test_an_unterminated_tail_holding_every_part_of_a_marker_is_dropped() -> None:
    """finish() reads tuple markers as the events do: all parts, the tail is dropped; some, kept."""
    rewriter = SseEventRewriter(keep, markers=IS_ERROR_MARKERS)
    assert rewriter.feed(b'data: {"isError": true}') == b""
    assert rewriter.finish() == b""
    rewriter = SseEventRewriter(keep, markers=IS_ERROR_MARKERS)
    assert rewriter.feed(b'data: {"isError": false}') == b""
    assert rewriter.finish() == b'data: {"isError": false}'


# --- (10) events an SSE reader splitting at U+2028 and friends would read differently ---------------

AMBIGUOUS = '{"error": "unreadable"}'


@pytest.mark.parametrize(
    "raw",
    [
        'id: 1\u2028data: {"tools": [1]}\n\n'.encode(),  # no data line here: an old reader sees one
        'id: 1\u2028data: {"tools": [1]}\ndata:\n\n'.encode(),
        ': c\u2029data: {"tools": [1]}\n\n'.encode(),
        b'x\x0bdata: {"tools": [1]}\n\n',
        b'event: m\x1e\x1edata: {"tools": [1]}\n\n',
        'id: 1\u0085data: {"tools": [1]}\r\n\r\n'.encode(),
    ],
)
def test_event_with_a_line_break_only_some_readers_see_is_replaced(raw: bytes) -> None:
    """Table: outside data lines, such a character in an offered event replaces the whole event."""
    calls: list[str] = []
    outputs, rest = relay([raw], lambda text: calls.append(text), markers=TOOLS_MARKERS, ambiguous=AMBIGUOUS)
    assert outputs == [b'data: {"error": "unreadable"}\n\n']
    assert calls == [] and rest == b""


def test_ambiguous_replacement_keeps_the_stream_bom_and_later_events() -> None:
    """The BOM before the first event stays; the events around the replaced one are untouched."""
    raw = '\ufeffid: 1\u2028data: {"tools": 1}\n\ndata: {"a": 1}\n\n'.encode()
    outputs, _ = relay([raw], keep, markers=TOOLS_MARKERS, ambiguous=AMBIGUOUS)
    assert b"".join(outputs) == b'\xef\xbb\xbfdata: {"error": "unreadable"}\n\ndata: {"a": 1}\n\n'


@pytest.mark.parametrize(
    ("raw", "ambiguous"),
    [
        ('id: 1\u2028x\ndata: {"content": 1}\n\n'.encode(), AMBIGUOUS),  # no marker: not offered
        ('data: {"tools": ["a\u2028b"]}\n\n'.encode(), AMBIGUOUS),  # inside data: the callback's
        ('id: 1\u2028data: {"tools": [1]}\n\n'.encode(), None),  # the check is asked for
    ],
)
def test_ambiguous_characters_elsewhere_leave_the_event_alone(raw: bytes, ambiguous: str | None) -> None:
    """Table: no marker, a data line, or no ``ambiguous`` given: the event is not replaced."""
    outputs, _ = relay([raw], keep, markers=TOOLS_MARKERS, ambiguous=ambiguous)
    assert b"".join(outputs) == raw


@pytest.mark.parametrize(
    ("tail", "kept"),
    [
        (b'data: {"tools": [1]}\r', False),  # httpx2 dispatches this at the end of the stream
        (b'data: {"tools": [1]}', False),
        (b'id: 1\n: "tools"', False),
        (b'data: {"content": [1]}\r', True),
        (b"id: 1\r\nretry: 5", True),
    ],
)
def test_unterminated_tail_with_a_marker_is_dropped(tail: bytes, kept: bool) -> None:
    """Table: with markers, an unterminated last event that holds one never leaves; others do."""
    rewriter = SseEventRewriter(keep, markers=TOOLS_MARKERS)
    assert rewriter.feed(b"data: 1\n\n" + tail) == b"data: 1\n\n"
    assert rewriter.finish() == (tail if kept else b"")
