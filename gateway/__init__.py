"""An OAuth 2.1 resource-server gateway for unmodified MCP servers."""

__version__ = "0.1.0"
