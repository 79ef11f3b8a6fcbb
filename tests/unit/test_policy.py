"""The pure policy: globs, first-match rules, defaults, visibility and derived scopes."""

from __future__ import annotations

import dataclasses
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import RouteConfig, parse_config_text
from gateway.errors import InsufficientScope
from gateway.mcp.methods import Prompt, Resource, Target, Tool
from gateway.mcp.policy import (
    Decision,
    Default,
    DefaultRule,
    GlobError,
    ListVisibility,
    Operation,
    RoutePolicy,
    Rule,
    challenge_scopes,
    combine,
    compile_glob,
    decide,
    is_visible,
    kept_scopes,
    refusal,
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


def line_of(needle: str) -> int:
    return next(number for number, line in enumerate(RULES.splitlines(), 1) if needle in line)


def policy_of(route: str) -> RoutePolicy:
    config = parse_config_text(RULES, Path("/tmp/rules.yaml"), {})
    return next(r.policy for r in config.routes if r.path == route)


KINDS: dict[str, type[Target]] = {"tool": Tool, "prompt": Prompt, "resource": Resource}


def op(method: str, target: str | None = None, kind: str | None = None) -> Operation:
    kinds = {"tools/call": "tool", "prompts/get": "prompt", "resources/read": "resource"}
    kind = kind or kinds.get(method)
    return Operation(method, KINDS[kind](target) if kind is not None and target is not None else None)


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
    (
        "/mcp",
        op("resources/read", "repo://a/secrets"),
        "mcp repo:read",
        False,
        ("mcp",),
        "no resources rule matches",
    ),
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
    ("/mcp", op("prompts/get", "other"), "mcp repo:read", False, ("mcp",), "no prompts rule matches"),
    ("/mcp", op("logging/setLevel"), "mcp", False, ("mcp", "admin"), "methods['logging/setLevel']"),
    ("/mcp", op("tools/list"), "mcp", True, ("mcp",), "no methods rule: route scopes"),
    (
        "/mcp",
        op("vendor/custom"),
        "mcp",
        True,
        ("mcp",),
        "no methods rule: route scopes",
    ),  # unknown method: not a tool call
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
        "methods['completion/complete'] + no prompts rule matches",
    ),
    ("/strict", op("tools/call", "anything"), "anything", False, (), "default: deny"),
    ("/strict", op("tools/list"), "list", True, ("list",), "methods['tools/list']"),
    ("/strict", op("resources/templates/list"), "list", False, (), "default: deny"),
    (
        "/strict",
        op("initialize"),
        "",
        True,
        (),
        "no methods rule: route scopes",
    ),  # lifecycle survives default: deny
    ("/strict", op("ping"), "", True, (), "no methods rule: route scopes"),
    ("/open", op("tools/call", "anything"), "mcp", True, ("mcp",), "default: allow"),
    ("/open", op("tools/call", "admin_reset"), "mcp", False, ("mcp", "admin"), "tools['admin_*']"),
]


@pytest.mark.parametrize(("route", "operation", "granted", "allowed", "required", "rule"), CASES)
def test_decide(
    route: str, operation: Operation, granted: str, allowed: bool, required: tuple[str, ...], rule: str
) -> None:
    """First match wins, route scopes always apply, defaults decide the rest."""
    decision = decide(policy_of(route), operation, frozenset(granted.split()))
    assert (decision.allowed, decision.required, decision.label) == (allowed, required, rule)
    if not decision.unconditional:
        assert set(decision.missing) == set(required) - set(granted.split())


def test_decision_carries_the_rules_that_decided() -> None:
    """A decision holds the configured rules themselves (with their lines), or the default that decided."""
    policy = policy_of("/mcp")
    completion = decide(policy, op("completion/complete", "summarise", "prompt"), frozenset())
    assert completion.rules == (policy.methods[0], policy.prompts[0])
    assert [rule.line for rule in (policy.methods[0], policy.prompts[0])] == [
        line_of('"completion/complete"'),
        line_of('"summarise"'),
    ]
    hidden = decide(policy, op("completion/complete", "hidden", "prompt"), frozenset())
    assert hidden.rules == (policy.methods[0], DefaultRule(Default.DENY, written=False, section="prompts"))
    listed = decide(policy, op("tools/list"), frozenset())
    assert listed.rules == (DefaultRule(Default.ALLOW, written=False, section="methods"),)


def test_route_scopes_are_kept_once_in_the_policy() -> None:
    """The route key `scopes` lives in the route's policy; RouteConfig.scopes reads it from there."""
    route = next(r for r in parse_config_text(RULES, Path("/tmp/rules.yaml"), {}).routes if r.path == "/mcp")
    assert route.scopes == route.policy.route_scopes == ("mcp",)
    assert "scopes" not in {field.name for field in dataclasses.fields(RouteConfig)}


def test_literal_tools_are_derived_when_the_policy_is_built() -> None:
    """The tool names written without glob characters are computed once, with the policy."""
    assert policy_of("/mcp").literal_tools == frozenset()
    assert policy_of("/open").literal_tools == frozenset()
    rules = tuple(Rule("tools", pattern, (), compile_glob(pattern)) for pattern in ("echo", "get_*", "a[b]"))
    assert RoutePolicy(tools=rules).literal_tools == {"echo"}


def test_default_deny_is_unconditional() -> None:
    """An operation no rule names is refused whatever the scopes: no step-up can help."""
    policy = policy_of("/mcp")
    decision = decide(policy, op("tools/call", "x"), frozenset())
    assert decision == Decision(False, ("mcp", "repo:write"), ("mcp", "repo:write"), (policy.tools[2],))
    assert decision.label == "tools['*']"
    unnamed = decide(policy_of("/mcp"), op("prompts/get", "x"), frozenset({"mcp", "repo:read"}))
    assert unnamed.unconditional and not unnamed.allowed


@pytest.mark.parametrize(
    ("kind", "name", "granted", "usable", "step_up"),
    [
        ("tool", "get_issue", "mcp repo:read", True, True),
        ("tool", "create_issue", "mcp repo:read", False, True),  # a step-up to repo:write allows it
        ("resource", "test://template/{id}/data", "mcp tmpl", True, True),
        ("resource", "test://template/{id}/data", "mcp", False, True),
        ("prompt", "summarise", "mcp repo:read", True, True),
        ("prompt", "unlisted", "mcp repo:read repo:write admin", False, False),  # no rule: no scope helps
    ],
)
def test_visibility_follows_the_call_decision(
    kind: str, name: str, granted: str, usable: bool, step_up: bool
) -> None:
    """``list_visibility: usable`` shows exactly what the caller could use now; ``step_up`` (the
    default) also what a step-up would allow, never what no scope would."""
    policy = policy_of("/mcp")
    assert policy.list_visibility is ListVisibility.STEP_UP
    scopes = frozenset(granted.split())
    assert is_visible(policy, KINDS[kind](name), scopes) is step_up
    narrow = dataclasses.replace(policy, list_visibility=ListVisibility.USABLE)
    assert is_visible(narrow, KINDS[kind](name), scopes) is usable


def test_a_route_with_only_scopes_lets_them_govern_everything() -> None:
    """No tools, resources or prompts rule and no default: every use is allowed with the route's
    scopes (and refused without them, as a step-up); the audit says no rule matched."""
    policy = RoutePolicy(route_scopes=("mcp:access",))
    assert not policy.restricts_use
    call = decide(policy, op("tools/call", "anything"), frozenset({"mcp:access"}))
    assert call.allowed and call.label == "no tools rule: route scopes"
    read = decide(policy, op("resources/read", "file:///x"), frozenset())
    assert not read.allowed and not read.unconditional and read.missing == ("mcp:access",)
    rule = Rule("tools", "search", ("docs:read",), compile_glob("search"))
    restricted = RoutePolicy(route_scopes=("mcp:access",), tools=(rule,))
    other = decide(restricted, op("prompts/get", "p"), frozenset({"mcp:access", "docs:read"}))
    assert other.unconditional and other.label == "no prompts rule matches"


def test_a_step_up_challenge_keeps_the_granted_scopes_the_route_uses() -> None:
    """Denied for repo:write while holding repo:read (a rule uses it) and unrelated:x (none does):
    the challenge names what the call needs, then repo:read, never unrelated:x."""
    policy = policy_of("/mcp")
    granted = frozenset({"mcp", "repo:read", "unrelated:x"})
    verdict = combine([decide(policy, op("tools/call", "create_issue"), granted)])
    kept = kept_scopes(policy, granted)
    assert kept == ("mcp", "repo:read")
    refused = refusal(verdict, kept)
    assert isinstance(refused, InsufficientScope)
    assert refused.scopes == ("mcp", "repo:write", "repo:read")


def test_the_first_challenge_is_challenge_scopes_else_the_route_scopes() -> None:
    """A 401 names ``challenge_scopes`` when written, with a 2026-07-28 hint's scopes too."""
    policy = policy_of("/mcp")
    assert challenge_scopes(policy, None, None) == ("mcp",)
    wide = dataclasses.replace(policy, challenge=("mcp", "repo:read"))
    assert challenge_scopes(wide, None, None) == ("mcp", "repo:read")
    assert challenge_scopes(wide, "tools/call", "create_issue") == ("mcp", "repo:write", "repo:read")


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


# Well-formed globs: literal characters (regex-special ones included), `*`, `?` and classes
# with an optional `!`, characters and ascending ranges. Left out: what compile_glob refuses
# or reads on purpose differently (a leading `^` negates; `]` first in a class, or `[!]`, is an
# empty class, where fnmatch takes it literally) and what Python's re warns about inside a
# class (`&&`, `~~`, `||`, `--`), so `!` and `-` are never class members of their own.
_LITERALS = "ab/.+\\^!-é"
_MEMBERS = "ab/.+\\é"
_NAME_CHARACTERS = "abcx/.+\\^!-é[]"


@st.composite
def _char_class(draw: st.DrawFn) -> tuple[str, str]:
    """A `[...]` class, and a character it would match if it were not negated."""
    single = st.sampled_from(_MEMBERS)
    ranges = st.tuples(st.sampled_from("abcx./"), st.sampled_from("abcx./")).map(
        lambda pair: "-".join(sorted(pair, key=ord))
    )
    members = draw(st.lists(st.one_of(single, ranges), min_size=1, max_size=3))
    negate = draw(st.sampled_from(("", "!")))
    return f"[{negate}{''.join(members)}]", draw(st.sampled_from(members[0].split("-")))


@st.composite
def _glob_and_names(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A well-formed glob, a name built to (nearly) match it, and an arbitrary name."""
    any_text = st.text(_NAME_CHARACTERS, max_size=3)
    token = st.one_of(
        st.sampled_from(_LITERALS).map(lambda char: (char, st.just(char))),
        st.just(("*", any_text)),
        st.just(("?", st.sampled_from(_NAME_CHARACTERS))),
        _char_class().map(lambda pair: (pair[0], st.just(pair[1]))),
    )
    tokens = draw(st.lists(token, min_size=1, max_size=6))
    pattern = "".join(piece for piece, _ in tokens)
    built = "".join(draw(example) for _, example in tokens)
    return pattern, [built, draw(st.text(_NAME_CHARACTERS, max_size=8))]


@given(_glob_and_names())
def test_compile_glob_agrees_with_fnmatch(case: tuple[str, list[str]]) -> None:
    """On well-formed patterns compile_glob matches what fnmatchcase matches (in both, `*` spans `/`)."""
    pattern, names = case
    regex = compile_glob(pattern)
    for name in names:
        assert (regex.fullmatch(name) is not None) == fnmatchcase(name, pattern), (pattern, name)


@pytest.mark.parametrize("pattern", ["", "a[", "a]", "[]", "a\x00b", "[c-a]", "x[z-a]y", "[!9-0]"])
def test_invalid_globs(pattern: str) -> None:
    """Malformed patterns, reversed ranges included, are a GlobError (a config problem), never re.error."""
    with pytest.raises(GlobError):
        compile_glob(pattern)


@pytest.mark.parametrize(
    ("pattern", "matching", "other"),
    [
        ("a[&&]b", "a&b", "ab"),
        ("[~~x]", "~", "y"),
        ("[a||b]", "|", "c"),
        ("[\\]", "\\", "a"),
        ("[x^]", "^", "y"),
    ],
)
def test_class_characters_that_re_reserves_are_literal(pattern: str, matching: str, other: str) -> None:
    """Set operators, backslash and ^ inside a glob class are plain characters (no FutureWarning)."""
    regex = compile_glob(pattern)  # filterwarnings=error: a FutureWarning from re fails here
    assert regex.fullmatch(matching) is not None
    assert regex.fullmatch(other) is None


def test_config_reports_a_reversed_range_with_file_and_line(tmp_path: Path) -> None:
    """A reversed class range in a rule is a config problem with file, line and key, not a crash."""
    from gateway.config import ConfigError

    text = RULES.replace('"summarise": [repo:read]', '"sum[z-a]": [repo:read]')
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, tmp_path / "r.yaml", {})
    messages = [str(problem) for problem in caught.value.problems]
    assert any(
        ":16: routes[0].prompts.sum[z-a]: invalid pattern: reversed range 'z-a'" in m for m in messages
    )


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


# --- Resources are matched by their normal form (gateway.mcp.uris) ------------------------------


@pytest.mark.parametrize(
    ("uri", "allowed", "label"),
    [
        ("repo://a/readme", True, "resources['repo://*/readme']"),
        ("repo://a/%72eadme", True, "resources['repo://*/readme']"),
        ("REPO://A/readme", True, "resources['repo://*/readme']"),
        (
            "repo://a/README",
            False,
            "no resources rule matches",
        ),  # the path keeps its case, as the handler sees it
        ("repo://a%2Fb/readme", False, "ambiguous uri"),
        ("repo://a/x/../readme", False, "ambiguous uri"),
    ],
)
def test_resource_rules_match_the_normal_form(uri: str, allowed: bool, label: str) -> None:
    """A rule on a URI meets every spelling of it; a URI without one reading meets no rule."""
    decision = decide(policy_of("/mcp"), op("resources/read", uri), frozenset({"mcp", "repo:read"}))
    assert (decision.allowed, decision.label) == (allowed, label)


def test_an_ambiguous_uri_is_denied_even_where_the_default_allows() -> None:
    """Fail closed: no default, no scope and no completion allows a URI that has no normal form."""
    from gateway.mcp.policy import Unreadable

    for route in ("/open", "/mcp"):
        decision = decide(policy_of(route), op("resources/read", "x://a%2F"), frozenset({"mcp", "admin"}))
        assert (decision.allowed, decision.unconditional, decision.rules) == (False, True, (Unreadable(),))
    completion = decide(
        policy_of("/mcp"),
        op("completion/complete", "test://template/%2F{id}", "resource"),
        frozenset({"mcp"}),
    )
    assert not completion.allowed and completion.rules[-1] == Unreadable()


@pytest.mark.parametrize(
    ("item", "visible"),
    [
        ("repo://a/readme", True),
        ("Repo://a/%72eadme", True),
        ("repo://a%2Fb/readme", False),
        ("TEST://template/{id}/data", True),
        ("test://template/{id%2F}/data", False),
        ("test://template/{id}/../data", False),
    ],
)
def test_list_items_are_judged_by_their_normal_form(item: str, visible: bool) -> None:
    """resources/list and templates/list items show as their normal form would; one without is hidden."""
    assert is_visible(policy_of("/mcp"), Resource(item), frozenset({"mcp", "repo:read", "tmpl"})) is visible


def test_challenge_hint_reads_a_resource_name_as_the_rules_do() -> None:
    """The 401 hint from a 2026-07-28 Mcp-Name: a respelled URI asks for its rule's scopes, an
    ambiguous one for the route scopes only."""
    from gateway.mcp.policy import challenge_scopes

    policy = policy_of("/mcp")
    assert challenge_scopes(policy, "resources/read", "repo://a/%72eadme") == ("mcp", "repo:read")
    assert challenge_scopes(policy, "resources/read", "repo://a%2F/readme") == ("mcp",)


def test_config_refuses_resource_patterns_not_in_normal_form(tmp_path: Path) -> None:
    """A resource pattern that is not in normal form would never match as written: a config problem
    with file, line and the spelling to write."""
    from gateway.config import ConfigError

    text = RULES.replace(
        '"test://template/*": [tmpl]',
        '"TEST://%74emplate/*": [tmpl]\n      "x://a/../b": []\n      "x://%2F": []',
    )
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, tmp_path / "r.yaml", {})
    messages = [str(problem).partition(":")[2] for problem in caught.value.problems]
    assert messages == [
        "14: routes[0].resources.TEST://%74emplate/*: not in normal form (how the gateway reads URIs): "
        "write 'test://template/*'",
        "15: routes[0].resources.x://a/../b: can never match: the gateway refuses every URI with a dot "
        "segment in the path",
        "16: routes[0].resources.x://%2F: can never match: the gateway refuses every URI with a "
        "percent-encoded '/'",
    ]


def test_listen_needs_what_reading_each_watched_resource_needs() -> None:
    """A subscriptions/listen stream carries the updates of the resources it names: each needs its
    resources rule, every scope is in one challenge, and one no rule allows refuses the stream."""
    policy = policy_of("/mcp")

    def listen(*uris: str) -> Operation:
        return Operation("subscriptions/listen", None, tuple(Resource(uri) for uri in uris))

    allowed = decide(policy, listen("repo://a/readme", "REPO://b/readme"), frozenset({"mcp", "repo:read"}))
    assert (allowed.allowed, allowed.label) == (
        True,
        "no methods rule: route scopes + resources['repo://*/readme'] + resources['repo://*/readme']",
    )
    both = decide(policy, listen("repo://a/readme", "test://template/1"), frozenset({"mcp"}))
    assert (both.allowed, both.required, both.unconditional) == (False, ("mcp", "repo:read", "tmpl"), False)
    hidden = decide(policy, listen("repo://a/readme", "repo://a/secrets"), frozenset({"mcp", "repo:read"}))
    assert (hidden.allowed, hidden.unconditional) == (False, True)
    assert decide(policy, listen(), frozenset({"mcp"})).allowed


def test_tasks_list_needs_a_rule_that_names_it() -> None:
    """tasks/list shows every user's tasks to whoever asks: no default and no glob allows it,
    only a `methods` rule written out for it; tasks/get and friends follow the usual rules."""
    granted = frozenset({"mcp", "tasks", "admin"})
    for route in ("/mcp", "/open"):  # a `notifications/*` glob, a `default: allow`
        denied = decide(policy_of(route), op("tasks/list"), granted)
        assert not denied.allowed and denied.unconditional
        assert denied.label == "methods['tasks/list'] must be written out to allow it"
    assert decide(policy_of("/open"), op("tasks/get"), granted).allowed
    written = RULES.replace('"notifications/*": []', '"notifications/*": []\n      "tasks/list": [tasks]')
    globbed = RULES.replace('"notifications/*": []', '"notifications/*": []\n      "tasks/*": []')
    for text, allowed in ((written, True), (globbed, False)):
        config = parse_config_text(text, Path("/tmp/rules.yaml"), {})
        policy = next(r.policy for r in config.routes if r.path == "/mcp")
        assert decide(policy, op("tasks/list"), granted).allowed is allowed
    config = parse_config_text(written, Path("/tmp/rules.yaml"), {})
    policy = next(r.policy for r in config.routes if r.path == "/mcp")
    assert decide(policy, op("tasks/list"), frozenset({"mcp"})).missing == ("tasks",)
