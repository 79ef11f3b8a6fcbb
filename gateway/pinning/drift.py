"""What changed between a pinned tool definition and the one an upstream lists now.

``classify`` names each kind of change, so a log line and a metric say *how* a tool moved, not
only that it did:

- ``new_tool``: a tool the lock does not hold;
- ``description``: the text a model reads changed: ``title``, ``description``, or the ``title`` /
  ``description`` / ``examples`` / ``$comment`` of any part of the input schema (a parameter's
  description is as good a place for an injected instruction as the tool's);
- ``input_schema_widened``: the input schema may now accept a call it refused before (a new
  parameter, a required one dropped, a type or enum grown, a bound loosened, an unknown keyword
  changed: anything not proven narrower counts as wider);
- ``input_schema``: the input schema changed and accepts no more than before (only narrowed);
- ``annotations_escalated``: a hint moved toward risk (``readOnlyHint`` true→false,
  ``destructiveHint`` false→true, ``idempotentHint`` true→false, ``openWorldHint`` false→true,
  with the defaults of MCP's ToolAnnotations where a hint is absent);
- ``annotations``: the annotations changed otherwise;
- ``output_schema``: ``outputSchema`` changed (what the caller is told to expect back);
- ``signature``: the server-identity signature in ``_meta`` changed (the server re-signed it);
- ``unpinnable``: the listed tool has no fingerprint (see ``fingerprint``), so it cannot match.

Comparisons are on canonical JSON (``true`` and ``1`` differ, key order does not), like the
fingerprint, so a change the fingerprint sees is always named.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, TypeAlias, get_args

from .fingerprint import IDENTITY_META, Unpinnable, canonical_bytes

__all__ = ["DRIFT_KINDS", "DriftKind", "classify", "escalated", "no_wider"]

DriftKind: TypeAlias = Literal[
    "new_tool",
    "description",
    "input_schema_widened",
    "input_schema",
    "annotations_escalated",
    "annotations",
    "output_schema",
    "signature",
    "unpinnable",
]
DRIFT_KINDS: Final[tuple[DriftKind, ...]] = get_args(DriftKind)  # in the order classify names them

# Schema keywords that only describe: what a model reads, never what a call may hold.
_TEXT_KEYWORDS: Final = frozenset({"title", "description", "examples", "$comment"})
# Where a schema holds sub-schemas (JSON Schema 2020-12 and draft-07): by name, one, or a list.
_NAMED_SUBSCHEMAS: Final = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
_ONE_SUBSCHEMA: Final = frozenset(
    {"items", "additionalItems", "additionalProperties", "not", "if", "then", "else", "contains",
     "propertyNames", "unevaluatedItems", "unevaluatedProperties"}
)  # fmt: skip
_LISTED_SUBSCHEMAS: Final = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_LOWER_BOUNDS: Final = frozenset({"minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"})
_UPPER_BOUNDS: Final = frozenset({"maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"})

# MCP ToolAnnotations (2025-03-26 on): each hint, its value when absent, and the safe value.
_HINTS: Final = (
    ("readOnlyHint", False, True),
    ("destructiveHint", True, False),
    ("idempotentHint", False, True),
    ("openWorldHint", True, False),
)
# destructiveHint and idempotentHint mean something only when the tool is not read-only.
_WRITE_HINTS: Final = frozenset({"destructiveHint", "idempotentHint"})


def classify(pinned: Mapping[str, Any] | None, listed: Mapping[str, Any]) -> tuple[DriftKind, ...]:
    """Every kind of change from ``pinned`` to ``listed`` (pinned definitions); () if none."""
    if pinned is None:
        return ("new_tool",)
    kinds: list[DriftKind] = []
    old_schema, new_schema = pinned.get("inputSchema"), listed.get("inputSchema")
    text_changed = not all(_same(pinned.get(key), listed.get(key)) for key in ("title", "description"))
    if text_changed or not _same(_text_of(old_schema), _text_of(new_schema)):
        kinds.append("description")
    if not _same(_without_text(old_schema), _without_text(new_schema)):
        kinds.append("input_schema" if no_wider(old_schema, new_schema) else "input_schema_widened")
    old_notes, new_notes = pinned.get("annotations"), listed.get("annotations")
    if not _same(old_notes, new_notes):
        kinds.append("annotations_escalated" if escalated(old_notes, new_notes) else "annotations")
    if not _same(pinned.get("outputSchema"), listed.get("outputSchema")):
        kinds.append("output_schema")
    if not _same(_signature(pinned), _signature(listed)):
        kinds.append("signature")
    return tuple(kinds)


def escalated(old: object, new: object) -> bool:
    """Whether any hint moved from its safe side to its risky side (absent hints at their default)."""
    before, after = _effective_hints(old), _effective_hints(new)
    return any(before[name] == safe and after[name] != safe for name, _, safe in _HINTS)


def _effective_hints(annotations: object) -> dict[str, bool]:
    given = annotations if isinstance(annotations, Mapping) else {}
    hints = {}
    for name, default, _safe in _HINTS:
        value = given.get(name, default)
        hints[name] = value if isinstance(value, bool) else default  # a non-boolean hint is no hint
    if hints["readOnlyHint"]:
        hints.update({name: safe for name, _, safe in _HINTS if name in _WRITE_HINTS})
    return hints


def no_wider(old: object, new: object) -> bool:
    """Whether every value schema ``new`` accepts, ``old`` accepts too; False when not provable.

    Conservative by construction: each constraint of ``old`` must stand in ``new`` as strictly
    (bounds no looser, types, enums and required sets no larger), and a keyword it does not
    know must be unchanged. Extra constraints in ``new`` only narrow.
    """
    old, new = _without_text(old), _without_text(new)
    if _same(old, new) or new is False or _accepts_all(old):
        return True
    if not (isinstance(old, Mapping) and isinstance(new, Mapping)) or _accepts_all(new):
        return False
    if not _object_members_no_wider(old, new):
        return False
    for key, value in old.items():
        if key in ("properties", "additionalProperties"):
            continue  # _object_members_no_wider
        check = _KEYWORD_CHECKS.get(key)
        if check is not None:
            if not check(value, new.get(key), new):
                return False
        elif key in _LOWER_BOUNDS or key in _UPPER_BOUNDS:
            if not _bound_kept(key, value, new.get(key)):
                return False
        elif not _same(value, new.get(key)):
            return False
    return True


def _object_members_no_wider(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Each property, named or not, accepts no more in ``new`` (absent means: anything)."""
    old_props = old.get("properties", {})
    new_props = new.get("properties", {})
    if not (isinstance(old_props, Mapping) and isinstance(new_props, Mapping)):
        return _same(old_props, new_props)
    old_rest, new_rest = old.get("additionalProperties", True), new.get("additionalProperties", True)
    for name in old_props.keys() | new_props.keys():
        before = old_props.get(name, old_rest)
        after = new_props.get(name, new_rest)
        if not no_wider(before, after):
            return False
    return no_wider(old_rest, new_rest)


def _types_kept(old: object, new: object, _schema: Mapping[str, Any]) -> bool:
    if new is None:
        return False
    before, after = _type_set(old), _type_set(new)
    if before is None or after is None:
        return _same(old, new)
    return all(kind in before or (kind == "integer" and "number" in before) for kind in after)


def _enum_kept(old: object, new: object, schema: Mapping[str, Any]) -> bool:
    allowed = {_key(value) for value in old} if isinstance(old, list) else None
    if allowed is None:
        return _same(old, new)
    if isinstance(new, list):
        return all(_key(value) in allowed for value in new)
    return "const" in schema and _key(schema["const"]) in allowed


def _required_kept(old: object, new: object, _schema: Mapping[str, Any]) -> bool:
    if not isinstance(old, list):
        return _same(old, new)
    return isinstance(new, list) and set(map(_key, old)) <= set(map(_key, new))


def _items_kept(old: object, new: object, _schema: Mapping[str, Any]) -> bool:
    return no_wider(old, True if new is None else new)


# Branch pairs compared at most when judging an anyOf: each new branch is compared with every
# old one, so the work grows with the product (1,000 branches each way took 9 s). Past this the
# change is not proven narrower, and is named a widening: drift either way, only its name is at
# stake.
MAX_BRANCH_PAIRS: Final = 4096


def _branches_kept(old: object, new: object, _schema: Mapping[str, Any]) -> bool:
    """anyOf / oneOf: ``new`` keeps a subset of the branches, each no wider than one it had."""
    if not (isinstance(old, list) and isinstance(new, list)):
        return _same(old, new)
    if len(old) * len(new) > MAX_BRANCH_PAIRS:
        return False
    return all(any(no_wider(before, after) for before in old) for after in new)


_KEYWORD_CHECKS: Final[dict[str, Callable[[object, object, Mapping[str, Any]], bool]]] = {
    "type": _types_kept,
    "enum": _enum_kept,
    "required": _required_kept,
    "items": _items_kept,
    "anyOf": _branches_kept,
}


def _bound_kept(key: str, old: object, new: object) -> bool:
    numbers = (int, float)
    if not isinstance(old, numbers) or isinstance(old, bool):
        return _same(old, new)
    if not isinstance(new, numbers) or isinstance(new, bool):
        return False  # dropped, or made unreadable: looser
    return new >= old if key in _LOWER_BOUNDS else new <= old


def _type_set(value: object) -> set[str] | None:
    if isinstance(value, str):
        return {value}
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return set(value)
    return None


def _accepts_all(schema: object) -> bool:
    return schema is True or schema is None or (isinstance(schema, Mapping) and not schema)


def _without_text(schema: object) -> object:
    """The schema with its describing keywords removed, wherever sub-schemas sit (not in data:
    a property *named* ``description`` stays)."""
    return _split_text(schema)[0]


def _text_of(schema: object) -> object:
    """Only the describing keywords of the schema, by where they stand."""
    return _split_text(schema)[1]


def _split_text(schema: object) -> tuple[object, object]:
    if not isinstance(schema, Mapping):
        return schema, None
    rules: dict[str, Any] = {}
    text: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _TEXT_KEYWORDS:
            text[key] = value
        elif key in _NAMED_SUBSCHEMAS and isinstance(value, Mapping):
            parts = {name: _split_text(sub) for name, sub in value.items()}
            rules[key] = {name: part[0] for name, part in parts.items()}
            text[key] = {name: part[1] for name, part in parts.items() if part[1] is not None}
        elif key in _ONE_SUBSCHEMA:
            rules[key], sub_text = _split_text(value)
            if sub_text is not None:
                text[key] = sub_text
        elif key in _LISTED_SUBSCHEMAS and isinstance(value, list):
            parts_list = [_split_text(sub) for sub in value]
            rules[key] = [part[0] for part in parts_list]
            text[key] = [part[1] for part in parts_list]
        else:
            rules[key] = value
    return rules, (text or None)


def _signature(definition: Mapping[str, Any]) -> object:
    meta = definition.get("_meta")
    return meta.get(IDENTITY_META) if isinstance(meta, Mapping) else None


def _key(value: object) -> bytes:
    """A value as canonical bytes: ``true`` and ``1`` are different enum members."""
    try:
        return canonical_bytes(value)
    except Unpinnable:
        return repr(value).encode()


def _same(a: object, b: object) -> bool:
    return a is b or _key(a) == _key(b)
