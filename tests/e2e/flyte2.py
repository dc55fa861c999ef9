"""Flyte 2's backend on this machine: the single binary (manager/cmd: runs, actions,
executor and the other services on one port), built from the source archive by
devstack.real.peers.flyte2, on the suite's PostgreSQL and kube-apiserver, with the TaskAction
CRD from the archive's own chart.

- The runs service believes the identity headers a proxy forwards (its default,
  `trustForwardedIdentityHeaders`), set here to what oauth2-proxy sends upstream
  (`X-Forwarded-User`, `X-Forwarded-Email`; no claims JWT header).
- The executor's webhook certificate is written to a temp dir (`webhook.localCert`), and
  its secret manager reads $KUBECONFIG.
- The main port and the executor's probe and metrics ports bind loopback. Its webhook
  (9443) and cache-invalidation (9444) servers have no bind setting and listen on all
  interfaces, as FlyteAdmin v1's ports do.
- Blob storage is a directory (stow `local`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devstack.real import peers
from devstack.real.cluster import ADMIN_TOKEN, Cluster, free_port
from devstack.real.process import stop, until_ok
from tests.e2e.flyte import Postgres

#: Where Flyte 2 runs its TaskActions and their pods (actions.kubernetes.namespace).
NAMESPACE = "flyte"
CRD_IN_ARCHIVE = "charts/flyte-binary/templates/crds/flyte.org_taskactions.yaml"


def taskaction_crd() -> dict[str, Any]:
    """The TaskAction CRD as the archive's chart ships it."""
    archive = next(a for a in peers.FLYTE2_ARCHIVES if a.exists())
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(CRD_IN_ARCHIVE))
        extracted = tar.extractfile(member)
        assert extracted is not None
        return dict(yaml.safe_load(extracted.read()))


@dataclass
class Flyte2:
    url: str
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""


@contextlib.asynccontextmanager
async def running_flyte2(workdir: Path, cluster: Cluster) -> AsyncIterator[Flyte2]:
    workdir.mkdir(parents=True, exist_ok=True)
    await cluster.namespace(NAMESPACE, {})
    await cluster.crd(taskaction_crd())
    kubeconfig = cluster.kubeconfig(workdir / "admin.kubeconfig", ADMIN_TOKEN)
    postgres = Postgres()
    postgres.start()
    port = free_port()
    (workdir / "blob/flyte").mkdir(parents=True, exist_ok=True)
    config = {
        "actions": {"kubernetes": {"namespace": NAMESPACE, "kubeconfig": str(kubeconfig)},
                    "server": {"host": "127.0.0.1", "port": free_port()},
                    "runServiceUrl": f"http://127.0.0.1:{port}"},
        "cache_service": {"server": {"host": "127.0.0.1", "port": free_port()}},
        "executor": {"healthProbeBindAddress": f"127.0.0.1:{free_port()}",
                     "metricsBindAddress": f"127.0.0.1:{free_port()}"},
        "runs": {"server": {"host": "127.0.0.1", "port": port},
                 "database": {"postgres": {"host": "127.0.0.1", "port": postgres.port,
                                           "dbname": "postgres", "username": "postgres",
                                           "options": "sslmode=disable"}},
                 "storagePrefix": f"file://{workdir}/blob", "seedProjects": ["flytesnacks"],
                 "identityHeaders": {"claimsJwtHeader": "", "subjectHeader": "X-Forwarded-User",
                                     "emailHeader": "X-Forwarded-Email"}},
        "storage": {"type": "stow", "container": "flyte",
                    "stow": {"kind": "local", "config": {"path": str(workdir / "blob")}}},
        "webhook": {"localCert": True, "certDir": str(workdir / "certs"),
                    "serviceName": "flyte-webhook", "servicePort": 9443},
        "logger": {"level": 4},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    log = workdir / "flyte2.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(peers.flyte2()), "--config", str(workdir / "config.yaml")],
                                stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
                                env={**os.environ, "KUBECONFIG": str(kubeconfig)})
    flyte2 = Flyte2(f"http://127.0.0.1:{port}", log)
    try:
        # It migrates its database first.
        await until_ok(proc, flyte2.url + "/healthz", log, "Flyte 2", 120, 0.5)
        yield flyte2
    except BaseException:
        print(flyte2.logs(), postgres.log())
        raise
    finally:
        stop(proc, 20)
        postgres.stop()
