"""End to end against a real kube-apiserver (+ etcd): the API server calls the injector
through the MutatingWebhookConfiguration we print; the exchange server validates tokens
the TokenRequest API issued, through the API server's own OIDC discovery and TokenReview, and
reads pods with exactly the RBAC our manifests grant. FlyteAdmin is the stand-in (the real
one cannot be built here: the Go proxy refuses github.com/flyteorg/flyte/flyteadmin)."""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
import trustme
from flyteidl.service import identity_pb2, identity_pb2_grpc

from flyte_auth_agent.config import AgentConfig
from flyte_auth_agent.runtime import running_agent
from flyte_auth_exchange.config import ExchangeConfig
from flyte_auth_exchange.runtime import running_exchange
from flyte_auth_injector.config import InjectorConfig
from flyte_auth_injector.runtime import running_injector
from flyte_auth_injector.webhook_config import webhook_configuration
from tests.conftest import H
from tests.e2e.cluster import Cluster, free_port, running_cluster
from tests.support.admin_metadata import AuthMetadata
from tests.support.flyteadmin import FlyteAdmin, start_flyteadmin
from tests.support.world import ADMIN_URL, EXECUTOR, write_signing_key

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]
LABELED, PLAIN = "flytesnacks-development", "plain-development"
AUDIENCE = "flyte-auth"


def flyte_pod(name: str, namespace: str = LABELED, **annotations: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations,
                         "labels": {"execution-id": "f3a1b2c4d5e6", "project": "flytesnacks",
                                    "domain": "development", "node-id": "n0"}},
            "spec": {"restartPolicy": "Never", "serviceAccountName": "default",
                     "containers": [{"name": "task", "image": "python:3.11",
                                     "env": [{"name": "FLYTE_INTERNAL_EXECUTION_ID",
                                              "value": "f3a1b2c4d5e6"}]}]}}


@dataclass
class E2E:
    cluster: Cluster
    admin: FlyteAdmin
    admin_target: str
    exchange_url: str
    workdir: Path

    async def create(self, pod: dict[str, Any]) -> dict[str, Any]:
        ns = pod["metadata"]["namespace"]
        return await self.cluster.request("POST", f"/api/v1/namespaces/{ns}/pods", pod)  # type: ignore[no-any-return]


def rendered_rbac() -> str:
    kustomize = os.environ.get("KUSTOMIZE") or str(
        Path.home() / ".cache/flyte-auth-agent/tools/kustomize-v5.7.1/kustomize")
    out = subprocess.run([kustomize, "build", "deploy/kustomize/overlays/cert-manager"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    keep = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")
    docs = [d for d in out.split("\n---\n") if any(f"kind: {k}\n" in d for k in keep)]
    return "\n---\n".join(docs)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def e2e(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[E2E]:
    workdir = tmp_path_factory.mktemp("e2e")
    async with running_cluster(workdir / "cluster") as cluster:
        try:
            for name, labels in (("flyte-auth", {}), (LABELED, {
                    "flyte-auth.flyte.org/inject": "enabled"}), (PLAIN, {})):
                await cluster.namespace(name, labels)
            await cluster.apply_all(rendered_rbac(), "flyte-auth")  # our least-privilege RBAC
            kube = {sa: cluster.kubeconfig(workdir / f"{sa}.kubeconfig",
                                           await cluster.token("flyte-auth", sa,
                                                               audience=cluster.url))
                    for sa in ("flyte-auth-injector", "flyte-auth-exchange")}
            key_file = workdir / "token_rsa_key.pem"
            admin = FlyteAdmin(write_signing_key(key_file), public_url=ADMIN_URL)
            admin.executions[("flytesnacks", "development", "f3a1b2c4d5e6")] = EXECUTOR
            metadata = AuthMetadata(token_endpoint="", audience=ADMIN_URL)
            server, admin_target = await start_flyteadmin(admin, metadata)
            exchange_config = ExchangeConfig.load([
                "--listen", "127.0.0.1:0", "--signing-key", str(key_file),
                "--admin-audience", ADMIN_URL, "--subject-issuer", cluster.url,
                "--subject-discovery", cluster.url, "--ca-cert-file", str(cluster.ca_file),
                "--subject-audience", AUDIENCE, "--token-review", "--cache-ttl", "0",
                "--admin-endpoint", admin_target, "--admin-insecure",
                "--kubeconfig", str(kube["flyte-auth-exchange"])], {})
            ca = trustme.CA()
            cert = ca.issue_cert("127.0.0.1")
            cert.private_key_and_cert_chain_pem.write_to_path(str(workdir / "injector.pem"))
            port = free_port()
            async with running_exchange(exchange_config) as exchange:
                metadata.token_endpoint = exchange.url + "/oauth2/token"
                injector_config = InjectorConfig.load([
                    "--listen", f"127.0.0.1:{port}", "--tls-cert", str(workdir / "injector.pem"),
                    "--tls-key", str(workdir / "injector.pem"), "--admin-endpoint", admin_target,
                    "--admin-insecure", "--token-endpoint", exchange.url + "/oauth2/token",
                    "--kubeconfig", str(kube["flyte-auth-injector"])], {})
                async with running_injector(injector_config):
                    hook = webhook_configuration(
                        url=f"https://127.0.0.1:{port}/mutate",
                        ca_bundle=base64.b64encode(ca.cert_pem.bytes()).decode())
                    await cluster.apply(hook)
                    yield E2E(cluster, admin, admin_target, exchange.url, workdir)
            await server.stop(None)
        except BaseException:
            print(cluster.logs())  # every peer's log, for the failing test's report
            raise


def agent_of(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in pod["spec"].get("initContainers", []) if c["name"] == "flyte-auth-agent"]


async def test_a_flyte_pod_in_a_labeled_namespace_comes_back_injected(e2e: E2E) -> None:
    created = await e2e.create(flyte_pod("task-a"))
    agent = agent_of(created)
    assert len(agent) == 1
    assert created["spec"]["initContainers"][0]["name"] == "flyte-auth-agent"
    assert agent[0]["restartPolicy"] == "Always"  # accepted by the API server's validation
    volumes = {v["name"]: v for v in created["spec"]["volumes"]}
    token = volumes["flyte-auth-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == AUDIENCE
    env = {e["name"]: e.get("value") for e in created["spec"]["containers"][0]["env"]}
    assert env["FLYTE_CREDENTIALS_AUTH_MODE"] == "flyte-auth-agent"
    assert "flyte-auth.flyte.org/status" in created["metadata"]["annotations"]


async def test_unlabeled_namespaces_and_opted_out_pods_are_untouched(e2e: E2E) -> None:
    plain = await e2e.create(flyte_pod("task-b", PLAIN))
    opted_out = await e2e.create(flyte_pod("task-c", **{"flyte-auth.flyte.org/inject": "false"}))
    assert agent_of(plain) == []
    assert agent_of(opted_out) == []
    assert "flyte-auth-token" not in json.dumps(plain["spec"])


async def test_creating_an_injected_pod_again_injects_once(e2e: E2E) -> None:
    first = await e2e.create(flyte_pod("task-d"))
    again = copy.deepcopy(first)
    again["metadata"] = {k: v for k, v in first["metadata"].items()
                         if k in ("namespace", "labels", "annotations")} | {"name": "task-e"}
    again.pop("status", None)
    second = await e2e.create(again)
    assert len(agent_of(second)) == 1
    names = [v["name"] for v in second["spec"]["volumes"]]
    assert names.count("flyte-auth-token") == 1
    assert "flyte-auth-token-1" not in names


async def test_a_bound_token_is_exchanged_and_refused_once_the_pod_is_gone(
        e2e: E2E, short_dir: Path) -> None:
    pod = await e2e.create(flyte_pod("task-f"))
    token_file = short_dir / "token"
    token_file.write_text(await e2e.cluster.token(LABELED, "default", audience=AUDIENCE, pod=pod))
    config = AgentConfig.load(["--socket", str(short_dir / "agent.sock"), "--token-file",
                               str(token_file), "--token-endpoint",
                               e2e.exchange_url + "/oauth2/token"], {})
    connector = aiohttp.UnixConnector(path=str(short_dir / "agent.sock"))
    async with running_agent(config), aiohttp.ClientSession(connector=connector) as http:
        body = await (await http.get("http://agent/v1/token", headers=H)).json()
    assert "access_token" in body, body
    async with grpc.aio.insecure_channel(e2e.admin_target) as channel:
        reply = await identity_pb2_grpc.IdentityServiceStub(channel).UserInfo(
            identity_pb2.UserInfoRequest(),
            metadata=(("flyte-authorization", f"Bearer {body['access_token']}"),))
    assert reply.subject == EXECUTOR

    await e2e.cluster.request("DELETE", f"/api/v1/namespaces/{LABELED}/pods/task-f")
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": token_file.read_text(),
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}
    async with aiohttp.ClientSession() as session, session.post(
            e2e.exchange_url + "/oauth2/token", data=form) as resp:
        refused = await resp.json()
    assert resp.status == 400
    assert refused["error"] == "invalid_grant"


async def test_rbac_from_our_manifests_is_enough_and_no_more(e2e: E2E) -> None:
    """The exchange server's service account may read pods and review tokens, not list
    secrets: asked as that account, the API server says so."""
    review: dict[str, Any] = {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "system:serviceaccount:flyte-auth:flyte-auth-exchange",
                 "resourceAttributes": {}}}

    async def allowed(verb: str, resource: str, group: str = "") -> bool:
        body = copy.deepcopy(review)
        body["spec"]["resourceAttributes"] = {"verb": verb, "resource": resource,
                                              "group": group, "namespace": LABELED}
        doc = await e2e.cluster.request(
            "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body)
        return bool(doc["status"].get("allowed"))

    assert await allowed("get", "pods")
    assert await allowed("create", "tokenreviews", "authentication.k8s.io")
    assert not await allowed("list", "pods")
    assert not await allowed("get", "secrets")
