"""The generic schema reader: sections of keys, value parsers, and problems with their key paths.

Nothing here knows the gateway's keys; ``fields`` and ``load`` describe them with this.

* A section (the top level, ``listen``, an issuer, a route) is a tuple of ``FieldSpec``: key,
  value parser, required or not.  ``read_section`` applies them, reporting unknown keys (with a
  "did you mean"), missing required keys and each parser's problems.  Optional keys that are
  absent get the *dataclass* default, so defaults live in one place (``model``).
* A value parser is a ``Parser``: ``(node, cursor) -> value | INVALID``, which reports its own
  problems through the cursor (it knows the key path), together with the JSON Schema of the YAML
  it accepts.  ``schema`` assembles the published schema from these, so it cannot drift.  A
  parser's schema may be looser than the parser (URL rules, glob shadowing, cross-key checks),
  never stricter: every config the gateway accepts must also pass in an editor.
"""

from __future__ import annotations

import difflib
import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Generic, TypeAlias, TypeVar

from .model import ConfigProblem
from .yamlsource import YamlMapping, YamlNode, YamlRejected, YamlScalar, YamlSequence, join_index, join_key


class _Invalid(enum.Enum):
    """Marks a value that failed to parse; its problem has already been reported."""

    INVALID = "invalid"


INVALID: Final = _Invalid.INVALID
T = TypeVar("T")
Parsed: TypeAlias = T | _Invalid


class Problems:
    """Collects problems as (line, key path, message) while the file is walked."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str, str]] = []

    def add(self, line: int, key_path: str, message: str) -> None:
        self.items.append((line, key_path, message))

    def __bool__(self) -> bool:
        return bool(self.items)

    def for_file(self, file: str) -> list[ConfigProblem]:
        return [ConfigProblem(file, line, key_path, message) for line, key_path, message in self.items]


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a parser is in the document: the key path, plus where to report and resolve."""

    path: str
    problems: Problems
    base_dir: Path  # the config file's folder
    env: Mapping[str, str] = field(default_factory=dict)  # for {env: NAME} secrets

    def key(self, name: str) -> Cursor:
        return Cursor(join_key(self.path, name), self.problems, self.base_dir, self.env)

    def item(self, index: int) -> Cursor:
        return Cursor(join_index(self.path, index), self.problems, self.base_dir, self.env)

    def problem(self, line: int, message: str) -> _Invalid:
        self.problems.add(line, self.path, message)
        return INVALID


# =========================================================================== parsers and schemas


JsonSchema: TypeAlias = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Parser(Generic[T]):
    """A value parser, with the JSON Schema (draft-07) of the YAML values it accepts."""

    parse: Callable[[YamlNode, Cursor], Parsed[T]]
    schema: JsonSchema

    def __call__(self, node: YamlNode, at: Cursor) -> Parsed[T]:
        return self.parse(node, at)


def accepts(schema: JsonSchema) -> Callable[[Callable[[YamlNode, Cursor], Parsed[T]]], Parser[T]]:
    """Decorator: the function is a value parser for values that ``schema`` describes."""

    def described(parse: Callable[[YamlNode, Cursor], Parsed[T]]) -> Parser[T]:
        return Parser(parse, schema)

    return described


# yamlsource substitutes ${NAME} / ${NAME:-default} and then re-types a plain scalar, so the file
# may hold a string with a reference where a number, a boolean or one of a closed set of words is
# expected (``port: ${PORT}``); the schema cannot know the value, so it accepts the reference.
ENV_REFERENCE: Final[JsonSchema] = {"$ref": "#/definitions/env_reference"}
# What ``$ref`` schemas in the parsers' schemas point to (``schema`` puts it in the document).
DEFINITIONS: Final[JsonSchema] = {
    "env_reference": {
        "description": "${NAME} or ${NAME:-default}: typed once substituted from the environment",
        "type": "string",
        "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}",
    }
}


def or_env(schema: JsonSchema) -> JsonSchema:
    """``schema``, or a string with a ``${NAME}`` reference (known only once substituted)."""
    return {"anyOf": [schema, ENV_REFERENCE]}


def section_schema(fields: tuple[FieldSpec, ...]) -> JsonSchema:
    """A mapping with exactly the keys of ``fields``, the required ones required."""
    schema: JsonSchema = {
        "type": "object",
        "properties": {spec.key: spec.parse.schema for spec in fields},
        "additionalProperties": False,
    }
    required = [spec.key for spec in fields if spec.required]
    if required:
        schema["required"] = required
    return schema


def one_key_schema(choices: Mapping[str, JsonSchema]) -> JsonSchema:
    """A closed choice written as a single-key map (``{minted: {...}}``, ``{url: ...}``)."""
    return {
        "type": "object",
        "properties": dict(choices),
        "additionalProperties": False,
        "minProperties": 1,
        "maxProperties": 1,
    }


# =========================================================================== sections


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One key of a section: its name (= dataclass attribute), parser, and whether required."""

    key: str
    parse: Parser[Any]
    required: bool = False


@dataclass(frozen=True, slots=True)
class Section:
    """The keys of one mapping that parsed successfully, with the nodes they came from."""

    line: int
    values: dict[str, Any]
    nodes: dict[str, YamlNode]
    complete: bool  # no problem inside this section
    present: frozenset[str] = frozenset()  # every known key written, whether it parsed or not


def read_section(node: YamlNode, at: Cursor, fields: tuple[FieldSpec, ...]) -> Parsed[Section]:
    """Apply ``fields`` to a mapping node: unknown keys, missing keys, then each value."""
    if isinstance(node, YamlRejected):
        return INVALID
    if not isinstance(node, YamlMapping):
        return at.problem(node.line, wrong_type(node, "a mapping"))
    known = [spec.key for spec in fields]
    complete = True
    for entry in node.entries:
        if entry.key not in known:
            at.key(entry.key).problem(entry.key_line, unknown_key_message(entry.key, known))
            complete = False
    values: dict[str, Any] = {}
    nodes: dict[str, YamlNode] = {}
    for spec in fields:
        present = node.get(spec.key)
        if present is None:
            if spec.required:
                at.key(spec.key).problem(node.line, "required key is missing")
                complete = False
            continue
        value = spec.parse(present.value, at.key(spec.key))
        if value is INVALID:
            complete = False
            continue
        values[spec.key] = value
        nodes[spec.key] = present.value
    written = frozenset(entry.key for entry in node.entries if entry.key in known)
    return Section(node.line, values, nodes, complete, written)


def section_of(fields: tuple[FieldSpec, ...], *, also: JsonSchema | None = None) -> Parser[Section]:
    """A value parser for a nested mapping described by ``fields``.

    ``also``: schema for the rules between its keys that the caller checks on the section.
    """

    def parse(node: YamlNode, at: Cursor) -> Parsed[Section]:
        return read_section(node, at, fields)

    return Parser(parse, {**section_schema(fields), **(also or {})})


def build_from(cls: Callable[..., T], section: Parsed[Section]) -> Parsed[T]:
    """Construct ``cls`` from a complete section; absent optional keys keep their defaults."""
    if section is INVALID or not section.complete:
        return INVALID
    return cls(**section.values)


def unknown_key_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"
    return f"unknown key '{key}'{hint}"


# =========================================================================== scalar parsers


def shown(node: YamlScalar) -> str:
    """How to mention a scalar in a message: never the value itself if it came from the env."""
    if node.env_refs:
        return "value from " + ", ".join(f"${{{name}}}" for name in node.env_refs)
    return quoted_value(node.value)


def quoted_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def shown_as(node: YamlNode, value: str) -> str:
    """Mention a (normalised) ``value`` that was read from ``node``, hiding env data."""
    if isinstance(node, YamlScalar) and node.env_refs:
        return shown(node)
    return repr(value)


def wrong_type(node: YamlNode, expected: str) -> str:
    if isinstance(node, YamlMapping):
        return f"expected {expected}, got a mapping"
    if isinstance(node, YamlSequence):
        return f"expected {expected}, got a list"
    if isinstance(node, YamlRejected):  # callers skip these; kept total for safety
        return f"expected {expected}"
    if node.value is None and not node.env_refs:
        return f"expected {expected}, got nothing (null)"
    hint = " (quote it to make it a string)" if expected == "a string" and not node.env_refs else ""
    return f"{shown(node)} is not {expected}{hint}"


@accepts({"type": "string"})
def text(node: YamlNode, at: Cursor) -> Parsed[str]:
    """A string, as written (possibly empty)."""
    if isinstance(node, YamlRejected):
        return INVALID
    if isinstance(node, YamlScalar) and isinstance(node.value, str):
        return node.value
    return at.problem(node.line, wrong_type(node, "a string"))


@accepts({"type": "string", "pattern": r"\S"})
def non_empty_text(node: YamlNode, at: Cursor) -> Parsed[str]:
    value = text(node, at)
    if value is INVALID:
        return INVALID
    if not value.strip():
        return at.problem(node.line, "must not be empty")
    return value


@accepts(or_env({"type": "boolean"}))
def boolean(node: YamlNode, at: Cursor) -> Parsed[bool]:
    if isinstance(node, YamlRejected):
        return INVALID
    if isinstance(node, YamlScalar) and isinstance(node.value, bool):
        return node.value
    return at.problem(node.line, wrong_type(node, "true or false"))


def integer_in(low: int, high: int | None) -> Parser[int]:
    """An int within [low, high]; YAML booleans are not integers here."""

    def parse(node: YamlNode, at: Cursor) -> Parsed[int]:
        if isinstance(node, YamlRejected):
            return INVALID
        if not (
            isinstance(node, YamlScalar) and isinstance(node.value, int) and not isinstance(node.value, bool)
        ):
            return at.problem(node.line, wrong_type(node, "an integer"))
        value = node.value
        if value < low or (high is not None and value > high):
            limits = f"between {low} and {high}" if high is not None else f"at least {low}"
            return at.problem(node.line, f"{shown(node)} is out of range: must be {limits}")
        return value

    bounds = {"minimum": low} if high is None else {"minimum": low, "maximum": high}
    return Parser(parse, or_env({"type": "integer", **bounds}))


def seconds(*, allow_zero: bool) -> Parser[float]:
    """A finite duration in seconds (int or float); zero only if ``allow_zero``."""
    requirement = "zero or more" if allow_zero else "greater than zero"

    def parse(node: YamlNode, at: Cursor) -> Parsed[float]:
        if isinstance(node, YamlRejected):
            return INVALID
        if not (
            isinstance(node, YamlScalar)
            and isinstance(node.value, int | float)
            and not isinstance(node.value, bool)
        ):
            return at.problem(node.line, wrong_type(node, "a number of seconds"))
        value = float(node.value)
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            return at.problem(
                node.line, f"{shown(node)} is out of range: seconds must be finite and {requirement}"
            )
        return value

    bound = {"minimum": 0} if allow_zero else {"exclusiveMinimum": 0}
    return Parser(parse, or_env({"type": "number", **bound}))


positive_seconds = seconds(allow_zero=False)
non_negative_seconds = seconds(allow_zero=True)


def list_of(
    item: Parser[Any], *, non_empty: str | None = None, unique: str | None = None
) -> Parser[tuple[Any, ...]]:
    """A list whose items all parse with ``item``.

    ``non_empty``: message if the list is empty.  ``unique``: noun for a duplicate-item problem
    (items are compared after parsing, i.e. after normalisation).
    """

    def parse(node: YamlNode, at: Cursor) -> Parsed[tuple[Any, ...]]:
        if isinstance(node, YamlRejected):
            return INVALID
        if not isinstance(node, YamlSequence):
            return at.problem(node.line, wrong_type(node, "a list"))
        if not node.items and non_empty:
            return at.problem(node.line, non_empty)
        values: list[Any] = []
        first_line: dict[Any, int] = {}
        complete = True
        for index, item_node in enumerate(node.items):
            value = item(item_node, at.item(index))
            if value is INVALID:
                complete = False
                continue
            if unique is not None:
                if value in first_line:
                    duplicate = shown_as(item_node, str(value))
                    at.item(index).problem(
                        item_node.line, f"duplicate {unique} {duplicate} (also at line {first_line[value]})"
                    )
                    complete = False
                    continue
                first_line[value] = item_node.line
            values.append(value)
        return tuple(values) if complete else INVALID

    schema: JsonSchema = {"type": "array", "items": item.schema}
    if non_empty:
        schema["minItems"] = 1
    if unique:  # equal as written is equal once normalised, so this is never stricter
        schema["uniqueItems"] = True
    return Parser(parse, schema)


def one_of(*choices: str) -> Parser[str]:
    """A string from a closed set."""

    def parse(node: YamlNode, at: Cursor) -> Parsed[str]:
        value = text(node, at)
        if value is INVALID:
            return INVALID
        if value not in choices:
            return at.problem(node.line, f"{shown_as(node, value)} is not one of: {', '.join(choices)}")
        return value

    return Parser(parse, or_env({"enum": list(choices)}))


# =========================================================================== across entries


@dataclass(frozen=True, slots=True)
class _Seen:
    """First occurrence of a value that must be unique across entries."""

    line: int
    where: str  # key path, possibly with a note


@dataclass(slots=True)
class UniqueCheck:
    """Reports the second and later occurrences of a value, pointing back at the first."""

    noun: str
    seen: dict[str, _Seen] = field(default_factory=dict)

    def check(self, value: str, shown_value: str, line: int, at: Cursor, note: str = "") -> bool:
        first = self.seen.get(value)
        if first is not None:
            also = f"also at line {first.line}, {first.where}"
            at.problem(line, f"duplicate {self.noun} {shown_value} ({also})")
            return False
        self.seen[value] = _Seen(line, at.path + note)
        return True
