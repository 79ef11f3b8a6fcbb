"""The gateway's YAML config, parsed once into frozen, typed objects.

Everything downstream receives the dataclasses of ``model``; no dicts leave this package.  Every
problem in a file is collected and reported together as ``file:line: key.path: message``.

The modules, in the order a reader needs them:

* ``model``: the public frozen types (``GatewayConfig`` and its parts, ``ConfigError``).
* ``load``: ``load_config`` and ``parse_config_text``, the top-level sections, and the checks that
  span several entries (duplicate issuers, route paths and resources, one introspection issuer,
  signing keys for minted routes).
* ``fields``: the gateway's value rules (URLs, origins, algorithms, secrets, rules, credentials,
  signing keys) and the issuer and route sections.
* ``reader``: the generic schema reader: ``FieldSpec`` tables, ``read_section``, scalar and list
  parsers, each with the JSON Schema of what it accepts; problems carry their key path.
* ``yamlsource``: the text into a frozen tree of nodes with line numbers, having already dealt
  with duplicate keys, tags, anchors and ``${ENV}`` substitution.
* ``signing``: the one loader of signing keys, shared with ``upstream.minting``.
* ``schema``: the JSON Schema for editors (``config/gateway.schema.json``), built from the tables.

A new key is a ``FieldSpec`` in its section (the key is the dataclass attribute; an absent
optional key keeps the dataclass default), then a regenerated schema.
"""

from __future__ import annotations

from .load import load_config, parse_config_text
from .model import (
    LOG_LEVELS,
    AdminConfig,
    AuditConfig,
    ClientAuthMethod,
    ConfigError,
    ConfigProblem,
    Credential,
    GatewayConfig,
    IntrospectionConfig,
    IssuerConfig,
    JwksDiscover,
    JwksFile,
    JwksSource,
    JwksUrl,
    LimitsConfig,
    ListenConfig,
    LogFormat,
    LoggingConfig,
    MetricsExportConfig,
    MintedCredential,
    MintingConfig,
    NoCredential,
    OtlpConfig,
    PinningConfig,
    RouteConfig,
    ScopeMode,
    SigningKeyConfig,
    StateKeyConfig,
    StateKeysConfig,
    StaticCredential,
    TokenExchangeCredential,
    TracingConfig,
)

__all__ = [
    "LOG_LEVELS",
    "AdminConfig",
    "AuditConfig",
    "ClientAuthMethod",
    "ConfigError",
    "ConfigProblem",
    "Credential",
    "GatewayConfig",
    "IntrospectionConfig",
    "IssuerConfig",
    "JwksDiscover",
    "JwksFile",
    "JwksSource",
    "JwksUrl",
    "LimitsConfig",
    "ListenConfig",
    "LogFormat",
    "LoggingConfig",
    "MetricsExportConfig",
    "MintedCredential",
    "MintingConfig",
    "NoCredential",
    "OtlpConfig",
    "PinningConfig",
    "RouteConfig",
    "ScopeMode",
    "SigningKeyConfig",
    "StateKeyConfig",
    "StateKeysConfig",
    "StaticCredential",
    "TokenExchangeCredential",
    "TracingConfig",
    "load_config",
    "parse_config_text",
]
