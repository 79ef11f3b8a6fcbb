"""An OAuth 2.1 resource-server gateway for unmodified MCP servers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mcp-auth-gateway")  # one source: pyproject.toml
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
