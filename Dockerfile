# syntax=docker/dockerfile:1
#
# mcp-auth-gateway container image.
#
#   docker build -t mcp-auth-gateway .                       # the gateway only
#   docker build --build-arg EXTRAS=demo -t mcp-auth-gateway:demo .   # + the demo MCP server (compose)
#
# The gateway reads its config from /etc/mcp-auth-gateway/gateway.yaml: mount a file (or a
# Kubernetes ConfigMap) there. Ports: 8080 for MCP clients (`listen`), 9090 for the admin
# listener (`admin`: /metrics, /healthz, /readyz); both are whatever the config says, these are
# the values the manifests in deploy/ use. SIGHUP reloads the config, SIGTERM drains in-flight
# requests for up to `shutdown_grace_s` seconds.
#
# Both stages use the same base image, so the virtualenv built in the first one runs unchanged in
# the second (a venv is tied to its interpreter's path and version).

ARG PYTHON_IMAGE=python:3.11-slim

# --------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

# Optional extras of the package, e.g. "demo" (the demo MCP server used by deploy/compose).
# `fast` (uvloop) is always installed, so the image runs uvloop: the benchmark finds it at least
# as fast as the standard loop (docs/performance.md, "Event loop"), and the gateway's own accept
# loop (gateway/web/listener.py) behaves the same on both when descriptors run out.
ARG EXTRAS=""

# (pip byte-compiles what it installs: the final image, whose root filesystem is read-only in
# Kubernetes, then never needs to write .pyc files.)
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps everything else out of the context).
COPY pyproject.toml README.md ./
COPY gateway ./gateway

# A wheel from the source tree, installed (with its dependencies, all from binary wheels: no
# compiler needed) into a fresh venv; pip and setuptools are then removed from the venv, since
# the final image never installs anything.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/venv \
    && wheel="$(ls /wheels/mcp_auth_gateway-*.whl)" \
    && /opt/venv/bin/pip install "${wheel}[fast${EXTRAS:+,${EXTRAS}}]" \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools \
    && /opt/venv/bin/mcp-auth-gateway --help > /dev/null

# --------------------------------------------------------------------------- final
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="mcp-auth-gateway" \
      org.opencontainers.image.description="OAuth 2.1 resource-server gateway in front of unmodified MCP servers" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric uid/gid, so that Kubernetes `runAsNonRoot` can verify it without /etc/passwd.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/mcp-auth-gateway

COPY --from=builder /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_HEALTHCHECK_URL="http://127.0.0.1:8080/healthz"

USER 10001:10001
WORKDIR /etc/mcp-auth-gateway

EXPOSE 8080 9090

# slim has no curl: Python's urllib, which raises (exit 1) on a refused connection or a non-2xx.
# Override GATEWAY_HEALTHCHECK_URL if the config listens elsewhere.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['GATEWAY_HEALTHCHECK_URL'], timeout=3)"]

# Exec form: the gateway is PID 1 and receives SIGTERM (drain) and SIGHUP (reload) itself.
ENTRYPOINT ["mcp-auth-gateway"]
CMD ["serve", "--config", "/etc/mcp-auth-gateway/gateway.yaml"]
