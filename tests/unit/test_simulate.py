"""``mcp-auth-gateway simulate``: decisions really audited on one config, replayed on another.

The events are produced by the gateway's own audit step (``audit_decision``, as the pipeline
calls it, observed decision included) and passed through the log pipeline's redaction and
``include_subject`` processors, so the tests replay what a gateway really writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.cli import main
from gateway.config import GatewayConfig, parse_config_text
from gateway.logs import HIDE_SUBJECT, drop_subject, redact_secrets
from gateway.mcp.conditions import Facts
from gateway.mcp.messages import parse_post
from gateway.mcp.policy import decide, operation_of
from gateway.principal import Principal
from gateway.secret import PresentedToken
from gateway.simulate import (
    EXIT_CHANGED,
    EXIT_UNCHANGED,
    EXIT_USAGE,
    SimulationReport,
    exit_status,
    read_events,
    render_text,
    simulate,
    to_json,
)
from gateway.web.audit import audit_decision

HEAD = """
public_url: https://gw.example
issuers: [{issuer: https://as.example, algorithms: [RS256], jwks: {discover: true}}]
routes:
"""
OLD = (
    HEAD
    + """
  - path: /mcp
    upstream: http://127.0.0.1:9000/mcp
    scopes: [mcp]
    audit_arguments: true
    audit_claims: [tenant]
    tools:
      delete_branch: [repo:write]
      purge_cache: {scopes: [ops], mode: observe}
      "get_*": [repo:read]
    resources:
      "docs://files/*": [read]
  - path: /old
    upstream: http://127.0.0.1:9001/mcp
    scopes: [mcp]
"""
)


def config_of(text: str) -> GatewayConfig:
    return parse_config_text(text, Path("/tmp/simulate.yaml"), {})


def caller(subject: str, *scopes: str, **claims: Any) -> Principal:
    return Principal(
        issuer="https://as.example",
        subject=subject,
        client_id=f"cli-{subject}",
        scopes=frozenset({"mcp", *scopes}),
        audience=("https://gw.example/mcp",),
        expires_at=0.0,
        token_id=None,
        claims=claims,
        token=PresentedToken("never-in-the-audit-log"),
    )


def tool_call(name: str, **arguments: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


def read(uri: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": uri}}


ALICE = caller("alice", "repo:write", "repo:read", "read", tenant="acme")
BOB = caller("bob", "repo:read", "ops", tenant="globex")


def audited(
    config: GatewayConfig,
    calls: Iterable[tuple[str, Principal, dict[str, Any]]],
    *,
    include_subject: bool = True,
) -> list[str]:
    """The log lines a gateway on ``config`` writes for each (route, caller, message), as the
    pipeline decides and audits them and the log pipeline then processes them."""
    lines = []
    for path, principal, message in calls:
        route = config.route_for_path(path)
        assert route is not None
        (parsed,) = parse_post(json.dumps(message).encode(), lambda _name: []).messages
        operation = operation_of(parsed)
        facts = Facts(principal, route.path)
        decision = decide(route.policy, operation, principal.scopes, facts)
        shadow = route.policy.shadow
        observed = decide(shadow, operation, principal.scopes, facts) if shadow else None
        with capture_logs() as events:
            audit_decision(route, principal, parsed, decision, observed)
        for event in events:
            processed = drop_subject(None, "", {**event, HIDE_SUBJECT: not include_subject})
            lines.append(json.dumps(dict(redact_secrets(None, "", processed))))
    return lines


def replay(text: str, lines: Iterable[str], *, enforce_observed: bool = False) -> SimulationReport:
    return simulate(config_of(text), read_events(lines), enforce_observed=enforce_observed)


def changes(report: SimulationReport) -> list[tuple[str, str, int]]:
    return [(change.direction, change.rule, change.count) for change in report.changes]


def undecidable(report: SimulationReport) -> list[tuple[str, str, int]]:
    return [(group.rule, group.reason, group.count) for group in report.undecidable]


CALLS = [
    ("/mcp", ALICE, tool_call("delete_branch", repo="team/a")),
    ("/mcp", ALICE, tool_call("delete_branch", repo="other/b")),
    ("/mcp", BOB, tool_call("get_issue", number=1)),
    ("/mcp", BOB, tool_call("purge_cache")),
    ("/old", BOB, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
]


def test_the_same_config_changes_nothing() -> None:
    """Replayed against the config that decided them, every decision stays as it was: exit 0."""
    report = replay(OLD, audited(config_of(OLD), CALLS))
    assert (report.replayed, report.unchanged, report.changes, report.undecidable) == (5, 5, (), ())
    assert exit_status(report) == EXIT_UNCHANGED


def test_a_condition_on_arguments_denies_what_it_excludes() -> None:
    """A new condition on `arguments.repo` turns the call outside `team/` from allow to deny."""
    new = OLD.replace(
        "delete_branch: [repo:write]",
        """delete_branch: {scopes: [repo:write], condition: 'arguments.repo.startsWith("team/")'}""",
    )
    report = replay(new, audited(config_of(OLD), CALLS))
    assert changes(report) == [("allow->deny", "tools['delete_branch']", 1)]
    (example,) = report.changes[0].examples
    assert (example.line, example.target, example.subject, example.why, example.recorded_rule) == (
        2,
        "delete_branch",
        "alice",
        "tools['delete_branch'] condition false",
        "tools['delete_branch']",
    )
    assert (report.unchanged, exit_status(report), exit_status(report, fail_on="allow")) == (4, 1, 0)
    assert exit_status(report, fail_on="deny") == EXIT_CHANGED


def test_arguments_not_recorded_are_undecidable_not_guessed() -> None:
    """Without `audit_arguments`, a condition on arguments is counted undecidable; only --strict fails."""
    old = OLD.replace("    audit_arguments: true\n", "")
    new = OLD.replace(
        "delete_branch: [repo:write]",
        """delete_branch: {scopes: [repo:write], condition: 'arguments.repo.startsWith("team/")'}""",
    )
    report = replay(new, audited(config_of(old), CALLS))
    assert undecidable(report) == [
        ("tools['delete_branch']", "arguments not recorded (route audit_arguments: false)", 2)
    ]
    assert (report.replayed, report.changes) == (3, ())
    assert (exit_status(report), exit_status(report, strict=True)) == (EXIT_UNCHANGED, EXIT_CHANGED)


def test_a_condition_on_a_recorded_claim_is_replayed_and_on_another_is_undecidable() -> None:
    """`claims.tenant` (in audit_claims) decides again; `claims.groups`, never recorded, cannot."""
    on_tenant = OLD.replace(
        '"get_*": [repo:read]', """"get_*": {scopes: [repo:read], condition: 'claims.tenant == "acme"'}"""
    )
    report = replay(on_tenant, audited(config_of(OLD), CALLS))
    assert changes(report) == [("allow->deny", "tools['get_*']", 1)]
    assert report.changes[0].examples[0].subject == "bob"

    on_groups = OLD.replace(
        '"get_*": [repo:read]', """"get_*": {scopes: [repo:read], condition: '"dev" in claims.groups'}"""
    )
    report = replay(on_groups, audited(config_of(OLD), CALLS))
    assert undecidable(report) == [
        ("tools['get_*']", "claims.groups not recorded (add it to the route's audit_claims)", 1)
    ]
    assert report.changes == ()


def test_claims_read_whole_are_undecidable() -> None:
    """A condition on the whole `claims` map cannot be replayed from the few claims recorded."""
    new = OLD.replace(
        '"get_*": [repo:read]', """"get_*": {scopes: [repo:read], condition: 'size(claims) > 0'}"""
    )
    report = replay(new, audited(config_of(OLD), CALLS))
    assert undecidable(report) == [
        ("tools['get_*']", "claims read whole (only named claims are recorded)", 1)
    ]


def test_a_caller_without_the_scopes_is_replayed_whatever_the_condition_reads() -> None:
    """A denial for missing scopes holds whatever an unrecorded claim says: replayed, not undecidable."""
    new = OLD.replace(
        '"get_*": [repo:read]', """"get_*": {scopes: [admin], condition: '"dev" in claims.groups'}"""
    )
    report = replay(new, audited(config_of(OLD), CALLS))
    assert changes(report) == [("allow->deny", "tools['get_*']", 1)]
    assert report.changes[0].examples[0].why == "missing scopes: admin"
    assert report.undecidable == ()


def test_an_observed_rule_changes_nothing_until_enforced() -> None:
    """The observed `purge_cache` rule is not enforced by default; --enforce-observed allows it."""
    lines = audited(config_of(OLD), CALLS)
    assert replay(OLD, lines).changes == ()
    report = replay(OLD, lines, enforce_observed=True)
    assert changes(report) == [("deny->allow", "tools['purge_cache']", 1)]
    assert (exit_status(report, fail_on="deny"), exit_status(report, fail_on="allow")) == (0, 1)
    assert exit_status(report) == EXIT_CHANGED
    assert "--enforce-observed replays them enforced" in render_text(replay(OLD, lines))


def test_a_removed_route_is_counted_apart() -> None:
    """Decisions on a route the candidate lacks are neither changes nor replayed; --strict fails on them."""
    new = OLD.split("  - path: /old")[0]
    report = replay(new, audited(config_of(OLD), CALLS))
    assert (report.missing_routes, report.replayed, report.changes) == ((("/old", 1),), 4, ())
    assert (exit_status(report), exit_status(report, strict=True)) == (EXIT_UNCHANGED, EXIT_CHANGED)


def test_a_condition_on_the_subject_needs_include_subject() -> None:
    """With `include_subject: false` the events lack the subject: `principal.subject` is undecidable."""
    new = OLD.replace(
        '"get_*": [repo:read]', """"get_*": {scopes: [repo:read], condition: 'principal.subject == "bob"'}"""
    )
    hidden = replay(new, audited(config_of(OLD), CALLS, include_subject=False))
    assert undecidable(hidden) == [
        ("tools['get_*']", "principal.subject not recorded (logging.include_subject: false)", 1)
    ]
    assert hidden.undecidable[0].examples[0].subject is None
    shown = replay(new, audited(config_of(OLD), CALLS))
    assert (shown.undecidable, shown.changes, shown.unchanged) == ((), (), 5)


def test_an_argument_the_log_redacted_is_undecidable() -> None:
    """An argument the redaction masked (`api_token`) is no value to decide on: undecidable."""
    new = OLD.replace(
        '"get_*": [repo:read]', """"get_*": {scopes: [repo:read], condition: 'arguments.api_token == "t1"'}"""
    )
    lines = audited(config_of(OLD), [("/mcp", BOB, tool_call("get_issue", api_token="t1"))])
    assert json.loads(lines[0])["arguments"] == {"api_token": "***"}
    assert undecidable(replay(new, lines)) == [
        ("tools['get_*']", "arguments.api_token redacted in the log", 1)
    ]


def test_a_resource_is_matched_by_its_normal_form() -> None:
    """A read recorded as `docs://files/%70rivate` meets a new rule on `docs://files/private`."""
    new = OLD.replace(
        '"docs://files/*": [read]', '"docs://files/private": [admin]\n      "docs://files/*": [read]'
    )
    report = replay(new, audited(config_of(OLD), [("/mcp", ALICE, read("docs://files/%70rivate"))]))
    assert changes(report) == [("allow->deny", "resources['docs://files/private']", 1)]
    assert report.changes[0].examples[0].target == "docs://files/%70rivate"


def test_other_lines_are_skipped_and_broken_events_named() -> None:
    """Non-JSON lines and other events are counted and skipped; a broken policy_decision is named by line."""
    lines = [
        "starting gateway",
        json.dumps({"event": "request", "status": 200}),
        json.dumps({"event": "policy_decision", "method": "tools/list", "decision": "allow"}),
        *audited(config_of(OLD), CALLS[:1]),
        "[" * 100_000,
    ]
    report = replay(OLD, lines)
    assert (report.not_json, report.other_events, report.unreadable, report.replayed) == (2, 1, 1, 1)
    assert [(item.line, item.reason) for item in report.unreadable_shown] == [(3, "route is missing")]
    assert "skipped: 2 lines not JSON, 1 other events" in render_text(report)
    assert (exit_status(report), exit_status(report, strict=True)) == (EXIT_UNCHANGED, EXIT_CHANGED)


def test_the_text_report_lists_each_change_with_examples() -> None:
    """The printed report: totals, each direction and rule with its count, examples, undecidable, routes."""
    new = (
        OLD.split("  - path: /old")[0]
        .replace(
            "delete_branch: [repo:write]",
            """delete_branch: {scopes: [repo:write], condition: 'arguments.repo.startsWith("team/")'}""",
        )
        .replace(
            '"get_*": [repo:read]', """"get_*": {scopes: [repo:read], condition: 'has(claims.groups)'}"""
        )
    )
    report = replay(new, audited(config_of(OLD), CALLS), enforce_observed=True)
    assert render_text(report) == "\n".join(
        [
            "5 recorded decisions against the candidate's rules as written, observed ones enforced: "
            "1 unchanged, 2 changed, 1 undecidable",
            "allow -> deny: 1",
            "  tools['delete_branch']: 1",
            "    line 2: tools/call delete_branch by alice: tools['delete_branch'] condition false "
            "(was tools['delete_branch'])",
            "deny -> allow: 1",
            "  tools['purge_cache']: 1",
            "    line 4: tools/call purge_cache by bob: allowed (was no tools rule matches)",
            "undecidable (not replayed, never guessed): 1",
            "  tools['get_*']: 1: claims.groups not recorded (add it to the route's audit_claims)",
            "    line 3: tools/call get_issue by bob (was tools['get_*'])",
            "route not in the candidate config: /old: 1",
        ]
    )


def test_the_json_report_carries_the_same_counts() -> None:
    """`--json`: one object with the changes, their direction, rule, count and examples."""
    new = OLD.replace("delete_branch: [repo:write]", "delete_branch: [admin]")
    report = to_json(replay(new, audited(config_of(OLD), CALLS)))
    assert (report["decisions"], report["changed"], report["unchanged"]) == (5, 2, 3)
    assert [(c["direction"], c["rule"], c["count"]) for c in report["changes"]] == [
        ("allow->deny", "tools['delete_branch']", 2)
    ]
    assert [e["line"] for e in report["changes"][0]["examples"]] == [1, 2]


# --- the command --------------------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run_cli(tmp_path: Path, new: str, lines: list[str], *flags: str) -> int:
    config = write(tmp_path, "new.yaml", new)
    decisions = write(tmp_path, "audit.jsonl", "\n".join(lines) + "\n")
    return main(["simulate", "--config", config, "--decisions", decisions, *flags])


def test_the_command_exits_1_on_a_change_and_0_without(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`simulate` prints the report; exit 1 with a change, 0 with --fail-on on the other side, 0 unchanged."""
    lines = audited(config_of(OLD), CALLS)
    new = OLD.replace("delete_branch: [repo:write]", "delete_branch: [admin]")
    assert run_cli(tmp_path, new, lines) == EXIT_CHANGED
    assert "allow -> deny: 2\n  tools['delete_branch']: 2" in capsys.readouterr().out
    assert run_cli(tmp_path, new, lines, "--fail-on", "allow") == EXIT_UNCHANGED
    assert run_cli(tmp_path, OLD, lines) == EXIT_UNCHANGED
    capsys.readouterr()
    assert run_cli(tmp_path, OLD, lines, "--enforce-observed", "--json") == EXIT_CHANGED
    printed: Mapping[str, Any] = json.loads(capsys.readouterr().out)
    assert printed["changes"][0]["rule"] == "tools['purge_cache']"


def test_the_command_exits_2_on_a_bad_config_or_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken config prints its problems as check-config does; an unreadable log is named: exit 2."""
    broken = OLD.replace('"get_*": [repo:read]', """"get_*": {scopes: [repo:read], condition: 'claims.'}""")
    assert run_cli(tmp_path, broken, []) == EXIT_USAGE
    assert "problem(s) in" in capsys.readouterr().err
    config = write(tmp_path, "ok.yaml", OLD)
    missing = str(tmp_path / "absent.jsonl")
    assert main(["simulate", "--config", config, "--decisions", missing]) == EXIT_USAGE
    assert f"--decisions {missing}: cannot read" in capsys.readouterr().err
