"""RFC 9728 Protected Resource Metadata and the one ``WWW-Authenticate`` builder."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from ..config import GatewayConfig, RouteConfig
from ..errors import Challenge
from ..mcp.policy import scopes_supported

WELL_KNOWN_PRM = "/.well-known/oauth-protected-resource"


def prm_path(route_path: str) -> str:
    """Where a route's metadata lives: the well-known segment inserted before the path (RFC 9728 §3.1)."""
    return WELL_KNOWN_PRM + route_path


def prm_url(config: GatewayConfig, route: RouteConfig) -> str:
    """The absolute metadata URL for a route, on the gateway's public origin."""
    origin = urlsplit(config.public_url)
    return f"{origin.scheme}://{origin.netloc}{prm_path(_public_path(config, route))}"


def _public_path(config: GatewayConfig, route: RouteConfig) -> str:
    # public_url may carry a base path (e.g. behind an ingress at https://x.example/gw); the
    # route's public path is that base plus the route path.
    base = urlsplit(config.public_url).path.rstrip("/")
    return base + route.path


def prm_document(config: GatewayConfig, route: RouteConfig) -> dict[str, Any]:
    """The metadata document for one route (RFC 9728 §2; MCP 2025-06-18 "Authorization Server Location")."""
    doc: dict[str, Any] = {
        # §3.3: must be identical to the resource identifier the client used.
        "resource": route.resource,
        # MCP makes this mandatory (at least one); issuer identifiers exactly as configured.
        "authorization_servers": [issuer.issuer for issuer in config.issuers],
        # Explicit, or every scope the route's rules can ask for (what a step-up may name).
        "scopes_supported": list(advertised_scopes(route.scopes_supported or scopes_supported(route.policy))),
        "bearer_methods_supported": ["header"],
        "resource_name": route.resource_name or route.path,
    }
    if route.dpop != "off":  # RFC 9728 §2; RFC 9449 §5.1 names the same algs for the AS
        doc["dpop_signing_alg_values_supported"] = list(dpop_algorithms(config))
    if route.dpop == "required":
        doc["dpop_bound_access_tokens_required"] = True
    # §3.2: parameters with zero values must be omitted.
    return {key: value for key, value in doc.items() if value not in ([], None, "")}


def advertised_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Scopes fit to publish or put in a challenge: ordered, de-duplicated, never ``offline_access``.

    MCP 2026-07-28 "Refresh Tokens": servers SHOULD NOT list ``offline_access``.
    """
    seen: dict[str, None] = {}
    for scope in scopes:
        if scope != "offline_access":
            seen.setdefault(scope, None)
    return tuple(seen)


def bearer_challenge(
    *,
    resource_metadata: str,
    scopes: Sequence[str] = (),
    error: str | None = None,
) -> str:
    """Build ``WWW-Authenticate: Bearer …`` (RFC 6750 §3, RFC 9728 §5.1).

    ``error`` is omitted when the request carried no credentials (RFC 6750 §3.1). We never send
    ``error_description``: the precise reason goes to the log, not to the caller.
    """
    params: list[tuple[str, str]] = []
    if error is not None:
        params.append(("error", error))
    scope_value = " ".join(advertised_scopes(scopes))
    if scope_value:
        params.append(("scope", scope_value))
    params.append(("resource_metadata", resource_metadata))
    return "Bearer " + ", ".join(f"{name}={quoted_string(value)}" for name, value in params)


def dpop_algorithms(config: GatewayConfig) -> tuple[str, ...]:
    """The algs a DPoP proof may use: every issuer's pinned list (all asymmetric), de-duplicated."""
    return tuple(dict.fromkeys(alg for issuer in config.issuers for alg in issuer.algorithms))


def dpop_challenge(
    *, resource_metadata: str, algs: Sequence[str], scopes: Sequence[str] = (), error: str | None = None
) -> str:
    """Build ``WWW-Authenticate: DPoP …`` (RFC 9449 §7.1): the Bearer parameters plus ``algs``."""
    bearer = bearer_challenge(resource_metadata=resource_metadata, scopes=scopes, error=error)
    return "DPoP " + bearer.removeprefix("Bearer ") + f", algs={quoted_string(' '.join(algs))}"


# The error codes RFC 9449 defines (§7.1, §9): answered with the DPoP challenge.
DPOP_ERRORS = ("invalid_dpop_proof", "use_dpop_nonce")


def route_challenge(config: GatewayConfig, route: RouteConfig) -> Challenge:
    """The route's ``WWW-Authenticate`` builder, for ``GatewayError.headers``.

    An error that names no scopes asks for the route's first challenge (``challenge_scopes``,
    else the route's own scopes: what any request on it needs).
    On a ``dpop`` route a proof refusal (``invalid_dpop_proof``, ``use_dpop_nonce``), and with
    ``dpop: required`` any refusal, carries the DPoP challenge; while Bearer is still accepted
    (``allowed``), the Bearer challenge follows it as a second one (RFC 9449 §7.1, RFC 9110
    §11.6.1), without the error code, which RFC 6750 does not define. Other refusals on an
    ``allowed`` route stay Bearer only: the metadata already says DPoP is supported.
    """
    resource_metadata = prm_url(config, route)
    algs = dpop_algorithms(config)

    def challenge(scopes: tuple[str, ...], error: str | None) -> str:
        scopes = scopes or route.policy.first_challenge
        if route.dpop == "off" or (route.dpop == "allowed" and error not in DPOP_ERRORS):
            return bearer_challenge(resource_metadata=resource_metadata, scopes=scopes, error=error)
        dpop = dpop_challenge(resource_metadata=resource_metadata, algs=algs, scopes=scopes, error=error)
        if route.dpop == "required":
            return dpop
        return f"{dpop}, {bearer_challenge(resource_metadata=resource_metadata, scopes=scopes)}"

    return challenge


def quoted_string(value: str) -> str:
    """An RFC 9110 §5.6.4 quoted-string: backslash-escape ``"`` and ``\\``; refuse control characters.

    Values come from config, but a CR/LF in a header would let one config typo split a response,
    so anything outside visible ASCII, space and tab is refused outright.
    """
    for char in value:
        if not (char in "\t " or "\x21" <= char <= "\x7e"):
            raise ValueError(f"character {char!r} cannot appear in a header parameter")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
