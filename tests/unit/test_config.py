"""Tests for gateway.config: strict YAML, env substitution, validation rules, line numbers.

Most rule tests start from ``BASE`` (a small valid config, line numbers in the comments),
change or append a few lines, and assert that exactly one problem is reported, with the
exact ``file:line: key.path: `` prefix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.config import (
    AdminConfig,
    ConfigError,
    ConfigProblem,
    GatewayConfig,
    IssuerConfig,
    JwksDiscover,
    JwksFile,
    JwksUrl,
    ListenConfig,
    RouteConfig,
    load_config,
    parse_config_text,
    rule_fields,
)
from gateway.config import fields as config_fields
from gateway.config import load as config_load
from gateway.mcp.policy import Default, RoutePolicy, Rule, compile_glob

BASE_LINES = (
    "listen: {host: 127.0.0.1, port: 8080}",  # 1
    "public_url: https://mcp.example.com",  # 2
    "issuers:",  # 3
    "  - issuer: https://auth.example.com",  # 4
    "    algorithms: [RS256]",  # 5
    "    jwks: {discover: true}",  # 6
    "routes:",  # 7
    "  - path: /github/mcp",  # 8
    "    upstream: http://127.0.0.1:9000/mcp",  # 9
    "    scopes: [mcp:access]",  # 10
)  # lines appended after 10 with four spaces of indent belong to routes[0]


def base_config(replace: Mapping[int, str] | None = None, append: str = "") -> str:
    """BASE with 1-based lines replaced (a replacement may span several lines) and text appended."""
    replace = replace or {}
    lines = [replace.get(number, line) for number, line in enumerate(BASE_LINES, start=1)]
    return "\n".join(lines) + "\n" + append


def parse(text: str, folder: Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    return parse_config_text(text, folder / "gateway.yaml", env or {})


def problems_of(text: str, folder: Path, env: Mapping[str, str] | None = None) -> tuple[ConfigProblem, ...]:
    with pytest.raises(ConfigError) as caught:
        parse(text, folder, env)
    return caught.value.problems


@dataclass(frozen=True)
class Bad:
    """A config that must fail with exactly one problem at ``line`` / ``key_path``."""

    id: str
    line: int
    key_path: str
    message: str  # a fragment of the expected message
    replace: Mapping[int, str] = field(default_factory=dict)
    append: str = ""
    env: Mapping[str, str] = field(default_factory=dict)


def cases(*bad: Bad) -> list[object]:
    return [pytest.param(case, id=case.id) for case in bad]


def assert_single_problem(case: Bad, folder: Path) -> ConfigProblem:
    problems = problems_of(base_config(case.replace, case.append), folder, case.env)
    assert len(problems) == 1, "\n".join(map(str, problems))
    problem = problems[0]
    where = f"{folder / 'gateway.yaml'}:{case.line}: "
    prefix = f"{where}{case.key_path}: " if case.key_path else where
    assert str(problem).startswith(prefix), str(problem)
    assert case.message in problem.message, str(problem)
    return problem


# --------------------------------------------------------------------------- valid configs


FULL_CONFIG = """\
listen: {host: 10.0.0.5, port: 8443}
public_url: HTTPS://MCP.Example.com/
issuers:
  - issuer: https://Auth.Example.com/tenant/
    algorithms: [RS256, ES256, EdDSA]
    jwks: {discover: true}
    leeway_s: 10
    require_at_jwt_typ: false
    jwks_refresh_cooldown_s: 15
    jwks_max_age_s: 120.5
    http_timeout_s: 2
  - issuer: http://localhost:9999
    algorithms: [PS256]
    jwks: {url: http://127.0.0.1:9999/jwks.json}
routes:
  - path: /github/mcp/
    upstream: http://127.0.0.1:9000/mcp
    scopes: [mcp:access, "repo:read"]
    resource_name: GitHub tools
    max_body_bytes: 1024
    connect_timeout_s: 1.5
    response_timeout_s: 60
    tools:
      "get_*": [repo:read]
      "*": [repo:write]
    methods: {"logging/setLevel": [admin]}
    default: allow
    scopes_supported: [mcp:access]
    audit_arguments: true
  - path: /notes
    upstream: https://notes.internal:8443/mcp?tenant=a
    resource: https://notes.example.com/mcp
allowed_origins: [https://app.example.com, "HTTPS://Other.Example.com:443", "http://localhost:3000"]
"""


def line_of(fragment: str) -> int:
    """1-based line of FULL_CONFIG where ``fragment`` first appears."""
    return next(n for n, line in enumerate(FULL_CONFIG.splitlines(), 1) if fragment in line)


def test_full_config_parses_to_frozen_objects(tmp_path: Path) -> None:
    """Every key of a full config lands, typed and normalised, in the frozen dataclasses."""
    config = parse(FULL_CONFIG, tmp_path)
    assert config == GatewayConfig(
        source=tmp_path / "gateway.yaml",
        listen=ListenConfig(host="10.0.0.5", port=8443),
        public_url="https://mcp.example.com",
        issuers=(
            IssuerConfig(
                issuer="https://Auth.Example.com/tenant/",
                algorithms=("RS256", "ES256", "EdDSA"),
                jwks=JwksDiscover(),
                leeway_s=10.0,
                require_at_jwt_typ=False,
                jwks_refresh_cooldown_s=15.0,
                jwks_max_age_s=120.5,
                http_timeout_s=2.0,
            ),
            IssuerConfig(
                issuer="http://localhost:9999",
                algorithms=("PS256",),
                jwks=JwksUrl("http://127.0.0.1:9999/jwks.json"),
            ),
        ),
        routes=(
            RouteConfig(
                path="/github/mcp",
                upstream="http://127.0.0.1:9000/mcp",
                resource="https://mcp.example.com/github/mcp",
                resource_name="GitHub tools",
                max_body_bytes=1024,
                connect_timeout_s=1.5,
                response_timeout_s=60.0,
                policy=RoutePolicy(
                    route_scopes=("mcp:access", "repo:read"),
                    tools=(
                        Rule("tools", "get_*", ("repo:read",), compile_glob("get_*"), line_of("get_*")),
                        Rule("tools", "*", ("repo:write",), compile_glob("*"), line_of('"*"')),
                    ),
                    methods=(
                        Rule(
                            "methods",
                            "logging/setLevel",
                            ("admin",),
                            compile_glob("logging/setLevel"),
                            line_of("logging/setLevel"),
                        ),
                    ),
                    default=Default.ALLOW,
                ),
                scopes_supported=("mcp:access",),
                audit_arguments=True,
            ),
            RouteConfig(
                path="/notes",
                upstream="https://notes.internal:8443/mcp?tenant=a",
                resource="https://notes.example.com/mcp",
            ),
        ),
        allowed_origins=("https://app.example.com", "https://other.example.com", "http://localhost:3000"),
    )


def test_config_objects_are_immutable(tmp_path: Path) -> None:
    """Assigning to any parsed config object raises; collections are tuples, not lists."""
    config = parse(FULL_CONFIG, tmp_path)
    targets: list[tuple[object, str]] = [
        (config, "public_url"),
        (config.listen, "port"),
        (config.issuers[0], "leeway_s"),
        (config.issuers[1].jwks, "url"),
        (config.routes[0], "upstream"),
    ]
    for target, attribute in targets:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(target, attribute, "changed")
    assert isinstance(config.routes, tuple)
    assert isinstance(config.issuers[0].algorithms, tuple)
    assert isinstance(config.routes[0].scopes, tuple)


def test_defaults_are_applied(tmp_path: Path) -> None:
    """Optional keys that are absent take the documented defaults."""
    config = parse(base_config({1: "# no listen section", 10: "    # no scopes"}), tmp_path)
    assert config.listen == ListenConfig(host="127.0.0.1", port=8080)
    assert config.allowed_origins == ()
    issuer = config.issuers[0]
    assert (issuer.leeway_s, issuer.require_at_jwt_typ) == (30.0, True)
    assert (issuer.jwks_refresh_cooldown_s, issuer.jwks_max_age_s, issuer.http_timeout_s) == (
        30.0,
        600.0,
        5.0,
    )
    route = config.routes[0]
    assert route.scopes == ()
    assert route.resource == "https://mcp.example.com/github/mcp"
    assert route.resource_name is None
    assert route.max_body_bytes == 4 * 1024 * 1024
    assert (route.connect_timeout_s, route.response_timeout_s) == (5.0, 300.0)


def test_route_for_path_matches_exactly_ignoring_one_trailing_slash(tmp_path: Path) -> None:
    """route_for_path finds a route by exact path, tolerating a single trailing slash."""
    config = parse(FULL_CONFIG, tmp_path)
    assert config.route_for_path("/github/mcp") is config.routes[0]
    assert config.route_for_path("/github/mcp/") is config.routes[0]
    assert config.route_for_path("/notes") is config.routes[1]
    for miss in ("/github/mcp//", "/github", "/github/mcp/x", "/", "", "/GitHub/mcp"):
        assert config.route_for_path(miss) is None, miss


def test_loopback_hosts_may_use_http(tmp_path: Path) -> None:
    """http is accepted for localhost, 127.0.0.0/8 and ::1 in public_url, issuer and jwks url."""
    for host in ("localhost", "127.0.0.1", "127.1.2.3", "[::1]"):
        text = base_config(
            {
                2: f"public_url: http://{host}:8080",
                4: f"  - issuer: http://{host}:9999",
                6: f"    jwks: {{url: 'http://{host}:9999/keys'}}",
            }
        )
        config = parse(text, tmp_path)
        assert config.public_url == f"http://{host}:8080"


def test_public_url_is_normalised(tmp_path: Path) -> None:
    """public_url gets a lowercase scheme and host and loses its trailing slash; the path is kept."""
    config = parse(base_config({2: "public_url: HTTPS://MCP.Example.COM:8443/Base/"}), tmp_path)
    assert config.public_url == "https://mcp.example.com:8443/Base"
    assert config.routes[0].resource == "https://mcp.example.com:8443/Base/github/mcp"


def test_field_specs_name_dataclass_attributes() -> None:
    """Each section's keys are attributes of its dataclass (route rule keys go to `policy`)."""
    pairs = [
        (config_load.LISTENER_FIELDS, ListenConfig),
        (config_load.LISTENER_FIELDS, AdminConfig),
        (config_fields.ISSUER_FIELDS, IssuerConfig),
        (config_fields.ROUTE_FIELDS, RouteConfig),
    ]
    for fields, cls in pairs:
        attributes = {f.name for f in dataclasses.fields(cls)}
        keys = {spec.key for spec in fields} - (rule_fields.POLICY_KEYS if cls is RouteConfig else set())
        assert keys <= attributes, cls


# --------------------------------------------------------------------------- loading files


def test_load_config_reads_a_file_and_records_its_absolute_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_config accepts a relative path and stores the absolute source path."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "gateway.yaml").write_text(base_config(), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    config = load_config("conf/gateway.yaml", env={})
    assert config.source == tmp_path / "conf" / "gateway.yaml"
    assert config.source.is_absolute()


def test_load_config_uses_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit env mapping, ${NAME} is read from os.environ."""
    path = tmp_path / "gateway.yaml"
    path.write_text(base_config({1: "listen:\n  port: ${GW_TEST_PORT}"}), encoding="utf-8")
    monkeypatch.setenv("GW_TEST_PORT", "9123")
    assert load_config(path).listen.port == 9123


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    """A missing file raises ConfigError (not OSError) pointing at the file."""
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value).startswith(f"{path}:1: cannot read config file")


def test_invalid_utf8_is_reported_with_its_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are reported at the line where they occur."""
    path = tmp_path / "gateway.yaml"
    path.write_bytes(base_config().encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert [str(p) for p in caught.value.problems] == [f"{path}:11: config file is not valid UTF-8"]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "~\n"])
def test_empty_file_is_one_clear_problem(tmp_path: Path, text: str) -> None:
    """An empty document gives a single 'config file is empty' problem."""
    problems = problems_of(text, tmp_path)
    assert [str(p) for p in problems] == [f"{tmp_path / 'gateway.yaml'}:1: config file is empty"]


@pytest.mark.parametrize(
    ("text", "line"),
    [("- a\n- b\n", 1), ("just a string\n", 1), ("\n\n42\n", 3)],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, line: int) -> None:
    """A top level that is a list or scalar gives a single problem at its line."""
    problems = problems_of(text, tmp_path)
    assert len(problems) == 1
    assert str(problems[0]).startswith(f"{tmp_path / 'gateway.yaml'}:{line}: the top level must be a mapping")


@pytest.mark.parametrize(
    ("text", "line", "key_path", "message"),
    [
        (
            base_config({9: "    upstream: http://x: y"}),
            9,
            "routes[0]",
            "mapping values are not allowed here",
        ),
        (base_config({5: "    algorithms: [RS256"}), 6, "issuers[0].algorithms", "expected ',' or ']'"),
        (base_config({3: "issuers:\n\t- x"}), 4, "issuers", "found character '\\t'"),
        (base_config(append="---\nother: doc\n"), 11, "", "expected a single document"),
        ("public_url: \x07\n", 1, "", "special characters are not allowed"),
        (
            base_config({1: "listen: {port: ${PORT}}"}),
            1,
            "listen",
            "inside [...] or {...} quote ${NAME} references",
        ),
        (
            base_config(append="    tools: {search: [docs:read}\n"),
            11,
            "routes[0].tools.search",
            "expected ',' or ']', but got '}'",
        ),
        (
            base_config(append="    tools:\n      search: [a]\n     get: [b]\n"),
            13,
            "routes[0]",
            "expected <block end>",
        ),
    ],
    ids=[
        "colon-in-plain-scalar",
        "unclosed-flow-list",
        "tab-indent",
        "two-documents",
        "control-char",
        "env-in-flow",
        "unclosed-flow-list-in-flow-map",
        "misindented-key",
    ],
)
def test_yaml_syntax_errors_report_their_line_and_key_path(
    tmp_path: Path, text: str, line: int, key_path: str, message: str
) -> None:
    """A YAML syntax error becomes one ConfigError problem at file:line that also names the key path
    the parser was inside (the innermost mapping or value), where there is one."""
    problems = problems_of(text, tmp_path)
    assert len(problems) == 1, problems
    shown_path = f"{key_path}: " if key_path else ""
    assert str(problems[0]).startswith(f"{tmp_path / 'gateway.yaml'}:{line}: {shown_path}YAML syntax error: ")
    assert problems[0].key_path == key_path and message in problems[0].message


def test_problem_and_error_formatting() -> None:
    """ConfigProblem prints as file:line: key.path: message; ConfigError lists one per line, sorted."""
    late = ConfigProblem("g.yaml", 9, "routes[1].upstream", "upstream must be an http(s) URL")
    early = ConfigProblem("g.yaml", 2, "", "config file is empty")
    assert str(late) == "g.yaml:9: routes[1].upstream: upstream must be an http(s) URL"
    assert str(early) == "g.yaml:2: config file is empty"
    error = ConfigError([late, early])
    assert error.problems == (early, late)
    assert str(error) == f"{early}\n{late}"


# --------------------------------------------------------------------------- strict YAML


# fmt: off
STRICT_YAML_CASES = cases(
    Bad("duplicate-route-key", 11, "routes[0].upstream", "duplicate key 'upstream' (first at line 9)",
        append="    upstream: http://127.0.0.1:9001/mcp\n"),
    Bad("duplicate-top-level-key", 11, "public_url", "duplicate key 'public_url' (first at line 2)",
        append="public_url: https://other.example.com\n"),
    Bad("duplicate-key-in-flow-mapping", 1, "listen.port", "duplicate key 'port' (first at line 1)",
        replace={1: "listen: {port: 1, port: 2}"}),
    Bad("unknown-key-with-suggestion", 11, "routes[0].upstrem",
        "unknown key 'upstrem' (did you mean 'upstream'?)",
        append="    upstrem: http://127.0.0.1:9000/mcp\n"),
    Bad("unknown-top-level-key", 11, "frobnicate", "unknown key 'frobnicate' (known keys: listen, public_url",
        append="frobnicate: 1\n"),
    Bad("unknown-issuer-key", 6, "issuers[0].leway_s", "did you mean 'leeway_s'?",
        replace={6: "    leway_s: 5\n    jwks: {discover: true}"}),
    Bad("python-tag", 9, "routes[0].upstream", "tag !!python/object/apply:os.system is not allowed",
        replace={9: "    upstream: !!python/object/apply:os.system [echo hi]"}),
    Bad("python-tag-on-mapping", 1, "listen", "tag !!python/object:os.system is not allowed",
        replace={1: "listen: !!python/object:os.system {host: x}"}),
    Bad("custom-tag", 2, "public_url", "tag !env is not allowed", replace={2: "public_url: !env URL"}),
    Bad("binary-tag", 2, "public_url", "tag !!binary is not allowed",
        replace={2: "public_url: !!binary aGVsbG8="}),
    Bad("anchor", 9, "routes[0].upstream", "anchors (&up) are not supported",
        replace={9: "    upstream: &up http://127.0.0.1:9000/mcp"}),
    Bad("alias", 11, "routes[0].resource", "aliases (*x) are not supported", append="    resource: *x\n"),
    Bad("alias-as-key", 12, "routes[0]", "aliases (*k) are not supported", append="\n    *k : 1\n"),
    Bad("merge-key", 11, "routes[0].<<", "merge keys (<<) are not supported",
        append="    <<: {scopes: [a]}\n"),
    Bad("complex-key", 11, "", "mapping keys must be plain strings", append="? [a, b]\n: 1\n"),
    Bad("explicit-int-tag-on-text", 1, "listen.port", "'eighty' is not a valid !!int",
        replace={1: "listen: {port: !!int eighty}"}),
)
# fmt: on


@pytest.mark.parametrize("case", STRICT_YAML_CASES)
def test_strict_yaml(tmp_path: Path, case: Bad) -> None:
    """Duplicate keys, unknown keys, non-core tags, anchors/aliases and merge keys are problems."""
    assert_single_problem(case, tmp_path)


def test_explicit_str_tag_keeps_a_number_as_text(tmp_path: Path) -> None:
    """!!str forces a string even for a plain scalar that looks like a number."""
    config = parse(base_config(append="    resource_name: !!str 2024\n"), tmp_path)
    assert config.routes[0].resource_name == "2024"


def test_empty_value_is_reported_at_its_key_line(tmp_path: Path) -> None:
    """A key with no value is reported at the key's line, not at the next token's line."""
    problems = problems_of(base_config({2: "public_url:", 3: "\n\nissuers:"}), tmp_path)
    assert [(p.line, p.key_path, p.message) for p in problems] == [
        (2, "public_url", "expected a string, got nothing (null)")
    ]


# --------------------------------------------------------------------------- types


# fmt: off
TYPES_CASES = cases(
    Bad("port-text", 1, "listen.port", "'eighty' is not an integer", replace={1: "listen: {port: eighty}"}),
    Bad("port-quoted-number", 1, "listen.port", "'8080' is not an integer",
        replace={1: "listen: {port: '8080'}"}),
    Bad("port-bool", 1, "listen.port", "true is not an integer", replace={1: "listen: {port: true}"}),
    Bad("port-float", 1, "listen.port", "80.5 is not an integer", replace={1: "listen: {port: 80.5}"}),
    Bad("port-too-big", 1, "listen.port", "must be between 0 and 65535",
        replace={1: "listen: {port: 65536}"}),
    Bad("port-negative", 1, "listen.port", "must be between 0 and 65535", replace={1: "listen: {port: -1}"}),
    Bad("host-number", 1, "listen.host", "123 is not a string (quote it", replace={1: "listen: {host: 123}"}),
    Bad("host-empty", 1, "listen.host", "must not be empty", replace={1: "listen: {host: ''}"}),
    Bad("listen-not-mapping", 1, "listen", "8080 is not a mapping", replace={1: "listen: 8080"}),
    Bad("listen-unknown-key", 1, "listen.prot", "did you mean 'port'?", replace={1: "listen: {prot: 1}"}),
    Bad("scopes-not-list", 10, "routes[0].scopes", "'mcp:access' is not a list",
        replace={10: "    scopes: mcp:access"}),
    Bad("scope-not-string", 10, "routes[0].scopes[1]", "1 is not a string",
        replace={10: "    scopes: [a, 1]"}),
    Bad("scopes-block-list-item", 12, "routes[0].scopes[1]", "expected a string, got a list",
        replace={10: "    scopes:\n      - a\n      - [b]"}),
    Bad("timeout-zero", 11, "routes[0].connect_timeout_s", "must be finite and greater than zero",
        append="    connect_timeout_s: 0\n"),
    Bad("timeout-negative", 11, "routes[0].response_timeout_s", "greater than zero",
        append="    response_timeout_s: -5\n"),
    Bad("timeout-text", 11, "routes[0].response_timeout_s", "'soon' is not a number of seconds",
        append="    response_timeout_s: soon\n"),
    Bad("timeout-infinite", 11, "routes[0].connect_timeout_s", "must be finite",
        append="    connect_timeout_s: .inf\n"),
    Bad("timeout-bool", 11, "routes[0].connect_timeout_s", "true is not a number of seconds",
        append="    connect_timeout_s: yes\n"),
    Bad("max-body-zero", 11, "routes[0].max_body_bytes", "must be at least 1",
        append="    max_body_bytes: 0\n"),
    Bad("max-body-float", 11, "routes[0].max_body_bytes", "1.5 is not an integer",
        append="    max_body_bytes: 1.5\n"),
    Bad("resource-name-empty", 11, "routes[0].resource_name", "must not be empty",
        append="    resource_name: ' '\n"),
    Bad("leeway-negative", 7, "issuers[0].leeway_s", "zero or more",
        replace={6: "    jwks: {discover: true}\n    leeway_s: -1"}),
    Bad("cooldown-zero", 7, "issuers[0].jwks_refresh_cooldown_s", "greater than zero",
        replace={6: "    jwks: {discover: true}\n    jwks_refresh_cooldown_s: 0"}),
    Bad("max-age-text", 7, "issuers[0].jwks_max_age_s", "'10m' is not a number of seconds",
        replace={6: "    jwks: {discover: true}\n    jwks_max_age_s: 10m"}),
    Bad("http-timeout-null", 7, "issuers[0].http_timeout_s", "got nothing (null)",
        replace={6: "    jwks: {discover: true}\n    http_timeout_s:"}),
    Bad("typ-flag-text", 7, "issuers[0].require_at_jwt_typ", "'sometimes' is not true or false",
        replace={6: "    jwks: {discover: true}\n    require_at_jwt_typ: sometimes"}),
    Bad("issuers-not-list", 3, "issuers", "expected a list, got a mapping",
        replace={4: "  issuer: https://auth.example.com", 5: "  algorithms: [RS256]",
                 6: "  jwks: {discover: true}"}),
    Bad("route-not-mapping", 8, "routes[0]", "'/github/mcp' is not a mapping",
        replace={8: "  - /github/mcp", 9: "", 10: ""}),
)
# fmt: on


@pytest.mark.parametrize("case", TYPES_CASES)
def test_types(tmp_path: Path, case: Bad) -> None:
    """Wrong types and out-of-range numbers are reported at the value's line."""
    assert_single_problem(case, tmp_path)


def test_leeway_may_be_zero(tmp_path: Path) -> None:
    """leeway_s accepts zero (no clock skew allowed); ports accept 0 (ephemeral)."""
    config = parse(
        base_config({1: "listen: {port: 0}", 6: "    jwks: {discover: true}\n    leeway_s: 0"}), tmp_path
    )
    assert (config.issuers[0].leeway_s, config.listen.port) == (0.0, 0)


# --------------------------------------------------------------------------- required keys


# fmt: off
REQUIRED_KEYS_CASES = cases(
    Bad("public-url", 1, "public_url", "required key is missing", replace={2: "# public_url removed"}),
    Bad("issuers", 1, "issuers", "required key is missing",
        replace={3: "# no issuers", 4: "#", 5: "#", 6: "#"}),
    Bad("routes", 1, "routes", "required key is missing",
        replace={7: "# no routes", 8: "#", 9: "#", 10: "#"}),
    Bad("issuer", 4, "issuers[0].issuer", "required key is missing", replace={4: "  - leeway_s: 1"}),
    Bad("algorithms", 4, "issuers[0].algorithms", "required key is missing", replace={5: "    leeway_s: 1"}),
    Bad("jwks", 4, "issuers[0]", "choose exactly one of: jwks", replace={6: "    leeway_s: 1"}),
    Bad("path", 8, "routes[0].path", "required key is missing", replace={8: "  - resource_name: GitHub"}),
    Bad("upstream", 8, "routes[0].upstream", "required key is missing",
        replace={9: "    resource_name: GitHub"}),
    Bad("empty-issuers", 3, "issuers", "at least one issuer is required",
        replace={3: "issuers: []", 4: "#", 5: "#", 6: "#"}),
    Bad("empty-routes", 7, "routes", "at least one route is required",
        replace={7: "routes: []", 8: "#", 9: "#", 10: "#"}),
)
# fmt: on


@pytest.mark.parametrize("case", REQUIRED_KEYS_CASES)
def test_required_keys(tmp_path: Path, case: Bad) -> None:
    """Missing required keys are reported at the line of the mapping that should hold them."""
    assert_single_problem(case, tmp_path)


# --------------------------------------------------------------------------- environment


def test_env_substitution_retypes_plain_scalars(tmp_path: Path) -> None:
    """${NAME} in a plain scalar is re-typed after substitution, so port: ${PORT} is an int."""
    text = base_config(
        {
            1: "listen:\n  host: ${HOST}\n  port: ${PORT}",
            2: "public_url: https://${DOMAIN}/",
            4: '  - issuer: "${ISSUER}"',
        }
    )
    env = {
        "HOST": "10.0.0.6",
        "PORT": "9090",
        "DOMAIN": "mcp.example.org",
        "ISSUER": "https://auth.example.org",
    }
    config = parse(text, tmp_path, env)
    assert config.listen == ListenConfig(host="10.0.0.6", port=9090)
    assert config.public_url == "https://mcp.example.org"
    assert config.issuers[0].issuer == "https://auth.example.org"


def test_env_defaults_and_escapes(tmp_path: Path) -> None:
    """${NAME:-default} applies when NAME is unset or empty; $${ is a literal ${."""
    text = base_config(
        {1: "listen:\n  port: ${PORT:-8181}\n  host: ${HOST:-127.0.0.2}"},
        append="    resource_name: price is $${AMOUNT} or $5\n",
    )
    config = parse(text, tmp_path, {"HOST": ""})
    assert config.listen == ListenConfig(host="127.0.0.2", port=8181)
    assert config.routes[0].resource_name == "price is ${AMOUNT} or $5"


# fmt: off
ENV_PROBLEMS_CASES = cases(
    Bad("missing-variable", 3, "listen.port", "environment variable PORT is not set",
        replace={1: "listen:\n  host: localhost\n  port: ${PORT}"}),
    Bad("quoted-stays-string", 1, "listen.port", "value from ${PORT} is not an integer",
        replace={1: 'listen: {port: "${PORT}"}'}, env={"PORT": "8080"}),
    Bad("malformed-reference", 9, "routes[0].upstream", "malformed '${' reference",
        replace={9: "    upstream: http://${HOST/mcp"}),
    Bad("missing-in-list-item", 12, "routes[0].scopes[1]", "environment variable EXTRA_SCOPE is not set",
        replace={10: "    scopes:\n      - a\n      - ${EXTRA_SCOPE}"}),
)
# fmt: on


@pytest.mark.parametrize("case", ENV_PROBLEMS_CASES)
def test_env_problems(tmp_path: Path, case: Bad) -> None:
    """Unset variables and malformed references are reported at the value's line and path."""
    assert_single_problem(case, tmp_path)


SECRET = "hunter2-s3cr3t"


@pytest.mark.parametrize(
    ("replace", "append", "env", "expected"),
    [
        (
            {1: "listen:\n  port: ${PORT}"},
            "",
            {"PORT": SECRET},
            "listen.port: value from ${PORT} is not an integer",
        ),
        (
            {1: "listen:\n  host: ${HOST}"},
            "",
            {"HOST": "12345"},
            "listen.host: value from ${HOST} is not a string",
        ),
        (
            {2: "public_url: ${URL}"},
            "",
            {"URL": f"http://{SECRET}.example.com"},
            "public_url: must be https (http only for loopback)",
        ),
        (
            {5: "    algorithms:\n      - ${ALG}"},
            "",
            {"ALG": SECRET},
            "issuers[0].algorithms[0]: unknown algorithm value from ${ALG}",
        ),
        (
            {9: "    upstream: ${UPSTREAM}"},
            "",
            {"UPSTREAM": f"http://bot:{SECRET}@127.0.0.1/mcp"},
            "routes[0].upstream: put credentials in `credential`, not the URL",
        ),
        (
            {10: "    scopes:\n      - ${S}\n      - ${S}"},
            "",
            {"S": SECRET},
            "routes[0].scopes[1]: duplicate scope value from ${S}",
        ),
        (
            {6: "    jwks: {file: '${KEYS}'}"},
            "",
            {"KEYS": SECRET},
            "issuers[0].jwks.file: JWKS file value from ${KEYS}",
        ),
        (
            {},
            "    max_body_bytes: ${MAX}\n",
            {"MAX": "-" + "9" * 5},
            "routes[0].max_body_bytes: value from ${MAX} is out",
        ),
        (
            {1: "listen: {port: !!int '${PORT}'}"},
            "",
            {"PORT": SECRET},
            "listen.port: value from ${PORT} is not a valid",
        ),
    ],
)
def test_env_values_are_never_echoed(
    tmp_path: Path, replace: dict[int, str], append: str, env: dict[str, str], expected: str
) -> None:
    """Problems about values from ${NAME} name the variable but never show its (maybe secret) value."""
    problems = problems_of(base_config(replace, append), tmp_path, env)
    rendered = "\n".join(map(str, problems))
    assert expected in rendered
    for value in env.values():
        assert value not in rendered


# --------------------------------------------------------------------------- public_url / issuer


# fmt: off
URL_RULES_FOR_PUBLIC_URL_AND_ISSUER_CASES = cases(
    Bad("public-url-http", 2, "public_url", "must be https (http only for loopback)",
        replace={2: "public_url: http://mcp.example.com"}),
    Bad("public-url-http-lookalike", 2, "public_url", "must be https",
        replace={2: "public_url: http://127.0.0.1.example.com"}),
    Bad("public-url-query", 2, "public_url", "must not have a query",
        replace={2: "public_url: https://mcp.example.com/?x=1"}),
    Bad("public-url-empty-query", 2, "public_url", "must not have a query",
        replace={2: "public_url: https://mcp.example.com/?"}),
    Bad("public-url-fragment", 2, "public_url", "must not have a fragment",
        replace={2: "public_url: https://mcp.example.com/#top"}),
    Bad("public-url-relative", 2, "public_url", "must be an absolute http(s) URL",
        replace={2: "public_url: mcp.example.com"}),
    Bad("public-url-ftp", 2, "public_url", "must be an absolute http(s) URL",
        replace={2: "public_url: ftp://mcp.example.com"}),
    Bad("public-url-bad-port", 2, "public_url", "is not a valid URL",
        replace={2: "public_url: https://mcp.example.com:99999"}),
    Bad("public-url-credentials", 2, "public_url", "must not contain credentials",
        replace={2: "public_url: https://me:pw@mcp.example.com"}),
    Bad("issuer-http", 4, "issuers[0].issuer", "must be https (http only for loopback)",
        replace={4: "  - issuer: http://auth.example.com"}),
    Bad("issuer-query", 4, "issuers[0].issuer", "must not have a query",
        replace={4: "  - issuer: https://auth.example.com?tenant=1"}),
    Bad("issuer-fragment", 4, "issuers[0].issuer", "must not have a fragment",
        replace={4: "  - issuer: https://auth.example.com#x"}),
    Bad("issuer-not-url", 4, "issuers[0].issuer", "must be an absolute http(s) URL",
        replace={4: "  - issuer: auth.example.com"}),
    Bad("issuer-duplicate", 7, "issuers[1].issuer",
        "duplicate issuer 'https://auth.example.com' (also at line 4, issuers[0].issuer)",
        replace={6: "    jwks: {discover: true}\n  - issuer: https://auth.example.com\n"
                    "    algorithms: [ES256]\n    jwks: {discover: true}"}),
)
# fmt: on


@pytest.mark.parametrize("case", URL_RULES_FOR_PUBLIC_URL_AND_ISSUER_CASES)
def test_url_rules_for_public_url_and_issuer(tmp_path: Path, case: Bad) -> None:
    """public_url and issuer must be https (http for loopback), without query or fragment; issuers unique."""
    assert_single_problem(case, tmp_path)


def test_issuer_is_kept_byte_for_byte(tmp_path: Path) -> None:
    """The issuer identifier is not normalised: case, trailing slash and default port survive."""
    for issuer in (
        "https://Auth.Example.com/",
        "https://auth.example.com:443/tenant",
        "https://auth.example.com/a/",
    ):
        config = parse(base_config({4: f"  - issuer: {issuer}"}), tmp_path)
        assert config.issuers[0].issuer == issuer


def test_issuers_differing_only_in_trailing_slash_are_distinct(tmp_path: Path) -> None:
    """Issuers are compared exactly, so 'x' and 'x/' are two different issuers."""
    text = base_config(
        {
            6: "    jwks: {discover: true}\n  - issuer: https://auth.example.com/\n"
            "    algorithms: [ES256]\n    jwks: {discover: true}"
        }
    )
    assert len(parse(text, tmp_path).issuers) == 2


# --------------------------------------------------------------------------- algorithms / jwks


# fmt: off
ALGORITHM_AND_JWKS_RULES_CASES = cases(
    Bad("alg-none", 5, "issuers[0].algorithms[1]", "alg none is never accepted",
        replace={5: "    algorithms: [RS256, none]"}),
    Bad("alg-none-any-case", 5, "issuers[0].algorithms[0]", "alg none is never accepted",
        replace={5: "    algorithms: [NoNe]"}),
    Bad("alg-hs256", 5, "issuers[0].algorithms[0]", "symmetric algorithms cannot be verified with a JWKS",
        replace={5: "    algorithms: [HS256]"}),
    Bad("alg-hs512", 5, "issuers[0].algorithms[1]", "symmetric algorithms cannot be verified",
        replace={5: "    algorithms: [ES256, HS512]"}),
    Bad("alg-wrong-case", 5, "issuers[0].algorithms[0]", "unknown algorithm 'rs256' (did you mean 'RS256'?)",
        replace={5: "    algorithms: [rs256]"}),
    Bad("alg-eddsa-case", 5, "issuers[0].algorithms[0]", "(did you mean 'EdDSA'?)",
        replace={5: "    algorithms: [EDDSA]"}),
    Bad("alg-unknown", 5, "issuers[0].algorithms[0]", "unknown algorithm 'XYZ999' (supported: RS256",
        replace={5: "    algorithms: [XYZ999]"}),
    Bad("alg-empty", 5, "issuers[0].algorithms", "at least one algorithm is required",
        replace={5: "    algorithms: []"}),
    Bad("alg-duplicate", 7, "issuers[0].algorithms[1]", "duplicate algorithm 'RS256' (also at line 6)",
        replace={5: "    algorithms:\n      - RS256\n      - RS256"}),
    Bad("alg-not-list", 5, "issuers[0].algorithms", "'RS256' is not a list",
        replace={5: "    algorithms: RS256"}),
    Bad("jwks-empty", 6, "issuers[0].jwks", "choose exactly one of: discover, url, file",
        replace={6: "    jwks: {}"}),
    Bad("jwks-two-sources", 6, "issuers[0].jwks", "choose exactly one of: discover, url, file",
        replace={6: "    jwks: {discover: true, url: 'https://auth.example.com/jwks'}"}),
    Bad("jwks-two-sources-block", 6, "issuers[0].jwks", "choose exactly one of: discover, url, file",
        replace={6: "    jwks:\n      discover: true\n      file: keys.json"}),
    Bad("jwks-discover-false", 6, "issuers[0].jwks.discover", "must be true",
        replace={6: "    jwks: {discover: false}"}),
    Bad("jwks-discover-text", 6, "issuers[0].jwks.discover", "'yes please' is not true or false",
        replace={6: "    jwks: {discover: yes please}"}),
    Bad("jwks-url-http", 6, "issuers[0].jwks.url", "must be https (http only for loopback)",
        replace={6: "    jwks: {url: 'http://auth.example.com/jwks'}"}),
    Bad("jwks-url-not-url", 6, "issuers[0].jwks.url", "must be an absolute http(s) URL",
        replace={6: "    jwks: {url: /jwks.json}"}),
    Bad("jwks-file-missing", 6, "issuers[0].jwks.file", "does not exist",
        replace={6: "    jwks: {file: missing.json}"}),
    Bad("jwks-file-directory", 6, "issuers[0].jwks.file", "is not a regular file",
        replace={6: "    jwks: {file: .}"}),
    Bad("jwks-typo", 6, "issuers[0].jwks.uri", "unknown key 'uri' (did you mean 'url'?)",
        replace={6: "    jwks: {uri: 'https://auth.example.com/jwks'}"}),
    Bad("jwks-not-mapping", 6, "issuers[0].jwks", "'discover' is not a mapping",
        replace={6: "    jwks: discover"}),
)
# fmt: on


@pytest.mark.parametrize("case", ALGORITHM_AND_JWKS_RULES_CASES)
def test_algorithm_and_jwks_rules(tmp_path: Path, case: Bad) -> None:
    """Only asymmetric JWS algorithms; jwks is exactly one of discover: true, url, file."""
    assert_single_problem(case, tmp_path)


def test_relative_jwks_file_resolves_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """jwks.file is relative to the config file's folder, never to the current directory."""
    config_dir = tmp_path / "conf"
    (config_dir / "keys").mkdir(parents=True)
    (config_dir / "keys" / "jwks.json").write_text('{"keys": []}', encoding="utf-8")
    (config_dir / "gateway.yaml").write_text(
        base_config({6: "    jwks: {file: keys/jwks.json}"}), encoding="utf-8"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config(config_dir / "gateway.yaml", env={})

    assert config.issuers[0].jwks == JwksFile(config_dir / "keys" / "jwks.json")


def test_jwks_file_in_cwd_only_is_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A jwks.file that exists only relative to the CWD is reported, naming the config-relative path."""
    config_dir = tmp_path / "conf"
    config_dir.mkdir()
    (tmp_path / "jwks.json").write_text('{"keys": []}', encoding="utf-8")
    (config_dir / "gateway.yaml").write_text(
        base_config({6: "    jwks: {file: jwks.json}"}), encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)

    with pytest.raises(ConfigError) as caught:
        load_config(config_dir / "gateway.yaml", env={})

    expected = f"issuers[0].jwks.file: JWKS file '{config_dir / 'jwks.json'}' does not exist"
    assert [str(p) for p in caught.value.problems] == [f"{config_dir / 'gateway.yaml'}:6: {expected}"]


def test_absolute_jwks_file_and_url_sources(tmp_path: Path) -> None:
    """An absolute jwks.file is used as is; jwks.url keeps the URL."""
    keys = tmp_path / "keys.json"
    keys.write_text("{}", encoding="utf-8")
    config = parse(base_config({6: f"    jwks: {{file: '{keys}'}}"}), tmp_path / "unrelated")
    assert config.issuers[0].jwks == JwksFile(keys)
    config = parse(base_config({6: "    jwks: {url: 'https://auth.example.com/jwks.json'}"}), tmp_path)
    assert config.issuers[0].jwks == JwksUrl("https://auth.example.com/jwks.json")


# --------------------------------------------------------------------------- routes


SECOND_ROUTE = "  - path: {path}\n    upstream: http://127.0.0.1:9001/mcp\n"


# fmt: off
ROUTE_RULES_CASES = cases(
    Bad("path-relative", 8, "routes[0].path", "must start with '/'", replace={8: "  - path: github/mcp"}),
    Bad("path-whitespace", 8, "routes[0].path", "must not contain whitespace",
        replace={8: "  - path: /git hub"}),
    Bad("path-tab", 8, "routes[0].path", "must not contain whitespace",
        replace={8: '  - path: "/git\\thub"'}),
    Bad("path-query", 8, "routes[0].path", "must not contain '?' or '#'", replace={8: "  - path: /mcp?x=1"}),
    Bad("path-fragment", 8, "routes[0].path", "must not contain '?' or '#'",
        replace={8: "  - path: '/mcp#x'"}),
    Bad("path-dot-dot", 8, "routes[0].path", "must not contain '.' or '..' segments",
        replace={8: "  - path: /a/../mcp"}),
    Bad("path-dot", 8, "routes[0].path", "'.' or '..' segments", replace={8: "  - path: /./mcp"}),
    Bad("path-encoded-dot-dot", 8, "routes[0].path", "'.' or '..' segments",
        replace={8: "  - path: /a/%2E%2e/mcp"}),
    Bad("path-empty-segment", 8, "routes[0].path", "must not contain empty segments",
        replace={8: "  - path: /a//mcp"}),
    Bad("path-root", 8, "routes[0].path", "'/' cannot be a route", replace={8: "  - path: /"}),
    Bad("path-well-known", 8, "routes[0].path", "is reserved for the gateway itself",
        replace={8: "  - path: /.well-known/oauth-protected-resource"}),
    Bad("path-well-known-itself", 8, "routes[0].path", "is reserved", replace={8: "  - path: /.well-known/"}),
    Bad("path-healthz", 8, "routes[0].path", "is reserved", replace={8: "  - path: /healthz"}),
    Bad("path-readyz", 8, "routes[0].path", "is reserved", replace={8: "  - path: /readyz/"}),
    Bad("path-not-string", 8, "routes[0].path", "42 is not a string", replace={8: "  - path: 42"}),
    Bad("path-duplicate", 11, "routes[1].path", "duplicate route path '/github/mcp' (also at line 8",
        append=SECOND_ROUTE.format(path="/github/mcp/")),
    Bad("upstream-ftp", 9, "routes[0].upstream", "upstream must be an http(s) URL",
        replace={9: "    upstream: ftp://files.example.com/mcp"}),
    Bad("upstream-file", 9, "routes[0].upstream", "upstream must be an http(s) URL",
        replace={9: "    upstream: file:///etc/passwd"}),
    Bad("upstream-unix", 9, "routes[0].upstream", "upstream must be an http(s) URL",
        replace={9: "    upstream: unix:/run/mcp.sock"}),
    Bad("upstream-no-host", 9, "routes[0].upstream", "upstream must be an http(s) URL",
        replace={9: "    upstream: http:///mcp"}),
    Bad("upstream-no-scheme", 9, "routes[0].upstream", "upstream must be an http(s) URL",
        replace={9: "    upstream: 127.0.0.1:9000/mcp"}),
    Bad("upstream-bad-ipv6", 9, "routes[0].upstream", "upstream must be an http(s) URL",
        replace={9: "    upstream: 'http://[::1/mcp'"}),
    Bad("upstream-fragment", 9, "routes[0].upstream", "must not have a fragment",
        replace={9: "    upstream: http://127.0.0.1:9000/mcp#x"}),
    Bad("upstream-credentials", 9, "routes[0].upstream", "put credentials in `credential`, not the URL",
        replace={9: "    upstream: http://bot:pw@127.0.0.1:9000/mcp"}),
    Bad("scope-space", 10, "routes[0].scopes[0]", "RFC 6749 §3.3",
        replace={10: "    scopes: ['mcp access']"}),
    Bad("scope-empty", 10, "routes[0].scopes[1]", "non-empty token", replace={10: "    scopes: [a, '']"}),
    Bad("scope-quote", 10, "routes[0].scopes[0]", "RFC 6749", replace={10: "    scopes: ['a\"b']"}),
    Bad("scope-backslash", 10, "routes[0].scopes[0]", "RFC 6749", replace={10: "    scopes: ['a\\b']"}),
    Bad("scope-non-ascii", 10, "routes[0].scopes[0]", "RFC 6749", replace={10: "    scopes: [café]"}),
    Bad("scope-duplicate", 12, "routes[0].scopes[1]", "duplicate scope 'mcp:access' (also at line 11)",
        replace={10: "    scopes:\n      - mcp:access\n      - mcp:access"}),
    Bad("resource-fragment", 11, "routes[0].resource", "must not have a fragment",
        append="    resource: https://mcp.example.com/github#x\n"),
    Bad("resource-not-http", 11, "routes[0].resource", "must be an absolute http(s) URL",
        append="    resource: urn:example:github\n"),
    Bad("resource-duplicate", 14, "routes[1].resource",
        "duplicate resource 'https://mcp.example.com/shared' (also at line 11, routes[0].resource)",
        append="    resource: https://mcp.example.com/shared\n" + SECOND_ROUTE.format(path="/other")
               + "    resource: https://mcp.example.com/shared\n"),
    Bad("resource-clashes-with-default", 13, "routes[1].resource",
        "duplicate resource 'https://mcp.example.com/github/mcp' "
            "(also at line 8, routes[0].resource (default: public_url + path))",
        append=SECOND_ROUTE.format(path="/other") + "    resource: https://mcp.example.com/github/mcp\n"),
)
# fmt: on


@pytest.mark.parametrize("case", ROUTE_RULES_CASES)
def test_route_rules(tmp_path: Path, case: Bad) -> None:
    """Route paths, upstreams, scopes and resources are validated one by one and across routes."""
    assert_single_problem(case, tmp_path)


def test_route_path_trailing_slash_is_stripped(tmp_path: Path) -> None:
    """One trailing slash is removed from a route path (and from its default resource)."""
    config = parse(base_config({8: "  - path: /github/mcp/"}), tmp_path)
    assert config.routes[0].path == "/github/mcp"
    assert config.routes[0].resource == "https://mcp.example.com/github/mcp"


def test_default_resource_clash_is_reported_on_the_later_route(tmp_path: Path) -> None:
    """An explicit resource equal to a later route's default is reported at that later route."""
    text = base_config(
        append="    resource: https://mcp.example.com/other\n" + SECOND_ROUTE.format(path="/other")
    )
    problems = problems_of(text, tmp_path)
    assert [(p.line, p.key_path) for p in problems] == [(12, "routes[1].resource")]
    assert "(also at line 11, routes[0].resource)" in problems[0].message


# --------------------------------------------------------------------------- allowed_origins


# fmt: off
ALLOWED_ORIGINS_RULES_CASES = cases(
    Bad("origin-wildcard", 11, "allowed_origins[0]", "'*' is not allowed", append="allowed_origins: ['*']\n"),
    Bad("origin-trailing-slash", 11, "allowed_origins[0]", "without a path or trailing slash",
        append="allowed_origins: ['https://app.example.com/']\n"),
    Bad("origin-path", 11, "allowed_origins[1]", "without a path",
        append="allowed_origins: ['https://a.example.com', 'https://app.example.com/login']\n"),
    Bad("origin-no-scheme", 11, "allowed_origins[0]", "origin must be an absolute http(s) URL",
        append="allowed_origins: [app.example.com]\n"),
    Bad("origin-other-scheme", 11, "allowed_origins[0]", "must be an absolute http(s) URL",
        append="allowed_origins: ['chrome-extension://abc']\n"),
    Bad("origin-query", 11, "allowed_origins[0]", "must not have a query",
        append="allowed_origins: ['https://app.example.com?x']\n"),
    Bad("origin-duplicate-after-normalising", 11, "allowed_origins[1]",
        "duplicate origin 'https://app.example.com' (also at line 11)",
        append="allowed_origins: ['https://app.example.com', 'https://APP.example.com:443']\n"),
    Bad("origins-not-list", 11, "allowed_origins", "'https://app.example.com' is not a list",
        append="allowed_origins: https://app.example.com\n"),
)
# fmt: on


@pytest.mark.parametrize("case", ALLOWED_ORIGINS_RULES_CASES)
def test_allowed_origins_rules(tmp_path: Path, case: Bad) -> None:
    """allowed_origins holds exact scheme://host[:port] origins; '*' is refused."""
    problem = assert_single_problem(case, tmp_path)
    if case.id == "origin-wildcard":
        assert "DNS rebinding" in problem.message


def test_allowed_origins_are_normalised(tmp_path: Path) -> None:
    """Origins are lowercased and lose the default port, matching what browsers send."""
    text = base_config(
        append="allowed_origins: ['HTTPS://App.Example.com:443', 'http://LOCALHOST:3000', 'http://[::1]:80']\n"
    )
    assert parse(text, tmp_path).allowed_origins == (
        "https://app.example.com",
        "http://localhost:3000",
        "http://[::1]",
    )


# --------------------------------------------------------------------------- many problems at once


MANY_PROBLEMS = """\
listen: {host: 0.0.0.0, port: 99999}
public_url: http://mcp.example.com
public_url: https://mcp.example.com
issuers:
  - issuer: https://auth.example.com
    algorithms: [none, HS256]
    jwks: {discover: true, file: keys.json}
    leway_s: 5
  - issuer: https://auth.example.com
    algorithms: [RS256]
    jwks: {url: 'https://auth.example.com/jwks'}
routes:
  - path: /.well-known/mcp
    upstream: ftp://upstream.example.com
    scopes: ['bad scope']
  - path: /tools
    upstream: http://bot:pw@127.0.0.1:9000/mcp
    connect_timeout_s: 0
  - path: /tools/
    upstream: http://127.0.0.1:9001/mcp
  - upstrem: http://127.0.0.1:9002/mcp
allowed_origins: ['*', 'https://app.example.com/']
port: ${UNSET_PORT}
"""


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    """A config with many mistakes reports every one of them, sorted by line, in one ConfigError."""
    problems = problems_of(MANY_PROBLEMS, tmp_path)
    assert [(p.line, p.key_path) for p in problems] == [
        (1, "listen.port"),
        (2, "public_url"),
        (3, "public_url"),  # duplicate key
        (6, "issuers[0].algorithms[0]"),
        (6, "issuers[0].algorithms[1]"),
        (7, "issuers[0].jwks"),
        (8, "issuers[0].leway_s"),
        (9, "issuers[1].issuer"),
        (13, "routes[0].path"),
        (14, "routes[0].upstream"),
        (15, "routes[0].scopes[0]"),
        (17, "routes[1].upstream"),
        (18, "routes[1].connect_timeout_s"),
        (19, "routes[2].path"),
        (21, "routes[3].upstrem"),  # unknown keys come first,
        (21, "routes[3].path"),  # then missing required keys
        (21, "routes[3].upstream"),
        (22, "allowed_origins[0]"),
        (22, "allowed_origins[1]"),
        (23, "port"),  # unset variable (reported once, before the unknown key)
        (23, "port"),
    ]
    rendered = str(ConfigError(problems))
    assert rendered.count("\n") == len(problems) - 1
    assert "environment variable UNSET_PORT is not set" in rendered
