"""Reading a complete SSE stream in tests (the gateway itself rewrites streams incrementally)."""

from __future__ import annotations

import re
from typing import Final

# WHATWG HTML "Parsing an event stream": a line ends at CRLF, LF or CR.
TEXT_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")


def parse_sse_events(data: bytes) -> list[dict[str, str]]:
    """Split a complete stream into events, each a dict of field name to value.

    A small reading aid for tests and logs, not an EventSource: ``data`` holds the data lines'
    values joined with "\\n"; for any other field the last value wins. Comments are skipped, blocks
    without any field are dropped, and so is an unterminated last block (as at end of stream in
    WHATWG HTML "Interpreting an event stream"). Unlike a browser it also returns events that have no data.
    """
    text = data.decode("utf-8", errors="replace")
    text = text.removeprefix("\ufeff")
    events: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    data_values: list[str] = []
    # The last element of the split is what follows the last line terminator: an unfinished line.
    for line in TEXT_LINE_BREAK.split(text)[:-1]:
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
