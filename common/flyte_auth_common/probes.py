"""Every server's /healthz, /readyz and /metrics: one set of routes; each component says
only what broken and not ready mean for it.

    /healthz   200 "ok", or 500 with why the process is broken (the kubelet restarts it)
    /readyz    200 with `ready`, or 503 "not ready: <why>" (no traffic until it is)
    /metrics   the component's own registry, in Prometheus' text format
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from flyte_auth_common.contract import PATH_HEALTHZ, PATH_METRICS, PATH_READYZ

Why = Callable[[], str | None]


def probe_routes(registry: CollectorRegistry, *, broken: Why = lambda: None,
                 not_ready: Why = lambda: None, ready: str = "ready") -> list[web.RouteDef]:
    """The three routes, for `app.add_routes`; `broken` and `not_ready` answer None when all
    is well, else the reason."""
    async def healthz(_: web.Request) -> web.Response:
        why = broken()
        return web.Response(text="ok\n") if why is None else \
            web.Response(status=500, text=f"{why}\n")

    async def readyz(_: web.Request) -> web.Response:
        why = not_ready()
        return web.Response(text=f"{ready}\n") if why is None else \
            web.Response(status=503, text=f"not ready: {why}\n")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [web.get(PATH_HEALTHZ, healthz), web.get(PATH_READYZ, readyz),
            web.get(PATH_METRICS, metrics)]
