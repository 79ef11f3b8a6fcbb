"""gateway.metrics (bounded labels, the family list), the admin/logging config keys, and the
log processor that drops who the caller is."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import pytest
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway import cli
from gateway.cli import main
from gateway.config import AdminConfig, ConfigError, GatewayConfig, LoggingConfig, RouteConfig, load_config
from gateway.logs import HIDE_SUBJECT, configure_logging
from gateway.mcp.methods import Prompt, Tool
from gateway.mcp.policy import RoutePolicy, Rule, compile_glob
from gateway.metrics import METRIC_FAMILIES, GatewayMetrics, mcp_method_label, tool_label
from tests.conftest import _SESSION_LOGS

BASE = """\
public_url: https://mcp.example.com
issuers:
  - issuer: https://auth.example.com
    algorithms: [RS256]
    jwks: {discover: true}
routes:
  - path: /mcp
    upstream: http://127.0.0.1:9000/mcp
"""


def route_with_tools(*patterns: str) -> RouteConfig:
    rules = tuple(Rule("tools", pattern, (), compile_glob(pattern)) for pattern in patterns)
    return RouteConfig(
        path="/r", upstream="http://u/mcp", resource="https://x/r", policy=RoutePolicy(tools=rules)
    )


def test_metric_families_lists_exactly_what_is_registered() -> None:
    """`METRIC_FAMILIES` names exactly the 22 families a `GatewayMetrics` registers."""
    metrics = GatewayMetrics(CollectorRegistry())
    registered = {family.name for family in metrics.registry.collect()}
    assert {name.removesuffix("_total") for name in METRIC_FAMILIES} == registered
    assert len(set(METRIC_FAMILIES)) == len(METRIC_FAMILIES) == 35


def test_each_gateway_metrics_has_its_own_registry() -> None:
    """Each `GatewayMetrics` counts in its own registry: one's samples never show in another's."""
    first, second = GatewayMetrics(), GatewayMetrics()
    first.token_rejected("expired")
    assert first.registry is not second.registry
    assert first.registry.get_sample_value("mcp_gateway_token_rejections_total", {"reason": "expired"}) == 1
    assert (
        second.registry.get_sample_value("mcp_gateway_token_rejections_total", {"reason": "expired"}) is None
    )


@pytest.mark.parametrize(
    ("http_method", "mcp_method", "label"),
    [
        ("POST", "tools/call", "tools/call"),
        ("POST", "notifications/initialized", "notifications/initialized"),
        ("POST", "vendor/secret-method-of-user-42", "other"),
        ("POST", None, "other"),  # body not read (401) or a batch
        ("GET", None, "GET"),
        ("DELETE", None, "DELETE"),
        ("OPTIONS", None, "other"),
        ("PUT", None, "other"),
    ],
)
def test_mcp_method_label_is_bounded(http_method: str, mcp_method: str | None, label: str) -> None:
    """The MCP method label is a known method, GET or DELETE, and `other` for anything else."""
    assert mcp_method_label(http_method, mcp_method) == label


def test_tool_label_only_names_literal_patterns() -> None:
    """The tool label names only tools written literally in the config; else `other`, or `none`."""
    route = route_with_tools("echo", "get_*", "del?te", "[ab]x", "add")
    assert route.policy.literal_tools == {"echo", "add"}
    assert tool_label(route, Tool("echo")) == "echo"
    assert tool_label(route, Tool("get_user")) == "other"
    assert tool_label(route, Tool("anything-a-client-invents")) == "other"
    assert tool_label(route, None) == "none"
    assert tool_label(route, Prompt("echo")) == "none"  # a prompt is no tool call


def test_sse_gauge_goes_back_down_when_the_stream_fails() -> None:
    """The open-streams gauge is back to 0 when a stream ends with an exception."""
    metrics = GatewayMetrics()
    with pytest.raises(RuntimeError), metrics.sse_stream("/mcp"):
        assert metrics.registry.get_sample_value("mcp_gateway_sse_streams_open", {"route": "/mcp"}) == 1
        raise RuntimeError("upstream went away")
    assert metrics.registry.get_sample_value("mcp_gateway_sse_streams_open", {"route": "/mcp"}) == 0


def test_exposition_parses() -> None:
    """The exposition text parses, with a request's route, MCP method and outcome as labels."""
    metrics = GatewayMetrics()
    metrics.request_finished("/mcp", "tools/call", "ok", 0.01)
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    assert families["mcp_gateway_requests"].samples[0].labels == {
        "route": "/mcp",
        "mcp_method": "tools/call",
        "outcome": "ok",
    }


def test_jwks_keys_skipped_counts_by_issuer_and_reason() -> None:
    """Each skipped JWKS key counts once under its issuer and reason, as a *_total counter."""
    metrics = GatewayMetrics(CollectorRegistry())
    for reason in ("rsa_key_too_small", "rsa_key_too_small", "alg_mismatch"):
        metrics.jwks_key_skipped("https://as.example", reason)
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    assert families["mcp_gateway_jwks_keys_skipped"].type == "counter"
    sample = metrics.registry.get_sample_value
    labels = {"issuer": "https://as.example"}
    assert sample("mcp_gateway_jwks_keys_skipped_total", labels | {"reason": "rsa_key_too_small"}) == 2
    assert sample("mcp_gateway_jwks_keys_skipped_total", labels | {"reason": "alg_mismatch"}) == 1


# --- config ---------------------------------------------------------------------------------


def load(tmp_path: Path, extra: str) -> GatewayConfig:
    path = tmp_path / "gateway.yaml"
    path.write_text(BASE + textwrap.dedent(extra))
    return load_config(path)


def test_admin_and_logging_default_and_parse(tmp_path: Path) -> None:
    """Without `admin` there is no admin listener; `admin` and `logging` parse, with their defaults."""
    plain = load(tmp_path, "")
    assert plain.admin is None and plain.logging == LoggingConfig()
    assert LoggingConfig() == LoggingConfig(format="json", level="info", include_subject=True)
    full = load(
        tmp_path,
        "admin: {host: 10.0.0.1, port: 9100}\n"
        "logging: {format: console, level: debug, include_subject: false}\n",
    )
    assert full.admin == AdminConfig(host="10.0.0.1", port=9100)
    assert full.logging == LoggingConfig(format="console", level="debug", include_subject=False)
    assert load(tmp_path, "admin: {}\n").admin == AdminConfig("127.0.0.1", 9090)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("admin: {port: 70000}\n", "admin.port"),
        ("admin: {prot: 9090}\n", "unknown key 'prot'"),
        ("logging: {format: xml}\n", "logging.format: 'xml' is not one of: json, console"),
        ("logging: {level: loud}\n", "logging.level"),
        ("logging: {include_subject: maybe}\n", "logging.include_subject"),
    ],
)
def test_admin_and_logging_problems(tmp_path: Path, extra: str, message: str) -> None:
    """A bad `admin` or `logging` value is reported with its key path."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, extra)
    assert any(message in str(problem) for problem in caught.value.problems), caught.value.problems


# --- logs -----------------------------------------------------------------------------------


def test_hidden_subject_is_dropped_from_every_event_of_the_request() -> None:
    """While the hide flag is bound, subject and client_id leave every event; after, they are logged."""
    stream = io.StringIO()
    configure_logging(json=True, level="debug", stream=stream)
    try:
        log = structlog.get_logger("test")
        structlog.contextvars.bind_contextvars(**{HIDE_SUBJECT: True})
        log.info("policy_decision", subject="alice", client_id="app", route="/mcp")
        structlog.contextvars.clear_contextvars()
        log.info("request", subject="bob", client_id="app2")
    finally:
        configure_logging(json=True, level="debug", stream=_SESSION_LOGS)
    hidden, shown = (json.loads(line) for line in stream.getvalue().splitlines())
    assert hidden == {**hidden, "event": "policy_decision", "route": "/mcp"}
    assert not {"subject", "client_id", HIDE_SUBJECT} & hidden.keys()
    assert (shown["subject"], shown["client_id"]) == ("bob", "app2")


def test_configure_logging_without_subject_drops_it_always() -> None:
    """`include_subject=False` drops subject and client_id from every event."""
    stream = io.StringIO()
    configure_logging(json=True, level="info", stream=stream, include_subject=False)
    try:
        structlog.get_logger("test").info("request", subject="carol", client_id="c", status=200)
    finally:
        configure_logging(json=True, level="debug", stream=_SESSION_LOGS)
    event = json.loads(stream.getvalue())
    assert event["status"] == 200 and "subject" not in event and "client_id" not in event


def test_serve_rejects_an_unknown_log_level(capsys: pytest.CaptureFixture[str]) -> None:
    """`serve --log-level` with an unknown level exits with a usage error naming the flag."""
    with pytest.raises(SystemExit):
        main(["serve", "--config", "x.yaml", "--log-level", "loud"])
    assert "--log-level" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], {"json": False, "level": "warning", "include_subject": False, "batched": True}),
        (
            ["--log-format", "json", "--log-level", "DEBUG"],
            {"json": True, "level": "debug", "include_subject": False, "batched": True},
        ),
    ],
)
def test_serve_takes_logging_from_the_config_unless_flags_say_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], expected: dict[str, object]
) -> None:
    """`serve` sets up logging from the config file, and command-line flags override it."""
    path = tmp_path / "gateway.yaml"
    path.write_text(BASE + "logging: {format: console, level: warning, include_subject: false}\n")
    seen: dict[str, object] = {}
    monkeypatch.setattr(cli, "configure_logging", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(cli, "_serve", lambda config, args: 0)
    assert main(["serve", "--config", str(path), *flags]) == 0
    assert seen == expected


def test_admin_port_must_differ_from_listen_port(tmp_path: Path) -> None:
    """An admin port equal to the listen port is reported on `admin.port`."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "listen: {port: 8080}\nadmin: {port: 8080}\n")
    [problem] = caught.value.problems
    assert problem.key_path == "admin.port" and "its own port" in problem.message


def test_admin_default_port_clashing_with_listen_is_reported(tmp_path: Path) -> None:
    """An admin listener on its default 9090 clashes with listen port 9090 and is reported."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "listen: {port: 9090}\nadmin: {}\n")
    assert [p.key_path for p in caught.value.problems] == ["admin.port"]
