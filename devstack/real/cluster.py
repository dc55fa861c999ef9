"""A real Kubernetes control plane on loopback: etcd and kube-apiserver, no kubelet.

The API server signs service-account tokens with a key made here, serves OIDC discovery
(readable anonymously, as clusters that federate their tokens configure it), authenticates
the harness with a static admin token, and authorises everything else with RBAC.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import trustme
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.real import peers
from devstack.real.process import stop_all

ADMIN_TOKEN = "e2e-admin-token"
RBAC_GROUP = "rbac.authorization.k8s.io"
#: Who `Cluster.token()` asks as by default: a node's kubelet (node.NODE).
KUBELET_USER = "system:node:e2e-node"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class KubeError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {str(body)[:500]}")
        self.status = status
        self.body = body


@dataclass
class Cluster:
    workdir: Path
    ca: trustme.CA = field(default_factory=trustme.CA)
    url: str = ""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    session: aiohttp.ClientSession | None = None
    #: More static-token users (tokens.csv lines), e.g. a node's kubelet and scheduler.
    users: tuple[str, ...] = ()
    #: The `Warning` headers of the last request's answer.
    warnings: list[str] = field(default_factory=list)

    @property
    def ca_file(self) -> Path:
        return self.workdir / "apiserver-ca.pem"

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        self.processes.append(self._spawn("etcd", [
            str(peers.etcd()), "--data-dir", str(self.workdir / "etcd"), "--unsafe-no-fsync",
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer_port}"]))
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.workdir / "sa.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
        (self.workdir / "sa.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_and_cert_chain_pem.write_to_path(str(self.workdir / "apiserver.pem"))
        # How the API server proves itself to kubelets (logs, exec): a client certificate
        # from the cluster CA, which a node's kubelet trusts (devstack/real/node.py).
        client = self.ca.issue_cert("kube-apiserver-kubelet-client",  # a SAN: Go requires one
                                    common_name="kube-apiserver-kubelet-client")
        client.private_key_and_cert_chain_pem.write_to_path(
            str(self.workdir / "kubelet-client.pem"))
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        (self.workdir / "tokens.csv").write_text("\n".join(
            (f"{ADMIN_TOKEN},e2e-admin,e2e-admin,system:masters", *self.users)) + "\n")
        self.url = f"https://127.0.0.1:{api_port}"
        self.processes.append(self._spawn("kube-apiserver", [
            str(peers.kube_apiserver()),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--tls-cert-file={self.workdir / 'apiserver.pem'}",
            f"--tls-private-key-file={self.workdir / 'apiserver.pem'}",
            f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--authorization-mode=RBAC", "--anonymous-auth=true",
            f"--service-account-issuer={self.url}",
            f"--service-account-key-file={self.workdir / 'sa.pub'}",
            f"--service-account-signing-key-file={self.workdir / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/24",
            "--enable-priority-and-fairness=false",
            # Reach kubelets by IP, as kubeadm sets it: nodes have no DNS names here.
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--kubelet-client-certificate={self.workdir / 'kubelet-client.pem'}",
            f"--kubelet-client-key={self.workdir / 'kubelet-client.pem'}",
        ]))
        self.session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            connector=aiohttp.TCPConnector(ssl=self.ssl_context()))
        await self._wait_ready()
        # Clusters that federate their tokens publish discovery to everyone.
        await self.bind_role("e2e-public-issuer-discovery",
                             "system:service-account-issuer-discovery",
                             {"apiGroup": RBAC_GROUP, "kind": "Group",
                              "name": "system:unauthenticated"})
        # Nodes' rights (with no Node authorizer here): the kubelet's, and `token()`'s,
        # which asks for pod-bound tokens as a kubelet does (the guard admits only nodes).
        await self.bind_role("e2e-node", "system:node",
                             {"apiGroup": RBAC_GROUP, "kind": "Group", "name": "system:nodes"})

    async def bind_role(self, name: str, cluster_role: str, subject: dict[str, str],
                        namespace: str | None = None) -> None:
        """Grant `cluster_role` to `subject`: cluster-wide, or in `namespace` only."""
        meta = {"name": name, **({"namespace": namespace} if namespace else {})}
        await self.apply({
            "apiVersion": f"{RBAC_GROUP}/v1",
            "kind": "RoleBinding" if namespace else "ClusterRoleBinding", "metadata": meta,
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": cluster_role},
            "subjects": [subject]})

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted(self.workdir.glob("*.log")))

    async def _wait_ready(self) -> None:
        assert self.session is not None
        async with asyncio.timeout(120):
            while True:
                for p in self.processes:
                    if p.poll() is not None:
                        raise RuntimeError(f"a control-plane process exited:\n{self.logs()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with self.session.get(self.url + "/readyz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.2)  # the API server is starting

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        stop_all(self.processes, 15)

    # --- the API -----------------------------------------------------------------------------

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json", *,
                      as_user: str | None = None, as_groups: tuple[str, ...] = ()) -> Any:
        """One API call as the harness's admin, or impersonating `as_user` (in `as_groups`).
        The `Warning` headers of its answer (admission warnings among them) are kept in
        `warnings`."""
        assert self.session is not None
        headers: Any = {"Content-Type": content_type}
        if as_user is not None:
            headers = [*headers.items(), ("Impersonate-User", as_user),
                       *(("Impersonate-Group", g) for g in as_groups)]
        async with self.session.request(method, self.url + path, json=body,
                                        headers=headers) as resp:
            self.warnings = resp.headers.getall("Warning", [])
            text = await resp.text()
            try:
                doc = json.loads(text)
            except ValueError:  # e.g. a plain "404 page not found" for an unserved group
                doc = {"message": text}
            if resp.status >= 400:
                raise KubeError(resp.status, doc)
            return doc

    async def apply(self, obj: dict[str, Any]) -> Any:
        """Create `obj` (the harness only ever creates into a fresh cluster)."""
        return await self.request("POST", collection_path(obj), obj)

    async def apply_all(self, text: str, namespace: str) -> None:
        for obj in yaml.safe_load_all(text):
            if obj and obj["kind"] not in ("Issuer", "Certificate"):
                if "namespace" in obj["metadata"]:
                    obj["metadata"]["namespace"] = namespace
                await self.apply(obj)

    async def crd(self, crd: dict[str, Any]) -> None:
        """Create a CustomResourceDefinition and wait until its resource is served."""
        await self.apply(crd)
        spec = crd["spec"]
        path = f"/apis/{spec['group']}/{spec['versions'][0]['name']}/{spec['names']['plural']}"
        async with asyncio.timeout(30):
            while True:
                with contextlib.suppress(KubeError):
                    await self.request("GET", path)
                    return
                await asyncio.sleep(0.1)  # the API server is establishing the CRD

    async def namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        await self.apply({"apiVersion": "v1", "kind": "Namespace",
                          "metadata": {"name": name, "labels": labels or {}}})
        await self.apply({"apiVersion": "v1", "kind": "ServiceAccount",
                          "metadata": {"name": "default", "namespace": name}})

    async def token(self, namespace: str, service_account: str, *, audience: str,
                    pod: dict[str, Any] | None = None, seconds: int = 3600,
                    as_user: str = KUBELET_USER, as_groups: tuple[str, ...] = ("system:nodes",),
                    ) -> str:
        """A token from the TokenRequest API, bound to `pod` as the kubelet binds it, asked
        for as a node's kubelet (by default: the guard admits only nodes for the exchange
        server's audience)."""
        spec: dict[str, Any] = {"audiences": [audience], "expirationSeconds": seconds}
        if pod is not None:
            spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1",
                                      "name": pod["metadata"]["name"],
                                      "uid": pod["metadata"]["uid"]}
        doc = await self.request(
            "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
            as_user=as_user, as_groups=as_groups)
        return str(doc["status"]["token"])

    def kubeconfig(self, path: Path, token: str) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
            "clusters": [{"name": "e2e", "cluster": {"server": self.url,
                                                     "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": "e2e", "user": {"token": token}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "e2e"}}]}))
        return path


_PLURAL = {"ClusterRoleBinding": "clusterrolebindings", "ClusterRole": "clusterroles",
           "RoleBinding": "rolebindings", "Role": "roles", "Namespace": "namespaces",
           "ServiceAccount": "serviceaccounts", "Pod": "pods", "Service": "services",
           "Secret": "secrets",
           "PodTemplate": "podtemplates",
           "ConfigMap": "configmaps", "Deployment": "deployments",
           "PodDisruptionBudget": "poddisruptionbudgets", "NetworkPolicy": "networkpolicies",
           "MutatingWebhookConfiguration": "mutatingwebhookconfigurations",
           "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
           "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
           "CustomResourceDefinition": "customresourcedefinitions",
           "FlyteWorkflow": "flyteworkflows"}


def collection_path(obj: dict[str, Any]) -> str:
    group_version = obj["apiVersion"]
    base = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
    namespace = obj["metadata"].get("namespace")
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{scope}/{_PLURAL[obj['kind']]}"


@contextlib.asynccontextmanager
async def running_cluster(workdir: Path, users: tuple[str, ...] = ()) -> AsyncIterator[Cluster]:
    cluster = Cluster(workdir, users=users)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()
