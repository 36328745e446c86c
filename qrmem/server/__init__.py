"""`qrmem serve` (REST + MCP over streamable HTTP) and `qrmem mcp` (MCP over stdio).

Needs the `server` extra: pip install 'qrmem[server]'. Import `qrmem.server.app`, `qrmem.server.mcp`
or `qrmem.server.run` for the parts; this package itself imports nothing heavy.
"""
