"""How the trace sender reaches its collector: TLS and proxy settings from the environment, as
the OpenTelemetry exporters (which the metrics and the audit trail still use) read them.

- TLS (an ``https`` endpoint): ``OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`` or
  ``OTEL_EXPORTER_OTLP_CERTIFICATE``, a CA bundle trusted instead of the system's;
  ``…_CLIENT_CERTIFICATE`` and ``…_CLIENT_KEY``, a client certificate (mTLS). A file that does
  not load is an ``otlp_tls_setting_unusable`` error at start-up, and every export then fails:
  traces never go out over a connection other than the one configured.
- Proxies: ``HTTPS_PROXY`` / ``HTTP_PROXY`` (either case) for the endpoint's scheme, unless
  ``NO_PROXY`` names its host, as ``requests`` reads them. An ``https`` endpoint is reached
  through a ``CONNECT`` tunnel, an ``http`` one by asking the proxy for the absolute URL; a
  proxy URL's ``user:password`` becomes ``Proxy-Authorization: Basic``. Only ``http://``
  proxies: an ``https://`` proxy URL is unusable as above (never bypassed).
"""

from __future__ import annotations

import base64
import http.client
import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import structlog

__all__ = ["CollectorRoute", "collector_route"]

log = structlog.get_logger("gateway.telemetry")


@dataclass(frozen=True, slots=True)
class CollectorRoute:
    """Where connections go and what a request names (``usable`` False: every export fails)."""

    host: str
    port: int
    secure: bool
    path: str  # what the request line names: the path, or the absolute URL through a proxy
    tunnel: tuple[str, int] | None = None  # CONNECT host:port, through a proxy to an https endpoint
    proxy_headers: Mapping[str, str] = field(default_factory=dict)
    tls: ssl.SSLContext | None = None
    usable: bool = True

    def connection(self, timeout_s: float) -> http.client.HTTPConnection:
        if not self.usable:
            raise OSError("the collector's TLS or proxy settings are unusable (see the start-up error)")
        if self.secure:
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout_s, context=self.tls
            )
        else:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)
        if self.tunnel is not None:
            connection.set_tunnel(*self.tunnel, headers=dict(self.proxy_headers))
        return connection


def collector_route(endpoint: str, path: str, environ: Mapping[str, str]) -> CollectorRoute:
    """How to send ``path`` (with its query) to the collector at ``endpoint``."""
    parts = urlsplit(endpoint)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    tls = _tls_context(environ) if secure else None
    usable = tls is not None or not secure
    proxy = _proxy_for(parts.scheme, host, environ)
    if proxy is None:
        return CollectorRoute(host, port, secure, path, tls=tls, usable=usable)
    proxy_parts = urlsplit(proxy)
    if proxy_parts.scheme != "http" or not proxy_parts.hostname:
        log.error("otlp_proxy_unusable", scheme=proxy_parts.scheme, reason="only http:// proxies")
        return CollectorRoute(host, port, secure, path, usable=False)
    headers: dict[str, str] = {}
    if proxy_parts.username is not None:
        credentials = f"{unquote(proxy_parts.username)}:{unquote(proxy_parts.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
    proxy_host, proxy_port = proxy_parts.hostname, proxy_parts.port or 80
    if secure:  # TLS to the collector inside a tunnel the proxy opens
        return CollectorRoute(
            proxy_host, proxy_port, True, path, (host, port), headers, tls=tls, usable=usable
        )
    # Plain HTTP: the proxy is asked for the absolute URL (http.client takes Host from it).
    absolute = f"http://{parts.netloc.rpartition('@')[2]}{path}"
    return CollectorRoute(proxy_host, proxy_port, False, absolute, proxy_headers=headers)


def _proxy_for(scheme: str, host: str, environ: Mapping[str, str]) -> str | None:
    proxies: dict[str, str] = {}
    # As urllib reads them: a lowercase variable wins over its uppercase spelling.
    for name, value in sorted(environ.items(), key=lambda item: item[0].islower()):
        if name.lower().endswith("_proxy") and value.strip():
            proxies[name.lower().removesuffix("_proxy")] = value.strip()
    proxy = proxies.get(scheme)
    if proxy is None:
        return None
    no_proxy = proxies.get("no")
    # urllib's own NO_PROXY matching (suffixes, "*", ports); typeshed does not list it.
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if no_proxy and bypass(host, {"no": no_proxy}):
        return None
    return proxy


def _setting(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    for variable in (f"OTEL_EXPORTER_OTLP_TRACES_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
        if value := environ.get(variable, "").strip():
            return variable, value
    return None


def _tls_context(environ: Mapping[str, str]) -> ssl.SSLContext | None:
    """The context that verifies the collector (None, and an error logged, if unusable)."""
    ca = _setting(environ, "CERTIFICATE")
    client = _setting(environ, "CLIENT_CERTIFICATE")
    key = _setting(environ, "CLIENT_KEY")
    loading = ca
    try:
        context = ssl.create_default_context(cafile=ca[1] if ca else None)
        if client is not None:
            loading = client
            context.load_cert_chain(client[1], key[1] if key else None)
    except (OSError, ssl.SSLError, ValueError) as exc:
        log.error(
            "otlp_tls_setting_unusable",
            variable=loading[0] if loading else None,
            path=loading[1] if loading else None,
            error=type(exc).__name__,
        )
        return None
    return context
