"""Real Flyte on this machine: PostgreSQL, a login provider's discovery document, and Flyte's
single binary (FlyteAdmin with auth on and its own authorization server, flytepropeller)
against the suite's kube-apiserver.

- PostgreSQL 15 from Debian: `initdb` and `pg_ctl` run as the `postgres` user (PostgreSQL
  refuses root) in a fresh directory, on a free loopback port, trust auth.
- FlyteAdmin's OIDC login provider: only its discovery document is served (FlyteAdmin reads
  it at start-up); nobody logs in through it. Users' tokens are minted as FlyteAdmin's own
  authorization server mints them after a login: RS256 with its token_rsa_key.pem.
- The blob store is a directory (stow `local`): FlyteAdmin writes execution inputs there,
  flytepropeller reads them, and the task containers on the real node read their inputs and
  write their outputs there through a hostPath mount at the same path. Flyte names those
  files `file://flyte/...`, relative to the directory, so the task's working directory is
  the blob store. Flyte runs as root and the tasks as uid 1000, as a bucket is shared by
  both in a cluster: Flyte runs with umask 000. flytekit registers without fast
  registration, so nothing else needs a blob store.
- Task pods get what this machine needs from Flyte's default pod template
  (`task_pod_template`): the host's network, the node's toleration, the blob store.
- FlyteAdmin v1.16.8 has no bind-address setting: its gRPC and HTTP ports listen on
  0.0.0.0 (`ServerConfig.GetHostAddress`). Every other peer binds 127.0.0.1.
- flytepropeller talks to the API server as the service account flyte/flytepropeller (the
  guard's default creator) and to FlyteAdmin as the static client `flytepropeller`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import bcrypt
import grpc
import yaml
from aiohttp import web
from flyteidl.admin import execution_pb2
from flyteidl.core import identifier_pb2
from flyteidl.service import admin_pb2_grpc, auth_pb2, auth_pb2_grpc

from devstack.real import peers
from devstack.real.cluster import ADMIN_TOKEN, Cluster, free_port, running_cluster
from devstack.real.images import AGENT_DEBS, PythonImage, python_image
from devstack.real.node import NODE_USERS, TOLERATION, Node, running_node
from devstack.world import write_signing_key
from tests.e2e.manifests import FLYTEWORKFLOW_CRD, rendered_manifests

TASK_IMAGE = "flyte-auth.e2e/task:1"
#: A Flyte task image as a user builds one: flytekit (the version the suite tests) and our
#: plugin, nothing else of ours; the e2e workflows' module on PYTHONPATH (registered without
#: fast registration, so the image carries the code); a non-root user.
TASK = PythonImage(
    TASK_IMAGE, "/opt/task", (f"flytekit=={version('flytekit')}", "flytekitplugins-auth-agent"),
    (f"flytekit=={version('flytekit')}", "./common", "./flytekit_plugin"),
    ("common", "flytekit_plugin"), [], ["python"], "1000:1000",
    env=("PYTHONPATH=/opt/task/src", "HOME=/tmp"), debs=(*AGENT_DEBS, "libstdc++6"),
    files=(("/opt/task/src/tests/__init__.py", "tests/__init__.py"),
           ("/opt/task/src/tests/e2e/__init__.py", "tests/e2e/__init__.py"),
           ("/opt/task/src/tests/e2e/workflows.py", "tests/e2e/workflows.py")))




def task_image() -> Path:
    return python_image(TASK)


#: Flyte's default pod template (plugins.k8s.default-pod-template-name), in flytepropeller's
#: namespace.
POD_TEMPLATE = "flyte-auth-e2e"


def task_pod_template(blob: Path) -> dict[str, object]:
    """The PodTemplate Flyte bases every task pod on: what a cluster's operator would set
    for this machine's node (host network, its toleration) and blob store (mounted at the
    same path, the working directory). The `default` container applies to every container
    Flyte creates; its image is a placeholder the API server requires."""
    return {"apiVersion": "v1", "kind": "PodTemplate",
            "metadata": {"name": POD_TEMPLATE, "namespace": "flyte"},
            "template": {"spec": {
                "hostNetwork": True, "tolerations": [TOLERATION],
                "containers": [{"name": "default", "image": TASK_IMAGE,
                                "workingDir": str(blob),
                                "volumeMounts": [{"name": "blob", "mountPath": str(blob)}]}],
                "volumes": [{"name": "blob", "hostPath": {"path": str(blob),
                                                          "type": "Directory"}}]}}}

#: flytepropeller's client secret at FlyteAdmin's own authorization server (a static client
#: registered below with the secret's bcrypt hash, base64-encoded as FlyteAdmin reads it).
PROPELLER_CLIENT_SECRET = "e2e-" + base64.b16encode(os.urandom(8)).decode()


@dataclass
class Postgres:
    port: int = 0
    data: Path = field(default_factory=Path)

    def start(self) -> None:
        binaries = peers.postgres()
        self.data = Path(tempfile.mkdtemp(prefix="fa-pg-"))  # /tmp: the postgres user can reach it
        shutil.chown(self.data, "postgres", "postgres")
        self.port = free_port()
        as_postgres = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*as_postgres, str(binaries / "initdb"), "-D", str(self.data / "db"),
                        "-U", "postgres", "--auth=trust"], check=True, capture_output=True)
        subprocess.run([*as_postgres, str(binaries / "pg_ctl"), "-D", str(self.data / "db"),
                        "-l", str(self.data / "postgres.log"), "-w", "start", "-o",
                        f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 "
                        "-c fsync=off"], check=True, capture_output=True)

    def log(self) -> str:
        path = self.data / "postgres.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.port:
            subprocess.run(["runuser", "-u", "postgres", "--", str(peers.postgres() / "pg_ctl"),
                            "-D", str(self.data / "db"), "-m", "immediate", "stop"],
                           capture_output=True, check=False)
        shutil.rmtree(self.data, ignore_errors=True)


@dataclass
class Flyte:
    workdir: Path
    #: FlyteAdmin creates FlyteWorkflow objects with this one.
    admin_kubeconfig: Path
    #: flytepropeller watches them and creates task pods with this one.
    propeller_kubeconfig: Path
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    postgres: Postgres = field(default_factory=Postgres)
    process: subprocess.Popen[bytes] | None = None
    #: External mode: FlyteAdmin's auth.appAuth (authServerType External), the login IdP's
    #: OIDC base URL, and flytepropeller's client secret at that IdP.
    app_auth: dict[str, object] | None = None
    login_base: str | None = None
    propeller_secret: str = PROPELLER_CLIENT_SECRET
    _oidc: web.AppRunner | None = None

    @property
    def target(self) -> str:
        """FlyteAdmin's gRPC HOST:PORT, as a task's FLYTE_PLATFORM_URL names it."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def blob(self) -> Path:
        return self.workdir / "blob"

    @property
    def key_file(self) -> Path:
        return self.workdir / "secrets/token_rsa_key.pem"

    @property
    def old_key_file(self) -> Path:
        """token_rsa_key_old.pem: FlyteAdmin also verifies with it (a key rotation)."""
        return self.workdir / "secrets/token_rsa_key_old.pem"

    @property
    def authorized_uris(self) -> list[str]:
        """flyte-core's shape: a public URL first, then in-cluster names, then 127.0.0.1 (what
        the suite dials). Each names FlyteAdmin's HTTP port: the chosen entry is also where
        its metadata says the token endpoint is (flytepropeller's client credentials)."""
        return ["https://flyte.example.com", "http://flyteadmin.flyte.svc.cluster.local:80",
                f"http://127.0.0.1:{self.http_port}"]

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.postgres.start()
        await self._start_oidc()
        self._write_secrets()
        config = self.workdir / "flyte.yaml"
        config.write_text(yaml.safe_dump(self._config()))
        log = (self.workdir / "flyte.log").open("wb")
        self.process = subprocess.Popen([str(peers.flyte()), "start", "--config", str(config)],
                                        stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                        umask=0)
        await self._wait_ready()

    async def _start_oidc(self) -> None:
        port = free_port()
        base = f"http://127.0.0.1:{port}"

        async def discovery(_: web.Request) -> web.Response:
            return web.json_response({
                "issuer": base, "authorization_endpoint": base + "/authorize",
                "token_endpoint": base + "/token", "jwks_uri": base + "/jwks",
                "userinfo_endpoint": base + "/userinfo", "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"]})

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        self._oidc = web.AppRunner(app, access_log=None)
        await self._oidc.setup()
        await web.TCPSite(self._oidc, "127.0.0.1", port).start()
        self.oidc_base = base

    def _write_secrets(self) -> None:
        """The secrets FlyteAdmin's auth reads from secrets-prefix: token_rsa_key.pem
        (PKCS#1) and keys base64-encoded without padding (FlyteAdmin decodes them with
        RawStdEncoding)."""
        secrets = self.workdir / "secrets"
        secrets.mkdir(exist_ok=True)
        write_signing_key(self.key_file)
        write_signing_key(self.old_key_file)
        for name, size in (("claim_symmetric_key", 32), ("cookie_hash_key", 64),
                           ("cookie_block_key", 32)):
            (secrets / name).write_text(base64.b64encode(os.urandom(size)).decode().rstrip("="))
        (secrets / "oidc_client_secret").write_text("unused")
        (self.workdir / "propeller-secret").write_text(self.propeller_secret)
        for store in (self.blob / "flyte", self.blob / "raw"):
            store.mkdir(parents=True, exist_ok=True)
            store.chmod(0o777)

    def _config(self) -> dict[str, object]:
        w = self.workdir
        return {
            "flyte": {"admin": {"disableScheduler": True, "disableClusterResourceManager": True,
                                "seedProjects": ["flytesnacks"]},
                      "propeller": {"disableWebhook": True},
                      "dataCatalog": {"disabled": True}},
            "server": {"httpPort": self.http_port, "grpc": {"port": self.grpc_port},
                       "kube-config": str(self.admin_kubeconfig),
                       "security": {"secure": False, "useAuth": True}},
            "auth": {"authorizedUris": self.authorized_uris,
                     "appAuth": self.app_auth or self._self_auth_server(),
                     "userAuth": {"openId": {"baseUrl": self.login_base or self.oidc_base,
                                             "clientId": "flyte", "scopes": ["openid"]}}},
            "secrets": {"secrets-prefix": str(w / "secrets")},
            "database": {"postgres": {"host": "127.0.0.1", "port": self.postgres.port,
                                      "username": "postgres", "dbname": "postgres",
                                      "options": "sslmode=disable"}},
            "storage": {"type": "stow", "container": "flyte",
                        "stow": {"kind": "local", "config": {"path": str(self.blob)}}},
            "propeller": {"kube-config": str(self.propeller_kubeconfig), "workers": 2,
                          "rawoutput-prefix": f"file://{self.blob}/raw",
                          "metadata-prefix": "metadata/propeller",
                          "create-flyteworkflow-crd": False,
                          "prof-port": free_port()},
            "flyteadmin": {"profilerPort": free_port()},
            "admin": {"endpoint": f"dns:///{self.target}", "insecure": True,
                      "authType": "ClientSecret", "clientId": "flytepropeller",
                      "clientSecretLocation": str(w / "propeller-secret"),
                      # FlyteAdmin's public client config asks for `offline` too, which an
                      # external IdP need not know.
                      **({"scopes": ["all"]} if self.app_auth else {})},
            "tasks": {"task-plugins": {"enabled-plugins": ["container", "sidecar"],
                                       "default-for-task-types": {"container": "container"}}},
            "plugins": {"k8s": {"default-pod-template-name": POD_TEMPLATE}},
            # FlyteAdmin's default request is 2 CPUs, all this node has.
            "task_resources": {"defaults": {"cpu": "100m", "memory": "500Mi"},
                               "limits": {"cpu": "2", "memory": "1Gi"}},
            "namespace_mapping": {"template": "{{ project }}-{{ domain }}"},
            "logger": {"level": 4},
        }

    @staticmethod
    def _self_auth_server() -> dict[str, object]:
        """FlyteAdmin's own authorization server, flytepropeller its static client."""
        return {"authServerType": "Self", "selfAuthServer": {"staticClients": {
            "flytepropeller": {
                "id": "flytepropeller",
                "client_secret": base64.b64encode(bcrypt.hashpw(
                    PROPELLER_CLIENT_SECRET.encode(), bcrypt.gensalt(6))).decode(),
                "redirect_uris": ["http://localhost:3000/callback"],
                "grant_types": ["refresh_token", "client_credentials"],
                "response_types": ["token"], "scopes": ["all", "offline", "access_token"],
                "audience": None, "public": False}}}}

    async def _wait_ready(self) -> None:
        async with asyncio.timeout(180), grpc.aio.insecure_channel(self.target) as channel:
            stub = auth_pb2_grpc.AuthMetadataServiceStub(channel)
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"flyte exited at start-up:\n{self.logs()}")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.GetPublicClientConfig(auth_pb2.PublicClientAuthConfigRequest(),
                                                     timeout=2)
                    return
                await asyncio.sleep(0.5)  # FlyteAdmin migrates its database first

    def logs(self) -> str:
        path = self.workdir / "flyte.log"
        text = path.read_text(errors="replace")[-6000:] if path.exists() else ""
        return f"--- flyte ---\n{text}\n--- postgres ---\n{self.postgres.log()}"

    async def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self._oidc is not None:
            await self._oidc.cleanup()
        self.postgres.stop()


@contextlib.asynccontextmanager
async def running_flyte(workdir: Path, admin_kubeconfig: Path, propeller_kubeconfig: Path,
                        flyte: Flyte | None = None) -> AsyncIterator[Flyte]:
    """Flyte with its own authorization server, or `flyte` as configured (External mode)."""
    flyte = flyte or Flyte(workdir, admin_kubeconfig, propeller_kubeconfig)
    try:
        await flyte.start()
        yield flyte
    except BaseException:
        print(flyte.logs())  # the peers' logs, for the failing test's report
        raise
    finally:
        await flyte.stop()


# --- the cluster Flyte 1 runs on ------------------------------------------------------------

PROJECT, DOMAIN = "flytesnacks", "development"
NAMESPACE = f"{PROJECT}-{DOMAIN}"


@dataclass
class FlyteCluster:
    """The suite's API server and node, prepared as a Flyte 1 site's: Flyte's and our
    namespaces, the project namespace labelled for injection, propeller's service account,
    deploy/'s manifests (the guard), the FlyteWorkflow CRD, Flyte's default pod template."""

    cluster: Cluster
    node: Node
    workdir: Path

    async def kubeconfig(self, namespace: str, account: str) -> Path:
        """A kubeconfig that acts as that service account."""
        token = await self.cluster.token(namespace, account, audience=self.cluster.url)
        return self.cluster.kubeconfig(self.workdir / f"{account}.kubeconfig", token)

    @property
    def admin_kubeconfig(self) -> Path:
        return self.cluster.kubeconfig(self.workdir / "admin.kubeconfig", ADMIN_TOKEN)

    async def propeller_kubeconfig(self) -> Path:
        return await self.kubeconfig("flyte", "flytepropeller")


async def grant_propeller(cluster: Cluster) -> None:
    """flytepropeller's service account as propeller runs in a cluster: cluster-wide rights
    on pods and FlyteWorkflows (cluster-admin here; the guard checks who, not how much)."""
    await cluster.apply({"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": {"name": "flytepropeller", "namespace": "flyte"}})
    await cluster.bind_role("e2e-flytepropeller", "cluster-admin",
                            {"kind": "ServiceAccount", "name": "flytepropeller",
                             "namespace": "flyte"})


async def prepare(cluster: Cluster) -> None:
    """Flyte's and our namespaces, the project namespace labelled for injection,
    propeller's service account, deploy/'s manifests (the guard), the FlyteWorkflow CRD."""
    for name, labels in (("flyte-auth", {}), ("flyte", {}), (NAMESPACE, {
            "flyte-auth.flyte.org/inject": "enabled"})):
        await cluster.namespace(name, labels)
    await grant_propeller(cluster)
    await cluster.apply_all(rendered_manifests(), "flyte-auth")
    await cluster.crd(FLYTEWORKFLOW_CRD)


@contextlib.asynccontextmanager
async def flyte_cluster(workdir: Path) -> AsyncIterator[FlyteCluster]:
    async with running_cluster(workdir / "cluster", users=NODE_USERS) as cluster, \
            running_node(cluster, (task_image(),)) as node:
        try:
            await prepare(cluster)
            await cluster.apply(task_pod_template(workdir / "flyte/blob"))
            yield FlyteCluster(cluster, node, workdir)
        except BaseException:
            print(cluster.logs(), node.logs())
            raise


# --- what a user and a test do with it --------------------------------------------------------

def flytekit_as(target: str, token: str) -> Any:  # a FlyteRemote
    """A FlyteRemote that authenticates as the holder of `token`, as a user's CLI would."""
    from flytekit.configuration import Config, PlatformConfig  # noqa: PLC0415
    from flytekit.remote import FlyteRemote  # noqa: PLC0415

    platform = PlatformConfig(endpoint=target, insecure=True, auth_mode="ExternalCommand",
                              command=["echo", token])
    return FlyteRemote(Config(platform=platform), default_project=PROJECT,
                       default_domain=DOMAIN)


async def register(remote: Any, image: str, *workflows: Any) -> str:
    """Register `workflows` (without fast registration: the image has the code) at a new
    version; the version."""
    from flytekit.configuration import ImageConfig, SerializationSettings  # noqa: PLC0415

    version = uuid.uuid4().hex[:8]
    settings = SerializationSettings(image_config=ImageConfig.auto(img_name=image),
                                     project=PROJECT, domain=DOMAIN, version=version)
    for wf in workflows:
        await asyncio.to_thread(remote.register_workflow, wf, serialization_settings=settings,
                                version=version)
    return version


async def execute(remote: Any, workflow: Any, at: str, **inputs: Any) -> Any:
    """Launch `workflow`'s default launch plan at version `at`; the execution."""
    plan = await asyncio.to_thread(remote.fetch_launch_plan, name=workflow.name, version=at)
    return await asyncio.to_thread(remote.execute, plan, inputs=inputs)


async def principal(target: str, name: str, token: str) -> str:
    """Whom FlyteAdmin records as the launcher of execution `name`."""
    async with grpc.aio.insecure_channel(target) as channel:
        execution = await admin_pb2_grpc.AdminServiceStub(channel).GetExecution(
            execution_pb2.WorkflowExecutionGetRequest(id=identifier_pb2.WorkflowExecutionIdentifier(
                project=PROJECT, domain=DOMAIN, name=name)),
            metadata=(("flyte-authorization", f"Bearer {token}"),))
    return str(execution.spec.metadata.principal)


async def wait_for_pod(cluster: Cluster, execution: str) -> dict[str, Any]:
    """The first pod flytepropeller creates for `execution`."""
    async with asyncio.timeout(180):
        while True:
            pods = await cluster.request(
                "GET", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=execution-id%3D"
                f"{execution}")
            if pods["items"]:
                pod: dict[str, Any] = pods["items"][0]
                return pod
            await asyncio.sleep(0.5)  # flytepropeller's next round
