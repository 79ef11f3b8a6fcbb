"""`check-config` and `serve` report every config problem as file:line: key.path: message, exit 2."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.cli import limits_summary, main
from gateway.config import LimitsConfig
from gateway.web.limits import connection_cap
from tests.support.processes import REPO_ROOT

VALID = """\
public_url: https://mcp.example.com
issuers:
  - issuer: https://auth.example.com
    algorithms: [RS256]
    jwks: {discover: true}
routes:
  - path: /github/mcp
    upstream: http://127.0.0.1:9000/mcp
    scopes: [mcp:access]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_check_config_valid_prints_route_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A valid file: exit 0 and one line per route with its upstream, resource and scopes."""
    assert main(["check-config", str(write(tmp_path, VALID))]) == 0
    out = capsys.readouterr().out
    assert "route /github/mcp -> http://127.0.0.1:9000/mcp" in out
    assert "resource=https://mcp.example.com/github/mcp" in out
    assert "scopes=mcp:access" in out


BAD_CONFIGS = [
    ("unknown_key", VALID.replace("    scopes:", "    scoops:"), 9, "routes[0].scoops"),
    (
        "duplicate_key",
        VALID.replace("    scopes: [mcp:access]", "    scopes: [a]\n    scopes: [b]"),
        10,
        "routes[0].scopes",
    ),
    (
        "wrong_type",
        VALID.replace("    scopes: [mcp:access]", "    scopes: mcp:access"),
        9,
        "routes[0].scopes",
    ),
    (
        "non_http_upstream",
        VALID.replace("http://127.0.0.1:9000/mcp", "ftp://127.0.0.1/mcp"),
        8,
        "routes[0].upstream",
    ),
    (
        "two_routes_one_path",
        VALID + "  - path: /github/mcp/\n    upstream: http://127.0.0.1:9001/mcp\n",
        10,
        "routes[1].path",
    ),
    ("alg_none", VALID.replace("[RS256]", "[RS256, none]"), 4, "issuers[0].algorithms[1]"),
    ("hs256_for_jwks", VALID.replace("[RS256]", "[HS256]"), 4, "issuers[0].algorithms[0]"),
    (
        "missing_jwks_file",
        VALID.replace("{discover: true}", "{file: keys/missing.json}"),
        5,
        "issuers[0].jwks.file",
    ),
]


@pytest.mark.parametrize(("case", "text", "line", "key"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_exits_2_naming_file_line_and_key(
    case: str, text: str, line: int, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each bad config: exit 2 and a problem line `file:line: key.path: message`."""
    path = write(tmp_path, text)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:{line}: {key}:" in err, err


def test_all_problems_reported_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Several problems in one file are all reported, not just the first."""
    text = VALID.replace("[RS256]", "[none]").replace("http://127.0.0.1:9000/mcp", "ftp://x/mcp")
    path = write(tmp_path, text)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4: issuers[0].algorithms[0]:" in err
    assert f"{path}:8: routes[0].upstream:" in err


def test_serve_with_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    """`python -m gateway serve` with a bad config: exit 2, the problem on stderr, no traceback."""
    path = write(tmp_path, VALID.replace("[RS256]", "[none]"))
    completed = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert completed.returncode == 2
    assert f"{path}:4: issuers[0].algorithms[0]: alg none is never accepted" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_demo_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped demo config passes check-config."""
    assert main(["check-config", str(REPO_ROOT / "config" / "demo.yaml")]) == 0


def test_check_config_states_the_limits_a_process_would_enforce() -> None:
    """Automatic caps say what they are sized from; a configured cap the descriptors cannot carry
    says it is lowered; the timeouts are shown as written."""
    automatic = limits_summary(LimitsConfig(), 4096)
    assert automatic.startswith("limits: header 10s, body 30s, keep-alive 60s; ")
    assert f"max_connections {connection_cap(4096)} (sized from the 4096 open files" in automatic
    assert f"max_streams {connection_cap(4096)}," in automatic
    lowered = limits_summary(LimitsConfig(max_connections=50_000, header_timeout_s=2.5), 1024)
    assert "header 2.5s" in lowered
    assert f"max_connections {connection_cap(1024)} (lowered from 50000: 1024 open files here)" in lowered


STRANDED = """
public_url: https://mcp.example.com
issuers: [{issuer: https://as.example.com, algorithms: [RS256], jwks: {discover: true}}]
routes:
  - path: /mcp
    upstream: http://127.0.0.1:9000/mcp
    scopes: [mcp:access]
    list_visibility: usable
    tools: {"search": [docs:read], "*": [docs:admin]}
  - path: /plain
    upstream: http://127.0.0.1:9001/mcp
    scopes: [mcp:access]
"""


def test_check_config_shows_each_routes_rules_and_warns_of_stranded_scopes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Per route: each section's rules and what happens to the rest, the list visibility, what a
    401 names; a warning per rule whose scopes no 401 names while lists hide what needs them; a
    route with only scopes says its scopes govern every tool."""
    path = tmp_path / "gateway.yaml"
    path.write_text(STRANDED)
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  tools: 'search': docs:read; '*': docs:admin; any other tool: refused" in out
    assert "  list_visibility: usable: lists show only what the caller may use now" in out
    assert "  a 401 names: mcp:access;" in out
    assert "warning: route /mcp: tools['search'] needs docs:read, which no 401 names" in out
    assert "warning: route /mcp: tools['*'] needs docs:admin" in out
    assert "  tools: (no rules); every tool: allowed with the route scopes (the route has no rules)" in out
    assert "warning: route /plain" not in out
    path.write_text(STRANDED.replace("list_visibility: usable", "challenge_scopes: [mcp:access, docs:read]"))
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  a 401 names: mcp:access docs:read;" in out and "warning:" not in out
