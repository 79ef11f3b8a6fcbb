"""Development only: ``mcp-auth-gateway demo`` and the pieces it starts.

Nothing here is used by ``serve`` or ``check-config``, and the layout test keeps it that way
(only the command line imports this package). ``dev_issuer`` signs tokens for anyone who asks
with a key that lives in memory; ``upstream`` is an unauthenticated MCP server. Neither belongs
in front of real traffic.
"""
