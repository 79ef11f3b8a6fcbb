"""What of a tool's definition is pinned, and its fingerprint.

A tool is pinned by what a model reads and what bounds a call: ``name``, ``title``,
``description``, ``inputSchema``, ``outputSchema`` and ``annotations``, plus the signature the
server-identity extension puts in ``_meta["io.modelcontextprotocol/server-identity"]`` (ext-auth
draft "Server Identity and Tool Attestation" §4.1) when present: a re-signed tool is a changed
tool. Other ``_meta`` keys are the server's bookkeeping and vary without changing the contract.

The fingerprint is ``sha256:`` and the hex SHA-256 of the RFC 8785 canonical JSON of those
fields, so key order and whitespace never change it and every other change does. A definition
with no canonical form (an integer past 2**53, which JSON parsers disagree on) has no fingerprint:
the caller treats it as changed, never as matching.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

import rfc8785

__all__ = [
    "IDENTITY_META",
    "PINNED_FIELDS",
    "Unpinnable",
    "canonical_bytes",
    "fingerprint",
    "pinned_definition",
]

# The snake_case spellings too, when a listing has them: the Python SDK's models take a field by
# its name as well as its alias, so a lenient client reads `output_schema` as the output schema.
PINNED_FIELDS: Final = (
    "name",
    "title",
    "description",
    "inputSchema",
    "outputSchema",
    "annotations",
    "input_schema",
    "output_schema",
)
IDENTITY_META: Final = "io.modelcontextprotocol/server-identity"
PREFIX: Final = "sha256:"


class Unpinnable(ValueError):
    """A listed tool that cannot be pinned: not an object, no string name, no canonical form."""


def pinned_definition(tool: object) -> dict[str, Any]:
    """The pinned fields of a listed tool, as listed (absent fields stay absent)."""
    if not isinstance(tool, Mapping):
        raise Unpinnable("a listed tool is not an object")
    name = tool.get("name")
    if not isinstance(name, str):
        raise Unpinnable("a listed tool has no string name")
    pinned = {key: tool[key] for key in PINNED_FIELDS if key in tool}
    meta = tool.get("_meta")
    if isinstance(meta, Mapping) and IDENTITY_META in meta:
        pinned["_meta"] = {IDENTITY_META: meta[IDENTITY_META]}
    return pinned


def canonical_bytes(value: object) -> bytes:
    """The RFC 8785 form of a JSON value; ``Unpinnable`` for one without (NaN, an integer past
    2**53 - 1, a key that is not a string)."""
    try:
        return rfc8785.dumps(value)  # type: ignore[arg-type]  # checked by rfc8785 itself
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise Unpinnable(f"the definition has no canonical JSON form ({exc})") from exc


# A tool definition larger than this (as JSON) is not pinned: no real tool needs a megabyte to
# describe itself, and the RFC 8785 encoder is pure Python (8 MB of quote characters took 3 s).
MAX_DEFINITION_BYTES: Final = 1024 * 1024


def fingerprint(definition: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of a pinned definition's canonical JSON; ``Unpinnable`` without one, or
    for one larger than ``MAX_DEFINITION_BYTES``."""
    try:
        size = len(json.dumps(definition))  # the C encoder: a cheap bound before the pure-Python one
    except (TypeError, ValueError) as exc:
        raise Unpinnable(f"the definition has no canonical JSON form ({exc})") from exc
    if size > MAX_DEFINITION_BYTES:
        raise Unpinnable(f"the definition is larger than {MAX_DEFINITION_BYTES} bytes as JSON")
    return PREFIX + hashlib.sha256(canonical_bytes(dict(definition))).hexdigest()
