"""The ``tracing``, ``metrics`` and ``audit`` sections: where spans, metric pushes and the audit
trail go (OTLP/HTTP collectors, a file), and the key that signs the trail.

Each is off unless written. Everything a collector or a key needs is checked here, at start-up:
an endpoint is an http(s) URL, a header value is a secret (``{env: NAME}`` or ``{file: path}``),
the audit key loads as an Ed25519 private key, the audit file's folder exists.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from ..secret import Secret
from .fields import parse_header_name, parse_secret, url_as_written
from .model import AuditConfig, OtlpConfig
from .reader import (
    INVALID,
    Cursor,
    FieldSpec,
    Parsed,
    Parser,
    accepts,
    integer_in,
    non_empty_text,
    one_of,
    or_env,
    positive_seconds,
    read_section,
    section_schema,
    shown,
    text,
    wrong_type,
)
from .yamlsource import YamlMapping, YamlNode, YamlRejected, YamlScalar

__all__ = ["AUDIT_FIELDS", "METRICS_FIELDS", "TRACING_FIELDS", "load_audit_key", "parse_audit", "parse_otlp"]

# A collector in the same cluster is often plain http; no token ever goes there (headers are
# the collector's own credentials), so http is allowed anywhere.
_collector_url = url_as_written(https_unless_loopback=False)


@accepts({"type": "object", "additionalProperties": parse_secret.schema})
def parse_otlp_headers(node: YamlNode, at: Cursor) -> Parsed[tuple[tuple[str, Secret], ...]]:
    """``{header-name: secret}``: a collector's API key never has to be written in the file."""
    if isinstance(node, YamlRejected):
        return INVALID
    if not isinstance(node, YamlMapping):
        return at.problem(node.line, wrong_type(node, "a mapping of header names to secrets"))
    headers: list[tuple[str, Secret]] = []
    complete = True
    for entry in node.entries:
        name = parse_header_name(YamlScalar(entry.key, entry.key_line), at.key(entry.key))
        value = parse_secret(entry.value, at.key(entry.key))
        if name is INVALID or value is INVALID:
            complete = False
            continue
        headers.append((name.lower(), value))
    return tuple(headers) if complete else INVALID


_OTLP_FIELDS: Final = (
    FieldSpec("endpoint", _collector_url, required=True),
    FieldSpec("headers", parse_otlp_headers),
    FieldSpec("timeout_s", positive_seconds),
    FieldSpec("compression", one_of("gzip", "none")),
)


@accepts(section_schema(_OTLP_FIELDS))
def parse_otlp(node: YamlNode, at: Cursor) -> Parsed[OtlpConfig]:
    section = read_section(node, at, _OTLP_FIELDS)
    if section is INVALID or not section.complete:
        return INVALID
    values = dict(section.values)
    values["endpoint"] = values["endpoint"].rstrip("/")
    return OtlpConfig(**values)


def _ratio() -> Parser[float]:
    def parse(node: YamlNode, at: Cursor) -> Parsed[float]:
        if isinstance(node, YamlRejected):
            return INVALID
        if not (
            isinstance(node, YamlScalar)
            and isinstance(node.value, int | float)
            and not isinstance(node.value, bool)
        ):
            return at.problem(node.line, wrong_type(node, "a number from 0 to 1"))
        value = float(node.value)
        if not math.isfinite(value) or not 0 <= value <= 1:
            return at.problem(node.line, f"{shown(node)} is out of range: a ratio from 0 to 1")
        return value

    return Parser(parse, or_env({"type": "number", "minimum": 0, "maximum": 1}))


TRACING_FIELDS: Final = (
    FieldSpec("otlp", parse_otlp, required=True),
    FieldSpec("sample_ratio", _ratio()),
    FieldSpec("service_name", non_empty_text),
)

METRICS_FIELDS: Final = (
    FieldSpec("otlp", parse_otlp, required=True),
    FieldSpec("interval_s", positive_seconds),
)


def load_audit_key(path: Path) -> Ed25519PrivateKey:
    """The audit trail's signing key; ``ValueError`` says why a file is not one."""
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc.strerror or exc.__class__.__name__}") from None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{str(path)!r} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(
            f"{str(path)!r} holds a {type(key).__name__.removeprefix('_')}; the audit trail is signed "
            "with Ed25519 (`openssl genpkey -algorithm ed25519 -out audit.pem`)"
        )
    return key


_AUDIT_KEY_FIELDS: Final = (
    FieldSpec("kid", non_empty_text, required=True),
    FieldSpec("file", non_empty_text, required=True),
)


@accepts(section_schema(_AUDIT_KEY_FIELDS))
def parse_audit_key(node: YamlNode, at: Cursor) -> Parsed[tuple[str, Path]]:
    """``{kid, file}``: loaded now, so a bad key stops the start, not the first seal."""
    section = read_section(node, at, _AUDIT_KEY_FIELDS)
    if section is INVALID or not section.complete:
        return INVALID
    path = Path(os.path.abspath(at.base_dir / section.values["file"]))
    try:
        load_audit_key(path)
    except ValueError as exc:
        return at.key("file").problem(section.nodes["file"].line, str(exc))
    return section.values["kid"], path


@accepts(non_empty_text.schema)
def parse_audit_file(node: YamlNode, at: Cursor) -> Parsed[Path]:
    """The trail's file (relative to the config's folder); its folder must exist."""
    value = text(node, at)
    if value is INVALID:
        return INVALID
    path = Path(os.path.abspath(at.base_dir / value))
    if path.is_dir():
        return at.problem(node.line, f"{str(path)!r} is a directory; the audit trail is a file")
    if not path.parent.is_dir():
        return at.problem(node.line, f"the folder of the audit file, {str(path.parent)!r}, does not exist")
    return path


AUDIT_FIELDS: Final = (
    FieldSpec("file", parse_audit_file),
    FieldSpec("otlp", parse_otlp),
    FieldSpec("signing_key", parse_audit_key, required=True),
    FieldSpec("segment_size", integer_in(1, 1_000_000)),
    FieldSpec("fsync", one_of("segment", "every_record")),
    FieldSpec("on_failure", one_of("allow", "deny")),
)

_ONE_SINK: Final = {"oneOf": [{"required": ["file"]}, {"required": ["otlp"]}]}


@accepts({**section_schema(AUDIT_FIELDS), **_ONE_SINK})
def parse_audit(node: YamlNode, at: Cursor) -> Parsed[AuditConfig]:
    section = read_section(node, at, AUDIT_FIELDS)
    if section is INVALID:
        return INVALID
    sinks = [key for key in ("file", "otlp") if key in section.present]
    if len(sinks) != 1:
        message = "the audit trail goes to a file or to an OTLP collector: write exactly one of file, otlp"
        return at.problem(section.line, message)
    if not section.complete:
        return INVALID
    values = dict(section.values)
    kid, key_path = values.pop("signing_key")
    return AuditConfig(signing_key=key_path, key_id=kid, **values)
