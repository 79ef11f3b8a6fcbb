"""The one MCP method table and the tables derived from it."""

from __future__ import annotations

import pytest

from gateway.mcp.methods import (
    COMPLETION_REFS,
    LIFECYCLE_METHODS,
    LIST_METHODS,
    METHODS,
    REMOVED_IN_MODERN,
    RESPONSE_METHOD,
    USE_METHOD,
    Prompt,
    Resource,
    Target,
    Tool,
    target_type,
)


def test_list_methods_table() -> None:
    """The four list methods map to their result key, naming field and target kind."""
    table = {name: (m.result_key, m.item_key, m.target.kind) for name, m in LIST_METHODS.items()}
    assert table == {
        "tools/list": ("tools", "name", "tool"),
        "prompts/list": ("prompts", "name", "prompt"),
        "resources/list": ("resources", "uri", "resource"),
        "resources/templates/list": ("resourceTemplates", "uriTemplate", "resource"),
    }


def test_each_kind_of_target_has_one_use_method() -> None:
    """tools/call, prompts/get and resources/read use their kinds; each acts on that kind."""
    assert dict(USE_METHOD) == {Tool: "tools/call", Prompt: "prompts/get", Resource: "resources/read"}
    assert all(target_type(method) is kind for kind, method in USE_METHOD.items())


def test_methods_that_name_a_target() -> None:
    """Five methods act on a target of their own; a completion's ref is read apart, unknown ones none."""
    named = {name: method.target for name, method in METHODS.items() if method.target is not None}
    assert named == {
        "tools/call": Tool,
        "prompts/get": Prompt,
        "resources/read": Resource,
        "resources/subscribe": Resource,
        "resources/unsubscribe": Resource,
    }
    assert target_type("completion/complete") is None and METHODS["completion/complete"].completes
    assert target_type("vendor/custom") is None
    assert dict(COMPLETION_REFS) == {"ref/prompt": Prompt, "ref/resource": Resource}


def test_session_plumbing_and_removed_methods() -> None:
    """Lifecycle methods (and a client's response) survive `default: deny`; 2026 removed (un)subscribe."""
    assert LIFECYCLE_METHODS == {
        RESPONSE_METHOD,
        "initialize",
        "notifications/initialized",
        "notifications/cancelled",
        "ping",
        "server/discover",
    }
    assert REMOVED_IN_MODERN == {"resources/subscribe", "resources/unsubscribe"}
    assert {name for name, method in METHODS.items() if method.name_header} == set(USE_METHOD.values())


@pytest.mark.parametrize(
    ("target", "kind", "identifier"),
    [
        (Tool("echo"), "tool", "echo"),
        (Prompt("greet"), "prompt", "greet"),
        (Resource("a://b"), "resource", "a://b"),
    ],
)
def test_a_target_names_its_kind_and_identifier(target: Target, kind: str, identifier: str) -> None:
    """Each target says what kind it is and the name or URI the rules match."""
    assert (target.kind, target.identifier) == (kind, identifier)


@pytest.mark.parametrize(
    ("target", "rule_key"),
    [
        (Tool("Echo "), "Echo "),
        (Prompt("gr\u0435et"), "gr\u0435et"),
        (Resource("DOCS://Files/%70rivate"), "docs://files/private"),
        (Resource("docs://files/{name}"), "docs://files/{name}"),
        (Resource("docs://files/a%2Fb"), None),
    ],
)
def test_rules_match_the_rule_key_the_log_shows_the_identifier(target: Target, rule_key: str | None) -> None:
    """Names are matched exactly; a URI by its normal form (None: it has none), its spelling kept."""
    assert target.rule_key == rule_key
    assert target.identifier in (getattr(target, "name", None), getattr(target, "uri", None))


def test_resources_are_equal_by_spelling() -> None:
    """Two spellings of one resource are two targets (the log keeps each), one key for the rules."""
    assert Resource("docs://a/%70") != Resource("docs://a/p")
    assert Resource("docs://a/%70").rule_key == Resource("docs://a/p").rule_key
    assert Resource("docs://a/p") == Resource("docs://a/p") and hash(Resource("x")) == hash(Resource("x"))
