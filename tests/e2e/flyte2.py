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
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from flyteidl2.common import identifier_pb2 as common_ids
from flyteidl2.core import identifier_pb2 as core_ids
from flyteidl2.core import literals_pb2, tasks_pb2
from flyteidl2.task import task_definition_pb2, task_service_pb2
from flyteidl2.workflow import run_service_pb2
from google.protobuf.message import Message

from devstack.real import peers
from devstack.real.cluster import ADMIN_TOKEN, Cluster, free_port
from devstack.real.images import AGENT_DEBS, PythonImage
from devstack.real.node import TOLERATION
from devstack.real.process import stop, until_ok
from tests.e2e.flyte import Postgres

#: Where Flyte 2 runs its TaskActions and their pods (actions.kubernetes.namespace).
NAMESPACE = "flyte"
#: The project the backend seeds (runs.seedProjects), and a domain.
PROJECT, DOMAIN = "flytesnacks", "development"
TASK_IMAGE = "flyte-auth.e2e/flyte2-task:1"
#: A Flyte 2 task image as a user builds one: the `flyte` SDK (the version the suite tests),
#: the task's script, a non-root user; nothing of ours.
TASK = PythonImage(
    TASK_IMAGE, "/opt/task", (f"flyte=={version('flyte')}",), (f"flyte=={version('flyte')}",),
    (), [], ["python"], "1000:1000", debs=(*AGENT_DEBS, "libstdc++6"),
    # The SDK's HTTP client loads the system's CA certificates even for plain HTTP; this
    # image's system has none, so it is pointed at certifi's (which the SDK installs).
    env=("HOME=/tmp", "SSL_CERT_FILE=/opt/task/lib/python3.11/site-packages/certifi/cacert.pem"),
    files=(("/opt/task/launch.py", "tests/e2e/flyte2_task.py"),))
#: Flyte 2's default pod template (plugins.k8s.default-pod-template-name), in its namespace.
POD_TEMPLATE = "flyte-auth-e2e-v2"
CRD_IN_ARCHIVE = "charts/flyte-binary/templates/crds/flyte.org_taskactions.yaml"


def task_pod_template(ca: Path) -> dict[str, Any]:
    """What an operator would give every Flyte 2 task pod on this machine's node: its
    network, its toleration, and trust in the CA of the proxy tasks dial (`ca`, mounted from
    the host; the SDK's HTTP client reads SSL_CERT_FILE). The image is a placeholder the API
    server requires."""
    return {"apiVersion": "v1", "kind": "PodTemplate",
            "metadata": {"name": POD_TEMPLATE, "namespace": NAMESPACE},
            "template": {"spec": {
                "hostNetwork": True, "tolerations": [TOLERATION],
                "containers": [{"name": "default", "image": TASK_IMAGE,
                                "env": [{"name": "SSL_CERT_FILE", "value": "/etc/e2e/ca.pem"}],
                                "volumeMounts": [{"name": "ca", "mountPath": "/etc/e2e/ca.pem",
                                                  "readOnly": True}]}],
                "volumes": [{"name": "ca", "hostPath": {"path": str(ca), "type": "File"}}]}}}


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
async def running_flyte2(workdir: Path, cluster: Cluster, kubeconfig: Path | None = None,
                         tasks_dial: str | None = None) -> AsyncIterator[Flyte2]:
    """The v2 backend, acting on the API server with `kubeconfig` (default: the admin's).
    With `tasks_dial` (HOST:PORT, HTTPS), task pods are told to reach the control plane there
    (`_U_EP_OVERRIDE`, as the chart's default-env-vars set it) and are based on
    task_pod_template()."""
    workdir.mkdir(parents=True, exist_ok=True)
    if kubeconfig is None:
        await cluster.namespace(NAMESPACE, {})
        kubeconfig = cluster.kubeconfig(workdir / "admin.kubeconfig", ADMIN_TOKEN)
    await cluster.crd(taskaction_crd())
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
                 "storagePrefix": "file://flyte/data", "seedProjects": ["flytesnacks"],
                 "identityHeaders": {"claimsJwtHeader": "", "subjectHeader": "X-Forwarded-User",
                                     "emailHeader": "X-Forwarded-Email"}},
        "storage": {"type": "stow", "container": "flyte",
                    "stow": {"kind": "local", "config": {"path": str(workdir / "blob")}}},
        # A list of one-key maps, as Flyte's own chart writes it: a plain map's keys come
        # out lowercased (the config loader is case-insensitive), and the SDK reads
        # _U_EP_OVERRIDE. No _U_INSECURE: over plain HTTP the SDK sends no token at all.
        "plugins": {"k8s": {"default-pod-template-name": POD_TEMPLATE, "default-env-vars": [
            {"_U_EP_OVERRIDE": tasks_dial}]}} if tasks_dial else {},
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


# --- the runs service over Connect's unary protocol (what the `flyte` SDK sends) -----------

RUNS, TASKS = "flyteidl2.workflow.RunService", "flyteidl2.task.TaskService"


async def connect(http: aiohttp.ClientSession, base: str, method: str, request: Message,
                  answer: type[Message], token: str | None = None) -> tuple[int, Any]:
    """POST one Connect unary call (`method`: SERVICE/Method); (200, the answer message) or
    (status, the error body)."""
    headers = {"Content-Type": "application/proto"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with http.post(f"{base}/{method}",
                         data=request.SerializeToString(), headers=headers,
                         allow_redirects=False) as resp:
        body = await resp.read()
        if resp.status == 200:
            return 200, answer.FromString(body)
        return resp.status, body.decode(errors="replace")


def task_spec(name: str, image: str, args: list[str],
              env: dict[str, str] | None = None) -> task_definition_pb2.TaskSpec:
    """A container task as the `flyte` SDK deploys one: a template with an image and args."""
    return task_definition_pb2.TaskSpec(task_template=tasks_pb2.TaskTemplate(
        id=core_ids.Identifier(resource_type=core_ids.TASK, project=PROJECT, domain=DOMAIN,
                               name=name, version="v1"),
        type="python-task", container=tasks_pb2.Container(image=image, args=args, env=[
            literals_pb2.KeyValuePair(key=k, value=v) for k, v in (env or {}).items()])))


async def deploy_task(http: aiohttp.ClientSession, base: str,
                      spec: task_definition_pb2.TaskSpec, token: str) -> None:
    """TaskService.DeployTask: `spec` becomes a task others can run by name (version v1)."""
    template = spec.task_template.id
    request = task_service_pb2.DeployTaskRequest(spec=spec, task_id=task_definition_pb2.
                                                 TaskIdentifier(project=PROJECT, domain=DOMAIN,
                                                                name=template.name,
                                                                version=template.version))
    status, answer = await connect(http, base, f"{TASKS}/DeployTask", request,
                                   task_service_pb2.DeployTaskResponse, token)
    assert status == 200, answer


async def create_run(http: aiohttp.ClientSession, base: str, spec: task_definition_pb2.TaskSpec,
                     token: str | None = None) -> tuple[int, Any]:
    """CreateRun for `spec` in PROJECT/DOMAIN: (200, the run's name) or the error."""
    request = run_service_pb2.CreateRunRequest(
        project_id=common_ids.ProjectIdentifier(name=PROJECT, domain=DOMAIN), task_spec=spec)
    status, answer = await connect(http, base, f"{RUNS}/CreateRun", request,
                                   run_service_pb2.CreateRunResponse, token)
    return (200, answer.run.action.id.run.name) if status == 200 else (status, answer)


async def run_identity(http: aiohttp.ClientSession, base: str, run: str) -> Any:
    """The run's executed_by, as the runs service recorded it (an EnrichedIdentity)."""
    request = run_service_pb2.GetRunDetailsRequest(
        run_id=common_ids.RunIdentifier(project=PROJECT, domain=DOMAIN, name=run))
    status, answer = await connect(http, base, f"{RUNS}/GetRunDetails", request,
                                   run_service_pb2.GetRunDetailsResponse)
    assert status == 200, answer
    return answer.details.action.metadata.executed_by


async def executed_by(http: aiohttp.ClientSession, base: str, run: str) -> str | None:
    """The subject the runs service recorded as the run's executed_by (None: no identity)."""
    who = await run_identity(http, base, run)
    return str(who.user.id.subject) if who.HasField("user") else None
