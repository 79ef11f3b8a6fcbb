"""The config's public types: frozen, slotted, and all that code after start-up ever reads.

``load`` builds a ``GatewayConfig`` from a file; nothing downstream sees a dict.  Field defaults
live here, once: an optional key that is absent keeps the dataclass default.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, NamedTuple, TypeAlias

from ..mcp.policy import RoutePolicy
from ..pinning.lock import ToolLock
from ..ratelimit.spec import RateLimitsConfig
from ..secret import Secret

__all__ = [
    "LOG_LEVELS",
    "AdminConfig",
    "AuditConfig",
    "AuditFsync",
    "AuditOnFailure",
    "CircuitBreakerConfig",
    "ClientAuthMethod",
    "ConfigError",
    "ConfigProblem",
    "Credential",
    "DpopMode",
    "GatewayConfig",
    "HealthCheckConfig",
    "IntrospectionConfig",
    "IssuerConfig",
    "JwksDiscover",
    "JwksFile",
    "JwksSource",
    "JwksUrl",
    "ListenConfig",
    "LogFormat",
    "LoggingConfig",
    "MetricsExportConfig",
    "MintedCredential",
    "MintingConfig",
    "NoCredential",
    "OtlpConfig",
    "PinMode",
    "PinningConfig",
    "RouteConfig",
    "ScopeMode",
    "SigningKeyConfig",
    "StaticCredential",
    "TokenExchangeCredential",
    "TracingConfig",
]


class ConfigProblem(NamedTuple):
    file: str
    line: int  # 1-based
    key_path: str  # e.g. "routes[1].upstream"; "" for whole-file problems
    message: str

    def __str__(self) -> str:
        if self.key_path:
            return f"{self.file}:{self.line}: {self.key_path}: {self.message}"
        return f"{self.file}:{self.line}: {self.message}"


class ConfigError(Exception):
    """The config is unusable; ``problems`` lists every reason, in file order."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(sorted(problems, key=lambda p: (p.file, p.line)))
        super().__init__("\n".join(str(problem) for problem in self.problems))


@dataclass(frozen=True, slots=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin listener: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``; off unless set."""

    host: str = "127.0.0.1"
    port: int = 9090
    # serve --workers N: false, this one port serves the sum over all workers (the parent adds
    # their figures up); true, each worker also serves its own figures on port + 1 + index.
    per_worker_ports: bool = False


LogFormat = Literal["json", "console"]
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    format: LogFormat = "json"
    level: str = "info"  # one of LOG_LEVELS
    include_subject: bool = True  # false: no subject or client_id in request lines and audit events


@dataclass(frozen=True, slots=True)
class OtlpConfig:
    """An OTLP/HTTP (protobuf) collector: traces go to ``endpoint/v1/traces``, metrics to
    ``/v1/metrics``, logs (the audit trail) to ``/v1/logs``."""

    endpoint: str  # http(s)://host[:port][/prefix], no trailing slash
    headers: tuple[tuple[str, Secret], ...] = ()  # e.g. an API key; values are secrets
    timeout_s: float = 10.0
    # gzip (the default) or none: a collector beside the gateway (a sidecar, the same host) gains
    # nothing from it, and gzip is a tenth of the gateway's CPU per request when every trace is sent.
    compression: str = "gzip"


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """``tracing``: OpenTelemetry spans per MCP request (``gateway.tracing``); off unless set."""

    otlp: OtlpConfig
    sample_ratio: float = 1.0  # of the traces that start here; a sampled caller's parent decides
    service_name: str = "mcp-auth-gateway"


@dataclass(frozen=True, slots=True)
class MetricsExportConfig:
    """``metrics``: push the Prometheus families, same names, to an OTLP collector too."""

    otlp: OtlpConfig
    interval_s: float = 60.0


AuditFsync = Literal["segment", "every_record"]
AuditOnFailure = Literal["allow", "deny"]


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """``audit``: every policy decision and credential issuance in a signed hash chain
    (``gateway.audit_trail``), as JSON lines in ``file`` or as OTLP log records to ``otlp``."""

    signing_key: Path  # Ed25519 private key (PEM) that signs each segment's seal
    key_id: str  # named by every seal, so a verifier picks the public key
    file: Path | None = None  # exactly one of file and otlp
    otlp: OtlpConfig | None = None
    segment_size: int = 1000  # records per signed segment
    fsync: AuditFsync = "segment"
    # A record that cannot be written: "allow" goes on (logged, counted, the admin /readyz
    # says so); "deny" refuses every request the trail cannot record (503, /readyz 503), fail closed.
    on_failure: AuditOnFailure = "allow"


@dataclass(frozen=True, slots=True)
class JwksDiscover:
    """Find ``jwks_uri`` through RFC 8414, then OpenID Connect discovery, from the issuer."""


@dataclass(frozen=True, slots=True)
class JwksUrl:
    url: str


@dataclass(frozen=True, slots=True)
class JwksFile:
    path: Path  # absolute; relative paths in the file are resolved against its folder


JwksSource: TypeAlias = JwksDiscover | JwksUrl | JwksFile


ClientAuthMethod = Literal["client_secret_basic", "client_secret_post"]
ScopeMode = Literal["operation", "caller", "none"]
# RFC 9449 per route: off (Bearer only), allowed (DPoP or Bearer), required (DPoP only).
DpopMode = Literal["off", "allowed", "required"]


@dataclass(frozen=True, slots=True)
class IntrospectionConfig:
    """RFC 7662: opaque tokens checked at the issuer's introspection endpoint."""

    endpoint: str
    client_id: str
    client_secret: Secret
    auth_method: ClientAuthMethod = "client_secret_basic"
    cache_max_s: float = 60.0  # a result is cached until the earlier of the token's exp and this
    timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    issuer: str  # exactly as written: the ``iss`` claim is compared byte for byte
    algorithms: tuple[str, ...]
    jwks: JwksSource | None  # exactly one of jwks and introspection
    leeway_s: float = 30.0
    require_at_jwt_typ: bool = True  # RFC 9068: access tokens carry typ "at+jwt"
    jwks_refresh_cooldown_s: float = 30.0  # an unknown kid refetches the JWKS at most once per cooldown
    jwks_max_age_s: float = 600.0  # keys are refetched in the background after this age
    http_timeout_s: float = 5.0
    introspection: IntrospectionConfig | None = None
    dpop_iat_window_s: float = 300.0  # a DPoP proof's iat may be this far off now (RFC 9449 §11.1)


# --- Downstream credentials: a closed choice per route (`credential:`) -----------------------


@dataclass(frozen=True, slots=True)
class NoCredential:
    """``credential: none``: nothing is added to the upstream request."""


@dataclass(frozen=True, slots=True)
class StaticCredential:
    """``{static: {header: X-Api-Key, value: {env: NAME}}}``: a secret the upstream expects."""

    header: str
    value: Secret


@dataclass(frozen=True, slots=True)
class MintedCredential:
    """``{minted: {audience: …}}``: a short-lived RFC 9068 JWT signed by the gateway (see ``minting``)."""

    audience: str
    ttl_s: float = 300.0
    # operation: the caller's scopes narrowed to what this operation needs; caller: all of the
    # caller's scopes; none: no scope claim.
    scope: ScopeMode = "operation"
    # The same caller token and scopes reuse one minted token for this long (0: a fresh token per
    # request), and never past the middle of the minted token's life.
    reuse_s: float = 60.0


@dataclass(frozen=True, slots=True)
class TokenExchangeCredential:
    """``{token_exchange: {…}}``: RFC 8693 at the authorization server's token endpoint."""

    token_endpoint: str
    client_id: str
    client_secret: Secret
    auth_method: ClientAuthMethod = "client_secret_basic"
    audience: str | None = None  # at least one of audience and resource
    resource: str | None = None
    scope: ScopeMode = "operation"
    timeout_s: float = 5.0
    cache_size: int = 10_000
    refresh_margin_s: float = 30.0  # a cached token is used until this long before it expires


Credential = NoCredential | StaticCredential | MintedCredential | TokenExchangeCredential


@dataclass(frozen=True, slots=True)
class SigningKeyConfig:
    """One private key the gateway signs minted tokens with (PEM file)."""

    kid: str
    alg: str  # ES256, RS256 or EdDSA
    path: Path


@dataclass(frozen=True, slots=True)
class MintingConfig:
    """The gateway as an issuer of downstream tokens (``credential: {minted: …}``)."""

    issuer: str
    keys: tuple[SigningKeyConfig, ...]
    active_kid: str  # signs new tokens; the others stay published for verification (rotation)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """``limits``: what one client may hold of a gateway process, and for how long.

    They bound what anyone can take without a token (connections, their header and body time)
    and what callers together can park in memory (request bodies) or hold open (streams). They
    apply at start; a reload keeps the running ones (they size the listener).
    """

    # From the connection (or a later request's first byte) to the request's last header.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0  # from the headers to the last byte of the request body
    keepalive_timeout_s: float = 60.0  # an idle kept-alive connection is closed after this
    # A client that takes none of an answer for this long (its socket buffer full) is disconnected.
    send_timeout_s: float = 30.0
    # None: sized from the process's open-file limit (gateway.web.listener.connection_cap).
    max_connections: int | None = None
    # Requests relayed at once (POST answers, GET streams); None: as many as max_connections.
    max_streams: int | None = None
    max_buffered_body_bytes: int = 256 * 1024 * 1024  # request bodies held at once, all callers together


@dataclass(frozen=True, slots=True)
class StateKeyConfig:
    """One secret that seals state handles (``Mcp-Session-Id``, task ids) to their caller."""

    id: str  # written into every handle it seals, so it picks the key that opens one
    secret: Secret


@dataclass(frozen=True, slots=True)
class StateKeysConfig:
    """``state_keys``: the keys shared by every process and replica that serves the same clients."""

    keys: tuple[StateKeyConfig, ...]
    active: str  # seals new handles; the others still open handles sealed before a rotation


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    """``circuit_breaker``: stop sending to an upstream that cannot be connected to (resilience)."""

    failures: int = 5  # consecutive requests whose connect failed or timed out open the circuit
    open_s: float = 10.0  # requests fail at once (503) this long, then one trial request is let through


HealthCheckMethod = Literal["GET", "POST"]


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    """``health_check``: the gateway asks the upstream itself, every ``interval_s`` (off unless set).

    ``path`` is resolved against the upstream URL's origin; any answer below 500 within
    ``timeout_s`` is healthy. ``failures`` checks in a row that fail hold the circuit open (the
    route is not ready) until one succeeds.
    """

    path: str
    method: HealthCheckMethod = "GET"  # POST sends a JSON-RPC ping
    interval_s: float = 10.0
    timeout_s: float = 2.0
    failures: int = 3


PinMode = Literal["off", "observe", "enforce"]


@dataclass(frozen=True, slots=True)
class PinningConfig:
    """``pinning``: the route's approved tool definitions (``gateway.pinning``), and what a drift does."""

    lock: Path  # the lock file; absent at start: trust on first use writes it
    mode: PinMode = "enforce"
    # The lock as read at start (or reload): None when the file did not exist yet.
    tools: ToolLock | None = field(default=None, compare=False)


# kw_only: ``resource`` has no dataclass default (it is derived from public_url + path), yet
# follows fields that do; keyword-only construction also keeps call sites readable.
@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    path: str  # leading "/", no trailing "/", never "/" itself
    upstream: str  # http(s) URL
    resource: str  # RFC 8707 / RFC 9728 resource identifier; default public_url + path
    resource_name: str | None = None  # human-readable name for the protected resource metadata
    max_body_bytes: int = 4 * 1024 * 1024
    connect_timeout_s: float = 5.0
    response_timeout_s: float = 300.0  # until the upstream's response headers arrive
    upstream_idle_timeout_s: float = 60.0  # longest silence within a non-SSE upstream body
    sse_heartbeat_s: float | None = None  # a comment line on an SSE stream silent this long
    sse_max_lifetime_s: float | None = None  # an SSE stream is ended (cleanly) after this long
    # Requests relayed to the upstream at once (bulkhead); GET streams hold none. None: no limit.
    max_concurrent_requests: int | None = None
    circuit_breaker: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    health_check: HealthCheckConfig | None = None  # no active checks unless configured
    credential: Credential = field(default_factory=lambda: NoCredential())
    # Built from the route keys scopes, tools, resources, prompts, methods and default.
    policy: RoutePolicy = field(default_factory=RoutePolicy)
    scopes_supported: tuple[str, ...] | None = None  # explicit PRM scopes; None: derived from rules
    audit_arguments: bool = False  # include tool arguments in audit events
    # Token claims every audit event records (for `simulate`), besides those conditions read.
    audit_claims: tuple[str, ...] = ()
    # Names of `rate_limits.limits` every authenticated request on the route counts against
    # (rules add their own: Rule.limits), and those a request refused with 401 counts against.
    limits: tuple[str, ...] = ()
    unauthenticated_limits: tuple[str, ...] = ()
    dpop: DpopMode = "allowed"  # RFC 9449 proofs; see README "DPoP" for why allowed
    # RFC 9449 §8-9: a proof must carry a server nonce (DPoP-Nonce); stateless (gateway.auth.dpop).
    dpop_nonce: bool = False
    pinning: PinningConfig | None = None  # tool definitions unchecked unless configured

    @property
    def scopes(self) -> tuple[str, ...]:
        """The scopes every request on this route needs (the route key ``scopes``, kept in the policy)."""
        return self.policy.route_scopes

    # The claims an audit event records: those the route's conditions read, and ``audit_claims``.
    audited_claims: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        audited = tuple(dict.fromkeys((*self.policy.claims_read, *self.audit_claims)))
        object.__setattr__(self, "audited_claims", audited)  # frozen: derived once, at build time


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    source: Path  # absolute path of the config file
    listen: ListenConfig
    public_url: str  # no trailing slash
    issuers: tuple[IssuerConfig, ...]
    routes: tuple[RouteConfig, ...]
    allowed_origins: tuple[str, ...] = ()
    minting: MintingConfig | None = None
    admin: AdminConfig | None = None  # no admin listener unless configured
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # None: a random key per process, so sealed handles hold in one process only (check-config says so).
    state_keys: StateKeysConfig | None = None
    # On SIGTERM/SIGINT: how long in-flight requests and streams may run before they are cut.
    shutdown_grace_s: float = 30.0
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    rate_limits: RateLimitsConfig = field(default_factory=RateLimitsConfig)
    tracing: TracingConfig | None = None  # no spans unless configured
    metrics: MetricsExportConfig | None = None  # no OTLP metrics push unless configured
    audit: AuditConfig | None = None  # no audit trail unless configured (audit events still log)

    def route_for_path(self, path: str) -> RouteConfig | None:
        """The route whose path is ``path`` (one trailing slash ignored), if any."""
        wanted = path[:-1] if path.endswith("/") else path
        return next((route for route in self.routes if route.path == wanted), None)
