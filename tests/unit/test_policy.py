"""The pure policy: globs, first-match rules, defaults, visibility and derived scopes."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import parse_config_text
from gateway.mcp.policy import (
    Decision,
    GlobError,
    Operation,
    RoutePolicy,
    compile_glob,
    decide,
    is_visible,
    scopes_supported,
)

RULES = """
public_url: https://gw.example
issuers: [{issuer: https://as.example, algorithms: [RS256], jwks: {discover: true}}]
routes:
  - path: /mcp
    upstream: http://127.0.0.1:9000/mcp
    scopes: [mcp]
    tools:
      "get_*": [repo:read]
      "delete_*": [repo:admin, repo:write]
      "*": [repo:write]
    resources:
      "repo://*/readme": [repo:read]
      "test://template/*": [tmpl]
    prompts:
      "summarise": [repo:read]
    methods:
      "completion/complete": [complete]
      "logging/setLevel": [admin]
      "notifications/*": []
  - path: /strict
    upstream: http://127.0.0.1:9000/mcp
    default: deny
    methods: {"tools/list": [list]}
  - path: /open
    upstream: http://127.0.0.1:9000/mcp
    scopes: [mcp]
    default: allow
    tools: {"admin_*": [admin]}
"""


def policy_of(route: str) -> RoutePolicy:
    config = parse_config_text(RULES, Path("/tmp/rules.yaml"), {})
    return next(r.policy for r in config.routes if r.path == route)


def op(method: str, target: str | None = None, kind: str | None = None) -> Operation:
    kinds = {"tools/call": "tool", "prompts/get": "prompt", "resources/read": "resource"}
    return Operation(method, kind or kinds.get(method), target)  # type: ignore[arg-type]


CASES = [
    # (route, operation, granted, allowed, required, rule)
    ("/mcp", op("tools/call", "get_issue"), "mcp repo:read", True, ("mcp", "repo:read"), "tools['get_*']"),
    ("/mcp", op("tools/call", "get_issue"), "repo:read", False, ("mcp", "repo:read"), "tools['get_*']"),
    (
        "/mcp",
        op("tools/call", "delete_repo"),
        "mcp repo:write",
        False,
        ("mcp", "repo:admin", "repo:write"),
        "tools['delete_*']",
    ),
    ("/mcp", op("tools/call", "create_issue"), "mcp repo:write", True, ("mcp", "repo:write"), "tools['*']"),
    ("/mcp", op("tools/call", "GET_issue"), "mcp repo:read", False, ("mcp", "repo:write"), "tools['*']"),
    (
        "/mcp",
        op("resources/read", "repo://a/readme"),
        "mcp repo:read",
        True,
        ("mcp", "repo:read"),
        "resources['repo://*/readme']",
    ),
    ("/mcp", op("resources/read", "repo://a/secrets"), "mcp repo:read", False, ("mcp",), "default: deny"),
    (
        "/mcp",
        op("resources/subscribe", "repo://a/readme", "resource"),
        "mcp",
        False,
        ("mcp", "repo:read"),
        "resources['repo://*/readme']",
    ),
    (
        "/mcp",
        op("prompts/get", "summarise"),
        "mcp repo:read",
        True,
        ("mcp", "repo:read"),
        "prompts['summarise']",
    ),
    ("/mcp", op("prompts/get", "other"), "mcp repo:read", False, ("mcp",), "default: deny"),
    ("/mcp", op("logging/setLevel"), "mcp", False, ("mcp", "admin"), "methods['logging/setLevel']"),
    ("/mcp", op("tools/list"), "mcp", True, ("mcp",), "default: allow"),
    ("/mcp", op("vendor/custom"), "mcp", True, ("mcp",), "default: allow"),  # unknown method: not a tool call
    ("/mcp", op("notifications/cancelled"), "mcp", True, ("mcp",), "methods['notifications/*']"),
    (
        "/mcp",
        op("completion/complete", "summarise", "prompt"),
        "mcp complete",
        False,
        ("mcp", "complete", "repo:read"),
        "methods['completion/complete'] + prompts['summarise']",
    ),
    (
        "/mcp",
        op("completion/complete", "hidden", "prompt"),
        "mcp complete repo:read",
        False,
        ("mcp",),
        "methods['completion/complete'] + default: deny",
    ),
    ("/strict", op("tools/call", "anything"), "anything", False, (), "default: deny"),
    ("/strict", op("tools/list"), "list", True, ("list",), "methods['tools/list']"),
    ("/strict", op("resources/templates/list"), "list", False, (), "default: deny"),
    ("/strict", op("initialize"), "", True, (), "default: allow"),  # lifecycle survives default: deny
    ("/strict", op("ping"), "", True, (), "default: allow"),
    ("/open", op("tools/call", "anything"), "mcp", True, ("mcp",), "default: allow"),
    ("/open", op("tools/call", "admin_reset"), "mcp", False, ("mcp", "admin"), "tools['admin_*']"),
]


@pytest.mark.parametrize(("route", "operation", "granted", "allowed", "required", "rule"), CASES)
def test_decide(
    route: str, operation: Operation, granted: str, allowed: bool, required: tuple[str, ...], rule: str
) -> None:
    """First match wins, route scopes always apply, defaults decide the rest."""
    decision = decide(policy_of(route), operation, frozenset(granted.split()))
    assert (decision.allowed, decision.required, decision.rule) == (allowed, required, rule)
    if not decision.unconditional:
        assert set(decision.missing) == set(required) - set(granted.split())


def test_default_deny_is_unconditional() -> None:
    """An operation no rule names is refused whatever the scopes: no step-up can help."""
    decision = decide(policy_of("/mcp"), op("tools/call", "x"), frozenset())
    assert decision == Decision(False, ("mcp", "repo:write"), ("mcp", "repo:write"), "tools['*']")
    unnamed = decide(policy_of("/mcp"), op("prompts/get", "x"), frozenset({"mcp", "repo:read"}))
    assert unnamed.unconditional and not unnamed.allowed


@pytest.mark.parametrize(
    ("kind", "name", "granted", "visible"),
    [
        ("tool", "get_issue", "mcp repo:read", True),
        ("tool", "create_issue", "mcp repo:read", False),
        ("resource", "test://template/{id}/data", "mcp tmpl", True),
        ("resource", "test://template/{id}/data", "mcp", False),
        ("prompt", "summarise", "mcp repo:read", True),
        ("prompt", "unlisted", "mcp repo:read repo:write admin", False),
    ],
)
def test_visibility_follows_the_call_decision(kind: str, name: str, granted: str, visible: bool) -> None:
    """A list shows exactly what the caller could use."""
    assert is_visible(policy_of("/mcp"), kind, name, frozenset(granted.split())) is visible  # type: ignore[arg-type]


def test_scopes_supported_is_derived_from_all_rules() -> None:
    """Route scopes first, then every scope a rule can ask for, without repeats."""
    assert scopes_supported(policy_of("/mcp")) == (
        "mcp", "repo:read", "repo:admin", "repo:write", "tmpl", "complete", "admin",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("get_*", ["get_", "get_issue", "get_a/b"], ["Get_issue", "xget_a"]),
        ("?", ["a", "/"], ["", "ab"]),
        ("v[0-9]", ["v1"], ["va", "v10"]),
        ("v[!0-9]", ["va"], ["v1"]),
        ("a.b+c", ["a.b+c"], ["aXb+c", "a.bbc"]),
        ("repo://*/readme", ["repo://x/y/readme"], ["repo://readme"]),
    ],
)
def test_glob_semantics(pattern: str, matches: list[str], misses: list[str]) -> None:
    """Case-sensitive globs over the whole name; regex characters are literal."""
    regex = compile_glob(pattern)
    assert all(regex.fullmatch(name) for name in matches)
    assert not any(regex.fullmatch(name) for name in misses)


@pytest.mark.parametrize("pattern", ["", "a[", "a]", "[]", "a\x00b"])
def test_invalid_globs(pattern: str) -> None:
    with pytest.raises(GlobError):
        compile_glob(pattern)


def test_config_reports_shadowed_and_invalid_patterns(tmp_path: Path) -> None:
    """check-config style problems with file, line and key for rule mistakes."""
    from gateway.config import ConfigError

    text = RULES.replace('"*": [repo:write]', '"*": [repo:write]\n      "get_x": [a]').replace(
        '"summarise": [repo:read]', '"sum[": [repo:read]'
    )
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, tmp_path / "r.yaml", {})
    messages = [str(problem) for problem in caught.value.problems]
    assert any(
        ":12: routes[0].tools.get_x: pattern is shadowed by 'get_*' at line 9" in m for m in messages
    ), messages
    assert any(":17: routes[0].prompts.sum[: invalid pattern" in m for m in messages), messages
