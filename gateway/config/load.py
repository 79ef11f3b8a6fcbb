"""The config file as a whole: the top-level sections, the checks across entries, and the entry points.

``load_config`` reads a file, ``parse_config_text`` parses text: yamlsource turns it into a tree of
nodes with lines, ``read_section`` applies ``TOP_FIELDS``, then ``_build_gateway`` runs the checks
that span several entries (duplicate issuers, route paths and resources, one introspection issuer,
signing keys for minted routes, the admin port) and freezes the result.  Every problem in the file
is collected and raised together in one ``ConfigError``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Final, NamedTuple, TypeVar

from ..mcp.policy import ListVisibility, RoutePolicy, observed_policy
from ..mcp.uris import pattern_problem
from ..ratelimit.spec import RateLimitsConfig
from ..sealing import KEY_ID, MIN_SECRET_BYTES
from .fields import (
    ISSUER_FIELDS,
    ROUTE_FIELDS,
    parse_origin,
    parse_public_url,
    parse_secret,
)
from .model import (
    LOG_LEVELS,
    AdminConfig,
    ConfigError,
    ConfigProblem,
    GatewayConfig,
    IssuerConfig,
    LimitsConfig,
    ListenConfig,
    LoggingConfig,
    MetricsExportConfig,
    MintedCredential,
    MintingConfig,
    RouteConfig,
    SigningKeyConfig,
    StateKeyConfig,
    StateKeysConfig,
    TracingConfig,
)
from .observability_fields import METRICS_FIELDS, TRACING_FIELDS, parse_audit
from .ratelimit_fields import check_limit_references, parse_rate_limits
from .reader import (
    INVALID,
    Cursor,
    FieldSpec,
    Parsed,
    Problems,
    Section,
    UniqueCheck,
    accepts,
    boolean,
    build_from,
    integer_in,
    list_of,
    non_empty_text,
    non_negative_seconds,
    one_of,
    positive_seconds,
    read_section,
    section_of,
    section_schema,
    shown_as,
)
from .rule_fields import POLICY_KEYS, RULE_SECTIONS
from .signing import kid_problem, parse_signing_key
from .yamlsource import YamlMapping, YamlNode, YamlRejected, YamlScalar, load_strict_yaml

__all__ = ["DEFAULT_MINTING_PATH", "TOP_FIELDS", "load_config", "parse_config_text"]

T = TypeVar("T")


# =========================================================================== sections


_MINTING_FIELDS: Final = (
    FieldSpec("issuer", parse_public_url),
    FieldSpec(
        "keys", list_of(parse_signing_key, non_empty="at least one signing key is required"), required=True
    ),
    FieldSpec("active_kid", non_empty_text),
)


_STATE_KEY_FIELDS: Final = (
    FieldSpec("id", non_empty_text, required=True),
    FieldSpec("secret", parse_secret, required=True),
)


@accepts(section_schema(_STATE_KEY_FIELDS))
def parse_state_key(node: YamlNode, at: Cursor) -> Parsed[StateKeyConfig]:
    """One ``state_keys.keys`` entry: an id written into every handle, and a long enough secret."""
    section = read_section(node, at, _STATE_KEY_FIELDS)
    if section is INVALID or not section.complete:
        return INVALID
    key_id: str = section.values["id"]
    if not KEY_ID.fullmatch(key_id):
        return at.key("id").problem(
            section.nodes["id"].line,
            "a state key id is 1 to 32 of A-Z a-z 0-9 _ - (it is written into handles)",
        )
    secret = section.values["secret"]
    if len(secret.reveal().encode("utf-8")) < MIN_SECRET_BYTES:
        return at.key("secret").problem(
            section.nodes["secret"].line,
            f"a state key secret needs at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -base64 48`)",
        )
    return StateKeyConfig(id=key_id, secret=secret)


_STATE_KEYS_FIELDS: Final = (
    FieldSpec(
        "keys", list_of(parse_state_key, non_empty="at least one state key is required"), required=True
    ),
    FieldSpec("active", non_empty_text),
)


# A listener's address: `listen` (the MCP clients') and `admin` (metrics and probes).
LISTENER_FIELDS: Final = (
    FieldSpec("host", non_empty_text),
    FieldSpec("port", integer_in(0, 65535)),
)

_ADMIN_FIELDS: Final = (*LISTENER_FIELDS, FieldSpec("per_worker_ports", boolean))

_LOGGING_FIELDS: Final = (
    FieldSpec("format", one_of("json", "console")),
    FieldSpec("level", one_of(*LOG_LEVELS)),
    FieldSpec("include_subject", boolean),
)

# What _issuer checks between an issuer's keys, for editors.
_ISSUER_RULES: Final = {
    "oneOf": [{"required": ["jwks"]}, {"required": ["introspection"]}],
    "dependencies": {"jwks": ["algorithms"]},
}

_LIMITS_FIELDS: Final = (
    FieldSpec("header_timeout_s", positive_seconds),
    FieldSpec("body_timeout_s", positive_seconds),
    FieldSpec("keepalive_timeout_s", positive_seconds),
    FieldSpec("send_timeout_s", positive_seconds),
    FieldSpec("max_connections", integer_in(1, None)),
    FieldSpec("max_streams", integer_in(1, None)),
    FieldSpec("max_buffered_body_bytes", integer_in(1, None)),
)

TOP_FIELDS: Final = (
    FieldSpec("listen", section_of(LISTENER_FIELDS)),
    FieldSpec("public_url", parse_public_url, required=True),
    FieldSpec(
        "issuers",
        list_of(
            section_of(ISSUER_FIELDS, also=_ISSUER_RULES),
            non_empty="at least one issuer is required: "
            "MCP clients must be able to discover an authorization server",
        ),
        required=True,
    ),
    FieldSpec(
        "routes",
        list_of(section_of(ROUTE_FIELDS), non_empty="at least one route is required"),
        required=True,
    ),
    FieldSpec("allowed_origins", list_of(parse_origin, unique="origin")),
    FieldSpec("minting", section_of(_MINTING_FIELDS)),
    FieldSpec("shutdown_grace_s", non_negative_seconds),
    FieldSpec("admin", section_of(_ADMIN_FIELDS)),
    FieldSpec("logging", section_of(_LOGGING_FIELDS)),
    FieldSpec("state_keys", section_of(_STATE_KEYS_FIELDS)),
    FieldSpec("limits", section_of(_LIMITS_FIELDS)),
    FieldSpec("rate_limits", parse_rate_limits),
    FieldSpec("tracing", section_of(TRACING_FIELDS)),
    FieldSpec("metrics", section_of(METRICS_FIELDS)),
    FieldSpec("audit", parse_audit),
)


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
    problems = Problems()
    for issue in document.issues:
        problems.add(issue.line, issue.key_path, issue.message)
    root = document.root
    if root is None or (isinstance(root, YamlScalar) and root.value is None):
        if not document.issues:
            problems.add(1, "", "config file is empty")
        raise ConfigError(problems.for_file(file))

    cursor = Cursor("", problems, absolute_source.parent, env)
    if not isinstance(root, YamlMapping):
        if not isinstance(root, YamlRejected):
            cursor.problem(
                root.line, "the top level must be a mapping of settings (public_url, issuers, routes, ...)"
            )
        raise ConfigError(problems.for_file(file))

    top = read_section(root, cursor, TOP_FIELDS)
    config = _build_gateway(top, cursor, absolute_source)
    if problems or config is INVALID:
        raise ConfigError(problems.for_file(file))
    return config


# =========================================================================== across entries


def _issuers(sections: tuple[Section, ...], at: Cursor) -> Parsed[tuple[IssuerConfig, ...]]:
    unique = UniqueCheck("issuer")
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


def _issuer(section: Section, at: Cursor) -> Parsed[IssuerConfig]:
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


def _route_resource(section: Section, public_url: Parsed[str]) -> _Resource | None:
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
    sections: tuple[Section, ...], public_url: Parsed[str], at: Cursor, *, minting: bool
) -> Parsed[tuple[RouteConfig, ...]]:
    """Every route, with unique paths and resources; ``minting``: the top-level section is written."""
    paths = UniqueCheck("route path")
    resources = UniqueCheck("resource")
    routes: list[Parsed[RouteConfig]] = []
    minted_without_keys: list[tuple[Cursor, int]] = []  # where each such credential is written
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
        _check_resource_patterns(section, route_at.key("resources"))
        if section.values.get("dpop_nonce") and section.values.get("dpop") == "off":
            nonce_line = section.nodes["dpop_nonce"].line
            route_at.key("dpop_nonce").problem(nonce_line, "dpop_nonce needs dpop allowed or required")
        values = {key: value for key, value in section.values.items() if key not in POLICY_KEYS}
        values["resource"] = resource.value
        written = RoutePolicy(
            route_scopes=section.values.get("scopes", ()),
            default=section.values.get("default"),
            list_visibility=ListVisibility(section.values.get("list_visibility", "step_up")),
            challenge=section.values.get("challenge_scopes"),
            **{name: section.values.get(name, ()) for name in RULE_SECTIONS},
        )
        values["policy"] = observed_policy(written, observe_route=section.values.get("mode") == "observe")
        route = build_from(RouteConfig, replace(section, values=values))
        if not minting and isinstance(route, RouteConfig) and isinstance(route.credential, MintedCredential):
            minted_without_keys.append((route_at.key("credential"), section.nodes["credential"].line))
        routes.append(route)
    built = _all_or_invalid(routes)
    if built is not INVALID:
        for credential_at, line in minted_without_keys:
            credential_at.problem(
                line, "a minted credential needs a top-level `minting` section with signing keys"
            )
    return built


def _check_resource_patterns(section: Section, at: Cursor) -> None:
    """Resource rules match URIs in normal form (gateway.mcp.uris): a pattern written otherwise
    would never match what it says, so it is refused with the spelling to write, not rewritten
    (the pattern in the file, the log and ``explain`` is then exactly the one matched)."""
    for rule in section.values.get("resources", ()):
        problem = pattern_problem(rule.pattern)
        if problem is not None:
            at.key(rule.pattern).problem(rule.line, problem)


def _all_or_invalid(items: list[Parsed[T]]) -> Parsed[tuple[T, ...]]:
    complete: list[T] = []
    for item in items:
        if item is INVALID:
            return INVALID
        complete.append(item)
    return tuple(complete)


def _build_gateway(top: Parsed[Section], at: Cursor, source: Path) -> Parsed[GatewayConfig]:
    if top is INVALID:
        return INVALID
    values = top.values
    public_url: Parsed[str] = values.get("public_url", INVALID)
    issuers = _issuers(values.get("issuers", ()), at.key("issuers"))
    routes = _routes(values.get("routes", ()), public_url, at.key("routes"), minting="minting" in values)
    listen = build_from(ListenConfig, values["listen"]) if "listen" in values else ListenConfig()
    minting = _minting(values.get("minting"), public_url, at.key("minting"))
    admin = build_from(AdminConfig, values["admin"]) if "admin" in values else None
    if isinstance(admin, AdminConfig) and isinstance(listen, ListenConfig) and admin.port == listen.port != 0:
        port_at = at.key("admin").key("port")
        message = f"the admin listener needs its own port, not listen.port {listen.port}"
        port_node = values["admin"].nodes.get("port")
        admin = port_at.problem(port_node.line if port_node else values["admin"].line, message)
    logging = build_from(LoggingConfig, values["logging"]) if "logging" in values else LoggingConfig()
    state_keys = _state_keys(values.get("state_keys"), at.key("state_keys"))
    limits = build_from(LimitsConfig, values["limits"]) if "limits" in values else LimitsConfig()
    rate_limits: RateLimitsConfig = values.get("rate_limits", RateLimitsConfig())
    tracing = build_from(TracingConfig, values["tracing"]) if "tracing" in values else None
    metrics = build_from(MetricsExportConfig, values["metrics"]) if "metrics" in values else None
    # A rate_limits section with a problem declares limits we do not know: names stay unchecked.
    unknowable = "rate_limits" in top.present and "rate_limits" not in values
    routes_written = values.get("routes", ())
    references_fine = unknowable or check_limit_references(rate_limits, routes_written, at.key("routes"))
    if (
        not top.complete
        or public_url is INVALID
        or issuers is INVALID
        or routes is INVALID
        or listen is INVALID
        or minting is INVALID
        or admin is INVALID
        or logging is INVALID
        or state_keys is INVALID
        or limits is INVALID
        or tracing is INVALID
        or metrics is INVALID
        or not references_fine
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
        state_keys=state_keys,
        limits=limits,
        rate_limits=rate_limits,
        tracing=tracing,
        metrics=metrics,
        audit=values.get("audit"),
        **{key: values[key] for key in _PLAIN_TOP_KEYS if key in values},
    )


# Top-level keys copied as parsed (absent: the GatewayConfig default).
_PLAIN_TOP_KEYS: Final = ("shutdown_grace_s",)


# Minted tokens are issued under a path of the gateway's own origin, so that the gateway's
# issuer metadata never sits where MCP clients look for their authorization server.
DEFAULT_MINTING_PATH: Final = "/upstream-tokens"


def _minting(
    section: Parsed[Section] | None, public_url: Parsed[str], at: Cursor
) -> Parsed[MintingConfig] | None:
    if section is None:
        return None
    if section is INVALID or not section.complete or public_url is INVALID:
        return INVALID
    keys: tuple[SigningKeyConfig, ...] = section.values["keys"]
    active = _active_key(
        section, [key.kid for key in keys], at, "active_kid", ("two keys share a kid", "no key has kid")
    )
    if active is INVALID:
        return INVALID
    issuer = section.values.get("issuer", public_url + DEFAULT_MINTING_PATH)
    return MintingConfig(issuer=issuer, keys=keys, active_kid=active)


def _state_keys(section: Parsed[Section] | None, at: Cursor) -> Parsed[StateKeysConfig] | None:
    if section is None:
        return None
    if section is INVALID or not section.complete:
        return INVALID
    keys: tuple[StateKeyConfig, ...] = section.values["keys"]
    wording = ("two state keys share an id", "no state key has id")
    active = _active_key(section, [key.id for key in keys], at, "active", wording)
    if active is INVALID:
        return INVALID
    return StateKeysConfig(keys=keys, active=active)


def _active_key(
    section: Section, ids: list[str], at: Cursor, active_key: str, wording: tuple[str, str]
) -> Parsed[str]:
    """The id of a key set's active key (the first unless ``active_key`` names one); the ids
    must differ and name it. ``wording``: the two problems, as this key set words them."""
    active: str = section.values.get(active_key, ids[0])
    problem = kid_problem(ids, active)
    if problem == "shared_kid":
        return at.key("keys").problem(section.nodes["keys"].line, wording[0])
    if problem == "unknown_active_kid":
        return at.key(active_key).problem(section.nodes[active_key].line, f"{wording[1]} {active!r}")
    return active
