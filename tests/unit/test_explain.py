"""`mcp-auth-gateway explain`: the offline answer to one POST, with the rule that decides it."""

from __future__ import annotations

import base64
import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.errors import InsufficientScope, PolicyDenied
from gateway.explain import NOT_VERIFIED, caller_from_scopes, explain
from gateway.mcp.messages import parse_post
from gateway.principal import Principal
from gateway.secret import PresentedToken
from gateway.web.pipeline import authorize

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
      "get_*": [repo:read]
      "delete_*": [repo:admin, repo:write]
    prompts:
      "summarise": [repo:read]
    methods:
      "completion/complete": [complete]
  - path: /other/mcp
    upstream: http://127.0.0.1:9001/mcp
"""
RESOURCE = "https://mcp.example.com/mcp"
ISSUER = "https://auth.example.com"


def line_of(needle: str) -> int:
    return next(number for number, line in enumerate(CONFIG.splitlines(), 1) if needle in line)


def write(tmp_path: Path, text: str = CONFIG) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def call(name: str, rpc_id: int = 1, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": {"name": name, **params}}


def run(tmp_path: Path, body: object, *args: str, route: str = "/mcp") -> int:
    """Run explain with CONFIG; ``body`` is JSON-encoded unless it is already a string."""
    request = body if isinstance(body, str) else json.dumps(body)
    argv = ["explain", "--config", write(tmp_path), "--route", route, "--request", request, *args]
    return main(argv)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint(**claims: Any) -> str:
    """A well-formed JWT whose signature segment is a dummy: explain must never verify it."""
    header = {"alg": "RS256", "typ": "at+jwt", "kid": "k1"}
    payload = {"iss": ISSUER, "sub": "alice", "client_id": "cli-1", "aud": RESOURCE, "exp": time.time() + 600}
    payload.update(claims)
    parts = [json.dumps(header).encode(), json.dumps(payload).encode(), b"not-a-real-signature"]
    return ".".join(b64url(part) for part in parts)


def test_allow_names_the_rule_and_its_config_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An allowed tool call: exit 0, ALLOW, the deciding rule with file:line, required and missing."""
    status = run(tmp_path, call("get_issue"), "--scopes", "mcp:access repo:read")
    out = capsys.readouterr().out
    assert status == 0
    assert "message 1: tools/call  tool get_issue  (id 1)" in out
    assert "  decision: ALLOW" in out
    assert f"  rule: tools['get_*'] at {tmp_path / 'gateway.yaml'}:{line_of('get_*')}" in out
    assert "  required: mcp:access repo:read" in out
    assert "  missing: (none)" in out
    assert out.rstrip().endswith("outcome: forwarded")


def test_deny_lists_missing_scopes_and_the_exact_challenge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scopes missing for a rule: exit 1, the missing ones, 403 insufficient_scope naming all required."""
    status = run(tmp_path, call("delete_repo"), "--scopes", "mcp:access repo:write")
    out = capsys.readouterr().out
    assert status == 1
    assert "  decision: DENY" in out
    assert f"delete_*'] at {tmp_path / 'gateway.yaml'}:{line_of('delete_*')}" in out
    assert "  required: mcp:access repo:admin repo:write" in out
    assert "  missing: repo:admin" in out
    assert 'outcome: HTTP 403 insufficient_scope, scope="mcp:access repo:admin repo:write"' in out
    assert (
        '  WWW-Authenticate: Bearer error="insufficient_scope", scope="mcp:access repo:admin repo:write", '
        'resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp"'
    ) in out


def test_unconditional_deny_when_no_rule_names_the_tool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tool no rule names: default deny, a plain 403 that no scope would fix."""
    status = run(tmp_path, call("rm_rf"), "--scopes", "mcp:access repo:read repo:admin repo:write")
    out = capsys.readouterr().out
    assert status == 1
    assert "  rule: no tools rule matches" in out
    assert "outcome: HTTP 403 (no rule allows this)" in out
    assert "WWW-Authenticate" not in out


def test_token_scopes_are_read_without_verifying_the_signature(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--token: a dummy signature is fine; scopes and who the caller is come from the payload."""
    token = mint(scope="mcp:access repo:read")
    status = run(tmp_path, call("get_issue"), "--token", token)
    out = capsys.readouterr().out
    assert status == 0
    assert NOT_VERIFIED in out
    for line in (f"  iss: {ISSUER}", "  sub: alice", "  client_id: cli-1", f"  aud: {RESOURCE}"):
        assert line in out
    assert "  scopes: mcp:access repo:read" in out
    assert "WARNING" not in out
    assert out.rstrip().endswith("outcome: forwarded")


def test_token_for_another_audience_is_refused_before_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A token whose aud is not the route's resource: a warning, and the answer is 401, not the policy's."""
    token = mint(aud="https://elsewhere.example/mcp", scope="mcp:access repo:read")
    status = run(tmp_path, call("get_issue"), "--token", token)
    out = capsys.readouterr().out
    assert status == 1
    assert (
        "WARNING: aud (https://elsewhere.example/mcp) does not contain this route's resource "
        f"{RESOURCE}: the gateway would refuse this token with HTTP 401 invalid_token (bad_audience) "
        "before any policy decision"
    ) in out
    assert "  decision: ALLOW" in out  # the policy is still explained
    assert "with an accepted token: forwarded" in out
    assert "outcome: HTTP 401 invalid_token (bad_audience), before any policy decision" in out
    assert 'WWW-Authenticate: Bearer error="invalid_token", scope="mcp:access"' in out


def test_token_from_an_unknown_issuer_is_refused_before_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A token whose iss is not configured: named as unknown_issuer, the gateway's first check."""
    status = run(tmp_path, call("get_issue"), "--token", mint(iss="https://evil.example", scope="x"))
    out = capsys.readouterr().out
    assert status == 1
    assert f"iss https://evil.example is not a configured issuer ({ISSUER})" in out
    assert "outcome: HTTP 401 invalid_token (unknown_issuer)" in out


def test_undecodable_token_is_a_401_without_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A token the strict decoder refuses: 401 malformed, and no decision is made up."""
    status = run(tmp_path, call("get_issue"), "--token", "not.a-jwt")
    out = capsys.readouterr().out
    assert status == 1
    assert "outcome: HTTP 401 invalid_token (malformed)" in out
    assert "decision:" not in out


def test_duplicate_key_body_is_refused_before_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A body with a duplicate key is what the gateway refuses: 400 / -32700, exit 1."""
    body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_issue","name":"rm_rf"}}'
    status = run(tmp_path, body, "--scopes", "mcp:access repo:read")
    out = capsys.readouterr().out
    assert status == 1
    assert "refused before policy: invalid_json (HTTP 400, JSON-RPC -32700)" in out
    assert "decision:" not in out


def test_batch_with_one_denied_element_refuses_the_whole_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 2025-03-26 batch: every element explained, and one denial makes the whole POST a 403."""
    body = [
        call("get_issue", 1),
        call("delete_repo", 2),
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
    ]
    status = run(tmp_path, body, "--scopes", "mcp:access repo:read")
    out = capsys.readouterr().out
    assert status == 1
    assert "batch of 3" in out
    assert out.count("  decision: ALLOW") == 2
    assert out.count("  decision: DENY") == 1
    assert 'outcome: HTTP 403 insufficient_scope, scope="mcp:access repo:admin repo:write repo:read"' in out


def modern_call(name: str) -> dict[str, Any]:
    return call(name, _meta={"io.modelcontextprotocol/protocolVersion": "2026-07-28"})


def test_2026_headers_that_disagree_with_the_body_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """MCP 2026-07-28: an Mcp-Name header naming another tool is a header mismatch (400 / -32020)."""
    headers = ["--header", "MCP-Protocol-Version: 2026-07-28", "--header", "Mcp-Method: tools/call"]
    status = run(
        tmp_path,
        modern_call("get_issue"),
        "--scopes",
        "mcp:access repo:read",
        *headers,
        "--header",
        "Mcp-Name: get_x",
    )
    out = capsys.readouterr().out
    assert status == 1
    assert "refused before policy: header_mismatch (HTTP 400, JSON-RPC -32020)" in out

    status = run(
        tmp_path,
        modern_call("get_issue"),
        "--scopes",
        "mcp:access repo:read",
        *headers,
        "--header",
        "mcp-name: get_issue",
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "body: protocol 2026-07-28, single message" in out


def test_json_output_has_every_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one object with the caller, each message's decision and the outcome."""
    status = run(tmp_path, call("delete_repo", 7), "--scopes", "mcp:access repo:write", "--json")
    document = json.loads(capsys.readouterr().out)
    assert status == 1
    assert document["route"] == "/mcp"
    assert document["resource"] == RESOURCE
    assert document["caller"] == {"source": "scopes", "scopes": ["mcp:access", "repo:write"], "token": None}
    assert document["refused"] is None
    [message] = document["messages"]
    assert message["id"] == 7
    assert message["method"] == "tools/call"
    assert (message["target_kind"], message["target"]) == ("tool", "delete_repo")
    assert message["decision"] == "DENY"
    assert message["rule"] == "tools['delete_*']"
    assert message["rules"] == [{"label": "tools['delete_*']", "line": line_of("delete_*")}]
    assert message["required"] == ["mcp:access", "repo:admin", "repo:write"]
    assert message["missing"] == ["repo:admin"]
    outcome = document["outcome"]
    assert outcome["forwarded"] is False
    assert (outcome["status"], outcome["error"]) == (403, "insufficient_scope")
    assert outcome["scope"] == ["mcp:access", "repo:admin", "repo:write"]
    assert document["exit_status"] == 1


def test_json_output_for_a_token_says_it_was_not_verified(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json with --token: verified is false and the claims shown are the token's."""
    run(tmp_path, call("get_issue"), "--token", mint(scope="mcp:access repo:read"), "--json")
    token = json.loads(capsys.readouterr().out)["caller"]["token"]
    assert token["verified"] is False
    assert token["note"] == NOT_VERIFIED
    assert token["claims"]["sub"] == "alice"
    assert token["problems"] == []


def test_request_body_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--request @file reads the body's bytes from a file."""
    body = tmp_path / "body.json"
    body.write_text(json.dumps(call("get_issue")))
    status = run(tmp_path, f"@{body}", "--scopes", "mcp:access repo:read")
    assert status == 0
    assert "outcome: forwarded" in capsys.readouterr().out


def test_unknown_route_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown --route: exit 2 and the routes the config has."""
    status = run(tmp_path, call("get_issue"), "--scopes", "mcp:access", route="/nope")
    err = capsys.readouterr().err
    assert status == 2
    assert "unknown route '/nope'" in err
    assert "/mcp, /other/mcp" in err


def test_malformed_header_argument_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --header without a colon: exit 2."""
    status = run(tmp_path, call("get_issue"), "--scopes", "mcp:access", "--header", "Mcp-Method")
    assert status == 2
    assert "expected 'Name: value'" in capsys.readouterr().err


def test_bad_config_is_reported_like_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A broken config: exit 2 and each problem as file:line: key.path: message."""
    path = write(tmp_path, CONFIG.replace('"get_*": [repo:read]', '"get_[": [repo:read]'))
    status = main(["explain", "--config", path, "--route", "/mcp", "--scopes", "", "--request", "{}"])
    err = capsys.readouterr().err
    assert status == 2
    assert f"{path}:{line_of('get_*')}: routes[0].tools.get_[: invalid pattern" in err
    assert f"1 problem(s) in {path}" in err


CONSISTENCY_BODIES = [
    [call("get_issue")],
    [call("delete_repo")],
    [call("rm_rf")],
    [call("get_issue", 1), call("delete_repo", 2)],
    [call("delete_repo", 1), call("rm_rf", 2)],
    [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "completion/complete",
            "params": {"ref": {"type": "ref/prompt", "name": "summarise"}},
        }
    ],
]


@pytest.mark.parametrize("body", CONSISTENCY_BODIES)
@pytest.mark.parametrize(
    "scopes", ["mcp:access", "mcp:access repo:read", "mcp:access repo:read repo:admin repo:write complete"]
)
def test_outcome_agrees_with_the_gateway_pipeline(
    tmp_path: Path, body: list[dict[str, Any]], scopes: str
) -> None:
    """explain's answer is what gateway.web.pipeline.authorize raises for the same POST and scopes."""
    config = load_config(write(tmp_path))
    route = config.routes[0]
    raw = json.dumps(body).encode()
    explanation = explain(config, "gateway.yaml", route, caller_from_scopes(scopes), raw)
    principal = Principal(
        issuer=ISSUER,
        subject="alice",
        client_id=None,
        scopes=frozenset(scopes.split()),
        audience=(RESOURCE,),
        expires_at=time.time() + 60,
        token_id=None,
        token=PresentedToken("t"),
    )
    try:
        authorize(route, principal, parse_post(raw, lambda _name: []))
    except InsufficientScope as exc:
        assert explanation.outcome.status == 403
        assert explanation.outcome.error == "insufficient_scope"
        assert explanation.outcome.scope == tuple(dict.fromkeys(exc.scopes))
    except PolicyDenied:
        assert explanation.outcome.summary == "HTTP 403 (no rule allows this)"
    else:
        assert explanation.outcome.forwarded


@pytest.mark.parametrize(
    ("visibility", "delete_line"),
    [
        (
            "step_up",
            "shown, but a call gets a 403 insufficient_scope step-up challenge for repo:admin repo:write",
        ),
        ("usable", "hidden until the caller holds repo:admin repo:write (with list_visibility: step_up"),
    ],
)
def test_a_list_request_says_how_its_result_is_filtered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], visibility: str, delete_line: str
) -> None:
    """explain of tools/list names, rule by rule with its config line, which tools the caller will
    see (usable now, or shown for a step-up) and which stay hidden, for the route's list_visibility."""
    config = CONFIG.replace(
        "    scopes: [mcp:access]\n", f"    scopes: [mcp:access]\n    list_visibility: {visibility}\n", 1
    )
    path = write(tmp_path, config)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    argv = [
        "explain",
        "--config",
        path,
        "--route",
        "/mcp",
        "--request",
        body,
        "--scopes",
        "mcp:access repo:read",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert (
        f"result filtered for this caller, by the rule that decides each item (list_visibility: {visibility}"
        in out
    )
    get_line, delete_rule = line_of('"get_*"') + 1, line_of('"delete_*"') + 1  # one line added above them
    assert f"    tools['get_*'] at {path}:{get_line}: shown, and the caller may call them now" in out
    assert f"    tools['delete_*'] at {path}:{delete_rule}: {delete_line}" in out
    assert "    no tools rule matches: hidden: no scope would allow them" in out


def test_a_list_result_in_json_lists_each_rules_effect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json carries the same per-rule filtering for a */list message (null for other methods)."""
    body = [
        {"jsonrpc": "2.0", "id": 1, "method": "prompts/list"},
        {"jsonrpc": "2.0", "id": 2, "method": "ping"},
    ]
    assert run(tmp_path, body, "--scopes", "mcp:access", "--json") == 0
    listed, called = json.loads(capsys.readouterr().out)["messages"]
    assert called["list_filter"] is None
    assert listed["list_filter"]["section"] == "prompts"
    assert [(item["rule"], item["missing"]) for item in listed["list_filter"]["by_rule"]] == [
        ("prompts['summarise']", ["repo:read"]),
        ("no prompts rule matches", []),
    ]


def test_a_body_without_a_version_header_says_its_version_is_assumed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without MCP-Protocol-Version the explained version is marked as assumed; with it, not."""
    assert run(tmp_path, call("get_issue"), "--scopes", "mcp:access repo:read") == 0
    assert "body: protocol 2025-03-26 (assumed: no MCP-Protocol-Version header), single message" in (
        capsys.readouterr().out
    )
    header = "MCP-Protocol-Version: 2025-06-18"
    assert run(tmp_path, call("get_issue"), "--scopes", "mcp:access repo:read", "--header", header) == 0
    assert "body: protocol 2025-06-18, single message" in capsys.readouterr().out


DPOP_CONFIG = f"""\
public_url: https://mcp.example.com
issuers:
  - issuer: {ISSUER}
    algorithms: [RS256, ES256]
    jwks: {{discover: true}}
routes:
  - {{path: /mcp, upstream: "http://127.0.0.1:9000/mcp", scopes: [mcp:access], tools: {{"*": []}}}}
  - path: /strict
    upstream: http://127.0.0.1:9000/mcp
    scopes: [mcp:access]
    tools: {{"*": []}}
    dpop: required
    dpop_nonce: true
  - path: /plain
    upstream: http://127.0.0.1:9000/mcp
    scopes: [mcp:access]
    tools: {{"*": []}}
    dpop: "off"
"""
JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"  # an RFC 7638 thumbprint (RFC 7638 §3.1)


def explain_dpop(tmp_path: Path, route: str, token: str, *args: str) -> int:
    """explain a tools/call on ``route`` of DPOP_CONFIG (allowed /mcp, required+nonce /strict, off /plain)."""
    path = tmp_path / "gateway.yaml"
    path.write_text(DPOP_CONFIG)
    body = json.dumps(call("anything"))
    return main(
        ["explain", "--config", str(path), "--route", route, "--request", body, "--token", token, *args]
    )


def bound(route: str) -> str:
    return mint(aud="https://mcp.example.com" + route, scope="mcp:access", cnf={"jkt": JKT})


def test_a_bound_token_says_it_needs_a_dpop_proof(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--token with cnf.jkt on a dpop: allowed route: the thumbprint, and that a request needs
    Authorization: DPoP and a proof (Bearer refused); the outcome with a proof is forwarded."""
    status = explain_dpop(tmp_path, "/mcp", bound("/mcp"))
    out = capsys.readouterr().out
    assert status == 0
    assert f"  DPoP-bound: cnf.jkt {JKT}\n" in out
    assert (
        "    a request needs Authorization: DPoP and a DPoP proof of this key (route dpop: allowed); "
        "sent as Bearer it is refused"
    ) in out
    assert "WARNING" not in out
    assert out.rstrip().endswith("outcome: forwarded")


def test_a_bound_token_in_json_names_its_binding_and_the_nonce(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json on a dpop: required, dpop_nonce route: dpop_binding has the jkt, the mode, the nonce."""
    explain_dpop(tmp_path, "/strict", bound("/strict"), "--json")
    token = json.loads(capsys.readouterr().out)["caller"]["token"]
    binding = token["dpop_binding"]
    assert binding["jkt"] == JKT
    assert binding["route_dpop"] == "required"
    assert binding["needs_proof"] is True and binding["nonce"] is True
    assert "DPoP proof of this key carrying a server nonce (DPoP-Nonce)" in binding["requirement"]
    assert token["problems"] == []


def test_a_bound_token_on_a_dpop_off_route_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """dpop: off: the binding is shown as refused, and the answer is the pipeline's 401 invalid_token
    (dpop_bound_token_as_bearer), Bearer challenge."""
    status = explain_dpop(tmp_path, "/plain", bound("/plain"))
    out = capsys.readouterr().out
    assert status == 1
    assert "    refused on this route (dpop: off): a DPoP-bound token is not accepted as Bearer" in out
    assert "HTTP 401 invalid_token (dpop_bound_token_as_bearer)" in out
    assert "outcome: HTTP 401 invalid_token (dpop_bound_token_as_bearer), before any policy decision" in out
    assert 'WWW-Authenticate: Bearer error="invalid_token"' in out


def test_an_unbound_token_on_a_dpop_required_route_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """dpop: required and no cnf.jkt: 401 invalid_dpop_proof (dpop_required) with the DPoP challenge,
    as the pipeline answers; on the allowed route the same kind of token has no binding and passes."""
    status = explain_dpop(tmp_path, "/strict", mint(aud="https://mcp.example.com/strict", scope="mcp:access"))
    out = capsys.readouterr().out
    assert status == 1
    assert "DPoP-bound: cnf.jkt" not in out
    assert "outcome: HTTP 401 invalid_dpop_proof (dpop_required), before any policy decision" in out
    assert '  WWW-Authenticate: DPoP error="invalid_dpop_proof"' in out
    explain_dpop(tmp_path, "/mcp", mint(scope="mcp:access"), "--json")
    token = json.loads(capsys.readouterr().out)["caller"]["token"]
    assert token["dpop_binding"] is None and token["problems"] == []
