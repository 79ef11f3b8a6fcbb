"""CEL source text to tokens, decoding number, string and bytes literals.

Follows the lexical grammar of cel-spec doc/langdef.md ("Syntax", "String and Bytes Literals").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from typing import Literal as TypingLiteral

__all__ = ["INT_MAX", "UINT_MAX", "CelSyntaxError", "LiteralValue", "Token", "TokenKind", "tokenize"]

LiteralValue = bool | int | float | str | bytes | None
INT_MAX: Final = 2**63 - 1
UINT_MAX: Final = 2**64 - 1


class CelSyntaxError(ValueError):
    """The source is not a CEL expression this gateway accepts; `offset` is 0-based."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


TokenKind = TypingLiteral["int", "uint", "double", "string", "bytes", "ident", "punct", "eof"]


@dataclass(frozen=True, slots=True)
class Token:
    """One lexical token; `value` holds the decoded literal for numbers, strings and bytes."""

    kind: TokenKind
    text: str
    offset: int
    value: LiteralValue = None


_SPACE = re.compile(r"(?:[ \t\n\r\f]+|//[^\n]*)+")
_IDENT = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")
_HEX = re.compile(r"0x([0-9a-fA-F]+)([uU]?)")
_NUMBER = re.compile(r"(?:[0-9]+(\.[0-9]+)?|\.[0-9]+)([eE][+-]?[0-9]+)?([uU]?)")
_STRING_START = re.compile(r"([bB]?)([rR]?)('''|\"\"\"|'|\")")
# Two-character operators first, so that `<=` is not read as `<` then `=`.
_PUNCT: Final = (
    *("==", "!=", "<=", ">=", "&&", "||"),
    *("<", ">", "+", "-", "*", "/", "%", "!", "?", ":", ".", ",", "[", "]", "{", "}", "(", ")"),
)
_SIMPLE_ESCAPES: Final = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    "\\": "\\", "'": "'", '"': '"', "`": "`", "?": "?",
}  # fmt: skip
_ESCAPE = re.compile(
    r"\\(?:([abfnrtv\\'\"`?])|[xX]([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|([0-3][0-7]{2}))"
)


def tokenize(source: str) -> list[Token]:
    """Split `source` into tokens, ending with an `eof` token."""
    try:
        source.encode()
    except UnicodeEncodeError as error:
        raise CelSyntaxError("the source is not valid unicode text", error.start) from None
    tokens: list[Token] = []
    pos = 0
    while True:
        space = _SPACE.match(source, pos)
        if space:
            pos = space.end()
        if pos >= len(source):
            tokens.append(Token("eof", "", pos))
            return tokens
        token = _next_token(source, pos)
        tokens.append(token)
        pos += len(token.text)


def _next_token(source: str, pos: int) -> Token:
    char = source[pos]
    string = _STRING_START.match(source, pos)
    if string:
        return _string_token(source, pos, string)
    if char.isascii() and (char.isdigit() or (char == "." and source[pos + 1 : pos + 2].isdigit())):
        return _number_token(source, pos)
    ident = _IDENT.match(source, pos)
    if ident:
        return Token("ident", ident.group(), pos)
    for punct in _PUNCT:
        if source.startswith(punct, pos):
            return Token("punct", punct, pos)
    raise CelSyntaxError(f"unexpected character {char!r}", pos)


def _number_token(source: str, pos: int) -> Token:
    hex_match = _HEX.match(source, pos)
    if hex_match:
        value = int(hex_match.group(1), 16)
        kind: TokenKind = "uint" if hex_match.group(2) else "int"
        return _checked_int(kind, hex_match.group(), pos, value)
    match = _NUMBER.match(source, pos)
    if match is None:  # pragma: no cover - the caller saw a digit, or a dot and a digit
        raise CelSyntaxError("expected a number", pos)
    text = match.group()
    fraction, exponent, unsigned = match.groups()
    if fraction or exponent or text.startswith("."):
        if unsigned:
            raise CelSyntaxError(f"{text!r}: a double cannot have the u suffix", pos)
        number = float(text)
        if number in (float("inf"), float("-inf")):
            raise CelSyntaxError(f"{text!r} is too large for a double", pos)
        return Token("double", text, pos, number)
    digits = text.rstrip("uU")
    return _checked_int("uint" if unsigned else "int", text, pos, int(digits))


def _checked_int(kind: TokenKind, text: str, pos: int, value: int) -> Token:
    # An int literal may be 2**63 only when negated; the parser folds the sign and checks that.
    limit = UINT_MAX if kind == "uint" else INT_MAX + 1
    if value > limit:
        raise CelSyntaxError(f"{text} is out of range for {kind}", pos)
    return Token(kind, text, pos, value)


def _string_token(source: str, pos: int, start: re.Match[str]) -> Token:
    is_bytes, is_raw, quote = bool(start.group(1)), bool(start.group(2)), start.group(3)
    body_start = start.end()
    end = _closing_quote(source, body_start, quote, is_raw)
    if end < 0:
        raise CelSyntaxError("unterminated string literal", pos)
    body = source[body_start:end]
    text = source[pos : end + len(quote)]
    if is_raw:
        return Token("bytes" if is_bytes else "string", text, pos, body.encode() if is_bytes else body)
    return Token("bytes" if is_bytes else "string", text, pos, _unescape(body, body_start, is_bytes))


def _closing_quote(source: str, pos: int, quote: str, is_raw: bool) -> int:
    """Where the closing quote starts, or -1; single-line quotes may not span lines."""
    while pos < len(source):
        if source.startswith(quote, pos):
            return pos
        char = source[pos]
        if len(quote) == 1 and char in "\r\n":
            return -1
        pos += 2 if char == "\\" and not is_raw else 1
    return -1


def _unescape(body: str, offset: int, is_bytes: bool) -> str | bytes:
    """Decode the escapes of langdef.md "String and Bytes Literals"."""
    parts: list[bytes] = []
    pos = 0
    while pos < len(body):
        slash = body.find("\\", pos)
        if slash < 0:
            parts.append(body[pos:].encode())
            break
        parts.append(body[pos:slash].encode())
        escape = _ESCAPE.match(body, slash)
        if escape is None:
            raise CelSyntaxError(f"invalid escape {body[slash : slash + 2]!r}", offset + slash)
        parts.append(_escape_value(escape, offset + slash, is_bytes))
        pos = escape.end()
    joined = b"".join(parts)
    return joined if is_bytes else joined.decode()


def _escape_value(escape: re.Match[str], offset: int, is_bytes: bool) -> bytes:
    simple, hex2, hex4, hex8, octal = escape.groups()
    if simple:
        return _SIMPLE_ESCAPES[simple].encode()
    if hex2 or octal:
        # In bytes these escapes are byte values; in strings they are code points (\377 is "ÿ").
        number = int(hex2, 16) if hex2 else int(octal, 8)
        return bytes([number]) if is_bytes else chr(number).encode()
    if is_bytes:
        raise CelSyntaxError(f"{escape.group()!r}: unicode escapes are not allowed in bytes", offset)
    point = int(hex4 or hex8, 16)
    if 0xD800 <= point <= 0xDFFF or point > 0x10FFFF:
        raise CelSyntaxError(f"{escape.group()!r} is not a valid unicode code point", offset)
    return chr(point).encode()
