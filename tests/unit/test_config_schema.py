"""The published JSON Schema (config/gateway.schema.json) agrees with the config parser.

It is generated from the parser's own tables; these tests keep the committed file current, check
that every example config in the repository passes both the schema and the parser, and that
mistakes the parser refuses are refused by the schema too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import ConfigError, GatewayConfig, parse_config_text
from gateway.config.schema import config_schema, schema_text

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "config" / "gateway.schema.json"
REGENERATE = "python -m gateway.config.schema > config/gateway.schema.json"
HEADER = re.compile(r"^# yaml-language-server: \$schema=(?P<path>\S+)$")

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


def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))


def schema_errors(text: str) -> list[str]:
    """What an editor would flag: the YAML as written (``${NAME}`` not substituted), checked."""
    return [error.message for error in validator().iter_errors(yaml.safe_load(text))]


def secret_env(data: Any) -> Iterator[str]:
    """The NAME of every ``{env: NAME}`` secret in a loaded config."""
    if isinstance(data, dict):
        if list(data) == ["env"] and isinstance(data["env"], str):
            yield data["env"]
        for value in data.values():
            yield from secret_env(value)
    elif isinstance(data, list):
        for item in data:
            yield from secret_env(item)


def parses(text: str, source: Path) -> GatewayConfig:
    """Parse as the gateway would, with a made-up value for every ``{env: NAME}`` secret (long
    enough for a state key)."""
    env = {name: "example-secret-" + "x" * 32 for name in secret_env(yaml.safe_load(text))}
    return parse_config_text(text, source, env)


# --------------------------------------------------------------------------- the examples


def config_maps(path: Path) -> Iterator[str]:
    for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if document and document.get("kind") == "ConfigMap" and "gateway.yaml" in document["data"]:
            yield document["data"]["gateway.yaml"]


def readme_configs() -> Iterator[str]:
    """The README's YAML blocks that are whole configs (the others are fragments of one)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"^```yaml\n(.*?)^```", readme, flags=re.DOTALL | re.MULTILINE):
        data = yaml.safe_load(block)
        if isinstance(data, dict) and {"public_url", "issuers", "routes"} <= data.keys():
            yield block


def examples() -> list[tuple[str, str, Path]]:
    """(name, text, source) of every example gateway config in the repository."""
    found = [
        (str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"), path)
        for path in [*sorted((ROOT / "config").glob("*.yaml")), ROOT / "deploy" / "compose" / "gateway.yaml"]
    ]
    for path in sorted((ROOT / "deploy").glob("kubernetes/*/configmap.yaml")):
        found += [(f"{path.relative_to(ROOT)}:gateway.yaml", text, path) for text in config_maps(path)]
    found += [(f"README.md block {i}", text, ROOT / "README.md") for i, text in enumerate(readme_configs())]
    return found


EXAMPLES = examples()


def test_the_committed_schema_is_the_generated_one() -> None:
    """config/gateway.schema.json is exactly what the parser's tables generate."""
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(), f"regenerate it: {REGENERATE}"


def test_the_schema_is_a_valid_draft_7_schema() -> None:
    """Editors can load it: it is itself valid JSON Schema draft-07."""
    jsonschema.Draft7Validator.check_schema(config_schema())


def test_the_examples_include_every_kind_of_file() -> None:
    """The example list is not silently empty: config/, compose, both kustomizations, the README."""
    names = [name for name, _, _ in EXAMPLES]
    assert "config/demo.yaml" in names
    assert "deploy/compose/gateway.yaml" in names
    assert sum("configmap.yaml" in name for name in names) == 2
    assert any(name.startswith("README.md") for name in names)


@pytest.mark.parametrize(("name", "text", "source"), EXAMPLES, ids=[name for name, _, _ in EXAMPLES])
def test_every_example_config_passes_the_schema_and_the_parser(name: str, text: str, source: Path) -> None:
    """An example config is valid for editors and for the gateway alike."""
    assert schema_errors(text) == [], name
    assert isinstance(parses(text, source), GatewayConfig)


@pytest.mark.parametrize(
    "path", [ROOT / "config" / "demo.yaml", ROOT / "deploy" / "compose" / "gateway.yaml"]
)
def test_example_files_name_the_schema_in_their_first_line(path: Path) -> None:
    """The example files start with a yaml-language-server header whose path reaches the schema."""
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    header = HEADER.match(first_line)
    assert header is not None, first_line
    assert (path.parent / header["path"]).resolve() == SCHEMA_PATH


# --------------------------------------------------------------------------- other valid configs


def test_every_credential_kind_and_introspection_pass_the_schema(tmp_path: Path) -> None:
    """Closed choices, secrets, signing keys and introspection, written correctly, are valid."""
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (tmp_path / "secret.txt").write_text("from-a-file\n")
    text = """\
public_url: https://mcp.example.com
issuers:
  - issuer: https://auth.example.com
    algorithms: [RS256, ES256]
    jwks: {url: https://auth.example.com/jwks}
  - issuer: https://opaque.example.com
    introspection:
      endpoint: https://opaque.example.com/introspect
      client_id: gw
      client_secret: {env: KEY}
minting:
  keys:
    - {kid: k1, alg: ES256, file: ec.pem}
routes:
  - path: /none
    upstream: http://127.0.0.1:9000/mcp
    credential: none
  - path: /static
    upstream: http://127.0.0.1:9001/mcp
    credential: {static: {header: X-Api-Key, value: {env: KEY}}}
  - path: /minted
    upstream: http://127.0.0.1:9002/mcp
    credential: {minted: {audience: https://up.internal, scope: caller, reuse_s: 0}}
  - path: /exchanged
    upstream: http://127.0.0.1:9003/mcp
    credential:
      token_exchange:
        token_endpoint: https://auth.example.com/token
        client_id: gw
        client_secret: {file: secret.txt}
        resource: https://up.internal
    tools: {"get_*": [repo:read], "*": [repo:write]}
    default: deny
"""
    assert schema_errors(text) == []
    parse_config_text(text, tmp_path / "gateway.yaml", {"KEY": "k"})


def test_env_references_are_valid_where_numbers_and_booleans_are_expected() -> None:
    """``port: ${PORT}`` is a string to an editor and an int to the gateway: both accept it."""
    text = BASE.replace(
        "public_url:", "listen: {host: 127.0.0.1}\nshutdown_grace_s: ${GRACE:-30}\npublic_url:"
    ).replace("listen: {host: 127.0.0.1}", "listen:\n  port: ${PORT}")
    text += "logging:\n  include_subject: ${WITH_SUBJECT}\n  level: ${LEVEL:-info}\n"
    assert schema_errors(text) == []
    config = parse_config_text(text, Path("gateway.yaml"), {"PORT": "8081", "WITH_SUBJECT": "false"})
    assert (config.listen.port, config.logging.include_subject, config.shutdown_grace_s) == (
        8081,
        False,
        30.0,
    )


# --------------------------------------------------------------------------- mistakes


MISTAKES = [
    ("unknown top-level key", BASE + "listn: {port: 8080}\n"),
    ("unknown route key", BASE + "    upstrem: http://127.0.0.1:9000/mcp\n"),
    ("missing required key", BASE.split("routes:")[0]),
    ("credential is not a known choice", BASE + "    credential: passthrough\n"),
    (
        "credential names two choices",
        BASE + "    credential: {minted: {audience: a}, static: {header: X-K, value: {env: K}}}\n",
    ),
    ("credential choice is unknown", BASE + "    credential: {bearer: {token: x}}\n"),
    ("jwks names two sources", BASE.replace("{discover: true}", "{discover: true, url: https://a/jwks}")),
    ("jwks source is unknown", BASE.replace("{discover: true}", "{uri: https://a/jwks}")),
    ("jwks discover is false", BASE.replace("{discover: true}", "{discover: false}")),
    ("symmetric algorithm", BASE.replace("[RS256]", "[HS256]")),
    ("alg none", BASE.replace("[RS256]", "[none]")),
    ("unknown log level", BASE + "logging: {level: verbose}\n"),
    ("unknown route default", BASE + "    default: maybe\n"),
    ("port out of range", BASE + "listen: {port: 70000}\n"),
    ("port is not a number", BASE + "listen: {port: eighty}\n"),
    ("negative seconds", BASE + "shutdown_grace_s: -1\n"),
    ("zero where positive seconds are needed", BASE + "    connect_timeout_s: 0\n"),
    ("inline secret", BASE + "    credential: {static: {header: X-K, value: hunter2}}\n"),
    ("secret from two places", BASE + "    credential: {static: {header: X-K, value: {env: K, file: k}}}\n"),
    (
        "both jwks and introspection",
        BASE.replace(
            "    jwks: {discover: true}\n",
            "    jwks: {discover: true}\n"
            "    introspection: {endpoint: https://a/i, client_id: gw, client_secret: {env: K}}\n",
        ),
    ),
    ("neither jwks nor introspection", BASE.replace("    jwks: {discover: true}\n", "")),
    ("jwks without algorithms", BASE.replace("    algorithms: [RS256]\n", "")),
    (
        "token exchange without audience or resource",
        BASE + "    credential: {token_exchange: {token_endpoint: https://a/t, client_id: gw, "
        "client_secret: {env: K}}}\n",
    ),
    ("duplicate scope", BASE + "    scopes: [a, a]\n"),
    ("scope with a space", BASE + "    scopes: ['a b']\n"),
    ("relative public_url", BASE.replace("https://mcp.example.com", "mcp.example.com")),
    ("route path without a slash", BASE.replace("path: /mcp", "path: mcp")),
    ("origin with a path", BASE + "allowed_origins: [https://app.example.com/x]\n"),
    ("empty routes", BASE.split("routes:")[0] + "routes: []\n"),
]


@pytest.mark.parametrize(("mistake", "text"), MISTAKES, ids=[mistake for mistake, _ in MISTAKES])
def test_a_mistake_the_parser_refuses_is_refused_by_the_schema(mistake: str, text: str) -> None:
    """Unknown keys, wrong closed choices, enums, ranges and missing keys fail in the editor too."""
    with pytest.raises(ConfigError):
        parse_config_text(text, Path("gateway.yaml"), {"K": "k"})
    assert schema_errors(text), mistake
