"""aforo-mcp-proxy: a metering sidecar between any MCP client and any MCP server.

The proxy relays MCP traffic at the framing level (the original bytes, never re-serialised) and
observes a parsed copy to emit `mcp.session.start`, `mcp.session.end` and `mcp.tool.call`
CloudEvents (tier `mcp`) to Aforo.
"""
