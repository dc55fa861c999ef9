"""Start and stop the injector: HTTPS webhook, optional metrics listener, namespace cache."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from kubernetes_asyncio import client

from flyte_auth_common.daemon import app_runner
from flyte_auth_common.kube_client import api_client, get_object, in_cluster
from flyte_auth_common.reload import FileReloader, ServingTLS
from flyte_auth_common.tls_bootstrap import renew_forever, serving_certificate
from flyte_auth_injector.config import InjectorConfig, read_ca_pem, setting
from flyte_auth_injector.namespaces import NamespaceAnnotations
from flyte_auth_injector.server import InjectorAPI, PodReader, metrics_app, webhook_app

log = structlog.get_logger("flyte_auth_injector")


@dataclass
class RunningInjector:
    api: InjectorAPI
    url: str
    certs: ServingTLS | None
    namespaces: NamespaceAnnotations | None
    agent_ca: FileReloader[str | None] | None = None


async def _namespace_cache(config: InjectorConfig,
                           ) -> tuple[NamespaceAnnotations | None, client.ApiClient | None]:
    """A watch-backed cache when the injector can reach the Kubernetes API, else None."""
    if config.kubeconfig is None and not in_cluster():
        log.warning("namespace_annotations_off",
                    why="no --kubeconfig and not in a cluster: namespace defaults unread")
        return None, None
    api = await api_client(config.kubeconfig, setting("kubeconfig"))
    return NamespaceAnnotations(api), api


def _agent_ca(api: InjectorAPI) -> FileReloader[str | None]:
    """The CA PEMs given to agents, read again when a mounted file changes (a rotated CA)."""
    files = api.config.agent_ca_files
    return FileReloader("agent ca", files, lambda: read_ca_pem(files), api.set_agent_ca)


def pod_reader(api: client.ApiClient, timeout: float = 5.0) -> PodReader:
    """GET one pod (the connect guard's question); None for a 404, an error otherwise."""
    core = client.CoreV1Api(api)

    async def read(namespace: str, name: str) -> dict[str, Any] | None:
        return await get_object("get pod", core.read_namespaced_pod(
            name, namespace, _preload_content=False, _request_timeout=timeout))

    return read


@contextlib.asynccontextmanager
async def running_injector(config: InjectorConfig) -> AsyncIterator[RunningInjector]:
    namespaces, kube_api = await _namespace_cache(config)
    tasks: list[asyncio.Task[None]] = []
    runners: list[web.AppRunner] = []
    sock: socket.socket | None = None
    try:
        # On failure `finally` closes the client.
        certs, bootstrap = await serving_certificate(
            config.serving, kube_api, namespace=config.namespace, webhook=config.webhook_name,
            who="injector", named=setting("tls_bootstrap"))
        sock = socket.create_server(config.serving.listen)
        if namespaces is not None:
            tasks.append(asyncio.create_task(namespaces.run(), name="namespace-watch"))
        if certs is not None:
            tasks.append(asyncio.create_task(certs.watch(), name="tls-reload"))
        if bootstrap is not None and certs is not None:
            tasks.append(asyncio.create_task(renew_forever(bootstrap, certs.check),
                                             name="tls-renew"))
        api = InjectorAPI(config, namespaces.get if namespaces else lambda _: {},
                          namespaces.synced.is_set if namespaces else lambda: True,
                          pod_reader(kube_api) if kube_api else None)
        agent_ca = _agent_ca(api) if config.agent_ca_files else None
        if agent_ca is not None:
            tasks.append(asyncio.create_task(agent_ca.watch(), name="agent-ca-reload"))
        runner = app_runner(webhook_app(api), shutdown_timeout=10.0)
        runners.append(runner)
        await runner.setup()
        await web.SockSite(runner, sock, ssl_context=certs.context if certs else None).start()
        url = f"{'https' if certs else 'http'}://{config.serving.listen[0]}:{sock.getsockname()[1]}"
        if config.metrics_addr is not None:
            extra = app_runner(metrics_app(api))
            runners.append(extra)
            await extra.setup()
            await web.TCPSite(extra, *config.metrics_addr).start()
        log.info("injector_started", listen=url, tls=certs is not None,
                 namespace_annotations=namespaces is not None, image=config.sidecar.image)
        yield RunningInjector(api, url, certs, namespaces, agent_ca)
    finally:
        log.info("injector_stopping")
        for r in runners:
            await r.cleanup()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if kube_api is not None:
            await kube_api.close()
        if sock is not None:
            sock.close()

