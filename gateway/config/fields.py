"""The gateway's value rules: URLs, origins, algorithms, secrets, rules, credentials.

Each rule is a ``reader.Parser`` (the parse, and the JSON Schema of what it accepts); the
sections of an issuer and of a route are the ``FieldSpec`` tables here.  Signing keys are in
``signing``; checks across entries (duplicate paths, one introspection issuer, minted routes
need keys) are in ``load``.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import SplitResult, unquote, urlsplit

from ..mcp.policy import ListVisibility
from ..secret import Secret
from .model import (
    Credential,
    IntrospectionConfig,
    JwksDiscover,
    JwksFile,
    JwksSource,
    JwksUrl,
    MintedCredential,
    NoCredential,
    StaticCredential,
    TokenExchangeCredential,
)
from .pinning_fields import parse_pinning
from .reader import (
    ENV_REFERENCE,
    INVALID,
    Cursor,
    FieldSpec,
    Parsed,
    Parser,
    accepts,
    boolean,
    build_from,
    integer_in,
    list_of,
    non_empty_text,
    non_negative_seconds,
    one_key_schema,
    one_of,
    or_env,
    positive_seconds,
    read_section,
    section_schema,
    shown_as,
    text,
)
from .resilience_fields import parse_circuit_breaker, parse_health_check
from .rule_fields import LIMIT_NAMES, RULE_SECTIONS, SCOPES, parse_default, rule_map
from .yamlsource import YamlMapping, YamlNode, YamlRejected, YamlScalar

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


# The URL rules above are beyond JSON Schema; an editor checks the scheme.
_HTTP_URL: Final = or_env({"type": "string", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"})


def host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@accepts(_HTTP_URL)
def parse_public_url(node: YamlNode, at: Cursor) -> Parsed[str]:
    """https URL (http for loopback) without query or fragment; scheme/host lowercased, no trailing '/'."""
    checked = _identifier_url(node, at)
    if checked is INVALID:
        return INVALID
    _value, parts = checked
    port = f":{parts.port}" if parts.port is not None else ""
    host = host_for_url(parts.hostname or "")
    return f"{parts.scheme.lower()}://{host}{port}{parts.path}".rstrip("/")


@accepts(_HTTP_URL)
def parse_issuer_identifier(node: YamlNode, at: Cursor) -> Parsed[str]:
    """Validated like public_url but kept exactly as written: ``iss`` is compared byte for byte."""
    checked = _identifier_url(node, at)
    return checked if checked is INVALID else checked[0]


def _identifier_url(node: YamlNode, at: Cursor) -> Parsed[tuple[str, SplitResult]]:
    """An https URL (http for loopback) without query or fragment: the text and its parts."""
    value = text(node, at)
    if value is INVALID:
        return INVALID
    parts = url_problems(value, https_unless_loopback=True, allow_query=False)
    if isinstance(parts, str):
        return at.problem(node.line, parts)
    return value, parts


@accepts(_HTTP_URL)
def parse_upstream(node: YamlNode, at: Cursor) -> Parsed[str]:
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


def url_as_written(*, https_unless_loopback: bool) -> Parser[str]:
    """An absolute http(s) URL without fragment or credentials, kept exactly as written."""

    def parse(node: YamlNode, at: Cursor) -> Parsed[str]:
        value = text(node, at)
        if value is INVALID:
            return INVALID
        parts = url_problems(value, https_unless_loopback=https_unless_loopback, allow_query=True)
        if isinstance(parts, str):
            return at.problem(node.line, parts)
        return value

    return Parser(parse, _HTTP_URL)


# RFC 8707 resource identifier (compared with `aud`, so never normalised).
parse_resource = url_as_written(https_unless_loopback=False)
# An authorization-server endpoint: https, or http on loopback.
endpoint_url = url_as_written(https_unless_loopback=True)


_DEFAULT_PORTS = {"http": 80, "https": 443}


@accepts(or_env({"type": "string", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]+$"}))
def parse_origin(node: YamlNode, at: Cursor) -> Parsed[str]:
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


@accepts(or_env({"enum": list(SUPPORTED_ALGORITHMS)}))
def parse_algorithm(node: YamlNode, at: Cursor) -> Parsed[str]:
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


@accepts(or_env({"const": True}))
def parse_discover(node: YamlNode, at: Cursor) -> Parsed[JwksDiscover]:
    flag = boolean(node, at)
    if flag is INVALID:
        return INVALID
    if not flag:
        return at.problem(node.line, "must be true; to not use discovery, configure url or file instead")
    return JwksDiscover()


@accepts(endpoint_url.schema)
def parse_jwks_url(node: YamlNode, at: Cursor) -> Parsed[JwksUrl]:
    value = endpoint_url(node, at)
    return INVALID if value is INVALID else JwksUrl(value)


@accepts(non_empty_text.schema)
def parse_jwks_file(node: YamlNode, at: Cursor) -> Parsed[JwksFile]:
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


@accepts(one_key_schema({spec.key: spec.parse.schema for spec in _JWKS_FIELDS}))
def parse_jwks(node: YamlNode, at: Cursor) -> Parsed[JwksSource]:
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


@accepts(one_key_schema({"env": non_empty_text.schema, "file": non_empty_text.schema}))
def parse_secret(node: YamlNode, at: Cursor) -> Parsed[Secret]:
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


parse_client_auth = one_of("client_secret_basic", "client_secret_post")

_INTROSPECTION_FIELDS: Final = (
    FieldSpec("endpoint", endpoint_url, required=True),
    FieldSpec("client_id", non_empty_text, required=True),
    FieldSpec("client_secret", parse_secret, required=True),
    FieldSpec("auth_method", parse_client_auth),
    FieldSpec("cache_max_s", non_negative_seconds),
    FieldSpec("timeout_s", positive_seconds),
)


@accepts(section_schema(_INTROSPECTION_FIELDS))
def parse_introspection(node: YamlNode, at: Cursor) -> Parsed[IntrospectionConfig]:
    return build_from(IntrospectionConfig, read_section(node, at, _INTROSPECTION_FIELDS))


ISSUER_FIELDS: Final = (
    FieldSpec("issuer", parse_issuer_identifier, required=True),
    FieldSpec("algorithms", parse_algorithms),
    FieldSpec("jwks", parse_jwks),
    FieldSpec("introspection", parse_introspection),
    FieldSpec("leeway_s", non_negative_seconds),
    FieldSpec("require_at_jwt_typ", boolean),
    FieldSpec("jwks_refresh_cooldown_s", positive_seconds),
    FieldSpec("jwks_max_age_s", positive_seconds),
    FieldSpec("http_timeout_s", positive_seconds),
    FieldSpec("dpop_iat_window_s", positive_seconds),
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


@accepts(or_env({"type": "string", "pattern": "^/[^?#]+$"}))
def parse_route_path(node: YamlNode, at: Cursor) -> Parsed[str]:
    value = text(node, at)
    if value is INVALID:
        return INVALID
    path = value[:-1] if value.endswith("/") and value != "/" else value
    problem = route_path_problem(path)
    if problem is not None:
        return at.problem(node.line, problem)
    return path


# RFC 9110 §5.1 field-name token; headers the gateway itself owns are refused.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_RESERVED_HEADERS: Final = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection", "te", "upgrade",
     "mcp-session-id", "mcp-protocol-version", "mcp-method", "mcp-name"}
)  # fmt: skip


@accepts(or_env({"type": "string", "pattern": f"^{_HEADER_NAME.pattern}$"}))
def parse_header_name(node: YamlNode, at: Cursor) -> Parsed[str]:
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


# RFC 8693 §2.1: an exchange names its target (parse_credential checks it).
_NAMES_ITS_TARGET: Final = {"anyOf": [{"required": ["audience"]}, {"required": ["resource"]}]}
_CREDENTIAL_SCHEMA: Final = {
    "anyOf": [
        {"const": "none"},
        one_key_schema(
            {
                key: {**section_schema(fields), **(_NAMES_ITS_TARGET if key == "token_exchange" else {})}
                for key, (fields, _) in _CREDENTIAL_CHOICES.items()
            }
        ),
        ENV_REFERENCE,
    ]
}


@accepts(_CREDENTIAL_SCHEMA)
def parse_credential(node: YamlNode, at: Cursor) -> Parsed[Credential]:
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


ROUTE_FIELDS: Final = (
    FieldSpec("path", parse_route_path, required=True),
    FieldSpec("upstream", parse_upstream, required=True),
    FieldSpec("scopes", SCOPES),
    FieldSpec("resource", parse_resource),
    FieldSpec("resource_name", non_empty_text),
    FieldSpec("max_body_bytes", integer_in(1, None)),
    FieldSpec("connect_timeout_s", positive_seconds),
    FieldSpec("response_timeout_s", positive_seconds),
    FieldSpec("upstream_idle_timeout_s", positive_seconds),
    FieldSpec("sse_heartbeat_s", positive_seconds),
    FieldSpec("sse_max_lifetime_s", positive_seconds),
    FieldSpec("max_concurrent_requests", integer_in(1, None)),
    FieldSpec("circuit_breaker", parse_circuit_breaker),
    FieldSpec("health_check", parse_health_check),
    *(FieldSpec(section, rule_map(section)) for section in RULE_SECTIONS),
    FieldSpec("default", parse_default),
    FieldSpec("scopes_supported", SCOPES),
    FieldSpec("challenge_scopes", SCOPES),
    FieldSpec("list_visibility", one_of(*(visibility.value for visibility in ListVisibility))),
    FieldSpec("credential", parse_credential),
    FieldSpec("audit_arguments", boolean),
    FieldSpec("audit_claims", list_of(non_empty_text, unique="claim")),
    FieldSpec("limits", LIMIT_NAMES),
    FieldSpec("unauthenticated_limits", LIMIT_NAMES),
    FieldSpec("dpop", one_of("off", "allowed", "required")),
    FieldSpec("dpop_nonce", boolean),
    FieldSpec("mode", one_of("enforce", "observe")),
    FieldSpec("pinning", parse_pinning),
)
