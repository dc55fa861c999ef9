"""The injector as the real API server calls it: in this process, serving TLS with a
certificate from a CA of its own, registered through the MutatingWebhookConfiguration that
`flyte-auth-injector webhook-config` prints."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import trustme

from devstack.real.cluster import Cluster, free_port
from flyte_auth_injector.config import InjectorConfig
from flyte_auth_injector.runtime import RunningInjector, running_injector
from flyte_auth_injector.webhook_config import webhook_configuration


@contextlib.asynccontextmanager
async def injecting(cluster: Cluster, workdir: Path, args: list[str],
                    ) -> AsyncIterator[RunningInjector]:
    """Run the injector with `args` (besides where it listens and its certificate) until
    the block exits; the API server sends it every pod creation meanwhile."""
    ca = trustme.CA()
    pem = workdir / "injector.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    port = free_port()
    config = InjectorConfig.load(["--listen", f"127.0.0.1:{port}", "--tls-cert", str(pem),
                                  "--tls-key", str(pem), *args], {})
    async with running_injector(config) as injector:
        await cluster.apply(webhook_configuration(
            url=f"https://127.0.0.1:{port}/mutate",
            ca_bundle=base64.b64encode(ca.cert_pem.bytes()).decode()))
        yield injector
