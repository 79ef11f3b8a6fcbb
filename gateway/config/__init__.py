"""The gateway's YAML config, parsed once into frozen, typed objects.

Everything downstream receives the dataclasses below; no dicts leave this module.  Every
problem in a file is collected and reported together as ``file:line: key.path: message``.

How parsing is organised (so that new keys are cheap to add):

* ``yaml_loader`` turns the text into a frozen tree of nodes with line numbers, having
  already dealt with duplicate keys, tags, anchors and ``${ENV}`` substitution.
* Each section (the top level, ``listen``, an issuer, a route) is a tuple of ``FieldSpec``
  specs: key, value parser, required or not.  ``read_section`` applies them, reporting
  unknown keys (with a "did you mean"), missing required keys and each parser's problems.
  Optional keys that are absent get the *dataclass* default, so defaults live in one place.
  Field keys are the dataclass attribute names.
* A value parser is ``(node, cursor) -> value | INVALID``; it reports its own problems
  through the cursor, which knows the key path.
* Checks that span several entries (duplicate route paths, default resources) run once
  the sections are read, in ``_build_gateway``.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, TypeAlias, TypeVar
from urllib.parse import SplitResult, unquote, urlsplit

from ..mcp.policy import Default, GlobError, RoutePolicy, Rule, compile_glob, shadowing_rule
from ..secret import Secret
from .yamlsource import (
    YamlMapping,
    YamlNode,
    YamlRejected,
    YamlScalar,
    YamlSequence,
    join_index,
    join_key,
    load_strict_yaml,
)

__all__ = [
    "AdminConfig",
    "ConfigError",
    "ConfigProblem",
    "GatewayConfig",
    "IssuerConfig",
    "JwksDiscover",
    "JwksFile",
    "JwksSource",
    "JwksUrl",
    "ListenConfig",
    "LoggingConfig",
    "RouteConfig",
    "load_config",
    "parse_config_text",
]


# =========================================================================== public API


class ConfigProblem(NamedTuple):
    file: str
    line: int  # 1-based
    key_path: str  # e.g. "routes[1].upstream"; "" for whole-file problems
    message: str

    def __str__(self) -> str:
        if self.key_path:
            return f"{self.file}:{self.line}: {self.key_path}: {self.message}"
        return f"{self.file}:{self.line}: {self.message}"


class ConfigError(Exception):
    """The config is unusable; ``problems`` lists every reason, in file order."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(sorted(problems, key=lambda p: (p.file, p.line)))
        super().__init__("\n".join(str(problem) for problem in self.problems))


@dataclass(frozen=True, slots=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin listener: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``; off unless set."""

    host: str = "127.0.0.1"
    port: int = 9090


LogFormat = Literal["json", "console"]
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    format: LogFormat = "json"
    level: str = "info"  # one of LOG_LEVELS
    include_subject: bool = True  # false: no subject or client_id in request lines and audit events


@dataclass(frozen=True, slots=True)
class JwksDiscover:
    """Find ``jwks_uri`` through RFC 8414, then OpenID Connect discovery, from the issuer."""


@dataclass(frozen=True, slots=True)
class JwksUrl:
    url: str


@dataclass(frozen=True, slots=True)
class JwksFile:
    path: Path  # absolute; relative paths in the file are resolved against its folder


JwksSource: TypeAlias = JwksDiscover | JwksUrl | JwksFile


ClientAuthMethod = Literal["client_secret_basic", "client_secret_post"]
ScopeMode = Literal["operation", "caller", "none"]


@dataclass(frozen=True, slots=True)
class IntrospectionConfig:
    """RFC 7662: opaque tokens checked at the issuer's introspection endpoint."""

    endpoint: str
    client_id: str
    client_secret: Secret
    auth_method: ClientAuthMethod = "client_secret_basic"
    cache_max_s: float = 60.0  # a result is cached until the earlier of the token's exp and this
    timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    issuer: str  # exactly as written: the ``iss`` claim is compared byte for byte
    algorithms: tuple[str, ...]
    jwks: JwksSource | None  # exactly one of jwks and introspection
    leeway_s: float = 30.0
    require_at_jwt_typ: bool = True  # RFC 9068: access tokens carry typ "at+jwt"
    jwks_refresh_cooldown_s: float = 30.0  # an unknown kid refetches the JWKS at most once per cooldown
    jwks_max_age_s: float = 600.0  # keys are refetched in the background after this age
    http_timeout_s: float = 5.0
    introspection: IntrospectionConfig | None = None


# --- Downstream credentials: a closed choice per route (`credential:`) -----------------------


@dataclass(frozen=True, slots=True)
class NoCredential:
    """``credential: none``: nothing is added to the upstream request."""


@dataclass(frozen=True, slots=True)
class StaticCredential:
    """``{static: {header: X-Api-Key, value: {env: NAME}}}``: a secret the upstream expects."""

    header: str
    value: Secret


@dataclass(frozen=True, slots=True)
class MintedCredential:
    """``{minted: {audience: …}}``: a short-lived RFC 9068 JWT signed by the gateway (see ``minting``)."""

    audience: str
    ttl_s: float = 300.0
    # operation: the caller's scopes narrowed to what this operation needs; caller: all of the
    # caller's scopes; none: no scope claim.
    scope: ScopeMode = "operation"
    # The same caller token and scopes reuse one minted token for this long (0: a fresh token per
    # request), and never past the middle of the minted token's life.
    reuse_s: float = 60.0


@dataclass(frozen=True, slots=True)
class TokenExchangeCredential:
    """``{token_exchange: {…}}``: RFC 8693 at the authorization server's token endpoint."""

    token_endpoint: str
    client_id: str
    client_secret: Secret
    auth_method: ClientAuthMethod = "client_secret_basic"
    audience: str | None = None  # at least one of audience and resource
    resource: str | None = None
    scope: ScopeMode = "operation"
    timeout_s: float = 5.0
    cache_size: int = 10_000
    refresh_margin_s: float = 30.0  # a cached token is used until this long before it expires


Credential = NoCredential | StaticCredential | MintedCredential | TokenExchangeCredential


@dataclass(frozen=True, slots=True)
class SigningKeyConfig:
    """One private key the gateway signs minted tokens with (PEM file)."""

    kid: str
    alg: str  # ES256, RS256 or EdDSA
    path: Path


@dataclass(frozen=True, slots=True)
class MintingConfig:
    """The gateway as an issuer of downstream tokens (``credential: {minted: …}``)."""

    issuer: str
    keys: tuple[SigningKeyConfig, ...]
    active_kid: str  # signs new tokens; the others stay published for verification (rotation)


# kw_only: ``resource`` has no dataclass default (it is derived from public_url + path), yet
# follows fields that do; keyword-only construction also keeps call sites readable.
@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    path: str  # leading "/", no trailing "/", never "/" itself
    upstream: str  # http(s) URL
    scopes: tuple[str, ...] = ()
    resource: str  # RFC 8707 / RFC 9728 resource identifier; default public_url + path
    resource_name: str | None = None  # human-readable name for the protected resource metadata
    max_body_bytes: int = 4 * 1024 * 1024
    connect_timeout_s: float = 5.0
    response_timeout_s: float = 300.0  # until the upstream's response headers arrive
    credential: Credential = field(default_factory=lambda: NoCredential())
    # Built from the route keys tools, resources, prompts, methods and default.
    policy: RoutePolicy = field(default_factory=RoutePolicy)
    scopes_supported: tuple[str, ...] | None = None  # explicit PRM scopes; None: derived from rules
    audit_arguments: bool = False  # include tool arguments in audit events


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    source: Path  # absolute path of the config file
    listen: ListenConfig
    public_url: str  # no trailing slash
    issuers: tuple[IssuerConfig, ...]
    routes: tuple[RouteConfig, ...]
    allowed_origins: tuple[str, ...] = ()
    minting: MintingConfig | None = None
    admin: AdminConfig | None = None  # no admin listener unless configured
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # On SIGTERM/SIGINT: how long in-flight requests and streams may run before they are cut.
    shutdown_grace_s: float = 30.0

    def route_for_path(self, path: str) -> RouteConfig | None:
        """The route whose path is ``path`` (one trailing slash ignored), if any."""
        wanted = path[:-1] if path.endswith("/") else path
        return next((route for route in self.routes if route.path == wanted), None)


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read, validate and freeze the config at ``path``; raises ``ConfigError``."""
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        reason = error.strerror or error.__class__.__name__
        raise ConfigError([ConfigProblem(file, 1, "", f"cannot read config file: {reason}")]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError([ConfigProblem(file, line, "", "config file is not valid UTF-8")]) from None
    return parse_config_text(text, Path(path), os.environ if env is None else env)


def parse_config_text(text: str, source: Path, env: Mapping[str, str]) -> GatewayConfig:
    """Parse config ``text`` as if read from ``source`` (whose folder anchors relative paths)."""
    file = str(source)
    absolute_source = Path(os.path.abspath(source))
    document = load_strict_yaml(text, env)
    problems = _Problems()
    for issue in document.issues:
        problems.add(issue.line, issue.key_path, issue.message)
    root = document.root
    if root is None or (isinstance(root, YamlScalar) and root.value is None):
        if not document.issues:
            problems.add(1, "", "config file is empty")
        raise ConfigError(problems.for_file(file))

    cursor = _Cursor("", problems, absolute_source.parent, env)
    if not isinstance(root, YamlMapping):
        if not isinstance(root, YamlRejected):
            cursor.problem(
                root.line, "the top level must be a mapping of settings (public_url, issuers, routes, ...)"
            )
        raise ConfigError(problems.for_file(file))

    top = read_section(root, cursor, _TOP_FIELDS)
    config = _build_gateway(top, cursor, absolute_source)
    if problems or config is INVALID:
        raise ConfigError(problems.for_file(file))
    return config


# =========================================================================== machinery


class _Invalid(enum.Enum):
    """Marks a value that failed to parse; its problem has already been reported."""

    INVALID = "invalid"


INVALID: Final = _Invalid.INVALID
T = TypeVar("T")
Parsed: TypeAlias = T | _Invalid


class _Problems:
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
class _Cursor:
    """Where a parser is in the document: the key path, plus where to report and resolve."""

    path: str
    problems: _Problems
    base_dir: Path  # the config file's folder
    env: Mapping[str, str] = field(default_factory=dict)  # for {env: NAME} secrets

    def key(self, name: str) -> _Cursor:
        return _Cursor(join_key(self.path, name), self.problems, self.base_dir, self.env)

    def item(self, index: int) -> _Cursor:
        return _Cursor(join_index(self.path, index), self.problems, self.base_dir, self.env)

    def problem(self, line: int, message: str) -> _Invalid:
        self.problems.add(line, self.path, message)
        return INVALID


ValueParser: TypeAlias = Callable[[YamlNode, _Cursor], Any]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One key of a section: its name (= dataclass attribute), parser, and whether required."""

    key: str
    parse: ValueParser
    required: bool = False


@dataclass(frozen=True, slots=True)
class _Section:
    """The keys of one mapping that parsed successfully, with the nodes they came from."""

    line: int
    values: dict[str, Any]
    nodes: dict[str, YamlNode]
    complete: bool  # no problem inside this section
    present: frozenset[str] = frozenset()  # every known key written, whether it parsed or not


def read_section(node: YamlNode, at: _Cursor, fields: tuple[FieldSpec, ...]) -> Parsed[_Section]:
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
    return _Section(node.line, values, nodes, complete, written)


def section_of(fields: tuple[FieldSpec, ...]) -> Callable[[YamlNode, _Cursor], Parsed[_Section]]:
    """A value parser for a nested mapping described by ``fields``."""
    return lambda node, at: read_section(node, at, fields)


def build_from(cls: Callable[..., T], section: Parsed[_Section]) -> Parsed[T]:
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


def text(node: YamlNode, at: _Cursor) -> Parsed[str]:
    """A string, as written (possibly empty)."""
    if isinstance(node, YamlRejected):
        return INVALID
    if isinstance(node, YamlScalar) and isinstance(node.value, str):
        return node.value
    return at.problem(node.line, wrong_type(node, "a string"))


def non_empty_text(node: YamlNode, at: _Cursor) -> Parsed[str]:
    value = text(node, at)
    if value is INVALID:
        return INVALID
    if not value.strip():
        return at.problem(node.line, "must not be empty")
    return value


def boolean(node: YamlNode, at: _Cursor) -> Parsed[bool]:
    if isinstance(node, YamlRejected):
        return INVALID
    if isinstance(node, YamlScalar) and isinstance(node.value, bool):
        return node.value
    return at.problem(node.line, wrong_type(node, "true or false"))


def integer_in(low: int, high: int | None) -> ValueParser:
    """An int within [low, high]; YAML booleans are not integers here."""

    def parse(node: YamlNode, at: _Cursor) -> Parsed[int]:
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

    return parse


def seconds(*, allow_zero: bool) -> ValueParser:
    """A finite duration in seconds (int or float); zero only if ``allow_zero``."""
    requirement = "zero or more" if allow_zero else "greater than zero"

    def parse(node: YamlNode, at: _Cursor) -> Parsed[float]:
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

    return parse


positive_seconds = seconds(allow_zero=False)
non_negative_seconds = seconds(allow_zero=True)


def list_of(
    item: ValueParser, *, non_empty: str | None = None, unique: str | None = None
) -> Callable[[YamlNode, _Cursor], Parsed[tuple[Any, ...]]]:
    """A list whose items all parse with ``item``.

    ``non_empty``: message if the list is empty.  ``unique``: noun for a duplicate-item problem
    (items are compared after parsing, i.e. after normalisation).
    """

    def parse(node: YamlNode, at: _Cursor) -> Parsed[tuple[Any, ...]]:
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

    return parse


# =========================================================================== URLs


def is_loopback_host(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: the only hosts where plain http is acceptable."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_http_url(value: str) -> SplitResult | str:
    """Split an absolute http(s) URL, or return why it is not one (without echoing it)."""
    if any(char.isspace() for char in value):
        return "must not contain whitespace"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a malformed or out-of-range port
    except ValueError:
        return "is not a valid URL (check the host and port)"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "must be an absolute http(s) URL"
    return parts


def url_problems(
    value: str, *, https_unless_loopback: bool, allow_query: bool, credentials_message: str | None = None
) -> str | SplitResult:
    """Common URL rules; returns the split URL or the first problem found."""
    parts = split_http_url(value)
    if isinstance(parts, str):
        return parts
    if "@" in parts.netloc:
        return credentials_message or "must not contain credentials (user:password@)"
    if "#" in value:
        return "must not have a fragment"
    if "?" in value and not allow_query:
        return "must not have a query"
    if (
        https_unless_loopback
        and parts.scheme.lower() == "http"
        and not is_loopback_host(parts.hostname or "")
    ):
        return "must be https (http only for loopback)"
    return parts


def host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_public_url(node: YamlNode, at: _Cursor) -> Parsed[str]:
    """https URL (http for loopback) without query or fragment; scheme/host lowercased, no trailing '/'."""
    value = text(node, at)
    if value is INVALID:
        return INVALID
    parts = url_problems(value, https_unless_loopback=True, allow_query=False)
    if isinstance(parts, str):
        return at.problem(node.line, parts)
    port = f":{parts.port}" if parts.port is not None else ""
    host = host_for_url(parts.hostname or "")
    return f"{parts.scheme.lower()}://{host}{port}{parts.path}".rstrip("/")


def parse_issuer_identifier(node: YamlNode, at: _Cursor) -> Parsed[str]:
    """Validated like public_url but kept exactly as written: ``iss`` is compared byte for byte."""
    value = text(node, at)
    if value is INVALID:
        return INVALID
    parts = url_problems(value, https_unless_loopback=True, allow_query=False)
    if isinstance(parts, str):
        return at.problem(node.line, parts)
    return value


def parse_upstream(node: YamlNode, at: _Cursor) -> Parsed[str]:
    value = text(node, at)
    if value is INVALID:
        return INVALID
    parts = url_problems(
        value,
        https_unless_loopback=False,  # upstreams usually sit on a private network
        allow_query=True,
        credentials_message="put credentials in `credential`, not the URL",
    )
    if isinstance(parts, str):
        if parts in ("must be an absolute http(s) URL", "is not a valid URL (check the host and port)"):
            return at.problem(node.line, "upstream must be an http(s) URL")
        return at.problem(node.line, parts)
    return value


def url_as_written(*, https_unless_loopback: bool) -> ValueParser:
    """An absolute http(s) URL without fragment or credentials, kept exactly as written."""

    def parse(node: YamlNode, at: _Cursor) -> Parsed[str]:
        value = text(node, at)
        if value is INVALID:
            return INVALID
        parts = url_problems(value, https_unless_loopback=https_unless_loopback, allow_query=True)
        if isinstance(parts, str):
            return at.problem(node.line, parts)
        return value

    return parse


# RFC 8707 resource identifier (compared with `aud`, so never normalised).
parse_resource = url_as_written(https_unless_loopback=False)
# An authorization-server endpoint: https, or http on loopback.
endpoint_url = url_as_written(https_unless_loopback=True)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origin(node: YamlNode, at: _Cursor) -> Parsed[str]:
    """An exact browser origin, normalised the way browsers send the Origin header."""
    value = text(node, at)
    if value is INVALID:
        return INVALID
    if value.strip() == "*":
        return at.problem(
            node.line,
            "'*' is not allowed: list exact origins, because the Origin check is the "
            "protection against DNS rebinding and a wildcard disables it",
        )
    parts = url_problems(value, https_unless_loopback=False, allow_query=False)
    if isinstance(parts, str):
        return at.problem(node.line, f"origin {parts}")
    if parts.path:
        return at.problem(node.line, "an origin is scheme://host[:port], without a path or trailing slash")
    scheme = parts.scheme.lower()
    # Browsers never include the default port in Origin, so neither may the allow-list.
    port = f":{parts.port}" if parts.port is not None and parts.port != _DEFAULT_PORTS[scheme] else ""
    return f"{scheme}://{host_for_url(parts.hostname or '')}{port}"


# =========================================================================== issuers


SUPPORTED_ALGORITHMS: Final = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
_SYMMETRIC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})


def parse_algorithm(node: YamlNode, at: _Cursor) -> Parsed[str]:
    value = text(node, at)
    if value is INVALID:
        return INVALID
    if value in SUPPORTED_ALGORITHMS:
        return value
    if value.lower() == "none":
        return at.problem(node.line, "alg none is never accepted")
    if value.upper() in _SYMMETRIC_ALGORITHMS:
        return at.problem(node.line, "symmetric algorithms cannot be verified with a JWKS")
    same_but_case = [alg for alg in SUPPORTED_ALGORITHMS if alg.lower() == value.lower()]
    close = same_but_case or difflib.get_close_matches(value, SUPPORTED_ALGORITHMS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (supported: {', '.join(SUPPORTED_ALGORITHMS)})"
    return at.problem(node.line, f"unknown algorithm {shown_as(node, value)}{hint}")


parse_algorithms = list_of(
    parse_algorithm, non_empty="at least one algorithm is required", unique="algorithm"
)


def parse_discover(node: YamlNode, at: _Cursor) -> Parsed[JwksDiscover]:
    flag = boolean(node, at)
    if flag is INVALID:
        return INVALID
    if not flag:
        return at.problem(node.line, "must be true; to not use discovery, configure url or file instead")
    return JwksDiscover()


def parse_jwks_url(node: YamlNode, at: _Cursor) -> Parsed[JwksUrl]:
    value = endpoint_url(node, at)
    return INVALID if value is INVALID else JwksUrl(value)


def parse_jwks_file(node: YamlNode, at: _Cursor) -> Parsed[JwksFile]:
    """A JWKS file; relative paths are relative to the config file's folder, never the CWD."""
    value = non_empty_text(node, at)
    if value is INVALID:
        return INVALID
    path = Path(os.path.abspath(at.base_dir / value))
    if not path.is_file():
        reason = "is not a regular file" if path.exists() else "does not exist"
        return at.problem(node.line, f"JWKS file {shown_as(node, str(path))} {reason}")
    return JwksFile(path)


_JWKS_FIELDS: Final = (
    FieldSpec("discover", parse_discover),
    FieldSpec("url", parse_jwks_url),
    FieldSpec("file", parse_jwks_file),
)


def parse_jwks(node: YamlNode, at: _Cursor) -> Parsed[JwksSource]:
    """Exactly one of ``{discover: true}``, ``{url: ...}``, ``{file: ...}``."""
    if isinstance(node, YamlMapping):
        chosen = [spec.key for spec in _JWKS_FIELDS if node.get(spec.key) is not None]
        # Only unknown keys present: the unknown-key problem (with its suggestion) says it better.
        if len(chosen) > 1 or not node.entries:
            return at.problem(node.line, "choose exactly one of: discover, url, file")
    section = read_section(node, at, _JWKS_FIELDS)
    if section is INVALID or not section.complete or not section.values:
        return INVALID
    source: JwksSource = next(iter(section.values.values()))
    return source


def parse_secret(node: YamlNode, at: _Cursor) -> Parsed[Secret]:
    """``{env: NAME}`` or ``{file: path}``: secrets never have to be written in the file."""
    if isinstance(node, YamlMapping) and len(node.entries) == 1:
        entry = node.entries[0]
        if entry.key == "env":
            name = non_empty_text(entry.value, at.key("env"))
            if name is INVALID:
                return INVALID
            value = at.env.get(name)
            if not value:
                return at.key("env").problem(
                    entry.value.line, f"environment variable {name} is not set or empty"
                )
            return Secret(value)
        if entry.key == "file":
            relative = non_empty_text(entry.value, at.key("file"))
            if relative is INVALID:
                return INVALID
            path = Path(os.path.abspath(at.base_dir / relative))
            try:
                content = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                return at.key("file").problem(
                    entry.value.line, f"cannot read secret file {str(path)!r}: {type(exc).__name__}"
                )
            if not content:
                return at.key("file").problem(entry.value.line, f"secret file {str(path)!r} is empty")
            return Secret(content)
    if isinstance(node, YamlRejected):
        return INVALID
    return at.problem(node.line, "a secret is {env: NAME} or {file: path}, never written inline")


def one_of(*choices: str) -> ValueParser:
    """A string from a closed set."""

    def parse(node: YamlNode, at: _Cursor) -> Parsed[str]:
        value = text(node, at)
        if value is INVALID:
            return INVALID
        if value not in choices:
            return at.problem(node.line, f"{shown_as(node, value)} is not one of: {', '.join(choices)}")
        return value

    return parse


parse_client_auth = one_of("client_secret_basic", "client_secret_post")

_INTROSPECTION_FIELDS: Final = (
    FieldSpec("endpoint", endpoint_url, required=True),
    FieldSpec("client_id", non_empty_text, required=True),
    FieldSpec("client_secret", parse_secret, required=True),
    FieldSpec("auth_method", parse_client_auth),
    FieldSpec("cache_max_s", non_negative_seconds),
    FieldSpec("timeout_s", positive_seconds),
)


def parse_introspection(node: YamlNode, at: _Cursor) -> Parsed[IntrospectionConfig]:
    return build_from(IntrospectionConfig, read_section(node, at, _INTROSPECTION_FIELDS))


_ISSUER_FIELDS: Final = (
    FieldSpec("issuer", parse_issuer_identifier, required=True),
    FieldSpec("algorithms", parse_algorithms),
    FieldSpec("jwks", parse_jwks),
    FieldSpec("introspection", parse_introspection),
    FieldSpec("leeway_s", non_negative_seconds),
    FieldSpec("require_at_jwt_typ", boolean),
    FieldSpec("jwks_refresh_cooldown_s", positive_seconds),
    FieldSpec("jwks_max_age_s", positive_seconds),
    FieldSpec("http_timeout_s", positive_seconds),
)


# =========================================================================== routes


# Paths the gateway serves itself; a route there would shadow (or be shadowed by) them.
_RESERVED_PATHS: Final = frozenset({"/healthz", "/readyz", "/.well-known"})
_WHITESPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")


def route_path_problem(path: str) -> str | None:
    """Why ``path`` (already without its trailing slash) cannot be a route path, if it cannot."""
    if not path.startswith("/"):
        return "must start with '/'"
    if _WHITESPACE_OR_CONTROL.search(path):
        return "must not contain whitespace or control characters"
    if "?" in path or "#" in path:
        return "must not contain '?' or '#'"
    if path == "/":
        return "'/' cannot be a route: the root is shared with the gateway's own endpoints"
    segments = path[1:].split("/")
    # Percent-decoded too: "%2e%2e" is ".." to anyone who normalises the URL later.
    if any(unquote(segment) in (".", "..") for segment in segments):
        return "must not contain '.' or '..' segments"
    if "" in segments:
        return "must not contain empty segments ('//')"
    if path in _RESERVED_PATHS or path.startswith("/.well-known/"):
        return "is reserved for the gateway itself (/.well-known/..., /healthz, /readyz)"
    return None


def parse_route_path(node: YamlNode, at: _Cursor) -> Parsed[str]:
    value = text(node, at)
    if value is INVALID:
        return INVALID
    path = value[:-1] if value.endswith("/") and value != "/" else value
    problem = route_path_problem(path)
    if problem is not None:
        return at.problem(node.line, problem)
    return path


# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def parse_scope(node: YamlNode, at: _Cursor) -> Parsed[str]:
    value = text(node, at)
    if value is INVALID:
        return INVALID
    if not _SCOPE_TOKEN.fullmatch(value):
        return at.problem(
            node.line,
            "a scope must be a non-empty token of printable ASCII "
            "without spaces, '\"' or '\\' (RFC 6749 §3.3)",
        )
    return value


def rule_map(section: str) -> ValueParser:
    """An ordered map ``glob: [scopes]``; first match wins, so a pattern after one that covers it
    can never match and is reported, as are malformed globs and scope tokens."""

    def parse(node: YamlNode, at: _Cursor) -> Parsed[tuple[Rule, ...]]:
        if isinstance(node, YamlRejected):
            return INVALID
        if not isinstance(node, YamlMapping):
            return at.problem(node.line, wrong_type(node, "a mapping of pattern: [scopes]"))
        rules: list[Rule] = []
        complete = True
        for entry in node.entries:
            entry_at = at.key(entry.key)
            scopes = list_of(parse_scope, unique="scope")(entry.value, entry_at)
            try:
                regex = compile_glob(entry.key)
            except GlobError as exc:
                entry_at.problem(entry.key_line, f"invalid pattern: {exc}")
                complete = False
                continue
            shadow = shadowing_rule(rules, entry.key)
            if shadow is not None:
                entry_at.problem(
                    entry.key_line,
                    f"pattern is shadowed by {shadow.pattern!r} at line {shadow.line} "
                    "(the first match wins, so this one can never apply)",
                )
                complete = False
            if scopes is INVALID:
                complete = False
                continue
            rules.append(Rule(section, entry.key, scopes, regex, entry.key_line))
        return tuple(rules) if complete else INVALID

    return parse


def parse_default(node: YamlNode, at: _Cursor) -> Parsed[Default]:
    value = text(node, at)
    if value is INVALID:
        return INVALID
    try:
        return Default(value)
    except ValueError:
        return at.problem(node.line, f"{shown_as(node, value)} is not one of: deny, allow")


_RULE_SECTIONS: Final = ("tools", "resources", "prompts", "methods")

# RFC 9110 §5.1 field-name token; headers the gateway itself owns are refused.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_RESERVED_HEADERS: Final = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection", "te", "upgrade",
     "mcp-session-id", "mcp-protocol-version", "mcp-method", "mcp-name"}
)  # fmt: skip


def parse_header_name(node: YamlNode, at: _Cursor) -> Parsed[str]:
    value = text(node, at)
    if value is INVALID:
        return INVALID
    if not _HEADER_NAME.fullmatch(value):
        return at.problem(node.line, f"{shown_as(node, value)} is not a valid HTTP header name")
    if value.lower() in _RESERVED_HEADERS:
        return at.problem(node.line, f"{value} is set by the gateway or the protocol, not by a credential")
    return value


_STATIC_FIELDS: Final = (
    FieldSpec("header", parse_header_name, required=True),
    FieldSpec("value", parse_secret, required=True),
)
_MINTED_FIELDS: Final = (
    FieldSpec("audience", non_empty_text, required=True),
    FieldSpec("ttl_s", positive_seconds),
    FieldSpec("scope", one_of("operation", "caller", "none")),
    FieldSpec("reuse_s", non_negative_seconds),
)
_EXCHANGE_FIELDS: Final = (
    FieldSpec("token_endpoint", endpoint_url, required=True),
    FieldSpec("client_id", non_empty_text, required=True),
    FieldSpec("client_secret", parse_secret, required=True),
    FieldSpec("auth_method", parse_client_auth),
    FieldSpec("audience", non_empty_text),
    FieldSpec("resource", parse_resource),
    FieldSpec("scope", one_of("operation", "caller", "none")),
    FieldSpec("timeout_s", positive_seconds),
    FieldSpec("cache_size", integer_in(1, None)),
    FieldSpec("refresh_margin_s", non_negative_seconds),
)
_CREDENTIAL_CHOICES: Final[dict[str, tuple[tuple[FieldSpec, ...], Callable[..., Any]]]] = {
    "static": (_STATIC_FIELDS, StaticCredential),
    "minted": (_MINTED_FIELDS, MintedCredential),
    "token_exchange": (_EXCHANGE_FIELDS, TokenExchangeCredential),
}


def parse_credential(node: YamlNode, at: _Cursor) -> Parsed[Credential]:
    """``none``, or a single-key map: ``static``, ``minted`` or ``token_exchange``."""
    if isinstance(node, YamlRejected):
        return INVALID
    if isinstance(node, YamlScalar) and node.value == "none":
        return NoCredential()
    if not (
        isinstance(node, YamlMapping)
        and len(node.entries) == 1
        and node.entries[0].key in _CREDENTIAL_CHOICES
    ):
        return at.problem(
            node.line, "choose exactly one of: none, {static: …}, {minted: …}, {token_exchange: …}"
        )
    entry = node.entries[0]
    fields, cls = _CREDENTIAL_CHOICES[entry.key]
    inner = at.key(entry.key)
    section = read_section(entry.value, inner, fields)
    if section is INVALID:
        return INVALID
    if (
        entry.key == "token_exchange"
        and section.complete
        and not ({"audience", "resource"} & section.values.keys())
    ):
        return inner.problem(
            entry.value.line, "name the upstream with audience, resource, or both (RFC 8693 §2.1)"
        )
    credential: Parsed[Credential] = build_from(cls, section)
    return credential


_ROUTE_FIELDS: Final = (
    FieldSpec("path", parse_route_path, required=True),
    FieldSpec("upstream", parse_upstream, required=True),
    FieldSpec("scopes", list_of(parse_scope, unique="scope")),
    FieldSpec("resource", parse_resource),
    FieldSpec("resource_name", non_empty_text),
    FieldSpec("max_body_bytes", integer_in(1, None)),
    FieldSpec("connect_timeout_s", positive_seconds),
    FieldSpec("response_timeout_s", positive_seconds),
    *(FieldSpec(section, rule_map(section)) for section in _RULE_SECTIONS),
    FieldSpec("default", parse_default),
    FieldSpec("scopes_supported", list_of(parse_scope, unique="scope")),
    FieldSpec("credential", parse_credential),
    FieldSpec("audit_arguments", boolean),
)


# =========================================================================== top level


_MINTING_ALGORITHMS: Final = ("ES256", "RS256", "EdDSA")


def _signing_key_problem(path: Path, alg: str) -> str | None:
    """Why the PEM file cannot sign with ``alg``, if it cannot (checked at start-up, not first use)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return f"cannot load a private key from {str(path)!r}: {type(exc).__name__}"
    if alg == "ES256" and not (isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"):
        return "ES256 needs an EC P-256 private key"
    if alg == "RS256" and not (isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048):
        return "RS256 needs an RSA private key of at least 2048 bits"
    if alg == "EdDSA" and not isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA needs an Ed25519 private key"
    return None


def parse_signing_key(node: YamlNode, at: _Cursor) -> Parsed[SigningKeyConfig]:
    fields = (
        FieldSpec("kid", non_empty_text, required=True),
        FieldSpec("alg", one_of(*_MINTING_ALGORITHMS), required=True),
        FieldSpec("file", non_empty_text, required=True),
    )
    section = read_section(node, at, fields)
    if section is INVALID or not section.complete:
        return INVALID
    path = Path(os.path.abspath(at.base_dir / section.values["file"]))
    file_line = section.nodes["file"].line
    if not path.is_file():
        return at.key("file").problem(file_line, f"key file {str(path)!r} does not exist")
    problem = _signing_key_problem(path, section.values["alg"])
    if problem is not None:
        return at.key("file").problem(file_line, problem)
    return SigningKeyConfig(kid=section.values["kid"], alg=section.values["alg"], path=path)


_MINTING_FIELDS: Final = (
    FieldSpec("issuer", parse_public_url),
    FieldSpec(
        "keys", list_of(parse_signing_key, non_empty="at least one signing key is required"), required=True
    ),
    FieldSpec("active_kid", non_empty_text),
)


_LISTEN_FIELDS: Final = (
    FieldSpec("host", non_empty_text),
    FieldSpec("port", integer_in(0, 65535)),
)

_ADMIN_FIELDS: Final = (
    FieldSpec("host", non_empty_text),
    FieldSpec("port", integer_in(0, 65535)),
)

_LOGGING_FIELDS: Final = (
    FieldSpec("format", one_of("json", "console")),
    FieldSpec("level", one_of(*LOG_LEVELS)),
    FieldSpec("include_subject", boolean),
)

_TOP_FIELDS: Final = (
    FieldSpec("listen", section_of(_LISTEN_FIELDS)),
    FieldSpec("public_url", parse_public_url, required=True),
    FieldSpec(
        "issuers",
        list_of(
            section_of(_ISSUER_FIELDS),
            non_empty="at least one issuer is required: "
            "MCP clients must be able to discover an authorization server",
        ),
        required=True,
    ),
    FieldSpec(
        "routes",
        list_of(section_of(_ROUTE_FIELDS), non_empty="at least one route is required"),
        required=True,
    ),
    FieldSpec("allowed_origins", list_of(parse_origin, unique="origin")),
    FieldSpec("minting", section_of(_MINTING_FIELDS)),
    FieldSpec("shutdown_grace_s", non_negative_seconds),
    FieldSpec("admin", section_of(_ADMIN_FIELDS)),
    FieldSpec("logging", section_of(_LOGGING_FIELDS)),
)


@dataclass(frozen=True, slots=True)
class _Seen:
    """First occurrence of a value that must be unique across entries."""

    line: int
    where: str  # key path, possibly with a note


@dataclass(slots=True)
class _UniqueCheck:
    """Reports the second and later occurrences of a value, pointing back at the first."""

    noun: str
    seen: dict[str, _Seen] = field(default_factory=dict)

    def check(self, value: str, shown_value: str, line: int, at: _Cursor, note: str = "") -> bool:
        first = self.seen.get(value)
        if first is not None:
            also = f"also at line {first.line}, {first.where}"
            at.problem(line, f"duplicate {self.noun} {shown_value} ({also})")
            return False
        self.seen[value] = _Seen(line, at.path + note)
        return True


def _issuers(sections: tuple[_Section, ...], at: _Cursor) -> Parsed[tuple[IssuerConfig, ...]]:
    unique = _UniqueCheck("issuer")
    issuers: list[Parsed[IssuerConfig]] = []
    introspecting: list[str] = []
    for index, section in enumerate(sections):
        node = section.nodes.get("issuer")
        if node is not None:
            identifier = section.values["issuer"]
            unique.check(identifier, shown_as(node, identifier), node.line, at.item(index).key("issuer"))
        if "introspection" in section.present:
            if introspecting:
                # An opaque token does not say who issued it: with two introspection endpoints the
                # gateway would hand every token to an authorization server that did not issue it.
                issuers.append(
                    at.item(index)
                    .key("introspection")
                    .problem(
                        getattr(section.nodes.get("introspection"), "line", section.line),
                        f"only one issuer may use introspection (already: {introspecting[0]}): "
                        "an opaque token does not say who issued it, so each would be shown the "
                        "other's tokens",
                    )
                )
                continue
            introspecting.append(shown_as(node, section.values["issuer"]) if node is not None else "?")
        issuers.append(_issuer(section, at.item(index)))
    return _all_or_invalid(issuers)


def _issuer(section: _Section, at: _Cursor) -> Parsed[IssuerConfig]:
    """Exactly one way to check tokens: signatures (jwks + algorithms) or introspection."""
    if len(section.present & {"jwks", "introspection"}) != 1:
        return at.problem(
            section.line, "choose exactly one of: jwks (JWT access tokens), introspection (opaque tokens)"
        )
    if not section.complete:
        return INVALID
    has_jwks = "jwks" in section.values
    if has_jwks and "algorithms" not in section.values:
        return at.key("algorithms").problem(section.line, "required key is missing (with jwks)")
    values = {"algorithms": (), "jwks": None, **section.values}
    return build_from(IssuerConfig, replace(section, values=values))


class _Resource(NamedTuple):
    value: str
    shown: str  # for messages
    line: int
    note: str  # says when the value is the default


def _route_resource(section: _Section, public_url: Parsed[str]) -> _Resource | None:
    """A route's resource identifier: explicit, or the default public_url + path."""
    explicit = section.nodes.get("resource")
    if explicit is not None:
        value: str = section.values["resource"]
        return _Resource(value, shown_as(explicit, value), explicit.line, "")
    path_node = section.nodes.get("path")
    if public_url is INVALID or path_node is None:
        return None
    value = public_url + section.values["path"]
    note = " (default: public_url + path)"
    from_env = isinstance(path_node, YamlScalar) and bool(path_node.env_refs)
    return _Resource(value, note.strip() if from_env else repr(value) + note, section.line, note)


def _routes(
    sections: tuple[_Section, ...], public_url: Parsed[str], at: _Cursor
) -> Parsed[tuple[RouteConfig, ...]]:
    paths = _UniqueCheck("route path")
    resources = _UniqueCheck("resource")
    routes: list[Parsed[RouteConfig]] = []
    for index, section in enumerate(sections):
        route_at = at.item(index)
        path_node = section.nodes.get("path")
        path_is_unique = path_node is not None and paths.check(
            section.values["path"],
            shown_as(path_node, section.values["path"]),
            path_node.line,
            route_at.key("path"),
        )
        resource = _route_resource(section, public_url)
        if resource is None:
            routes.append(INVALID)
            continue
        if path_is_unique:  # a duplicate path already explains the clash of default resources
            resources.check(
                resource.value, resource.shown, resource.line, route_at.key("resource"), resource.note
            )
        values = {key: value for key, value in section.values.items() if key not in _POLICY_KEYS}
        values["resource"] = resource.value
        values["policy"] = RoutePolicy(
            route_scopes=section.values.get("scopes", ()),
            default=section.values.get("default"),
            **{name: section.values.get(name, ()) for name in _RULE_SECTIONS},
        )
        routes.append(build_from(RouteConfig, replace(section, values=values)))
    return _all_or_invalid(routes)


# Route keys that become the route's RoutePolicy rather than RouteConfig fields of their own.
_POLICY_KEYS: Final = frozenset({*_RULE_SECTIONS, "default"})


def _all_or_invalid(items: list[Parsed[T]]) -> Parsed[tuple[T, ...]]:
    complete: list[T] = []
    for item in items:
        if item is INVALID:
            return INVALID
        complete.append(item)
    return tuple(complete)


def _build_gateway(top: Parsed[_Section], at: _Cursor, source: Path) -> Parsed[GatewayConfig]:
    if top is INVALID:
        return INVALID
    values = top.values
    public_url: Parsed[str] = values.get("public_url", INVALID)
    issuers = _issuers(values.get("issuers", ()), at.key("issuers"))
    routes = _routes(values.get("routes", ()), public_url, at.key("routes"))
    listen = build_from(ListenConfig, values["listen"]) if "listen" in values else ListenConfig()
    minting = _minting(values.get("minting"), public_url, at.key("minting"))
    admin = build_from(AdminConfig, values["admin"]) if "admin" in values else None
    if isinstance(admin, AdminConfig) and isinstance(listen, ListenConfig) and admin.port == listen.port != 0:
        port_at = at.key("admin").key("port")
        message = f"the admin listener needs its own port, not listen.port {listen.port}"
        port_node = values["admin"].nodes.get("port")
        admin = port_at.problem(port_node.line if port_node else values["admin"].line, message)
    logging = build_from(LoggingConfig, values["logging"]) if "logging" in values else LoggingConfig()
    if routes is not INVALID:
        _check_minted_routes(routes, minting, values.get("routes", ()), at.key("routes"))
    if (
        not top.complete
        or public_url is INVALID
        or issuers is INVALID
        or routes is INVALID
        or listen is INVALID
        or minting is INVALID
        or admin is INVALID
        or logging is INVALID
    ):
        return INVALID
    return GatewayConfig(
        source=source,
        listen=listen,
        public_url=public_url,
        issuers=issuers,
        routes=routes,
        allowed_origins=values.get("allowed_origins", ()),
        minting=minting,
        admin=admin,
        logging=logging,
        **{key: values[key] for key in _PLAIN_TOP_KEYS if key in values},
    )


# Top-level keys copied as parsed (absent: the GatewayConfig default).
_PLAIN_TOP_KEYS: Final = ("shutdown_grace_s",)


# Minted tokens are issued under a path of the gateway's own origin, so that the gateway's
# issuer metadata never sits where MCP clients look for their authorization server.
DEFAULT_MINTING_PATH: Final = "/upstream-tokens"


def _minting(
    section: Parsed[_Section] | None, public_url: Parsed[str], at: _Cursor
) -> Parsed[MintingConfig] | None:
    if section is None:
        return None
    if section is INVALID or not section.complete or public_url is INVALID:
        return INVALID
    keys: tuple[SigningKeyConfig, ...] = section.values["keys"]
    kids = [key.kid for key in keys]
    if len(set(kids)) != len(kids):
        return at.key("keys").problem(section.nodes["keys"].line, "two keys share a kid")
    active = section.values.get("active_kid", kids[0])
    if active not in kids:
        return at.key("active_kid").problem(section.nodes["active_kid"].line, f"no key has kid {active!r}")
    issuer = section.values.get("issuer", public_url + DEFAULT_MINTING_PATH)
    return MintingConfig(issuer=issuer, keys=keys, active_kid=active)


def _check_minted_routes(
    routes: tuple[RouteConfig, ...],
    minting: Parsed[MintingConfig] | None,
    sections: tuple[_Section, ...],
    at: _Cursor,
) -> None:
    if minting is not None:
        return
    for index, (route, section) in enumerate(zip(routes, sections, strict=False)):
        if isinstance(route.credential, MintedCredential):
            at.item(index).key("credential").problem(
                section.nodes["credential"].line,
                "a minted credential needs a top-level `minting` section with signing keys",
            )
