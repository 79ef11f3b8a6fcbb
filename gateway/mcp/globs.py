"""The rules' glob language: ``*`` any run of characters, ``?`` one, ``[...]`` a class; and which
pattern can never win because an earlier one covers it."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, Protocol, TypeVar

GLOB_CHARACTERS: Final = frozenset("*?[]")


class _Patterned(Protocol):
    @property
    def pattern(self) -> str: ...


_P = TypeVar("_P", bound=_Patterned)


class GlobError(ValueError):
    """A pattern that is not a valid glob; the message says why."""


def compile_glob(pattern: str) -> re.Pattern[str]:
    """Compile a case-sensitive glob: ``*`` any run of characters, ``?`` one, ``[...]`` a class.

    Written out rather than taken from fnmatch so that malformed patterns are errors (fnmatch
    silently treats an unclosed ``[`` as a literal) and ``*`` also spans ``/`` in URIs.
    """
    if not pattern:
        raise GlobError("empty pattern")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in pattern):
        raise GlobError("control characters are not allowed in patterns")
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        elif char == "[":
            end = pattern.find("]", index + 2 if pattern[index + 1 : index + 2] in ("!", "^") else index + 1)
            if end == -1:
                raise GlobError("unclosed '[' in pattern")
            body = pattern[index + 1 : end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            if not body:
                raise GlobError("empty character class '[]'")
            parts.append(f"[{'^' if negate else ''}{_class_body(body)}]")
            index = end
        elif char == "]":
            raise GlobError("unmatched ']' in pattern")
        else:
            parts.append(re.escape(char))
        index += 1
    try:
        return re.compile("".join(parts), re.DOTALL)
    except re.error as exc:  # not expected after the checks above; still a config error, not a crash
        raise GlobError(f"invalid pattern: {exc.msg}") from None


def _class_body(body: str) -> str:
    """A glob class body as a regex class body: ranges checked, every other character literal.

    Escaping each character keeps ``\\``, ``^`` and the set operators ``&&``, ``~~``, ``||`` (which
    ``re`` reserves) literal, as they are in a glob.
    """
    out: list[str] = []
    index = 0
    while index < len(body):
        low = body[index]
        if index + 2 < len(body) and body[index + 1] == "-":
            high = body[index + 2]
            if high < low:
                raise GlobError(f"reversed range '{low}-{high}' in character class")
            out.append(f"{re.escape(low)}-{re.escape(high)}")
            index += 3
        else:
            out.append(re.escape(low))
            index += 1
    return "".join(out)


def literal_prefix(pattern: str) -> str:
    """The part of a glob before its first special character."""
    match = re.search(r"[*?\[]", pattern)
    return pattern if match is None else pattern[: match.start()]


def shadowing_rule(earlier: Iterable[_P], pattern: str) -> _P | None:
    """An earlier rule that matches everything ``pattern`` matches, so ``pattern`` can never win.

    Sound for the cases people write (``*``, an identical pattern, ``prefix*`` before a pattern
    with that literal prefix); it does not try to decide inclusion between arbitrary globs.
    """
    for rule in earlier:
        if rule.pattern in ("*", pattern):
            return rule
        if rule.pattern.endswith("*") and literal_prefix(rule.pattern) == rule.pattern[:-1]:
            if literal_prefix(pattern).startswith(rule.pattern[:-1]):
                return rule
    return None
