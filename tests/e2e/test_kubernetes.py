"""End to end against a real kube-apiserver (+ etcd): the API server calls the injector
through the MutatingWebhookConfiguration we print, and enforces the admission guard our
manifests ship; task pods are created as flytepropeller's service account (impersonation),
controlled by their execution's FlyteWorkflow (flytepropeller's CRD); the exchange server
validates tokens the TokenRequest API issued, through the API server's own OIDC discovery and
TokenReview, and reads pods, namespaces, FlyteWorkflows and the guard with exactly the RBAC
our manifests grant. FlyteAdmin is the stand-in."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import ssl
import time
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

from devstack import release
from devstack.admin_metadata import AuthMetadata
from devstack.flyteadmin import FlyteAdmin, start_flyteadmin
from devstack.real.cluster import RBAC_GROUP, Cluster, KubeError, free_port, running_cluster
from devstack.real.images import AGENT_IMAGE, TOOL_IMAGE, python_image, release_image
from devstack.real.node import NODE_IP, NODE_USERS, TOLERATION, Node, running_node, unlinks
from devstack.world import ADMIN_URL, EXECUTOR, write_signing_key
from flyte_auth_agent.config import AgentConfig
from flyte_auth_agent.runtime import running_agent
from flyte_auth_injector.webhook_config import webhook_configuration
from tests.e2e.images import PYTHON
from tests.e2e.manifests import (
    FLYTEWORKFLOW_CRD,
    node_pod,
    rendered_manifests,
    rendered_object,
    sidecar_env,
)
from tests.exchange.helpers import form
from tests.helpers import H

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]
LABELED, PLAIN = "flytesnacks-development", "plain-development"
AUDIENCE = "flyte-auth"
EXECUTION = "f3a1b2c4d5e6"
#: Who creates task pods (the guard's default creator), and a project user who may create
#: pods in the project's namespace but is not Flyte.
PROPELLER = "system:serviceaccount:flyte:flytepropeller"
MALLORY = "mallory@example.com"
POD_RIGHTS = [{"apiGroups": [""], "resources": ["pods", "pods/status"],
               "verbs": ["create", "get", "update", "patch", "delete"]}]
def flyte_pod(name: str, namespace: str = LABELED, **annotations: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations,
                         "labels": {"execution-id": EXECUTION, "project": "flytesnacks",
                                    "domain": "development", "node-id": "n0"}},
            "spec": {"restartPolicy": "Never", "serviceAccountName": "default",
                     "containers": [{"name": "task", "image": "python:3.11",
                                     "env": [{"name": "FLYTE_INTERNAL_EXECUTION_ID",
                                              "value": EXECUTION}]}]}}


def plain_pod(name: str) -> dict[str, Any]:
    pod = flyte_pod(name)
    pod["metadata"]["labels"] = {"app": "notebook"}
    return pod


@dataclass
class E2E:
    cluster: Cluster
    admin: FlyteAdmin
    admin_target: str
    exchange_url: str
    workdir: Path
    workflow: dict[str, Any]
    node: Node

    async def create(self, pod: dict[str, Any], *, as_user: str = PROPELLER,
                     owned: bool = True) -> dict[str, Any]:
        """Create `pod` as `as_user` (flytepropeller by default); a Flyte pod in the labelled
        namespace is controlled by its execution's FlyteWorkflow, as propeller makes it."""
        ns = pod["metadata"]["namespace"]
        if owned and ns == LABELED and EXECUTION_LABEL in pod["metadata"]["labels"]:
            pod = copy.deepcopy(pod)
            pod["metadata"]["ownerReferences"] = [self.owner()]
        return await self.cluster.request(  # type: ignore[no-any-return]
            "POST", f"/api/v1/namespaces/{ns}/pods", pod, as_user=as_user)

    def owner(self) -> dict[str, Any]:
        meta = self.workflow["metadata"]
        return {"apiVersion": "flyte.lyft.com/v1alpha1", "kind": "flyteworkflow",
                "name": meta["name"], "uid": meta["uid"], "controller": True,
                "blockOwnerDeletion": True}

    async def patch(self, name: str, change: Any, *, as_user: str,
                    subresource: str = "", kind: str = "merge-patch") -> dict[str, Any]:
        return await self.cluster.request(  # type: ignore[no-any-return]
            "PATCH", f"/api/v1/namespaces/{LABELED}/pods/{name}{subresource}", change,
            f"application/{kind}+json", as_user=as_user)


#: What Flyte 2's SDK does with FLYTE_AUTH_COMMAND (shell-split, run, stdout is the token),
#: reporting the exit code, the first line of stderr and whether a JWT came out.
RUN_AUTH_COMMAND = (
    "import os, shlex, subprocess; "
    "r = subprocess.run(shlex.split(os.environ['FLYTE_AUTH_COMMAND']), capture_output=True, "
    "text=True); "
    "print(r.returncode, 'jwt' if r.stdout.count('.') == 2 else 'no-token', "
    "(r.stderr.splitlines() or [''])[0])")
EXECUTION_LABEL = "execution-id"
SOCKET = "/var/run/flyte-auth/agent.sock"  # where the injector mounts it in app containers
#: The cluster's CA in every pod's service-account volume (kube-root-ca.crt).
SA_CA_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"


async def grant_pod_rights(cluster: Cluster) -> None:
    """flytepropeller may manage pods everywhere; mallory, a project user, in LABELED."""
    await cluster.apply({"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRole",
                         "metadata": {"name": "e2e-pods"}, "rules": POD_RIGHTS})
    await cluster.bind_role("e2e-propeller", "e2e-pods", {
        "kind": "ServiceAccount", "name": "flytepropeller", "namespace": "flyte"})
    await cluster.bind_role("e2e-mallory", "e2e-pods", {
        "apiGroup": RBAC_GROUP, "kind": "User", "name": MALLORY}, namespace=LABELED)
    # ... with what Kubernetes' built-in `edit` role grants there (exec, attach,
    # port-forward, proxy, tokens of the namespace's service accounts; written out: `edit`
    # is aggregated by a controller this suite does not run), and a debugging role's
    # ephemeral containers.
    await cluster.apply({"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRole",
                         "metadata": {"name": "e2e-debug"}, "rules": [
                             {"apiGroups": [""], "resources": ["pods/ephemeralcontainers"],
                              "verbs": ["update", "patch"]},
                             {"apiGroups": [""], "verbs": ["create", "get"], "resources": [
                                 "pods/exec", "pods/attach", "pods/portforward", "pods/proxy",
                                 "pods/log"]},
                             {"apiGroups": [""], "resources": ["serviceaccounts/token"],
                              "verbs": ["create"]}]})
    await cluster.bind_role("e2e-mallory-debug", "e2e-debug", {
        "apiGroup": RBAC_GROUP, "kind": "User", "name": MALLORY}, namespace=LABELED)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def e2e(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[E2E]:
    workdir = tmp_path_factory.mktemp("e2e")
    async with running_cluster(workdir / "cluster", users=NODE_USERS) as cluster, \
            running_node(cluster, (python_image(PYTHON), release_image("server"))) as node:
        try:
            for name, labels in (("flyte-auth", {}), ("flyte", {}), (LABELED, {
                    "flyte-auth.flyte.org/inject": "enabled"}), (PLAIN, {})):
                await cluster.namespace(name, labels)
            await cluster.apply({"apiVersion": "v1", "kind": "ServiceAccount",
                                 "metadata": {"name": "flytepropeller", "namespace": "flyte"}})
            await grant_pod_rights(cluster)
            # Our least-privilege RBAC and the guard, as deploy/ renders them.
            await cluster.apply_all(rendered_manifests(), "flyte-auth")
            await cluster.crd(FLYTEWORKFLOW_CRD)
            workflow = await cluster.apply({  # what FlyteAdmin creates for the execution
                "apiVersion": "flyte.lyft.com/v1alpha1", "kind": "FlyteWorkflow",
                "metadata": {"name": EXECUTION, "namespace": LABELED,
                             "labels": {"execution-id": EXECUTION, "project": "flytesnacks",
                                        "domain": "development"}},
                "executionId": {"project": "flytesnacks", "domain": "development",
                                "name": EXECUTION}})
            key_file = workdir / "token_rsa_key.pem"
            admin = FlyteAdmin(write_signing_key(key_file), authorized_uris=[ADMIN_URL])
            admin.executions[("flytesnacks", "development", "f3a1b2c4d5e6")] = EXECUTOR
            metadata = AuthMetadata(token_endpoint="", audience=ADMIN_URL)
            server, admin_target = await start_flyteadmin(admin, metadata)
            ca = trustme.CA()  # what cert-manager's CA issuer is in a cluster
            ca.cert_pem.write_to_path(str(workdir / "ca.crt"))
            try:
                servers = await deploy_servers(cluster, node, ca, key_file, admin_target)
                metadata.token_endpoint = servers.exchange_url + "/oauth2/token"
                try:
                    yield E2E(cluster, admin, admin_target, servers.exchange_url, workdir,
                              workflow, node)
                except BaseException:
                    print(await servers.logs())
                    raise
            finally:
                await server.stop(None)
        except BaseException:
            print(cluster.logs(), node.logs())  # every peer's log, for the failing test
            raise


@dataclass
class Servers:
    cluster: Cluster
    exchange_url: str
    pods: tuple[str, ...]

    async def logs(self) -> str:
        out = []
        for name in self.pods:
            with contextlib.suppress(KubeError):
                pod = await self.cluster.request("GET",
                                                 f"/api/v1/namespaces/flyte-auth/pods/{name}")
                answer = await self.cluster.request(
                    "GET", f"/api/v1/namespaces/flyte-auth/pods/{name}/log")
                # JSON lines: one line parses as an object, several come back as text.
                text = answer.get("message") if set(answer) == {"message"} else answer
                out.append(f"--- pod {name}: {json.dumps(pod.get('status'))[-3000:]}\n"
                           f"{str(text)[-6000:]}")
        return "\n".join(out)


def tls_secret(name: str, ca: trustme.CA, host: str) -> dict[str, Any]:
    """What cert-manager's CA issuer writes for a Certificate of `host`."""
    cert = ca.issue_cert(host)
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": "flyte-auth"},
            "stringData": {"tls.crt": cert.cert_chain_pems[0].bytes().decode(),
                           "tls.key": cert.private_key_pem.bytes().decode(),
                           "ca.crt": ca.cert_pem.bytes().decode()}}


async def deploy_servers(cluster: Cluster, node: Node, ca: trustme.CA, key_file: Path,
                         admin_target: str) -> Servers:
    """The exchange server and the injector as deploy/ renders them, run by the node from
    the server image `make dist` built: each Deployment's pod template made a pod (this
    suite runs no Deployment controller), on the host's network (no CNI), with the Secrets
    cert-manager and the operator would create and the ConfigMaps as rendered. They reach
    the API server with their service accounts' own tokens (in-cluster config); no
    kube-proxy routes the `kubernetes` Service here, so its address is given as the env the
    kubelet would otherwise set. The flags that name this machine's addresses are replaced;
    the API server calls the injector through `flyte-auth-injector webhook-config`'s
    configuration."""
    for obj in (tls_secret("flyte-auth-exchange-tls", ca, NODE_IP),
                tls_secret("flyte-auth-injector-tls", ca, NODE_IP),
                {"apiVersion": "v1", "kind": "Secret",
                 "metadata": {"name": "flyte-auth-exchange-signing-key",
                              "namespace": "flyte-auth"},
                 "stringData": {"token_rsa_key.pem": key_file.read_text()}},
                rendered_object("ConfigMap", "flyte-auth-exchange-policy"),
                rendered_object("ConfigMap", "flyte-auth-injector-config")):
        await cluster.apply(obj)
    api = {"KUBERNETES_SERVICE_HOST": "127.0.0.1",
           "KUBERNETES_SERVICE_PORT": cluster.url.rsplit(":", 1)[1]}
    https, injector_https, injector_metrics = free_port(), free_port(), free_port()
    exchange_url = f"https://{NODE_IP}:{https}"
    # Its Pod Security check: the project namespace is not labelled baseline (its pods use
    # the host's network), so the exchange server is told the cluster's defaults vouch.
    exchange = node_pod(rendered_object("Deployment", "flyte-auth-exchange"),
                        ports={"https": https}, env=api, tolerations=[TOLERATION], machine={
        "listen": [f"{NODE_IP}:{https}"], "public_url": [], "pod_security": ["cluster-default"],
        "subject_issuer": [cluster.url], "subject_discovery": [cluster.url],
        "ca_cert_file": [SA_CA_FILE], "cache_ttl": ["0"], "admin_endpoint": [admin_target]})
    injector = node_pod(rendered_object("Deployment", "flyte-auth-injector"),
                        ports={"https": injector_https, "metrics": injector_metrics},
                        env=api, tolerations=[TOLERATION], machine={
        "listen": [f"{NODE_IP}:{injector_https}"],
        "metrics_addr": [f"{NODE_IP}:{injector_metrics}"], "admin_endpoint": [admin_target],
        "token_endpoint": [exchange_url + "/oauth2/token"], "agent_image": [AGENT_IMAGE],
        "agent_image_pull_policy": ["Never"]})
    servers = Servers(cluster, exchange_url,
                      (exchange["metadata"]["name"], injector["metadata"]["name"]))
    try:
        for pod in (exchange, injector):
            await cluster.apply(pod)
        for pod in (exchange, injector):
            await node.wait_until("flyte-auth", pod["metadata"]["name"], ready, timeout=90)
    except BaseException:
        print(await servers.logs())
        raise
    await cluster.apply(webhook_configuration(
        url=f"https://{NODE_IP}:{injector_https}/mutate",
        ca_bundle=base64.b64encode(ca.cert_pem.bytes()).decode()))
    return servers


def ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


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


def on_the_node(name: str, *task_args: str) -> dict[str, Any]:
    """A Flyte pod for the real node: the host's network (set in the pod spec, as a pod
    template would), the node's toleration, and the tool image as the task, as uid 1000."""
    pod = flyte_pod(name)
    pod["spec"] |= {"hostNetwork": True, "tolerations": [TOLERATION]}
    pod["spec"]["containers"][0] |= {
        "image": TOOL_IMAGE, "imagePullPolicy": "Never", "args": list(task_args),
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000}}
    return pod


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    status = pod["status"]
    return next(s for s in status.get("initContainerStatuses", []) +
                status.get("containerStatuses", []) if s["name"] == name)


async def task_log(e2e: E2E, name: str) -> str:
    answer = await e2e.cluster.request(
        "GET", f"/api/v1/namespaces/{LABELED}/pods/{name}/log?container=task")
    return str(answer["message"])


async def test_an_injected_pod_runs_on_the_real_node(e2e: E2E) -> None:
    """The kubelet runs the injected pod: the agent (its image as deploy/Dockerfile builds
    it) starts first and holds a token before the task starts; the task, as its own uid,
    gets a token over the socket on its first try; the pod ends Succeeded with the sidecar
    stopped, and the task's log holds no token."""
    assert agent_of(await e2e.create(on_the_node("on-node", "token", SOCKET)))
    done = await e2e.node.wait_phase(LABELED, "on-node", {"Succeeded", "Failed"})
    log = await task_log(e2e, "on-node")
    agent, task = container(done, "flyte-auth-agent"), container(done, "task")
    assert done["status"]["phase"] == "Succeeded", (done["status"], log, e2e.node.logs())
    assert log.strip() == "uid=1000 status=200 token_type=Bearer"
    assert "eyJ" not in log
    assert agent["restartCount"] == 0 and "terminated" in agent["state"]  # stopped with it
    assert task["state"]["terminated"]["exitCode"] == 0
    assert agent["state"]["terminated"]["startedAt"] <= task["state"]["terminated"]["startedAt"]


async def test_the_kubelet_restarts_a_killed_agent_and_the_task_recovers(e2e: E2E) -> None:
    """SIGKILL the agent mid-task: the kubelet restarts the sidecar, and the task, asking
    again, gets a token from the new agent."""
    await e2e.create(on_the_node("agent-killed", "recover", SOCKET))
    running = await e2e.node.wait_until(LABELED, "agent-killed", task_running)
    agent_id = container(running, "flyte-auth-agent")["containerID"].removeprefix(
        "containerd://")
    e2e.node.ctr("tasks", "kill", "--signal", "SIGKILL", agent_id)
    done = await e2e.node.wait_phase(LABELED, "agent-killed", {"Succeeded", "Failed"})
    log = await task_log(e2e, "agent-killed")
    assert done["status"]["phase"] == "Succeeded", (done["status"], log, e2e.node.logs())
    assert log.split()[-3:] == ["failing", "ok", "again"]
    assert container(done, "flyte-auth-agent")["restartCount"] >= 1


async def test_the_agent_removes_its_socket_on_sigterm(e2e: E2E) -> None:
    """Deleting a running pod: the kubelet stops the task, then sends the agent SIGTERM, and
    the agent unlinks its socket before it exits (seen on the node, in the socket's
    emptyDir, while the volume is still there)."""
    await e2e.create(on_the_node("socket-gone", "pause"))
    running = await e2e.node.wait_until(LABELED, "socket-gone", task_running)
    status = json.loads(running["metadata"]["annotations"]["flyte-auth.flyte.org/status"])
    directory = e2e.node.empty_dir(running, status["socket_volume"])
    socket_name = Path(SOCKET).name
    assert (directory / socket_name).is_socket()
    async with unlinks(directory) as unlinked:
        await e2e.cluster.request("DELETE", f"/api/v1/namespaces/{LABELED}/pods/socket-gone")
        async with asyncio.timeout(60):
            assert await unlinked.get() == socket_name


#: Run in the agent container: the claims of the token the kubelet projected (not the token).
CLAIMS = ("import json; from flyte_auth_common.jwt import jwt_claims; "
          "c = jwt_claims(open('/var/run/secrets/flyte-auth/token').read()); "
          "print(json.dumps({'aud': c['aud'], 'lifetime': c['exp'] - c['iat'], "
          "'pod': c['kubernetes.io']['pod']['name'], 'iat': c['iat']}))")


async def projected_claims(e2e: E2E, pod: dict[str, Any]) -> dict[str, Any]:
    agent_id = container(pod, "flyte-auth-agent")["containerID"].removeprefix("containerd://")
    out = e2e.node.ctr("tasks", "exec", "--exec-id", f"claims-{time.monotonic_ns()}",
                       agent_id, "/opt/agent/bin/python", "-c", CLAIMS)
    return dict(json.loads(out))


def task_running(pod: dict[str, Any]) -> bool:
    return bool(pod.get("status", {}).get("containerStatuses")) and \
        "running" in container(pod, "task")["state"]


async def test_the_kubelet_projects_the_token_the_injector_asked_for(e2e: E2E) -> None:
    """In the running agent's container, the file at the injected path is the kubelet's
    projected token for this pod, with the injected audience and expiry."""
    await e2e.create(on_the_node("token-file", "pause"))
    running = await e2e.node.wait_until(LABELED, "token-file", task_running)
    claims = await projected_claims(e2e, running)
    await e2e.cluster.request("DELETE", f"/api/v1/namespaces/{LABELED}/pods/token-file")
    assert {k: claims[k] for k in ("aud", "lifetime", "pod")} == {
        "aud": [AUDIENCE], "lifetime": 3600, "pod": "token-file"}


@pytest.mark.long
@pytest.mark.timeout(900)
async def test_the_kubelet_rotates_the_projected_token(e2e: E2E) -> None:
    """`make e2e-long`: with the shortest expiry Kubernetes allows (600 s), the kubelet
    writes a new token at about 80 % of its life into the injected path, and the agent that
    reads it keeps running."""
    pod = on_the_node("rotated", "pause")
    pod["metadata"]["annotations"] = {"flyte-auth.flyte.org/token-expiration": "600"}
    await e2e.create(pod)
    running = await e2e.node.wait_until(LABELED, "rotated", task_running)
    first = await projected_claims(e2e, running)
    async with asyncio.timeout(600):
        while (now := await projected_claims(e2e, running))["iat"] == first["iat"]:
            await asyncio.sleep(10)  # the kubelet rotates on its own schedule (~480 s)
    again = await e2e.node.wait_until(LABELED, "rotated", task_running)
    await e2e.cluster.request("DELETE", f"/api/v1/namespaces/{LABELED}/pods/rotated")
    assert first["lifetime"] == now["lifetime"] == 600
    # The kubelet renews after 80 % of the life, less up to 10 s of jitter (its token manager).
    assert now["iat"] - first["iat"] >= 0.8 * 600 - 10
    assert container(again, "flyte-auth-agent")["restartCount"] == 0


async def test_no_token_at_pod_start_holds_the_task_for_token_wait_and_says_why(
        e2e: E2E) -> None:
    """The agent cannot get a token (here the exchange server refuses the pod: no
    FlyteWorkflow owns it). The task is held for `token-wait` seconds, then the hook fails
    (the pod's events say so), the kubelet restarts the agent, and the agent's last state
    says why; the task never started."""
    pod = on_the_node("no-token", "token", SOCKET)
    pod["metadata"]["annotations"] = {"flyte-auth.flyte.org/token-wait": "3"}
    await e2e.create(pod, owned=False)
    restarted = await e2e.node.wait_until(LABELED, "no-token", lambda p: any(
        s.get("lastState", {}).get("terminated") for s in
        p.get("status", {}).get("initContainerStatuses", [])))
    await e2e.cluster.request("DELETE", f"/api/v1/namespaces/{LABELED}/pods/no-token")
    agent = container(restarted, "flyte-auth-agent")
    events = await e2e.cluster.request(
        "GET", f"/api/v1/namespaces/{LABELED}/events?fieldSelector=involvedObject.name%3Dno-token")
    # kubectl describe shows the failed hold; the kubelet keeps a hook's output out of
    # events (it may hold secrets), so the reason is in the agent's last state.
    assert "FailedPostStartHook" in [e["reason"] for e in events["items"]]
    assert "access_denied" in agent["lastState"]["terminated"]["message"]
    assert "FlyteWorkflow" in agent["lastState"]["terminated"]["message"]
    assert "running" not in container(restarted, "task")["state"]
    assert "terminated" not in container(restarted, "task")["state"]


async def test_token_wait_zero_starts_the_task_at_once_and_its_call_says_why(
        e2e: E2E) -> None:
    """Lazy mode: the task starts without waiting for a token; its first call waits up to
    the agent's --wait-timeout and gets a 503 (the reason is in the body), not a hang."""
    pod = on_the_node("lazy", "token", SOCKET)
    pod["metadata"]["annotations"] = {"flyte-auth.flyte.org/token-wait": "0"}
    created = await e2e.create(pod, owned=False)
    assert "lifecycle" not in agent_of(created)[0]
    done = await e2e.node.wait_phase(LABELED, "lazy", {"Succeeded", "Failed"})
    log = await task_log(e2e, "lazy")
    assert done["status"]["phase"] == "Failed"
    assert log.strip() == "uid=1000 status=503 token_type=<nil>"


async def test_a_flyte2_pod_runs_the_injected_token_command_with_nothing_of_ours(
        e2e: E2E) -> None:
    """A pod shaped as Flyte 2's executor makes it (run and action labels), created as Flyte,
    with a task image holding only a Python: the injected FLYTE_AUTH_COMMAND, run as the SDK
    runs it, reaches the agent through the script the agent wrote into the socket volume.
    No TaskAction controls this pod (the v2 executor did not create it), so the exchange
    server refuses it, and that reason is what the command reports (lazy mode, so the task
    starts without a token). tests/e2e/test_flyte2.py runs the real executor's pods."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "flyte2-task", "namespace": LABELED,
                        "annotations": {"flyte-auth.flyte.org/token-wait": "0"},
                        "labels": {"run": "r8x2k", "action": "a0", "project": "flytesnacks",
                                   "domain": "development", "flyte.org/managed": "true"}},
           "spec": {"restartPolicy": "Never", "hostNetwork": True,
                    "tolerations": [TOLERATION],
                    "containers": [{"name": "task", "image": PYTHON.name,
                                    "imagePullPolicy": "Never",
                                    "args": ["-c", RUN_AUTH_COMMAND]}]}}
    created = await e2e.create(pod)
    env = {e["name"]: e.get("value") for e in created["spec"]["containers"][0]["env"]}
    assert env["FLYTE_AUTH_TYPE"] == "ExternalCommand"
    done = await e2e.node.wait_phase(LABELED, "flyte2-task", {"Succeeded", "Failed"})
    log = await task_log(e2e, "flyte2-task")
    assert done["status"]["phase"] == "Succeeded", (done["status"], log)
    code, token, reason = log.strip().split(" ", 2)
    assert (code, token) == ("1", "no-token"), log
    assert reason.startswith("flyte-auth-token: agent answered HTTP 503"), log
    assert "has Flyte 2's run and action labels but no TaskAction controls it" in reason, log


async def test_a_flyte2_pod_on_plain_http_reaches_its_creator_with_our_warning(
        e2e: E2E) -> None:
    """The injector's admission warning comes back to whoever created the pod (the API
    server's `Warning` header), so the executor's log or kubectl shows it."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "flyte2-plain-http", "namespace": LABELED,
                        "labels": {"run": "r8x2k", "action": "a1"}},
           "spec": {"containers": [{"name": "task", "image": PYTHON.name,
                                    "env": [{"name": "_U_INSECURE", "value": "true"}]}]}}
    created = await e2e.create(pod)
    assert created["spec"]["initContainers"][0]["name"] == "flyte-auth-agent"
    assert any("flyte-auth: container 'task' sets _U_INSECURE: the flyte SDK sends no token "
               "over plain HTTP" in w for w in e2e.cluster.warnings), e2e.cluster.warnings


async def test_the_servers_run_from_the_release_image_and_the_agent_image_has_grpc(
        e2e: E2E) -> None:
    """The exchange server and the injector this suite talks to are pods of the server image
    (deploy_servers: Ready, as uid 65532); the agent image loads what its discovery of
    FlyteAdmin needs (grpc and flyteidl link libstdc++, which the image must carry)."""
    for name in ("flyte-auth-exchange-0", "flyte-auth-injector-0"):
        pod = await e2e.cluster.request("GET", f"/api/v1/namespaces/flyte-auth/pods/{name}")
        assert ready(pod)
        assert container(pod, pod["spec"]["containers"][0]["name"])["image"] == \
            release.image_name("server")
        assert pod["spec"]["securityContext"]["runAsUser"] == 65532
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "agent-image-imports", "namespace": PLAIN},
           "spec": {"restartPolicy": "Never", "hostNetwork": True, "tolerations": [TOLERATION],
                    "containers": [{"name": "agent", "image": AGENT_IMAGE,
                                    "imagePullPolicy": "Never", "command": [
                                        "python", "-c", "import grpc, flyteidl.service."
                                        "identity_pb2_grpc; print('imported')"]}]}}
    await e2e.cluster.apply(pod)
    done = await e2e.node.wait_phase(PLAIN, "agent-image-imports", {"Succeeded", "Failed"})
    log = await e2e.cluster.request(
        "GET", f"/api/v1/namespaces/{PLAIN}/pods/agent-image-imports/log")
    assert (done["status"]["phase"], log["message"].strip()) == ("Succeeded", "imported")


async def test_an_opted_out_pod_runs_untouched_on_the_real_node(e2e: E2E) -> None:
    """Opted out: no agent, no socket; the kubelet runs the task alone, which finds nothing
    to ask for a token."""
    pod = on_the_node("opted-out-on-node", "token", SOCKET)
    pod["metadata"]["annotations"] = {"flyte-auth.flyte.org/inject": "false"}
    assert not agent_of(await e2e.create(pod))
    done = await e2e.node.wait_phase(LABELED, "opted-out-on-node", {"Succeeded", "Failed"})
    log = await task_log(e2e, "opted-out-on-node")
    assert done["status"]["phase"] == "Failed"  # the tool found no agent, as it should
    assert [c["name"] for c in done["spec"]["containers"]] == ["task"]
    assert not done["spec"].get("initContainers")
    assert "no such file or directory" in log


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


async def test_propellers_pod_is_exchanged_for_the_launcher_and_refused_once_gone(
        e2e: E2E, short_dir: Path) -> None:
    """flytepropeller's pod, past the guard and the injector, owned by its FlyteWorkflow:
    the exchange server's namespace, guard and owner checks pass on the real API server."""
    pod = await e2e.create(flyte_pod("task-f"))
    assert len(agent_of(pod)) == 1
    token_file = short_dir / "token"
    token_file.write_text(await e2e.cluster.token(LABELED, "default", audience=AUDIENCE, pod=pod))
    # The agent as injected: its env from the mutated pod (the exchange server's CA included,
    # so the service-account token travels over TLS), paths mapped to this machine.
    env = sidecar_env(pod, FLYTE_AUTH_AGENT_SOCKET=str(short_dir / "agent.sock"),
                      FLYTE_AUTH_AGENT_TOKEN_FILE=str(token_file))
    assert env["FLYTE_AUTH_AGENT_TOKEN_ENDPOINT"].startswith("https://")
    assert "BEGIN CERTIFICATE" in env["FLYTE_AUTH_AGENT_CA_CERT_PEM"]
    config = AgentConfig.load([], env)
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
    tls = ssl.create_default_context(cafile=str(e2e.workdir / "ca.crt"))
    async with aiohttp.ClientSession() as session, session.post(
            e2e.exchange_url + "/oauth2/token", data=form(token_file.read_text()),
            ssl=tls) as resp:
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
    assert await allowed("get", "namespaces")
    assert await allowed("get", "flyteworkflows", "flyte.lyft.com")
    assert await allowed("create", "tokenreviews", "authentication.k8s.io")
    assert not await allowed("list", "pods")
    assert not await allowed("list", "flyteworkflows", "flyte.lyft.com")
    assert not await allowed("get", "secrets")


def refused_by_guard(refused: pytest.ExceptionInfo[KubeError], *words: str) -> str:
    message = str(refused.value.body.get("message", ""))
    assert refused.value.status in (403, 422), refused.value
    assert "flyte-auth guard" in message and all(w in message for w in words), message
    return message


def guard_refusal(refused: pytest.ExceptionInfo[KubeError]) -> str:
    assert refused.value.status == 403, refused.value
    return refused_by_guard(refused, f"flyte-auth guard: only Flyte ({PROPELLER})")


async def test_the_guard_refuses_a_project_user_who_creates_flyte_labels(e2e: E2E) -> None:
    with pytest.raises(KubeError) as labels:
        await e2e.create(flyte_pod("forged-a"), as_user=MALLORY, owned=False)
    assert f"{MALLORY} may not" in guard_refusal(labels)
    owned = plain_pod("forged-b")
    owned["metadata"]["ownerReferences"] = [e2e.owner()]
    with pytest.raises(KubeError) as owner:
        await e2e.create(owned, as_user=MALLORY)
    guard_refusal(owner)
    # The same user's pods without Flyte's claims are their business.
    created = await e2e.create(plain_pod("notebook"), as_user=MALLORY)
    assert created["metadata"]["labels"] == {"app": "notebook"}


async def test_the_guard_refuses_a_label_added_or_changed_later(e2e: E2E) -> None:
    await e2e.create(plain_pod("later"), as_user=MALLORY)
    with pytest.raises(KubeError) as added:
        await e2e.patch("later", {"metadata": {"labels": {EXECUTION_LABEL: EXECUTION}}},
                        as_user=MALLORY)
    guard_refusal(added)
    with pytest.raises(KubeError) as via_status:  # the status subresource is no way round
        await e2e.patch("later", {"metadata": {"labels": {EXECUTION_LABEL: EXECUTION}}},
                        as_user=MALLORY, subresource="/status")
    guard_refusal(via_status)
    pod = await e2e.cluster.request("GET", f"/api/v1/namespaces/{LABELED}/pods/later")
    assert EXECUTION_LABEL not in pod["metadata"]["labels"]
    # Other labels stay the user's to change; propeller's pods stay propeller's.
    await e2e.patch("later", {"metadata": {"labels": {"app": "lab"}}}, as_user=MALLORY)
    await e2e.create(flyte_pod("task-g"))
    with pytest.raises(KubeError) as changed:
        await e2e.patch("task-g", {"metadata": {"labels": {"execution-identity": "mallory"}}},
                        as_user=MALLORY)
    guard_refusal(changed)


# --- acting as a pod that carries Flyte's claims (the guard's other half) ----------------

async def test_only_a_kubelet_gets_a_pod_bound_token_with_the_exchange_audience(
        e2e: E2E) -> None:
    """`edit` grants `create serviceaccounts/token`, and the API server binds such a token
    to any pod of that service account: indistinguishable from the kubelet's."""
    pod = await e2e.create(flyte_pod("token-target"))
    with pytest.raises(KubeError) as bound:
        await e2e.cluster.token(LABELED, "default", audience=AUDIENCE, pod=pod,
                                as_user=MALLORY, as_groups=())
    refused_by_guard(bound, "only a node's kubelet", MALLORY)
    with pytest.raises(KubeError) as unbound:  # not bound to a pod: refused all the same
        await e2e.cluster.token(LABELED, "default", audience=AUDIENCE, as_user=MALLORY,
                                as_groups=())
    refused_by_guard(unbound, "only a node's kubelet")
    # Other audiences stay hers to ask for; the node's kubelet gets ours.
    assert await e2e.cluster.token(LABELED, "default", audience="https://example.com", pod=pod,
                                   as_user=MALLORY, as_groups=())
    assert await e2e.cluster.token(LABELED, "default", audience=AUDIENCE, pod=pod)


async def test_a_project_user_cannot_change_a_flyte_pods_containers(e2e: E2E) -> None:
    await e2e.create(flyte_pod("spec-target"))
    for path in ("/spec/containers/0/image", "/spec/initContainers/0/image"):  # task, agent
        with pytest.raises(KubeError) as image:
            await e2e.patch("spec-target", [{"op": "replace", "path": path,
                                             "value": "evil.example/own:1"}],
                            as_user=MALLORY, kind="json-patch")
        refused_by_guard(image, "may change the spec", "spec-target", MALLORY)
    debug = {"spec": {"ephemeralContainers": [{
        "name": "debug", "image": "evil.example/own:1", "targetContainerName": "task",
        "volumeMounts": [{"name": "flyte-auth-socket", "mountPath": "/s"}]}]}}
    with pytest.raises(KubeError) as ephemeral:
        await e2e.patch("spec-target", debug, as_user=MALLORY, subresource="/ephemeralcontainers",
                        kind="strategic-merge-patch")
    refused_by_guard(ephemeral, "may change the spec")
    pod = await e2e.cluster.request("GET", f"/api/v1/namespaces/{LABELED}/pods/spec-target")
    assert pod["spec"]["containers"][0]["image"] == "python:3.11"
    assert not pod["spec"].get("ephemeralContainers")
    # Her other labels are hers; Flyte may change its pod; so may a cluster admin.
    await e2e.patch("spec-target", {"metadata": {"labels": {"note": "seen"}}}, as_user=MALLORY)
    await e2e.patch("spec-target", [{"op": "replace", "path": "/spec/containers/0/image",
                                     "value": "python:3.12"}], as_user=PROPELLER,
                    kind="json-patch")
    # And a pod without Flyte's claims stays hers to debug.
    await e2e.create(plain_pod("own-notebook"), as_user=MALLORY)
    await e2e.patch("own-notebook", [{"op": "replace", "path": "/spec/containers/0/image",
                                      "value": "python:3.12"}], as_user=MALLORY,
                    kind="json-patch")


CONNECTS = (("POST", "exec?command=true&container=task&stdout=true", "pods/exec"),
            ("POST", "attach?container=task&stdout=true", "pods/attach"),
            ("POST", "portforward?ports=9787", "pods/portforward"),
            ("GET", "proxy/", "pods/proxy"))


@pytest.mark.parametrize(("method", "path", "subresource"), CONNECTS)
async def test_exec_attach_port_forward_and_proxy_on_a_flyte_pod_are_refused(
        e2e: E2E, method: str, path: str, subresource: str) -> None:
    """A CONNECT request's object is the exec options, not the pod: the injector's connect
    webhook reads the pod and refuses a project user (edit grants exec and attach)."""
    name = f"connect-{subresource.split('/')[1]}"
    await e2e.create(flyte_pod(name))
    url = f"/api/v1/namespaces/{LABELED}/pods/{name}/{path}"
    with pytest.raises(KubeError) as refused:
        await e2e.cluster.request(method, url, as_user=MALLORY)
    refused_by_guard(refused, f"{MALLORY} may not use {subresource}", "Read its logs")
    # Its logs stay hers to read: the API server answers (an empty log while the pod waits for
    # a node, or why its container has not started), never our guard.
    logs: KubeError | None = None
    try:
        await e2e.cluster.request("GET", f"/api/v1/namespaces/{LABELED}/pods/{name}/log",
                                  as_user=MALLORY)
    except KubeError as exc:
        logs = exc
    assert logs is None or (logs.status != 403 and "flyte-auth guard" not in str(logs.body))
    # A cluster admin passes the guard: what stops it is the API server's own answer (the
    # pod waits for a node), not ours.
    with pytest.raises(KubeError) as admin:
        await e2e.cluster.request(method, url)
    assert "flyte-auth guard" not in str(admin.value.body), admin.value
    # A project user's own pod, without Flyte's claims, is hers to exec into.
    await e2e.create(plain_pod(f"own-{name}"), as_user=MALLORY)
    with pytest.raises(KubeError) as own:
        await e2e.cluster.request(method, f"/api/v1/namespaces/{LABELED}/pods/own-{name}/{path}",
                                  as_user=MALLORY)
    assert "flyte-auth guard" not in str(own.value.body), own.value
    # Flyte's pod opted out of injection holds no token for the exchange server: a project
    # user may debug it in place (Flyte's interactive tasks port-forward to such a pod).
    await e2e.create(flyte_pod(f"out-{name}", **{"flyte-auth.flyte.org/inject": "false"}))
    with pytest.raises(KubeError) as opted_out:
        await e2e.cluster.request(method, f"/api/v1/namespaces/{LABELED}/pods/out-{name}/{path}",
                                  as_user=MALLORY)
    assert "flyte-auth guard" not in str(opted_out.value.body), opted_out.value
