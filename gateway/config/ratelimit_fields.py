"""The ``rate_limits`` section, and the checks between its limits and the routes that name them.

``rate_limits`` holds the store (``backend: memory`` or ``backend: {redis: {...}}``) and the named
limits, each one of ``rate: 10/min`` (token bucket, with ``burst``), ``quota: 10000/day`` (fixed
window) or ``concurrent: 4``, keyed on request facts. What they mean is in ``gateway.ratelimit``.
Routes (``limits``, ``unauthenticated_limits``) and rules (``limits``) refer to limits by name;
``check_limit_references`` checks each reference once the whole file is read.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from ..ratelimit.redis_address import redis_address
from ..ratelimit.spec import (
    KEY_FIELDS,
    Algorithm,
    Backend,
    Concurrency,
    FailMode,
    FixedWindow,
    KeyField,
    LimitSpec,
    MemoryBackend,
    RateLimitsConfig,
    RedisBackend,
    TokenBucket,
)
from ..secret import Secret
from .fields import parse_secret
from .reader import (
    ENV_REFERENCE,
    INVALID,
    Cursor,
    FieldSpec,
    Parsed,
    Section,
    accepts,
    build_from,
    integer_in,
    list_of,
    one_key_schema,
    one_of,
    or_env,
    positive_seconds,
    read_section,
    section_schema,
    shown_as,
    text,
    wrong_type,
)
from .rule_fields import RULE_SECTIONS
from .yamlsource import YamlMapping, YamlNode, YamlRejected, YamlScalar, YamlSequence

__all__ = ["check_limit_references", "parse_rate_limits", "parse_window"]

# =========================================================================== windows


# `N/<unit>`: the unit in seconds. `N/<k>s` (e.g. 100/30s) is parsed separately.
_UNITS: Final = {"s": 1.0, "sec": 1.0, "min": 60.0, "hour": 3600.0, "day": 86400.0}
_WINDOW = re.compile(r"(?P<count>[0-9]+)\s*/\s*(?:(?P<seconds>[0-9]+)s|(?P<unit>[a-z]+))")
_WINDOW_SYNTAX: Final = "N/s, N/sec, N/min, N/hour, N/day or N/<seconds>s (e.g. 100/30s)"
_WINDOW_SCHEMA: Final = or_env(
    {"type": "string", "pattern": r"^\s*[0-9]+\s*/\s*([0-9]+s|s|sec|min|hour|day)\s*$"}
)


def parse_window(written: str) -> tuple[int, float] | str:
    """``10/min`` as (10, 60.0): a positive count and its window in seconds, or why not."""
    match = _WINDOW.fullmatch(written.strip())
    unit = match["unit"] if match is not None else None
    if match is None or (unit is not None and unit not in _UNITS):
        return f"is not a count per time: write {_WINDOW_SYNTAX}"
    count = int(match["count"])
    window_s = _UNITS[unit] if unit is not None else float(match["seconds"])
    if count < 1:
        return "the count must be a positive integer"
    if window_s <= 0:
        return "the window must be at least 1 second"
    return count, window_s


@accepts(_WINDOW_SCHEMA)
def _window(node: YamlNode, at: Cursor) -> Parsed[tuple[int, float]]:
    if isinstance(node, YamlRejected):
        return INVALID
    if not (isinstance(node, YamlScalar) and isinstance(node.value, str)):
        return at.problem(node.line, wrong_type(node, f"a count per time ({_WINDOW_SYNTAX})"))
    parsed = parse_window(node.value)
    if isinstance(parsed, str):
        return at.problem(node.line, f"{shown_as(node, node.value)} {parsed}")
    return parsed


# =========================================================================== one limit


_KEY_FIELD_NAMES: Final[dict[str, KeyField]] = {field: field for field in KEY_FIELDS}


@accepts(or_env({"enum": list(KEY_FIELDS)}))
def parse_key_field(node: YamlNode, at: Cursor) -> Parsed[KeyField]:
    value = text(node, at)
    if value is INVALID:
        return INVALID
    field = _KEY_FIELD_NAMES.get(value)
    if field is None:
        close = difflib.get_close_matches(value, KEY_FIELDS, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(KEY_FIELDS)}"
        return at.problem(node.line, f"unknown key field {shown_as(node, value)} ({hint})")
    return field


_ALGORITHM_KEYS: Final = ("rate", "quota", "concurrent")
_LIMIT_FIELDS: Final = (
    FieldSpec("rate", _window),
    FieldSpec("burst", integer_in(1, None)),
    FieldSpec("quota", _window),
    FieldSpec("concurrent", integer_in(1, None)),
    FieldSpec("key", list_of(parse_key_field, unique="key field"), required=True),
    FieldSpec("fail", one_of("closed", "open")),
)
# What _limit checks between the keys, for editors: exactly one algorithm; burst with a rate.
_LIMIT_RULES: Final = {
    "oneOf": [{"required": [key]} for key in _ALGORITHM_KEYS],
    "dependencies": {"burst": ["rate"]},
}


def _algorithm(section: Section, at: Cursor) -> Parsed[Algorithm]:
    """The one algorithm a limit's keys choose (its values already parsed)."""
    chosen = [key for key in _ALGORITHM_KEYS if key in section.present]
    if len(chosen) != 1:
        return at.problem(
            section.line,
            "choose exactly one of: rate (a token bucket), quota (a fixed window), concurrent",
        )
    if "burst" in section.present and chosen != ["rate"]:
        burst = section.nodes.get("burst")
        return at.key("burst").problem(burst.line if burst else section.line, "burst goes with rate")
    if not section.complete:
        return INVALID
    values = section.values
    if "rate" in values:
        count, window_s = values["rate"]
        # Without a burst, the bucket holds one window's worth: `10/min` allows 10 at once.
        return TokenBucket(rate_per_s=count / window_s, burst=values.get("burst", count))
    if "quota" in values:
        count, window_s = values["quota"]
        return FixedWindow(count=count, window_s=window_s)
    return Concurrency(max_in_flight=values["concurrent"])


# A limit's name is its metric label and its RateLimit-Policy item name, so it stays a token.
_LIMIT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def _limit(name: str, line: int, node: YamlNode, at: Cursor) -> Parsed[LimitSpec]:
    section = read_section(node, at, _LIMIT_FIELDS)
    if section is INVALID:
        return INVALID
    algorithm = _algorithm(section, at)
    if algorithm is INVALID:
        return INVALID
    fail: FailMode = "open" if section.values.get("fail") == "open" else "closed"
    return LimitSpec(name, algorithm, section.values["key"], fail, line)


@accepts(
    {
        "type": "object",
        "propertyNames": {"pattern": f"^{_LIMIT_NAME.pattern}$"},
        "additionalProperties": {**section_schema(_LIMIT_FIELDS), **_LIMIT_RULES},
    }
)
def _limits(node: YamlNode, at: Cursor) -> Parsed[tuple[LimitSpec, ...]]:
    """``name: {rate | quota | concurrent, key, ...}`` for each limit, in the file's order."""
    if isinstance(node, YamlRejected):
        return INVALID
    if not isinstance(node, YamlMapping):
        return at.problem(node.line, wrong_type(node, "a mapping of name: {limit}"))
    limits: list[Parsed[LimitSpec]] = []
    for entry in node.entries:
        entry_at = at.key(entry.key)
        if not _LIMIT_NAME.fullmatch(entry.key):
            limits.append(
                entry_at.problem(
                    entry.key_line,
                    "a limit name is a letter, then up to 63 of A-Z a-z 0-9 _ . - "
                    "(it is a metric label and a RateLimit-Policy name)",
                )
            )
            continue
        limits.append(_limit(entry.key, entry.key_line, entry.value, entry_at))
    complete = [limit for limit in limits if isinstance(limit, LimitSpec)]
    return tuple(complete) if len(complete) == len(limits) else INVALID


# =========================================================================== the store


_REDIS_URL_SCHEMA: Final = {"type": "string", "pattern": "^[Rr][Ee][Dd][Ii][Ss][Ss]?://"}


def redis_url_problem(url: str) -> str | None:
    """Why ``url`` is not a Redis server's URL the gateway can use, if it is not (never echoing
    it: it may hold a password)."""
    try:
        address = redis_address(url)
    except ValueError as error:
        return str(error)
    for option, path in (
        ("ssl_ca_certs", address.ca_file),
        ("ssl_certfile", address.cert_file),
        ("ssl_keyfile", address.key_file),
    ):
        if path is not None and not os.path.isfile(path):
            return f"names an {option} file that does not exist"
    return None


@accepts({"anyOf": [or_env(_REDIS_URL_SCHEMA), parse_secret.schema]})
def parse_redis_url(node: YamlNode, at: Cursor) -> Parsed[Secret]:
    """``{env: NAME}``, ``{file: path}``, or a URL written inline if it holds no password."""
    if isinstance(node, YamlScalar) and isinstance(node.value, str):
        # A password written in the file would be read by everyone who reads the config; from
        # ${NAME} it came from the environment, like {env: NAME}.
        if "@" in node.value and not node.env_refs:
            return at.problem(
                node.line, "a URL with credentials is a secret: write {env: NAME} or {file: path}"
            )
        url: Parsed[Secret] = Secret(node.value)
    else:
        url = parse_secret(node, at)
    if url is INVALID:
        return INVALID
    problem = redis_url_problem(url.reveal())
    if problem is not None:
        return at.problem(node.line, f"the Redis URL {problem}")
    return url


_REDIS_FIELDS: Final = (
    FieldSpec("url", parse_redis_url, required=True),
    FieldSpec("timeout_s", positive_seconds),
    FieldSpec("pool_size", integer_in(1, None)),
    FieldSpec("key_prefix", text),
    FieldSpec("retry_s", positive_seconds),
    FieldSpec("lease_s", positive_seconds),
)


@accepts(
    {"anyOf": [{"const": "memory"}, one_key_schema({"redis": section_schema(_REDIS_FIELDS)}), ENV_REFERENCE]}
)
def parse_backend(node: YamlNode, at: Cursor) -> Parsed[Backend]:
    """``memory``, or ``{redis: {url, ...}}``."""
    if isinstance(node, YamlRejected):
        return INVALID
    if isinstance(node, YamlScalar) and node.value == "memory":
        return MemoryBackend()
    if not (isinstance(node, YamlMapping) and len(node.entries) == 1 and node.entries[0].key == "redis"):
        return at.problem(node.line, "choose one of: memory, {redis: {url: …}}")
    backend: Parsed[Backend] = build_from(
        RedisBackend, read_section(node.entries[0].value, at.key("redis"), _REDIS_FIELDS)
    )
    return backend


_RATE_LIMITS_FIELDS: Final = (
    FieldSpec("backend", parse_backend),
    FieldSpec("limits", _limits),
)


@accepts(section_schema(_RATE_LIMITS_FIELDS))
def parse_rate_limits(node: YamlNode, at: Cursor) -> Parsed[RateLimitsConfig]:
    return build_from(RateLimitsConfig, read_section(node, at, _RATE_LIMITS_FIELDS))


# =========================================================================== references


@dataclass(frozen=True, slots=True)
class _Reference:
    """One name in a route's ``limits`` or ``unauthenticated_limits``, or a rule's ``limits``."""

    name: str
    line: int
    at: Cursor
    unauthenticated: bool


def _names_in(node: YamlNode | None, at: Cursor, *, unauthenticated: bool = False) -> Iterator[_Reference]:
    if not isinstance(node, YamlSequence):
        return
    for index, item in enumerate(node.items):
        if isinstance(item, YamlScalar) and isinstance(item.value, str):
            yield _Reference(item.value, item.line, at.item(index), unauthenticated)


def _route_references(route: Section, at: Cursor) -> Iterator[_Reference]:
    """The limit names a route section writes, where it writes them (only keys that parsed)."""
    yield from _names_in(route.nodes.get("limits"), at.key("limits"))
    yield from _names_in(
        route.nodes.get("unauthenticated_limits"), at.key("unauthenticated_limits"), unauthenticated=True
    )
    for section in RULE_SECTIONS:
        rules = route.nodes.get(section)
        if not isinstance(rules, YamlMapping):
            continue
        for entry in rules.entries:
            if isinstance(entry.value, YamlMapping):
                written = entry.value.get("limits")
                rule_at = at.key(section).key(entry.key).key("limits")
                yield from _names_in(written.value if written else None, rule_at)


# A request refused with 401 has no verified token, so none of these facts.
_IDENTITY_FIELDS: Final = ("issuer", "subject", "client_id", "tool", "method")


def _reference_problem(limit: LimitSpec, unauthenticated: bool) -> str | None:
    if not unauthenticated:
        if "source_address" in limit.key:
            return (
                f"limit {limit.name!r} is keyed on source_address, which only unauthenticated_limits "
                "may use: count authenticated requests by who calls (subject, client_id)"
            )
        return None
    if isinstance(limit.algorithm, Concurrency):
        return (
            f"limit {limit.name!r} is a concurrency limit: a request refused with 401 is answered "
            "at once and holds nothing in flight; use rate or quota"
        )
    identity = [field for field in limit.key if field in _IDENTITY_FIELDS]
    if identity:
        return (
            f"limit {limit.name!r} is keyed on {', '.join(identity)}, which a request refused with 401 "
            "does not have: key unauthenticated limits on source_address (and route)"
        )
    return None


def check_limit_references(config: RateLimitsConfig, routes: tuple[Section, ...], at: Cursor) -> bool:
    """Every limit a route or rule names exists and fits where it is named; False if not."""
    declared = [limit.name for limit in config.limits]
    fine = True
    for index, route in enumerate(routes):
        for reference in _route_references(route, at.item(index)):
            limit = config.get(reference.name)
            if limit is None:
                close = difflib.get_close_matches(reference.name, declared, n=1)
                hint = (
                    f"did you mean '{close[0]}'?"
                    if close
                    else f"declared: {', '.join(declared)}"
                    if declared
                    else "rate_limits.limits declares none"
                )
                reference.at.problem(reference.line, f"unknown rate limit {reference.name!r} ({hint})")
                fine = False
                continue
            problem = _reference_problem(limit, reference.unauthenticated)
            if problem is not None:
                reference.at.problem(reference.line, problem)
                fine = False
    return fine
