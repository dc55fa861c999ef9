"""Serving a stand-in's aiohttp application on loopback, on a port the OS picks."""

from __future__ import annotations

import ssl

from aiohttp import web


async def serve(app: web.Application, *, host: str = "127.0.0.1", port: int = 0,
                ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    """Start `app` (no access log) and answer its runner, to clean up, and the bound port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
