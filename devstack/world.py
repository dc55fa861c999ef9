"""The stand-in world the exchange server lives in: a Kubernetes API server (issuer, pods,
TokenReview), FlyteAdmin (with its token_rsa_key.pem), Flyte 2's runs service, and Flyte
task pods with their executions (Flyte 1) or runs (Flyte 2). Used by the tests, the benchmark
and `make run`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.admin_metadata import AuthMetadata
from devstack.flyteadmin import FlyteAdmin, start_flyteadmin
from devstack.kube_api import StubKubeAPI
from devstack.runs_v2 import StubRuns
from flyte_auth_common.contract import (
    DEFAULT_V2_NAMESPACE,
    ENABLED_NAMESPACE_LABELS,
)

ADMIN_URL = "http://flyteadmin.flyte.svc.cluster.local:80"
NAMESPACE = "flytesnacks-development"
EXECUTOR = "alice@example.com"
#: The guard objects exactly as deploy/ ships them: the policies and the injector's webhook
#: configuration, whose connect webhook is part of the guard.
GUARD_MANIFEST = Path(__file__).resolve().parents[1] / "deploy/kustomize/guard/guard.yaml"
WEBHOOK_MANIFEST = Path(__file__).resolve().parents[1] / "deploy/kustomize/base/webhook.yaml"
PLURALS = {"ValidatingAdmissionPolicy": "validatingadmissionpolicies",
           "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings"}


def install_guard(kube: StubKubeAPI) -> None:
    """The guard's policies and bindings, and the injector's webhook configuration, as
    `deploy/` renders them."""
    for obj in yaml.safe_load_all(GUARD_MANIFEST.read_text()):
        kube.admission[(PLURALS[obj["kind"]], obj["metadata"]["name"])] = obj
    webhook = yaml.safe_load(WEBHOOK_MANIFEST.read_text())
    kube.webhooks.setdefault(webhook["metadata"]["name"], webhook)


def write_signing_key(path: Path) -> bytes:
    """A token_rsa_key.pem as FlyteAdmin's bootstrap writes it (PKCS#1); returns the public
    key PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass
class World:
    workdir: Path
    kube: StubKubeAPI = field(default_factory=StubKubeAPI)
    runs: StubRuns = field(default_factory=StubRuns)
    admin: FlyteAdmin = field(init=False)
    metadata: AuthMetadata = field(init=False)
    admin_target: str = ""
    key_file: Path = field(init=False)
    kubeconfig: Path = field(init=False)
    _admin_server: Any = None

    async def start(self) -> World:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.key_file = self.workdir / "token_rsa_key.pem"
        public = write_signing_key(self.key_file)
        await self.kube.start()
        install_guard(self.kube)
        self.kubeconfig = self.kube.kubeconfig(self.workdir / "kubeconfig")
        self.admin = FlyteAdmin(public, authorized_uris=[ADMIN_URL])
        self.metadata = AuthMetadata(token_endpoint="", audience=ADMIN_URL)
        self._admin_server, self.admin_target = await start_flyteadmin(self.admin, self.metadata)
        await self.runs.start()
        return self

    async def stop(self) -> None:
        if self._admin_server is not None:
            await self._admin_server.stop(None)
        await self.runs.stop()
        await self.kube.stop()

    def exchange_args(self, *extra: str) -> list[str]:
        """`flyte-auth-exchange serve` flags for this world, in executor mode."""
        return ["--listen", "127.0.0.1:0", "--signing-key", str(self.key_file),
                "--admin-audience", ADMIN_URL, "--subject-issuer", self.kube.url,
                "--subject-discovery", self.kube.url, "--subject-audience", "flyte-auth",
                "--admin-endpoint", self.admin_target, "--admin-insecure",
                "--runs-url", self.runs.url, "--kubeconfig", str(self.kubeconfig), *extra]

    def task_pod(self, name: str = "f3a1b2c4d5e6-n0-0", *, execution: str = "f3a1b2c4d5e6",
                 principal: str | None = EXECUTOR, namespace: str = NAMESPACE,
                 identity_label: str | None = None, phase: str = "Running") -> dict[str, Any]:
        """A Flyte task pod as flytepropeller creates it: its labels, controlled by the
        FlyteWorkflow FlyteAdmin created for an execution FlyteAdmin knows, in an injected
        namespace."""
        project, domain = namespace.rsplit("-", 1)
        labels = {"execution-id": execution, "project": project, "domain": domain,
                  "node-id": "n0", "task-name": "my-task"}
        if identity_label is not None:
            labels["execution-identity"] = identity_label
        if principal is not None:
            self.admin.executions[(project, domain, execution)] = principal
        if namespace not in self.kube.namespaces:
            self.kube.set_namespace(namespace, labels=dict(ENABLED_NAMESPACE_LABELS))
        workflow = self.kube.workflows.get((namespace, execution)) or \
            self.kube.add_workflow(namespace, project, domain, execution)
        return self.kube.add_pod(namespace, name, labels=labels, phase=phase,
                                 owners=[owner_reference(workflow)])


    def flyte2_task_pod(self, run: str = "r8k2m4p6q1", *, action: str = "a0",
                        launcher: str | None = EXECUTOR, project: str = "flytesnacks",
                        domain: str = "development",
                        namespace: str = DEFAULT_V2_NAMESPACE) -> dict[str, Any]:
        """A Flyte 2 task pod as its executor creates it: labelled with its run and action,
        controlled by the TaskAction the runs service created, in Flyte 2's one (injected)
        namespace; the run launched by `launcher`."""
        self.runs.runs[(project, domain, run)] = launcher
        if namespace not in self.kube.namespaces:
            self.kube.set_namespace(namespace, labels=dict(ENABLED_NAMESPACE_LABELS))
        ta = self.kube.add_taskaction(namespace, project, domain, run, action)
        labels = {"run": run, "action": action, "attempt": "1", "project": project,
                  "domain": domain, "task-name": "main"}
        meta = ta["metadata"]
        return self.kube.add_pod(namespace, f"{meta['name']}-0", labels=labels, owners=[{
            "apiVersion": "flyte.org/v1", "kind": "TaskAction", "name": meta["name"],
            "uid": meta["uid"], "controller": True}])


def owner_reference(workflow: dict[str, Any]) -> dict[str, Any]:
    """The controller reference flytepropeller puts on the pods of `workflow`
    (metav1.NewControllerRef with FlyteWorkflowGVK: kind `flyteworkflow`)."""
    return {"apiVersion": "flyte.lyft.com/v1alpha1", "kind": "flyteworkflow",
            "name": workflow["metadata"]["name"], "uid": workflow["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}
