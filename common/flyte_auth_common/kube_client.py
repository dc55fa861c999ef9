"""The one way a server reaches the Kubernetes API: a kubernetes-asyncio client from
--kubeconfig, else from the pod's own service account (in-cluster config); and the one way
it reads an answer (raw, `_preload_content=False`: kubernetes-asyncio then raises nothing
for an error status, so every status is looked at here)."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.config import ConfigException

from flyte_auth_common.errors import ConfigError


def in_cluster() -> bool:
    """Whether this process runs in a pod (the kubelet sets the API server's address)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


async def api_client(kubeconfig: Path | None, setting: str) -> client.ApiClient:
    """A client from `kubeconfig`, else in-cluster; a ConfigError naming `setting` (the
    --kubeconfig option as the CLI spells it, with its env var) if neither works."""
    try:
        if kubeconfig is not None:
            return await kube_config.new_client_from_config(config_file=str(kubeconfig))
        kube_config.load_incluster_config()  # type: ignore[no-untyped-call]
        return client.ApiClient()
    except (ConfigException, OSError, ValueError) as exc:
        where = f"--kubeconfig {kubeconfig}" if kubeconfig else "in-cluster config"
        raise ConfigError([f"{where}: cannot configure the Kubernetes client ({exc}); set "
                           f"{setting} outside a cluster"]) from None


class KubeReadError(Exception):
    """No object: the API server could not be asked, or answered with an error."""


async def response_json(what: str, call: Awaitable[Any]) -> tuple[int, Any]:
    """The status and parsed body (None if not JSON) of a raw call; KubeReadError naming
    `what` if the API server could not be reached."""
    try:
        resp = await call
        body = await resp.read()
        status = int(resp.status)
    except (OSError, TimeoutError, client.ApiException) as exc:
        raise KubeReadError(f"{what}: {type(exc).__name__}") from None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


async def get_object(what: str, call: Awaitable[Any]) -> dict[str, Any] | None:
    """The object; None if it does not exist (404); KubeReadError for any other answer
    (401, 403, 5xx, a body that is not an object): an error is never taken for an object."""
    status, doc = await response_json(what, call)
    if status == 404:
        return None
    if status != 200 or not isinstance(doc, dict):
        raise KubeReadError(f"{what}: HTTP {status}")
    return doc


class Getter:
    """GETs of raw JSON through `api`'s own connection pool, TLS and credentials (its token,
    refreshed as its configuration says; client certificates are in its TLS context), for
    the reads on a hot path. The generated API costs ~1 ms of Python per call, and its
    session is opened with aiohttp's trust_env, which reads ~/.netrc in a thread on every
    request; this asks the same URL with none of that (the configured proxy still applies)."""

    def __init__(self, api: client.ApiClient) -> None:
        rest = api.rest_client
        self._api = api
        self._host = str(api.configuration.host).rstrip("/")
        self._proxy, self._proxy_headers = rest.proxy, rest.proxy_headers
        self._server_hostname = rest.server_hostname
        self._session = aiohttp.ClientSession(connector=rest.pool_manager.connector,
                                              connector_owner=False, read_bufsize=2**21)

    async def close(self) -> None:
        await self._session.close()

    async def get(self, what: str, path: str, *, timeout: float, **names: str
                  ) -> tuple[int, Any]:
        """GET `path` with each {name} in it replaced by `names`' value, escaped whole (a
        value never adds a path segment): the status and parsed body (None if not JSON);
        KubeReadError naming `what` if the API server could not be asked."""
        path = path.format(**{key: quote(value, safe="") for key, value in names.items()})
        headers: dict[str, str] = {"Accept": "application/json"}
        try:
            await self._api.update_params_for_auth(headers, [], ["BearerToken", "BasicAuth"])
            async with self._session.get(
                    f"{self._host}/{path}", headers=headers, proxy=self._proxy,
                    proxy_headers=self._proxy_headers, server_hostname=self._server_hostname,
                    timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise KubeReadError(f"{what}: {type(exc).__name__}") from None
        try:
            return status, json.loads(body)
        except ValueError:
            return status, None
