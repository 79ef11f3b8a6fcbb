"""How ``explain`` says a ``*/list`` result will be filtered: per rule, for both list_visibility modes."""

from __future__ import annotations

import pytest

from gateway.mcp.policy import Default, ListVisibility, RoutePolicy, Rule, compile_glob
from gateway.mcp.visibility import list_filtering


def rule(section: str, pattern: str, *scopes: str) -> Rule:
    return Rule(section, pattern, scopes, compile_glob(pattern), line=7)


def policy(visibility: ListVisibility, default: Default | None = None) -> RoutePolicy:
    return RoutePolicy(
        route_scopes=("mcp:access",),
        tools=(rule("tools", "get_*", "repo:read"), rule("tools", "delete_*", "repo:admin")),
        default=default,
        list_visibility=visibility,
    )


GRANTED = frozenset({"mcp:access", "repo:read"})


@pytest.mark.parametrize(
    ("visibility", "shown"),
    [
        # step_up: delete_* is shown though not usable yet (a call gets the step-up challenge)
        (
            ListVisibility.STEP_UP,
            {"tools['get_*']": True, "tools['delete_*']": True, "no tools rule matches": False},
        ),
        # usable: only what the caller may use now
        (
            ListVisibility.USABLE,
            {"tools['get_*']": True, "tools['delete_*']": False, "no tools rule matches": False},
        ),
    ],
)
def test_tools_list_is_described_rule_by_rule(visibility: ListVisibility, shown: dict[str, bool]) -> None:
    """Each tools rule says whether its items are shown and what they still need; items no rule
    matches are hidden in both modes (no scope would allow them)."""
    filtering = list_filtering(policy(visibility), "tools/list", GRANTED)
    assert filtering is not None and filtering.visibility == visibility.value
    assert {item.rule.label: item.shown for item in filtering.by_rule} == shown
    missing = {item.rule.label: item.missing for item in filtering.by_rule}
    assert missing["tools['delete_*']"] == ("repo:admin",) and missing["tools['get_*']"] == ()
    assert [item.never for item in filtering.by_rule] == [False, False, True]


def test_items_no_rule_matches_follow_a_written_default_allow() -> None:
    """With `default: allow`, tools no rule names are listed (they need the route's scopes only)."""
    filtering = list_filtering(policy(ListVisibility.USABLE, Default.ALLOW), "tools/list", GRANTED)
    assert filtering is not None
    unmatched = filtering.by_rule[-1]
    assert unmatched.rule.label == "default: allow" and unmatched.shown and not unmatched.never


def test_a_catch_all_rule_leaves_nothing_unmatched_and_templates_use_resource_rules() -> None:
    """A "*" rule decides every item (no unmatched line); resources/templates/list follows resources rules."""
    catch_all = RoutePolicy(route_scopes=("mcp:access",), resources=(rule("resources", "*", "docs"),))
    filtering = list_filtering(catch_all, "resources/templates/list", frozenset({"mcp:access"}))
    assert filtering is not None and filtering.section == "resources"
    assert [(item.rule.label, item.missing) for item in filtering.by_rule] == [("resources['*']", ("docs",))]


def test_a_method_that_lists_nothing_has_no_filtering() -> None:
    """tools/call is not a list: nothing to describe."""
    assert list_filtering(policy(ListVisibility.STEP_UP), "tools/call", GRANTED) is None
