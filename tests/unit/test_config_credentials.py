"""Config for downstream credentials, gateway minting keys and introspection issuers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gateway.config import (
    ConfigError,
    IntrospectionConfig,
    MintedCredential,
    NoCredential,
    StaticCredential,
    TokenExchangeCredential,
    parse_config_text,
)

HEAD = """\
public_url: https://mcp.example.com
issuers:
  - issuer: https://auth.example.com
    algorithms: [RS256]
    jwks: {discover: true}
"""


def route(credential: str, path: str = "/mcp") -> str:
    return f"  - path: {path}\n    upstream: http://127.0.0.1:9000/mcp\n    credential: {credential}\n"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    subprocess.run(
        ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(tmp_path / "ec.pem")],
        check=True,
    )
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(tmp_path / "ed.pem")], check=True
    )
    (tmp_path / "secret.txt").write_text("from-a-file\n")
    return tmp_path


def parse(text: str, folder: Path, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return parse_config_text(text, folder / "gateway.yaml", env or {})


def problems(text: str, folder: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text, folder, env)
    return [f"{p.line}: {p.key_path}: {p.message}" for p in caught.value.problems]


def test_every_credential_kind_parses(keys: Path) -> None:
    """none, static (env and file secrets), minted (with minting keys) and token_exchange."""
    text = (
        HEAD
        + "minting:\n  keys:\n    - {kid: k1, alg: ES256, file: ec.pem}\n"
        + "    - {kid: k2, alg: EdDSA, file: ed.pem}\n  active_kid: k2\n"
        + "routes:\n"
        + route("none", "/a")
        + route("{static: {header: X-Api-Key, value: {env: KEY}}}", "/b")
        + route("{static: {header: X-Api-Key, value: {file: secret.txt}}}", "/c")
        + route("{minted: {audience: https://up.internal, ttl_s: 60, scope: caller, reuse_s: 0}}", "/d")
        + route(
            "{token_exchange: {token_endpoint: https://auth.example.com/token, client_id: gw, "
            "client_secret: {env: KEY}, auth_method: client_secret_post, resource: https://up.internal/mcp}}",
            "/e",
        )
    )
    config = parse(text, keys, {"KEY": "k-from-env"})
    credentials = [r.credential for r in config.routes]
    assert credentials[0] == NoCredential()
    assert isinstance(credentials[1], StaticCredential) and credentials[1].value.reveal() == "k-from-env"
    assert isinstance(credentials[2], StaticCredential) and credentials[2].value.reveal() == "from-a-file"
    assert credentials[3] == MintedCredential(
        audience="https://up.internal", ttl_s=60.0, scope="caller", reuse_s=0.0
    )
    assert isinstance(credentials[4], TokenExchangeCredential)
    assert (credentials[4].auth_method, credentials[4].resource, credentials[4].audience) == (
        "client_secret_post", "https://up.internal/mcp", None,
    )  # fmt: skip
    assert "k-from-env" not in repr(config)  # secrets cannot print
    assert config.minting is not None
    assert (config.minting.issuer, config.minting.active_kid) == (
        "https://mcp.example.com/upstream-tokens",
        "k2",
    )
    assert config.routes[0].credential == NoCredential()


def test_a_second_introspection_issuer_is_refused(keys: Path) -> None:
    """An opaque token does not name its issuer: two introspection endpoints would each be shown
    the other's tokens. A JWKS issuer beside the introspection one is fine."""
    issuer = (
        "  - issuer: https://{name}.example.com\n"
        "    introspection: {{endpoint: https://{name}.example.com/introspect, client_id: gw, "
        "client_secret: {{file: secret.txt}}}}\n"
    )
    jwks = "  - {issuer: https://jwt.example.com, algorithms: [ES256], jwks: {discover: true}}\n"
    head = "public_url: https://mcp.example.com\nissuers:\n"
    found = problems(
        head + issuer.format(name="a") + jwks + issuer.format(name="b") + "routes:\n" + route("none"), keys
    )
    assert found == [
        "7: issuers[2].introspection: only one issuer may use introspection (already: "
        "'https://a.example.com'): an opaque token does not say who issued it, so each would be "
        "shown the other's tokens"
    ]
    config = parse(head + issuer.format(name="a") + jwks + "routes:\n" + route("none"), keys)
    assert [i.introspection is not None for i in config.issuers] == [True, False]


def test_introspection_issuer(keys: Path) -> None:
    """An issuer may use RFC 7662 introspection instead of JWKS (then no algorithms needed)."""
    text = (
        "public_url: https://mcp.example.com\nissuers:\n  - issuer: https://opaque.example.com\n"
        "    introspection: {endpoint: https://opaque.example.com/introspect, client_id: gw, "
        "client_secret: {file: secret.txt}, cache_max_s: 30}\nroutes:\n" + route("none")
    )
    issuer = parse(text, keys).issuers[0]
    assert issuer.jwks is None
    assert issuer.introspection == IntrospectionConfig(
        "https://opaque.example.com/introspect", "gw", issuer.introspection.client_secret, cache_max_s=30.0
    )


@pytest.mark.parametrize(
    ("credential", "expected"),
    [
        ("passthrough", "9: routes[0].credential: choose exactly one of: none"),
        (
            "{static: {header: X-Api-Key, value: inline}}",
            "9: routes[0].credential.static.value: a secret is {env: NAME} or {file: path}",
        ),
        (
            "{static: {header: Host, value: {env: KEY}}}",
            "9: routes[0].credential.static.header: Host is set by the gateway",
        ),
        (
            "{static: {header: 'Bad Header', value: {env: KEY}}}",
            "9: routes[0].credential.static.header: 'Bad Header' is not a valid HTTP header name",
        ),
        (
            "{static: {header: X-K, value: {env: MISSING}}}",
            "9: routes[0].credential.static.value.env: environment variable MISSING is not set",
        ),
        (
            "{minted: {audience: https://up}}",
            "9: routes[0].credential: a minted credential needs a top-level `minting` section",
        ),
        (
            "{minted: {audience: https://up, reuse_s: -1}}",
            "9: routes[0].credential.minted.reuse_s: ",
        ),
        (
            "{token_exchange: {token_endpoint: https://a/token, client_id: gw, client_secret: {env: KEY}}}",
            "9: routes[0].credential.token_exchange: name the upstream with audience, resource, or both",
        ),
        (
            "{token_exchange: {token_endpoint: http://auth.example.com/token, client_id: gw, "
            "client_secret: {env: KEY}, audience: x}}",
            "9: routes[0].credential.token_exchange.token_endpoint: must be https (http only for loopback)",
        ),
    ],
)
def test_bad_credentials(credential: str, expected: str, keys: Path) -> None:
    """Each credential mistake is a problem with its line and key path."""
    found = problems(HEAD + "routes:\n" + route(credential), keys, {"KEY": "k"})
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize(
    ("minting", "expected"),
    [
        ("  keys: []\n", "keys: at least one signing key is required"),
        (
            "  keys:\n    - {kid: k, alg: RS256, file: ec.pem}\n",
            "keys[0].file: RS256 needs an RSA private key",
        ),
        ("  keys:\n    - {kid: k, alg: ES256, file: missing.pem}\n", "keys[0].file: key file"),
        (
            "  keys:\n    - {kid: k, alg: HS256, file: ec.pem}\n",
            "keys[0].alg: 'HS256' is not one of: ES256, RS256, EdDSA",
        ),
        (
            "  keys:\n    - {kid: k, alg: ES256, file: ec.pem}\n  active_kid: other\n",
            "active_kid: no key has kid 'other'",
        ),
        (
            "  keys:\n    - {kid: k, alg: ES256, file: secret.txt}\n",
            "keys[0].file: cannot load a private key",
        ),
    ],
)
def test_bad_minting_keys(minting: str, expected: str, keys: Path) -> None:
    """Signing keys are loaded and checked at start-up, not at the first request."""
    found = problems(HEAD + "minting:\n" + minting + "routes:\n" + route("none"), keys)
    assert any(expected in p for p in found), found


def test_issuer_needs_exactly_one_way_to_check_tokens(keys: Path) -> None:
    """Both jwks and introspection, or neither: a problem naming the issuer entry."""
    text = HEAD.replace(
        "    jwks: {discover: true}\n",
        "    jwks: {discover: true}\n"
        "    introspection: {endpoint: https://x/i, client_id: a, client_secret: {file: secret.txt}}\n",
    )
    assert any(
        "3: issuers[0]: choose exactly one of: jwks" in p
        for p in problems(text + "routes:\n" + route("none"), keys)
    )
