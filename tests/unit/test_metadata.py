"""Protected resource metadata and the WWW-Authenticate builder."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import parse_config_text
from gateway.web.metadata import advertised_scopes, bearer_challenge, prm_document, prm_url, quoted_string
from tests.support.challenge import parse_bearer_challenge

CONFIG = """
public_url: https://gw.example/base/
issuers: [{issuer: https://as.example/tenant, algorithms: [RS256], jwks: {discover: true}}]
routes:
  - {path: /github/mcp/, upstream: http://127.0.0.1:9000/mcp, scopes: [mcp:access, offline_access]}
"""


def test_prm_url_inserts_well_known_before_the_path() -> None:
    """RFC 9728 §3.1: the well-known segment goes between the host and the resource's whole path."""
    config = parse_config_text(CONFIG, Path("/tmp/x.yaml"), {})
    route = config.routes[0]
    assert route.resource == "https://gw.example/base/github/mcp"
    assert prm_url(config, route) == "https://gw.example/.well-known/oauth-protected-resource/base/github/mcp"


def test_prm_document_fields_and_no_offline_access() -> None:
    """The document names the resource, issuers and scopes, never offline_access, no empty values."""
    config = parse_config_text(CONFIG, Path("/tmp/x.yaml"), {})
    assert prm_document(config, config.routes[0]) == {
        "resource": "https://gw.example/base/github/mcp",
        "authorization_servers": ["https://as.example/tenant"],
        "scopes_supported": ["mcp:access"],
        "bearer_methods_supported": ["header"],
        "dpop_signing_alg_values_supported": ["RS256"],  # dpop: allowed by default
        "resource_name": "/github/mcp",
    }


def test_challenge_round_trips_through_a_strict_parser() -> None:
    """Parameters are quoted and escaped so a real auth-param parser reads them back exactly."""
    header = bearer_challenge(
        resource_metadata='https://gw.example/.well-known/oauth-protected-resource/a"b\\c',
        scopes=["x:read", "x:write", "x:read"],
        error="insufficient_scope",
    )
    assert parse_bearer_challenge(header) == {
        "error": "insufficient_scope",
        "scope": "x:read x:write",
        "resource_metadata": 'https://gw.example/.well-known/oauth-protected-resource/a"b\\c',
    }


def test_challenge_without_error_or_scope() -> None:
    """No credentials: no error parameter; no scopes: no scope parameter."""
    assert bearer_challenge(resource_metadata="https://m") == 'Bearer resource_metadata="https://m"'


@pytest.mark.parametrize("value", ["a\r\nSet-Cookie: x", "tab\x00", "caf\u00e9"])
def test_quoted_string_refuses_control_and_non_ascii(value: str) -> None:
    """A CR/LF or other non-visible character can never split a header."""
    with pytest.raises(ValueError):
        quoted_string(value)


def test_advertised_scopes_deduplicates_in_order() -> None:
    """Advertised scopes keep first-seen order, drop repeats and never list `offline_access`."""
    assert advertised_scopes(["b", "a", "b", "offline_access"]) == ("b", "a")
