"""Strict JSON: one document, one reading, whatever parser reads it next."""

from __future__ import annotations

import sys

import pytest

from gateway.strictjson import StrictJSONError, loads_strict

LARGEST_DOUBLE_AS_INT = str(int(sys.float_info.max))


@pytest.mark.parametrize(
    "text",
    [
        "1e400",
        "-1e400",
        "1E400",
        "1e+400",
        "1e0400",
        "0.5e310",
        "1" + "0" * 400 + ".0",
        "1" + "0" * 400,
        "-" + "1" + "0" * 400,
        str(int(LARGEST_DOUBLE_AS_INT) + 10**300),
        '{"exp": 1e400}',
        '{"a": [1, 2, {"b": -1e999}]}',
        "NaN",
        "-Infinity",
        '{"a": 1, "a": 2}',
    ],
    ids=lambda text: text[:24],
)
def test_numbers_no_double_holds_are_refused(text: str) -> None:
    """1e400 (infinity as a double), -1e400, a 400-digit integer, NaN/Infinity: refused, at any depth."""
    with pytest.raises(StrictJSONError):
        loads_strict(text)
    with pytest.raises(StrictJSONError):
        loads_strict(text.encode())


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e308", 1e308),
        ("-1.7976931348623157e308", -1.7976931348623157e308),
        ("1e-400", 0.0),  # underflows to zero in every double-based parser alike
        ("12345678901234567890", 12345678901234567890),
        (LARGEST_DOUBLE_AS_INT, int(LARGEST_DOUBLE_AS_INT)),
        ("-0", 0),
        ("[0.5, 2, -3]", [0.5, 2, -3]),
    ],
    ids=lambda item: str(item)[:24],
)
def test_numbers_a_double_holds_are_read_as_usual(text: str, value: object) -> None:
    """Finite numbers, ints up to the largest double and tiny floats parse unchanged in type and value."""
    parsed = loads_strict(text)
    assert parsed == value and type(parsed) is type(value)


def test_out_of_range_message_does_not_echo_the_input() -> None:
    """The error says what is wrong, not what was sent (the input may be a token's payload)."""
    with pytest.raises(StrictJSONError) as caught:
        loads_strict('{"secret-ish": 1e400}')
    assert str(caught.value) == "number out of range"


def test_any_bytes_like_input_is_utf_8_checked_like_bytes() -> None:
    """A bytearray or memoryview is read as bytes are: strict UTF-8, never the standard library's
    guess of UTF-16 or UTF-32 from the first bytes."""
    assert loads_strict(bytearray(b'{"a": 1}')) == {"a": 1}
    assert loads_strict(memoryview(b"[1, 2]")) == [1, 2]
    for utf16 in (bytearray('{"a": 1}'.encode("utf-16-le")), memoryview('{"a": 1}'.encode("utf-16"))):
        with pytest.raises(StrictJSONError):
            loads_strict(utf16)
