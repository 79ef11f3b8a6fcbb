"""`explain` and rule conditions: each condition's fields and their values, its result, what a list
does with items whose condition reads arguments, and the decision as written on observed rules."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main

CONFIG = """\
public_url: https://mcp.example.com
issuers:
  - issuer: https://auth.example.com
    algorithms: [RS256]
    jwks: {discover: true}
routes:
  - path: /mcp
    upstream: http://127.0.0.1:9000/mcp
    scopes: [mcp:access]
    tools:
      echo:
        scopes: [demo:read]
        condition: 'arguments.text.endsWith("@example.com")'
      add:
        condition: '"eng" in claims.groups && arguments.a < 100'
      whoami:
        condition: 'principal.subject == "alice"'
      "get_*":
        condition: 'tool != "get_secret"'
      delete:
        scopes: [admin]
        condition: 'claims.team == "ops"'
        mode: observe
      "*": [other]
    prompts:
      greet:
        condition: 'prompt == "greet" && claims.team == "eng"'
    methods:
      "completion/complete": []
  - path: /observe
    upstream: http://127.0.0.1:9001/mcp
    mode: observe
    scopes: [mcp:access]
    tools:
      echo:
        scopes: [demo:read]
        condition: 'arguments.text == "x"'
"""
GET_RULE = '"get_*":'  # the config lines' starts, for Explain.at
STAR_RULE = '"*":'
RESOURCE = "https://mcp.example.com/mcp"
ISSUER = "https://auth.example.com"


class Explain:
    """Runs ``explain`` with CONFIG written to a file, and names its rules as explain does."""

    def __init__(self, path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.path = path
        self.capsys = capsys
        path.write_text(CONFIG)

    def at(self, needle: str, occurrence: int = 1) -> str:
        """``FILE:LINE`` of the ``occurrence``-th config line starting with ``needle``."""
        numbers = [
            n
            for n, line in enumerate(self.path.read_text().splitlines(), 1)
            if line.strip().startswith(needle)
        ]
        return f"{self.path}:{numbers[occurrence - 1]}"

    def __call__(self, request: str, *args: str, route: str = "/mcp") -> tuple[int, list[str]]:
        status = main(["explain", "--config", str(self.path), "--route", route, "--request", request, *args])
        captured = self.capsys.readouterr()
        return status, captured.out.splitlines() + captured.err.splitlines()


@pytest.fixture
def explain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Explain:
    return Explain(tmp_path / "gateway.yaml", capsys)


def call(name: str, arguments: Any = None, method: str = "tools/call") -> str:
    params: dict[str, Any] = {"name": name}
    if arguments is not None:
        params["arguments"] = arguments
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})


def mint(**claims: Any) -> str:
    """A well-formed JWT with a dummy signature (explain never verifies it)."""
    header = {"alg": "RS256", "typ": "at+jwt", "kid": "k1"}
    payload = {"iss": ISSUER, "sub": "alice", "aud": RESOURCE, "exp": time.time() + 600, **claims}
    parts = [json.dumps(header).encode(), json.dumps(payload).encode(), b"sig"]
    return ".".join(base64.urlsafe_b64encode(part).rstrip(b"=").decode() for part in parts)


def block(lines: list[str], first: str) -> list[str]:
    """The line starting with ``first`` and the more-indented lines under it."""
    start = next(index for index, line in enumerate(lines) if line.startswith(first))
    depth = len(first) - len(first.lstrip())
    end = start + 1
    while end < len(lines) and len(lines[end]) - len(lines[end].lstrip()) > depth:
        end += 1
    return lines[start:end]


def test_a_true_condition_shows_the_field_it_read(explain: Explain) -> None:
    """echo to our domain: the argument's value, and the result true; the call is allowed."""
    status, out = explain(call("echo", {"text": "bob@example.com"}), "--scopes", "mcp:access demo:read")
    assert status == 0
    assert "  decision: ALLOW" in out
    assert block(out, "  condition of") == [
        f"  condition of tools['echo'] at {explain.at('echo:')}: "
        + 'arguments.text.endsWith("@example.com")',
        '    arguments.text = "bob@example.com"',
        "    result: true",
    ]


def test_an_absent_field_is_shown_and_denies(explain: Explain) -> None:
    """echo without text: the field is (absent), the condition fails closed with the reason."""
    status, out = explain(call("echo", {}), "--scopes", "mcp:access demo:read")
    assert status == 1
    assert "  decision: DENY" in out
    assert block(out, "  condition of") == [
        f"  condition of tools['echo'] at {explain.at('echo:')}: "
        + 'arguments.text.endsWith("@example.com")',
        "    arguments.text = (absent)",
        "    result: error (arguments.text is absent)",
    ]


def test_claims_given_with_scopes_are_read(explain: Explain) -> None:
    """--claims gives the caller claims: each field read is shown with its value, the result false."""
    request = call("add", {"a": 500, "b": 1})
    status, out = explain(request, "--scopes", "mcp:access", "--claims", '{"groups": ["eng"]}')
    assert status == 1
    assert 'caller claims (from --claims): {"groups": ["eng"]}' in out
    assert block(out, "  condition of") == [
        f"  condition of tools['add'] at {explain.at('add:')}: "
        + '"eng" in claims.groups && arguments.a < 100',
        '    claims.groups = ["eng"]',
        "    arguments.a = 500",
        "    result: false",
    ]


def test_a_token_is_the_caller_conditions_see(explain: Explain) -> None:
    """With --token the principal is the token's subject; with --scopes alone it is empty."""
    _, with_token = explain(call("whoami"), "--token", mint(scope="mcp:access"))
    assert block(with_token, "  condition of") == [
        f"  condition of tools['whoami'] at {explain.at('whoami:')}: " + 'principal.subject == "alice"',
        '    principal.subject = "alice"',
        "    result: true",
    ]
    _, with_scopes = explain(call("whoami"), "--scopes", "mcp:access")
    assert block(with_scopes, "  condition of")[1:] == ['    principal.subject = ""', "    result: false"]


def test_a_completion_shows_the_condition_of_the_prompt_it_reveals(explain: Explain) -> None:
    """A completion for prompt greet is judged by greet's condition, read for that prompt."""
    params = {"ref": {"type": "ref/prompt", "name": "greet"}, "argument": {"name": "n", "value": "a"}}
    request = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "completion/complete", "params": params})
    status, out = explain(request, "--scopes", "mcp:access", "--claims", '{"team": "eng"}')
    assert status == 0
    assert block(out, "  condition of") == [
        f"  condition of prompts['greet'] at {explain.at('greet:')}: "
        + 'prompt == "greet" && claims.team == "eng"',
        '    claims.team = "eng"',
        '    prompt = "greet"',
        "    result: true",
    ]


LIST = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
BY_ARGUMENTS = "shown: its condition reads arguments, decided at each call"


def test_a_list_says_what_each_condition_does_to_its_items(explain: Explain) -> None:
    """tools/list: a condition on arguments keeps its items shown, decided at each call; one on
    the caller is decided now; one on the item's name under a glob, item by item."""
    status, out = explain(LIST, "--scopes", "mcp:access demo:read other")
    assert status == 0
    assert block(out, "  result filtered")[1:] == [
        f"    tools['echo'] at {explain.at('echo:')}: {BY_ARGUMENTS}",
        '      condition: arguments.text.endsWith("@example.com")',
        f"    tools['add'] at {explain.at('add:')}: {BY_ARGUMENTS}",
        '      condition: "eng" in claims.groups && arguments.a < 100',
        f"    tools['whoami'] at {explain.at('whoami:')}: hidden: its condition is false for this caller",
        '      condition: principal.subject == "alice"',
        f"    tools['get_*'] at {explain.at(GET_RULE)}: shown, and the caller may call them now, "
        "each one only if its condition is true for it (decided item by item)",
        '      condition: tool != "get_secret"',
        f"    tools['*'] at {explain.at(STAR_RULE)}: shown, and the caller may call them now",
    ]


def test_a_list_for_a_caller_without_the_scopes_still_says_so(explain: Explain) -> None:
    """Without demo:read, echo is still shown (step_up) with its challenge, then the condition
    note; whoami, for alice, is shown since its condition is true for her."""
    _, out = explain(LIST, "--token", mint(scope="mcp:access"))
    shown = block(out, "  result filtered")[1:]
    assert shown[0] == (
        f"    tools['echo'] at {explain.at('echo:')}: shown, but a call gets a 403 insufficient_scope "
        "step-up challenge for demo:read; its condition reads arguments, decided at each call"
    )
    assert shown[4] == (
        f"    tools['whoami'] at {explain.at('whoami:')}: shown, and the caller may call them now "
        "(its condition is true for this caller)"
    )


def test_an_observed_rule_shows_the_decision_as_written(explain: Explain) -> None:
    """delete is observed: enforced, '*' decides; as written, delete and its condition would allow."""
    status, out = explain(call("delete"), "--scopes", "mcp:access admin", "--claims", '{"team": "ops"}')
    delete = explain.at("delete:")
    assert status == 1
    assert f"  rule: tools['*'] at {explain.at(STAR_RULE)}" in out
    assert block(out, "  observed (mode: observe)") == [
        f"  observed (mode: observe): would allow: tools['delete'] at {delete}",
        f"    condition of tools['delete'] at {delete}: " + 'claims.team == "ops"',
        '      claims.team = "ops"',
        "      result: true",
    ]


def test_an_observed_route_says_what_it_would_deny(explain: Explain) -> None:
    """A route in observe mode forwards; the explanation says it would deny, and why."""
    echo = explain.at("echo:", 2)
    status, out = explain(call("echo", {"text": "x"}), "--scopes", "mcp:access", route="/observe")
    assert status == 0
    assert f"  observed (mode: observe): would deny: tools['echo'] at {echo}; missing: demo:read" in out
    request = call("echo", {"text": "y"})
    status, out = explain(request, "--scopes", "mcp:access demo:read", route="/observe")
    assert status == 0
    assert block(out, "  observed (mode: observe)") == [
        f"  observed (mode: observe): would deny: tools['echo'] at {echo}; tools['echo'] condition false",
        f"    condition of tools['echo'] at {echo}: " + 'arguments.text == "x"',
        '      arguments.text = "y"',
        "      result: false",
    ]


def test_json_has_conditions_fields_and_observed(explain: Explain) -> None:
    """--json: each condition with its rule line, fields (absent ones marked) and result; the
    observed decision; on a list, each rule's condition and what it does."""
    status, out = explain(call("echo", {}), "--scopes", "mcp:access demo:read", "--json")
    [message] = json.loads("\n".join(out))["messages"]
    assert status == 1
    line = int(explain.at("echo:").rpartition(":")[2])
    assert message["conditions"] == [
        {
            "label": "tools['echo']",
            "line": line,
            "source": 'arguments.text.endsWith("@example.com")',
            "fields": [{"path": "arguments.text", "value": None, "absent": True}],
            "result": "error",
            "reason": "arguments.text is absent",
        }
    ]
    assert message["observed"]["decision"] == "DENY"
    assert message["observed"]["rules"] == [{"label": "tools['echo']", "line": line}]
    _, out = explain(LIST, "--scopes", "mcp:access demo:read", "--json")
    [listed] = json.loads("\n".join(out))["messages"]
    by_rule = listed["list_filter"]["by_rule"]
    assert by_rule[0]["condition"] == {
        "source": 'arguments.text.endsWith("@example.com")',
        "effect": BY_ARGUMENTS,
    }
    assert by_rule[-1]["condition"] is None


def test_a_route_without_observed_rules_shows_no_observed_decision(explain: Explain) -> None:
    """Without mode: observe there is no observed line, and no condition block for a rule without one."""
    explain.path.write_text(CONFIG.replace("        mode: observe\n", ""))
    _, out = explain(call("other_tool"), "--scopes", "mcp:access other")
    assert "  decision: ALLOW" in out
    assert [line for line in out if line.startswith(("  observed", "  condition"))] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--scopes", "a", "--claims", "{nope"), "--claims: not JSON"),
        (("--scopes", "a", "--claims", '["x"]'), "--claims: must be a JSON object of claims"),
        (
            ("--token", mint(), "--claims", "{}"),
            "--claims goes with --scopes: a --token carries its own claims",
        ),
    ],
)
def test_bad_claims_are_a_usage_error(explain: Explain, args: tuple[str, ...], message: str) -> None:
    """--claims must be a JSON object, and only with --scopes: exit 2 with the reason."""
    status, out = explain(call("echo"), *args)
    assert status == 2
    assert any(line.startswith(message) for line in out)
