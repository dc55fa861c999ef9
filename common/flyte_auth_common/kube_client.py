"""The one way a server reaches the Kubernetes API: a kubernetes-asyncio client from
--kubeconfig, else from the pod's own service account (in-cluster config)."""

from __future__ import annotations

import os
from pathlib import Path

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
