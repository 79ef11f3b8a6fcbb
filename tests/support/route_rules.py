"""A one-route config built around some rules, for the unit tests of rules and conditions."""

from __future__ import annotations

import textwrap
from pathlib import Path

from gateway.config import GatewayConfig, parse_config_text
from gateway.mcp.policy import RoutePolicy

CONFIG_PATH = Path("/etc/gw.yaml")
HEAD = """\
public_url: https://gw.example
issuers: [{issuer: https://as.example, algorithms: [RS256], jwks: {discover: true}}]
routes:
  - path: /mcp
    upstream: http://127.0.0.1:9000/mcp
"""
HEAD_LINES = HEAD.count("\n")  # the rules' first line in the file is HEAD_LINES + 1


def config_with_rules(rules: str) -> GatewayConfig:
    """``rules`` (route keys, written at the left margin) under the one route of ``HEAD``."""
    return parse_config_text(HEAD + textwrap.indent(textwrap.dedent(rules), "    "), CONFIG_PATH, {})


def policy_with_rules(rules: str) -> RoutePolicy:
    return config_with_rules(rules).routes[0].policy
