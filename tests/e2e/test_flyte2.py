"""End to end with Flyte 2: the v2 backend (tests/e2e/flyte2.py) on the suite's
kube-apiserver and PostgreSQL, behind the real oauth2-proxy, which trusts two issuers: the
organisation's IdP (real Keycloak), whose users launch runs, and our exchange server, whose
tokens task pods bring. The guard and RBAC are what deploy/ renders; our injector mutates
the pods the v2 executor creates, and the suite's real node runs them.

0. On the node: alice's run's task uses the real `flyte` SDK, with nothing but the pod's
   env (the backend's `_U_EP_OVERRIDE` naming the proxy, our injected FLYTE_AUTH_TYPE and
   FLYTE_AUTH_COMMAND), to launch a child run; the runs service records it as alice's.

1. alice launches a run through the proxy; the runs service creates its TaskAction and the
   executor its pod; the exchange server maps a token bound to that pod to alice (pod →
   TaskAction → run → executed_by, asked through the proxy); a child run launched with that
   token is recorded as alice's, through the proxy and directly.
2. A project user who may create pods in Flyte 2's namespace cannot borrow alice's run: the
   API server refuses a copied TaskAction owner (the guard), and a pod with only the copied
   `run`/`action` labels gets no identity.
3. The stand-in runs service (devstack/runs_v2.py) answers the exchange server's question as
   the real one does.
4. The chart's NetworkPolicy for the backend is one the API server accepts. Nothing here
   enforces it: the node runs pods on the host's network with no CNI plugin.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import trustme

from devstack.real.cluster import Cluster, KubeError, free_port, running_cluster
from devstack.real.images import AGENT_IMAGE, python_image
from devstack.real.keycloak import admin_api, running_keycloak
from devstack.real.node import NODE_USERS, Node, running_node
from devstack.real.proxy import running_oauth2_proxy
from devstack.real.webhook import injecting
from devstack.runs_v2 import StubRuns
from devstack.world import write_signing_key
from flyte_auth_common import contract
from flyte_auth_common.jwt import jwt_claims
from flyte_auth_exchange.config import ExchangeConfig
from flyte_auth_exchange.errors import Refusal
from flyte_auth_exchange.runs import Runs
from flyte_auth_exchange.runtime import running_exchange
from flyte_auth_exchange.trust import ExecutionRef, Launcher
from tests.e2e.flyte2 import (
    DOMAIN,
    NAMESPACE,
    PROJECT,
    TASK,
    TASK_IMAGE,
    create_run,
    deploy_task,
    executed_by,
    run_identity,
    running_flyte2,
    task_pod_template,
    task_spec,
)
from tests.e2e.manifests import chart, rendered_manifests
from tests.exchange.helpers import form, post

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(900)]
#: What the proxy expects in `aud`: of our tokens (the exchange server's --admin-audience),
#: and of the people's tokens (Keycloak's audience mapper for its CLI client).
TASK_AUDIENCE, USER_AUDIENCE = "https://flyte.example.com", "flyte"
ALICE, PASSWORD = "alice", "e2e-alice-password"
BACKEND = "system:serviceaccount:flyte:flyte-binary"  # the v2 backend's identity
MALLORY = "mallory@example.com"  # may create pods in Flyte 2's namespace
#: A run whose pod stays Pending (its image is never pulled: the node has no registry), so
#: it is alive whenever a test exchanges a token for it.
SPEC = task_spec("main", "flyte-auth.e2e/absent:1", ["python", "-c", "print('hello')"])
PYTHON = "/opt/task/bin/python"  # the task image's interpreter


@dataclass
class V2:
    cluster: Cluster
    runs_url: str  # the backend's own port
    proxy: str
    exchange_url: str
    alice: str  # alice's access token from Keycloak
    http: aiohttp.ClientSession
    node: Node

    @property
    def alice_sub(self) -> str:
        return str((jwt_claims(self.alice) or {})["sub"])

    async def task_pod(self, run: str) -> dict[str, Any]:
        """The pod the executor creates for the run's root action (<run>-a0-0)."""
        path = f"/api/v1/namespaces/{NAMESPACE}/pods/{run}-a0-0"
        deadline = time.monotonic() + 60
        while True:
            try:
                return dict(await self.cluster.request("GET", path))
            except KubeError as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.2)  # polled: the executor reconciles on its own schedule

    async def exchange(self, pod: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        subject = await self.cluster.token(NAMESPACE, pod["spec"]["serviceAccountName"],
                                           audience="flyte-auth", pod=pod)
        return await post(self.http, self.exchange_url, form(subject))


async def login_realm(url: str) -> str:
    """A realm with alice, and a public CLI client whose tokens are for the proxy; alice's
    access token (password grant, as a CLI logs in)."""
    async with admin_api(url) as post:
        await post("", {"realm": "people", "enabled": True})
        await post("/people/users", {
            "username": ALICE, "email": "alice@example.com", "emailVerified": True,
            "firstName": "Alice", "lastName": "Example", "enabled": True,
            "credentials": [{"type": "password", "value": PASSWORD, "temporary": False}]})
        await post("/people/clients", {
            "clientId": "flyte-cli", "enabled": True, "publicClient": True,
            "directAccessGrantsEnabled": True, "standardFlowEnabled": False,
            "protocolMappers": [{
                "name": "audience", "protocol": "openid-connect",
                "protocolMapper": "oidc-audience-mapper",
                "config": {"included.custom.audience": USER_AUDIENCE,
                           "access.token.claim": "true"}}]})
    async with aiohttp.ClientSession() as session, session.post(
            url + "/realms/people/protocol/openid-connect/token", data={
                "grant_type": "password", "client_id": "flyte-cli", "username": ALICE,
                "password": PASSWORD}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return str(body["access_token"])


async def install(cluster: Cluster, workdir: Path, ca: Path) -> tuple[Path, Path, Path]:
    """deploy/'s RBAC and guard, with the v2 backend among the guard's creators; Flyte 2's
    namespace labelled for injection, with the pod template for this machine's node;
    kubeconfigs of the backend, the exchange server and the injector."""
    for name, labels in (("flyte-auth", {}), (NAMESPACE, {contract.NAMESPACE_LABEL:
                                                          contract.NAMESPACE_LABEL_VALUE})):
        await cluster.namespace(name, labels)
    await cluster.apply({"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": {"name": "flyte-binary", "namespace": NAMESPACE}})
    await cluster.bind_role("e2e-flyte-binary", "cluster-admin", {
        "kind": "ServiceAccount", "name": "flyte-binary", "namespace": NAMESPACE})
    await cluster.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                         "metadata": {"name": "e2e-pod-creator"}, "rules": [{
                             "apiGroups": [""], "resources": ["pods"],
                             "verbs": ["create", "get", "delete"]}]})
    await cluster.bind_role("e2e-mallory", "e2e-pod-creator", {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": MALLORY},
        namespace=NAMESPACE)
    await cluster.apply_all(rendered_manifests(), "flyte-auth")
    guard = await cluster.request("GET", "/api/v1/namespaces/flyte-auth/configmaps/"
                                  "flyte-auth-guard")
    await cluster.request("PATCH", "/api/v1/namespaces/flyte-auth/configmaps/flyte-auth-guard",
                          {"data": {"creators": guard["data"]["creators"] + "," + BACKEND}},
                          "application/merge-patch+json")

    async def kubeconfig(namespace: str, account: str) -> Path:
        token = await cluster.token(namespace, account, audience=cluster.url)
        return cluster.kubeconfig(workdir / f"{account}.kubeconfig", token)

    await cluster.apply(task_pod_template(ca))
    return (await kubeconfig(NAMESPACE, "flyte-binary"),
            await kubeconfig("flyte-auth", "flyte-auth-exchange"),
            await kubeconfig("flyte-auth", "flyte-auth-injector"))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def v2(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[V2]:
    workdir = tmp_path_factory.mktemp("flyte2")
    async with running_cluster(workdir / "cluster", users=NODE_USERS) as cluster, \
            running_node(cluster, (python_image(TASK),)) as node:
        # The proxy serves tasks over TLS (the SDK authenticates only over TLS); the task
        # pods trust its CA, the exchange server and the tests trust it and the cluster's.
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(workdir / "proxy-ca.pem"))
        leaf = ca.issue_cert("127.0.0.1")
        leaf.cert_chain_pems[0].write_to_path(str(workdir / "proxy.crt"))
        leaf.private_key_pem.write_to_path(str(workdir / "proxy.key"))
        bundle = workdir / "trusted.pem"
        bundle.write_bytes(cluster.ca_file.read_bytes() + ca.cert_pem.bytes())
        backend_kc, exchange_kc, injector_kc = await install(cluster, workdir,
                                                             workdir / "proxy-ca.pem")
        write_signing_key(workdir / "signing.pem")
        exchange_port, proxy_port = free_port(), free_port()
        proxy_url = f"https://127.0.0.1:{proxy_port}"
        # Its pods run on the suite's node with hostNetwork (there is no CNI), which Pod
        # Security baseline forbids: the namespace is not labelled baseline, and the exchange
        # server is told the cluster's defaults vouch for it.
        config = ExchangeConfig.load([
            "--pod-security", "cluster-default",
            "--listen", f"127.0.0.1:{exchange_port}", "--signing-key",
            str(workdir / "signing.pem"), "--admin-audience", TASK_AUDIENCE,
            "--subject-issuer", cluster.url, "--subject-discovery", cluster.url,
            "--ca-cert-file", str(bundle), "--subject-audience", "flyte-auth",
            "--token-review", "--cache-ttl", "0", "--runs-url", proxy_url,
            "--kubeconfig", str(exchange_kc)], {})
        async with running_flyte2(workdir / "flyte2", cluster, backend_kc,
                                  tasks_dial=f"127.0.0.1:{proxy_port}") as flyte2, \
                running_keycloak(workdir, cluster) as keycloak:
            alice = await login_realm(keycloak)  # before the proxy discovers the realm
            async with running_exchange(config) as exchange, running_oauth2_proxy(
                    workdir, exchange.url, TASK_AUDIENCE, flyte2.url + "/", port=proxy_port,
                    users=(keycloak + "/realms/people", USER_AUDIENCE),
                    tls=(workdir / "proxy.crt", workdir / "proxy.key", bundle)), injecting(
                    cluster, workdir, [
                        "--token-endpoint", exchange.url + "/oauth2/token",
                        "--agent-image", AGENT_IMAGE, "--agent-image-pull-policy", "Never",
                        "--kubeconfig", str(injector_kc)]), \
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                        ssl=ssl.create_default_context(cafile=bundle))) as http:
                try:
                    yield V2(cluster, flyte2.url, proxy_url, exchange.url, alice, http, node)
                except BaseException:
                    print(cluster.logs(), node.logs(), flyte2.logs())
                    raise


async def test_alices_task_launches_a_child_run_with_the_flyte_sdk_and_no_api_key(
        v2: V2) -> None:
    await deploy_task(v2.http, v2.proxy, task_spec("child", TASK_IMAGE, [
        PYTHON, "-c", "print('child')"]), v2.alice)
    parent = task_spec("parent", TASK_IMAGE, [PYTHON, "/opt/task/launch.py", "child"],
                       {"FLYTE_PROJECT": PROJECT, "FLYTE_DOMAIN": DOMAIN})
    status, run = await create_run(v2.http, v2.proxy, parent, v2.alice)
    assert status == 200, run
    pod = await v2.task_pod(run)
    assert pod["spec"]["initContainers"][0]["name"] == "flyte-auth-agent"  # injected
    task = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in task.get("env", [])}
    assert env[contract.ENV_V2_AUTH_TYPE] == contract.V2_AUTH_TYPE
    assert not {"EAGER_API_KEY", "_UNION_EAGER_API_KEY"} & env.keys()  # no API key

    name = pod["metadata"]["name"]
    done = await v2.node.wait_phase(NAMESPACE, name, {"Succeeded", "Failed"}, 300)
    main = done["status"]["containerStatuses"][0]["name"]
    log = (await v2.cluster.request(
        "GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/log?container={main}"))["message"]
    assert done["status"]["phase"] == "Succeeded", log[-4000:]
    assert "eyJ" not in log
    words = log.split()
    child = words[words.index("child-run") + 1]
    assert words[words.index("uid") + 1] == "1000"  # the task ran as the image's user
    assert await executed_by(v2.http, v2.runs_url, child) == v2.alice_sub


async def test_a_task_pod_of_alices_run_launches_child_runs_as_alice(v2: V2) -> None:
    status, run = await create_run(v2.http, v2.proxy, SPEC, v2.alice)
    assert status == 200, run
    assert await executed_by(v2.http, v2.runs_url, run) == v2.alice_sub
    pod = await v2.task_pod(run)
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "TaskAction"

    status, body = await v2.exchange(pod)
    assert status == 200, body
    token = str(body["access_token"])
    claims = jwt_claims(token) or {}
    assert claims["sub"] == v2.alice_sub
    assert claims["run_id"] == {"project": PROJECT, "domain": DOMAIN, "name": run}
    # Her profile as the runs service recorded it (the proxy forwarded her email), and
    # nothing it did not record.
    assert claims["email"] == "alice@example.com"
    assert "given_name" not in claims and "family_name" not in claims

    via_proxy = await create_run(v2.http, v2.proxy, SPEC, token)
    direct = await create_run(v2.http, v2.runs_url, SPEC, token)
    assert via_proxy[0] == direct[0] == 200, (via_proxy, direct)
    assert await executed_by(v2.http, v2.runs_url, via_proxy[1]) == v2.alice_sub
    assert (await run_identity(v2.http, v2.runs_url, via_proxy[1])).user.spec.email == \
        "alice@example.com"  # the child run records her email too
    assert await executed_by(v2.http, v2.runs_url, direct[1]) == v2.alice_sub


async def test_a_project_user_cannot_borrow_alices_run(v2: V2) -> None:
    status, run = await create_run(v2.http, v2.proxy, SPEC, v2.alice)
    assert status == 200, run
    alices = await v2.task_pod(run)
    pods = f"/api/v1/namespaces/{NAMESPACE}/pods"
    copied = {"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": "borrowed", "labels": alices["metadata"]["labels"],
                           "ownerReferences": alices["metadata"]["ownerReferences"]},
              "spec": {"containers": [{"name": "main", "image": "python:3.11-slim"}]}}
    with pytest.raises(KubeError) as refused:
        await v2.cluster.request("POST", pods, copied, as_user=MALLORY)
    assert refused.value.status == 403
    assert f"{MALLORY} may not" in str(refused.value.body.get("message"))
    # The run and action labels alone are anyone's to write, and prove nothing.
    labels = {k: alices["metadata"]["labels"][k] for k in ("run", "action")}
    lookalike = {**copied, "metadata": {"name": "lookalike", "labels": labels}}
    created = await v2.cluster.request("POST", pods, lookalike, as_user=MALLORY)
    status, body = await v2.exchange(created)
    assert (status, body["error"]) == (400, "access_denied"), body
    assert "claims no Flyte execution" in body["error_description"]


async def test_the_runs_stand_in_answers_as_the_real_runs_service(v2: V2) -> None:
    status, alices = await create_run(v2.http, v2.proxy, SPEC, v2.alice)
    assert status == 200, alices
    status, nobodys = await create_run(v2.http, v2.runs_url, SPEC)  # no identity at all
    assert status == 200, nobodys
    # Through the proxy the runs service records her sub and the email it forwards
    # (X-Auth-Request-Email); a proxy-established identity is not enriched further.
    stand_in = StubRuns(runs={(PROJECT, DOMAIN, alices): v2.alice_sub,
                              (PROJECT, DOMAIN, nobodys): None},
                        profiles={(PROJECT, DOMAIN, alices): {"email": "alice@example.com"}})
    await stand_in.start()
    try:
        cases = {"alices": alices, "nobodys": nobodys, "unknown": "rnotarun0000000000"}
        verdicts: dict[tuple[str, str], object] = {}
        for where, url in (("real", v2.runs_url), ("stand-in", stand_in.url)):
            runs = Runs(url, lambda: "unused", v2.http)
            for case, name in cases.items():
                try:
                    verdicts[where, case] = await runs.launcher(
                        ExecutionRef(PROJECT, DOMAIN, name, flyte=2))
                except Refusal as refusal:
                    verdicts[where, case] = refusal.code
    finally:
        await stand_in.stop()
    assert verdicts["real", "alices"] == Launcher(v2.alice_sub, {"email": "alice@example.com"})
    assert verdicts["real", "nobodys"] == Launcher("")
    assert verdicts["real", "unknown"] == "invalid_grant"
    assert {c: verdicts["stand-in", c] for c in cases} == {c: verdicts["real", c] for c in cases}


async def test_the_charts_network_policy_for_the_backend_is_accepted(v2: V2) -> None:
    fence = next(o for o in chart("flyte2.enabled=true", f"flyte2.runsUrl={v2.proxy}")
                 if o["kind"] == "NetworkPolicy" and o["metadata"]["namespace"] == NAMESPACE)
    created = await v2.cluster.request(
        "POST", f"/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/networkpolicies", fence)
    assert created["spec"]["podSelector"] == fence["spec"]["podSelector"]
    assert created["spec"]["ingress"] == fence["spec"]["ingress"]
