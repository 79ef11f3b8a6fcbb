"""The route sections of upstream resilience: ``circuit_breaker`` and ``health_check``.

What they mean is in ``gateway.upstream.resilience``; their defaults are in ``model``.
"""

from __future__ import annotations

import re
from typing import Final

from .model import CircuitBreakerConfig, HealthCheckConfig
from .reader import (
    INVALID,
    Cursor,
    FieldSpec,
    Parsed,
    accepts,
    build_from,
    integer_in,
    one_of,
    or_env,
    positive_seconds,
    read_section,
    section_schema,
    text,
)
from .yamlsource import YamlNode

__all__ = ["parse_circuit_breaker", "parse_health_check"]

_WHITESPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")

_CIRCUIT_BREAKER_FIELDS: Final = (
    FieldSpec("failures", integer_in(1, None)),
    FieldSpec("open_s", positive_seconds),
)


@accepts(section_schema(_CIRCUIT_BREAKER_FIELDS))
def parse_circuit_breaker(node: YamlNode, at: Cursor) -> Parsed[CircuitBreakerConfig]:
    return build_from(CircuitBreakerConfig, read_section(node, at, _CIRCUIT_BREAKER_FIELDS))


@accepts(or_env({"type": "string", "pattern": "^/[^?#]*$"}))
def parse_health_path(node: YamlNode, at: Cursor) -> Parsed[str]:
    """An absolute path on the upstream's origin (no query or fragment)."""
    value = text(node, at)
    if value is INVALID:
        return INVALID
    if not value.startswith("/") or "?" in value or "#" in value or _WHITESPACE_OR_CONTROL.search(value):
        return at.problem(node.line, "must be a path starting with '/', without query, fragment or spaces")
    return value


_HEALTH_CHECK_FIELDS: Final = (
    FieldSpec("path", parse_health_path, required=True),
    FieldSpec("method", one_of("GET", "POST")),
    FieldSpec("interval_s", positive_seconds),
    FieldSpec("timeout_s", positive_seconds),
    FieldSpec("failures", integer_in(1, None)),
)


@accepts(section_schema(_HEALTH_CHECK_FIELDS))
def parse_health_check(node: YamlNode, at: Cursor) -> Parsed[HealthCheckConfig]:
    return build_from(HealthCheckConfig, read_section(node, at, _HEALTH_CHECK_FIELDS))
