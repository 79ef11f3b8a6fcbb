"""Strict YAML loading for the gateway config.

PyYAML's ``safe_load`` throws away everything a config error message needs: line numbers,
duplicate keys (the last one silently wins), and whether a scalar was quoted.  This module
composes the document into PyYAML nodes (which carry marks) and converts them into a small
tree of frozen nodes that keep a line number for every value and every mapping key.

On the way it

* rejects duplicate mapping keys (at the second occurrence),
* rejects anchors, aliases and merge keys: an aliased value would be reported at the
  anchor's line, and expansion is a classic resource-exhaustion vector,
* rejects every tag except the core scalar / collection tags; nothing is ever constructed
  from a tag, so python-specific tags cannot execute anything, and they are refused anyway,
* substitutes ``${NAME}`` / ``${NAME:-default}`` from the environment (``$${`` is a
  literal ``${``) and then re-types *plain* scalars with YAML's implicit resolver, so
  ``port: ${PORT}`` is an int while ``port: "${PORT}"`` stays a string.  (Inside flow
  collections, ``[...]`` / ``{...}``, YAML forbids braces in plain scalars, so a reference
  there must be quoted, and then stays a string; syntax errors on such lines say so.)

Problems are returned, never raised, so the caller can report all of them at once.
Values that came from the environment are marked (``YamlScalar.env_refs``) so that error
messages can avoid echoing them: they may be secrets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple, TypeAlias

import yaml
from yaml.events import AliasEvent, CollectionStartEvent, NodeEvent, ScalarEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

ScalarValue: TypeAlias = str | int | float | bool | None

_CORE = "tag:yaml.org,2002:"
STR_TAG = _CORE + "str"
_NULL_TAG = _CORE + "null"
_MERGE_TAG = _CORE + "merge"
# Tags whose text is turned into a Python value; any other implicitly resolved tag (e.g. a
# plain scalar that looks like a timestamp) is simply kept as the string the user wrote.
_TYPED_SCALAR_TAGS = frozenset({_NULL_TAG, _CORE + "bool", _CORE + "int", _CORE + "float"})
_ALLOWED_EXPLICIT_SCALAR_TAGS = _TYPED_SCALAR_TAGS | {STR_TAG}
_ALLOWED_EXPLICIT_COLLECTION_TAGS = frozenset({_CORE + "seq", _CORE + "map"})


# --------------------------------------------------------------------------- result tree


@dataclass(frozen=True, slots=True)
class YamlScalar:
    """A scalar after environment substitution and typing."""

    value: ScalarValue
    line: int
    # Names of the ${VAR} references the text contained (in order, without repeats).
    # Non-empty means the value may hold environment data and must not be echoed.
    env_refs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class YamlSequence:
    items: tuple[YamlNode, ...]
    line: int


@dataclass(frozen=True, slots=True)
class YamlEntry:
    key: str
    key_line: int
    value: YamlNode


@dataclass(frozen=True, slots=True)
class YamlMapping:
    entries: tuple[YamlEntry, ...]  # document order, duplicates already dropped
    line: int

    def get(self, key: str) -> YamlEntry | None:
        return next((entry for entry in self.entries if entry.key == key), None)


@dataclass(frozen=True, slots=True)
class YamlRejected:
    """A value that could not be loaded; its problem has already been reported."""

    line: int


YamlNode: TypeAlias = YamlScalar | YamlSequence | YamlMapping | YamlRejected


class YamlIssue(NamedTuple):
    line: int  # 1-based
    key_path: str  # "" for document-level problems
    message: str


@dataclass(frozen=True, slots=True)
class YamlDocument:
    root: YamlNode | None  # None: empty document, or unparseable (then issues say why)
    issues: tuple[YamlIssue, ...]


# --------------------------------------------------------------------------- key paths


def join_key(parent: str, key: str) -> str:
    """Key path of ``key`` inside the mapping at ``parent`` (``routes[0]`` + ``path``)."""
    return f"{parent}.{key}" if parent else key


def join_index(parent: str, index: int) -> str:
    """Key path of item ``index`` of the sequence at ``parent``."""
    return f"{parent}[{index}]"


# --------------------------------------------------------------------------- environment


# One alternative per token: the "$${" escape, a well-formed reference, or a stray "${".
_ENV_TOKEN = re.compile(r"\$\$\{|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|\$\{")


class Substitution(NamedTuple):
    text: str
    refs: tuple[str, ...]  # every variable referenced, set or not, without repeats
    missing: tuple[str, ...]  # referenced, unset, and without a default
    malformed: bool  # a "${" that is not a valid reference


def substitute_env(text: str, env: Mapping[str, str]) -> Substitution:
    """Expand ``${NAME}`` and ``${NAME:-default}`` (default when unset *or empty*, as in sh)."""
    refs: list[str] = []
    missing: list[str] = []
    malformed = False

    def replace(match: re.Match[str]) -> str:
        nonlocal malformed
        matched = match.group(0)
        if matched == "$${":
            return "${"
        name = match.group("name")
        if name is None:
            malformed = True
            return matched
        if name not in refs:
            refs.append(name)
        value = env.get(name)
        default = match.group("default")
        if default is not None and not value:
            return default
        if value is None:
            if name not in missing:
                missing.append(name)
            return ""
        return value

    expanded = _ENV_TOKEN.sub(replace, text) if "${" in text else text
    return Substitution(expanded, tuple(refs), tuple(missing), malformed)


# --------------------------------------------------------------------------- composing


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_CORE) :] if tag.startswith(_CORE) else tag


class _MarkingLoader(yaml.SafeLoader):
    """A SafeLoader that only composes, remembering what the node tree cannot tell later.

    PyYAML nodes do not record whether a tag was written explicitly, whether a scalar was
    eligible for implicit typing, or which anchor/alias produced them; we note that by node
    identity while composing (the tree keeps every node alive, so ids stay unique).
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.explicit_tags: set[int] = set()
        self.implicitly_typed: set[int] = set()  # plain, untagged scalars
        self.anchored: dict[int, str] = {}
        self.aliases: dict[int, tuple[str, int]] = {}  # stand-in node -> (anchor name, line)
        # Key paths of the nodes being composed, innermost last. A syntax error unwinds past the
        # pop below, so after one the last entry is the path the parser was inside.
        self.composing: list[str] = []

    @property
    def key_path(self) -> str:
        """The key path of the innermost node being composed ("" at the document level)."""
        return self.composing[-1] if self.composing else ""

    def compose_node(self, parent: Node | None, index: object) -> Node | None:
        # PyYAML passes the key node as ``index`` for a mapping value, None for a mapping key and
        # the position for a sequence item.
        parent_path = self.key_path
        if isinstance(parent, MappingNode) and isinstance(index, ScalarNode):
            path = join_key(parent_path, str(index.value))
        elif isinstance(parent, SequenceNode) and isinstance(index, int):
            path = join_index(parent_path, index)
        else:
            path = parent_path
        self.composing.append(path)
        node = self._compose_marked(parent, index)
        self.composing.pop()  # not reached on a syntax error: see `composing`
        return node

    def _compose_marked(self, parent: Node | None, index: object) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in the stubs
        if isinstance(event, AliasEvent):
            self.get_event()  # type: ignore[no-untyped-call]
            # A stand-in, so the alias is reported at its own line and key path.
            placeholder = ScalarNode(_NULL_TAG, "")
            line = event.start_mark.line + 1 if event.start_mark is not None else 1
            self.aliases[id(placeholder)] = (event.anchor or "", line)
            return placeholder
        node = super().compose_node(parent, index)  # type: ignore[arg-type]  # the stubs say int
        if node is None:
            return None
        if isinstance(event, ScalarEvent | CollectionStartEvent) and event.tag not in (None, "!"):
            self.explicit_tags.add(id(node))
        if isinstance(event, ScalarEvent) and event.implicit[0]:
            self.implicitly_typed.add(id(node))
        if isinstance(event, NodeEvent) and event.anchor is not None:
            self.anchored[id(node)] = event.anchor
        return node


def _line(node: Node) -> int:
    mark = node.start_mark
    return mark.line + 1 if mark is not None else 1


class _Converter:
    """Turns composed PyYAML nodes into the frozen tree, collecting issues on the way."""

    def __init__(self, loader: _MarkingLoader, env: Mapping[str, str]) -> None:
        self.loader = loader
        self.env = env
        self.issues: list[YamlIssue] = []

    def reject(self, line: int, path: str, message: str) -> YamlRejected:
        self.issues.append(YamlIssue(line, path, message))
        return YamlRejected(line)

    def convert(self, node: Node, path: str, line: int | None = None) -> YamlNode:
        """Convert ``node``; ``line`` overrides where problems about it are reported."""
        alias = self.loader.aliases.get(id(node))
        if alias is not None:
            name, alias_line = alias
            return self.reject(
                line or alias_line, path, f"aliases (*{name}) are not supported; write the value out"
            )
        at = line if line is not None else _line(node)
        if id(node) in self.loader.anchored:
            name = self.loader.anchored[id(node)]
            # Reported, but the value is still checked so its own problems surface too.
            self.issues.append(YamlIssue(at, path, f"anchors (&{name}) are not supported"))
        if isinstance(node, MappingNode):
            return self.convert_mapping(node, path, at)
        if isinstance(node, SequenceNode):
            return self.convert_sequence(node, path, at)
        if not isinstance(node, ScalarNode):
            raise TypeError(f"unexpected YAML node {node!r}")
        return self.convert_scalar(node, path, at)

    def explicit_collection_tag_problem(self, node: Node) -> str | None:
        if id(node) in self.loader.explicit_tags and node.tag not in _ALLOWED_EXPLICIT_COLLECTION_TAGS:
            return f"tag {_short_tag(node.tag)} is not allowed (plain YAML values only)"
        return None

    def convert_sequence(self, node: SequenceNode, path: str, line: int) -> YamlNode:
        problem = self.explicit_collection_tag_problem(node)
        if problem:
            return self.reject(line, path, problem)
        items = tuple(self.convert(item, join_index(path, i)) for i, item in enumerate(node.value))
        return YamlSequence(items, line)

    def convert_mapping(self, node: MappingNode, path: str, line: int) -> YamlNode:
        problem = self.explicit_collection_tag_problem(node)
        if problem:
            return self.reject(line, path, problem)
        first_line_of: dict[str, int] = {}
        entries: list[YamlEntry] = []
        for key_node, value_node in node.value:
            key = self.mapping_key(key_node, path)
            if key is None:
                continue
            key_line = _line(key_node)
            child_path = join_key(path, key)
            if key in first_line_of:
                first = first_line_of[key]
                self.issues.append(
                    YamlIssue(key_line, child_path, f"duplicate key '{key}' (first at line {first})")
                )
                continue
            first_line_of[key] = key_line
            value = self.convert(value_node, child_path, self.value_line(value_node, key_line))
            entries.append(YamlEntry(key, key_line, value))
        return YamlMapping(tuple(entries), line)

    def mapping_key(self, key_node: Node, path: str) -> str | None:
        """The key's text, or None (after reporting) if it cannot be a config key."""
        line = _line(key_node)
        alias = self.loader.aliases.get(id(key_node))
        if alias is not None:
            self.reject(alias[1], path, f"aliases (*{alias[0]}) are not supported")
            return None
        if key_node.tag == _MERGE_TAG and id(key_node) not in self.loader.explicit_tags:
            self.reject(line, join_key(path, "<<"), "merge keys (<<) are not supported")
            return None
        if not isinstance(key_node, ScalarNode):
            self.reject(line, path, "mapping keys must be plain strings")
            return None
        if id(key_node) in self.loader.explicit_tags and key_node.tag != STR_TAG:
            self.reject(line, path, f"tag {_short_tag(key_node.tag)} is not allowed on a key")
            return None
        # Keys are names, not values: no environment substitution, no typing ("on:" is "on").
        return str(key_node.value)

    @staticmethod
    def value_line(value_node: Node, key_line: int) -> int | None:
        """A block collection starts on the line after its key; problems about it belong on the key."""
        return key_line if isinstance(value_node, MappingNode | SequenceNode) else None

    def convert_scalar(self, node: ScalarNode, path: str, line: int) -> YamlNode:
        raw = str(node.value)
        expanded = substitute_env(raw, self.env)
        for name in expanded.missing:
            self.issues.append(
                YamlIssue(
                    line,
                    path,
                    f"environment variable {name} is not set (use ${{{name}:-default}} for a default)",
                )
            )
        if expanded.malformed:
            self.issues.append(
                YamlIssue(
                    line,
                    path,
                    "malformed '${' reference: use ${NAME} or ${NAME:-default}, or $${ for a literal '${'",
                )
            )
        if expanded.missing or expanded.malformed:
            return YamlRejected(line)

        if id(node) in self.loader.explicit_tags:
            tag = node.tag
            if tag not in _ALLOWED_EXPLICIT_SCALAR_TAGS:
                return self.reject(
                    line, path, f"tag {_short_tag(tag)} is not allowed (plain YAML values only)"
                )
        elif id(node) in self.loader.implicitly_typed:
            # Re-resolve the *substituted* text: this is what makes "port: ${PORT}" an int.
            tag = str(self.loader.resolve(ScalarNode, expanded.text, (True, False)))  # type: ignore[no-untyped-call]
        else:
            tag = STR_TAG  # quoted and block scalars are always strings

        if tag not in _TYPED_SCALAR_TAGS:
            return YamlScalar(expanded.text, line, expanded.refs)
        try:
            value = self.loader.construct_object(
                ScalarNode(tag, expanded.text, node.start_mark, node.end_mark)
            )
        except (yaml.YAMLError, ValueError, KeyError):
            shown = f"value from ${{{expanded.refs[0]}}}" if expanded.refs else repr(expanded.text)
            return self.reject(line, path, f"{shown} is not a valid {_short_tag(tag)}")
        if not (value is None or isinstance(value, bool | int | float)):
            raise TypeError(f"core tag {tag} constructed {type(value).__name__}")
        return YamlScalar(value, line, expanded.refs)


# --------------------------------------------------------------------------- entry point


def _line_text(text: str, line: int) -> str:
    lines = text.splitlines()
    return lines[line - 1] if 0 < line <= len(lines) else ""


def _syntax_issue(error: yaml.YAMLError, text: str, key_path: str = "") -> YamlIssue:
    """The issue for a syntax error, at its line and, where known, the key path being parsed."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else 1
        detail = error.problem or "invalid YAML"
        if error.context:
            context_mark = error.context_mark
            started = (
                f" that started at line {context_mark.line + 1}"
                if context_mark is not None and context_mark.line + 1 != line
                else ""
            )
            detail = f"{detail} ({error.context}{started})"
        if "${" in _line_text(text, line):
            # Plain scalars cannot contain "{" or "}" inside [...] or {...}: a common trap with ${NAME}.
            detail += "; inside [...] or {...} quote ${NAME} references, or use block style"
        return YamlIssue(line, key_path, f"YAML syntax error: {detail}")
    if isinstance(error, yaml.reader.ReaderError):
        position = error.position if isinstance(error.position, int) else 0
        character = f" (#x{error.character:04x})" if isinstance(error.character, int) else ""
        return YamlIssue(
            text.count("\n", 0, position) + 1, "", f"YAML syntax error: {error.reason}{character}"
        )
    return YamlIssue(1, "", f"YAML syntax error: {error}")


def load_strict_yaml(text: str, env: Mapping[str, str]) -> YamlDocument:
    """Parse a single YAML document into the frozen tree, with every problem found."""
    try:
        loader = _MarkingLoader(text)  # the reader rejects non-printable characters right here
    except yaml.YAMLError as error:
        return YamlDocument(None, (_syntax_issue(error, text),))
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as error:
        return YamlDocument(None, (_syntax_issue(error, text, loader.key_path),))
    finally:
        loader.dispose()
    if node is None:
        return YamlDocument(None, ())
    converter = _Converter(loader, env)
    root = converter.convert(node, "")
    return YamlDocument(root, tuple(converter.issues))
